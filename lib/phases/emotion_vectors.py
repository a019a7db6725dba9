"""Phase-03 helpers: emotion directions, projections and subspace stability for every layer.

Readings of a row: ``sentence_end`` (last real token), ``mean`` (mean over real tokens) and
``span`` (mean over the emotion-bearing span's tokens). Neutral rows have no span, so in the
span reading they contribute their mean over tokens: span directions compare the tokens that
carry the emotion with an ordinary neutral token.

>>> READINGS
('sentence_end', 'span', 'mean')
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.directions import (emotion_directions, emotion_subspace, joint_subspace,
                            layer_cosines, projection_summary, projections, split_half_stability,
                            subspace_stability)
from lib.activations.layerwise import LayerData, load_layers, paired_layers
from lib.geometry.probes import fit_probe, probe_by_layer, probe_direction, text_groups, transfer_eval

__all__ = ["READINGS", "reading_layers", "directions_by_layer", "directions_array", "projection_table",
           "cosine_long", "stability_by_layer", "subspace_dims", "probe_curves", "fit_layers", "transfer_table",
           "probe_directions", "best_layer"]

READINGS = ("sentence_end", "span", "mean")


def reading_layers(stores, model: str, reading: str, site: str = "hook_resid_post") -> LayerData:
    """Every layer of ``site`` in one reading; for ``span``, neutral rows take their token mean."""
    if reading not in READINGS:
        raise ValueError(f"reading {reading!r} is not one of {READINGS}")
    if reading != "span":
        return load_layers(stores, model, site, reading)
    span, mean = load_layers(stores, model, site, "span"), load_layers(stores, model, site, "mean")
    neutral = (span.labels["emotion"] == BASELINE).to_numpy()
    xs = [np.where(neutral[:, None], m, s) for s, m in zip(span.xs, mean.xs)]
    return LayerData(model, site, "span", span.layers, xs, span.labels)


def directions_by_layer(ld: LayerData, methods=("mean_vs_neutral", "mean_vs_rest", "pca"),
                        extra_by_layer: dict | None = None) -> dict[int, dict]:
    """{layer: {(emotion, method): unit direction [d]}}, each oriented so its emotion projects higher."""
    out = {}
    for layer, x in zip(ld.layers, ld.xs):
        extra = (extra_by_layer or {}).get(layer)
        out[layer] = emotion_directions(x, ld.labels, methods, extra=extra)
    return out


def directions_array(dirs: dict[int, dict]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Stack ``directions_by_layer`` output: float32 [layers, keys, d], the layers and the keys."""
    layers = sorted(dirs)
    keys = sorted(dirs[layers[0]])
    arr = np.stack([np.stack([dirs[layer][k] for k in keys]) for layer in layers]).astype(np.float32)
    return arr, layers, keys


def projection_table(ld: LayerData, dirs: dict[int, dict]) -> pd.DataFrame:
    """Mean projection (with a 95% t-interval) of each emotion's rows onto each direction, by layer."""
    parts = []
    for layer, x in zip(ld.layers, ld.xs):
        summary = projection_summary(projections(x, ld.labels, dirs[layer]))
        parts.append(summary.assign(layer=layer))
    return pd.concat(parts, ignore_index=True)


def cosine_long(dirs: dict[int, dict], method: str) -> pd.DataFrame:
    """Cosine of each emotion's ``method`` direction between every pair of layers, long form."""
    tables = layer_cosines(dirs)
    rows = []
    for (emotion, m), table in tables.items():
        if m != method:
            continue
        long = table.stack().rename("cosine").reset_index()
        long.columns = ["layer_a", "layer_b", "cosine"]
        rows.append(long.assign(emotion=emotion))
    if not rows:
        raise ValueError(f"no directions of method {method!r}; have {sorted({m for _, m in tables})}")
    return pd.concat(rows, ignore_index=True)


def subspace_dims(ld: LayerData, layer: int, var_threshold: float = 0.9, max_k: int = 64) -> pd.DataFrame:
    """Cumulative explained share by number of dimensions, per emotion subspace and the joint one,
    at one layer, with the k each reaches the threshold at (column ``k``)."""
    x = ld.layer(layer)
    fits = {e: emotion_subspace(x, ld.labels, e, var_threshold, max_k) for e in TARGET_EMOTIONS}
    fits["joint"] = joint_subspace(x, ld.labels, var_threshold, max_k)
    rows = [{"subspace": name, "dims": i + 1, "explained": float(v), "k": fit.k}
            for name, fit in fits.items() for i, v in enumerate(fit.explained[:max_k])]
    return pd.DataFrame(rows)


def stability_by_layer(fit_a: LayerData, fit_b: LayerData, both: LayerData, *, var_threshold: float = 0.9,
                       max_k: int = 32, n_splits: int = 5, seed: int = 0, layers=None) -> pd.DataFrame:
    """Principal angles between subspaces fit on ``fit_a`` and ``fit_b`` (e.g. baseline and extended
    profiles), and between random halves of ``both``, beside random-subspace references.

    One row per layer, subspace (each emotion and joint) and comparison: k, mean and largest angle
    (degrees), and the same for random subspaces of the same size.
    """
    rows = []
    for layer in layers if layers is not None else both.layers:
        for emotion in (*TARGET_EMOTIONS, None):
            name = emotion or "joint"
            comparisons = {
                "profiles": subspace_stability(fit_a.layer(layer), fit_a.labels, fit_b.layer(layer), fit_b.labels,
                                               emotion=emotion, var_threshold=var_threshold, max_k=max_k, seed=seed),
                "split_half": split_half_stability(both.layer(layer), both.labels, emotion=emotion,
                                                   var_threshold=var_threshold, max_k=max_k, n_splits=n_splits,
                                                   seed=seed),
            }
            for comparison, st in comparisons.items():
                s = st.summary()
                rows.append({"layer": layer, "subspace": name, "comparison": comparison, "k": st.k,
                             "mean_angle": np.degrees(s["mean_angle"]), "max_angle": np.degrees(s["max_angle"]),
                             "null_mean_angle": np.degrees(s["null_mean_angle"]),
                             "null_max_angle": np.degrees(s["null_max_angle"])})
    return pd.DataFrame(rows)


def probe_curves(real: LayerData, control: LayerData | None = None, *, shuffled_repeats: int = 1, n_splits: int = 5,
                 seed: int = 0, progress: bool | None = None) -> pd.DataFrame:
    """Cross-validated probe accuracy and macro-F1 by layer with 95% bootstrap intervals, beside two
    controls: shuffled labels, and the same architecture with random weights (``control``, on the
    same rows). Folds keep near-identical texts together (``lib.geometry.probes.text_groups``).

    Columns: layer, variant (probe, shuffled labels, random weights), accuracy, acc_lo, acc_hi,
    macro_f1, f1_lo, f1_hi.
    """
    from lib.settings import show_progress

    progress = show_progress() if progress is None else progress
    groups = text_groups(real.labels["text"].tolist())
    y = real.labels["emotion"].to_numpy()
    table = probe_by_layer(real.xs, y, groups, layers=real.layers, shuffled_repeats=shuffled_repeats,
                           n_splits=n_splits, seed=seed, progress=progress)
    table["variant"] = np.where(table["labels"] == "shuffled", "shuffled labels", "probe")
    if control is not None:
        ctrl, ours = paired_layers(control, real)
        if len(ctrl.labels) != len(real.labels):
            raise ValueError(f"the control {control.model} lacks {len(real.labels) - len(ctrl.labels)} of the rows")
        ctrl_groups = text_groups(ctrl.labels["text"].tolist())
        c = probe_by_layer(ctrl.xs, ctrl.labels["emotion"].to_numpy(), ctrl_groups, layers=ctrl.layers,
                           n_splits=n_splits, seed=seed, progress=progress)
        table = pd.concat([table, c.assign(variant="random weights")], ignore_index=True)
    return table.drop(columns="labels")


def best_layer(curves: pd.DataFrame, metric: str = "accuracy") -> int:
    """The layer where the real probe scores highest (the earliest of ties)."""
    probe = curves[curves["variant"] == "probe"].sort_values("layer")
    return int(probe.loc[probe[metric].idxmax(), "layer"])


def fit_layers(ld: LayerData, seed: int = 0) -> dict:
    """A probe fitted on all rows at each layer: {layer: pipeline} (for transfer and probe directions)."""
    y = ld.labels["emotion"].to_numpy()
    return {layer: fit_probe(x, y, seed=seed) for layer, x in zip(ld.layers, ld.xs)}


def transfer_table(fits: dict, test: LayerData) -> tuple[pd.DataFrame, dict]:
    """Probes fitted on one dataset scored on another, by layer: (table of layer, accuracy, macro_f1,
    n; the full ``transfer_eval`` result per layer, with per-class scores and confusion)."""
    y = test.labels["emotion"].to_numpy()
    full = {layer: transfer_eval(fits[layer], test.layer(layer), y) for layer in test.layers if layer in fits}
    table = pd.DataFrame([{"layer": layer, "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "n": r["n"]}
                          for layer, r in full.items()])
    return table, full


def probe_directions(fits: dict, emotions=TARGET_EMOTIONS) -> dict[int, dict]:
    """{layer: {(emotion, "probe"): unit direction}} from the fitted probes' weights."""
    return {layer: {(e, "probe"): probe_direction(pipe, e) for e in emotions} for layer, pipe in fits.items()}
