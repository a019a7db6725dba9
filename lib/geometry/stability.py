"""Subspace stability: principal angles between subspaces fit on two data sets (e.g. the baseline and extended
profiles) or on random halves of one, beside a null that can fail.

The null is random subspaces of the same size drawn from the data's own covariance
(``lib.geometry.subspaces.covariance_subspace_angles``, on the within-class-centred rows of the classes the
subspace reads, one draw from each side of the comparison): an anisotropic cloud makes any two of its
subspaces closer than two uniform ones, so a fit must beat this null to count as stable. The uniform
reference is kept beside it to show how much easier it was.

>>> rng = np.random.default_rng(0)
>>> x = np.r_[np.zeros((4, 3)), [[5, 0, 0]] * 4 + rng.normal(0, .01, (4, 3))]
>>> labs = ["neutral"] * 4 + ["anger"] * 4
>>> s = subspace_stability(x, labs, x + 0.01, labs, emotion="anger", kind="between", n_null=10)
>>> s.k, bool(s.angles.max() < 0.01)
(1, True)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.rows import Rows, drop_missing
from lib.geometry.subspaces import (centred_rows, covariance_subspace_angles, fit_rows, principal_angles,
                                    random_subspace_angles)

__all__ = ["Stability", "subspace_stability", "split_half_stability", "null_classes"]


@dataclass(frozen=True)
class Stability:
    """Principal angles [n_fits, k] between paired subspace fits; the data-covariance null [n_null, k]; k; and the
    uniform-subspace reference [n_null, k]."""
    angles: np.ndarray
    null: np.ndarray
    k: int
    uniform: np.ndarray | None = None

    @property
    def table(self) -> pd.DataFrame:
        """One row per paired fit: split, k, mean_angle, max_angle (radians)."""
        return pd.DataFrame({"split": np.arange(len(self.angles)), "k": self.k,
                             "mean_angle": self.angles.mean(1), "max_angle": self.angles.max(1)})

    def summary(self) -> dict:
        """Mean over fits of the mean and largest angle; the null's mean, its largest-angle mean and the 5th
        percentile of its per-draw mean angle; ``beats_null`` (observed mean angle below that percentile); the
        uniform reference's mean angle."""
        p05 = float(np.quantile(self.null.mean(1), 0.05))
        return {"k": self.k, "mean_angle": float(self.angles.mean()), "max_angle": float(self.angles.max(1).mean()),
                "null_mean_angle": float(self.null.mean()), "null_max_angle": float(self.null.max(1).mean()),
                "null_mean_angle_p05": p05, "beats_null": bool(self.angles.mean() < p05),
                "uniform_mean_angle": float(self.uniform.mean()) if self.uniform is not None else float("nan")}


def null_classes(emotion: str | None, kind: str, emotions=TARGET_EMOTIONS) -> tuple:
    """The classes whose within-class spread the null draws from: the subspace's emotions, plus neutral for the
    ``between`` kind (whose offsets move with both classes' noise).

    >>> null_classes("anger", "between")
    ('anger', 'neutral')
    """
    ems = tuple(emotions) if emotion is None else (emotion,)
    return (*ems, BASELINE) if kind == "between" else ems


def _null(ra: Rows, rb: Rows, emotion, kind, k, n_null, seed) -> np.ndarray:
    classes = null_classes(emotion, kind)
    return covariance_subspace_angles(centred_rows(ra, classes, "stability null"),
                                      centred_rows(rb, classes, "stability null"), k, n_null, seed)


def subspace_stability(x1, labels1, x2, labels2, *, emotion: str | None = None, kind: str = "within",
                       var_threshold: float = 0.9, max_k: int | None = None, k: int | None = None, n_null: int = 200,
                       seed: int = 0) -> Stability:
    """Principal angles between the subspace (``lib.geometry.subspaces.fit_rows``: ``emotion``, or joint when
    None, of ``kind``) fit on (x1, labels1) and on (x2, labels2); both use ``k``, by default the larger of the
    two threshold k's. The null draws one subspace from each data set's covariance. Returns Stability [1, k]."""
    r1, r2 = drop_missing(x1, labels1), drop_missing(x2, labels2)
    if k is None:
        k = max(fit_rows(r1, emotion, kind=kind, var_threshold=var_threshold, max_k=max_k).k,
                fit_rows(r2, emotion, kind=kind, var_threshold=var_threshold, max_k=max_k).k)
    a, b = (fit_rows(r, emotion, kind=kind, k=k) for r in (r1, r2))
    return Stability(principal_angles(a.basis, b.basis)[None], _null(r1, r2, emotion, kind, k, n_null, seed), k,
                     random_subspace_angles(r1.x.shape[1], k, k, n_null, seed))


def _halves(rows: Rows, classes, rng) -> tuple[Rows, Rows]:
    """Two disjoint stratified halves (each class split in half; an odd row left out)."""
    half_a, half_b = [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(rows.emotion == c))
        half_a.append(idx[: len(idx) // 2])
        half_b.append(idx[len(idx) // 2: 2 * (len(idx) // 2)])
    return tuple(Rows(rows.x[i], rows.emotion[i], i, {}) for i in map(np.concatenate, (half_a, half_b)))


def split_half_stability(x, labels, *, emotion: str | None = None, kind: str = "within", var_threshold: float = 0.9,
                         max_k: int | None = None, k: int | None = None, n_splits: int = 10, seed: int = 0,
                         n_null: int = 200) -> Stability:
    """Principal angles between subspaces fit on two disjoint random halves of the rows (stratified: each
    emotion and neutral split in half), ``n_splits`` times; ``k`` defaults to the threshold k of the fit on all
    rows. Null draw i comes from the two halves of split i mod ``n_splits``. Returns Stability [n_splits, k].

    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(0, .1, (8, 5)), [[5, 0, 0, 0, 0]] * 8 + rng.normal(0, .1, (8, 5))]
    >>> s = split_half_stability(x, ["neutral"] * 8 + ["anger"] * 8, emotion="anger", kind="between", n_splits=3)
    >>> s.angles.shape, bool(s.summary()["max_angle"] < 0.1 < s.summary()["null_mean_angle"])
    ((3, 1), True)
    """
    rows = drop_missing(x, labels)
    if k is None:
        k = fit_rows(rows, emotion, kind=kind, var_threshold=var_threshold, max_k=max_k).k
    classes = (*(TARGET_EMOTIONS if emotion is None else (emotion,)), BASELINE)
    rng = np.random.default_rng(seed)
    splits = [_halves(rows, classes, rng) for _ in range(n_splits)]
    angles = [principal_angles(*(fit_rows(h, emotion, kind=kind, k=k).basis for h in halves)) for halves in splits]
    per_split = [max(1, n_null // n_splits + (i < n_null % n_splits)) for i in range(n_splits)]
    null = np.vstack([_null(*splits[i], emotion, kind, k, n, seed + i) for i, n in enumerate(per_split)])
    return Stability(np.stack(angles), null[:max(n_null, 1)], k, random_subspace_angles(rows.x.shape[1], k, k, n_null,
                                                                                          seed))
