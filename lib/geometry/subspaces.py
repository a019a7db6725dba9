"""Emotion subspaces: variance-threshold subspaces of the offsets from the neutral mean, principal angles
between subspaces, the random-subspace reference, and stability across data sets and random halves.

Inputs are activations ``x`` [n_rows, d] and ``labels`` as in ``lib.geometry.rows`` (NaN rows dropped).
Angles are in radians, ascending.

>>> t = 0.3
>>> principal_angles(np.eye(3)[:, :2], np.array([[1, 0], [0, np.cos(t)], [0, np.sin(t)]])).round(6)
array([0. , 0.3])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.linalg import orthonormal_basis
from lib.geometry.rows import Rows, class_rows, drop_missing

__all__ = [
    "Subspace", "Stability", "emotion_subspace", "joint_subspace", "principal_angles", "random_subspace_angles",
    "subspace_stability", "split_half_stability",
]

_TOL = 1e-12  # slack on variance thresholds, so a share of exactly 0.8 reaches a threshold of 0.8


class Subspace(NamedTuple):
    """basis [d, k] orthonormal columns; k; explained [r] cumulative share of the fitted rows' squared norm."""
    basis: np.ndarray
    k: int
    explained: np.ndarray


def _fit_subspace(offsets: np.ndarray, var_threshold: float, max_k: int | None, k: int | None) -> Subspace:
    """Uncentred PCA of ``offsets`` [n, d] (rows already minus the neutral mean)."""
    if not 0 < var_threshold <= 1:
        raise ValueError(f"var_threshold must be in (0, 1]; got {var_threshold}")
    _, s, vt = np.linalg.svd(offsets, full_matrices=False)
    power = s ** 2
    if power.sum() == 0:
        raise ValueError(f"rows of shape {offsets.shape} all equal the neutral mean; no subspace")
    explained = np.cumsum(power) / power.sum()
    if k is None:
        k = int(np.argmax(explained >= var_threshold - _TOL)) + 1
        k = min(k, max_k) if max_k else k
    if not 1 <= k <= len(s):
        raise ValueError(f"k={k} out of range: {offsets.shape[0]} rows in d={offsets.shape[1]} give 1..{len(s)}")
    return Subspace(vt[:k].T.copy(), int(k), explained)


def _offsets(rows: Rows, emotions, baseline: str, context: str) -> np.ndarray:
    base = class_rows(rows, baseline, context).mean(0)
    return np.vstack([class_rows(rows, e, context) for e in emotions]) - base


def emotion_subspace(x, labels, emotion: str, var_threshold: float = 0.9, max_k: int | None = None, *,
                     k: int | None = None) -> Subspace:
    """Span of the top-k right singular vectors of the ``emotion`` rows minus the neutral mean (uncentred, so
    the mean offset is included); k is the smallest whose cumulative share of squared norm reaches
    ``var_threshold`` (capped at ``max_k``), unless ``k`` is given. Returns Subspace(basis [d, k], k, explained).

    >>> x = np.array([[0., 0.], [0., 0.], [2., 0.1], [3., -0.1]])
    >>> s = emotion_subspace(x, ["neutral"] * 2 + ["anger"] * 2, "anger")
    >>> s.k, s.basis.shape
    (1, (2, 1))
    """
    rows = drop_missing(x, labels)
    return _fit_subspace(_offsets(rows, [emotion], BASELINE, f"emotion_subspace({emotion!r})"),
                         var_threshold, max_k, k)


def joint_subspace(x, labels, var_threshold: float = 0.9, max_k: int | None = None, *, emotions=TARGET_EMOTIONS,
                   k: int | None = None) -> Subspace:
    """As ``emotion_subspace`` but fit on the rows of all ``emotions`` stacked (each row weighted equally),
    minus the neutral mean. Returns Subspace(basis [d, k], k, explained).

    >>> x = np.array([[0., 0.], [0., 0.], [2., 0.], [2., 0.], [0., 2.], [0., 2.]])
    >>> joint_subspace(x, ["neutral"] * 2 + ["anger"] * 2 + ["apology"] * 2, emotions=("anger", "apology")).k
    2
    """
    rows = drop_missing(x, labels)
    return _fit_subspace(_offsets(rows, emotions, BASELINE, "joint_subspace"), var_threshold, max_k, k)


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


def random_subspace_angles(d: int, k_a: int, k_b: int, n_samples: int = 200, seed: int = 0) -> np.ndarray:
    """Principal angles [n_samples, min(k_a, k_b)] (ascending per row) between pairs of uniformly random
    subspaces of dimensions ``k_a`` and ``k_b`` in R^d: the chance reference for stability.

    >>> a = random_subspace_angles(100, 2, 2, n_samples=50)
    >>> a.shape, round(float(a.mean()), 1)
    ((50, 2), 1.5)
    """
    if not (1 <= k_a <= d and 1 <= k_b <= d):
        raise ValueError(f"need 1 <= k_a, k_b <= d; got d={d}, k_a={k_a}, k_b={k_b}")
    rng = np.random.default_rng(seed)
    return np.stack([principal_angles(rng.standard_normal((d, k_a)), rng.standard_normal((d, k_b)))
                     for _ in range(n_samples)])


@dataclass(frozen=True)
class Stability:
    """Principal angles [n_fits, k] between paired subspace fits, and the same [n_null, k] for random subspaces."""
    angles: np.ndarray
    null: np.ndarray
    k: int

    @property
    def table(self) -> pd.DataFrame:
        """One row per paired fit: split, k, mean_angle, max_angle (radians)."""
        return pd.DataFrame({"split": np.arange(len(self.angles)), "k": self.k,
                             "mean_angle": self.angles.mean(1), "max_angle": self.angles.max(1)})

    def summary(self) -> dict:
        """Mean over fits of the mean and largest angle, beside the same for random subspaces."""
        return {"k": self.k, "mean_angle": float(self.angles.mean()), "max_angle": float(self.angles.max(1).mean()),
                "null_mean_angle": float(self.null.mean()), "null_max_angle": float(self.null.max(1).mean()),
                "null_mean_angle_p05": float(np.quantile(self.null.mean(1), 0.05))}


def _fit(rows: Rows, emotion, var_threshold, max_k, k) -> Subspace:
    emotions = TARGET_EMOTIONS if emotion is None else (emotion,)
    context = "joint_subspace" if emotion is None else f"emotion_subspace({emotion!r})"
    return _fit_subspace(_offsets(rows, emotions, BASELINE, context), var_threshold, max_k, k)


def subspace_stability(x1, labels1, x2, labels2, *, emotion: str | None = None, var_threshold: float = 0.9,
                       max_k: int | None = None, k: int | None = None, n_null: int = 200, seed: int = 0) -> Stability:
    """Principal angles between the subspace fit on (x1, labels1) and on (x2, labels2) (e.g. baseline vs
    extended profile): ``emotion_subspace`` of ``emotion``, or ``joint_subspace`` when None; both use ``k``,
    by default the larger of the two threshold k's. Returns Stability with angles [1, k].

    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[np.zeros((4, 3)), [[5, 0, 0]] * 4 + rng.normal(0, .01, (4, 3))]
    >>> labs = ["neutral"] * 4 + ["anger"] * 4
    >>> s = subspace_stability(x, labs, x + 0.01, labs, emotion="anger", n_null=10)
    >>> s.k, bool(s.angles.max() < 0.01)
    (1, True)
    """
    r1, r2 = drop_missing(x1, labels1), drop_missing(x2, labels2)
    if k is None:
        k = max(_fit(r1, emotion, var_threshold, max_k, None).k, _fit(r2, emotion, var_threshold, max_k, None).k)
    a, b = _fit(r1, emotion, var_threshold, max_k, k), _fit(r2, emotion, var_threshold, max_k, k)
    null = random_subspace_angles(r1.x.shape[1], k, k, n_null, seed)
    return Stability(principal_angles(a.basis, b.basis)[None], null, k)


def split_half_stability(x, labels, *, emotion: str | None = None, var_threshold: float = 0.9,
                         max_k: int | None = None, k: int | None = None, n_splits: int = 10, seed: int = 0,
                         n_null: int = 200) -> Stability:
    """Principal angles between subspaces fit on two disjoint random halves of the rows (stratified: each
    emotion and neutral split in half; an odd row left out), ``n_splits`` times; ``k`` defaults to the threshold
    k of the fit on all rows. The null is random subspaces of the same k and d. Returns Stability [n_splits, k].

    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(0, .1, (8, 5)), [[5, 0, 0, 0, 0]] * 8 + rng.normal(0, .1, (8, 5))]
    >>> s = split_half_stability(x, ["neutral"] * 8 + ["anger"] * 8, emotion="anger", n_splits=3)
    >>> s.angles.shape, bool(s.summary()["max_angle"] < 0.1 < s.summary()["null_mean_angle"])
    ((3, 1), True)
    """
    rows = drop_missing(x, labels)
    if k is None:
        k = _fit(rows, emotion, var_threshold, max_k, None).k
    classes = (*(TARGET_EMOTIONS if emotion is None else (emotion,)), BASELINE)
    rng = np.random.default_rng(seed)
    angles = []
    for _ in range(n_splits):
        half_a, half_b = [], []
        for c in classes:
            idx = rng.permutation(np.flatnonzero(rows.emotion == c))
            half_a.append(idx[: len(idx) // 2])
            half_b.append(idx[len(idx) // 2: 2 * (len(idx) // 2)])
        fits = [_fit(Rows(rows.x[i], rows.emotion[i], i, {}), emotion, var_threshold, max_k, k)
                for i in (np.concatenate(half_a), np.concatenate(half_b))]
        angles.append(principal_angles(fits[0].basis, fits[1].basis))
    return Stability(np.stack(angles), random_subspace_angles(rows.x.shape[1], k, k, n_null, seed), k)
