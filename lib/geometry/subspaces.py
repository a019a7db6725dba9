"""Emotion subspaces that keep the mean offset apart from the within-class spread, principal angles between
subspaces, and two chance references for comparing subspace fits: uniformly random subspaces, and random
subspaces drawn from the data's own covariance.

Inputs are activations ``x`` [n_rows, d] and ``labels`` as in ``lib.geometry.rows`` (NaN rows dropped).
Angles are in radians, ascending. Two kinds of subspace (``KINDS``), and what ``k`` counts in each:

- ``within``: the top principal axes of the rows of one emotion centred on that emotion's own mean (joint:
  the three emotions' rows, each centred on its own mean, stacked); ``k`` is the fewest axes reaching
  ``var_threshold`` of the within-class variance. The offset from neutral is not inside.
- ``between``: the span of the class-mean offsets, emotion mean minus neutral mean (one emotion: its offset
  direction, k = 1; joint: the three offsets, k <= 3 by the same threshold on their squared norm).

Every fit carries the offsets (``Subspace.offsets`` [emotions, d], ``offset_norms``).

>>> t = 0.3
>>> principal_angles(np.eye(3)[:, :2], np.array([[1, 0], [0, np.cos(t)], [0, np.sin(t)]])).round(6)
array([0. , 0.3])
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.directions import top_singular
from lib.geometry.linalg import orthonormal_basis
from lib.geometry.rows import Rows, class_rows, drop_missing

__all__ = [
    "KINDS", "Subspace", "emotion_subspace", "joint_subspace", "fit_rows", "centred_rows", "principal_angles",
    "random_subspace_angles", "covariance_subspace_angles",
]

KINDS = ("within", "between")
_TOL = 1e-12  # slack on variance thresholds, so a share of exactly 0.8 reaches a threshold of 0.8


class Subspace(NamedTuple):
    """basis [d, k] orthonormal columns; k; explained [r] cumulative share of what ``kind`` measures (within-class
    variance, or the offsets' squared norm) over the r axes computed (all when k came from the threshold, the
    first k when k was given); kind; offsets [emotions, d] (emotion mean - neutral mean)."""
    basis: np.ndarray
    k: int
    explained: np.ndarray
    kind: str = "within"
    offsets: np.ndarray | None = None

    @property
    def offset_norms(self) -> np.ndarray:
        """Euclidean norm of each emotion's offset from the neutral mean [emotions]."""
        return np.linalg.norm(self.offsets, axis=1) if self.offsets is not None else np.array([])


def _fit_subspace(a: np.ndarray, var_threshold: float, max_k: int | None, k: int | None, kind: str,
                  offsets: np.ndarray, what: str) -> Subspace:
    """Principal axes of ``a`` [n, d] (rows already centred, or offsets), uncentred SVD."""
    if not 0 < var_threshold <= 1:
        raise ValueError(f"var_threshold must be in (0, 1]; got {var_threshold}")
    total = float(np.square(a).sum())
    if total == 0:
        raise ValueError(f"{what}: the {a.shape[0]} rows of shape {a.shape} have no spread; no subspace")
    if k is not None:
        if not 1 <= k <= min(a.shape):
            raise ValueError(f"{what}: k={k} out of range: {a.shape[0]} rows in d={a.shape[1]} give 1..{min(a.shape)}")
        s, vt = top_singular(a, int(k))
        return Subspace(vt.T.copy(), int(k), np.cumsum(s ** 2) / total, kind, offsets)
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    explained = np.cumsum(s ** 2) / total
    k = int(np.argmax(explained >= var_threshold - _TOL)) + 1
    k = min(k, max_k) if max_k else k
    return Subspace(vt[:k].T.copy(), int(k), explained, kind, offsets)


def _offsets(rows: Rows, emotions, context: str) -> np.ndarray:
    base = class_rows(rows, BASELINE, context).mean(0)
    return np.stack([class_rows(rows, e, context).mean(0) - base for e in emotions])


def centred_rows(rows: Rows, classes, context: str) -> np.ndarray:
    """The rows of ``classes`` stacked, each centred on its own class mean [m, d] (the within-class spread).

    >>> centred_rows(drop_missing(np.array([[1., 0.], [3., 0.], [5., 5.]]), ["a", "a", "b"]), ["a"], "demo")
    array([[-1.,  0.],
           [ 1.,  0.]])
    """
    return np.vstack([(xs := class_rows(rows, c, context)) - xs.mean(0) for c in classes])


def fit_rows(rows: Rows, emotion: str | None = None, *, kind: str = "within", var_threshold: float = 0.9,
             max_k: int | None = None, k: int | None = None, emotions=TARGET_EMOTIONS) -> Subspace:
    """``emotion_subspace`` of ``emotion`` (``joint_subspace`` of ``emotions`` when None) on checked ``Rows``."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; valid kinds: {KINDS}")
    ems = tuple(emotions) if emotion is None else (emotion,)
    what = f"joint_subspace(kind={kind!r})" if emotion is None else f"emotion_subspace({emotion!r}, kind={kind!r})"
    offsets = _offsets(rows, ems, what)
    if kind == "within":
        return _fit_subspace(centred_rows(rows, ems, what), var_threshold, max_k, k, kind, offsets, what)
    if emotion is not None and k not in (None, 1):
        raise ValueError(f"{what}: one emotion's between-class subspace is its offset direction, k = 1; got k={k}")
    return _fit_subspace(offsets, var_threshold, max_k, 1 if emotion is not None else k, kind, offsets, what)


def emotion_subspace(x, labels, emotion: str, var_threshold: float = 0.9, max_k: int | None = None, *,
                     k: int | None = None, kind: str = "within") -> Subspace:
    """One emotion's subspace. ``within`` (default): the top-k principal axes of the emotion's rows centred on
    their own mean, k the fewest whose cumulative share of the within-class variance reaches ``var_threshold``
    (capped at ``max_k``) unless ``k`` is given; ``between``: the unit offset (emotion mean - neutral mean),
    k = 1. ``offsets`` holds the offset either way. Returns Subspace(basis [d, k], k, explained, kind, offsets).

    >>> x = np.array([[0., 0.], [0., 0.], [5., 0.1], [5., -0.1]])
    >>> s = emotion_subspace(x, ["neutral"] * 2 + ["anger"] * 2, "anger")
    >>> s.k, np.abs(s.basis).ravel().round(3).tolist(), s.offset_norms.round(3).tolist()  # spread: y; offset: x
    (1, [0.0, 1.0], [5.0])
    """
    return fit_rows(drop_missing(x, labels), emotion, kind=kind, var_threshold=var_threshold, max_k=max_k, k=k)


def joint_subspace(x, labels, var_threshold: float = 0.9, max_k: int | None = None, *, emotions=TARGET_EMOTIONS,
                   k: int | None = None, kind: str = "within") -> Subspace:
    """The subspace of all ``emotions`` together. ``within`` (default): principal axes of the pooled within-class
    spread (each emotion's rows centred on its own mean, stacked; each row weighted equally), k as in
    ``emotion_subspace``; ``between``: the span of the emotions' offsets from the neutral mean, k (at most the
    number of emotions) the fewest axes reaching ``var_threshold`` of their squared norm unless given.

    >>> x = np.array([[0., 0.], [0., 0.], [2., 0.], [2., 0.], [0., 2.], [0., 2.1]])
    >>> labs = ["neutral"] * 2 + ["anger"] * 2 + ["apology"] * 2
    >>> joint_subspace(x, labs, emotions=("anger", "apology"), kind="between").k
    2
    """
    return fit_rows(drop_missing(x, labels), None, kind=kind, var_threshold=var_threshold, max_k=max_k, k=k,
                    emotions=emotions)


def principal_angles(a, b) -> np.ndarray:
    """Principal angles in radians, ascending [min(ka, kb)], between the column spans of ``a`` [d, ka] and
    ``b`` [d, kb]: QR then SVD, arccos of the cosines, arcsin of the sines for angles below pi/4 (accurate).

    >>> t = 0.3
    >>> a = np.array([[1., 0.], [0., 0.], [0., 1.]])
    >>> principal_angles(a, np.array([[np.cos(t), 0.], [np.sin(t), 0.], [0., 1.]])).round(6)
    array([0. , 0.3])
    """
    qa, qb = orthonormal_basis(a, "a"), orthonormal_basis(b, "b")
    if qa.shape[0] != qb.shape[0]:
        raise ValueError(f"a and b must have the same number of rows d; got {np.shape(a)} and {np.shape(b)}")
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa
    cross = qa.T @ qb  # [ka, kb], ka >= kb
    cos = np.clip(np.linalg.svd(cross, compute_uv=False), 0.0, 1.0)  # descending -> angles ascending
    sin = np.clip(np.linalg.svd(qb - qa @ cross, compute_uv=False)[::-1], 0.0, 1.0)  # ascending
    return np.where(cos ** 2 >= 0.5, np.arcsin(sin), np.arccos(cos))


def _batched_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``principal_angles`` of many pairs at once: a, b [s, d, k] (full column rank) -> [s, k] ascending."""
    qa, qb = np.linalg.qr(a)[0], np.linalg.qr(b)[0]
    cross = np.swapaxes(qa, 1, 2) @ qb  # [s, k, k]
    cos = np.clip(np.linalg.svd(cross, compute_uv=False), 0.0, 1.0)
    sin = np.clip(np.linalg.svd(qb - qa @ cross, compute_uv=False)[:, ::-1], 0.0, 1.0)
    return np.where(cos ** 2 >= 0.5, np.arcsin(sin), np.arccos(cos))


@lru_cache(maxsize=64)
def _uniform(d: int, k_a: int, k_b: int, n_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    draws = [(rng.standard_normal((d, k_a)), rng.standard_normal((d, k_b))) for _ in range(n_samples)]
    if k_a != k_b:
        return np.stack([principal_angles(a, b) for a, b in draws])
    return _batched_angles(np.stack([a for a, _ in draws]), np.stack([b for _, b in draws]))


def random_subspace_angles(d: int, k_a: int, k_b: int, n_samples: int = 200, seed: int = 0) -> np.ndarray:
    """Principal angles [n_samples, min(k_a, k_b)] (ascending per row) between pairs of uniformly random
    subspaces of dimensions ``k_a`` and ``k_b`` in R^d (sample i draws a [d, k_a] then a [d, k_b] Gaussian;
    results are cached per arguments). Any two subspaces of an anisotropic cloud beat this reference;
    ``covariance_subspace_angles`` is the one a fit has to beat.

    >>> a = random_subspace_angles(100, 2, 2, n_samples=50)
    >>> a.shape, round(float(a.mean()), 1)
    ((50, 2), 1.5)
    """
    if not (1 <= k_a <= d and 1 <= k_b <= d):
        raise ValueError(f"need 1 <= k_a, k_b <= d; got d={d}, k_a={k_a}, k_b={k_b}")
    return _uniform(int(d), int(k_a), int(k_b), int(n_samples), int(seed)).copy()


def covariance_subspace_angles(rows_a, rows_b, k: int, n_samples: int = 200, seed: int = 0) -> np.ndarray:
    """Principal angles [n_samples, k] between pairs of random k-dim subspaces drawn from the data's own
    covariance: span(A^T G) against span(B^T G'), G and G' standard Gaussian, A [n_a, d] and B [n_b, d] the
    centred rows (e.g. ``centred_rows`` of two halves). Directions of large variance are drawn more often, so
    two draws from an anisotropic cloud are much closer than two uniform subspaces: the chance reference a
    stable subspace has to beat.

    >>> rng = np.random.default_rng(0); a = rng.normal(size=(200, 50)) * np.r_[10, 10, np.ones(48) * .1]
    >>> float(covariance_subspace_angles(a, a, 2, 20).mean()) < 0.2 < float(random_subspace_angles(50, 2, 2, 20).mean())
    True
    """
    a, b = np.asarray(rows_a, dtype=np.float64), np.asarray(rows_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not 1 <= k <= min(a.shape[1], len(a), len(b)):
        raise ValueError(f"need centred rows [n_a, d] and [n_b, d] with 1 <= k <= min(n_a, n_b, d); got "
                         f"{a.shape}, {b.shape}, k={k}")
    rng = np.random.default_rng(seed)
    da = (a.T @ rng.standard_normal((len(a), k * n_samples))).reshape(a.shape[1], n_samples, k)
    db = (b.T @ rng.standard_normal((len(b), k * n_samples))).reshape(b.shape[1], n_samples, k)
    return _batched_angles(da.transpose(1, 0, 2), db.transpose(1, 0, 2))
