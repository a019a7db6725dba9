"""Orthogonal Procrustes between two representations of the same n texts, x [n, d1] and y [n, d2] (widths may
differ; numpy arrays or torch tensors of any float dtype, computed in float64): the distance after centring
and scaling, the map that carries x onto y, and the distance under a map fitted on other rows.

After centring and scaling to unit Frobenius norm, ||X R - Y||_F^2 = 2 - 2 <X R, Y>_F for any orthogonal R (of
the zero-padded widths). The best map makes <X R, Y> = ||X^T Y||_* >= 0, so the fitted distance lies in
[0, sqrt(2)] (``MAX_DISTANCE``), sqrt(2) exactly when X^T Y = 0. A map fitted on other rows can do worse than
no map at all: <X R, Y> down to -1, so a held-out distance lies in [0, 2] (``MAX_HELDOUT_DISTANCE``).

>>> x = np.random.default_rng(0).standard_normal((30, 3))
>>> round(procrustes_distance(x, -2 * x + 1), 6)
0.0
"""
from __future__ import annotations

import numpy as np

from lib.geometry.linalg import as_matrix, centre, same_rows, unit

__all__ = ["MAX_DISTANCE", "MAX_HELDOUT_DISTANCE", "procrustes_distance", "procrustes_align", "mapped_distance"]

MAX_DISTANCE = float(np.sqrt(2.0))  # the fitted distance when X^T Y = 0 (orthogonal representations)
MAX_HELDOUT_DISTANCE = 2.0  # a fixed map that sends X to -Y


def procrustes_distance(x, y) -> float:
    """Orthogonal Procrustes distance sqrt(2 - 2 ||X^T Y||_*) of centred, unit-Frobenius x [n, d1], y [n, d2].

    Equal to min_R ||X_pad R - Y_pad||_F over orthogonal R after zero-padding both to max(d1, d2) columns; 0 when
    y is a rotation of x (after centring and scaling), at most sqrt(2) (``MAX_DISTANCE``), reached when the
    centred x and y are orthogonal (X^T Y = 0).

    >>> import torch
    >>> x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    >>> round(procrustes_distance(x, 5 * x[:, [2, 0, 1]] - 1), 6), procrustes_distance(x, x ** 2) > 0.1
    (0.0, True)
    """
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    same_rows(x, y)
    xn, yn = (unit(centre(a), f"procrustes_distance: {name} is constant after centring") for a, name in
              ((x, "x"), (y, "y")))
    nuclear = np.linalg.svd(xn.T @ yn, compute_uv=False).sum()
    return float(np.sqrt(max(2.0 - 2.0 * nuclear, 0.0)))


def procrustes_align(x, y, *, center: bool = True) -> np.ndarray:
    """Map R [d1, d2] minimising ||x R - y||_F, orthonormal rows if d1 <= d2 else columns (zero-padding aware).

    R = U V^T from the SVD U S V^T of x^T y (after centring both when ``center``); apply it to centred x.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x, q = torch.randn(40, 3, generator=g), torch.linalg.qr(torch.randn(5, 5, generator=g))[0][:3]
    >>> np.allclose(procrustes_align(x, x @ q), q.numpy())
    True
    """
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    same_rows(x, y)
    if center:
        x, y = centre(x), centre(y)
    u, _, vh = np.linalg.svd(x.T @ y, full_matrices=False)
    return u @ vh


def mapped_distance(x, y, rot) -> float:
    """||X R - Y||_F = sqrt(2 - 2 <X R, Y>_F) of centred, unit-Frobenius x [n, d1], y [n, d2] under a fixed map
    ``rot`` [d1, d2] with orthonormal rows or columns (``procrustes_align`` fitted on other rows; read as the
    zero-padded orthogonal map). In [0, 2] (``MAX_HELDOUT_DISTANCE``); with the map fitted on these same rows it
    equals ``procrustes_distance``.

    >>> x = np.random.default_rng(0).standard_normal((30, 3))
    >>> round(mapped_distance(x, x, np.eye(3)), 6), round(mapped_distance(x, -x, np.eye(3)), 6)
    (0.0, 2.0)
    """
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    same_rows(x, y)
    rot = np.asarray(rot, dtype=np.float64)
    if rot.shape != (x.shape[1], y.shape[1]):
        raise ValueError(f"rot must be [d1, d2] = [{x.shape[1]}, {y.shape[1]}]; got shape {rot.shape}")
    xn, yn = (unit(centre(a), f"mapped_distance: {name} is constant after centring") for a, name in
              ((x, "x"), (y, "y")))
    return float(np.sqrt(max(2.0 - 2.0 * float(np.sum((xn @ rot) * yn)), 0.0)))
