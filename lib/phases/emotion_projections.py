"""Phase-03 projections on held-out rows: each emotion's rows and neutral rows read along every emotion's
directions fitted without them (``lib.geometry.heldout``), by model, reading and layer; the gap in pooled
standard deviations with a bootstrap interval over text groups, beside the same gap on labels permuted
between whole groups (difference-of-means methods) and the in-sample gap of directions fitted on all rows.

The folds are the probe's outer test folds (``lib.phases.emotion_probes.probe_selection``): a row's
directions are fitted on the other folds (training + validation), and the probe's direction is the
inner fit of that outer fold (fitted on its training folds only).

>>> PROJECTION_COLUMNS[:6]
['model', 'reading', 'layer', 'direction_emotion', 'method', 'emotion']
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.activations.layerwise import LayerData
from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.heldout import (DIFF_METHODS, crossfit_projections, insample_projections, permuted_gaps,
                                  projection_stats)
from lib.stats.splits import nested_folds, split_record

__all__ = ["PROJECTION_COLUMNS", "reading_folds", "projection_table", "projections_by_model", "gap_summary"]

PROJECTION_COLUMNS = ["model", "reading", "layer", "direction_emotion", "method", "emotion", "n", "mean", "sd",
                      "ci_low", "ci_high", "gap", "gap_lo", "gap_hi", "null_gap", "null_lo", "null_hi",
                      "gap_in_sample"]


def reading_folds(ld: LayerData, run: dict, n_splits: int, seed: int) -> tuple[list, np.ndarray, bool]:
    """(outer folds, text groups, same rows) for a reading's rows: the probe run's own folds and groups when the
    rows are the probe's (same ids in the same order), else nested folds recomputed on the rows kept (e.g. the
    span reading without its NaN rows) with the groups of those rows."""
    ids = run["ids"]
    mine = ld.labels["id"].to_numpy()
    if len(mine) == len(ids) and (mine == ids).all():
        return run["probe"].folds, run["groups"], True
    pos = pd.Series(np.arange(len(ids)), index=ids)
    missing = sorted(set(mine) - set(ids))
    if missing:
        raise ValueError(f"{ld.model} {ld.reduction}: rows {missing[:3]} are not among the probe's rows")
    groups = run["groups"][pos.loc[mine].to_numpy()]
    return nested_folds(ld.labels["emotion"].to_numpy().astype(str), groups, n_splits, seed), groups, False


def projection_table(ld: LayerData, folds, groups, *, methods, probe=None, full_dirs: dict | None = None,
                     repeats: int = 20, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Held-out projections of one reading of one model at every layer, one row per (layer, direction key,
    class): n, mean (relative to the training neutral mean) and sd, ``ci_low``/``ci_high`` (group bootstrap
    of the mean), ``gap`` to neutral in pooled sd with ``gap_lo``/``gap_hi``, the permuted-label null's mean
    and central band (``null_gap``, ``null_lo``, ``null_hi``; NaN for pca and probe), and ``gap_in_sample``
    (the old reading: ``full_dirs`` {layer: {key: [d]}} fitted on all rows, read on the same rows). Null
    repeats of 0 leave the null columns NaN.

    ``probe`` is a ``NestedProbe`` with directions whose folds are ``folds``: its per-fold directions add
    the ``probe`` method.
    """
    y = ld.labels["emotion"].to_numpy().astype(str)
    classes = [c for c in (*TARGET_EMOTIONS, BASELINE) if c in set(y)]
    emotions = [c for c in TARGET_EMOTIONS if c in set(y)]
    xs = [np.asarray(x, dtype=np.float64) for x in ld.xs]
    proj, insample, keys = [], [], None
    for i, (layer, x) in enumerate(zip(ld.layers, xs)):
        extra = None
        if probe is not None and probe.directions is not None:
            j = list(probe.layers).index(layer)
            extra = {(e, "probe"): probe.directions[:, j, list(probe.classes).index(e)] for e in emotions}
        p, keys = crossfit_projections(x, y, folds, methods, emotions=emotions, extra=extra)
        proj.append(p)
        if full_dirs is not None:
            insample.append(insample_projections(x, y, {k: full_dirs[layer][k] for k in keys})[0])
    st = projection_stats(np.stack(proj), y, classes=classes, groups=groups, n_boot=n_boot, seed=seed, level=level)
    gap_in = projection_stats(np.stack(insample), y, classes=classes)["gap"] if insample else None
    diff = [k for k in keys if k[1] in DIFF_METHODS]
    null_mean, null_lo, null_hi = (np.full(st["gap"].shape, np.nan) for _ in range(3))
    if repeats and diff:
        g, dkeys = permuted_gaps(xs, y, folds, groups, repeats=repeats, emotions=sorted({e for e, _ in diff}),
                                 methods=sorted({m for _, m in diff}), classes=classes, seed=seed)
        for a, k in enumerate(dkeys):  # g: [repeats, layers, keys, classes]
            j = keys.index(k)
            null_mean[:, j] = g[:, :, a].mean(0)
            null_lo[:, j], null_hi[:, j] = np.quantile(g[:, :, a], [(1 - level) / 2, (1 + level) / 2], axis=0)
    li, ki, ci = np.meshgrid(np.arange(len(ld.layers)), np.arange(len(keys)), np.arange(len(classes)), indexing="ij")
    li, ki, ci = li.ravel(), ki.ravel(), ci.ravel()
    flat = lambda a: a.reshape(-1)  # noqa: E731  [layers, keys, classes] in the meshgrid's order
    return pd.DataFrame({
        "model": ld.model, "reading": ld.reduction, "layer": np.asarray(ld.layers)[li],
        "direction_emotion": [keys[k][0] for k in ki], "method": [keys[k][1] for k in ki],
        "emotion": np.asarray(classes)[ci], "n": st["n"][ci], "mean": flat(st["mean"]), "sd": flat(st["sd"]),
        "ci_low": flat(st["mean_lo"]), "ci_high": flat(st["mean_hi"]), "gap": flat(st["gap"]),
        "gap_lo": flat(st["gap_lo"]), "gap_hi": flat(st["gap_hi"]), "null_gap": flat(null_mean),
        "null_lo": flat(null_lo), "null_hi": flat(null_hi),
        "gap_in_sample": flat(gap_in) if gap_in is not None else np.nan}, columns=PROJECTION_COLUMNS)


def projections_by_model(dirs: dict, runs: dict, *, methods, n_splits: int, repeats: int = 20, n_boot: int = 1000,
                         seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """``projection_table`` for every (model, reading) of ``dirs`` (``directions_by_model`` output), on the
    folds of ``runs[model]`` (``probe_selection``; its probe directions join the sentence-end reading).
    Returns (the tables concatenated; {(model, reading): split record or None when the probe's folds were
    reused})."""
    parts, splits = [], {}
    for (m, reading), (ld, full) in dirs.items():
        folds, groups, same = reading_folds(ld, runs[m], n_splits, seed)
        probe = runs[m]["probe"] if same and reading == "sentence_end" else None
        parts.append(projection_table(ld, folds, groups, methods=methods, probe=probe, full_dirs=full,
                                      repeats=repeats, n_boot=n_boot, seed=seed))
        splits[m, reading] = None if same else split_record(
            f"projection folds ({reading})", "nested folds recomputed on the rows this reading keeps", seed,
            test=[f.test for f in folds])
    return pd.concat(parts, ignore_index=True), splits


def gap_summary(proj: pd.DataFrame, method: str = "mean_vs_neutral") -> pd.DataFrame:
    """Each emotion's own-direction gap to neutral (held out, with interval), its permuted-label band and the
    in-sample gap, per model, reading and layer, for one ``method``."""
    own = proj[(proj["method"] == method) & (proj["direction_emotion"] == proj["emotion"])]
    return own[["model", "reading", "layer", "emotion", "gap", "gap_lo", "gap_hi", "null_lo", "null_hi",
                "gap_in_sample"]].reset_index(drop=True)
