"""Held-out projections: directions fitted on training folds and read on the held-out fold's rows, and the
gap between an emotion's rows and neutral rows along them, in pooled standard deviations.

A direction fitted on rows and read on the same rows is optimistic, and orienting it makes the gap
positive by construction: on isotropic noise with n rows a class in d dimensions the in-sample gap along
the difference of means is about sqrt(2 d / n) sd (1.3 sd at 680 rows a class and d = 576), against 0 on
held-out rows. ``crossfit_projections`` fits each direction on the rows outside one test fold and
projects that fold's rows, so every row's projection comes from directions that never saw it. A
projection is read relative to the training rows' neutral mean, (x - mean_neutral) @ u, so folds with
different directions share one origin.

``projection_stats`` gives each class's mean projection and its gap to the baseline class with percentile
intervals from a bootstrap over text groups; ``permuted_gaps`` gives the same gaps for the
difference-of-means methods on labels permuted between whole groups (the null).

>>> rng = np.random.default_rng(0); y = np.repeat(["anger", "neutral"], 200)
>>> x = rng.normal(size=(400, 200))
>>> folds = [(np.flatnonzero(np.arange(400) % 2 != f), np.flatnonzero(np.arange(400) % 2 == f)) for f in (0, 1)]
>>> held, keys = crossfit_projections(x, y, folds, ("mean_vs_neutral",), emotions=("anger",))
>>> same, _ = insample_projections(x, y, {k: v[0] for k, v in zip(keys, crossfit_directions(x, y, None, keys))})
>>> gap = lambda p: projection_stats(p, y, classes=("anger", "neutral"))["gap"][0, 0]
>>> round(float(gap(held)), 1), round(float(gap(same)), 1)  # held-out gaps of noise scatter about 0 (sd 0.14 here)
(0.2, 1.5)
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.directions import METHODS
from lib.stats.permutation import group_permuter
from lib.geometry.linalg import unit
from lib.stats.bootstrap import group_bootstrap, group_codes, percentile_interval

__all__ = ["DIFF_METHODS", "fold_pairs", "crossfit_directions", "crossfit_projections", "insample_projections",
           "projection_stats", "permuted_gaps"]

DIFF_METHODS = ("mean_vs_neutral", "mean_vs_rest")  # computed from class sums: cheap enough to permute


def _labels(x, labels) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float64 [n, d] (no copy when it already is) and the emotion labels [n] as str; an error if a
    row holds a NaN (held-out projections need one projection per row: drop such rows first)."""
    a = np.asarray(x, dtype=np.float64)
    em = np.asarray(labels["emotion"] if hasattr(labels, "columns") else labels).astype(str)
    if a.ndim != 2 or em.shape != (len(a),):
        raise ValueError(f"x must be [n_rows, d] with one label per row; got x {a.shape} and labels {em.shape}")
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        raise ValueError(f"x has {int(bad.sum())} rows with NaN or inf (first: row {int(np.argmax(bad))}); drop them "
                         "first (held-out projections need one projection per row)")
    return a, em


def fold_pairs(folds, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, test rows) per fold from ``grouped_folds`` pairs or ``nested_folds`` (training =
    train + validation); None gives the one in-sample pair (all rows, all rows). Test folds must partition
    the n rows and each training part must be the rest.

    >>> [(len(a), len(b)) for a, b in fold_pairs(None, 3)]
    [(3, 3)]
    """
    if folds is None:
        return [(np.arange(n), np.arange(n))]
    pairs = [(np.sort(np.concatenate([f.train, f.val])), np.asarray(f.test)) if hasattr(f, "val")
             else (np.asarray(f[0]), np.asarray(f[1])) for f in folds]
    tests = np.concatenate([t for _, t in pairs])
    if len(tests) != n or not np.array_equal(np.sort(tests), np.arange(n)):
        raise ValueError(f"the test folds must partition the {n} rows; they hold {len(tests)} rows, "
                         f"{len(np.unique(tests))} distinct")
    for i, (train, test) in enumerate(pairs):
        if len(train) + len(test) != n or np.intersect1d(train, test).size:
            raise ValueError(f"fold {i}: training rows must be every row outside its test fold")
    return pairs


def _in_sample(pairs) -> bool:
    return len(pairs) == 1 and np.array_equal(pairs[0][0], pairs[0][1])


def _fold_class_sums(x, em, pairs) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(classes, fold of each row [n], training sums [k, c, d], training counts [k, c]) per fold and class."""
    classes = sorted(set(em.tolist()))
    code = np.searchsorted(classes, em)
    fold = np.zeros(len(em), dtype=np.int64)
    for i, (_, test) in enumerate(pairs):
        fold[test] = i
    k, c = len(pairs), len(classes)
    onehot = np.zeros((len(em), k * c))
    onehot[np.arange(len(em)), fold * c + code] = 1.0
    sums = (onehot.T @ x).reshape(k, c, -1)
    counts = onehot.sum(0).reshape(k, c)
    if not _in_sample(pairs):
        sums, counts = sums.sum(0, keepdims=True) - sums, counts.sum(0, keepdims=True) - counts  # training rows
    return classes, fold, sums, counts


def crossfit_directions(x, labels, folds, keys, *, baseline: str = BASELINE, extra: Mapping | None = None) -> list:
    """The unit directions of each (emotion, method) key fitted on each fold's training rows (``folds=None``:
    on all rows): a list in ``keys`` order of arrays [k folds, d]. Methods: the
    difference of means (``DIFF_METHODS``, from class sums), ``pca`` (``pca_direction`` of the emotion's and
    baseline's training rows, from class scatter matrices), or a key of ``extra`` {key: [k, d] one vector per fold, e.g. the probe's
    weights from that fold's fit}, oriented on the training rows.

    >>> x = np.array([[0., 0.], [0., 1.], [2., 0.], [2., 1.]])
    >>> crossfit_directions(x, ["neutral"] * 2 + ["anger"] * 2, None, [("anger", "mean_vs_neutral")])[0].tolist()
    [[1.0, 0.0]]
    """
    x, em = _labels(x, labels)
    return _crossfit(x, em, fold_pairs(folds, len(em)), [tuple(k) for k in keys], baseline, extra)[0]


def _crossfit(x, em, pairs, keys, baseline, extra) -> tuple[list, np.ndarray]:
    """``crossfit_directions`` on checked inputs, and the training rows' baseline means [k, d]. ``pca`` and
    ``extra`` directions are oriented so the emotion's training mean projects above the baseline's (as
    ``lib.geometry.directions.emotion_directions`` orients them); differences of means point that way already."""
    extra = {tuple(k): np.asarray(v, dtype=np.float64) for k, v in (extra or {}).items()}
    classes, fold, sums, counts = _fold_class_sums(x, em, pairs)
    for cl in {baseline, *(e for e, _ in keys)}:
        low = [i for i in range(len(pairs)) if cl not in classes or counts[i, classes.index(cl)] < 2]
        if low:
            raise ValueError(f"fold {low[0]}'s training rows hold fewer than 2 rows of {cl!r}")
    means = sums / np.maximum(counts, 1)[:, :, None]  # [k, c, d]
    ib = classes.index(baseline)
    present = counts > 0
    scatter = _scatters(x, em, fold, pairs, classes, {e for e, m in keys if m == "pca" and (e, m) not in extra}
                        | {baseline})
    out = []
    for key in keys:
        e, m = key
        ie = classes.index(e)
        offset = means[:, ie] - means[:, ib]  # [k, d]
        if key in extra:
            v = extra[key]
            if v.shape != (len(pairs), x.shape[1]):
                raise ValueError(f"extra[{key}] must be [{len(pairs)} folds, {x.shape[1]}]; got {v.shape}")
        elif m == "mean_vs_neutral":
            v = offset
        elif m == "mean_vs_rest":
            others = [j for j in range(len(classes)) if j != ie]
            v = np.stack([means[i, ie] - means[i, [j for j in others if present[i, j]]].mean(0)
                          for i in range(len(pairs))])
        elif m == "pca":
            v = np.stack([_top_axis(scatter[i, ie] + scatter[i, ib], sums[i, ie] + sums[i, ib],
                                    counts[i, ie] + counts[i, ib]) for i in range(len(pairs))])
        else:
            raise ValueError(f"key {key}: method {m!r} is not one of {METHODS} and not given in extra")
        v = np.stack([unit(v[i], f"fold {i}: {m} direction of {e!r}") for i in range(len(pairs))])
        sign = np.where(np.einsum("kd,kd->k", offset, v) < 0, -1.0, 1.0)  # differences of means: positive already
        out.append(v * sign[:, None] + 0.0 if m not in DIFF_METHODS or key in extra else v)
    return out, means[:, ib]


def _scatters(x, em, fold, pairs, classes, needed: set) -> np.ndarray | None:
    """Training scatter matrices sum(x x^T) [k, c, d, d] of the ``needed`` classes (zeros for the others), or
    None when only the baseline is needed (no pca direction)."""
    if len(needed) < 2:
        return None
    k, d = len(pairs), x.shape[1]
    scatter = np.zeros((k, len(classes), d, d))
    for i in range(k):
        for j, cl in enumerate(classes):
            if cl in needed:
                rows = x[(fold == i) & (em == cl)]
                scatter[i, j] = rows.T @ rows
    return scatter if _in_sample(pairs) else scatter.sum(0, keepdims=True) - scatter


def _top_axis(scatter: np.ndarray, total: np.ndarray, n: float) -> np.ndarray:
    """The top principal axis [d] of rows with scatter sum(x x^T) [d, d], sum ``total`` [d] and count ``n``: the
    top eigenvector of their covariance (ARPACK from a seeded start for d >= 64, else the full
    eigendecomposition), largest-magnitude entry positive as ``top_components`` signs it."""
    cov = scatter - np.outer(total, total) / n
    d = len(cov)
    if d >= 64:
        from scipy.sparse.linalg import eigsh

        v = eigsh(cov, k=1, v0=np.random.default_rng(0).standard_normal(d))[1][:, 0]
    else:
        v = np.linalg.eigh(cov)[1][:, -1]
    return v * np.sign(v[np.abs(v).argmax()])


def crossfit_projections(x, labels, folds, methods=METHODS, *, emotions=TARGET_EMOTIONS, baseline: str = BASELINE,
                         extra: Mapping | None = None) -> tuple[np.ndarray, list]:
    """Held-out projections [n, keys] of every row onto each (emotion, method) direction fitted without its
    fold (``crossfit_directions``; keys: each emotion with each of ``methods``, then ``extra``'s keys), read
    relative to the training rows' ``baseline`` mean; and the keys. ``folds=None``: fitted and read on all
    rows (in-sample, for comparison only)."""
    x, em = _labels(x, labels)
    pairs = fold_pairs(folds, len(em))
    keys = [(e, m) for e in emotions for m in methods] + [tuple(k) for k in (extra or {}) if
                                                          tuple(k) not in {(e, m) for e in emotions for m in methods}]
    dirs, base = _crossfit(x, em, pairs, keys, baseline, extra)
    dirs = np.stack(dirs, axis=1)  # [k, K, d]
    proj = np.empty((len(em), len(keys)))
    for i, (_, test) in enumerate(pairs):
        proj[test] = x[test] @ dirs[i].T - base[i] @ dirs[i].T
    return proj, keys


def insample_projections(x, labels, directions: Mapping, *, baseline: str = BASELINE) -> tuple[np.ndarray, list]:
    """Projections [n, keys] of every row onto given unit ``directions`` {key: [d]}, relative to the
    ``baseline`` mean of all rows (the reading of directions fitted on these same rows); and the keys."""
    x, em = _labels(x, labels)
    keys = list(directions)
    u = np.stack([unit(np.asarray(directions[k], dtype=np.float64), f"direction {k}") for k in keys])
    base = x[em == baseline].mean(0)
    return x @ u.T - base @ u.T, keys


def projection_stats(proj, labels, *, classes, baseline: str = BASELINE, groups=None, n_boot: int = 0,
                     seed: int = 0, level: float = 0.95) -> dict:
    """Per class of ``classes``: mean projection, sd, and the gap to ``baseline`` in pooled sd units,
    (mean_c - mean_b) / sqrt((n_c var_c + n_b var_b) / (n_c + n_b)) (variances over rows, ddof 0).

    ``proj`` is [..., n, K] (e.g. [layers, n, keys]); arrays come back as [..., K, classes]: ``mean``, ``sd``
    (ddof 1), ``gap`` (0 for the baseline), and with ``n_boot`` > 0 ``mean_lo``, ``mean_hi``, ``gap_lo``,
    ``gap_hi``: percentile intervals of a bootstrap over ``groups`` (None: rows), one set of resamples
    for every column. ``n`` [classes] counts rows.
    """
    p = np.asarray(proj, dtype=np.float64)
    em = np.asarray(labels["emotion"] if hasattr(labels, "columns") else labels).astype(str)
    n = p.shape[-2]
    if len(em) != n:
        raise ValueError(f"proj has {n} rows (axis -2 of shape {p.shape}) but there are {len(em)} labels")
    classes = list(classes)
    if baseline not in classes:
        raise ValueError(f"baseline {baseline!r} must be one of classes {classes}")
    lead = p.shape[:-2] + p.shape[-1:]
    flat = np.moveaxis(p, -2, 0).reshape(n, -1)  # [n, M]
    masks = np.stack([em == c for c in classes], axis=1).astype(np.float64)  # [n, C]
    z = np.concatenate([masks] + [flat * masks[:, [j]] for j in range(len(classes))]
                       + [flat ** 2 * masks[:, [j]] for j in range(len(classes))], axis=1)
    ib, c, m = classes.index(baseline), len(classes), flat.shape[1]

    def stats(w):  # [b, n] weights -> [b, 2, M, C]: mean and gap
        s = w @ z
        cnt, s1, s2 = s[:, :c], s[:, c:c + c * m].reshape(-1, c, m), s[:, c + c * m:].reshape(-1, c, m)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / cnt[:, :, None]
            var = np.maximum(s2 / cnt[:, :, None] - mean ** 2, 0.0)
            pooled = np.sqrt((cnt[:, :, None] * var + cnt[:, [ib], None] * var[:, [ib]])
                             / (cnt[:, :, None] + cnt[:, [ib], None]))
            gap = (mean - mean[:, [ib]]) / pooled
        gap[:, ib] = 0.0
        return np.stack([mean, gap], axis=1).transpose(0, 1, 3, 2)  # [b, 2, M, C]

    shape = lead + (c,)
    point = stats(np.ones((1, n)))[0]
    sd = np.stack([flat[em == cl].std(0, ddof=1) if (em == cl).sum() > 1 else np.full(m, np.nan)
                   for cl in classes], axis=1)
    out = {"n": np.array([(em == cl).sum() for cl in classes]), "mean": point[0].reshape(shape),
           "sd": sd.reshape(shape), "gap": point[1].reshape(shape)}
    if n_boot:
        reps = group_bootstrap(lambda w: stats(w).reshape(len(w), -1), group_codes(groups, n), n_boot=n_boot,
                               seed=seed, block=100)
        lo, hi = percentile_interval(reps, level).reshape(2, 2, -1)
        out.update({"mean_lo": lo[0].reshape(shape), "mean_hi": hi[0].reshape(shape),
                    "gap_lo": lo[1].reshape(shape), "gap_hi": hi[1].reshape(shape)})
    return out


def permuted_gaps(xs, labels, folds, groups, *, repeats: int, emotions=TARGET_EMOTIONS, methods=DIFF_METHODS,
                  classes=None, baseline: str = BASELINE, seed: int = 0) -> tuple[np.ndarray, list]:
    """Held-out gaps ([repeats, layers, keys, classes], as ``projection_stats``' ``gap``) of the
    difference-of-means ``methods`` when the labels are permuted between whole ``groups``
    (``lib.stats.permutation.group_permutation``, one permutation per repeat shared by every layer of ``xs``),
    on the same folds; and the keys. ``classes`` default: the baseline and ``emotions``.

    >>> rng = np.random.default_rng(0); y = np.repeat(["anger", "neutral"], 50); x = rng.normal(size=(100, 5))
    >>> folds = [(np.flatnonzero(np.arange(100) % 2 != f), np.flatnonzero(np.arange(100) % 2 == f)) for f in (0, 1)]
    >>> g, keys = permuted_gaps([x], y, folds, np.arange(100), repeats=3, emotions=("anger",), methods=("mean_vs_neutral",))
    >>> g.shape, keys
    ((3, 1, 1, 2), [('anger', 'mean_vs_neutral')])
    """
    bad = sorted(set(methods) - set(DIFF_METHODS))
    if bad:
        raise ValueError(f"permuted_gaps permutes only the difference-of-means methods {DIFF_METHODS}; got {bad}")
    y = np.asarray(labels["emotion"] if hasattr(labels, "columns") else labels).astype(str)
    classes = list(classes) if classes is not None else [baseline, *emotions]
    rng, permute = np.random.default_rng(seed), group_permuter(y, groups)
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    out, keys = [], None
    for _ in range(int(repeats)):
        yp = permute(rng)  # = lib.stats.permutation.group_permutation(y, groups, rng)
        proj = []
        for x in xs:
            p, keys = crossfit_projections(x, yp, folds, methods, emotions=emotions, baseline=baseline)
            proj.append(p)
        out.append(projection_stats(np.stack(proj), yp, classes=classes, baseline=baseline)["gap"])
    return np.stack(out), keys
