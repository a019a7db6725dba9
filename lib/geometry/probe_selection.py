"""Choosing a probe's layer on some rows and scoring it on others: nested cross-validation over layers.

``nested_probe`` runs ``lib.stats.splits.nested_folds``: in outer fold i a probe is fitted at every
candidate layer on the training folds and scored on validation fold i + 1; the layer with the best
validation accuracy is refitted on training + validation and scored on test fold i, which no fit or
choice has seen. Every row is a validation row once and a test row once, so

- the pooled validation predictions give the by-layer curve (what each layer scores on rows it was not
  fitted on, but the curve's own maximum is a chosen number, not an estimate), and
- the pooled test predictions give the headline: the accuracy of the procedure "choose a layer on
  validation, refit, predict", with the layers it chose (one per outer fold).

Cost: L fits per outer fold plus one refit (k (L + 1) fits for k folds and L candidate layers; with one
candidate there is nothing to choose and only the k refits run). ``shuffled_band`` runs the same procedure
on labels permuted between whole text groups (``lib.stats.permutation.group_permutation``, computed by
``lib.stats.permutation.group_permuter``).

>>> rng = np.random.default_rng(0); y = np.repeat(["anger", "neutral"], 30)
>>> xs = [rng.normal(size=(60, 3)), rng.normal(size=(60, 3)) + (y == "anger")[:, None] * 3]
>>> r = nested_probe(xs, y, np.arange(60), n_splits=3)
>>> r.chosen, r.n_fits, r.accuracy > 0.9
((1, 1, 1), 9, True)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits

from lib.stats.permutation import group_permuter
from lib.geometry.probes import classes_of, make_probe, probe_direction, score_intervals
from lib.stats.splits import NestedFold, nested_folds

__all__ = ["NestedProbe", "nested_probe", "modal_layer", "shuffled_band"]


@dataclass(frozen=True, eq=False)
class NestedProbe:
    """One nested cross-validation over layers: the choices, and the pooled validation and test predictions."""

    layers: tuple                  # candidate layers, in the order of val_pred's rows
    y: np.ndarray = field(repr=False)          # [n] true labels
    folds: list = field(repr=False)            # NestedFold per outer fold
    val_pred: np.ndarray = field(repr=False)   # [L, n] object: validation prediction per candidate (None: not fitted)
    val_accuracy: np.ndarray = field(repr=False)  # [k, L] accuracy on outer fold i's validation fold
    chosen: tuple = ()             # per outer fold, the layer chosen on its validation fold
    test_pred: np.ndarray = field(default=None, repr=False)  # [n] prediction of the refit at the chosen layer
    classes: tuple = ()
    n_fits: int = 0
    directions: np.ndarray | None = field(default=None, repr=False)  # [k, L, classes, d] inner fits' directions

    @property
    def accuracy(self) -> float:
        """Pooled test accuracy: the headline."""
        return float((self.test_pred == self.y).mean())

    @property
    def macro_f1(self) -> float:
        """Pooled test macro-F1 over ``classes``."""
        return float(f1_score(self.y, self.test_pred, labels=list(self.classes), average="macro", zero_division=0))

    @property
    def validation_curve(self) -> np.ndarray:
        """Pooled validation accuracy per candidate layer [L] (NaN where the layer was not fitted)."""
        fitted = self._fitted()
        return np.where(fitted, (self.val_pred == self.y).astype(bool).mean(axis=1), np.nan)

    def _fitted(self) -> np.ndarray:
        return np.array([all(p is not None for p in row) for row in self.val_pred], dtype=bool)

    @property
    def modal_layer(self) -> int:
        """``modal_layer`` of the per-fold choices."""
        return modal_layer(self.chosen, dict(zip(self.layers, self.validation_curve)))

    def intervals(self, groups, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
        """Group-bootstrap intervals: {"test": [2 (accuracy, macro-F1), 2 (low, high)], "validation": [L, 2, 2]
        (NaN rows where a layer was not fitted)}."""
        fitted = self._fitted()
        preds = np.vstack([self.test_pred[None].astype(object), self.val_pred[fitted]])
        ci = score_intervals(self.y, preds, self.classes, groups=groups, n_boot=n_boot, seed=seed, level=level)
        val = np.full((len(self.layers), 2, 2), np.nan)
        val[fitted] = ci[1:]
        return {"test": ci[0], "validation": val}


def modal_layer(chosen, curve: dict | None = None) -> int:
    """The layer chosen most often; ties go to the higher ``curve`` value ({layer: score}), then the earlier layer.

    >>> modal_layer([3, 5, 5, 3, 4], {3: 0.80, 4: 0.90, 5: 0.82})
    5
    """
    counts = Counter(int(c) for c in chosen)
    if not counts:
        raise ValueError("no chosen layers: the nested procedure made no choice")
    curve = curve or {}
    return min(counts, key=lambda layer: (-counts[layer], -np.nan_to_num(curve.get(layer, 0.0), nan=-1.0), layer))


def _check(xs, y, layers, candidates) -> tuple[list, list, list]:
    xs = [np.asarray(x) for x in xs]
    layers = list(range(len(xs))) if layers is None else [int(layer) for layer in layers]
    if len(layers) != len(xs):
        raise ValueError(f"got {len(xs)} layer matrices but {len(layers)} layer names")
    bad = [i for i, x in enumerate(xs) if x.ndim != 2 or len(x) != len(y)]
    if bad:
        raise ValueError(f"every layer matrix must be [n_rows, d] with n_rows = {len(y)} labels; layer "
                         f"{layers[bad[0]]} has shape {xs[bad[0]].shape}")
    candidates = layers if candidates is None else [int(c) for c in candidates]
    missing = sorted(set(candidates) - set(layers))
    if missing or not candidates:
        raise ValueError(f"candidate layers {missing or candidates} are not among the layers given: {layers}")
    return xs, layers, candidates


def nested_probe(xs, y, groups, *, layers=None, candidates=None, folds: list[NestedFold] | None = None,
                 n_splits: int = 5, seed: int = 0, n_jobs: int = 1, keep_directions: bool = False,
                 **probe_kwargs) -> NestedProbe:
    """Nested cross-validation of a probe over the layers ``xs`` ([n, d] each, named ``layers``), choosing among
    ``candidates`` (default all) on each outer fold's validation fold (ties: the earlier candidate).

    ``folds`` (from ``nested_folds``) may be passed to share them (e.g. with a random-weights control on the
    same rows); ``n_jobs`` fits that many probes at once in threads (same result); ``keep_directions`` keeps
    each inner fit's ``probe_direction`` per class (fitted on the training folds only, so it may be read on
    the outer test fold's rows). ``probe_kwargs`` go to ``make_probe``.
    """
    y = np.asarray(y)
    xs, layers, candidates = _check(xs, y, layers, candidates)
    folds = nested_folds(y, groups, n_splits, seed) if folds is None else list(folds)
    classes = classes_of(y)
    cand_idx = [layers.index(c) for c in candidates]
    inner = [(i, j) for i in range(len(folds)) for j in range(len(candidates))] if len(candidates) > 1 else []

    def fit(x, rows):
        return make_probe(seed=seed, **probe_kwargs).fit(x[rows], y[rows])

    def inner_task(i, j):
        f, x = folds[i], xs[cand_idx[j]]
        pipe = fit(x, f.train)
        dirs = np.stack([probe_direction(pipe, c) for c in classes]) if keep_directions else None
        return pipe.predict(x[f.val]), dirs

    val_pred = np.full((len(candidates), len(y)), None, dtype=object)
    val_acc = np.full((len(folds), len(candidates)), np.nan)
    directions = None
    outs = _run(inner_task, inner, n_jobs)
    for (i, j), (pred, dirs) in zip(inner, outs):
        val_pred[j, folds[i].val] = pred
        val_acc[i, j] = float((pred == y[folds[i].val]).mean())
        if dirs is not None:
            if directions is None:
                directions = np.zeros((len(folds), len(candidates), len(classes), dirs.shape[1]), dtype=np.float32)
            directions[i, j] = dirs
    chosen = [candidates[int(np.argmax(val_acc[i]))] if inner else candidates[0] for i in range(len(folds))]

    def refit_task(i):
        f, x = folds[i], xs[layers.index(chosen[i])]
        return fit(x, np.concatenate([f.train, f.val])).predict(x[f.test])

    test_pred = np.empty(len(y), dtype=y.dtype)
    for f, pred in zip(folds, _run(refit_task, [(i,) for i in range(len(folds))], n_jobs)):
        test_pred[f.test] = pred
    return NestedProbe(tuple(candidates), y, folds, val_pred, val_acc,
                       tuple(chosen), test_pred, tuple(classes), len(inner) + len(folds), directions)


def _run(task, args: list[tuple], n_jobs: int) -> list:
    """``task(*a)`` for every ``a`` in ``args``, in threads when ``n_jobs`` > 1, single-threaded BLAS (see
    ``lib.geometry.probes.MAX_ITER``)."""
    with threadpool_limits(limits=1):
        if n_jobs == 1 or len(args) < 2:
            return [task(*a) for a in args]
        from joblib import Parallel, delayed

        return Parallel(n_jobs=n_jobs, backend="threading")(delayed(task)(*a) for a in args)


def shuffled_band(xs, y, groups, *, repeats: int, layers=None, candidates=None, n_splits: int = 5, seed: int = 0,
                  n_jobs: int = 1, level: float = 0.95, **probe_kwargs) -> dict:
    """``nested_probe`` on ``repeats`` labelings permuted between whole text ``groups`` (nested folds recomputed
    for each, stratified on the permuted labels), choosing among ``candidates``.

    Returns accuracy and macro-F1 per repeat, their mean and the central ``level`` percentile band
    (``accuracy_lo``, ``accuracy_hi``, ``macro_f1_lo``, ``macro_f1_hi``), the layers chosen per repeat, and
    ``n_fits`` in all.

    >>> rng = np.random.default_rng(0); y = np.repeat(["anger", "neutral"], 30)
    >>> s = shuffled_band([rng.normal(size=(60, 3))], y, np.arange(60), repeats=3, n_splits=3)
    >>> len(s["accuracies"]), s["n_fits"], s["accuracy_lo"] < s["accuracy_hi"]
    (3, 9, True)
    """
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 2:
        raise ValueError(f"repeats={repeats!r}; a band needs an integer >= 2")
    rng, permute = np.random.default_rng(seed), group_permuter(y, groups)
    runs = []
    for _ in range(repeats):
        yp = permute(rng)  # = lib.stats.permutation.group_permutation(y, groups, rng)
        runs.append(nested_probe(xs, yp, groups, layers=layers, candidates=candidates,
                                 folds=nested_folds(yp, groups, n_splits, seed), seed=seed, n_jobs=n_jobs,
                                 **probe_kwargs))
    acc, f1 = np.array([r.accuracy for r in runs]), np.array([r.macro_f1 for r in runs])
    q = [(1 - level) / 2, (1 + level) / 2]
    (acc_lo, acc_hi), (f1_lo, f1_hi) = np.quantile(acc, q), np.quantile(f1, q)
    return {"accuracies": acc, "macro_f1s": f1, "accuracy_mean": float(acc.mean()), "accuracy_lo": float(acc_lo),
            "accuracy_hi": float(acc_hi), "macro_f1_mean": float(f1.mean()), "macro_f1_lo": float(f1_lo),
            "macro_f1_hi": float(f1_hi), "chosen": [r.chosen for r in runs], "repeats": int(repeats),
            "n_fits": int(sum(r.n_fits for r in runs))}
