"""Probes against sklearn recomputations, explicit resampling loops and planted structure in synthetic data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from lib.emotions import EMOTIONS
from lib.geometry.folds import grouped_folds
from lib.geometry.probes import (MAX_ITER, bootstrap_ci, fit_probe, probe_by_layer, probe_cv, probe_direction,
                                 shuffled_label_control, transfer_eval)
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
