"""The bootstrap engine and the intervals built on it, against explicit resampling loops and plain numpy draws."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lib.emotions import EMOTIONS
from lib.geometry.probes import bootstrap_ci
from lib.stats.bootstrap import bootstrap, group_bootstrap, group_codes, mean_ci, paired_difference, percentile_interval


def _quantile_linear(values, q):
    """numpy's default ('linear', Hyndman-Fan type 7) quantile, by hand."""
    s = sorted(values)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def _bootstrap_by_loop(x, n_boot, seed, level):
    rng = np.random.default_rng(seed)
    n = len(x)
    means = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        means.append(sum(x[int(i)] for i in idx) / n)
    return _quantile_linear(means, (1 - level) / 2), _quantile_linear(means, (1 + level) / 2)


@pytest.mark.parametrize("n", [5, 12, 31])
def test_mean_ci_matches_explicit_loop(n):
    x = [float(v) for v in np.random.default_rng(100 + n).normal(1.0, 2.0, size=n)]
    got = mean_ci(x, n_boot=500, seed=7, level=0.9)
    low, high = _bootstrap_by_loop(x, 500, 7, 0.9)
    assert got["n"] == n and got["level"] == 0.9
    assert got["mean"] == pytest.approx(sum(x) / n, abs=1e-12)
    assert got["ci_low"] == pytest.approx(low, abs=1e-12)
    assert got["ci_high"] == pytest.approx(high, abs=1e-12)
    assert got["ci_low"] <= got["mean"] <= got["ci_high"]


def test_paired_difference_matches_loop_on_differences():
    rng = np.random.default_rng(3)
    base = rng.normal(size=20)
    other = base + 0.5 + rng.normal(scale=0.3, size=20)
    got = paired_difference(base.tolist(), other.tolist(), n_boot=400, seed=11)
    diffs = [float(o - b) for b, o in zip(base, other)]
    low, high = _bootstrap_by_loop(diffs, 400, 11, 0.95)
    assert got["mean"] == pytest.approx(sum(diffs) / 20, abs=1e-12)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert got["ci_low"] <= got["mean"] <= got["ci_high"] and got["ci_low"] > 0  # clear planted shift


def test_ci_narrows_with_more_items():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200, 2000):
        r = mean_ci(rng.normal(size=n))
        widths.append(r["ci_high"] - r["ci_low"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(10, rel=0.3)  # width ~ 1 / sqrt(n)


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="non-empty"):
        paired_difference([], [])
    with pytest.raises(ValueError, match=r"x\[1\]"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], level=95)


# --- the resamples the engine defines: np.random.default_rng(seed).integers(0, n, size=(b, n)), block by block ---

def plain_blocks(n, n_boot, seed, block):
    """The documented draws, written out: one generator, one [b, n] integer block after another."""
    rng = np.random.default_rng(seed)
    return np.vstack([rng.integers(0, n, size=(min(block, n_boot - s), n)) for s in range(0, n_boot, block)])


def test_engine_hands_the_statistic_the_documented_blocks():
    seen = []
    reps = bootstrap(lambda idx: seen.append(idx.copy()) or idx.sum(axis=1), 7, n_boot=450, seed=3, block=200)
    assert [b.shape for b in seen] == [(200, 7), (200, 7), (50, 7)]
    np.testing.assert_array_equal(np.vstack(seen), plain_blocks(7, 450, 3, 200))
    np.testing.assert_array_equal(reps, plain_blocks(7, 450, 3, 200).sum(axis=1))
    np.testing.assert_array_equal(percentile_interval(reps, 0.9), np.quantile(reps, [(1 - 0.9) / 2, (1 + 0.9) / 2]))


def test_mean_ci_draws_one_block_of_all_resamples():
    x = np.random.default_rng(5).normal(size=23)
    got = mean_ci(x, n_boot=700, seed=4, level=0.9)
    idx = np.random.default_rng(4).integers(0, 23, size=(700, 23))  # one block
    q = [(1 - 0.9) / 2, (1 + 0.9) / 2]  # the documented quantiles (0.04999..., not 0.05, in floating point)
    low, high = np.quantile(x[idx].mean(axis=1), q)
    assert (got["ci_low"], got["ci_high"]) == (low, high)  # exactly: the same draws, the same arithmetic
    other = mean_ci(x, n_boot=700, seed=5, level=0.9)
    assert (other["ci_low"], other["ci_high"]) != (low, high)  # the interval does follow the draws


def plain_scores(y, pred, idx, classes):
    """Accuracy and macro-F1 (F1 of a class absent from both: 0) of each resample, by plain numpy."""
    accs, f1s = [], []
    for i in idx:
        t, p = y[i], pred[i]
        accs.append(np.mean(t == p))
        f1 = []
        for c in classes:
            tp, fp, fn = np.sum((t == c) & (p == c)), np.sum((t != c) & (p == c)), np.sum((t == c) & (p != c))
            f1.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
        f1s.append(np.mean(f1))
    return np.array(accs), np.array(f1s)


def test_bootstrap_ci_draws_blocks_of_200():
    rng = np.random.default_rng(6)
    classes = list(EMOTIONS)
    y = np.array(classes)[rng.integers(0, 4, 90)]
    pred = np.where(rng.random(90) < 0.55, y, np.array(classes)[rng.integers(0, 4, 90)])
    q = [(1 - 0.9) / 2, (1 + 0.9) / 2]
    acc_ci, f1_ci = bootstrap_ci(y, pred, classes, n_boot=450, seed=8, level=0.9)
    accs, f1s = plain_scores(y, pred, plain_blocks(90, 450, 8, 200), classes)
    assert acc_ci == tuple(np.quantile(accs, q))  # exactly: k / n either way
    np.testing.assert_allclose(f1_ci, np.quantile(f1s, q), rtol=0, atol=1e-15)
    assert bootstrap_ci(y, pred, classes, n_boot=450, seed=9, level=0.9) != (acc_ci, f1_ci)  # seed-dependent


# --- group bootstrap ---------------------------------------------------------------------------------------------------


def test_group_bootstrap_with_singleton_groups_is_the_row_bootstrap():
    x = np.random.default_rng(1).normal(size=37)
    rows = bootstrap(lambda idx: x[idx].mean(1), x.size, n_boot=300, seed=5)
    groups = group_bootstrap(lambda w: (w * x).sum(1) / w.sum(1), np.arange(x.size), n_boot=300, seed=5, block=300)
    assert np.allclose(rows, groups)


def test_group_bootstrap_widens_intervals_for_clustered_rows():
    # 40 groups of 10 identical rows: the row bootstrap treats 400 rows as independent and is about sqrt(10) too narrow
    rng = np.random.default_rng(2)
    x = np.repeat(rng.normal(size=40), 10)
    g = np.repeat(np.arange(40), 10)
    by_row = mean_ci(x, seed=0)
    by_group = mean_ci(x, seed=0, groups=g)
    ratio = (by_group["ci_high"] - by_group["ci_low"]) / (by_row["ci_high"] - by_row["ci_low"])
    assert 2.4 < ratio < 4.2, ratio
    # and the group interval matches the textbook interval of the 40 group means
    se = x[::10].std(ddof=1) / np.sqrt(40)
    assert (by_group["ci_high"] - by_group["ci_low"]) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_group_codes_check_length():
    assert group_codes(["b", "a", "b"], 3).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="one group per item: 3 items"):
        group_codes([0, 1], 3)
