"""Emotion directions in activation space: difference of means, top principal components, orientation,
projections and cross-layer cosines.

Inputs are activations ``x`` [n_rows, d] and ``labels`` as in ``lib.geometry.rows`` (NaN rows dropped
wherever a function reads ``x``). Every direction returned is a unit vector [d] oriented so that the
emotion's mean projection exceeds its baseline's.

>>> TARGET_EMOTIONS, BASELINE
(('gratitude', 'anger', 'apology'), 'neutral')
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.linalg import unit
from lib.geometry.rows import Rows, class_rows, drop_missing

__all__ = [
    "METHODS", "diff_of_means", "top_components", "top_singular", "pca_direction", "orient", "emotion_directions",
    "projections", "projection_summary", "cosine_matrix", "layer_cosines",
]

METHODS = ("mean_vs_neutral", "mean_vs_rest", "pca")


def _baseline(rows: Rows, emotion: str, against: str, context: str) -> tuple[np.ndarray, dict]:
    """Baseline mean [d] and rows used per class: one class's mean, or "rest" = the mean of the class
    means of every other class with a finite row (each class weighted equally)."""
    if against != "rest":
        if against == emotion:
            raise ValueError(f"{context}: against={against!r} is the emotion itself")
        xs = class_rows(rows, against, context)
        return xs.mean(0), {against: len(xs)}
    others = [c for c in np.unique(rows.emotion) if c != emotion]
    if not others:
        raise ValueError(f"{context}: against='rest' but no other emotion has a finite row")
    means = [rows.x[rows.emotion == c].mean(0) for c in others]
    return np.mean(means, axis=0), {str(c): int((rows.emotion == c).sum()) for c in others}


def diff_of_means(x, labels, emotion: str, against: str = BASELINE, *, return_counts: bool = False):
    """Unit [d] along mean(emotion rows) - baseline: the ``against`` class's mean, or for "rest" the
    mean of the other classes' means (neutral included, each class weighted equally); NaN rows dropped.

    With ``return_counts`` also returns {"used": {class: rows}, "dropped": {class: NaN rows}}; for "rest",
    classes with no finite row are left out of the baseline and listed only under "dropped".

    >>> diff_of_means(np.array([[0., 0.], [0., 2.], [3., 0.], [3., 2.]]), ["neutral"] * 2 + ["anger"] * 2, "anger")
    array([1., 0.])
    """
    rows = drop_missing(x, labels)
    context = f"diff_of_means({emotion!r}, against={against!r})"
    xe = class_rows(rows, emotion, context)
    base, used = _baseline(rows, emotion, against, context)
    v = unit(xe.mean(0) - base, context)
    if not return_counts:
        return v
    used = {emotion: len(xe), **used}
    dropped = {c: rows.dropped.get(c, 0) for c in used}
    if against == "rest":  # a class with no finite row (neutral in the span reduction) shows up only here
        dropped.update(rows.dropped)
    return v, {"used": used, "dropped": dropped}


def top_components(x, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` principal axes of the column-centred finite ``x`` [n, d] by SVD: components [k, d] (unit
    rows, largest-magnitude entry positive) and explained-variance ratios [k] (of all variance, sum <= 1).
    For few components of a large matrix (``k`` <= min(n, d) / 4, min(n, d) >= 64) a truncated SVD
    (ARPACK, seeded) computes only those; the ratios divide by the total variance either way.

    >>> c, r = top_components(np.array([[0., 0.], [2., 0.], [4., 0.]]), 1)
    >>> c, r
    (array([[1., 0.]]), array([1.]))
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or not np.isfinite(a).all():
        raise ValueError(f"top_components needs a finite 2-D x [n, d]; got shape {a.shape} "
                         f"with {int((~np.isfinite(a)).any(-1).sum()) if a.ndim == 2 else '?'} non-finite rows")
    if not 1 <= k <= min(a.shape):
        raise ValueError(f"k={k} out of range: x of shape {a.shape} has 1..{min(a.shape)} components")
    s, vt = top_singular(a - a.mean(0), k)
    total = float(np.square(a - a.mean(0)).sum())
    if total == 0:
        raise ValueError(f"x of shape {a.shape} has zero variance; no principal axes")
    vt = vt * np.sign(vt[np.arange(k), np.abs(vt).argmax(1)])[:, None]
    return vt + 0.0, s ** 2 / total


def top_singular(a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest singular values [k] (descending) and right singular vectors [k, d] of ``a`` [n, d]:
    a truncated SVD (ARPACK, seeded) when ``k`` <= min(n, d) / 4 and min(n, d) >= 64, else the full SVD.

    >>> s, vt = top_singular(np.diag([3.0, 1.0, 2.0]), 2)
    >>> s.tolist(), np.abs(vt).tolist()
    ([3.0, 2.0], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    """
    if min(a.shape) >= 64 and k <= min(a.shape) // 4:
        from scipy.sparse.linalg import svds

        _, s, vt = svds(a, k=k, rng=np.random.default_rng(0))
        order = np.argsort(s)[::-1]
        return s[order], vt[order]
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    return s[:k], vt[:k]


def orient(direction, x, labels, emotion: str, against: str = BASELINE) -> np.ndarray:
    """Unit ``direction`` [d], sign-flipped if needed so the emotion's mean projection exceeds the
    baseline's (``against`` as in ``diff_of_means``).

    >>> x = np.array([[0., 0.], [0., 1.], [3., 0.], [3., 1.]])
    >>> orient(np.array([-2., 0.]), x, ["neutral"] * 2 + ["anger"] * 2, "anger")
    array([1., 0.])
    """
    rows = drop_missing(x, labels)
    context = f"orient({emotion!r}, against={against!r})"
    u = unit(np.asarray(direction, dtype=np.float64).ravel(), context)
    if u.shape[0] != rows.x.shape[1]:
        raise ValueError(f"{context}: direction has {u.shape[0]} entries but x has d={rows.x.shape[1]}")
    gap = (class_rows(rows, emotion, context).mean(0) - _baseline(rows, emotion, against, context)[0]) @ u
    return -u + 0.0 if gap < 0 else u


def pca_direction(x, labels, emotion: str, against: str = BASELINE) -> np.ndarray:
    """Unit [d]: top principal axis of the rows of ``emotion`` and of class ``against`` pooled and centred on
    their pooled mean (the direction of largest variance in emotion-vs-neutral data), then oriented.

    >>> x = np.array([[0., 0.], [0., 1.], [4., 0.], [4., 1.]])
    >>> pca_direction(x, ["neutral"] * 2 + ["anger"] * 2, "anger")
    array([1., 0.])
    """
    rows = drop_missing(x, labels)
    context = f"pca_direction({emotion!r}, against={against!r})"
    if against == "rest":
        raise ValueError(f"{context}: against must be one class name, e.g. {BASELINE!r}")
    pooled = np.vstack([class_rows(rows, emotion, context), class_rows(rows, against, context)])
    comp, _ = top_components(pooled, 1)
    return orient(comp[0], rows.x, rows.emotion, emotion, against)


def emotion_directions(x, labels, methods=METHODS, *, emotions=TARGET_EMOTIONS, extra: Mapping | None = None,
                       extra_against: str = BASELINE) -> dict[tuple[str, str], np.ndarray]:
    """{(emotion, method): unit [d]} for each emotion and method; methods: "mean_vs_neutral"
    (diff_of_means against neutral), "mean_vs_rest" (against "rest"), "pca" (pca_direction). ``extra``
    {(emotion, method): vector [d]} (e.g. probe weights) is normalised and oriented against ``extra_against``.

    >>> x = np.array([[0., 0.], [0., 1.], [2., 0.], [2., 1.]])
    >>> labs = ["neutral"] * 2 + ["anger"] * 2
    >>> d = emotion_directions(x, labs, emotions=("anger",), extra={("anger", "probe"): [-3., 0.]})
    >>> sorted(d), d["anger", "probe"]
    ([('anger', 'mean_vs_neutral'), ('anger', 'mean_vs_rest'), ('anger', 'pca'), ('anger', 'probe')], array([1., 0.]))
    """
    fns = {"mean_vs_neutral": lambda e: diff_of_means(x, labels, e, BASELINE),
           "mean_vs_rest": lambda e: diff_of_means(x, labels, e, "rest"),
           "pca": lambda e: pca_direction(x, labels, e, BASELINE)}
    bad = [m for m in methods if m not in fns]
    if bad:
        raise ValueError(f"unknown methods {bad}; valid: {list(fns)} (probe weights go in extra=)")
    out = {(e, m): fns[m](e) for e in emotions for m in methods}
    for (e, m), v in (extra or {}).items():
        out[e, m] = orient(v, x, labels, e, extra_against)
    return out


def projections(x, labels, directions: Mapping) -> pd.DataFrame:
    """Tidy projections of every finite row on every unit(direction): columns row (index into ``x``), emotion,
    direction_emotion, method, projection; ``directions`` is {(emotion, method): vector [d]}.

    >>> p = projections(np.array([[1., 2.], [3., 4.]]), ["anger", "neutral"], {("anger", "mean"): [2., 0.]})
    >>> p.projection.tolist(), list(p.columns)
    ([1.0, 3.0], ['row', 'emotion', 'direction_emotion', 'method', 'projection'])
    """
    rows = drop_missing(x, labels)
    keys = list(directions)
    units = np.stack([unit(np.asarray(directions[k], dtype=np.float64).ravel(), f"direction {k}") for k in keys])
    proj = rows.x @ units.T  # [m, n_directions]
    m, n = proj.shape
    return pd.DataFrame({"row": np.repeat(rows.index, n), "emotion": np.repeat(rows.emotion, n),
                         "direction_emotion": np.tile([k[0] for k in keys], m),
                         "method": np.tile([k[1] for k in keys], m), "projection": proj.ravel()})


def projection_summary(proj: pd.DataFrame, ci: float = 0.95) -> pd.DataFrame:
    """Per (direction_emotion, method, emotion): n, mean, sd and the Student-t ``ci`` interval of the mean
    projection (ci_low, ci_high; NaN when n < 2), from a ``projections`` table.

    >>> p = pd.DataFrame({"direction_emotion": "anger", "method": "m", "emotion": "anger", "projection": [1., 2., 3.]})
    >>> projection_summary(p)[["n", "mean", "ci_low"]].round(3).values.tolist()
    [[3.0, 2.0, -0.484]]
    """
    from scipy import stats

    g = proj.groupby(["direction_emotion", "method", "emotion"], sort=True)["projection"]
    out = g.agg(n="count", mean="mean", sd="std").reset_index()
    half = stats.t.ppf(0.5 + ci / 2, np.maximum(out["n"] - 1, 1)) * out["sd"] / np.sqrt(out["n"])
    half = half.where(out["n"] > 1)
    return out.assign(ci_low=out["mean"] - half, ci_high=out["mean"] + half)


def cosine_matrix(dirs_a, dirs_b=None) -> np.ndarray:
    """Cosine similarity [La, Lb] between the rows of ``dirs_a`` [La, d] and ``dirs_b`` [Lb, d] (default:
    ``dirs_a``), e.g. one emotion's direction at each layer; a zero row gives NaN.

    >>> cosine_matrix(np.array([[1., 0.], [1., 1.]])).round(3)
    array([[1.   , 0.707],
           [0.707, 1.   ]])
    """
    a = np.asarray(dirs_a, dtype=np.float64)
    b = a if dirs_b is None else np.asarray(dirs_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"cosine_matrix needs [La, d] and [Lb, d]; got {a.shape} and {b.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        na = a / np.linalg.norm(a, axis=1, keepdims=True)
        nb = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.clip(na @ nb.T, -1.0, 1.0)


def layer_cosines(by_layer: Mapping) -> dict:
    """{key: DataFrame [L, L] of cross-layer cosines, index and columns the layers} from
    ``by_layer`` {layer: {key: vector [d]}} (keys e.g. (emotion, method); all layers need every key).

    >>> c = layer_cosines({0: {"a": [1., 0.]}, 1: {"a": [1., 1.]}})
    >>> c["a"].round(3).values.tolist()
    [[1.0, 0.707], [0.707, 1.0]]
    """
    layers = list(by_layer)
    keys = list(by_layer[layers[0]]) if layers else []
    for layer in layers:
        if set(by_layer[layer]) != set(keys):
            raise ValueError(f"layer {layer} has keys {sorted(by_layer[layer])}; layer {layers[0]} has {sorted(keys)}")
    return {k: pd.DataFrame(cosine_matrix(np.stack([np.asarray(by_layer[l][k], float) for l in layers])),
                            index=layers, columns=layers) for k in keys}
