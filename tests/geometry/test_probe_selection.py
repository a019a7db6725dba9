"""Nested cross-validation over layers against a hand-written sklearn loop, planted layers, isotropic noise
(chance, with an interval that covers it) and the shuffled-label band."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from lib.emotions import EMOTIONS
from lib.geometry.probe_selection import modal_layer, nested_probe, shuffled_band
from lib.geometry.probes import MAX_ITER, fit_probe, probe_direction
from lib.stats.permutation import group_permutation
from lib.stats.splits import nested_folds

EMO = np.array(EMOTIONS)


def layered(n=320, d=12, seps=(0.0, 1.2, 0.5), seed=0):
    """Balanced labels, text groups of two rows sharing a label; layer i shifts each class by seps[i] along its
    own random unit vector (0: pure noise)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.resize(EMO, n // 2), 2)
    groups = np.arange(n) // 2
    idx = np.array([EMOTIONS.index(c) for c in y])
    xs = []
    for sep in seps:
        means = rng.normal(size=(4, d))
        means *= sep / np.linalg.norm(means, axis=1, keepdims=True)
        xs.append(rng.normal(size=(n, d)) + means[idx])
    return xs, y, groups


def hand_nested(xs, y, folds):
    """The nested procedure written out with plain sklearn: per outer fold, fit every layer on train, score on
    validation, take the best (first of ties), refit on train + validation, predict the test fold."""
    def fit(x, rows):
        return Pipeline([("s", StandardScaler()), ("lr", LogisticRegression(C=1.0, max_iter=MAX_ITER))]).fit(x[rows],
                                                                                                         y[rows])
    chosen, test_pred, val = [], np.empty_like(y), np.zeros((len(folds), len(xs)))
    for i, f in enumerate(folds):
        val[i] = [(fit(x, f.train).predict(x[f.val]) == y[f.val]).mean() for x in xs]
        best = int(np.argmax(val[i]))
        chosen.append(best)
        test_pred[f.test] = fit(xs[best], np.r_[f.train, f.val]).predict(xs[best][f.test])
    return chosen, test_pred, val


def test_nested_probe_equals_a_hand_written_loop_and_reports_the_outer_accuracy():
    xs, y, groups = layered(seed=1)
    folds = nested_folds(y, groups, n_splits=5, seed=3)
    r = nested_probe(xs, y, groups, layers=[4, 7, 9], folds=folds, seed=0)
    chosen, test_pred, val = hand_nested(xs, y, folds)
    assert r.chosen == tuple([4, 7, 9][c] for c in chosen) and set(r.chosen) == {7}  # the planted layer
    np.testing.assert_array_equal(r.test_pred, test_pred)
    np.testing.assert_allclose(r.val_accuracy, val)
    assert r.accuracy == pytest.approx((test_pred == y).mean())
    assert r.macro_f1 == pytest.approx(f1_score(y, test_pred, average="macro"))
    # the headline is the test folds' accuracy, not the validation curve's value at the chosen layer
    assert 0.5 < r.accuracy < 0.95 and r.accuracy != r.validation_curve[1]
    assert r.modal_layer == 7 and r.n_fits == 5 * 3 + 5
    # the pooled validation curve: every row predicted once by a fit that did not see it
    for j, x in enumerate(xs):
        pred = np.empty_like(y)
        for f in folds:
            pred[f.val] = fit_probe(x[f.train], y[f.train]).predict(x[f.val])
        assert r.validation_curve[j] == pytest.approx((pred == y).mean())
    assert np.argmax(r.validation_curve) == 1
    with_threads = nested_probe(xs, y, groups, layers=[4, 7, 9], folds=folds, n_jobs=2)
    np.testing.assert_array_equal(with_threads.test_pred, r.test_pred)


def test_choosing_among_noise_layers_inflates_the_curve_not_the_headline():
    xs, y, groups = layered(n=240, seps=(0.0,) * 10, seed=5)
    r = nested_probe(xs, y, groups, n_splits=5, seed=0)
    assert np.nanmax(r.validation_curve) > r.accuracy  # the top of the curve is a chosen number
    ci = r.intervals(groups, n_boot=500)["test"]
    assert ci[0, 0] <= 0.25 <= ci[0, 1]


def test_isotropic_noise_probe_at_chance_with_an_interval_covering_chance():
    rng = np.random.default_rng(0)
    y = np.repeat(EMO, 680)
    groups = np.arange(len(y)) // 2  # pairs of rows that must stay in one fold
    xs = [rng.standard_normal((len(y), 576)) for _ in range(2)]
    r = nested_probe(xs, y, groups, n_splits=5, seed=0)
    (acc_lo, acc_hi), (f1_lo, f1_hi) = r.intervals(groups, n_boot=500)["test"]
    assert abs(r.accuracy - 0.25) < 0.03 and acc_lo <= 0.25 <= acc_hi, (r.accuracy, acc_lo, acc_hi)
    assert f1_lo <= 0.25 <= f1_hi
    assert all(np.isfinite(r.validation_curve))


def test_keep_directions_are_the_inner_fits_directions():
    xs, y, groups = layered(n=160, d=6)
    folds = nested_folds(y, groups, n_splits=4, seed=1)
    r = nested_probe(xs[:2], y, groups, folds=folds, keep_directions=True)
    assert r.directions.shape == (4, 2, 4, 6)
    pipe = fit_probe(xs[1][folds[2].train], y[folds[2].train])
    np.testing.assert_allclose(r.directions[2, 1, list(r.classes).index("anger")], probe_direction(pipe, "anger"),
                               atol=1e-6)


def test_one_candidate_skips_the_inner_fits():
    xs, y, groups = layered(n=160)
    r = nested_probe(xs, y, groups, layers=[0, 1, 2], candidates=[2], n_splits=4)
    assert r.chosen == (2, 2, 2, 2) and r.n_fits == 4 and np.isnan(r.validation_curve).all()
    with pytest.raises(ValueError, match="not among the layers"):
        nested_probe(xs, y, groups, candidates=[5])
    with pytest.raises(ValueError, match="shape"):
        nested_probe([xs[0][:10]], y, groups)


def test_shuffled_band_is_the_nested_procedure_on_group_permuted_labels():
    xs, y, groups = layered(n=240, seed=2)
    band = shuffled_band(xs[1:2], y, groups, repeats=4, layers=[1], n_splits=4, seed=6)
    rng = np.random.default_rng(6)
    accs = []
    for _ in range(4):
        yp = group_permutation(y, groups, rng)
        accs.append(nested_probe(xs[1:2], yp, groups, layers=[1], folds=nested_folds(yp, groups, 4, 6)).accuracy)
    np.testing.assert_allclose(band["accuracies"], accs)
    assert band["accuracy_lo"] < band["accuracy_hi"]  # a band: positive width
    assert band["accuracy_lo"] == pytest.approx(np.quantile(accs, 0.025))
    real = nested_probe(xs[1:2], y, groups, layers=[1], n_splits=4, seed=6)
    assert band["accuracy_hi"] < 0.4 < real.accuracy
    assert band["n_fits"] == 4 * 4
    with pytest.raises(ValueError, match="integer >= 2"):
        shuffled_band(xs[1:2], y, groups, repeats=1)


def test_modal_layer_breaks_ties_by_validation_then_depth():
    assert modal_layer([2, 2, 5]) == 2
    assert modal_layer([3, 5], {3: 0.7, 5: 0.8}) == 5
    assert modal_layer([5, 3], {3: 0.8, 5: 0.8}) == 3
    with pytest.raises(ValueError, match="no chosen"):
        modal_layer([])
