"""Nuisance-corrected features for CKA: the token count regressed out of every feature, per-feature
standardisation, or both, beside the raw features.

Two models read the same texts, so their CKA can be high for reasons other than shared representations:
both depend on how long the text is, and a few outlier dimensions of very large norm dominate a linear Gram
matrix (Davari et al. 2023). A variant is only a different matrix per layer before the Gram:

- ``raw``: x as stored;
- ``length``: each feature minus its least-squares fit on [1, z, z^2, z^3], z the standardised log token
  count of the row (each model's own count; ``length_covariates``);
- ``zscore``: each feature centred and divided by its standard deviation, so every dimension weighs the
  same in the Gram and no handful of huge-norm dimensions can dominate (constant features stay 0);
- ``length+zscore``: ``length``, then ``zscore``.

Corrections use only the rows they are given (like centring): no labels and nothing of the other model.
Standardising trades one invariance for another: CKA of z-scored features no longer ignores rotations (the
coordinates of the residual stream are taken as given, as the outlier dimensions themselves are), but it no
longer lets the few coordinates of huge variance decide.

>>> x = np.c_[np.arange(6.0), 100 * np.arange(6.0) ** 2]
>>> standardise(x).std(0).round(6).tolist()
[1.0, 1.0]
"""
from __future__ import annotations

import numpy as np

from lib.geometry.linalg import as_matrix, centre

__all__ = ["VARIANTS", "LENGTH_DEGREE", "length_covariates", "residualise", "standardise", "nuisance_features"]

VARIANTS = ("raw", "length", "zscore", "length+zscore")
LENGTH_DEGREE = 3  # powers of the standardised log token count regressed out by the ``length`` variants


def length_covariates(n_tokens, degree: int = LENGTH_DEGREE) -> np.ndarray:
    """Powers 1..``degree`` of z = standardised log token count, [n, degree] (a constant count gives none).

    >>> length_covariates([4, 8, 16], degree=2).round(4).tolist()
    [[-1.2247, 1.5], [0.0, 0.0], [1.2247, 1.5]]
    """
    t = np.asarray(n_tokens, dtype=np.float64)
    if t.ndim != 1 or not len(t) or not np.isfinite(t).all() or (t < 1).any():
        raise ValueError(f"n_tokens must be a 1-D array of counts >= 1; got shape {t.shape}, "
                         f"min {np.nanmin(t) if t.size else 'n/a'}")
    z = np.log(t)
    sd = z.std()
    if sd == 0:
        return np.zeros((len(t), 0))
    z = (z - z.mean()) / sd
    return np.stack([z ** p for p in range(1, degree + 1)], axis=1)


def residualise(x, covariates) -> np.ndarray:
    """x [n, d] minus its least-squares fit on [1, covariates] ([n, p]): float64, orthogonal to both.

    >>> c = np.arange(5.0)[:, None]
    >>> bool(np.abs(residualise(3 * c + 1, c)).max() < 1e-12)
    True
    """
    x = as_matrix(x, "x")
    c = np.asarray(covariates, dtype=np.float64).reshape(len(x), -1)
    q, _ = np.linalg.qr(np.c_[np.ones(len(x)), c])
    return x - q @ (q.T @ x)


def standardise(x) -> np.ndarray:
    """x [n, d] centred, each column divided by its (population) standard deviation; constant columns are 0.

    >>> standardise(np.array([[1.0, 5.0], [3.0, 5.0]])).tolist()
    [[-1.0, 0.0], [1.0, 0.0]]
    """
    xc = centre(as_matrix(x, "x"))
    sd = xc.std(0)
    keep = sd > 1e-12 * max(float(sd.max(initial=0.0)), 1e-300)
    out = np.zeros_like(xc)
    out[:, keep] = xc[:, keep] / sd[keep]
    return out


def nuisance_features(x, variant: str, n_tokens=None) -> np.ndarray:
    """The ``variant`` of x [n, d] (one of ``VARIANTS``); ``n_tokens`` [n] is needed by the length variants.

    >>> x = np.random.default_rng(0).standard_normal((8, 3))
    >>> np.allclose(nuisance_features(x, "raw"), x), nuisance_features(x, "zscore", None).shape
    (True, (8, 3))
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    x = as_matrix(x, "x")
    if variant == "raw":
        return x
    if variant.startswith("length"):
        if n_tokens is None or len(n_tokens) != len(x):
            raise ValueError(f"variant {variant!r} needs n_tokens with one count per row ({len(x)} rows); got "
                             f"{None if n_tokens is None else len(n_tokens)}")
        x = residualise(x, length_covariates(n_tokens))
    return standardise(x) if variant.endswith("zscore") else x
