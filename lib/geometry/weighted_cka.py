"""CKA of a resample given as item weights, for bootstrap intervals: linear and debiased CKA of one layer pair
from its two Gram matrices, for a whole block of weight vectors at once (matrix products, no resampled copies).

``k``, ``el`` [n, n] are the linear Grams of the two representations (any centring, any scale: e.g.
``normalised_gram(x, "linear").reshape(n, n)``); ``weights`` [b, n] are non-negative integer counts, row r
one resample (``lib.stats.bootstrap.group_bootstrap`` draws them over text groups).

- Linear CKA is that of the resampled rows x[idx] (centred on their mean, repeats included) with the pairs of
  two copies of one item left out of the Frobenius products: a copy's similarity to another copy of itself is
  a diagonal term, and counting it w(w - 1) times more would bias every replicate upwards (with repeats, linear
  CKA behaves as if n were smaller). Each item's own diagonal term counts once per copy, as in the sample.
- Debiased CKA is Song et al.'s unbiased HSIC taken over tuples of *distinct* items, each tuple weighted by
  the product of its items' counts: a repeated row is never paired with its own copy (a copy's similarity
  to itself is the diagonal term the debiased estimator exists to leave out). With 0/1 weights it is
  ``debiased_cka`` of the chosen rows. The terms come from inclusion-exclusion over the index coincidences.

>>> g = np.random.default_rng(0)
>>> x = g.standard_normal((30, 4)); y = x + g.standard_normal((30, 4))
>>> lin, deb = weighted_cka(x @ x.T, y @ y.T, np.ones((1, 30)))
>>> from lib.geometry.cka import debiased_cka, linear_cka
>>> bool(np.isclose(lin[0], linear_cka(x, y)) and np.isclose(deb[0], debiased_cka(x, y)))
True
"""
from __future__ import annotations

import numpy as np

__all__ = ["weighted_cka"]


def _terms(p: np.ndarray, r: np.ndarray, w: np.ndarray, pw: np.ndarray, rw: np.ndarray) -> tuple:
    """Weighted sums for kernels p, r (zero diagonal) [n, n] and weights w [b, n]; pw = [p w, p w^2] [2, b, n].

    Returns (the weighted sum over distinct 4-tuples (i, j, q, r) of p_ij r_ij + p_ij r_qr - 2 p_ij r_iq, and
    sum_ij w_i w_j p_ij r_ij), both [b].
    """
    w2, w3 = w * w, w * w * w
    m = p * r
    mw, mw2 = np.stack([w, w2]) @ m  # [b, n] each: m w, m w^2
    total = w.sum(1)
    q = w2.sum(1)
    w_mw, w2_mw, w3_mw, w2_mw2 = ((w * mw).sum(1), (w2 * mw).sum(1), (w3 * mw).sum(1), (w2 * mw2).sum(1))
    t1 = (total ** 2 - q) * w_mw - 4 * total * w2_mw + 4 * w3_mw + 2 * w2_mw2
    t2 = (w * pw[0]).sum(1) * (w * rw[0]).sum(1) - 4 * (w2 * pw[0] * rw[0]).sum(1) + 2 * w2_mw2
    t3 = (total * ((w * pw[0] * rw[0]).sum(1) - w2_mw) - ((w2 * pw[0] * rw[0]).sum(1) - w2_mw2)
          - ((w * pw[1] * rw[0]).sum(1) - w3_mw) - ((w * pw[0] * rw[1]).sum(1) - w3_mw))
    return t1 + t2 - 2 * t3, w_mw


def weighted_cka(k, el, weights) -> tuple[np.ndarray, np.ndarray]:
    """(linear CKA [b], debiased CKA [b]) of the resamples ``weights`` [b, n] of one layer pair's Grams [n, n].

    >>> g = np.random.default_rng(1)
    >>> x, y = g.standard_normal((12, 3)), g.standard_normal((12, 5))
    >>> w = (g.random((1, 12)) < 0.7).astype(float)  # 0/1 weights: CKA of the chosen rows
    >>> from lib.geometry.cka import linear_cka
    >>> keep = w[0] > 0
    >>> bool(np.isclose(weighted_cka(x @ x.T, y @ y.T, w)[0][0], linear_cka(x[keep], y[keep])))
    True
    """
    k, el = np.asarray(k, dtype=np.float64), np.asarray(el, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n = len(k)
    if k.shape != (n, n) or el.shape != (n, n) or w.shape[1] != n:
        raise ValueError(f"k and el must be [n, n] Grams and weights [b, n]; got {k.shape}, {el.shape}, {w.shape}")
    if (w < 0).any() or ((w > 0).sum(1) < 4).any():
        raise ValueError("weights must be >= 0 with at least 4 items of positive weight in every resample")
    dk, dl = np.diag(k).copy(), np.diag(el).copy()
    kz, lz = k - np.diag(dk), el - np.diag(dl)
    w2 = w * w
    kw, lw = np.stack([w, w2]) @ kz, np.stack([w, w2]) @ lz  # [2, b, n]: zero-diagonal kernels times w, w^2
    total = w.sum(1)
    unbiased, biased = {}, {}  # the sums N of Song et al.'s HSIC_1 = N / sum of tuple weights, which cancels in CKA
    for name, (p, r, pw, rw, dp, dr) in {"kl": (kz, lz, kw, lw, dk, dl), "kk": (kz, kz, kw, kw, dk, dk),
                                         "ll": (lz, lz, lw, lw, dl, dl)}.items():
        u, w_mw = _terms(p, r, w, pw, rw)
        unbiased[name] = u
        # biased HSIC of the rows with repeats, from the full kernels P = p + diag(dp), R = r + diag(dr)
        full_m = w_mw + (w2 * dp * dr).sum(1)
        pf, rf = pw[0] + w * dp, rw[0] + w * dr  # full kernels times w
        cp, cr = (w * pf).sum(1) / total ** 2, (w * rf).sum(1) / total ** 2
        with_ties = full_m - 2 * (w * pf * rf).sum(1) / total + cp * cr * total ** 2
        centred_diag = (dp - 2 * pf / total[:, None] + cp[:, None]) * (dr - 2 * rf / total[:, None] + cr[:, None])
        biased[name] = with_ties - ((w2 - w) * centred_diag).sum(1)  # drop the pairs of two copies of one item
    linear = biased["kl"] / np.sqrt(biased["kk"] * biased["ll"])
    debiased = unbiased["kl"] / np.sqrt(unbiased["kk"] * unbiased["ll"])
    return linear, debiased
