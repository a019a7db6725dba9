"""Orthogonal Procrustes distance and map against scipy (zero-padded, centred, unit Frobenius norm) and by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes

from lib.geometry.procrustes import procrustes_align, procrustes_distance


def orthogonal(d, rng):
    return np.linalg.qr(rng.standard_normal((d, d)))[0]


def related(x, width, rng, noise=0.3):
    """A nonlinear, noisy read-out of x: similar to x but not a rotation of it."""
    return np.tanh(x @ rng.standard_normal((x.shape[1], width)) / np.sqrt(x.shape[1])) \
        + noise * rng.standard_normal((len(x), width))


def test_procrustes_distance_is_zero_for_orthogonal_maps_also_across_widths():
    rng = np.random.default_rng(9)
    z = rng.standard_normal((50, 5))
    widen = orthogonal(8, rng)[:5]  # [5, 8], orthonormal rows
    assert procrustes_distance(z, 3 * z @ orthogonal(5, rng) + 1) == pytest.approx(0, abs=1e-7)
    assert procrustes_distance(z, z @ widen) == pytest.approx(0, abs=1e-7)
    assert procrustes_distance(z @ widen, -2 * z) == pytest.approx(0, abs=1e-7)  # wider x, narrower y
    assert procrustes_distance(z, np.tanh(2 * z)) > 0.05
    assert procrustes_distance(z, z @ np.diag([1, 1, 1, 1, 10.0])) > 0.05


def scipy_procrustes(x, y):
    """Zero-pad to a common width, centre, unit Frobenius norm, then scipy's orthogonal Procrustes."""
    d = max(x.shape[1], y.shape[1])
    xp, yp = (np.pad(a - a.mean(0), ((0, 0), (0, d - a.shape[1]))) for a in (x, y))
    xp, yp = xp / np.linalg.norm(xp), yp / np.linalg.norm(yp)
    q, _ = orthogonal_procrustes(xp, yp)
    return np.linalg.norm(xp @ q - yp), q


@pytest.mark.parametrize("dx, dy", [(5, 8), (8, 5), (6, 6)])
def test_procrustes_matches_scipy(dx, dy):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((40, dx))
    y = related(x, dy, rng)
    distance, q = scipy_procrustes(x, y)
    assert distance > 0.1
    assert procrustes_distance(x, y) == pytest.approx(distance, abs=1e-10)
    np.testing.assert_allclose(procrustes_align(x, y), q[:dx, :dy], atol=1e-10)


def test_procrustes_align_carries_centred_x_onto_y_and_accepts_tensors():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((30, 4))
    q = orthogonal(6, rng)[:4]  # [4, 6], orthonormal rows
    y = 2.0 + x @ q
    r = procrustes_align(torch.tensor(x, dtype=torch.float32), y)
    np.testing.assert_allclose(r, q, atol=1e-5)  # float32 input, float64 maths
    np.testing.assert_allclose((x - x.mean(0)) @ procrustes_align(x, y), y - y.mean(0), atol=1e-10)
    raw = procrustes_align(x, y, center=False)  # without centring: the SVD of x^T y as given
    u, _, vh = np.linalg.svd(x.T @ y, full_matrices=False)
    np.testing.assert_allclose(raw, u @ vh, atol=1e-12)


def test_procrustes_errors_name_the_input():
    x = np.random.default_rng(13).standard_normal((10, 3))
    with pytest.raises(ValueError, match="10 and 9 rows"):
        procrustes_distance(x, x[:9])
    with pytest.raises(ValueError, match="y is constant after centring"):
        procrustes_distance(x, np.ones((10, 2)))
