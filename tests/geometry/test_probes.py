"""Probes against sklearn recomputations, brute-force references and planted structure in synthetic data."""
from __future__ import annotations

import itertools
import random
import time

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.linear_model import LogisticRegression

from lib.emotions import EMOTIONS
from lib.text.datasets import load_profile
from lib.text.leakage import jaccard, near_duplicates, normalize
from lib.geometry.probes import (MAX_ITER, bootstrap_ci, fit_probe, grouped_folds, probe_by_layer, probe_cv, probe_direction, shuffled_label_control, text_groups, transfer_eval)
from lib.stats.intervals import wilson_interval

EMO = np.array(EMOTIONS)


def planted(n=400, d=64, *, sep=3.0, seed=0, classes=EMO):
    """Balanced labels; each class's mean is ``sep`` times a random unit vector, unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = np.resize(classes, n)
    rng.shuffle(y)
    means = rng.normal(size=(len(classes), d))
    means *= sep / np.linalg.norm(means, axis=1, keepdims=True)
    idx = pd.Categorical(y, categories=classes).codes
    return (rng.normal(size=(n, d)) + means[idx]).astype(np.float32), y


def partition_reference(texts, threshold):
    """Connected components of the brute-force 'same normalised text or Jaccard >= threshold' graph."""
    n = len(texts)
    edges = [(i, j) for i, j in itertools.combinations(range(n), 2)
             if normalize(texts[i]) == normalize(texts[j]) or jaccard(texts[i], texts[j]) >= threshold - 1e-9]
    a = np.array([e[0] for e in edges] + list(range(n)))
    b = np.array([e[1] for e in edges] + list(range(n)))
    return connected_components(sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)[1]


def same_partition(g1, g2) -> bool:
    """Two labelings define the same partition iff the pair (g1, g2) is a bijection."""
    pairs = set(zip(np.asarray(g1).tolist(), np.asarray(g2).tolist()))
    return len(pairs) == len(set(g1.tolist())) == len(set(np.asarray(g2).tolist()))


# --- text_groups ---------------------------------------------------------------------------------------------

def test_text_groups_hand_built():
    texts = ["Thank you so much for all the help with the move!",     # 0
             "thank you so much for all the help with the move",      # 1 exact after normalisation
             "THANK YOU SO MUCH, for all the help with the move!!",   # 2 exact
             "Thank you so much for all of the help with the move!",  # 3 near: checked below
             "The bus is late again.",              # 4 distinct
             "I am so sorry about the mess.",       # 5 distinct
             "Why would you do that?"]              # 6 distinct
    assert jaccard(texts[0], texts[3]) >= 0.8 > max(jaccard(texts[0], t) for t in texts[4:])
    g = text_groups(texts)
    assert g[0] == g[1] == g[2] == g[3]
    assert len({g[0], g[4], g[5], g[6]}) == 4
    assert g.tolist() == [0, 0, 0, 0, 1, 2, 3]  # first-seen order, dense ids
    # a stricter threshold separates the near duplicate but never the exact ones
    g1 = text_groups(texts, threshold=1.0)
    assert g1[0] == g1[1] == g1[2] != g1[3]


def test_text_groups_are_transitive_components():
    # a ~ b and b ~ c but not a ~ c: union-find must still put all three together
    a, b, c = "abcdefghij klmnop", "abcdefghij klmnopq", "abcdefghij klmnopqr"
    th = (jaccard(a, b) + jaccard(a, c)) / 2
    assert jaccard(a, b) >= th and jaccard(b, c) >= th and jaccard(a, c) < th
    assert len(set(text_groups([a, b, c, "zzz yyy xxx"], threshold=th)[:3])) == 1


def test_text_groups_equal_brute_force_components():
    rng = random.Random(1)
    words = "thank you so much for the help sorry late again bus train meeting room angry now".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) for _ in range(80)]
    texts += [t.upper() + "!" for t in texts[:10]] + [t.replace("the", "a") for t in texts[10:20]]
    for threshold in (0.6, 0.8, 1.0):
        assert same_partition(text_groups(texts, threshold), partition_reference(texts, threshold))


def test_text_groups_on_authored_rows_match_near_duplicates():
    df = pd.concat([load_profile("baseline"), load_profile("extended")], ignore_index=True)
    t0 = time.perf_counter()
    g = text_groups(df["text"])
    assert time.perf_counter() - t0 < 10
    pairs = near_duplicates(df.assign(id=np.arange(len(df)), group="x"), threshold=0.8)
    n = len(df)
    a = np.r_[pairs["id_a"].to_numpy(dtype=int), np.arange(n)]
    b = np.r_[pairs["id_b"].to_numpy(dtype=int), np.arange(n)]
    n_comp, ref = connected_components(sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    assert same_partition(g, ref)
    assert (g.max() + 1 < n) == (len(pairs) > 0)
    assert all(g[i] == g[j] for i, j in zip(pairs["id_a"], pairs["id_b"]))


# --- folds ---------------------------------------------------------------------------------------------------

def test_grouped_folds_keep_groups_whole_stratified_and_deterministic():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 120, 500)                 # uneven group sizes
    y = EMO[groups % 4]                                # one label per group
    folds = grouped_folds(y, groups, n_splits=5, seed=3)
    assert len(folds) == 5
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(500))  # a partition of the rows
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(y[test]) == set(EMOTIONS)
        assert sorted(np.r_[train, test].tolist()) == list(range(500))
    again = grouped_folds(y, groups, n_splits=5, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = grouped_folds(y, groups, n_splits=5, seed=4)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_grouped_folds_error_names_class_and_count():
    y = np.array(["anger"] * 20 + ["apology"] * 6)
    groups = np.r_[np.arange(20), [100, 100, 101, 101, 102, 103]]  # apology: 4 distinct groups
    with pytest.raises(ValueError, match=r"'apology' has 4 distinct text groups, fewer than n_splits=5"):
        grouped_folds(y, groups, n_splits=5)


# --- probe_cv ------------------------------------------------------------------------------------------------

def test_planted_signal_found_and_shuffled_labels_at_chance():
    x, y = planted(sep=4.0)
    r = probe_cv(x, y, np.arange(len(y)))
    assert r.accuracy > 0.9 and r.macro_f1 > 0.9
    s = shuffled_label_control(x, y, np.arange(len(y)), n_repeats=3, seed=1)
    assert abs(s["accuracy_mean"] - 0.25) < 0.1 and abs(s["macro_f1_mean"] - 0.25) < 0.1
    assert len(s["accuracies"]) == 3 and s["accuracy_sd"] == pytest.approx(np.std(s["accuracies"], ddof=1))
    assert s["majority"] == 0.25


def test_probe_cv_scores_equal_sklearn_on_oof_predictions():
    x, y = planted(sep=1.5, seed=2)                      # imperfect, so the comparison is not trivial
    r = probe_cv(x, y, np.arange(len(y)) // 2, seed=5)
    assert 0.4 < r.accuracy < 0.99
    assert r.accuracy == accuracy_score(y, r.oof_pred)
    assert r.macro_f1 == pytest.approx(f1_score(y, r.oof_pred, average="macro"))
    assert np.allclose(r.per_class_f1.loc[list(EMOTIONS)], f1_score(y, r.oof_pred, labels=list(EMOTIONS), average=None))
    assert np.array_equal(r.confusion.loc[list(EMOTIONS), list(EMOTIONS)].to_numpy(),
                          confusion_matrix(y, r.oof_pred, labels=list(EMOTIONS)))
    assert r.acc_wilson == wilson_interval(int((r.oof_pred == y).sum()), len(y))


def test_probe_cv_equals_hand_written_fold_loop():
    # the scaler is fitted on each training fold only: a hand loop with fresh pipelines gives the same predictions
    x, y = planted(sep=1.5, seed=3)
    x = x * np.exp(np.random.default_rng(0).uniform(-2, 2, x.shape[1])).astype(np.float32)
    groups = np.arange(len(y)) // 4
    folds = grouped_folds(y, groups, seed=7)
    pred = np.empty_like(y)
    for train, test in folds:
        model = Pipeline([("s", StandardScaler()), ("lr", LogisticRegression(C=1.0, max_iter=MAX_ITER))])
        pred[test] = model.fit(x[train], y[train]).predict(x[test])
    assert np.array_equal(probe_cv(x, y, groups, seed=7).oof_pred, pred)
    assert np.array_equal(probe_cv(x, y, groups, seed=7, n_jobs=2).oof_pred, pred)  # folds in threads: same


def test_fit_converges_on_standardised_data():
    x, y = planted(n=2000, d=576, sep=1.0, seed=4)
    p = fit_probe(x, y)
    assert p.named_steps["logreg"].n_iter_.max() < MAX_ITER
    assert np.allclose(p.named_steps["scale"].mean_, x.mean(axis=0), atol=1e-4)


def test_confidence_intervals_contain_estimate_and_shrink_with_n():
    widths = []
    for n in (200, 2000):
        x, y = planted(n=n, d=16, sep=1.2, seed=n)
        r = probe_cv(x, y, np.arange(n))
        assert r.acc_ci[0] <= r.accuracy <= r.acc_ci[1] and r.f1_ci[0] <= r.macro_f1 <= r.f1_ci[1]
        assert r.acc_wilson[0] <= r.accuracy <= r.acc_wilson[1]
        widths.append(r.acc_ci[1] - r.acc_ci[0])
    assert widths[1] < 0.6 * widths[0]  # ~ 1/sqrt(10) in theory


def test_bootstrap_equals_sklearn_resampling_loop():
    rng = np.random.default_rng(0)
    y = EMO[rng.integers(0, 4, 300)]
    pred = np.where(rng.random(300) < 0.6, y, EMO[rng.integers(0, 4, 300)])
    acc_ci, f1_ci = bootstrap_ci(y, pred, EMOTIONS, n_boot=300, seed=9)
    draw = np.random.default_rng(9)  # the same draws: chunks of 200 resamples of n row indices
    idx = np.vstack([draw.integers(0, 300, size=(200, 300)), draw.integers(0, 300, size=(100, 300))])
    accs = [accuracy_score(y[i], pred[i]) for i in idx]
    f1s = [f1_score(y[i], pred[i], labels=list(EMOTIONS), average="macro", zero_division=0) for i in idx]
    assert np.allclose(acc_ci, np.percentile(accs, [2.5, 97.5]))
    assert np.allclose(f1_ci, np.percentile(f1s, [2.5, 97.5]))


def test_wilson_by_formula():
    k, n, z = 37, 50, 1.959964
    p = k / n
    lo = (p + z**2 / (2 * n) - z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))) / (1 + z**2 / n)
    assert wilson_interval(k, n)[0] == pytest.approx(lo)


def test_grouped_folds_defeat_memorised_duplicates():
    # 200 texts, each written 3 ways that normalise alike; the label is random per text and the only
    # feature is a random vector per text: nothing generalises, everything can be memorised.
    rng = np.random.default_rng(0)
    vocab = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(400)]
    base = [" ".join(rng.choice(vocab, 7, replace=False)) for _ in range(200)]
    texts = [v for t in base for v in (t, t.upper() + "!", t.capitalize() + ".")]
    y = np.repeat(rng.permutation(np.resize(EMO, 200)), 3)
    x = np.repeat(rng.normal(size=(200, 256)), 3, axis=0) + rng.normal(scale=0.1, size=(600, 256))
    groups = text_groups(texts)
    assert same_partition(groups, np.arange(600) // 3)
    naive = probe_cv(x, y, groups, folds=list(KFold(5, shuffle=True, random_state=0).split(x)))
    grouped = probe_cv(x, y, groups)
    assert naive.accuracy > 0.9                  # looks like a great probe ...
    assert abs(grouped.accuracy - 0.25) < 0.1    # ... that knows nothing about unseen texts
    assert grouped.acc_ci[0] < 0.25 + 0.02 < naive.acc_ci[0]


# --- probe_by_layer ------------------------------------------------------------------------------------------

def test_probe_by_layer_tidy_and_consistent_with_probe_cv():
    x_sig, y = planted(n=240, d=16, seed=6)
    x_noise = np.random.default_rng(1).normal(size=x_sig.shape)
    groups = np.arange(len(y)) // 2
    df = probe_by_layer([x_noise, x_sig], y, groups, layers=[3, 7], variant="mean", shuffled_repeats=2, n_boot=200)
    assert list(df.columns) == ["layer", "variant", "labels", "accuracy", "acc_lo", "acc_hi", "macro_f1", "f1_lo",
                                "f1_hi"]
    assert df[["layer", "labels"]].values.tolist() == [[3, "true"], [3, "shuffled"], [7, "true"], [7, "shuffled"]]
    assert (df.variant == "mean").all()
    r = probe_cv(x_sig, y, groups, n_boot=200)
    row = df[(df.layer == 7) & (df.labels == "true")].iloc[0]
    assert (row.accuracy, row.acc_lo, row.acc_hi, row.macro_f1) == (r.accuracy, *r.acc_ci, r.macro_f1)
    s = shuffled_label_control(x_sig, y, groups, n_repeats=2)
    srow = df[(df.layer == 7) & (df.labels == "shuffled")].iloc[0]
    assert srow.accuracy == s["accuracy_mean"]
    assert srow.acc_hi == pytest.approx(s["accuracy_mean"] + 2 * s["accuracy_sd"])
    assert row.accuracy > 0.9 and srow.accuracy < 0.45
    assert df[(df.layer == 3) & (df.labels == "true")].accuracy.iloc[0] < 0.45


# --- transfer ------------------------------------------------------------------------------------------------

def test_transfer_eval_matches_classification_report():
    x, y = planted(n=400, d=16, sep=2.0, seed=8)
    p = fit_probe(x[:200], y[:200])
    r = transfer_eval(p, x[200:], y[200:])
    rep = classification_report(y[200:], p.predict(x[200:]), labels=list(EMOTIONS), output_dict=True, zero_division=0)
    assert list(r["per_class"].index) == list(EMOTIONS) and r["missing"] == []
    for c in EMOTIONS:
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"),
                             ("support", "support")):
            assert r["per_class"].loc[c, ours] == pytest.approx(rep[c][theirs])
    assert r["macro_f1"] == pytest.approx(rep["macro avg"]["f1-score"])
    assert r["accuracy"] == pytest.approx(accuracy_score(y[200:], p.predict(x[200:])))
    assert r["confusion"].to_numpy().sum() == 200


def test_transfer_eval_with_a_class_missing_from_the_test_set():
    x, y = planted(n=400, d=16, sep=2.0, seed=9)
    p = fit_probe(x[:200], y[:200])
    xt, yt = x[200:], np.where(y[200:] == "apology", "anger", y[200:])  # apology rows relabelled: absent, yet predicted
    r = transfer_eval(p, xt, yt)
    pred = p.predict(xt)
    assert r["missing"] == ["apology"] and (pred == "apology").any()
    row = r["per_class"].loc["apology"]
    assert row.support == 0 and np.isnan(row.recall) and np.isnan(row.f1) and row.precision == 0
    present = ["gratitude", "anger", "neutral"]
    rep = classification_report(yt, pred, labels=present, output_dict=True, zero_division=0)
    for c in present:
        assert r["per_class"].loc[c, "f1"] == pytest.approx(rep[c]["f1-score"])
        assert r["per_class"].loc[c, "recall"] == pytest.approx(rep[c]["recall"])
    assert r["macro_f1"] == pytest.approx(f1_score(yt, pred, labels=present, average="macro"))
    assert r["accuracy"] == pytest.approx(accuracy_score(yt, pred))
    with pytest.raises(ValueError, match="joy"):
        transfer_eval(p, xt[:2], ["joy", "anger"])


# --- probe_direction -----------------------------------------------------------------------------------------

def anisotropic_shift(n=800, d=32, seed=0):
    """Class 'anger' shifted by 3 along unit u; noise isotropic along u but with scales e^-1..e^3 elsewhere."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    perp = np.eye(d) - np.outer(u, u)
    noise = rng.normal(size=(n, d)) + (rng.normal(size=(n, d)) * np.exp(rng.uniform(-1, 3, d))) @ perp
    y = np.resize(EMO, n)
    return noise + 3.0 * (y == "anger")[:, None] * u, y, u


def test_probe_direction_recovers_planted_raw_direction():
    x, y, u = anisotropic_shift()
    p = fit_probe(x, y)
    w = probe_direction(p, "anger")
    assert np.linalg.norm(w) == pytest.approx(1.0)
    assert w @ u > 0.9
    proj = x @ w
    assert proj[y == "anger"].mean() > proj[y != "anger"].mean()
    # the scaler must be undone: the standardised-space coefficients point elsewhere
    lr = p.named_steps["logreg"]
    naive = lr.coef_[list(lr.classes_).index("anger")] - lr.coef_.mean(axis=0)
    assert abs(naive @ u) / np.linalg.norm(naive) < 0.9
    # an unshifted class: oriented by the data so that its own mean projection is the larger
    w2 = probe_direction(p, "neutral", x, y)
    assert (x @ w2)[y == "neutral"].mean() > (x @ w2)[y != "neutral"].mean()


@pytest.mark.parametrize("pca,classes", [(None, EMOTIONS), (8, EMOTIONS), (None, ("anger", "neutral"))])
def test_probe_direction_is_the_probes_own_readout(pca, classes):
    # x @ w must equal the class logit minus the mean logit, up to one positive factor and an offset
    x, y = planted(n=300, d=24, sep=1.5, seed=10, classes=np.array(classes))
    x = x * np.exp(np.random.default_rng(2).uniform(-2, 2, 24))
    p = fit_probe(x, y, pca=pca)
    for c in classes:
        logits = p.decision_function(x)
        logits = np.c_[-logits / 2, logits / 2] if logits.ndim == 1 else logits
        rel = logits[:, list(p.classes_).index(c)] - logits.mean(axis=1)
        proj = x @ probe_direction(p, c)
        slope, intercept = np.polyfit(proj, rel, 1)
        assert slope > 0 and np.allclose(slope * proj + intercept, rel, atol=1e-6 * np.abs(rel).max())
    with pytest.raises(ValueError, match="apology"):
        probe_direction(p, "apology") if "apology" not in classes else probe_direction(p, "joy")
