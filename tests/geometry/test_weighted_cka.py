"""Weighted (resampled) CKA against explicit resampled copies and a loop over distinct index tuples."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from lib.geometry.cka import debiased_cka, linear_cka
from lib.geometry.grams import normalised_gram
from lib.geometry.weighted_cka import weighted_cka
from lib.stats.bootstrap import bootstrap


def weighted_u_statistic(k, el, w):
    """Song et al.'s HSIC U-statistic over distinct items, each 4-tuple weighted by its items' counts (the
    normaliser, the sum of the weights, cancels in CKA)."""
    n = len(k)
    return sum(w[i] * w[j] * w[q] * w[r] * (k[i, j] * el[i, j] + k[i, j] * el[q, r] - 2 * k[i, j] * el[i, q])
               for i, j, q, r in itertools.permutations(range(n), 4))


def resampled_linear(x, y, w):
    """Linear CKA of the rows repeated by their counts, centred on the resample, with the products of two copies
    of one item left out (each item's own diagonal term kept once per copy)."""
    idx = np.repeat(np.arange(len(x)), w.astype(int))
    xr, yr = x[idx] - x[idx].mean(0), y[idx] - y[idx].mean(0)
    keep = (idx[:, None] != idx[None, :]) | np.eye(len(idx), dtype=bool)
    f = lambda a, b: (a @ a.T * (b @ b.T) * keep).sum()  # noqa: E731
    return f(xr, yr) / np.sqrt(f(xr, xr) * f(yr, yr))


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3)) + 2.0
    y = x @ rng.standard_normal((3, 4)) + rng.standard_normal((7, 4))
    weights = np.array([[2, 0, 1, 3, 1, 0, 1], [1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1, 1], [0, 4, 0, 1, 1, 1, 0]],
                       dtype=float)
    return x, y, weights


def test_debiased_is_the_weighted_u_statistic_over_distinct_items(tiny):
    x, y, weights = tiny
    xc, yc = x - x.mean(0), y - y.mean(0)
    k, el = xc @ xc.T, yc @ yc.T
    _, debiased = weighted_cka(k, el, weights)
    for got, w in zip(debiased, weights):
        want = weighted_u_statistic(k, el, w) / np.sqrt(weighted_u_statistic(k, k, w) * weighted_u_statistic(el, el, w))
        assert got == pytest.approx(want, abs=1e-10)
    assert debiased[1] == pytest.approx(debiased_cka(x, y), abs=1e-10)  # every item once: the sample itself
    keep = weights[2] > 0
    assert debiased[2] == pytest.approx(debiased_cka(x[keep], y[keep]), abs=1e-10)  # 0/1 weights: a subset


def test_linear_is_the_cka_of_the_resampled_rows_without_copy_pairs(tiny):
    x, y, weights = tiny
    linear, _ = weighted_cka(x @ x.T, y @ y.T, weights)  # uncentred kernels: centring is done per resample
    assert linear == pytest.approx([resampled_linear(x, y, w) for w in weights], abs=1e-10)
    assert linear[1] == pytest.approx(linear_cka(x, y), abs=1e-10)
    keep = weights[2] > 0
    assert linear[2] == pytest.approx(linear_cka(x[keep], y[keep]), abs=1e-10)


def test_any_centring_or_scale_of_the_grams_gives_the_same_values(tiny):
    x, y, weights = tiny
    n = len(x)
    plain = weighted_cka(x @ x.T, y @ y.T, weights)
    scaled = weighted_cka(normalised_gram(x, "linear").reshape(n, n), 3 * normalised_gram(y, "linear").reshape(n, n),
                          weights)
    np.testing.assert_allclose(scaled, plain, atol=1e-10)
    u_centred = weighted_cka(normalised_gram(x, "debiased").reshape(n, n),
                             normalised_gram(y, "debiased").reshape(n, n), weights)[1]
    np.testing.assert_allclose(u_centred, plain[1], atol=1e-10)  # debiased stacks can be passed as they are


def test_bootstrap_replicates_centre_on_the_estimate_where_naive_resampling_is_biased():
    rng = np.random.default_rng(3)
    n = 150
    x, y = rng.standard_normal((n, 60)), rng.standard_normal((n, 60))  # independent, wide: linear CKA is biased
    w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(200)]).astype(float)
    linear, debiased = weighted_cka(x @ x.T, y @ y.T, w)
    naive = bootstrap(lambda idx: np.array([linear_cka(x[i], y[i]) for i in idx]), n, n_boot=200, seed=0)
    assert abs(np.median(linear) - linear_cka(x, y)) < 0.02
    assert np.median(naive) > linear_cka(x, y) + 0.05  # repeated rows shrink n: what the copy pairs cause
    assert abs(np.median(debiased)) < 0.02 and abs(debiased_cka(x, y)) < 0.02


def test_errors_name_the_inputs(tiny):
    x, y, _ = tiny
    with pytest.raises(ValueError, match=r"weights \[b, n\]; got \(7, 7\), \(7, 7\), \(1, 5\)"):
        weighted_cka(x @ x.T, y @ y.T, np.ones((1, 5)))
    with pytest.raises(ValueError, match="at least 4 items of positive weight"):
        weighted_cka(x @ x.T, y @ y.T, np.array([[5.0, 1, 1, 0, 0, 0, 0]]))
