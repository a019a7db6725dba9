"""lib.synthetic.alignment against numpy correlations, brute-force assignments and thresholds (sklearn's F1),
a directly built sklearn probe, and planted codes where the metrics must find the primitives (and random codes
where they must not)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from lib.synthetic.alignment import (baseline_codes, chance_f1, check_split, code_alignment, control_labels,
                                     matched_correlation, one_sparse_probe_f1, primitive_probes,
                                     unit_label_correlation)


def _labels(rng, n=1200, p=4, rate=0.35):
    return (rng.random((n, p)) < rate).astype(float)


def _planted_codes(rng, y, m=16, noise=0.1):
    """Non-negative codes: unit perm[j] fires (with a random magnitude) exactly when primitive j is present,
    plus noise; the remaining units are distractors (sparse ReLU noise). Returns (z, perm)."""
    n, p = y.shape
    perm = rng.permutation(m)[:p]
    z = np.maximum(rng.standard_normal((n, m)) - 1.0, 0)  # distractors, ~16% active
    z[:, perm] = y * (1 + rng.exponential(0.5, (n, p))) + noise * rng.random((n, p))
    return z, perm


# ------------------------------------------------------------------------------------------ correlations
def test_unit_label_correlation_matches_numpy_corrcoef_and_zeroes_dead_units():
    rng = np.random.default_rng(0)
    y = _labels(rng, n=100, p=3)
    z = np.c_[rng.standard_normal((100, 4)), np.zeros(100)]  # last unit dead
    c = unit_label_correlation(z, y)
    for j, p in itertools.product(range(4), range(3)):
        assert c[j, p] == pytest.approx(np.corrcoef(z[:, j], y[:, p])[0, 1], abs=1e-12)
    assert c[4].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("m,p", [(5, 3), (2, 4)])
def test_matched_correlation_against_loops_and_brute_force_assignment(m, p):
    rng = np.random.default_rng(m)
    y = _labels(rng, n=60, p=p)
    z = rng.standard_normal((60, m)) + y[:, rng.integers(0, p, m)]
    r = matched_correlation(z, y)
    strength = np.abs([[np.corrcoef(z[:, j], y[:, q])[0, 1] for q in range(p)] for j in range(m)])
    np.testing.assert_allclose(r.best, strength.max(0), atol=1e-12)
    best_total = max(sum(strength[u, q] for q, u in zip(prims, units))
                     for prims in itertools.permutations(range(p), min(m, p))
                     for units in itertools.permutations(range(m), min(m, p)))
    assert r.matched.sum() == pytest.approx(best_total, abs=1e-12)
    used = r.matched_unit[r.matched_unit >= 0]
    assert len(set(used.tolist())) == len(used) == min(m, p)  # one-to-one
    assert (r.matched[r.matched_unit < 0] == 0).all()


# --------------------------------------------------------------------------------------- 1-sparse probe
def _brute_force_rule(z, y):
    """Best train F1 over every unit, sign and cut between distinct values (and 'all positive'), by sklearn."""
    best = -1.0
    for j, sign in itertools.product(range(z.shape[1]), (1, -1)):
        v = np.unique(sign * z[:, j])
        for t in np.r_[(v[:-1] + v[1:]) / 2, -np.inf]:
            best = max(best, f1_score(y, sign * z[:, j] > t, zero_division=0))
    return best


def test_one_sparse_probe_chooses_the_best_training_rule_and_reports_its_test_f1():
    rng = np.random.default_rng(1)
    y = _labels(rng, n=80, p=3)
    z = np.round(rng.standard_normal((80, 5)) + 0.8 * y[:, [0, 1, 2, 0, 1]] * [1, -1, 1, 0.5, 0.2], 1)  # ties too
    tr, te = np.arange(50), np.arange(50, 80)
    r = one_sparse_probe_f1(z, y, tr, te)
    for p in range(3):
        rule = lambda rows: r.sign[p] * z[rows, r.unit[p]] > r.threshold[p]  # noqa: E731
        assert r.train_f1[p] == pytest.approx(_brute_force_rule(z[tr], y[tr, p]), abs=1e-12)
        assert r.train_f1[p] == pytest.approx(f1_score(y[tr, p], rule(tr)), abs=1e-12)
        assert r.f1[p] == pytest.approx(f1_score(y[te, p], rule(te), zero_division=0), abs=1e-12)
    assert r.sign[1] == -1  # primitive 1 is carried with a negative sign


def test_chance_f1_is_the_f1_of_calling_everything_positive():
    y = _labels(np.random.default_rng(2), n=500, p=3, rate=0.2)
    expected = [f1_score(y[:, p], np.ones(500)) for p in range(3)]
    np.testing.assert_allclose(chance_f1(y), expected, atol=1e-12)


# ------------------------------------------------------------------------------------------- planted codes
def test_planted_codes_are_found_and_random_codes_are_not():
    rng = np.random.default_rng(3)
    y = _labels(rng)
    tr, te = np.arange(600), np.arange(600, 1200)
    z, perm = _planted_codes(rng, y)
    found = code_alignment(z, y, tr, te)
    assert found.matched.mean_matched > 0.9 and found.matched.matched_unit.tolist() == perm.tolist()
    assert found.sparse_probe.f1.min() > 0.95 and found.sparse_probe.unit.tolist() == perm.tolist()
    noise = code_alignment(np.maximum(rng.standard_normal((1200, 16)), 0), y, tr, te)
    assert noise.matched.mean_matched < 0.15  # chance ~ sqrt(2 ln 32 / 600) = 0.11 at most
    assert (noise.sparse_probe.f1 < found.chance_f1 + 0.05).all()
    assert found.chance_f1.max() < 0.6


def test_planted_codes_hidden_under_noise_fail_gradually():
    rng = np.random.default_rng(4)
    y = _labels(rng)
    z, _ = _planted_codes(rng, y, noise=6.0)  # the signal is swamped
    r = code_alignment(z, y, np.arange(600), np.arange(600, 1200))
    assert r.matched.mean_matched < 0.5 and r.sparse_probe.mean_f1 < 0.8


# ------------------------------------------------------------------------------------------- baselines
def test_pca_codes_are_the_training_rows_principal_components():
    rng = np.random.default_rng(5)
    h = rng.standard_normal((90, 6)) * [4, 3, 2, 1, 0.5, 0.2]
    tr = np.arange(60)
    codes = baseline_codes(h, 3, tr, "pca")
    vt = np.linalg.svd(h[tr] - h[tr].mean(0), full_matrices=False)[2][:3]
    expected = (h - h[tr].mean(0)) @ vt.T
    np.testing.assert_allclose(np.abs(codes), np.abs(expected), atol=1e-8)  # up to the sign of each axis


def test_ica_unmixes_planted_binary_primitives_and_random_h_stays_at_chance():
    rng = np.random.default_rng(6)
    y = _labels(rng, n=1000, p=3, rate=0.1)  # sparse sources, which FastICA's logcosh contrast separates
    h = y @ rng.standard_normal((3, 8)) + 0.05 * rng.standard_normal((1000, 8))
    tr, te = np.arange(500), np.arange(500, 1000)
    ica = code_alignment(baseline_codes(h, 3, tr, "ica", seed=0), y, tr, te)
    assert ica.matched.mean_matched > 0.95 and ica.sparse_probe.f1.min() > 0.95
    pca = code_alignment(baseline_codes(h, 3, tr, "pca"), y, tr, te)
    assert pca.matched.mean_matched < ica.matched.mean_matched - 0.05  # PCA's axes are mixtures of the sources
    rand = code_alignment(baseline_codes(rng.standard_normal((1000, 8)), 3, tr, "ica"), y, tr, te)
    assert rand.matched.mean_matched < 0.15
    with pytest.raises(ValueError, match="pca, ica"):
        baseline_codes(h, 3, tr, "nmf")


# ------------------------------------------------------------------------------------------- probes
def test_probe_accuracy_equals_a_directly_built_sklearn_probe():
    rng = np.random.default_rng(7)
    y = _labels(rng, n=300, p=3)
    h = y @ rng.standard_normal((3, 10)) + rng.standard_normal((300, 10))
    tr, te = np.arange(200), np.arange(200, 300)
    r = primitive_probes(h, y, tr, te)
    for p in range(3):
        scaler = StandardScaler().fit(h[tr])
        clf = LogisticRegression(max_iter=1000).fit(scaler.transform(h[tr]), y[tr, p])
        assert r.accuracy[p] == pytest.approx(np.mean(clf.predict(scaler.transform(h[te])) == y[te, p]), abs=1e-12)
        dummy = DummyClassifier(strategy="most_frequent").fit(h[tr], y[tr, p])
        assert r.majority[p] == pytest.approx(dummy.score(h[te], y[te, p]), abs=1e-12)
    np.testing.assert_allclose(r.selectivity, r.accuracy - r.control_accuracy)


def test_control_labels_are_per_type_seeded_and_keep_the_marginal():
    rng = np.random.default_rng(8)
    y = _labels(rng, n=6000, p=2, rate=0.3)
    types = np.arange(6000) % 1000
    c = control_labels(y, types, seed=1)
    assert all(np.unique(c[types == t], axis=0).shape[0] == 1 for t in range(0, 1000, 97))
    np.testing.assert_array_equal(c, control_labels(y, types, seed=1))
    assert not np.array_equal(c, control_labels(y, types, seed=2))
    own = np.stack([[y[types == t, p].mean() >= 0.5 for t in range(1000)] for p in range(2)], 1)
    np.testing.assert_array_equal(np.sort(c[:1000], 0), np.sort(own, 0))  # the types' labels, permuted
    assert abs(np.corrcoef(c[:, 0], own[types, 0])[0, 1]) < 0.1  # and unrelated to them
    combos = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)[np.arange(400) % 4]  # composition types
    cc = control_labels(combos, seed=0)
    np.testing.assert_array_equal(cc.sum(0), combos.sum(0))  # equal types: the real base rate exactly


def test_selectivity_separates_encoded_primitives_from_memorised_types():
    rng = np.random.default_rng(9)
    combos = np.array(list(itertools.product([0, 1], repeat=4)), dtype=float)  # 16 compositions
    kind = rng.integers(0, 16, 1600)
    y = combos[kind]
    tr, te = np.arange(800), np.arange(800, 1600)
    linear = y @ rng.standard_normal((4, 16)) + 0.3 * rng.standard_normal((1600, 16))  # primitives, linearly
    enc = primitive_probes(linear, y, tr, te, seed=0)
    assert enc.accuracy.min() > 0.95 and enc.selectivity.mean() > 0.2
    lookup = rng.standard_normal((16, 64))[kind] * 3 + 0.3 * rng.standard_normal((1600, 64))  # a type lookup table
    mem = primitive_probes(lookup, y, tr, te, seed=0)
    assert mem.accuracy.min() > 0.95 and mem.control_accuracy.min() > 0.95 and abs(mem.selectivity).max() < 0.05
    noise = primitive_probes(rng.standard_normal((1600, 16)), y, tr, te, seed=0)
    assert (noise.accuracy < noise.majority + 0.08).all() and abs(noise.selectivity.mean()) < 0.1


def test_split_and_label_errors_name_the_input():
    with pytest.raises(ValueError, match="share 1 rows"):
        check_split([0, 1], [1, 2], 3)
    with pytest.raises(ValueError, match=r"outside 0..2"):
        check_split([0, 5], [1], 3)
    with pytest.raises(ValueError, match="row indices"):
        check_split([0.0], [1], 3)
    with pytest.raises(ValueError, match="0/1 multi-hot"):
        matched_correlation(np.ones((3, 2)), np.array([[0, 2], [1, 0], [0, 1]]))
    with pytest.raises(ValueError, match="primitive 1 has no positive training rows"):
        one_sparse_probe_f1(np.ones((4, 2)), np.array([[1, 0], [0, 0], [1, 0], [0, 1]]), [0, 1, 2], [3])
