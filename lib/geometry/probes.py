"""Linear emotion probes: leakage-safe grouped cross-validation, chance controls, transfer and directions.

Rows whose texts are near-identical form one group (``lib.geometry.folds``), and a group never spans a
train and a test fold; otherwise a probe can score by memorising a text it has seen, not by reading
the emotion. Probes are multinomial logistic regressions on features standardised within each
training fold (a ``StandardScaler`` + ``LogisticRegression`` pipeline, optional PCA between them).
Point estimates are computed once on the pooled out-of-fold predictions; their 95% intervals are a
percentile bootstrap that resamples rows of those predictions (fixed seed). That interval ignores
the fold-to-fold variance of refitting and the dependence within groups, so read it as a lower
bound on the uncertainty; the Wilson interval for accuracy is given alongside for comparison.

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
from lib.stats.bootstrap import bootstrap, percentile_interval
from lib.stats.intervals import wilson_interval

__all__ = [
    "MAX_ITER", "ProbeResult", "make_probe", "probe_cv", "shuffled_label_control",
    "probe_by_layer", "fit_probe", "transfer_eval", "probe_direction", "class_weights", "bootstrap_ci",
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
    acc_ci: tuple[float, float]         # percentile bootstrap over rows of the out-of-fold predictions
    f1_ci: tuple[float, float]
    acc_wilson: tuple[float, float]     # Wilson score interval, rows treated as independent trials
    per_class_f1: pd.Series             # index: classes
    confusion: pd.DataFrame             # rows: true class, columns: predicted class
    oof_pred: np.ndarray = field(repr=False)  # [n_rows] out-of-fold predicted label of every row
    classes: tuple = ()


def _classes(y) -> list:
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


def bootstrap_ci(y_true, y_pred, classes=None, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile bootstrap intervals (accuracy, macro-F1) resampling rows of paired labels and predictions.

    >>> bootstrap_ci(["a", "b"] * 50, ["a", "b"] * 50)
    ((1.0, 1.0), (1.0, 1.0))
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = list(classes) if classes is not None else _classes(y_true)
    index = {c: i for i, c in enumerate(classes)}
    k, n = len(classes), len(y_true)
    codes = np.array([index[t] * k + index[p] for t, p in zip(y_true.tolist(), y_pred.tolist())], dtype=np.int64)

    def scores(idx):  # [b, n] resampled rows -> [b, 2] accuracy and macro-F1 via one bincount
        b = idx.shape[0]
        flat = (codes[idx] + (np.arange(b) * k * k)[:, None]).ravel()
        return np.stack(_scores_from_confusions(np.bincount(flat, minlength=b * k * k).reshape(b, k, k)), axis=1)

    (acc_lo, f1_lo), (acc_hi, f1_hi) = percentile_interval(bootstrap(scores, n, n_boot=n_boot, seed=seed, block=200),
                                                           level)
    return (float(acc_lo), float(acc_hi)), (float(f1_lo), float(f1_hi))


def probe_cv(x, y, groups, *, n_splits: int = 5, seed: int = 0, C: float = 1.0, max_iter: int = MAX_ITER,
             pca: int | None = None, n_boot: int = 1000, folds=None, n_jobs: int = 1) -> ProbeResult:
    """Grouped, stratified k-fold CV of a probe on ``x`` [n, d]; scores pooled over the out-of-fold predictions.

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
    classes = _classes(y)
    p, r, f1, _ = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    codes_t = pd.Categorical(y, categories=classes).codes
    codes_p = pd.Categorical(pred, categories=classes).codes
    cm = np.bincount(codes_t * len(classes) + codes_p, minlength=len(classes) ** 2).reshape(len(classes), -1)
    acc = float((pred == y).mean())
    nan2 = (float("nan"), float("nan"))
    acc_ci, f1_ci = bootstrap_ci(y, pred, classes, n_boot=n_boot, seed=seed) if n_boot else (nan2, nan2)
    return ProbeResult(accuracy=acc, macro_f1=float(f1.mean()), acc_ci=acc_ci, f1_ci=f1_ci,
                       acc_wilson=wilson_interval(int((pred == y).sum()), len(y)),
                       per_class_f1=pd.Series(f1, index=classes, name="f1"),
                       confusion=pd.DataFrame(cm, index=pd.Index(classes, name="true"),
                                              columns=pd.Index(classes, name="pred")),
                       oof_pred=pred, classes=tuple(classes))


def shuffled_label_control(x, y, groups, *, n_repeats: int = 5, n_splits: int = 5, seed: int = 0,
                           **cv_kwargs) -> dict:
    """Chance check: ``probe_cv`` with labels permuted over all rows (seeded), summarised over repeats.

    Returns accuracy/macro-F1 mean and sd, the per-repeat values, and the majority-class rate for reference.

    >>> rng = np.random.default_rng(0); y = np.repeat(["anger", "neutral"], 50)
    >>> s = shuffled_label_control(rng.normal(size=(100, 3)), y, np.arange(100), n_repeats=2)
    >>> abs(s["accuracy_mean"] - .5) < .2
    True
    """
    return _shuffled_summary(x, y, _permutations(y, groups, n_repeats, seed, n_splits), seed=seed, **cv_kwargs)


def _permutations(y, groups, n_repeats: int, seed: int, n_splits: int) -> list[tuple[np.ndarray, list]]:
    """(permuted labels, their grouped folds) per repeat: computed once, shared by every layer."""
    y, rng = np.asarray(y), np.random.default_rng(seed)
    perms = [rng.permutation(y) for _ in range(n_repeats)]
    return [(p, grouped_folds(p, groups, n_splits, seed)) for p in perms]


def _shuffled_summary(x, y, perms, *, seed: int, **cv_kwargs) -> dict:
    cv_kwargs.pop("n_boot", None)
    runs = [probe_cv(x, yp, None, seed=seed, n_boot=0, folds=f, **cv_kwargs) for yp, f in perms]
    acc, f1 = np.array([r.accuracy for r in runs]), np.array([r.macro_f1 for r in runs])
    sd = (lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return {"accuracy_mean": float(acc.mean()), "accuracy_sd": sd(acc), "macro_f1_mean": float(f1.mean()),
            "macro_f1_sd": sd(f1), "accuracies": acc, "macro_f1s": f1,
            "majority": float(pd.Series(np.asarray(y)).value_counts(normalize=True).iloc[0])}


def probe_by_layer(xs, y, groups, *, layers=None, variant: str = "", shuffled_repeats: int = 0, n_splits: int = 5,
                   seed: int = 0, progress: bool = False, **cv_kwargs) -> pd.DataFrame:
    """Tidy table of ``probe_cv`` over per-layer matrices ``xs`` ([n, d] each), one row per layer and label kind.

    Columns: layer, variant (the caller's tag, e.g. the reduction, so tables concatenate), labels ("true", and
    "shuffled" when ``shuffled_repeats`` > 0), accuracy, acc_lo, acc_hi, macro_f1, f1_lo, f1_hi. Shuffled rows
    hold means over repeats with lo/hi = mean -/+ 2 sd. Folds are computed once and shared by all layers.

    >>> rng = np.random.default_rng(0); y = np.repeat(["anger", "neutral"], 20)
    >>> probe_by_layer([rng.normal(size=(40, 2))] * 2, y, np.arange(40), n_splits=2, n_boot=10).shape
    (2, 9)
    """
    y = np.asarray(y)
    layers = list(range(len(xs))) if layers is None else list(layers)
    if len(layers) != len(xs):
        raise ValueError(f"got {len(xs)} layer matrices but {len(layers)} layer names")
    folds = grouped_folds(y, groups, n_splits, seed)
    perms = _permutations(y, groups, shuffled_repeats, seed, n_splits)
    items = zip(layers, xs)
    if progress:
        from lib.settings import progress_bar

        items = progress_bar(items, total=len(layers), desc="probe layers", leave=False)
    rows = []
    for layer, x in items:
        r = probe_cv(x, y, groups, n_splits=n_splits, seed=seed, folds=folds, **cv_kwargs)
        rows.append({"layer": layer, "variant": variant, "labels": "true", "accuracy": r.accuracy,
                     "acc_lo": r.acc_ci[0], "acc_hi": r.acc_ci[1], "macro_f1": r.macro_f1, "f1_lo": r.f1_ci[0],
                     "f1_hi": r.f1_ci[1]})
        if shuffled_repeats:
            s = _shuffled_summary(x, y, perms, seed=seed, **cv_kwargs)
            m, sd, fm, fsd = s["accuracy_mean"], s["accuracy_sd"], s["macro_f1_mean"], s["macro_f1_sd"]
            rows.append({"layer": layer, "variant": variant, "labels": "shuffled", "accuracy": m, "acc_lo": m - 2 * sd,
                         "acc_hi": m + 2 * sd, "macro_f1": fm, "f1_lo": fm - 2 * fsd, "f1_hi": fm + 2 * fsd})
    return pd.DataFrame(rows, columns=["layer", "variant", "labels", "accuracy", "acc_lo", "acc_hi", "macro_f1",
                                       "f1_lo", "f1_hi"])


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
