"""lib.geometry.subspaces against known spectra, scipy's subspace angles, hand-built angles and planted structure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.subspaces import (emotion_subspace, joint_subspace, principal_angles, random_subspace_angles,
                                    split_half_stability, subspace_stability)
from tests.geometry.synthetic import D, orthonormal, planted


def _known_spectrum(seed=0, shares=(0.5, 0.3, 0.15, 0.05), d=10, n=8):
    """Emotion rows minus the neutral mean = U diag(s) V^T with s^2 / sum(s^2) = shares; neutral rows == mu."""
    rng = np.random.default_rng(seed)
    left, right = orthonormal(rng, n, len(shares)), orthonormal(rng, d, len(shares))
    mu = rng.normal(size=d)
    offsets = left @ np.diag(np.sqrt(np.asarray(shares) * 40)) @ right.T
    x = np.vstack([mu + offsets, np.tile(mu, (3, 1))])
    return x, ["anger"] * n + ["neutral"] * 3, right


@pytest.mark.parametrize("threshold,k", [(0.5, 1), (0.6, 2), (0.8, 2), (0.9, 3), (0.95, 3), (0.96, 4), (1.0, 4)])
def test_subspace_k_is_smallest_reaching_threshold(threshold, k):
    x, labels, right = _known_spectrum()
    s = emotion_subspace(x, labels, "anger", var_threshold=threshold)
    assert s.k == k and s.basis.shape == (x.shape[1], k)
    np.testing.assert_allclose(s.explained[:4], [0.5, 0.8, 0.95, 1.0], atol=1e-12)
    np.testing.assert_allclose(s.basis.T @ s.basis, np.eye(k), atol=1e-12)
    assert principal_angles(s.basis, right[:, :k]).max() < 1e-6  # spans the planted top-k axes


def test_subspace_max_k_and_fixed_k():
    x, labels, _ = _known_spectrum()
    assert emotion_subspace(x, labels, "anger", var_threshold=0.99, max_k=2).k == 2
    assert emotion_subspace(x, labels, "anger", k=1).k == 1


def test_joint_subspace_spans_planted_offsets(data):
    x, labels, u = data
    s = joint_subspace(x, labels, var_threshold=0.8)
    assert s.k == 3  # the three offsets carry 27 of ~30 units of squared norm per row
    assert principal_angles(s.basis, np.stack(list(u.values()), 1)).max() < 0.15


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


def test_split_half_stability_far_below_random_reference():
    rng = np.random.default_rng(5)
    d, n = 40, 60
    basis = orthonormal(rng, d, 3)
    x, names = [], []
    for i, cls in enumerate((*TARGET_EMOTIONS, BASELINE)):
        low_rank = rng.normal(size=(n, 3)) * [1.0, 0.6, 0.3] @ basis.T  # variation inside the planted subspace
        offset = 4 * basis[:, i] if cls != BASELINE else 0
        x.append(offset + low_rank + 0.05 * rng.normal(size=(n, d)))
        names += [cls] * n
    x, labels = np.vstack(x), pd.DataFrame({"emotion": names})
    stab = split_half_stability(x, labels, n_splits=4, seed=0, n_null=100)
    summary = stab.summary()
    assert stab.k == 3 and stab.angles.shape == (4, 3) and len(stab.table) == 4
    assert summary["max_angle"] < 0.2 < 1.0 < summary["null_mean_angle"]
    assert stab.angles.max() < stab.null.mean(1).min()  # every split beats every random draw
    per_emotion = split_half_stability(x, labels, emotion="anger", k=2, n_splits=2, n_null=20)
    assert per_emotion.angles.shape == (2, 2) and per_emotion.summary()["max_angle"] < 0.3


def test_subspace_stability_same_vs_rotated_generator(data):
    x1, l1, u = data
    x2, l2, _ = planted(seed=7, offsets=u)  # same offsets, fresh noise
    same = subspace_stability(x1, l1, x2, l2, var_threshold=0.8)
    assert same.k == 3 and same.angles.max() < 0.2
    rng = np.random.default_rng(9)
    other = dict(zip(TARGET_EMOTIONS, orthonormal(rng, D, 3).T))
    x3, l3, _ = planted(seed=8, offsets=other)
    moved = subspace_stability(x1, l1, x3, l3, var_threshold=0.8)
    assert moved.angles.max() > 0.5
    one = subspace_stability(x1, l1, x2, l2, emotion="gratitude", k=1)
    assert one.angles.shape == (1, 1) and one.angles[0, 0] < 0.1


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
