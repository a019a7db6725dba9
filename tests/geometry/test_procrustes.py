"""Orthogonal Procrustes distance and map against scipy (zero-padded, centred, unit Frobenius norm) and by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import null_space, orthogonal_procrustes

from lib.geometry.procrustes import (MAX_DISTANCE, MAX_HELDOUT_DISTANCE, mapped_distance, procrustes_align,
                                     procrustes_distance)


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


def centred_orthogonal_pair(n, dx, dy, rng):
    """x [n, dx], y [n, dy], both centred, with x^T y = 0: their columns span orthogonal parts of the centred rows."""
    q = np.linalg.qr(rng.standard_normal((n, dx + dy)) - rng.standard_normal((1, dx + dy)))[0]
    q = np.linalg.qr(q - q.mean(0))[0]  # orthonormal columns that are also centred
    return q[:, :dx] @ rng.standard_normal((dx, dx)), q[:, dx:] @ rng.standard_normal((dy, dy))


@pytest.mark.parametrize("dx, dy", [(3, 3), (2, 5), (5, 2)])
def test_orthogonal_representations_are_at_the_maximum_distance_sqrt2(dx, dy):
    rng = np.random.default_rng(14)
    x, y = centred_orthogonal_pair(40, dx, dy, rng)
    assert np.abs(x.T @ y).max() < 1e-10
    # by hand: for unit-Frobenius X, Y with X^T Y = 0, ||X Q - Y||^2 = 1 + 1 - 2 tr(Q^T X^T Y) = 2 for every Q
    xn, yn = x / np.linalg.norm(x), y / np.linalg.norm(y)
    d = max(dx, dy)
    xp, yp = np.pad(xn, ((0, 0), (0, d - dx))), np.pad(yn, ((0, 0), (0, d - dy)))
    for q in (np.eye(d), orthogonal(d, rng), orthogonal(d, rng)):
        assert np.linalg.norm(xp @ q - yp) == pytest.approx(np.sqrt(2), abs=1e-12)
    assert procrustes_distance(x, y) == pytest.approx(np.sqrt(2), abs=1e-9)
    assert MAX_DISTANCE == pytest.approx(np.sqrt(2), abs=1e-15)
    assert scipy_procrustes(x, y)[0] == pytest.approx(MAX_DISTANCE, abs=1e-9)


def test_fitted_distance_never_exceeds_sqrt2_but_a_held_out_map_can_reach_2():
    rng = np.random.default_rng(15)
    fitted = [procrustes_distance(rng.standard_normal((12, 4)), rng.standard_normal((12, 6))) for _ in range(200)]
    assert max(fitted) <= MAX_DISTANCE + 1e-12 and max(fitted) > 1.0
    x = rng.standard_normal((30, 4))
    assert mapped_distance(x, -x, np.eye(4)) == pytest.approx(MAX_HELDOUT_DISTANCE, abs=1e-12)  # beyond sqrt(2)


@pytest.mark.parametrize("dx, dy", [(5, 8), (8, 5), (6, 6)])
def test_mapped_distance_is_the_padded_orthogonal_map_and_equals_the_fit_on_its_own_rows(dx, dy):
    rng = np.random.default_rng(16)
    x = rng.standard_normal((60, dx))
    y = related(x, dy, rng)
    rot = procrustes_align(x[:30], y[:30])  # fitted on the first 30 rows
    xt, yt = x[30:], y[30:]
    d = max(dx, dy)
    # the zero-padded map: rot completed to an orthogonal [d, d] matrix by an orthonormal basis of its complement
    q = np.r_[rot, null_space(rot).T] if dx <= dy else np.c_[rot, null_space(rot.T)]
    np.testing.assert_allclose(q @ q.T, np.eye(d), atol=1e-10)
    xn, yn = ((a - a.mean(0)) / np.linalg.norm(a - a.mean(0)) for a in (xt, yt))
    xp, yp = np.pad(xn, ((0, 0), (0, d - dx))), np.pad(yn, ((0, 0), (0, d - dy)))
    np.testing.assert_allclose(q[:dx, :dy], rot, atol=1e-10)
    assert mapped_distance(xt, yt, rot) == pytest.approx(np.linalg.norm(xp @ q - yp), abs=1e-10)
    assert mapped_distance(xt, yt, procrustes_align(xt, yt)) == pytest.approx(procrustes_distance(xt, yt), abs=1e-10)
    assert mapped_distance(xt, yt, rot) > procrustes_distance(xt, yt)  # a map fitted elsewhere does worse


def test_procrustes_errors_name_the_input():
    x = np.random.default_rng(13).standard_normal((10, 3))
    with pytest.raises(ValueError, match="10 and 9 rows"):
        procrustes_distance(x, x[:9])
    with pytest.raises(ValueError, match="y is constant after centring"):
        procrustes_distance(x, np.ones((10, 2)))
    with pytest.raises(ValueError, match=r"rot must be \[d1, d2\] = \[3, 3\]; got shape \(3, 2\)"):
        mapped_distance(x, x, np.eye(3)[:, :2])
