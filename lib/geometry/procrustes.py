"""Orthogonal Procrustes between two representations of the same n texts, x [n, d1] and y [n, d2] (widths may
differ; numpy arrays or torch tensors of any float dtype, computed in float64): the distance after centring
and scaling, and the map that carries x onto y.

>>> x = np.random.default_rng(0).standard_normal((30, 3))
>>> round(procrustes_distance(x, -2 * x + 1), 6)
0.0
"""
from __future__ import annotations

import numpy as np

from lib.geometry.linalg import as_matrix, centre, same_rows, unit

__all__ = ["procrustes_distance", "procrustes_align"]


def procrustes_distance(x, y) -> float:
    """Orthogonal Procrustes distance sqrt(2 - 2 ||X^T Y||_*) of centred, unit-Frobenius x [n, d1], y [n, d2].

    Equal to min_R ||X_pad R - Y_pad||_F over orthogonal R after zero-padding both to max(d1, d2) columns.

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
