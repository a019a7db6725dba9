"""Array helpers shared by the geometry modules: activation matrices in as float64, centring, unit norm,
orthonormal bases. One implementation of each, used by directions, subspaces, CKA and Procrustes.

>>> unit(np.array([3.0, -4.0]), "v")
array([ 0.6, -0.8])
>>> centre(np.array([[1.0, 2.0], [3.0, 6.0]])).tolist()
[[-1.0, -2.0], [1.0, 2.0]]
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["as_matrix", "as_layers", "same_rows", "centre", "unit", "orthonormal_basis"]


def as_matrix(x, name: str) -> np.ndarray:
    """``x`` (numpy array or torch tensor, any float dtype) as a float64 array [n, d]; an error names ``name``.

    >>> as_matrix(torch.ones(2, 3), "x").dtype
    dtype('float64')
    """
    a = x.detach().cpu().to(torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D activation matrix [n, d]; input shape: {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be floating point; input dtype: {a.dtype}")
    return a.astype(np.float64, copy=False)


def as_layers(xs, name: str) -> list[np.ndarray]:
    """A layer stack as a list of float64 [n, d] matrices with the same n: ``xs`` is a list of matrices, a
    [L, n, d] array or tensor, or a mapping from hook name to matrix (values taken in order).

    >>> [m.shape for m in as_layers(np.zeros((2, 5, 3)), "xs")]
    [(5, 3), (5, 3)]
    """
    if isinstance(xs, Mapping):
        names, items = list(xs.keys()), list(xs.values())
    else:
        items = list(xs) if not isinstance(xs, (np.ndarray, torch.Tensor)) or xs.ndim == 3 else None
        if items is None:
            raise ValueError(f"{name} must be a list of [n, d] matrices or a [L, n, d] array; input shape: "
                             f"{tuple(xs.shape)}")
        names = list(range(len(items)))
    if not items:
        raise ValueError(f"{name} is empty: need at least one layer")
    layers = [as_matrix(x, f"{name}[{k!r}]") for k, x in zip(names, items)]
    for k, t in zip(names, layers):
        if t.shape[0] != layers[0].shape[0]:
            raise ValueError(f"{name}[{k!r}] has {t.shape[0]} rows but {name}[{names[0]!r}] has "
                             f"{layers[0].shape[0]}: every layer must hold the same texts")
    return layers


def same_rows(a: np.ndarray, b: np.ndarray, names: str = "x, y") -> int:
    """The common row count n of ``a`` [n, d1] and ``b`` [n, d2]; an error if they differ."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{names} have {a.shape[0]} and {b.shape[0]} rows: rows must be the same texts")
    return a.shape[0]


def centre(x: np.ndarray) -> np.ndarray:
    """``x`` [n, d] minus its column means."""
    return x - x.mean(0, keepdims=True)


def unit(v: np.ndarray, what: str) -> np.ndarray:
    """``v`` divided by its (Frobenius) norm, -0.0 entries turned into 0.0; an error naming ``what`` if the
    norm is 0 or not finite."""
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise ValueError(f"{what}: cannot normalise an array of norm {n}")
    return v / n + 0.0  # + 0.0 turns -0.0 into 0.0


def orthonormal_basis(a, name: str) -> np.ndarray:
    """Orthonormal basis [d, k] (QR) of the column span of ``a`` [d, k] (a vector [d] is one column); an
    error if ``a`` is not finite, has no columns, more columns than rows, or linearly dependent columns.

    >>> np.abs(orthonormal_basis(np.array([[2.0], [0.0]]), "a")).ravel().tolist()
    [1.0, 0.0]
    """
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[1] > a.shape[0] or not np.isfinite(a).all():
        raise ValueError(f"{name} must be a finite [d, k] array with 1 <= k <= d; got shape {a.shape}")
    q, r = np.linalg.qr(a)
    diag = np.abs(np.diag(r))
    if diag.min() <= 1e-10 * max(diag.max(), 1e-300):
        raise ValueError(f"{name} has linearly dependent columns (shape {a.shape}); pass a basis of its span")
    return q
