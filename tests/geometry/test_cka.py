"""CKA, permutation tests and layer matching against loop-based textbook formulas."""
from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from lib.activations.names import act_name
from lib.geometry.cka import (KINDS, best_match_layers, cka_matrix, debiased_cka, layer_matching_accuracy, linear_cka,
                              match_layers, permutation_from_grams, permutation_null_mean, permutation_test, rbf_cka)
from lib.geometry.grams import gram_stack
from lib.geometry.procrustes import procrustes_distance

SINGLE = {"linear": linear_cka, "debiased": debiased_cka, "rbf": rbf_cka}


# ------------------------------------------------------- slow references: explicit sums, Python loops only
def loop_kernel(x, kind="linear", sigma_frac=0.8):
    """K_ij = <x_i, x_j> on the raw (uncentred) rows, or exp(-|x_i - x_j|^2 / (2 s^2)), s = frac * median_{i<j}."""
    rows = [list(map(float, r)) for r in x]
    n = len(rows)
    if kind != "rbf":
        return [[sum(a * b for a, b in zip(rows[i], rows[j])) for j in range(n)] for i in range(n)]
    dist = [[math.dist(rows[i], rows[j]) for j in range(n)] for i in range(n)]
    sigma = sigma_frac * statistics.median(dist[i][j] for i in range(n) for j in range(i + 1, n))
    return [[math.exp(-dist[i][j] ** 2 / (2 * sigma ** 2)) for j in range(n)] for i in range(n)]


def loop_hsic_biased(k, el):
    """Gretton et al. 2005: tr(KHLH) / (n-1)^2 = [sum K_ij L_ij - 2/n sum K_ij L_iq + sum K sum L / n^2] / (n-1)^2."""
    n = len(k)
    t1 = sum(k[i][j] * el[i][j] for i in range(n) for j in range(n))
    t2 = sum(k[i][j] * el[i][q] for i in range(n) for j in range(n) for q in range(n))
    t3 = sum(map(sum, k)) * sum(map(sum, el))
    return (t1 - 2 * t2 / n + t3 / n ** 2) / (n - 1) ** 2


def loop_hsic_unbiased(k, el):
    """The U-statistic HSIC over distinct indices (Song et al. 2012, Theorem 2):
    (n)_2^-1 sum k_ij l_ij + (n)_4^-1 sum k_ij l_qr - 2 (n)_3^-1 sum k_ij l_iq."""
    n = len(k)
    a = sum(k[i][j] * el[i][j] for i, j in itertools.permutations(range(n), 2))
    b = sum(k[i][j] * el[q][r] for i, j, q, r in itertools.permutations(range(n), 4))
    c = sum(k[i][j] * el[i][q] for i, j, q in itertools.permutations(range(n), 3))
    return a / (n * (n - 1)) + b / (n * (n - 1) * (n - 2) * (n - 3)) - 2 * c / (n * (n - 1) * (n - 2))


def loop_linear_cka(x, y, kind="linear"):
    """Reference CKA from the biased HSIC with linear (or RBF) kernels."""
    k, el = loop_kernel(x, kind), loop_kernel(y, kind)
    return loop_hsic_biased(k, el) / math.sqrt(loop_hsic_biased(k, k) * loop_hsic_biased(el, el))


def loop_debiased_cka(x, y):
    """Reference debiased CKA from the U-statistic HSIC with linear kernels."""
    k, el = loop_kernel(x), loop_kernel(y)
    return loop_hsic_unbiased(k, el) / math.sqrt(loop_hsic_unbiased(k, k) * loop_hsic_unbiased(el, el))


def loop_cka(x, y, kind):
    return loop_debiased_cka(x, y) if kind == "debiased" else loop_linear_cka(x, y, kind)


# ------------------------------------------------------------------------------------------------- data
def orthogonal(d, rng):
    return np.linalg.qr(rng.standard_normal((d, d)))[0]


def related(x, width, rng, noise=0.3):
    """A nonlinear, noisy read-out of x: similar to x but not a rotation of it."""
    return np.tanh(x @ rng.standard_normal((x.shape[1], width)) / np.sqrt(x.shape[1])) \
        + noise * rng.standard_normal((len(x), width))


@pytest.fixture(autouse=True)
def one_blas_thread():
    """These matrices are tiny: threads only add spin-waiting, which is slow on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", KINDS)
def test_self_similarity_is_one(kind):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((60, 7)) + 5, related(rng.standard_normal((60, 4)), 9, rng)]
    assert SINGLE[kind](xs[0], xs[0]) == pytest.approx(1, abs=1e-12)
    np.testing.assert_allclose(np.diag(cka_matrix(xs, xs, kind)), 1, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_invariant_to_orthogonal_maps_isotropic_scaling_and_shifts(kind):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 6))
    z = related(x, 10, rng)  # a partner with a non-trivial CKA to x
    widen = orthogonal(11, rng)[:6]  # [6, 11], orthonormal rows: an isometry into a wider space
    reference = SINGLE[kind](x, z)
    assert 0.3 < reference < 0.99
    for moved in (x @ orthogonal(6, rng), 4.2 * x - 7.0, 0.01 * x @ widen + 3.0):
        assert SINGLE[kind](moved, z) == pytest.approx(reference, abs=1e-10)
        assert SINGLE[kind](moved, x) == pytest.approx(1, abs=1e-10)


def test_linear_cka_is_not_invariant_to_badly_conditioned_invertible_maps():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((100, 8))
    z = related(x, 10, rng)
    a = orthogonal(8, rng) @ np.diag(np.logspace(-3, 3, 8)) @ orthogonal(8, rng)  # condition number 1e6
    assert np.linalg.matrix_rank(a) == 8
    assert linear_cka(x, x @ a) < 0.5
    assert abs(linear_cka(x @ a, z) - linear_cka(x, z)) > 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_vectorised_matches_loop_references(kind):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 5)) + 2.0  # uncentred on purpose: the references centre through H / U-statistics
    ys = [related(x, 7, rng, noise=0.5), rng.standard_normal((20, 3)) - 1.0]
    expected = [loop_cka(x, y, kind) for y in ys]
    assert [SINGLE[kind](x, y) for y in ys] == pytest.approx(expected, abs=1e-8)
    np.testing.assert_allclose(cka_matrix([x], ys, kind)[0], expected, atol=1e-8)
    assert expected[0] > expected[1] + 0.1  # the references themselves see the relation


def test_rbf_bandwidth_follows_sigma_frac():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((20, 4))
    y = related(x, 6, rng)
    for frac in (0.3, 2.0):
        k, el = loop_kernel(x, "rbf", frac), loop_kernel(y, "rbf", frac)
        expected = loop_hsic_biased(k, el) / math.sqrt(loop_hsic_biased(k, k) * loop_hsic_biased(el, el))
        assert rbf_cka(x, y, sigma_frac=frac) == pytest.approx(expected, abs=1e-8)
        assert cka_matrix([x], [y], "rbf", sigma_frac=frac)[0, 0] == pytest.approx(expected, abs=1e-8)
    assert abs(rbf_cka(x, y, 0.3) - rbf_cka(x, y, 2.0)) > 0.01


def test_debiased_cka_is_near_zero_for_independent_data_where_linear_cka_is_not():
    rng = np.random.default_rng(4)
    for _ in range(3):
        x, y = rng.standard_normal((200, 50)), rng.standard_normal((200, 50))
        assert abs(debiased_cka(x, y)) < 0.05
        assert linear_cka(x, y) > 0.15  # biased: E ~ d / (n + d) = 0.2 here (0.19-0.21 for these seeds)


def test_widths_576_and_640_work():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 576))
    widen = np.zeros((576, 640))  # a signed embedding: orthonormal rows, and no 640 x 576 QR to wait for
    widen[np.arange(576), rng.permutation(640)[:576]] = rng.choice([-1.0, 1.0], 576)
    y = x @ widen
    for kind in KINDS:
        assert SINGLE[kind](x, y) == pytest.approx(1, abs=1e-9)
    other = rng.standard_normal((64, 640))
    m = cka_matrix([x, np.tanh(x)], [y, other])
    assert m == pytest.approx(np.array([[linear_cka(a, b) for b in (y, other)] for a in (x, np.tanh(x))]), abs=1e-10)
    assert procrustes_distance(x, y) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_cka_matrix_equals_pairwise_single_calls_for_any_layer_container(kind):
    rng = np.random.default_rng(6)
    base = rng.standard_normal((40, 6))
    xs = [base, np.tanh(2 * base), related(base, 5, rng)]  # widths 6, 6, 5
    ys = [related(base, 8, rng), rng.standard_normal((40, 8))]
    expected = np.array([[SINGLE[kind](x, y) for y in ys] for x in xs])
    np.testing.assert_allclose(cka_matrix(xs, ys, kind), expected, atol=1e-10)
    hooks = {act_name("resid_post", i): torch.tensor(y) for i, y in enumerate(ys)}
    np.testing.assert_allclose(cka_matrix(xs, hooks, kind), expected, atol=1e-10)
    np.testing.assert_allclose(cka_matrix(np.stack(xs[:2]), np.stack(ys), kind), expected[:2], atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_x_layers", [3, 1])  # 3 >= 2: ys rows are permuted; 1 < 2: xs rows are permuted
def test_permutation_null_is_cka_of_row_permuted_data(kind, n_x_layers):
    rng = np.random.default_rng(7)
    base = rng.standard_normal((30, 5))
    xs = [related(base, 6, rng) for _ in range(n_x_layers)]
    ys = [related(base, 4, rng) for _ in range(2)]
    res = permutation_test(xs, ys, kind, n_perm=4, seed=11)
    np.testing.assert_allclose(res.observed, cka_matrix(xs, ys, kind), atol=1e-12)
    perms = np.random.default_rng(11)
    for b in range(4):
        p = perms.permutation(30)
        shuffled = cka_matrix(xs, [y[p] for y in ys], kind) if n_x_layers >= 2 else \
            cka_matrix([x[p] for x in xs], ys, kind)
        np.testing.assert_allclose(res.null[b], shuffled, atol=2e-6)  # the null runs in float32
    assert res.null.shape == (4, n_x_layers, 2)
    np.testing.assert_array_equal(res.p_value, (1 + (res.null >= res.observed).sum(0)) / 5)


def test_permutation_p_values_small_for_related_and_spread_for_independent_data():
    rng = np.random.default_rng(8)
    base = rng.standard_normal((60, 5))
    related_res = permutation_test([base, np.tanh(base)], [related(base, 7, rng), related(base, 3, rng)],
                                   n_perm=99, seed=0)
    np.testing.assert_array_equal(related_res.p_value, 0.01)  # the minimum, 1 / (1 + n_perm)
    assert (related_res.observed > related_res.null_q95).all()
    xs = [rng.standard_normal((60, 5)) for _ in range(6)]
    ys = [rng.standard_normal((60, 4)) for _ in range(5)]
    res = permutation_test(xs, ys, n_perm=99, seed=0)
    p = res.p_value.ravel()
    assert 0.3 < p.mean() < 0.7 and (p < 0.05).mean() <= 0.15 and p.max() > 0.8
    assert res.null_mean == pytest.approx(res.observed, abs=0.1)  # observed values sit inside the null
    again, other = permutation_test(xs, ys, n_perm=99, seed=0), permutation_test(xs, ys, n_perm=99, seed=1)
    np.testing.assert_array_equal(again.null, res.null)
    assert not np.array_equal(other.null, res.null)


@pytest.mark.parametrize("kind", KINDS)
def test_permutation_null_mean_is_the_average_over_every_permutation(kind):
    rng = np.random.default_rng(17)
    n = 6
    xs = [rng.standard_normal((n, 3)) + 1, rng.standard_normal((n, 2))]
    ys = [related(xs[0], 4, rng)]
    exact = np.array([[np.mean([cka_matrix([x], [y[list(p)]], kind)[0, 0] for p in itertools.permutations(range(n))])
                       for y in ys] for x in xs])  # all 720 shufflings of the rows
    got = permutation_null_mean(gram_stack(xs, kind, 0.8, "xs"), gram_stack(ys, kind, 0.8, "ys"))
    np.testing.assert_allclose(got, exact, atol=1e-12)
    if kind == "debiased":
        np.testing.assert_allclose(got, 0, atol=1e-12)
    else:  # linear CKA's chance level is not 0: tr K tr L / (n - 1) of the normalised Grams
        assert (got > 0.1).all()


def test_permutation_from_grams_is_permutation_test_and_its_mean_the_exact_one():
    rng = np.random.default_rng(18)
    base = rng.standard_normal((40, 5))
    xs, ys = [related(base, 6, rng) for _ in range(2)], [related(base, 3, rng)]
    res = permutation_test(xs, ys, n_perm=400, seed=4)
    gx, gy = gram_stack(xs, "linear", 0.8, "xs"), gram_stack(ys, "linear", 0.8, "ys")
    again = permutation_from_grams(gx, gy, n_perm=400, seed=4)
    np.testing.assert_array_equal(again.null, res.null)
    np.testing.assert_array_equal(again.p_value, res.p_value)
    np.testing.assert_allclose(res.null_mean, permutation_null_mean(gx, gy), atol=4 * res.null_std.max() / 20)
    with pytest.raises(ValueError, match=r"stacks of flattened \[n, n\] Grams"):
        permutation_from_grams(gx, gy[:, :-1])


def test_match_layers_picks_by_correlated_profiles():
    rng = np.random.default_rng(19)
    m = np.corrcoef(rng.standard_normal((5, 30)))  # a symmetric similarity profile per layer
    noisy = m + 0.01 * rng.standard_normal((5, 5))
    accuracy, picks = match_layers(m, noisy)
    assert accuracy == 1.0 and picks.tolist() == list(range(5))
    corr = np.corrcoef(m, noisy[[1, 0, 2, 3, 4]])[:5, 5:]
    assert match_layers(m, noisy[[1, 0, 2, 3, 4]])[1].tolist() == np.argmax(corr, axis=1).tolist() == [1, 0, 2, 3, 4]
    with pytest.raises(ValueError, match="same layers"):
        match_layers(m, m[:4, :4])


def test_best_match_layers():
    m = np.array([[0.1, 0.9, 0.2], [0.5, 0.5, 0.1], [0.0, 0.3, 0.7]])
    assert best_match_layers(m).tolist() == [1, 0, 2]
    assert best_match_layers(torch.tensor(m.T)).tolist() == [1, 0, 2]


def distinct_layers(n=400, n_layers=8, seed=0):
    """Each layer: a sharper tanh of a shared input, then its own random rotation and a little noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 12))
    return [np.tanh(a * z) @ orthogonal(12, rng) + 0.05 * rng.standard_normal((n, 12))
            for a in np.geomspace(0.2, 20, n_layers)]


@pytest.mark.parametrize("kind", KINDS)
def test_layer_matching_accuracy_is_one_on_distinct_layers(kind):
    xs = distinct_layers()
    accuracy, picks = layer_matching_accuracy(xs, kind, seed=3)
    assert accuracy == 1.0 and picks.tolist() == list(range(8))
    # the documented definition, recomputed with np.corrcoef on the same halves
    order = np.random.default_rng(3).permutation(400)
    ma, mb = (cka_matrix([x[h] for x in xs], [x[h] for x in xs], kind) for h in (order[:200], order[200:]))
    corr = np.corrcoef(ma, mb)[:8, 8:]
    assert np.argmax(corr, axis=1).tolist() == picks.tolist()


def test_layer_matching_picks_a_twin_for_a_duplicated_layer():
    xs = distinct_layers(n_layers=5)
    xs.insert(2, xs[1].copy())  # layers 1 and 2 are the same representation
    accuracy, picks = layer_matching_accuracy(xs, seed=0)
    assert set(picks[1:3]) <= {1, 2} and picks[[0, 3, 4, 5]].tolist() == [0, 3, 4, 5]
    assert accuracy in (5 / 6, 1.0)  # the twins may both pick the first of them (argmax takes the first tie)


def test_errors_name_the_input():
    x = np.zeros((10, 3)) + np.arange(10)[:, None]
    with pytest.raises(ValueError, match="10 and 9 rows"):
        linear_cka(x, x[:9])
    with pytest.raises(ValueError, match="valid kinds: linear, debiased, rbf"):
        cka_matrix([x], [x], kind="cosine")
    with pytest.raises(ValueError, match=r"xs\[1\] has 9 rows"):
        cka_matrix([x, x[:9]], [x])
    with pytest.raises(ValueError, match=r"input shape: \(10,\)"):
        rbf_cka(x[:, 0], x)
    with pytest.raises(ValueError, match=r"xs\[0\] has a zero centred Gram"):
        cka_matrix([np.ones((10, 3))], [x])
