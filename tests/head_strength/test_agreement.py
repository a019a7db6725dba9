"""Agreement statistics against scipy and against the documented resampling done by hand; calibration on planted
data (coverage of the interval, the permutation p's false-positive rate); the top overlap against enumeration."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from lib.head_strength.agreement import AgreementInputError, spearman, spearman_interval, spearman_rows, top_overlap


@pytest.mark.parametrize("seed", range(5))
def test_spearman_equals_scipy_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=25), rng.normal(size=25)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    xt, yt = rng.integers(0, 5, size=25), rng.integers(0, 4, size=25)  # many ties
    assert spearman(xt, yt) == pytest.approx(spearmanr(xt, yt).statistic, abs=1e-12)
    bx, by = rng.normal(size=(6, 12)), rng.normal(size=(6, 12))
    np.testing.assert_allclose(spearman_rows(bx, by), [spearmanr(a, b).statistic for a, b in zip(bx, by)], atol=1e-12)
    assert np.isnan(spearman_rows(np.ones((1, 5)), by[:1, :5])[0])


def _hand_replicates(x, y, n_boot, seed, paired):
    """The documented streams, by hand: one generator per SeedSequence child, row draws integers(0, n, n)."""
    s_x, s_y, s_perm = np.random.SeedSequence(seed).spawn(3)
    ix = np.random.default_rng(s_x).integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    iy = ix if paired else np.random.default_rng(s_y).integers(0, y.shape[0], size=(n_boot, y.shape[0]))
    reps = [spearmanr(x[a].mean(0), y[b].mean(0)).statistic for a, b in zip(ix, iy)]
    return np.array(reps), s_perm


@pytest.mark.parametrize("paired", [True, False])
def test_interval_and_permutation_p_equal_a_hand_computation(paired):
    rng = np.random.default_rng(7)
    mu = rng.normal(size=15)
    x = mu + rng.normal(size=(20, 15))
    y = 0.5 * mu + rng.normal(size=(20 if paired else 33, 15))
    got = spearman_interval(x, y, n_boot=150, n_perm=300, seed=11, paired=paired)
    rho = spearmanr(x.mean(0), y.mean(0)).statistic
    reps, s_perm = _hand_replicates(x, y, 150, 11, paired)
    low, high = np.quantile(reps, [0.025, 0.975])
    perm_rng = np.random.default_rng(s_perm)
    null = [spearmanr(x.mean(0), y.mean(0)[perm_rng.permutation(15)]).statistic for _ in range(300)]
    p = (1 + sum(abs(r) >= abs(rho) for r in null)) / 301
    assert got["rho"] == pytest.approx(rho, abs=1e-12)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    assert got["p_perm"] == pytest.approx(p)
    assert got["n_boot_valid"] == 150 and got["n_rows_y"] == y.shape[0] and got["paired"] is paired
    assert 0 < low < rho < high  # a real interval around a positive rho
    assert got == spearman_interval(x, y, n_boot=150, n_perm=300, seed=11, paired=paired)  # seeded
    other = spearman_interval(x, y, n_boot=150, n_perm=300, seed=12, paired=paired)
    assert other["ci_low"] != got["ci_low"]


def test_monotone_relation_gives_rho_near_one_and_the_smallest_p():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 40)) * 0.2 + np.linspace(0, 8, 40)
    y = np.exp(x) + rng.normal(size=x.shape) * 0.01  # monotone in each row, so in the means
    r = spearman_interval(x, y, n_boot=300, n_perm=400)
    assert r["rho"] > 0.99 and r["ci_low"] > 0.97 and r["p_perm"] == 1 / 401
    neg = spearman_interval(x, -y, n_boot=100, n_perm=400)  # two-sided: a negative relation is found too
    assert neg["rho"] < -0.99 and neg["p_perm"] == 1 / 401


def test_interval_coverage_on_planted_head_means():
    """Heads with planted true means (true rho0 = rho of the true means); rows add noise. Over 200 seeds the
    95% interval covers rho0 in 88-99% of them, paired (correlated row noise) and unpaired. (With heavier row
    noise or near-tied heads the interval undercovers: it targets the rho of noisy means, biased toward 0.)"""
    base = np.random.default_rng(1)
    mu_x = base.normal(size=40)
    mu_y = 0.6 * mu_x + 0.8 * base.normal(size=40)
    rho0 = spearman(mu_x, mu_y)
    for paired in (True, False):
        cover = []
        for s in range(200):
            r = np.random.default_rng(s)
            x = mu_x + 0.7 * r.normal(size=(50, 40))
            y = mu_y + 0.7 * r.normal(size=(50, 40))
            if paired:
                y = y + 0.5 * (x - mu_x)
            res = spearman_interval(x, y, n_boot=300, n_perm=0, seed=s, paired=paired)
            cover.append(res["ci_low"] <= rho0 <= res["ci_high"])
        assert 0.88 <= np.mean(cover) <= 0.99, (paired, np.mean(cover))


def test_independent_noise_covers_zero_and_the_permutation_p_is_calibrated():
    ps, cover = [], []
    for s in range(200):
        r = np.random.default_rng(1000 + s)
        res = spearman_interval(r.normal(size=(40, 30)), r.normal(size=(40, 30)), n_boot=200, n_perm=200, seed=s)
        ps.append(res["p_perm"])
        cover.append(res["ci_low"] <= 0 <= res["ci_high"])
    assert np.mean(cover) >= 0.9
    assert 0.01 <= np.mean(np.array(ps) <= 0.05) <= 0.10  # a level-5% test rejects about 5% of the time
    assert 0.4 <= np.mean(ps) <= 0.6  # p is about uniform


def test_spearman_interval_checks_its_input():
    x = np.random.default_rng(0).normal(size=(10, 6))
    with pytest.raises(AgreementInputError, match="x_rows has 6 heads and y_rows 5"):
        spearman_interval(x, x[:, :5])
    with pytest.raises(AgreementInputError, match="paired=True needs the same rows: x_rows has 10, y_rows 9"):
        spearman_interval(x, x[:9])
    with pytest.raises(AgreementInputError, match="all equal"):
        spearman_interval(x, np.ones_like(x))
    with pytest.raises(AgreementInputError, match="y_rows holds 1 non-finite"):
        spearman_interval(x, np.where(np.eye(10, 6, dtype=bool) & (np.arange(6) == 0), np.nan, x))
    with pytest.raises(AgreementInputError, match=r"x_rows has shape \(6,\)"):
        spearman_interval(x[0], x[0])
    with pytest.raises(AgreementInputError, match="n_perm=-1"):
        spearman_interval(x, x, n_perm=-1)
    assert spearman_interval(x.reshape(10, 2, 3), x.reshape(10, 2, 3), n_boot=10, n_perm=0)["p_perm"] is None


def test_top_overlap_equals_enumeration_of_random_sets():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=12), rng.normal(size=12)
    y[np.argsort(-x)[:2]] += 10  # two of x's top heads are y's top too
    r = top_overlap(x, y, frac=0.25)
    k = 3
    top_x = set(np.argsort(-x)[:k])
    assert r["k"] == k and r["overlap"] == len(top_x & set(np.argsort(-y)[:k])) and r["overlap"] >= 2
    overlaps = [len(top_x & set(s)) for s in itertools.combinations(range(12), k)]
    assert r["expected"] == pytest.approx(np.mean(overlaps))
    assert r["p"] == pytest.approx(np.mean(np.array(overlaps) >= r["overlap"]))
    assert r["p"] == pytest.approx(sum(math.comb(k, j) * math.comb(12 - k, k - j) for j in range(r["overlap"], k + 1))
                                   / math.comb(12, k))


def test_top_overlap_rounding_ties_and_input():
    assert top_overlap(np.arange(270.0), np.arange(270.0))["k"] == 27
    assert top_overlap(np.arange(4.0).reshape(2, 2), np.arange(4.0).reshape(2, 2), frac=0.01)["k"] == 1
    r = top_overlap([1, 1, 1, 0], [0, 1, 1, 1], frac=0.25)  # ties go to the first head: 0 for x, 1 for y
    assert r["overlap"] == 0
    with pytest.raises(AgreementInputError, match="x has 3 heads and y 4"):
        top_overlap([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(AgreementInputError, match="frac=0"):
        top_overlap([1, 2, 3], [1, 2, 3], frac=0)
