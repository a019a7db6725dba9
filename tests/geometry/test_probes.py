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
from lib.geometry.probes import (MAX_ITER, bootstrap_ci, fit_probe, probe_cv, probe_direction, score_intervals,
                                 transfer_eval)
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

def test_planted_signal_found():
    x, y = planted(sep=4.0)
    r = probe_cv(x, y, np.arange(len(y)))
    assert r.accuracy > 0.9 and r.macro_f1 > 0.9


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


# --- score intervals over text groups ----------------------------------------------------------------------

def test_score_intervals_resample_whole_groups_like_a_hand_loop():
    rng = np.random.default_rng(1)
    y = EMO[rng.integers(0, 4, 120)]
    preds = np.stack([np.where(rng.random(120) < p, y, EMO[rng.integers(0, 4, 120)]) for p in (0.3, 0.8)])
    groups = rng.integers(0, 40, 120)  # unequal group sizes
    got = score_intervals(y, preds, EMOTIONS, groups=groups, n_boot=250, seed=4)
    codes = np.unique(groups, return_inverse=True)[1]
    g = codes.max() + 1  # blocks of 200 resamples of the g groups; a row counts once per draw of its group
    draw = np.random.default_rng(4)
    idx = np.vstack([draw.integers(0, g, size=(200, g)), draw.integers(0, g, size=(50, g))])
    for m, pred in enumerate(preds):
        accs, f1s = [], []
        for row in idx:
            rows = np.concatenate([np.flatnonzero(codes == g) for g in row])
            accs.append(accuracy_score(y[rows], pred[rows]))
            f1s.append(f1_score(y[rows], pred[rows], labels=list(EMOTIONS), average="macro", zero_division=0))
        np.testing.assert_allclose(got[m, 0], np.quantile(accs, [0.025, 0.975]), atol=1e-12)
        np.testing.assert_allclose(got[m, 1], np.quantile(f1s, [0.025, 0.975]), atol=1e-12)
    assert got[1, 0, 0] > got[0, 0, 1]  # the better predictions score higher on every resample's interval
    one = bootstrap_ci(y, preds[1], EMOTIONS, groups=groups, n_boot=250, seed=4)
    np.testing.assert_allclose(np.array(one), got[1])


def test_group_intervals_are_wider_than_row_intervals_when_groups_share_errors():
    # 50 groups of 6 rows: each group is right or wrong as a whole, so rows are not independent trials
    rng = np.random.default_rng(2)
    y = np.repeat(EMO[rng.integers(0, 4, 50)], 6)
    wrong = np.repeat(rng.random(50) < 0.3, 6)
    pred = np.where(wrong, np.roll(y, 6), y)
    groups = np.repeat(np.arange(50), 6)
    (g_lo, g_hi), _ = bootstrap_ci(y, pred, EMOTIONS, groups=groups, n_boot=500)
    (r_lo, r_hi), _ = bootstrap_ci(y, pred, EMOTIONS, n_boot=500)
    assert g_hi - g_lo > 1.8 * (r_hi - r_lo)
    with pytest.raises(ValueError, match="not among classes"):
        score_intervals(y, pred, ["anger"], n_boot=10)


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
