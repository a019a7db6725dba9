"""Phase-03 probe glue against direct nested fits, transfer fits and hand-written reports, on small stores of
tiny models and on hand-made tables."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib.activations.layerwise import load_layers, paired_layers
from lib.geometry.folds import text_groups
from lib.geometry.probe_selection import nested_probe, shuffled_band
from lib.geometry.probes import fit_probe, transfer_eval
from lib.phases.emotion_probes import (best_layer_report, figure_frames, findings, modal_layers, probe_selection,
                                       probes_by_model, report_summary, transfer_by_model)
from lib.stats.splits import nested_folds
from tests.phases.test_emotion_vectors import stores  # noqa: F401  (the module's small stores)


def test_probe_selection_equals_direct_nested_fits_with_its_controls(stores):
    real = load_layers([stores["tiny-gpt2", "baseline"]], "tiny-gpt2")
    control = load_layers([stores["random:tiny-gpt2", "baseline"]], "random:tiny-gpt2")
    run = probe_selection(real, control, shuffled_repeats=3, n_splits=3, n_boot=100)
    y = real.labels["emotion"].to_numpy().astype(str)
    groups = text_groups(real.labels["text"].tolist())
    folds = nested_folds(y, groups, 3, 0)
    direct = nested_probe(real.xs, y, groups, layers=real.layers, folds=folds)
    np.testing.assert_array_equal(run["probe"].test_pred, direct.test_pred)
    head = run["headline"].set_index("variant")
    assert head.loc["probe", "accuracy"] == pytest.approx(direct.accuracy)
    assert head.loc["probe", "chosen_layers"] == " ".join(map(str, direct.chosen))
    ci = direct.intervals(groups, n_boot=100)["test"]
    assert (head.loc["probe", "acc_lo"], head.loc["probe", "acc_hi"]) == pytest.approx(tuple(ci[0]))
    # the random-weights model: the same rows (paired by id) on the same folds
    _, theirs = paired_layers(real, control)
    ctrl = nested_probe(theirs.xs, y, groups, layers=theirs.layers, folds=folds)
    assert head.loc["random weights", "accuracy"] == pytest.approx(ctrl.accuracy)
    # the shuffled labels: the same procedure at the probe's modal layer, group-permuted labels
    band = shuffled_band([real.layer(direct.modal_layer)], y, groups, repeats=3, layers=[direct.modal_layer],
                         n_splits=3)
    assert head.loc["shuffled labels", "accuracy"] == pytest.approx(band["accuracy_mean"])
    assert head.loc["shuffled labels", "acc_lo"] < head.loc["shuffled labels", "acc_hi"]  # a band
    assert head.loc["shuffled labels", "n_fits"] == 3 * 3  # one refit per outer fold and repeat
    curves = run["curves"]
    assert set(curves["variant"]) == {"probe", "random weights"} and len(curves) == 2 * len(real.layers)
    probe_curve = curves[curves["variant"] == "probe"]
    np.testing.assert_allclose(probe_curve["accuracy"], direct.validation_curve)
    assert probe_curve["chosen"].sum() == 3
    assert run["split"]["sizes"]["test"] == [len(f.test) for f in folds]
    np.testing.assert_array_equal(run["ids"], real.labels["id"].to_numpy())


def test_transfer_by_model_equals_direct_fits(stores):
    authored = {m: load_layers([stores[m, "baseline"]], m) for m in ("tiny-gpt2", "tiny-llama")}
    dev = {m: load_layers([stores[m, "goemotions:dev"]], m) for m in authored}
    transfer, per_class, fits = transfer_by_model(authored, dev, dev, {"tiny-gpt2": 1, "tiny-llama": 0},
                                                  train_name="ge:train", dev_name="ge:dev")
    assert transfer.groupby(["model", "direction"], sort=False).size().index.tolist() == [
        ("tiny-gpt2", "authored -> ge:dev"), ("tiny-gpt2", "ge:train -> authored"),
        ("tiny-llama", "authored -> ge:dev"), ("tiny-llama", "ge:train -> authored")]
    m, ld = "tiny-llama", authored["tiny-llama"]
    forward = transfer_eval(fit_probe(ld.layer(1), ld.labels["emotion"]), dev[m].layer(1), dev[m].labels["emotion"])
    reverse = transfer_eval(fit_probe(dev[m].layer(1), dev[m].labels["emotion"]), ld.layer(1), ld.labels["emotion"])
    rows = transfer[(transfer["model"] == m) & (transfer["layer"] == 1)].set_index("direction")["macro_f1"]
    assert rows["authored -> ge:dev"] == pytest.approx(forward["macro_f1"])
    assert rows["ge:train -> authored"] == pytest.approx(reverse["macro_f1"])
    direct = transfer_eval(fits["tiny-gpt2"][1], dev["tiny-gpt2"].layer(1), dev["tiny-gpt2"].labels["emotion"])
    got = per_class[per_class["model"] == "tiny-gpt2"].set_index("emotion")
    assert (got["layer"] == 1).all() and np.allclose(got["f1"], direct["per_class"]["f1"], equal_nan=True)


class _Run:
    """A stand-in for ``NestedProbe`` with only what the report reads."""

    def __init__(self, chosen, modal):
        self.chosen, self.modal_layer, self.classes = tuple(chosen), modal, ("a", "b", "c", "d")


def _headline():
    rows = []
    for m, acc, rw in (("m1", 0.8, 0.4), ("m2", 0.9, 0.35)):
        rows += [{"model": m, "variant": "probe", "accuracy": acc, "acc_lo": acc - 0.02, "acc_hi": acc + 0.02,
                  "macro_f1": acc - 0.01, "f1_lo": acc - 0.03, "f1_hi": acc + 0.01, "n_fits": 20},
                 {"model": m, "variant": "random weights", "accuracy": rw, "acc_lo": rw - 0.03, "acc_hi": rw + 0.03,
                  "macro_f1": rw, "f1_lo": rw - 0.03, "f1_hi": rw + 0.03, "n_fits": 20},
                 {"model": m, "variant": "shuffled labels", "accuracy": 0.25, "acc_lo": 0.23, "acc_hi": 0.27,
                  "macro_f1": 0.24, "f1_lo": 0.22, "f1_hi": 0.26, "n_fits": 100}]
    return pd.DataFrame(rows)


def test_best_layer_report_summary_and_findings_by_hand():
    runs = {"m1": {"probe": _Run([2, 2, 1], 2), "control": _Run([0, 0, 0], 0), "shuffled": {"repeats": 20}},
            "m2": {"probe": _Run([5, 4, 4], 4), "control": None, "shuffled": {"repeats": 20}}}
    transfer = pd.DataFrame({"model": ["m1"] * 4 + ["m2"] * 2, "layer": [1, 2, 1, 2, 4, 4],
                             "direction": ["authored -> dev"] * 2 + ["train -> authored"] * 2
                             + ["authored -> dev", "train -> authored"], "macro_f1": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    headline = _headline()
    headline = headline[(headline["model"] == "m1") | (headline["variant"] != "random weights")]  # m2: no control
    report = best_layer_report(headline, transfer, runs)
    rounded = json.loads(json.dumps(report), parse_float=lambda v: round(float(v), 9))  # also: written as JSON
    assert rounded["m1"] == ({"layer": 2, "chosen_layers": [2, 2, 1], "accuracy": 0.8, "accuracy_ci": [0.78, 0.82],
                            "macro_f1": 0.79, "macro_f1_ci": [0.77, 0.81], "shuffled_accuracy": 0.25,
                            "shuffled_band": [0.23, 0.27], "shuffled_repeats": 20, "random_weights_accuracy": 0.4,
                            "random_weights_ci": [0.37, 0.43], "random_weights_layers": [0, 0, 0],
                            "transfer_macro_f1": 0.2, "n_classes": 4, "n_fits": 140})
    assert report["m2"]["random_weights_accuracy"] is None and report["m2"]["transfer_macro_f1"] == 0.5
    assert report_summary(report).split("; ")[1] == ("m2: layer 4 (chosen per fold 5, 4, 4), held-out accuracy 0.900 "
                                                     "[0.880, 0.920], shuffled labels 0.250 [0.230, 0.270], "
                                                     "GoEmotions dev macro-F1 0.500")
    f = findings(report, "Probes by layer, with their controls")
    assert [x["finding"] for x in f] == [
        "m1: layer 2 (chosen in 2 of 3 outer folds), held-out accuracy 0.800 [0.780, 0.820] (4 classes, chance 0.25)",
        "m2: layer 4 (chosen in 2 of 3 outer folds), held-out accuracy 0.900 [0.880, 0.920] (4 classes, chance 0.25)"]
    assert f[0]["control"] == ("shuffled labels 0.250 (20 group permutations, band [0.230, 0.270]); random weights "
                               "0.400 [0.370, 0.430]")
    assert {x["figure"] for x in f} == {"Probes by layer, with their controls"}


def test_figure_frames_and_modal_layers():
    headline = _headline().assign(layer=[3, 1, 3, 2, 2, 2])
    curves = pd.DataFrame({"model": ["m1"] * 3 + ["m2"] * 2, "layer": [0, 1, 5, 0, 7]})
    points, band = figure_frames(curves, headline)
    assert points["variant"].tolist() == ["probe, held out", "random weights, held out"] * 2
    assert points["up"].round(6).tolist() == [0.02, 0.03, 0.02, 0.03]
    m1 = band[band["model"] == "m1"]
    assert m1["layer"].tolist() == [0, 5, 0, 5] and m1["accuracy"].tolist() == [0.23, 0.23, 0.27, 0.27]
    assert modal_layers({"a": {"probe": _Run([1], 7)}}) == {"a": 7}


def test_probes_by_model_adds_the_model_column(stores):
    fit = {m: load_layers([stores[m, "baseline"]], m) for m in ("tiny-gpt2", "random:tiny-gpt2")}
    curves, headline, runs = probes_by_model(fit, ["tiny-gpt2"], ["random:tiny-gpt2"], shuffled_repeats=2,
                                             n_splits=3, n_boot=50)
    assert set(curves["model"]) == set(headline["model"]) == set(runs) == {"tiny-gpt2"}
    assert len(headline) == 3
