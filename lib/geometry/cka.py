"""Cross-model representation similarity: CKA (linear, debiased, RBF) of single layer pairs and of every
layer pair at once, permutation tests, best-matching layers and the layer-matching check.

Inputs are activation matrices ``x`` [n, d1] and ``y`` [n, d2] whose rows are the same n texts (widths may
differ); layer stacks ``xs`` are a list of such matrices, a [L, n, d] array/tensor, or a mapping from hook
name to matrix (values taken in order). Numpy arrays or torch tensors of any float dtype are accepted; the
maths runs in float64 (numpy BLAS; torch in the permutation loop) and results are floats or float64 arrays.

With centred Gram matrices K = Xc Xc^T, L = Yc Yc^T and H = I - 11^T/n,
``CKA(K, L) = <HKH, HLH>_F / (||HKH||_F ||HLH||_F)`` (Kornblith et al. 2019). The debiased variant replaces
HKH by the U-centred Gram U(K) (zero diagonal), whose inner product is n(n-3) times the unbiased HSIC
estimator of Song et al. 2012 (as in Nguyen et al. 2021), so it is ~0 for independent data
(``lib.geometry.grams``).

>>> g = torch.Generator().manual_seed(0)
>>> xs = [torch.randn(100, 8, generator=g) for _ in range(3)]
>>> m = cka_matrix(xs, [x @ torch.linalg.qr(torch.randn(8, 8, generator=g))[0] for x in xs])
>>> best_match_layers(m).tolist()
[0, 1, 2]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lib.geometry.grams import KINDS, check_kind, gram_stack, kernel, normalised_gram
from lib.geometry.linalg import as_layers, as_matrix, centre, same_rows

__all__ = ["KINDS", "linear_cka", "debiased_cka", "rbf_cka", "cka_matrix", "PermutationResult", "permutation_test",
           "permutation_from_grams", "permutation_null_mean", "best_match_layers", "match_layers",
           "layer_matching_accuracy"]

_BLOCK = 6  # x-side layers whose Grams are held at once in cka_matrix (memory: (L2 + _BLOCK) * n^2 * 8 bytes)


# ------------------------------------------------------------------------------------------ single pairs
def linear_cka(x, y) -> float:
    """Linear CKA in feature form, ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), for x [n, d1], y [n, d2].

    >>> x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    >>> round(linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(8, 8))[0] + 1), 8)
    1.0
    """
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    check_kind("linear", same_rows(x, y))
    xc, yc = centre(x), centre(y)
    return float(np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def _hsic_unbiased(k: np.ndarray, el: np.ndarray) -> float:
    """Song et al. 2012 eq. 5: [tr(K~L~) + 1'K~1 1'L~1/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), el - np.diag(np.diag(el))
    return ((kt * lt).sum() + kt.sum() * lt.sum() / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (kt.sum(1) @ lt.sum(1))) / (n * (n - 3))


def debiased_cka(x, y) -> float:
    """Debiased linear CKA, HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)) with Song et al.'s unbiased HSIC_1.

    >>> g = torch.Generator().manual_seed(0)
    >>> abs(debiased_cka(torch.randn(200, 50, generator=g), torch.randn(200, 50, generator=g))) < 0.05
    True
    """
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    check_kind("debiased", same_rows(x, y))
    k, el = kernel(x, "linear", 0.0), kernel(y, "linear", 0.0)
    return float(_hsic_unbiased(k, el) / np.sqrt(_hsic_unbiased(k, k) * _hsic_unbiased(el, el)))


def rbf_cka(x, y, sigma_frac: float = 0.8) -> float:
    """CKA with RBF kernels exp(-|a-b|^2 / (2 sigma^2)), sigma = sigma_frac * median pairwise distance (i < j).

    Kornblith et al.'s code takes the median of squared distances over all n^2 entries, zero self-distances
    included, which gives a slightly smaller sigma; here the n(n-1)/2 distinct pairs count, numpy's median.

    >>> x = torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    >>> round(rbf_cka(x, 2 * x), 8), rbf_cka(x, x ** 3) < 1
    (1.0, True)
    """
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    check_kind("rbf", same_rows(x, y))
    gx, gy = normalised_gram(x, "rbf", sigma_frac, "x"), normalised_gram(y, "rbf", sigma_frac, "y")
    return float(gx @ gy)


# --------------------------------------------------------------------------------------- all layer pairs
def cka_matrix(xs, ys, kind: str = "linear", *, sigma_frac: float = 0.8) -> np.ndarray:
    """CKA of every layer pair, [L1, L2], from each layer's normalised centred Gram computed once.

    >>> g = torch.Generator().manual_seed(0)
    >>> xs = torch.randn(3, 40, 6, generator=g)
    >>> m = cka_matrix(xs, xs[:2], "debiased")
    >>> m.shape, np.allclose(np.diag(m), 1)
    ((3, 2), True)
    """
    xs, ys = as_layers(xs, "xs"), as_layers(ys, "ys")
    check_kind(kind, same_rows(xs[0], ys[0], "xs, ys"))
    gy = gram_stack(ys, kind, sigma_frac, "ys")  # [L2, n*n]
    out = np.empty((len(xs), len(ys)))
    for s in range(0, len(xs), _BLOCK):
        out[s:s + _BLOCK] = gram_stack(xs[s:s + _BLOCK], kind, sigma_frac, "xs", s) @ gy.T
    return out


@dataclass(frozen=True)
class PermutationResult:
    """Observed CKA [L1, L2], the permutation null [n_perm, L1, L2] and p-values [L1, L2]."""

    observed: np.ndarray
    null: np.ndarray
    p_value: np.ndarray

    @property
    def null_mean(self) -> np.ndarray:
        return self.null.mean(0)

    @property
    def null_std(self) -> np.ndarray:
        return self.null.std(0)

    @property
    def null_q95(self) -> np.ndarray:
        return np.quantile(self.null, 0.95, axis=0)


def permutation_test(xs, ys, kind: str = "linear", *, n_perm: int = 1000, seed: int = 0, sigma_frac: float = 0.8,
                     dtype: str = "float32") -> PermutationResult:
    """Permutation test of CKA for every layer pair: p = (1 + #{null >= observed}) / (1 + n_perm).

    The rows (texts) of the side with fewer layers (``ys`` on ties) are shuffled, i.e. its Gram matrices are
    permuted G -> G[p][:, p]; permutation b is the b-th ``rng.permutation(n)`` of ``np.random.default_rng(seed)``,
    shared by all layer pairs. Observed values are float64; null values are computed in ``dtype`` (float32 by
    default: relative error ~1e-6, about twice as fast) over the upper triangles of the Grams.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(30, 4, generator=g)
    >>> r = permutation_test([x], [x + 0.1 * torch.randn(30, 4, generator=g)], n_perm=99)
    >>> float(r.p_value[0, 0]), r.null.shape
    (0.01, (99, 1, 1))
    """
    xs, ys = as_layers(xs, "xs"), as_layers(ys, "ys")
    n = same_rows(xs[0], ys[0], "xs, ys")
    check_kind(kind, n)
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    return permutation_from_grams(gram_stack(xs, kind, sigma_frac, "xs"), gram_stack(ys, kind, sigma_frac, "ys"),
                                  n_perm=n_perm, seed=seed, dtype=dtype)


def permutation_from_grams(gx: np.ndarray, gy: np.ndarray, *, n_perm: int = 1000, seed: int = 0,
                           dtype: str = "float32") -> PermutationResult:
    """``permutation_test`` from the layers' flattened normalised Grams (``gram_stack``), gx [L1, n*n] and
    gy [L2, n*n], when they are already at hand.

    >>> from lib.geometry.grams import gram_stack
    >>> x = np.random.default_rng(0).standard_normal((20, 3))
    >>> g = gram_stack([x], "linear", 0.8, "x")
    >>> float(permutation_from_grams(g, g, n_perm=19).p_value[0, 0])
    0.05
    """
    gx, gy = np.asarray(gx, dtype=np.float64), np.asarray(gy, dtype=np.float64)
    n = int(round(np.sqrt(gx.shape[1])))
    if gx.ndim != 2 or gy.ndim != 2 or n * n != gx.shape[1] or gy.shape[1] != gx.shape[1]:
        raise ValueError(f"gx and gy must be stacks of flattened [n, n] Grams [L, n*n]; shapes {gx.shape}, {gy.shape}")
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    observed = gx @ gy.T
    swap = len(gx) < len(gy)
    fixed, moved = (gy, gx) if swap else (gx, gy)
    iu, ju = np.triu_indices(n)  # <A, B> = sum_{i<=j} w_ij A_ij B_ij with w = 2 off the diagonal, 1 on it
    fixed = torch.from_numpy((fixed[:, iu * n + ju] * np.where(iu == ju, 1.0, 2.0)).astype(dtype))  # [L_f, m]
    moved = torch.from_numpy(np.ascontiguousarray(moved.T, dtype=dtype))  # [n*n, L_moved]: one gather per entry
    rng = np.random.default_rng(seed)
    index = torch.int32 if n * n < 2 ** 31 else torch.int64  # int32 halves the traffic of building indices
    iu, ju = torch.from_numpy(iu).to(index), torch.from_numpy(ju).to(index)
    buf = torch.empty(len(iu), moved.shape[1], dtype=moved.dtype)
    null = np.empty((n_perm, len(fixed), moved.shape[1]))
    for b in range(n_perm):
        p = torch.from_numpy(rng.permutation(n)).to(index)
        torch.index_select(moved, 0, p[iu] * n + p[ju], out=buf)
        null[b] = (fixed @ buf).numpy()
    if swap:
        null = null.transpose(0, 2, 1)
    p_value = (1 + (null >= observed[None]).sum(0)) / (1 + n_perm)
    return PermutationResult(observed=observed, null=np.ascontiguousarray(null), p_value=p_value)


def permutation_null_mean(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Exact mean [L1, L2] of the rows-unpaired permutation null of every layer pair, from flattened Grams gx
    [L1, n*n] and gy [L2, n*n] (``gram_stack``), without permuting.

    Over uniform permutations pi, E <K, L[pi][:, pi]> = tr K tr L / n + (s_K - tr K)(s_L - tr L) / (n (n - 1)),
    s the sum of all entries. Double-centred Grams (linear, RBF) have s = 0, so the mean is tr K tr L / (n - 1):
    for linear CKA, sqrt(PR_x PR_y) / (n - 1) with PR the participation ratio (sum lambda)^2 / sum lambda^2 of the
    covariance spectrum, the chance level of linear CKA for these spectra (it is not 0). U-centred (debiased)
    Grams have zero trace and zero sums: mean 0.

    >>> from lib.geometry.grams import gram_stack
    >>> x = np.random.default_rng(0).standard_normal((6, 2))
    >>> g = gram_stack([x], "linear", 0.8, "x")
    >>> perms = [np.random.default_rng(s).permutation(6) for s in range(4000)]
    >>> exact = permutation_null_mean(g, g)[0, 0]
    >>> shuffled = np.mean([g[0] @ g[0].reshape(6, 6)[p][:, p].ravel() for p in perms])
    >>> bool(abs(exact - shuffled) < 0.01)
    True
    """
    gx, gy = np.atleast_2d(np.asarray(gx, dtype=np.float64)), np.atleast_2d(np.asarray(gy, dtype=np.float64))
    n = int(round(np.sqrt(gx.shape[1])))
    if n * n != gx.shape[1] or gy.shape[1] != gx.shape[1] or n < 2:
        raise ValueError(f"gx and gy must be stacks of flattened [n, n] Grams [L, n*n]; shapes {gx.shape}, {gy.shape}")
    diag = np.arange(n) * (n + 1)
    tx, ty = gx[:, diag].sum(1), gy[:, diag].sum(1)
    off_x, off_y = gx.sum(1) - tx, gy.sum(1) - ty
    return np.outer(tx, ty) / n + np.outer(off_x, off_y) / (n * (n - 1))


def best_match_layers(m) -> np.ndarray:
    """For a similarity matrix m [L1, L2], the best-matching Y layer of each X layer (argmax per row, first on ties).

    >>> best_match_layers(np.array([[0.9, 0.1], [0.2, 0.3], [0.5, 0.4]])).tolist()
    [0, 1, 0]
    """
    m = np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m)
    if m.ndim != 2:
        raise ValueError(f"m must be a 2-D similarity matrix [L1, L2]; input shape: {m.shape}")
    return np.argmax(m, axis=1)


def match_layers(m_a, m_b) -> tuple[float, np.ndarray]:
    """Layer matching from two self-similarity matrices [L, L] of one model on two disjoint sets of texts:
    layer i picks argmax_j corr(m_a[i], m_b[j]) (Pearson correlation of the rows). Returns (accuracy, picks [L]).

    >>> m = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, 0.4], [0.1, 0.4, 1.0]])
    >>> match_layers(m, m + 0.01)[1].tolist()
    [0, 1, 2]
    """
    rows = []
    for m in (m_a, m_b):
        m = np.array(m, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or len(m) < 2:
            raise ValueError(f"layer matching needs square similarity matrices of at least 2 layers; got {m.shape}")
        m -= m.mean(1, keepdims=True)
        rows.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    if rows[0].shape != rows[1].shape:
        raise ValueError(f"m_a and m_b must have the same layers; shapes {rows[0].shape} and {rows[1].shape}")
    picks = (rows[0] @ rows[1].T).argmax(1)
    return float(np.mean(picks == np.arange(len(picks)))), picks


def layer_matching_accuracy(xs, kind: str = "linear", seed: int = 0, *, sigma_frac: float = 0.8
                            ) -> tuple[float, np.ndarray]:
    """Fraction of layers whose CKA-similarity profile on one random half of the texts picks themselves on the other.

    Rows are split by ``np.random.default_rng(seed).permutation(n)`` into A (first n // 2) and B (the rest);
    M^A = cka_matrix(xs_A, xs_A), M^B likewise, both [L, L] (diagonals of 1 included). Layer i picks
    pick_i = argmax_j corr(M^A_i, M^B_j), with corr the Pearson correlation of the two rows of length L
    (``match_layers``); accuracy = (1/L) sum_i [pick_i == i]. Returns (accuracy, picks [L]). A one-model
    stand-in for Kornblith et al.'s check (which matches layers across two trainings); the shared diagonal of 1s
    makes it an easy test.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(300, 8, generator=g)
    >>> layer_matching_accuracy([torch.tanh(a * z) for a in (0.3, 1.0, 3.0, 10.0)])[1].tolist()
    [0, 1, 2, 3]
    """
    layers = as_layers(xs, "xs")
    n = layers[0].shape[0]
    if len(layers) < 2:
        raise ValueError(f"layer matching needs at least 2 layers, got {len(layers)}")
    order = np.random.default_rng(seed).permutation(n)
    mats = []
    for half in (order[: n // 2], order[n // 2:]):
        check_kind(kind, len(half))
        g = gram_stack([x[half] for x in layers], kind, sigma_frac, "xs")
        mats.append(g @ g.T)
    return match_layers(*mats)
