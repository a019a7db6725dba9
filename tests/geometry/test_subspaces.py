"""lib.geometry.subspaces against known spectra, scipy's subspace angles, hand-built angles and planted structure."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from lib.emotions import TARGET_EMOTIONS
from lib.geometry.subspaces import (covariance_subspace_angles, emotion_subspace, joint_subspace, principal_angles,
                                    random_subspace_angles)
from tests.geometry.synthetic import orthonormal


def _known_spectrum(seed=0, shares=(0.5, 0.3, 0.15, 0.05), d=10, n=8):
    """Anger rows = their mean + U diag(s) V^T with U's columns orthogonal to the ones vector (so the centred rows
    are exactly that) and s^2 / sum(s^2) = shares; the anger mean sits 7 units from the neutral rows' mean."""
    rng = np.random.default_rng(seed)
    left = np.linalg.qr(np.c_[np.ones(n), rng.normal(size=(n, len(shares)))])[0][:, 1:]  # centred, orthonormal
    right = orthonormal(rng, d, len(shares))
    mu, offset = rng.normal(size=d), 7 * orthonormal(rng, d, 1)[:, 0]
    spread = left @ np.diag(np.sqrt(np.asarray(shares) * 40)) @ right.T
    x = np.vstack([mu + offset + spread, np.tile(mu, (3, 1))])
    return x, ["anger"] * n + ["neutral"] * 3, right, offset


@pytest.mark.parametrize("threshold,k", [(0.5, 1), (0.6, 2), (0.8, 2), (0.9, 3), (0.95, 3), (0.96, 4), (1.0, 4)])
def test_within_k_is_smallest_reaching_threshold_of_within_class_variance(threshold, k):
    x, labels, right, offset = _known_spectrum()
    s = emotion_subspace(x, labels, "anger", var_threshold=threshold)
    assert s.k == k and s.basis.shape == (x.shape[1], k) and s.kind == "within"
    np.testing.assert_allclose(s.explained[:4], [0.5, 0.8, 0.95, 1.0], atol=1e-12)
    np.testing.assert_allclose(s.basis.T @ s.basis, np.eye(k), atol=1e-12)
    assert principal_angles(s.basis, right[:, :k]).max() < 1e-6  # spans the planted top-k axes
    np.testing.assert_allclose(s.offsets[0], offset, atol=1e-12)  # the offset is kept apart, not inside
    assert s.offset_norms == pytest.approx([7.0])


def test_subspace_max_k_and_fixed_k():
    x, labels, right, _ = _known_spectrum(d=80, n=70, shares=(0.4, 0.3, 0.2, 0.1))
    assert emotion_subspace(x, labels, "anger", var_threshold=0.99, max_k=2).k == 2
    fixed = emotion_subspace(x, labels, "anger", k=2)  # min(n, d) >= 64: the truncated SVD path
    assert fixed.k == 2 and len(fixed.explained) == 2 and principal_angles(fixed.basis, right[:, :2]).max() < 1e-6
    np.testing.assert_allclose(fixed.explained, [0.4, 0.7], atol=1e-10)
    with pytest.raises(ValueError, match="k = 1"):
        emotion_subspace(x, labels, "anger", kind="between", k=2)
    with pytest.raises(ValueError, match="kind"):
        emotion_subspace(x, labels, "anger", kind="offset")


def test_offset_and_within_spread_are_separated_where_the_old_fit_mixed_them():
    # anger = a large offset along e1 + spread along e2 and e3; the old uncentred fit of (rows - neutral mean)
    # put e1 first; the within subspace is e2, e3 and the between one e1
    rng = np.random.default_rng(3)
    e = np.eye(6)
    anger = 10 * e[0] + rng.normal(size=(400, 1)) * 3 * e[1] + rng.normal(size=(400, 1)) * 2 * e[2]
    neutral = rng.normal(0, 0.01, (50, 6))
    x, labels = np.vstack([anger + rng.normal(0, 0.01, (400, 6)), neutral]), ["anger"] * 400 + ["neutral"] * 50
    old_first_axis = np.linalg.svd(x[:400] - neutral.mean(0), full_matrices=False)[2][0]
    assert abs(old_first_axis @ e[0]) > 0.99
    within = emotion_subspace(x, labels, "anger", var_threshold=0.9)
    assert within.k == 2 and principal_angles(within.basis, e[:, 1:3]).max() < 0.01
    between = emotion_subspace(x, labels, "anger", kind="between")
    assert between.k == 1 and abs(between.basis[:, 0] @ e[0]) > 0.9999


def test_joint_between_spans_planted_offsets_and_within_avoids_them(data):
    x, labels, u = data
    offsets = np.stack(list(u.values()), 1)
    s = joint_subspace(x, labels, var_threshold=0.8, kind="between")
    assert s.k == 3 and s.offsets.shape == (3, x.shape[1])  # three offsets of equal norm: 1/3, 2/3, 1
    assert principal_angles(s.basis, offsets).max() < 0.1
    w = joint_subspace(x, labels, k=3)
    assert principal_angles(w.basis, offsets).min() > 0.5  # the planted noise has no preference for the offsets
    by_hand = np.vstack([x[labels.emotion == e] - x[labels.emotion == e].mean(0) for e in TARGET_EMOTIONS])
    want = np.linalg.svd(by_hand.astype(np.float64), full_matrices=False)[2][:3].T
    assert principal_angles(w.basis, want).max() < 1e-6
    with pytest.raises(ValueError, match="k=4 out of range"):
        joint_subspace(x, labels, kind="between", k=4)


def test_principal_angles_match_scipy_and_known_angle():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(10, 3)), rng.normal(size=(10, 4))
    want = np.sort(scipy.linalg.subspace_angles(a, b))
    np.testing.assert_allclose(principal_angles(a, b), want, atol=1e-10)
    np.testing.assert_allclose(principal_angles(b, a), want, atol=1e-10)
    for t in (0.3, 1.2, 1e-7):
        e1, e2, e3 = np.eye(4)[:3]
        c = np.cos(t) * e1 + np.sin(t) * e2  # b = span{c, e3}, given by a non-orthonormal basis
        got = principal_angles(np.stack([e1, e3], 1), np.stack([3 * c, e3 + c], 1))
        np.testing.assert_allclose(got, [0.0, t], rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="linearly dependent"):
        principal_angles(np.ones((4, 2)), a[:4])


def test_random_subspace_reference_matches_theory():
    # one line in the plane: the angle is uniform on [0, pi/2], mean pi/4
    a = random_subspace_angles(2, 1, 1, n_samples=4000, seed=0)
    assert a.mean() == pytest.approx(np.pi / 4, abs=0.03)
    np.testing.assert_array_equal(a, random_subspace_angles(2, 1, 1, n_samples=4000, seed=0))


def test_covariance_null_draws_are_much_closer_than_uniform_ones_on_an_anisotropic_cloud():
    rng = np.random.default_rng(8)
    d = 60
    spread = np.r_[np.geomspace(5, 20, 5), np.full(d - 5, 0.5)]  # a few dominant axes, as in a residual stream
    cloud = (rng.normal(size=(800, d)) * spread) @ orthonormal(rng, d, d).T
    a, b = cloud[:400] - cloud[:400].mean(0), cloud[400:] - cloud[400:].mean(0)
    null = covariance_subspace_angles(a, b, 3, 200)
    uniform = random_subspace_angles(d, 3, 3, 200)
    assert null.shape == (200, 3)
    assert np.degrees(null.mean()) < 50 < 75 < np.degrees(uniform.mean())  # the old reference was far easier
    g = np.random.default_rng(0)  # a draw is span(A^T g): by hand for the second sample
    ga, gb = g.standard_normal((400, 6)), g.standard_normal((400, 6))
    one = covariance_subspace_angles(a, b, 3, 2, seed=0)
    np.testing.assert_allclose(one[1], principal_angles(a.T @ ga[:, 3:], b.T @ gb[:, 3:]), atol=1e-12)


def test_principal_angles_by_hand_and_against_scipy():
    for t in (0.3, 1.2):
        a = np.array([[1.0, 0], [0, 1], [0, 0]])  # the x-y plane
        b = np.array([[1.0, 0], [0, np.cos(t)], [0, np.sin(t)]])  # tilted by t about the x axis
        np.testing.assert_allclose(principal_angles(a, b), [0, t], atol=1e-7)
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((10, 3)), rng.standard_normal((10, 4))
    angles = principal_angles(a, b)
    np.testing.assert_allclose(angles, np.sort(scipy.linalg.subspace_angles(a, b)), atol=1e-10)
    np.testing.assert_allclose(principal_angles(a @ rng.standard_normal((3, 3)), b), angles, atol=1e-8)
    assert principal_angles(a, a) == pytest.approx(0, abs=1e-6)


def test_principal_angles_accept_vectors_and_tensors():
    e = np.eye(3)
    np.testing.assert_allclose(principal_angles(e[0], e[:, :2]), [0.0], atol=1e-12)  # a vector is one column
    np.testing.assert_allclose(principal_angles(torch.tensor(e[:, :1]), e[:, 1:]), [np.pi / 2], atol=1e-12)
    with pytest.raises(ValueError, match="same number of rows"):
        principal_angles(e[:, :1], np.eye(4)[:, :1])
