"""Cross-model representation similarity: CKA (linear, debiased, RBF), permutation tests, Procrustes, angles.

Inputs are activation matrices ``x`` [n, d1] and ``y`` [n, d2] whose rows are the same n texts (widths may
differ); layer stacks ``xs`` are a list of such matrices, a [L, n, d] array/tensor, or a mapping from hook
name to matrix (values taken in order). Numpy arrays or torch tensors of any float dtype are accepted; the
maths runs in float64 (numpy BLAS; torch in the permutation loop) and results are floats or float64 arrays.

With centred Gram matrices K = Xc Xc^T, L = Yc Yc^T and H = I - 11^T/n,
``CKA(K, L) = <HKH, HLH>_F / (||HKH||_F ||HLH||_F)`` (Kornblith et al. 2019). The debiased variant replaces
HKH by the U-centred Gram U(K) (zero diagonal), whose inner product is n(n-3) times the unbiased HSIC
estimator of Song et al. 2012 (as in Nguyen et al. 2021), so it is ~0 for independent data.

>>> g = torch.Generator().manual_seed(0)
>>> xs = [torch.randn(100, 8, generator=g) for _ in range(3)]
>>> m = cka_matrix(xs, [x @ torch.linalg.qr(torch.randn(8, 8, generator=g))[0] for x in xs])
>>> best_match_layers(m).tolist()
[0, 1, 2]
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = ["linear_cka", "debiased_cka", "rbf_cka", "cka_matrix", "PermutationResult", "permutation_test",
           "procrustes_distance", "procrustes_align", "principal_angles", "best_match_layers",
           "layer_matching_accuracy", "KINDS"]

KINDS = ("linear", "debiased", "rbf")
_BLOCK = 6  # x-side layers whose Grams are held at once in cka_matrix (memory: (L2 + _BLOCK) * n^2 * 8 bytes)


# ----------------------------------------------------------------------------------------- input handling
def _as_matrix(x, name: str) -> np.ndarray:
    a = x.detach().cpu().to(torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D activation matrix [n, d]; input shape: {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be floating point; input dtype: {a.dtype}")
    return a.astype(np.float64, copy=False)


def _as_layers(xs, name: str) -> list[np.ndarray]:
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
    layers = [_as_matrix(x, f"{name}[{k!r}]") for k, x in zip(names, items)]
    for k, t in zip(names, layers):
        if t.shape[0] != layers[0].shape[0]:
            raise ValueError(f"{name}[{k!r}] has {t.shape[0]} rows but {name}[{names[0]!r}] has "
                             f"{layers[0].shape[0]}: every layer must hold the same texts")
    return layers


def _same_rows(a: np.ndarray, b: np.ndarray, names: str = "x, y") -> int:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{names} have {a.shape[0]} and {b.shape[0]} rows: rows must be the same texts")
    return a.shape[0]


def _check_kind(kind: str, n: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if n < (4 if kind == "debiased" else 2):
        raise ValueError(f"{kind} CKA needs at least {4 if kind == 'debiased' else 2} rows, got {n}")


# ------------------------------------------------------------------------------------------------ Grams
# Grams are built in numpy float64: ``a @ a.T`` runs as BLAS syrk (half the flops), ~1.5x faster than torch.
def _centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(0, keepdims=True)


def _kernel(x: np.ndarray, kind: str, sigma_frac: float) -> np.ndarray:
    """Kernel [n, n] (a fresh array): Xc Xc^T, or RBF with sigma = sigma_frac * median pairwise distance."""
    xc = _centre(x)
    g = xc @ xc.T
    if kind != "rbf":
        return g
    sq = np.diagonal(g).copy()
    g *= -2.0
    g += sq[:, None]
    g += sq[None, :]
    np.maximum(g, 0.0, out=g)  # squared distances
    np.fill_diagonal(g, 0.0)
    upper = np.take(g, _upper_flat(len(g)))  # the n(n-1)/2 pairs i < j
    k = len(upper) // 2
    middle = np.sqrt(np.partition(upper, [k - 1, k])[[k - 1, k]])  # numpy's median: mean of the middle two if even
    median = float(middle[1] if len(upper) % 2 else middle.mean())
    if median == 0:
        raise ValueError("RBF CKA: the median pairwise distance is 0 (most rows are identical)")
    g *= -1.0 / (2.0 * (sigma_frac * median) ** 2)
    torch.from_numpy(g).exp_()  # in place, on torch's threads (numpy's exp runs on one)
    return g


@lru_cache(maxsize=2)
def _upper_flat(n: int) -> np.ndarray:
    """Flat indices i * n + j of the pairs i < j of an [n, n] matrix, row by row."""
    iu, ju = np.triu_indices(n, 1)
    return (iu * n + ju).astype(np.int32 if n * n < 2 ** 31 else np.int64)


def _double_centre(k: np.ndarray) -> np.ndarray:
    """H K H in place."""
    k -= k.mean(0, keepdims=True)
    k -= k.mean(1, keepdims=True)
    return k


def _u_centre(k: np.ndarray) -> np.ndarray:
    """U-centring in place (Szekely & Rizzo 2014): <U(K), U(L)> = n(n-3) HSIC_unbiased(K, L)."""
    n = len(k)
    np.fill_diagonal(k, 0.0)
    means = k.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    k -= means[:, None]
    k -= means[None, :]
    np.fill_diagonal(k, 0.0)
    return k


def _normalised_gram(x: np.ndarray, kind: str, sigma_frac: float, name: str = "x") -> np.ndarray:
    """Flattened [n*n] centred (U-centred if debiased) Gram of unit Frobenius norm; CKA = dot product."""
    k = _kernel(x, kind, sigma_frac)
    if kind == "debiased":
        _u_centre(k)
    elif kind == "rbf":  # the linear Gram of centred x is already centred
        _double_centre(k)
    norm = np.linalg.norm(k)
    if norm == 0:
        raise ValueError(f"{name} has a zero centred Gram matrix (constant rows?): CKA is undefined")
    k /= norm
    return k.reshape(-1)


def _stack(layers: list[np.ndarray], kind: str, sigma_frac: float, name: str, offset: int = 0) -> np.ndarray:
    return np.stack([_normalised_gram(x, kind, sigma_frac, f"{name}[{offset + i}]") for i, x in enumerate(layers)])


# ------------------------------------------------------------------------------------------ single pairs
def linear_cka(x, y) -> float:
    """Linear CKA in feature form, ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), for x [n, d1], y [n, d2].

    >>> x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    >>> round(linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(8, 8))[0] + 1), 8)
    1.0
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    _check_kind("linear", _same_rows(x, y))
    xc, yc = _centre(x), _centre(y)
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
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    _check_kind("debiased", _same_rows(x, y))
    k, el = _kernel(x, "linear", 0.0), _kernel(y, "linear", 0.0)
    return float(_hsic_unbiased(k, el) / np.sqrt(_hsic_unbiased(k, k) * _hsic_unbiased(el, el)))


def rbf_cka(x, y, sigma_frac: float = 0.8) -> float:
    """CKA with RBF kernels exp(-|a-b|^2 / (2 sigma^2)), sigma = sigma_frac * median pairwise distance (i < j).

    Kornblith et al.'s code takes the median of squared distances over all n^2 entries, zero self-distances
    included, which gives a slightly smaller sigma; here the n(n-1)/2 distinct pairs count, numpy's median.

    >>> x = torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    >>> round(rbf_cka(x, 2 * x), 8), rbf_cka(x, x ** 3) < 1
    (1.0, True)
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    _check_kind("rbf", _same_rows(x, y))
    gx, gy = _normalised_gram(x, "rbf", sigma_frac, "x"), _normalised_gram(y, "rbf", sigma_frac, "y")
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
    xs, ys = _as_layers(xs, "xs"), _as_layers(ys, "ys")
    _check_kind(kind, _same_rows(xs[0], ys[0], "xs, ys"))
    gy = _stack(ys, kind, sigma_frac, "ys")  # [L2, n*n]
    out = np.empty((len(xs), len(ys)))
    for s in range(0, len(xs), _BLOCK):
        out[s:s + _BLOCK] = _stack(xs[s:s + _BLOCK], kind, sigma_frac, "xs", s) @ gy.T
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
    xs, ys = _as_layers(xs, "xs"), _as_layers(ys, "ys")
    n = _same_rows(xs[0], ys[0], "xs, ys")
    _check_kind(kind, n)
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    gx, gy = _stack(xs, kind, sigma_frac, "xs"), _stack(ys, kind, sigma_frac, "ys")
    observed = gx @ gy.T
    swap = len(xs) < len(ys)
    fixed, moved = (gy, gx) if swap else (gx, gy)
    iu, ju = np.triu_indices(n)  # <A, B> = sum_{i<=j} w_ij A_ij B_ij with w = 2 off the diagonal, 1 on it
    fixed = torch.from_numpy((fixed[:, iu * n + ju] * np.where(iu == ju, 1.0, 2.0)).astype(dtype))  # [L_f, m]
    moved = torch.from_numpy(np.ascontiguousarray(moved.T, dtype=dtype))  # [n*n, L_moved]: one gather per entry
    del gx, gy
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


# ------------------------------------------------------------------------------- Procrustes and subspaces
def _unit(x: np.ndarray, name: str) -> np.ndarray:
    xc = _centre(x)
    norm = np.linalg.norm(xc)
    if norm == 0:
        raise ValueError(f"{name} is constant after centring: Procrustes distance is undefined")
    return xc / norm


def procrustes_distance(x, y) -> float:
    """Orthogonal Procrustes distance sqrt(2 - 2 ||X^T Y||_*) of centred, unit-Frobenius x [n, d1], y [n, d2].

    Equal to min_R ||X_pad R - Y_pad||_F over orthogonal R after zero-padding both to max(d1, d2) columns.

    >>> x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    >>> round(procrustes_distance(x, 5 * x[:, [2, 0, 1]] - 1), 6), procrustes_distance(x, x ** 2) > 0.1
    (0.0, True)
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    _same_rows(x, y)
    nuclear = np.linalg.svd(_unit(x, "x").T @ _unit(y, "y"), compute_uv=False).sum()
    return float(np.sqrt(max(2.0 - 2.0 * nuclear, 0.0)))


def procrustes_align(x, y, *, center: bool = True) -> np.ndarray:
    """Map R [d1, d2] minimising ||x R - y||_F, orthonormal rows if d1 <= d2 else columns (zero-padding aware).

    R = U V^T from the SVD U S V^T of x^T y (after centring both when ``center``); apply it to centred x.

    >>> g = torch.Generator().manual_seed(0)
    >>> x, q = torch.randn(40, 3, generator=g), torch.linalg.qr(torch.randn(5, 5, generator=g))[0][:3]
    >>> np.allclose(procrustes_align(x, x @ q), q.numpy())
    True
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    _same_rows(x, y)
    if center:
        x, y = _centre(x), _centre(y)
    u, _, vh = np.linalg.svd(x.T @ y, full_matrices=False)
    return u @ vh


def principal_angles(a, b) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of a [d, k1] and b [d, k2], min(k1, k2) of them.

    Columns are assumed linearly independent; angles below ~1e-8 lose precision through arccos.

    >>> c, s = np.cos(0.3), np.sin(0.3)
    >>> principal_angles(np.eye(3)[:, :2], np.array([[1, 0], [0, c], [0, s]])).round(6)
    array([0. , 0.3])
    """
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a, b must live in the same space: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    qa, qb = np.linalg.qr(a)[0], np.linalg.qr(b)[0]
    cos = np.linalg.svd(qa.T @ qb, compute_uv=False)  # descending, so the angles come out ascending
    return np.arccos(np.clip(cos, -1.0, 1.0))


def best_match_layers(m) -> np.ndarray:
    """For a similarity matrix m [L1, L2], the best-matching Y layer of each X layer (argmax per row, first on ties).

    >>> best_match_layers(np.array([[0.9, 0.1], [0.2, 0.3], [0.5, 0.4]])).tolist()
    [0, 1, 0]
    """
    m = np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m)
    if m.ndim != 2:
        raise ValueError(f"m must be a 2-D similarity matrix [L1, L2]; input shape: {m.shape}")
    return np.argmax(m, axis=1)


def layer_matching_accuracy(xs, kind: str = "linear", seed: int = 0, *, sigma_frac: float = 0.8
                            ) -> tuple[float, np.ndarray]:
    """Fraction of layers whose CKA-similarity profile on one random half of the texts picks themselves on the other.

    Rows are split by ``np.random.default_rng(seed).permutation(n)`` into A (first n // 2) and B (the rest);
    M^A = cka_matrix(xs_A, xs_A), M^B likewise, both [L, L] (diagonals of 1 included). Layer i picks
    pick_i = argmax_j corr(M^A_i, M^B_j), with corr the Pearson correlation of the two rows of length L;
    accuracy = (1/L) sum_i [pick_i == i]. Returns (accuracy, picks [L]). A one-model stand-in for Kornblith et
    al.'s check (which matches layers across two trainings); the shared diagonal of 1s makes it an easy test.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(300, 8, generator=g)
    >>> layer_matching_accuracy([torch.tanh(a * z) for a in (0.3, 1.0, 3.0, 10.0)])[1].tolist()
    [0, 1, 2, 3]
    """
    layers = _as_layers(xs, "xs")
    n = layers[0].shape[0]
    if len(layers) < 2:
        raise ValueError(f"layer matching needs at least 2 layers, got {len(layers)}")
    order = np.random.default_rng(seed).permutation(n)
    rows = []
    for half in (order[: n // 2], order[n // 2:]):
        _check_kind(kind, len(half))
        g = _stack([x[half] for x in layers], kind, sigma_frac, "xs")
        m = g @ g.T
        m -= m.mean(1, keepdims=True)
        rows.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    picks = (rows[0] @ rows[1].T).argmax(1)
    return float(np.mean(picks == np.arange(len(layers)))), picks
