"""Linear emotion probes: leakage-safe grouped cross-validation, score intervals over text groups, transfer
and directions.

Rows whose texts are near-identical form one group (``lib.geometry.folds``), and a group never spans a
train and a test fold; otherwise a probe can score by memorising a text it has seen, not by reading
the emotion. Probes are multinomial logistic regressions on features standardised within each
training fold (a ``StandardScaler`` + ``LogisticRegression`` pipeline, optional PCA between them).
Point estimates are computed once on pooled out-of-fold predictions; their 95% intervals are a
percentile bootstrap that resamples whole text groups of those predictions (``score_intervals``; one
row per group when no groups are given). That interval ignores the fold-to-fold variance of refitting,
so read it as a lower bound on the uncertainty; the Wilson interval for accuracy (rows treated as
independent) is given alongside. Choosing a layer and scoring it on other rows is
``lib.geometry.probe_selection``.

>>> x, y = np.r_[np.zeros((20, 2)), np.ones((20, 2))], np.repeat(["anger", "neutral"], 20)
>>> round(probe_cv(x + np.random.default_rng(0).normal(0, .1, (40, 2)), y, np.arange(40)).accuracy, 2)
1.0
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from lib.emotions import EMOTIONS
from lib.geometry.folds import grouped_folds
from lib.stats.bootstrap import group_bootstrap, group_codes, percentile_interval
from lib.stats.intervals import wilson_interval

__all__ = [
    "MAX_ITER", "ProbeResult", "make_probe", "probe_cv", "fit_probe", "transfer_eval", "probe_direction",
    "class_weights", "bootstrap_ci", "score_intervals", "classes_of",
]

# lbfgs at C=1, tol=1e-4 on standardised features: ~50-250 iterations on gemma3-270m sentence-end residuals
# (2175 x 640), up to ~600 at layer 0 with shuffled labels; the cap leaves room above that.
MAX_ITER = 1000
# Each fit runs with single-threaded BLAS/OpenMP: the products are small ([~2000, ~600] @ [~600, 4]), and on
# a busy 2-core machine the spinning threads made one fit 15-50x slower than one thread. Use n_jobs=2 to
# spread the folds over two cores instead (threads; the heavy numeric work releases the GIL).


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """Cross-validated probe scores: pooled out-of-fold point estimates, 95% intervals, and the predictions."""

    accuracy: float
    macro_f1: float
    acc_ci: tuple[float, float]         # percentile bootstrap over text groups of the out-of-fold predictions
    f1_ci: tuple[float, float]
    acc_wilson: tuple[float, float]     # Wilson score interval, rows treated as independent trials
    per_class_f1: pd.Series             # index: classes
    confusion: pd.DataFrame             # rows: true class, columns: predicted class
    oof_pred: np.ndarray = field(repr=False)  # [n_rows] out-of-fold predicted label of every row
    classes: tuple = ()


def classes_of(y) -> list:
    """The classes present in ``y``: in ``EMOTIONS`` order when all are emotions, else sorted.

    >>> classes_of(["neutral", "anger", "anger"])
    ['anger', 'neutral']
    """
    present = set(np.asarray(y).tolist())
    return [e for e in EMOTIONS if e in present] if present <= set(EMOTIONS) else sorted(present)


def make_probe(*, C: float = 1.0, max_iter: int = MAX_ITER, pca: int | None = None, seed: int = 0) -> Pipeline:
    """An unfitted pipeline: StandardScaler, optional PCA to ``pca`` dims, multinomial lbfgs LogisticRegression.

    >>> [name for name, _ in make_probe(pca=8).steps]
    ['scale', 'pca', 'logreg']
    """
    steps = [("scale", StandardScaler())]
    if pca:
        steps.append(("pca", PCA(n_components=pca, random_state=seed)))
    steps.append(("logreg", LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs", tol=1e-4)))
    return Pipeline(steps)


def _scores_from_confusions(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy [B] and macro-F1 [B] from confusion matrices [B, K, K] (F1 of a class absent from both: 0)."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denom = cm.sum(axis=2) + cm.sum(axis=1)  # 2tp + fn + fp
    f1 = np.divide(2 * tp, denom, out=np.zeros(tp.shape, dtype=float), where=denom > 0)
    return tp.sum(axis=1) / cm.sum(axis=(1, 2)), f1.mean(axis=1)


def score_intervals(y_true, preds, classes=None, *, groups=None, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> np.ndarray:
    """Percentile bootstrap intervals of accuracy and macro-F1 for each of ``preds`` [m, n] (or one [n]) against
    ``y_true`` [n], resampling whole ``groups`` (``lib.stats.bootstrap.group_bootstrap``; None: one row per
    group); every prediction vector is scored on the same resamples. Returns [m, 2 (accuracy, macro-F1),
    2 (low, high)].

    >>> y = np.array(["a", "b"] * 20); g = np.arange(40) // 4
    >>> score_intervals(y, [y, np.where(np.arange(40) < 20, y, "a")], groups=g, n_boot=200)[:, 0].round(2).tolist()
    [[1.0, 1.0], [0.6, 0.9]]
    """
    y = np.asarray(y_true)
    p = np.asarray(preds)
    p = p[None] if p.ndim == 1 else p
    if p.ndim != 2 or p.shape[1] != len(y):
        raise ValueError(f"preds must be [m, n] with n = {len(y)} labels; got shape {p.shape}")
    classes = list(classes) if classes is not None else classes_of(y)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(y.tolist()) - set(index)) + sorted(set(p.ravel().tolist()) - set(index))
    if unknown:
        raise ValueError(f"labels or predictions {unknown[:5]} are not among classes {classes}")
    k, m, n = len(classes), p.shape[0], len(y)
    t = np.array([index[v] for v in y.tolist()], dtype=np.int64)
    codes = t[None] * k + np.vectorize(index.__getitem__, otypes=[np.int64])(p) + (np.arange(m) * k * k)[:, None]
    onehot = np.zeros((n, m * k * k))
    onehot[np.tile(np.arange(n), m), codes.ravel()] = 1.0  # row i's (true, predicted) cell in every vector

    def scores(w):  # [b, n] item weights -> [b, m * 2] accuracy and macro-F1 per prediction vector
        acc, f1 = _scores_from_confusions((w @ onehot).reshape(-1, k, k))
        return np.stack([acc, f1], axis=1).reshape(len(w), m * 2)

    reps = group_bootstrap(scores, group_codes(groups, n), n_boot=n_boot, seed=seed, block=200)
    return np.moveaxis(percentile_interval(reps, level).reshape(2, m, 2), 0, -1)


def bootstrap_ci(y_true, y_pred, classes=None, *, groups=None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[tuple[float, float], tuple[float, float]]:
    """``score_intervals`` of one prediction vector as ((accuracy low, high), (macro-F1 low, high)).

    >>> bootstrap_ci(["a", "b"] * 50, ["a", "b"] * 50)
    ((1.0, 1.0), (1.0, 1.0))
    """
    (acc, f1), = score_intervals(y_true, [np.asarray(y_pred)], classes, groups=groups, n_boot=n_boot, seed=seed,
                                 level=level)
    return (float(acc[0]), float(acc[1])), (float(f1[0]), float(f1[1]))


def probe_cv(x, y, groups, *, n_splits: int = 5, seed: int = 0, C: float = 1.0, max_iter: int = MAX_ITER,
             pca: int | None = None, n_boot: int = 1000, folds=None, n_jobs: int = 1) -> ProbeResult:
    """Grouped, stratified k-fold CV of a probe on ``x`` [n, d]; scores pooled over the out-of-fold predictions,
    intervals resampling the ``groups``.

    ``folds`` (from ``grouped_folds``) may be passed to reuse them across layers; ``n_boot=0`` skips intervals;
    ``n_jobs`` fits that many folds at once in threads (same predictions). ``pca`` (default off) reduces the
    standardised features inside each training fold; it did not speed up fits on real residuals.

    >>> rng = np.random.default_rng(0); y = np.repeat(["anger", "neutral"], 50)
    >>> r = probe_cv(rng.normal(size=(100, 3)) + (y == "anger")[:, None] * 4, y, np.arange(100))
    >>> bool(r.accuracy == (r.oof_pred == y).mean()), r.accuracy > 0.95
    (True, True)
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x must be [n_rows, d] with one row per label; got x {x.shape} and {len(y)} labels")
    folds = grouped_folds(y, groups, n_splits, seed) if folds is None else folds
    pred = np.empty(len(y), dtype=y.dtype)

    def fit_predict(train, test):
        return make_probe(C=C, max_iter=max_iter, pca=pca, seed=seed).fit(x[train], y[train]).predict(x[test])

    with threadpool_limits(limits=1):  # see the note at MAX_ITER
        if n_jobs == 1:
            outs = [fit_predict(train, test) for train, test in folds]
        else:
            from joblib import Parallel, delayed
            outs = Parallel(n_jobs=n_jobs, backend="threading")(delayed(fit_predict)(tr, te) for tr, te in folds)
    for (_, test), out in zip(folds, outs):
        pred[test] = out
    classes = classes_of(y)
    p, r, f1, _ = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    codes_t = pd.Categorical(y, categories=classes).codes
    codes_p = pd.Categorical(pred, categories=classes).codes
    cm = np.bincount(codes_t * len(classes) + codes_p, minlength=len(classes) ** 2).reshape(len(classes), -1)
    acc = float((pred == y).mean())
    nan2 = (float("nan"), float("nan"))
    acc_ci, f1_ci = (bootstrap_ci(y, pred, classes, groups=groups, n_boot=n_boot, seed=seed) if n_boot
                    else (nan2, nan2))
    return ProbeResult(accuracy=acc, macro_f1=float(f1.mean()), acc_ci=acc_ci, f1_ci=f1_ci,
                       acc_wilson=wilson_interval(int((pred == y).sum()), len(y)),
                       per_class_f1=pd.Series(f1, index=classes, name="f1"),
                       confusion=pd.DataFrame(cm, index=pd.Index(classes, name="true"),
                                              columns=pd.Index(classes, name="pred")),
                       oof_pred=pred, classes=tuple(classes))


def fit_probe(x, y, *, C: float = 1.0, max_iter: int = MAX_ITER, pca: int | None = None, seed: int = 0) -> Pipeline:
    """The probe pipeline fitted on all of ``x`` [n, d], ``y`` (e.g. authored rows, for transfer to GoEmotions).

    >>> fit_probe([[0.0], [1.0], [0.1], [0.9]], ["anger", "neutral"] * 2).predict([[0.05]]).tolist()
    ['anger']
    """
    with threadpool_limits(limits=1):
        return make_probe(C=C, max_iter=max_iter, pca=pca, seed=seed).fit(np.asarray(x), np.asarray(y))


def transfer_eval(pipeline, x_test, y_test, labels=EMOTIONS) -> dict:
    """Scores of a fitted probe on another set: accuracy, macro-F1, per-class table, confusion, missing classes.

    Rows of ``per_class`` follow ``labels`` (default the four emotions) so reports align. A class absent
    from ``y_test`` is listed in ``missing``, gets NaN recall and F1 (NaN precision too unless it was
    predicted, then 0) and is left out of the macro-F1, which averages the classes present in ``y_test``.

    >>> p = fit_probe([[0.0], [1.0], [0.1], [0.9]], ["anger", "neutral"] * 2)
    >>> r = transfer_eval(p, [[0.0], [1.0]], ["anger", "neutral"]); r["accuracy"], r["missing"]
    (1.0, ['gratitude', 'apology'])
    """
    y_test = np.asarray(y_test)
    labels = list(labels)
    unknown = sorted(set(y_test.tolist()) - set(labels))
    if unknown:
        raise ValueError(f"test labels {unknown} are not in labels={labels}")
    pred = pipeline.predict(np.asarray(x_test))
    prec, rec, f1, sup = precision_recall_fscore_support(y_test, pred, labels=labels, zero_division=0)
    predicted = np.array([(pred == c).any() for c in labels])
    absent = sup == 0
    table = pd.DataFrame({"precision": np.where(absent & ~predicted, np.nan, prec),
                          "recall": np.where(absent, np.nan, rec), "f1": np.where(absent, np.nan, f1),
                          "support": sup}, index=pd.Index(labels, name="emotion"))
    cm = pd.DataFrame(confusion_matrix(y_test, pred, labels=labels), index=pd.Index(labels, name="true"),
                      columns=pd.Index(labels, name="pred"))
    return {"accuracy": float((pred == y_test).mean()), "macro_f1": float(np.nanmean(table["f1"])),
            "n": int(len(y_test)), "per_class": table, "confusion": cm,
            "missing": [c for c, a in zip(labels, absent) if a], "pred": pred}


def class_weights(logreg) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients [classes, d] and intercepts [classes] of a fitted ``LogisticRegression``, one row per class.

    A binary fit has one row (for ``classes_[1]``); it becomes the pair ``[-z/2, z/2]``, whose softmax equals
    the logistic. Dtypes are the fit's own.

    >>> p = fit_probe([[0.0], [1.0], [0.1], [0.9]], ["anger", "neutral"] * 2)
    >>> w, b = class_weights(p.named_steps["logreg"])
    >>> w.shape, bool(np.allclose(w[0], -w[1]))
    ((2, 1), True)
    """
    coef, icpt = logreg.coef_, logreg.intercept_
    if coef.shape[0] == 1:
        return np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    return coef, icpt


def probe_direction(pipeline, emotion, x=None, y=None) -> np.ndarray:
    """Unit direction [d] in the original activation space that raises ``emotion``'s logit over the mean logit.

    The class's coefficients are centred over classes, mapped back through PCA (if any) and divided by the
    scaler's per-feature scale, so ``x @ direction`` is the probe's own read-out up to an offset. Its sign
    makes the class's mean projection exceed the other classes' on the training data; pass ``x``, ``y`` to
    check that on given data and flip the sign if it does not hold there.

    >>> p = fit_probe([[0.0, 5], [2.0, 5], [0.1, 7], [1.9, 7]], ["anger", "neutral"] * 2)
    >>> probe_direction(p, "neutral").round(2).tolist()
    [1.0, 0.0]
    """
    steps = dict(pipeline.named_steps)
    logreg = steps["logreg"]
    classes = list(logreg.classes_)
    if emotion not in classes:
        raise ValueError(f"class {emotion!r} is not one the probe was fitted on; its classes: {classes}")
    coef, _ = class_weights(logreg)
    w = coef[classes.index(emotion)] - coef.mean(axis=0)
    if "pca" in steps:
        w = steps["pca"].components_.T @ w
    w = w / steps["scale"].scale_
    w = w / np.linalg.norm(w)
    if x is not None:
        proj, y = np.asarray(x) @ w, np.asarray(y)
        if proj[y == emotion].mean() < proj[y != emotion].mean():
            w = -w
    return w
