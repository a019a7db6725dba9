"""lib.synthetic.analysis against scipy's subspace angles, hand formulas, eigendecompositions, exact bootstrap
enumeration and planted structure (shared vs separate subspaces, matching vs shuffled layers)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

from lib.geometry.cka import debiased_cka
from lib.stats.bootstrap import mean_ci
from lib.synthetic.analysis import (cka_table, covariance_subspace_null, grassmann_distance, group_codes_of,
                                    group_subspaces, label_shuffle_null, layer_matching_check, pairwise_distances,
                                    probability_of_improvement, random_subspace_null, seed_interval,
                                    subspace_sharing)


def _basis(rng, d, k):
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


def _groups(rng, shared: bool, n_groups=5, rows=80, d=24, k=3, noise=0.05):
    """Rows of each group: its own mean + Gaussian coefficients in a k-dim subspace (one subspace for all groups
    when ``shared``, a fresh random one per group otherwise) + isotropic noise."""
    common = _basis(rng, d, k)
    h, labels = [], []
    for g in range(n_groups):
        basis = common if shared else _basis(rng, d, k)
        h.append(3 * rng.standard_normal(d) + rng.standard_normal((rows, k)) * [3.0, 2.0, 1.5][:k] @ basis.T
                 + noise * rng.standard_normal((rows, d)))
        labels += [g] * rows
    return np.vstack(h), np.array(labels)


# ------------------------------------------------------------------------------------------ distances
def test_distances_match_scipy_angles_and_the_projection_formula():
    rng = np.random.default_rng(0)
    for d, k in [(12, 3), (6, 1), (30, 5)]:
        u, v = rng.standard_normal((d, k)), rng.standard_normal((d, k))  # not orthonormal: spans are what count
        theta = scipy.linalg.subspace_angles(u, v)
        assert grassmann_distance(u, v) == pytest.approx(np.sqrt(np.sum(theta ** 2)), abs=1e-10)
        qu, qv = np.linalg.qr(u)[0], np.linalg.qr(v)[0]
        chordal = np.linalg.norm(qu @ qu.T - qv @ qv.T) / np.sqrt(2)
        assert grassmann_distance(u, v, "chordal") == pytest.approx(chordal, abs=1e-10)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hand_cases_identical_orthogonal_and_one_rotation(k):
    e = np.eye(2 * k + 1)
    u = e[:, :k]
    mixed = u @ np.linalg.qr(np.random.default_rng(k).standard_normal((k, k)))[0] * 5  # another basis, same span
    assert grassmann_distance(u, mixed) == pytest.approx(0, abs=1e-7)
    assert grassmann_distance(u, mixed, "chordal") == pytest.approx(0, abs=1e-7)
    assert grassmann_distance(u, e[:, k:2 * k]) == pytest.approx(np.sqrt(k) * np.pi / 2, abs=1e-12)
    assert grassmann_distance(u, e[:, k:2 * k], "chordal") == pytest.approx(np.sqrt(k), abs=1e-12)
    t = 0.4  # turn the first axis towards the spare last axis: one angle t, the rest 0
    v = u.copy()
    v[:, 0] = np.cos(t) * e[:, 0] + np.sin(t) * e[:, -1]
    assert grassmann_distance(u, v) == pytest.approx(t, abs=1e-12)
    assert grassmann_distance(u, v, "chordal") == pytest.approx(np.sin(t), abs=1e-12)


def test_distance_errors_name_the_problem():
    e = np.eye(4)
    with pytest.raises(ValueError, match="equal k"):
        grassmann_distance(e[:, :2], e[:, :1])
    with pytest.raises(ValueError, match="geodesic, chordal"):
        grassmann_distance(e[:, :2], e[:, 2:], "angle")


def test_pairwise_distances_loop_and_sharing_is_their_mean():
    rng = np.random.default_rng(1)
    h, groups = _groups(rng, shared=False, n_groups=4)
    s = group_subspaces(h, groups, 3)
    d = pairwise_distances(s.bases, "chordal")
    for i, j in itertools.product(range(4), repeat=2):
        assert d[i, j] == pytest.approx(grassmann_distance(s.bases[i], s.bases[j], "chordal"), abs=1e-12)
    assert subspace_sharing(h, groups, 3, "chordal") == pytest.approx(d[np.triu_indices(4, 1)].mean(), abs=1e-12)


# ------------------------------------------------------------------------------------------ subspaces
def test_group_subspaces_match_each_groups_covariance_eigenvectors():
    rng = np.random.default_rng(2)
    h, groups = _groups(rng, shared=False, n_groups=3, noise=0.5)
    s = group_subspaces(torch.tensor(h, dtype=torch.float32), groups, 2)
    assert s.labels == (0, 1, 2) and s.sizes.tolist() == [80, 80, 80] and s.bases.shape == (3, 24, 2)
    for g in range(3):
        evals, evecs = np.linalg.eigh(np.cov(h[groups == g].T))  # ascending
        assert s.kept[g] == pytest.approx(evals[-2:].sum() / evals.sum(), rel=1e-5)
        assert scipy.linalg.subspace_angles(s.bases[g], evecs[:, -2:]).max() < 1e-3
        np.testing.assert_allclose(s.bases[g].T @ s.bases[g], np.eye(2), atol=1e-10)


def test_multi_hot_groups_and_errors():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 1, 0]])
    labels, codes = group_codes_of(y, 4)
    assert labels == ((0, 1, 0), (1, 0, 1)) and codes.tolist() == [1, 0, 1, 0]
    h = np.random.default_rng(0).standard_normal((4, 5))
    with pytest.raises(ValueError, match=r"group \(0, 1, 0\) has 2 rows of rank < k=2"):
        group_subspaces(h, y, 2)
    with pytest.raises(ValueError, match="valid values are integers 1..5"):
        group_subspaces(h, y, 6)
    with pytest.raises(ValueError, match="one label per row"):
        group_subspaces(h, [0, 1], 1)
    with pytest.raises(ValueError, match="at least 2 groups"):
        subspace_sharing(h, [0, 0, 0, 0], 1)


def test_planted_shared_groups_separate_from_separate_ones_and_from_the_nulls():
    rng = np.random.default_rng(3)
    h_shared, g_shared = _groups(rng, shared=True)
    h_sep, g_sep = _groups(rng, shared=False)
    shared, separate = subspace_sharing(h_shared, g_shared, 3), subspace_sharing(h_sep, g_sep, 3)
    uniform = random_subspace_null(24, 3, n=500, seed=0)
    assert shared < 0.1 < 2.0 < separate  # identical planes vs independent random planes
    assert abs(separate - uniform.mean()) < 3 * uniform.std()  # separate groups look like the uniform null
    assert shared < np.quantile(label_shuffle_null(h_shared, g_shared, 3, n=20, seed=0), 0.95) + 0.05
    assert separate > label_shuffle_null(h_sep, g_sep, 3, n=20, seed=0).max() + 1.0  # far from the floor


def test_random_null_matches_the_expected_projection_overlap_and_is_seeded():
    # For uniform k-dim subspaces U, V of R^d: E tr(P_U P_V) = k^2 / d, so E chordal^2 = k - k^2 / d.
    for d, k in [(10, 1), (20, 3)]:
        chordal = random_subspace_null(d, k, n=3000, seed=1, kind="chordal")
        assert np.mean(chordal ** 2) == pytest.approx(k - k * k / d, abs=0.03 * k)
    np.testing.assert_array_equal(random_subspace_null(8, 2, n=5, seed=4), random_subspace_null(8, 2, n=5, seed=4))
    assert not np.allclose(random_subspace_null(8, 2, n=5, seed=4), random_subspace_null(8, 2, n=5, seed=5))
    g = random_subspace_null(8, 2, n=50, seed=0)
    assert 0 < g.min() and g.max() <= np.sqrt(2) * np.pi / 2 + 1e-12


def test_covariance_null_follows_the_data_spectrum():
    rng = np.random.default_rng(5)
    spread = rng.standard_normal((400, 30)) * np.r_[[10, 8, 6], np.full(27, 0.1)]
    iso = rng.standard_normal((400, 30))
    narrow, wide = covariance_subspace_null(spread, 3, n=100), covariance_subspace_null(iso, 3, n=100)
    # draws from a 3-axis cloud stay near its plane (a near-singular draw can tilt out of it: a heavy tail)
    assert np.median(narrow) < 0.5 and narrow.mean() < 0.8 < 1.5 < wide.min()
    assert abs(wide.mean() - random_subspace_null(30, 3, n=300).mean()) < 0.15  # isotropic data: the uniform null


# ------------------------------------------------------------------------------------------------ CKA
def _linear_cka_by_hand(x, y):
    n = len(x)
    hc = np.eye(n) - np.ones((n, n)) / n
    k, el = hc @ x @ x.T @ hc, hc @ y @ y.T @ hc
    return np.trace(k @ el) / np.sqrt(np.trace(k @ k) * np.trace(el @ el))


def test_cka_table_matches_the_gram_formula_and_keeps_names():
    rng = np.random.default_rng(6)
    acts = {"blocks.0": rng.standard_normal((30, 4)), "blocks.1": rng.standard_normal((30, 7))}
    acts["blocks.2"] = np.tanh(acts["blocks.0"] @ rng.standard_normal((4, 5)))
    t = cka_table(acts)
    assert t.names_a == t.names_b == ("blocks.0", "blocks.1", "blocks.2") and t.kind == "linear"
    for (i, a), (j, b) in itertools.product(enumerate(acts.values()), repeat=2):
        assert t.values[i, j] == pytest.approx(_linear_cka_by_hand(a, b), abs=1e-10)
    d = cka_table(acts, {"g": acts["blocks.2"]}, kind="debiased")
    assert d.values.shape == (3, 1) and d.names_b == ("g",)
    assert d.values[0, 0] == pytest.approx(debiased_cka(acts["blocks.0"], acts["blocks.2"]), abs=1e-10)
    with pytest.raises(ValueError, match="mapping"):
        cka_table([acts["blocks.0"]])


def _planted_layers(rng, n=200, n_layers=5):
    """Layer l of a model: a common latent block plus a block only layer l carries, through a random mixing."""
    z = rng.standard_normal((n, 2 + 3 * n_layers))
    return [np.c_[z[:, :2], z[:, 2 + 3 * l:5 + 3 * l]] for l in range(n_layers)]


@pytest.mark.parametrize("kind", ["linear", "debiased"])
def test_layer_matching_passes_on_planted_seeds_and_fails_on_shuffled_layers(kind):
    rng = np.random.default_rng(7)
    names = [f"blocks.{l}.hook_h" for l in range(5)]
    latent = _planted_layers(rng)
    seed_a = {nm: x @ rng.standard_normal((5, 12)) for nm, x in zip(names, latent)}
    seed_b = {nm: x @ rng.standard_normal((5, 9)) + 0.3 * rng.standard_normal((200, 9)) for nm, x in zip(names, latent)}
    good = layer_matching_check(seed_a, dict(reversed(list(seed_b.items()))), kind)  # order of b does not matter
    assert good.accuracy == 1.0 and good.picks.tolist() == [0, 1, 2, 3, 4] and good.names == tuple(names)
    shifted = {nm: seed_b[names[(i + 1) % 5]] for i, nm in enumerate(names)}  # each name holds the next layer
    bad = layer_matching_check(seed_a, shifted, kind)
    assert bad.accuracy == 0.0 and bad.picks.tolist() == [4, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="same layers"):
        layer_matching_check(seed_a, {**seed_b, "extra": seed_b[names[0]]})


# ------------------------------------------------------------------------------------------ seed statistics
def _exact_improvement(a, b, paired=False):
    """P(mean_b* > mean_a*) + P(tie) / 2 over every equally likely ordered resample (the exact bootstrap)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if paired:
        diffs = [np.mean(b[list(i)] - a[list(i)]) for i in itertools.product(range(len(a)), repeat=len(a))]
    else:
        ma = [np.mean(a[list(i)]) for i in itertools.product(range(len(a)), repeat=len(a))]
        mb = [np.mean(b[list(i)]) for i in itertools.product(range(len(b)), repeat=len(b))]
        diffs = [y - x for x, y in itertools.product(ma, mb)]
    diffs = np.array(diffs)
    return np.mean(np.where(np.abs(diffs) < 1e-12, 0.5, diffs > 0))


def test_probability_of_improvement_matches_the_exact_bootstrap():
    a, b = [0.50, 0.62, 0.71], [0.58, 0.66]
    exact = _exact_improvement(a, b)
    assert 0.2 < exact < 0.9  # a case that is not decided
    assert probability_of_improvement(a, b, n_boot=40000, seed=0) == pytest.approx(exact, abs=0.01)
    b3 = [0.55, 0.60, 0.80]
    assert probability_of_improvement(a, b3, n_boot=40000, seed=1, paired=True) == pytest.approx(
        _exact_improvement(a, b3, paired=True), abs=0.01)


def test_probability_of_improvement_hand_cases_and_errors():
    assert probability_of_improvement([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert probability_of_improvement([0.3, 0.4], [0.1, 0.2], paired=True) == 0.0
    assert probability_of_improvement([0.1] * 5, [0.1] * 3) == 0.5  # identical conditions: a coin flip
    assert probability_of_improvement([1, 2, 3], [2, 2, 3], seed=3) == probability_of_improvement([1, 2, 3], [2, 2, 3],
                                                                                                 seed=3)
    with pytest.raises(ValueError, match="equal counts"):
        probability_of_improvement([1.0, 2.0], [1.0], paired=True)
    with pytest.raises(ValueError, match=r"b\[1\] is nan"):
        probability_of_improvement([1.0, 2.0], [1.0, np.nan])


def test_seed_interval_is_the_documented_percentile_bootstrap():
    x = np.array([0.81, 0.86, 0.9, 0.79, 0.95])
    r = seed_interval(x, n_boot=500, seed=2, level=0.9)
    reps = x[np.random.default_rng(2).integers(0, 5, size=(500, 5))].mean(1)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(np.quantile(reps, [0.05, 0.95])), abs=1e-12)
    assert r == mean_ci(x, n_boot=500, seed=2, level=0.9) and r["mean"] == pytest.approx(x.mean())
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_interval([0.9])
