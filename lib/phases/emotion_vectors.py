"""Phase-03 helpers: emotion directions, projections and subspace stability for every layer.

Readings of a row: ``sentence_end`` (last real token), ``mean`` (mean over real tokens) and
``span`` (mean over the emotion-bearing span's tokens). Neutral rows have no span, so in the
span reading they contribute their mean over tokens: span directions compare the tokens that
carry the emotion with an ordinary neutral token.

>>> READINGS
('sentence_end', 'span', 'mean')
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.activations.layerwise import LayerData, load_layers, paired_layers
from lib.geometry.directions import emotion_directions, layer_cosines, projection_summary, projections
from lib.geometry.folds import text_groups
from lib.geometry.probes import fit_probe, probe_by_layer, probe_direction, transfer_eval
from lib.geometry.subspaces import emotion_subspace, joint_subspace, split_half_stability, subspace_stability

__all__ = ["READINGS", "reading_layers", "directions_by_layer", "directions_array", "projection_table",
           "cosine_long", "stability_by_layer", "subspace_dims", "probe_curves", "fit_layers", "transfer_table",
           "probe_directions", "best_layer", "best_layers", "at_best_layers", "transfer_by_model",
           "directions_by_model", "method_agreement", "stability_by_model", "save_directions", "best_layer_report",
           "report_summary"]

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
    same rows). Folds keep near-identical texts together (``lib.geometry.folds.text_groups``).

    Columns: layer, variant (probe, shuffled labels, random weights), accuracy, acc_lo, acc_hi,
    macro_f1, f1_lo, f1_hi.
    """
    progress = True if progress is None else progress  # lib.settings.progress_bar shows it where it belongs
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


# ------------------------------------------------------------------------ every model at once, for the notebook
def best_layers(curves: pd.DataFrame, models) -> dict[str, int]:
    """{model: ``best_layer`` of its probe curve} from ``probe_curves`` tables concatenated with a ``model`` column."""
    return {m: best_layer(curves[curves["model"] == m]) for m in models}


def at_best_layers(curves: pd.DataFrame, best: dict) -> pd.DataFrame:
    """The rows of ``curves`` (every variant) at each model's best layer, in their order; models not in ``best``
    are left out."""
    return curves[curves.apply(lambda r: r["model"] in best and r["layer"] == best[r["model"]], axis=1)]


def transfer_by_model(authored: dict, train: dict, dev: dict, best: dict, *, train_name: str, dev_name: str,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Transfer both ways for every model (keys of ``authored``, {model: LayerData}): probes fitted on the
    authored rows scored on ``dev``, and probes fitted on ``train`` scored on the authored rows.

    Returns (table of ``transfer_table`` rows with model and direction ("authored -> <dev_name>",
    "<train_name> -> authored"), forward then reverse per model; per-class forward scores at each model's best
    layer; {model: {layer: probe fitted on the authored rows}}).
    """
    rows, per_class, fits = [], [], {}
    for m, ld in authored.items():
        fits[m] = fit_layers(ld, seed=seed)
        forward, full = transfer_table(fits[m], dev[m])
        reverse, _ = transfer_table(fit_layers(train[m], seed=seed), ld)
        rows += [forward.assign(model=m, direction=f"authored -> {dev_name}"),
                 reverse.assign(model=m, direction=f"{train_name} -> authored")]
        per_class.append(full[best[m]]["per_class"].reset_index().assign(model=m, layer=best[m]))
    return pd.concat(rows, ignore_index=True), pd.concat(per_class, ignore_index=True), fits


def directions_by_model(authored: dict, stores, fits: dict, *, profiles, readings=READINGS,
                        methods=("mean_vs_neutral", "mean_vs_rest", "pca"), site: str = "hook_resid_post") -> dict:
    """{(model, reading): (LayerData, ``directions_by_layer``)} for every model in ``fits`` and reading.

    The sentence-end reading is ``authored[model]`` and adds the probe directions of ``fits[model]``; the
    other readings are read from ``stores[model, profile]`` for each of ``profiles``.
    """
    out = {}
    for m in fits:
        probe_dirs = probe_directions(fits[m])
        for reading in readings:
            ld = authored[m] if reading == "sentence_end" else reading_layers(
                [stores[m, p] for p in profiles], m, reading, site)
            out[m, reading] = (ld, directions_by_layer(ld, methods, probe_dirs if reading == "sentence_end" else None))
    return out


def method_agreement(dirs: dict, reference: str = "mean_vs_neutral") -> pd.DataFrame:
    """Cosine between every direction and its emotion's ``reference`` direction at the same layer, from
    ``directions_by_model`` output: columns model, reading, layer, emotion, method, cosine (the reference
    itself included, cosine 1)."""
    rows = []
    for (m, reading), (_, by_layer) in dirs.items():
        for layer, d in by_layer.items():
            for (emotion, method), v in d.items():
                rows.append({"model": m, "reading": reading, "layer": layer, "emotion": emotion, "method": method,
                             "cosine": float(v @ d[emotion, reference])})
    return pd.DataFrame(rows)


def stability_by_model(authored: dict, profiles, **kwargs) -> pd.DataFrame:
    """``stability_by_layer`` for every model: subspaces fit on the rows of ``profiles[0]`` against
    ``profiles[1]``, and on random halves of all rows; ``kwargs`` go to ``stability_by_layer``. Adds ``model``."""
    parts = []
    for m, ld in authored.items():
        ld_a, ld_b = (ld.subset((ld.labels["profile"] == p).to_numpy()) for p in profiles[:2])
        parts.append(stability_by_layer(ld_a, ld_b, ld, **kwargs).assign(model=m))
    return pd.concat(parts, ignore_index=True)


def save_directions(out: Path, dirs: dict, models, site: str, reading: str = "sentence_end") -> None:
    """Per model, ``directions--<model>.npy`` (``directions_array``: float32 [layers, keys, d_model]) and
    ``directions--<model>.json`` (model, site, reading, layers, keys, shape), ':' in names written '-'."""
    for m in models:
        arr, layers, keys = directions_array(dirs[m, reading][1])
        stem = f"directions--{m.replace(':', '-')}"
        np.save(Path(out) / f"{stem}.npy", arr)
        (Path(out) / f"{stem}.json").write_text(json.dumps(
            {"model": m, "site": site, "reading": reading, "layers": layers, "keys": [list(k) for k in keys],
             "shape": list(arr.shape)}, indent=2))


def best_layer_report(at_best: pd.DataFrame, transfer: pd.DataFrame, best: dict) -> dict:
    """{model: best_layer, accuracy, accuracy_ci, shuffled_accuracy, random_weights_accuracy,
    transfer_macro_f1} at each model's best layer, from ``at_best_layers`` and ``transfer_by_model`` tables."""
    report = {}
    for m, layer in best.items():
        row = lambda v: at_best[(at_best["model"] == m) & (at_best["variant"] == v)].iloc[0]  # noqa: E731
        fwd = transfer[(transfer["model"] == m) & (transfer["layer"] == layer)
                       & transfer["direction"].str.startswith("authored")]
        report[m] = {"best_layer": layer, "accuracy": row("probe")["accuracy"],
                     "accuracy_ci": [row("probe")["acc_lo"], row("probe")["acc_hi"]],
                     "shuffled_accuracy": row("shuffled labels")["accuracy"],
                     "random_weights_accuracy": row("random weights")["accuracy"],
                     "transfer_macro_f1": float(fwd["macro_f1"].iloc[0])}
    return report


def report_summary(report: dict) -> str:
    """The phase's one-line summary of a ``best_layer_report``.

    >>> r = {"best_layer": 2, "accuracy": 0.9, "accuracy_ci": [0.85, 0.95], "shuffled_accuracy": 0.25,
    ...      "random_weights_accuracy": 0.4, "transfer_macro_f1": 0.5}
    >>> for part in report_summary({"m": r}).split(", "):
    ...     print(part)
    m: best layer 2
    accuracy 0.900 [0.850
    0.950]
    shuffled 0.250
    random weights 0.400
    GoEmotions dev macro-F1 0.500
    """
    return "; ".join(f"{m}: best layer {r['best_layer']}, accuracy {r['accuracy']:.3f} "
                     f"[{r['accuracy_ci'][0]:.3f}, {r['accuracy_ci'][1]:.3f}], shuffled {r['shuffled_accuracy']:.3f}, "
                     f"random weights {r['random_weights_accuracy']:.3f}, GoEmotions dev macro-F1 "
                     f"{r['transfer_macro_f1']:.3f}" for m, r in report.items())

