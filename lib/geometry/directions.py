"""Emotion directions and subspaces in activation space: difference of means, PCA, orientation,
projections, cross-layer cosines, variance-threshold subspaces and their principal-angle stability.

Inputs are activations ``x`` [n_rows, d] (any real array; computed in float64) and ``labels``: a
DataFrame with an ``emotion`` column, or a sequence of emotion names [n_rows]. Rows holding any
NaN (the span reduction of a row without a span) are dropped wherever a function reads ``x``;
``drop_missing`` reports how many per class. Every direction returned is a unit vector [d]
oriented so that the emotion's mean projection exceeds its baseline's.

>>> TARGET_EMOTIONS, BASELINE
(('gratitude', 'anger', 'apology'), 'neutral')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
import pandas as pd

from lib.emotions import BASELINE, TARGET_EMOTIONS

__all__ = [
    "METHODS", "Rows", "Subspace", "Stability",
    "drop_missing", "diff_of_means", "top_components", "pca_direction", "orient", "emotion_directions",
    "projections", "projection_summary", "cosine_matrix", "layer_cosines",
    "emotion_subspace", "joint_subspace", "subspace_angles", "random_subspace_angles",
    "subspace_stability", "split_half_stability",
]

METHODS = ("mean_vs_neutral", "mean_vs_rest", "pca")
_TOL = 1e-12  # slack on variance thresholds, so a share of exactly 0.8 reaches a threshold of 0.8


class Rows(NamedTuple):
    """Finite rows of ``x`` with their labels: x [m, d], emotion [m], index [m] into the input, dropped {class: n}."""
    x: np.ndarray
    emotion: np.ndarray
    index: np.ndarray
    dropped: dict


class Subspace(NamedTuple):
    """basis [d, k] orthonormal columns; k; explained [r] cumulative share of the fitted rows' squared norm."""
    basis: np.ndarray
    k: int
    explained: np.ndarray


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise ValueError(f"{what}: cannot normalise a vector of norm {n}")
    return v / n + 0.0  # + 0.0 turns -0.0 into 0.0


def drop_missing(x, labels) -> Rows:
    """Rows of ``x`` [n, d] with no NaN, their emotion labels and indices, and the count dropped per class.

    >>> r = drop_missing(np.array([[1., 2.], [np.nan, 0.]]), ["anger", "neutral"])
    >>> r.x.shape, r.index.tolist(), r.dropped
    ((1, 2), [0], {'neutral': 1})
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"x must be 2-D [n_rows, d]; got shape {a.shape}")
    if isinstance(labels, pd.DataFrame):
        if "emotion" not in labels.columns:
            raise ValueError(f"labels DataFrame has no 'emotion' column; columns: {list(labels.columns)}")
        labels = labels["emotion"]
    em = np.asarray(labels).astype(str)
    if em.ndim != 1 or len(em) != len(a):
        raise ValueError(f"labels give {em.shape} emotions but x has {len(a)} rows (shape {a.shape})")
    ok = np.isfinite(a).all(axis=1)
    return Rows(a[ok], em[ok], np.flatnonzero(ok), _counts(em[~ok]))


def _counts(em: np.ndarray) -> dict:
    return {str(c): int(n) for c, n in zip(*np.unique(em, return_counts=True))}


def _class(rows: Rows, cls: str, context: str, min_rows: int = 2) -> np.ndarray:
    xs = rows.x[rows.emotion == cls]
    if len(xs) < min_rows:
        raise ValueError(f"{context}: emotion {cls!r} has {len(xs)} rows with finite activations "
                         f"({rows.dropped.get(cls, 0)} dropped as NaN); need at least {min_rows}. "
                         f"Finite rows per emotion: {_counts(rows.emotion)}")
    return xs


def _baseline(rows: Rows, emotion: str, against: str, context: str) -> tuple[np.ndarray, dict]:
    """Baseline mean [d] and rows used per class: one class's mean, or "rest" = the mean of the class
    means of every other class with a finite row (each class weighted equally)."""
    if against != "rest":
        if against == emotion:
            raise ValueError(f"{context}: against={against!r} is the emotion itself")
        xs = _class(rows, against, context)
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
    xe = _class(rows, emotion, context)
    base, used = _baseline(rows, emotion, against, context)
    v = _unit(xe.mean(0) - base, context)
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

    >>> c, r = top_components(np.array([[0., 0.], [2., 0.], [4., 0.]]), 1)
    >>> c, r
    (array([[1., 0.]]), array([1.]))
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or not np.isfinite(a).all():
        raise ValueError(f"top_components needs a finite 2-D x [n, d]; got shape {a.shape} "
                         f"with {int((~np.isfinite(a)).any(-1).sum()) if a.ndim == 2 else '?'} non-finite rows")
    _, s, vt = np.linalg.svd(a - a.mean(0), full_matrices=False)
    if not 1 <= k <= len(s):
        raise ValueError(f"k={k} out of range: x of shape {a.shape} has 1..{len(s)} components")
    power = s ** 2
    if power.sum() == 0:
        raise ValueError(f"x of shape {a.shape} has zero variance; no principal axes")
    vt = vt[:k] * np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(1)])[:, None]
    return vt + 0.0, power[:k] / power.sum()


def orient(direction, x, labels, emotion: str, against: str = BASELINE) -> np.ndarray:
    """Unit ``direction`` [d], sign-flipped if needed so the emotion's mean projection exceeds the
    baseline's (``against`` as in ``diff_of_means``).

    >>> x = np.array([[0., 0.], [0., 1.], [3., 0.], [3., 1.]])
    >>> orient(np.array([-2., 0.]), x, ["neutral"] * 2 + ["anger"] * 2, "anger")
    array([1., 0.])
    """
    rows = drop_missing(x, labels)
    context = f"orient({emotion!r}, against={against!r})"
    u = _unit(np.asarray(direction, dtype=np.float64).ravel(), context)
    if u.shape[0] != rows.x.shape[1]:
        raise ValueError(f"{context}: direction has {u.shape[0]} entries but x has d={rows.x.shape[1]}")
    gap = (_class(rows, emotion, context).mean(0) - _baseline(rows, emotion, against, context)[0]) @ u
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
    pooled = np.vstack([_class(rows, emotion, context), _class(rows, against, context)])
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
    units = np.stack([_unit(np.asarray(directions[k], dtype=np.float64).ravel(), f"direction {k}") for k in keys])
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
    base = _class(rows, baseline, context).mean(0)
    return np.vstack([_class(rows, e, context) for e in emotions]) - base


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


def _orth(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[1] > a.shape[0] or not np.isfinite(a).all():
        raise ValueError(f"{name} must be a finite [d, k] array with 1 <= k <= d; got shape {a.shape}")
    q, r = np.linalg.qr(a)
    diag = np.abs(np.diag(r))
    if diag.min() <= 1e-10 * max(diag.max(), 1e-300):
        raise ValueError(f"{name} has linearly dependent columns (shape {a.shape}); pass a basis of its span")
    return q


def subspace_angles(a, b) -> np.ndarray:
    """Principal angles in radians, ascending [min(ka, kb)], between the column spans of ``a`` [d, ka] and
    ``b`` [d, kb]: QR then SVD, arccos of the cosines, arcsin of the sines for angles below pi/4 (accurate).

    >>> t = 0.3
    >>> a = np.array([[1., 0.], [0., 0.], [0., 1.]])
    >>> subspace_angles(a, np.array([[np.cos(t), 0.], [np.sin(t), 0.], [0., 1.]])).round(6)
    array([0. , 0.3])
    """
    qa, qb = _orth(a, "a"), _orth(b, "b")
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
    return np.stack([subspace_angles(rng.standard_normal((d, k_a)), rng.standard_normal((d, k_b)))
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
    return Stability(subspace_angles(a.basis, b.basis)[None], null, k)


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
        angles.append(subspace_angles(fits[0].basis, fits[1].basis))
    return Stability(np.stack(angles), random_subspace_angles(rows.x.shape[1], k, k, n_null, seed), k)
