"""Held-out projections against direct fits on each fold's training rows, a hand-computed effect size and
bootstrap, and isotropic noise (where the old in-sample reading was about 1.2 sd and the held-out one is 0)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.directions import diff_of_means, emotion_directions, orient, pca_direction
from lib.geometry.heldout import (crossfit_directions, crossfit_projections, fold_pairs, insample_projections,
                                  permuted_gaps, projection_stats)
from lib.stats.permutation import group_permutation
from lib.stats.splits import grouped_folds, nested_folds
from tests.geometry.synthetic import planted

CLASSES = [*TARGET_EMOTIONS, BASELINE]
KEYS = [(e, m) for e in TARGET_EMOTIONS for m in ("mean_vs_neutral", "mean_vs_rest", "pca")]


def _noise(n_per_class=680, d=576, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(CLASSES, n_per_class)
    return rng.standard_normal((len(y), d)), y


def test_crossfit_directions_equal_direct_fits_on_training_rows():
    x, labels, _ = planted(seed=1, n=90, d=80)  # d >= 64: the pca path runs ARPACK on the scatter matrices
    x = x.astype(np.float64)
    y = labels["emotion"].to_numpy()
    folds = grouped_folds(y, np.arange(len(y)) // 3, n_splits=4, seed=2)
    probe = {(e, "probe"): np.random.default_rng(3).normal(size=(4, x.shape[1])) for e in TARGET_EMOTIONS}
    got = crossfit_directions(x, labels, folds, KEYS + list(probe), extra=probe)
    for i, (train, _) in enumerate(folds):
        want = emotion_directions(x[train], y[train], extra={k: v[i] for k, v in probe.items()})
        for key, v in zip(KEYS + list(probe), got):
            np.testing.assert_allclose(v[i], want[key], atol=1e-7, err_msg=str(key))
        # the same, one by one with the public functions
        np.testing.assert_allclose(got[0][i], diff_of_means(x[train], y[train], "gratitude"), atol=1e-12)
        np.testing.assert_allclose(got[1][i], diff_of_means(x[train], y[train], "gratitude", "rest"), atol=1e-12)
        np.testing.assert_allclose(got[2][i], pca_direction(x[train], y[train], "gratitude"), atol=1e-7)
        np.testing.assert_allclose(got[-1][i], orient(probe["apology", "probe"][i], x[train], y[train], "apology"))


def test_crossfit_projections_read_each_fold_on_its_own_training_fit():
    x, labels, _ = planted(seed=4, n=40, d=12)
    y = labels["emotion"].to_numpy()
    folds = nested_folds(y, np.arange(len(y)), n_splits=4, seed=0)
    proj, keys = crossfit_projections(x, y, folds)
    assert keys == KEYS and proj.shape == (len(y), len(KEYS))
    for f in folds:
        train = np.sort(np.r_[f.train, f.val])  # a nested fold's directions are fitted on train + validation
        dirs = emotion_directions(x[train].astype(np.float64), y[train])
        base = x[train][y[train] == BASELINE].astype(np.float64).mean(0)
        want = np.stack([(x[f.test] - base) @ dirs[k] for k in keys], axis=1)
        np.testing.assert_allclose(proj[f.test], want, atol=1e-9)
    same, _ = crossfit_projections(x, y, None)  # folds=None: fitted and read on all rows
    full = emotion_directions(x, y)
    np.testing.assert_allclose(same, insample_projections(x, y, {k: full[k] for k in keys})[0], atol=1e-9)


def test_fold_pairs_refuse_folds_that_do_not_partition_the_rows():
    with pytest.raises(ValueError, match="partition"):
        fold_pairs([(np.array([1, 2]), np.array([0]))], 4)
    with pytest.raises(ValueError, match="outside its test fold"):
        fold_pairs([(np.array([1]), np.array([0, 2])), (np.array([0, 2]), np.array([1, 3]))], 4)


def test_projection_stats_against_hand_computation_and_a_bootstrap_loop():
    rng = np.random.default_rng(5)
    y = np.array(["anger"] * 30 + ["neutral"] * 50)
    p = np.c_[rng.normal(1.0, 2.0, 80), rng.normal(0, 1, 80)]
    groups = np.arange(80) // 2
    st = projection_stats(p, y, classes=["anger", "neutral"], groups=groups, n_boot=300, seed=7)
    a, b = p[y == "anger", 0], p[y == "neutral", 0]
    pooled = np.sqrt((30 * a.var() + 50 * b.var()) / 80)
    assert st["gap"][0, 0] == pytest.approx((a.mean() - b.mean()) / pooled) and st["gap"][0, 1] == 0
    assert st["mean"][0, 0] == pytest.approx(a.mean()) and st["sd"][0, 0] == pytest.approx(a.std(ddof=1))
    # the bootstrap draws whole groups: replicate b weights each row by how often its group was drawn
    draw = np.random.default_rng(7)
    gaps = []
    for _ in range(3):  # blocks of 100 replicates
        idx = draw.integers(0, 40, size=(100, 40))
        for row in idx:
            w = np.bincount(row, minlength=40)[groups].astype(float)
            wa, wb = w[y == "anger"], w[y == "neutral"]
            ma, mb = np.average(a, weights=wa), np.average(b, weights=wb)
            va, vb = np.average((a - ma) ** 2, weights=wa), np.average((b - mb) ** 2, weights=wb)
            gaps.append((ma - mb) / np.sqrt((wa.sum() * va + wb.sum() * vb) / (wa.sum() + wb.sum())))
    np.testing.assert_allclose([st["gap_lo"][0, 0], st["gap_hi"][0, 0]], np.quantile(gaps, [0.025, 0.975]))


@pytest.fixture(scope="module")
def noise():
    return _noise()


def test_isotropic_noise_held_out_gap_is_zero_where_the_in_sample_gap_was_one_sd(noise):
    """Fails on the old phase-03 reading (directions fitted and read on the same rows): ~1.2 sd there."""
    x, y = noise
    groups = np.arange(len(y))
    folds = nested_folds(y, groups, n_splits=5, seed=0)
    held, keys = crossfit_projections(x, y, folds, ("mean_vs_neutral", "pca"))
    st = projection_stats(held, y, classes=CLASSES, groups=groups, n_boot=200)
    own = [keys.index((e, "mean_vs_neutral")) for e in TARGET_EMOTIONS]
    gaps = st["gap"][own, [CLASSES.index(e) for e in TARGET_EMOTIONS]]
    assert np.abs(gaps).max() < 0.15, gaps
    lo = st["gap_lo"][own, [CLASSES.index(e) for e in TARGET_EMOTIONS]]
    hi = st["gap_hi"][own, [CLASSES.index(e) for e in TARGET_EMOTIONS]]
    assert ((lo < 0) & (0 < hi)).all()
    # the old reading: diff_of_means on all rows, read on the same rows
    old = {(e, "mean_vs_neutral"): diff_of_means(x, y, e) for e in TARGET_EMOTIONS}
    same, _ = insample_projections(x, y, old)
    old_gaps = projection_stats(same, y, classes=CLASSES)["gap"][range(3), [0, 1, 2]]
    assert (old_gaps > 1.0).all() and np.allclose(old_gaps, np.sqrt(2 * 576 / 680), atol=0.15), old_gaps


def test_permuted_gaps_match_a_direct_loop_and_sit_at_zero():
    x, labels, _ = planted(seed=6, n=60, d=16)
    y = labels["emotion"].to_numpy()
    groups = np.arange(len(y)) // 3
    folds = nested_folds(y, groups, n_splits=4, seed=1)
    g, keys = permuted_gaps([x, 2 * x], y, folds, groups, repeats=4, seed=9)
    assert g.shape == (4, 2, 6, 4) and keys[:2] == [("gratitude", "mean_vs_neutral"), ("gratitude", "mean_vs_rest")]
    rng = np.random.default_rng(9)
    for r in range(4):
        yp = group_permutation(y, groups, rng)  # the shared implementation, repeat by repeat
        proj, _ = crossfit_projections(x, yp, folds, ("mean_vs_neutral", "mean_vs_rest"))
        np.testing.assert_allclose(g[r, 0], projection_stats(proj, yp, classes=[BASELINE, *TARGET_EMOTIONS])["gap"])
    np.testing.assert_allclose(g[:, 0], g[:, 1])  # a gap in sd units does not change with the scale
    real, _ = crossfit_projections(x, y, folds, ("mean_vs_neutral",))
    assert projection_stats(real, y, classes=CLASSES)["gap"][0, 0] > 5 > np.abs(g[:, 0, 0, 1]).max()


def test_errors_name_the_problem():
    x, y = _noise(10, 4)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="1 rows with NaN"):
        crossfit_projections(x, y, None)
    with pytest.raises(ValueError, match="not one of"):
        crossfit_directions(np.nan_to_num(x), y, None, [("anger", "probe")])
    with pytest.raises(ValueError, match="only the difference-of-means"):
        permuted_gaps([x], y, None, None, repeats=2, methods=("pca",))
    with pytest.raises(ValueError, match="baseline"):
        projection_stats(np.zeros((40, 1)), y, classes=["anger"])
    labels = pd.DataFrame({"emotion": y})  # a labels frame reads its emotion column
    np.testing.assert_array_equal(crossfit_projections(np.nan_to_num(x), labels, None)[0],
                                  crossfit_projections(np.nan_to_num(x), y, None)[0])
