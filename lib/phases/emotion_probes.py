"""Phase-03 probes: where each model's four classes are best decoded, with the layer chosen on validation folds
and the accuracy estimated on test folds (``lib.geometry.probe_selection``), beside two controls run through
the same nested procedure: labels permuted between whole text groups (a band over repeats) and the same
architecture with random weights on the same rows and folds; and transfer to GoEmotions.

Text groups (``lib.geometry.folds.text_groups``) keep near-identical texts in one fold and are the units of
every bootstrap. The shuffled-label repeats choose among ``shuffled_layers`` (default: the real probe's modal
layer only, so each repeat costs k refits; on a test fold no fit or choice has seen, a wider choice could
not raise the null's mean, only its spread a little).

>>> VARIANTS
('probe', 'random weights', 'shuffled labels')
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from lib.activations.layerwise import LayerData, paired_layers
from lib.emotions import TARGET_EMOTIONS
from lib.geometry.folds import text_groups
from lib.geometry.probe_selection import NestedProbe, nested_probe, shuffled_band
from lib.geometry.probes import fit_probe, probe_direction, transfer_eval
from lib.stats.splits import nested_folds, split_record

__all__ = ["VARIANTS", "FIGURE", "probe_selection", "probes_by_model", "modal_layers", "fit_layers",
           "transfer_table", "transfer_by_model", "probe_directions", "best_layer_report", "report_summary",
           "findings", "figure_frames"]

VARIANTS = ("probe", "random weights", "shuffled labels")
FIGURE = "Probes by layer, with their controls"  # the notebook heading whose figure shows the headline
CURVE_COLUMNS = ["layer", "variant", "accuracy", "acc_lo", "acc_hi", "macro_f1", "f1_lo", "f1_hi", "chosen"]
HEADLINE_COLUMNS = ["variant", "accuracy", "acc_lo", "acc_hi", "macro_f1", "f1_lo", "f1_hi", "layer", "chosen_layers",
                    "interval", "n_fits"]


def _curve(res: NestedProbe, ci: dict, variant: str) -> pd.DataFrame:
    f1 = [f1_score(res.y, p.astype(str), labels=list(res.classes), average="macro", zero_division=0)
          if all(v is not None for v in p) else np.nan for p in res.val_pred]
    val = ci["validation"]
    return pd.DataFrame({"layer": list(res.layers), "variant": variant, "accuracy": res.validation_curve,
                         "acc_lo": val[:, 0, 0], "acc_hi": val[:, 0, 1], "macro_f1": f1, "f1_lo": val[:, 1, 0],
                         "f1_hi": val[:, 1, 1], "chosen": [res.chosen.count(layer) for layer in res.layers]})


def _headline(res: NestedProbe, ci: dict, variant: str, level: float) -> dict:
    (alo, ahi), (flo, fhi) = ci["test"]
    return {"variant": variant, "accuracy": res.accuracy, "acc_lo": alo, "acc_hi": ahi, "macro_f1": res.macro_f1,
            "f1_lo": flo, "f1_hi": fhi, "layer": res.modal_layer, "chosen_layers": " ".join(map(str, res.chosen)),
            "interval": f"{level:.0%} bootstrap over text groups", "n_fits": res.n_fits}


def probe_selection(real: LayerData, control: LayerData | None = None, *, shuffled_repeats: int = 20,
                    n_splits: int = 5, seed: int = 0, n_boot: int = 1000, n_jobs: int = 1, shuffled_layers=None,
                    level: float = 0.95) -> dict:
    """Nested cross-validation of the probe over ``real``'s layers, with its controls.

    Returns {"curves": validation accuracy and macro-F1 by layer with group-bootstrap intervals and how many
    outer folds chose each layer (variants probe and random weights; columns ``CURVE_COLUMNS``),
    "headline": pooled test scores per variant (``HEADLINE_COLUMNS``; the shuffled-label row holds the mean
    over repeats and its central ``level`` band), "probe" and "control" (``NestedProbe``), "shuffled"
    (``shuffled_band``'s dict), "groups" [n] text groups, "ids" [n] row ids (the order of every [n] array),
    "split" (``split_record`` of the outer folds)}.
    ``control`` (random weights) is paired to ``real``'s rows by id and scored on the same folds.
    """
    groups = text_groups(real.labels["text"].tolist())
    y = real.labels["emotion"].to_numpy().astype(str)
    folds = nested_folds(y, groups, n_splits, seed)
    res = nested_probe(real.xs, y, groups, layers=real.layers, folds=folds, seed=seed, n_jobs=n_jobs,
                       keep_directions=True)
    ci = res.intervals(groups, n_boot=n_boot, seed=seed, level=level)
    curves, heads = [_curve(res, ci, "probe")], [_headline(res, ci, "probe", level)]
    ctrl = None
    if control is not None:
        ours, theirs = paired_layers(real, control)
        if len(ours.labels) != len(real.labels):
            raise ValueError(f"the control {control.model} lacks {len(real.labels) - len(ours.labels)} of the rows")
        ctrl = nested_probe(theirs.xs, y, groups, layers=theirs.layers, folds=folds, seed=seed, n_jobs=n_jobs)
        cci = ctrl.intervals(groups, n_boot=n_boot, seed=seed, level=level)
        curves.append(_curve(ctrl, cci, "random weights"))
        heads.append(_headline(ctrl, cci, "random weights", level))
    layers = [res.modal_layer] if shuffled_layers is None else list(shuffled_layers)
    band = shuffled_band([real.layer(layer) for layer in layers], y, groups, repeats=shuffled_repeats, layers=layers,
                         n_splits=n_splits, seed=seed, n_jobs=n_jobs, level=level)
    chosen = [c for run in band["chosen"] for c in run]
    heads.append({"variant": "shuffled labels", "accuracy": band["accuracy_mean"], "acc_lo": band["accuracy_lo"],
                  "acc_hi": band["accuracy_hi"], "macro_f1": band["macro_f1_mean"], "f1_lo": band["macro_f1_lo"],
                  "f1_hi": band["macro_f1_hi"], "layer": max(set(chosen), key=chosen.count),
                  "chosen_layers": " ".join(map(str, layers)),
                  "interval": f"{level:.0%} band over {band['repeats']} group permutations", "n_fits": band["n_fits"]})
    split = split_record("probe nested folds", f"{n_splits} stratified folds by text group; outer fold i tests on "
                         f"fold i, validates on fold i + 1, trains on the rest", seed,
                         test=[f.test for f in folds], validation=[f.val for f in folds])
    return {"curves": pd.DataFrame(pd.concat(curves, ignore_index=True), columns=CURVE_COLUMNS),
            "headline": pd.DataFrame(heads, columns=HEADLINE_COLUMNS), "probe": res, "control": ctrl,
            "shuffled": band, "groups": groups, "ids": real.labels["id"].to_numpy(), "split": split}


def probes_by_model(fit_data: dict, models, control_models, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``probe_selection`` for each model with the control at the same place in ``control_models``:
    (curves, headline, {model: run}), the tables with a ``model`` column; ``kwargs`` go to ``probe_selection``."""
    runs = {m: probe_selection(fit_data[m], fit_data[c] if c else None, **kwargs)
            for m, c in zip(models, control_models)}
    curves = pd.concat([r["curves"].assign(model=m) for m, r in runs.items()], ignore_index=True)
    headline = pd.concat([r["headline"].assign(model=m) for m, r in runs.items()], ignore_index=True)
    return curves, headline, runs


def modal_layers(runs: dict) -> dict[str, int]:
    """{model: the layer its nested procedure chose most often} (the layer used for transfer and subspaces)."""
    return {m: r["probe"].modal_layer for m, r in runs.items()}


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


def transfer_by_model(authored: dict, train: dict, dev: dict, best: dict, *, train_name: str, dev_name: str,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Transfer both ways for every model (keys of ``authored``, {model: LayerData}): probes fitted on the
    authored rows scored on ``dev``, and probes fitted on ``train`` scored on the authored rows. Every score
    is on rows the probe was not fitted on; ``best`` {model: layer} (the nested procedure's modal layer) picks
    the per-class table.

    Returns (table of ``transfer_table`` rows with model and direction ("authored -> <dev_name>",
    "<train_name> -> authored"), forward then reverse per model; per-class forward scores at each model's
    ``best`` layer; {model: {layer: probe fitted on the authored rows}}).
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


def best_layer_report(headline: pd.DataFrame, transfer: pd.DataFrame, runs: dict) -> dict:
    """Per model, the held-out numbers: layer (modal choice), chosen_layers (per outer fold), accuracy and
    macro-F1 with intervals, the shuffled-label mean and band, the random-weights control (held out, its own
    chosen layers), the authored -> GoEmotions dev macro-F1 at the layer, and the probe fits made."""
    report = {}
    for m, run in runs.items():
        h = headline[headline["model"] == m].set_index("variant")
        layer = run["probe"].modal_layer
        fwd = transfer[(transfer["model"] == m) & (transfer["layer"] == layer)
                       & transfer["direction"].str.startswith("authored")]
        rw = h.loc["random weights"] if "random weights" in h.index else None
        report[m] = {
            "layer": int(layer), "chosen_layers": [int(c) for c in run["probe"].chosen],
            "accuracy": float(h.loc["probe", "accuracy"]),
            "accuracy_ci": [float(h.loc["probe", "acc_lo"]), float(h.loc["probe", "acc_hi"])],
            "macro_f1": float(h.loc["probe", "macro_f1"]),
            "macro_f1_ci": [float(h.loc["probe", "f1_lo"]), float(h.loc["probe", "f1_hi"])],
            "shuffled_accuracy": float(h.loc["shuffled labels", "accuracy"]),
            "shuffled_band": [float(h.loc["shuffled labels", "acc_lo"]), float(h.loc["shuffled labels", "acc_hi"])],
            "shuffled_repeats": int(run["shuffled"]["repeats"]),
            "random_weights_accuracy": float(rw["accuracy"]) if rw is not None else None,
            "random_weights_ci": [float(rw["acc_lo"]), float(rw["acc_hi"])] if rw is not None else None,
            "random_weights_layers": [int(c) for c in run["control"].chosen] if run["control"] else None,
            "transfer_macro_f1": float(fwd["macro_f1"].iloc[0]) if len(fwd) else None,
            "n_classes": len(run["probe"].classes), "n_fits": int(h["n_fits"].sum())}
    return report


def _ci(v) -> str:
    return f"[{v[0]:.3f}, {v[1]:.3f}]"


def report_summary(report: dict) -> str:
    """The phase's one-line summary of a ``best_layer_report``.

    >>> r = {"layer": 2, "chosen_layers": [2, 2, 3], "accuracy": 0.9, "accuracy_ci": [0.85, 0.95],
    ...      "shuffled_accuracy": 0.25, "shuffled_band": [0.23, 0.27], "random_weights_accuracy": 0.4,
    ...      "random_weights_ci": [0.38, 0.42], "transfer_macro_f1": 0.5}
    >>> print(report_summary({"m": r}))
    m: layer 2 (chosen per fold 2, 2, 3), held-out accuracy 0.900 [0.850, 0.950], shuffled labels 0.250 [0.230, 0.270], random weights 0.400 [0.380, 0.420], GoEmotions dev macro-F1 0.500
    """
    parts = []
    for m, r in report.items():
        text = (f"{m}: layer {r['layer']} (chosen per fold {', '.join(map(str, r['chosen_layers']))}), held-out "
                f"accuracy {r['accuracy']:.3f} {_ci(r['accuracy_ci'])}, shuffled labels {r['shuffled_accuracy']:.3f} "
                f"{_ci(r['shuffled_band'])}")
        if r.get("random_weights_accuracy") is not None:
            text += f", random weights {r['random_weights_accuracy']:.3f} {_ci(r['random_weights_ci'])}"
        if r.get("transfer_macro_f1") is not None:
            text += f", GoEmotions dev macro-F1 {r['transfer_macro_f1']:.3f}"
        parts.append(text)
    return "; ".join(parts)


def findings(report: dict, figure: str = FIGURE) -> list[dict]:
    """One finding per model for the index page: where the emotions are best decoded and how well (held out),
    with the shuffled-label band and the random-weights model as its control.

    >>> r = {"layer": 2, "chosen_layers": [2, 2, 3], "accuracy": 0.9, "accuracy_ci": [0.85, 0.95],
    ...      "shuffled_accuracy": 0.25, "shuffled_band": [0.23, 0.27], "shuffled_repeats": 20,
    ...      "random_weights_accuracy": 0.4, "random_weights_ci": [0.38, 0.42], "n_classes": 4}
    >>> f = findings({"m": r})[0]; sorted(f), f["finding"]
    (['control', 'figure', 'finding', 'question'], 'm: layer 2 (chosen in 2 of 3 outer folds), held-out accuracy 0.900 [0.850, 0.950] (4 classes, chance 0.25)')
    """
    out = []
    for m, r in report.items():
        n_chosen = r["chosen_layers"].count(r["layer"])
        control = (f"shuffled labels {r['shuffled_accuracy']:.3f} ({r['shuffled_repeats']} group permutations, "
                   f"band {_ci(r['shuffled_band'])})")
        if r.get("random_weights_accuracy") is not None:
            control += f"; random weights {r['random_weights_accuracy']:.3f} {_ci(r['random_weights_ci'])}"
        out.append({"question": "Where is each emotion best decoded, and how well?",
                    "finding": f"{m}: layer {r['layer']} (chosen in {n_chosen} of {len(r['chosen_layers'])} outer "
                               f"folds), held-out accuracy {r['accuracy']:.3f} {_ci(r['accuracy_ci'])} "
                               f"({r['n_classes']} classes, chance {1 / r['n_classes']:.2f})",
                    "control": control, "figure": figure})
    return out


def figure_frames(curves: pd.DataFrame, headline: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the probe figure draws beside the validation curves: (held-out headline points per model and
    variant at the modal chosen layer, ``variant`` suffixed ", held out", with ``up``/``down`` error bar
    lengths; the shuffled-label band as two horizontal edges, ``edge`` low/high, spanning each model's layers)."""
    points = headline[headline["variant"] != "shuffled labels"].assign(
        variant=lambda d: d["variant"] + ", held out", up=lambda d: d["acc_hi"] - d["accuracy"],
        down=lambda d: d["accuracy"] - d["acc_lo"])
    span = curves.groupby("model")["layer"].agg(["min", "max"])
    band = [{"model": m, "variant": "shuffled labels, 95% band", "edge": edge, "layer": span.loc[m, end],
             "accuracy": r[col]}
            for m, r in headline[headline["variant"] == "shuffled labels"].set_index("model").iterrows()
            for edge, col in (("low", "acc_lo"), ("high", "acc_hi")) for end in ("min", "max")]
    return points.reset_index(drop=True), pd.DataFrame(band, columns=["model", "variant", "edge", "layer", "accuracy"])
