"""Phase-03 glue against direct computations on small stores of tiny models."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib.activations.layerwise import LayerData, load_layers, paired_layers, stratified_sample
from lib.activations.names import act_name
from lib.activations.runs import obtain_stores
from lib.geometry.directions import diff_of_means, emotion_directions
from lib.geometry.probes import fit_probe, probe_direction, transfer_eval
from lib.phases.emotion_vectors import (at_best_layers, best_layer, best_layer_report, best_layers, directions_array,
                                        directions_by_layer, directions_by_model, fit_layers, method_agreement,
                                        probe_curves, probe_directions, projection_table, reading_layers,
                                        report_summary, save_directions, stability_by_layer, stability_by_model,
                                        transfer_by_model, transfer_table)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("ev")
    return obtain_stores(["tiny-gpt2", "random:tiny-gpt2", "tiny-llama"], ["baseline", "goemotions:dev"], "",
                         scratch, max_per_emotion=12, seed=0, log=lambda *_: None)


def test_load_layers_equals_store_reads(stores):
    ld = load_layers([stores["tiny-gpt2", "baseline"], stores["tiny-gpt2", "goemotions:dev"]], "tiny-gpt2")
    a, b = stores["tiny-gpt2", "baseline"], stores["tiny-gpt2", "goemotions:dev"]
    for layer, x in zip(ld.layers, ld.xs):
        want = np.concatenate([a.get(act_name("resid_post", layer)), b.get(act_name("resid_post", layer))])
        assert np.array_equal(x, want)
    assert len(ld.labels) == len(a.labels) + len(b.labels)
    with pytest.raises(ValueError, match="not stored"):
        load_layers([a], "tiny-gpt2", layers=[7])
    with pytest.raises(ValueError, match="not in every store"):
        load_layers([a], "tiny-gpt2", site="hook_mlp_out")


def test_paired_layers_align_rows_by_id_across_tokenizers(stores):
    gpt2 = load_layers([stores["tiny-gpt2", "baseline"]], "tiny-gpt2")
    llama = load_layers([stores["tiny-llama", "baseline"]], "tiny-llama")
    pa, pb = paired_layers(gpt2, llama)
    assert (pa.labels["id"].to_numpy() == pb.labels["id"].to_numpy()).all()
    # row i of pb is the llama store's row with that id
    store = stores["tiny-llama", "baseline"]
    pos = {i: k for k, i in enumerate(store.labels["id"])}
    want = store.get(act_name("resid_post", 1))[[pos[i] for i in pa.labels["id"]]]
    assert np.array_equal(pb.layer(1), want)


def test_span_reading_uses_the_token_mean_for_neutral_rows(stores):
    store = stores["tiny-gpt2", "baseline"]
    ld = reading_layers([store], "tiny-gpt2", "span")
    neutral = (store.labels["emotion"] == "neutral").to_numpy()
    span, mean = store.get(act_name("resid_post", 0), "span"), store.get(act_name("resid_post", 0), "mean")
    assert np.array_equal(ld.layer(0)[neutral], mean[neutral])
    assert np.array_equal(ld.layer(0)[~neutral], span[~neutral])
    assert np.isfinite(ld.layer(0)).all()


def test_directions_by_layer_match_direct_diff_of_means(stores):
    ld = load_layers([stores["tiny-gpt2", "baseline"]], "tiny-gpt2")
    dirs = directions_by_layer(ld)
    for layer in ld.layers:
        assert np.allclose(dirs[layer]["anger", "mean_vs_neutral"], diff_of_means(ld.layer(layer), ld.labels, "anger"))
    arr, layers, keys = directions_array(dirs)
    assert arr.shape == (len(layers), len(keys), ld.xs[0].shape[1])
    assert np.allclose(np.linalg.norm(arr, axis=-1), 1, atol=1e-5)
    proj = projection_table(ld, dirs)
    row = proj[(proj["layer"] == 1) & (proj["method"] == "mean_vs_neutral") & (proj["direction_emotion"] == "anger")
               & (proj["emotion"] == "anger")].iloc[0]
    x = ld.layer(1)[(ld.labels["emotion"] == "anger").to_numpy()]
    assert row["mean"] == pytest.approx(float((x @ dirs[1]["anger", "mean_vs_neutral"]).mean()), rel=1e-6)


def test_probe_curves_and_transfer(stores):
    real = load_layers([stores["tiny-gpt2", "baseline"]], "tiny-gpt2")
    control = load_layers([stores["random:tiny-gpt2", "baseline"]], "random:tiny-gpt2")
    curves = probe_curves(real, control, shuffled_repeats=1, n_splits=3, progress=False)
    assert set(curves["variant"]) == {"probe", "shuffled labels", "random weights"}
    assert len(curves) == 3 * len(real.layers)
    assert best_layer(curves) in real.layers
    fits = fit_layers(real)
    dev = load_layers([stores["tiny-gpt2", "goemotions:dev"]], "tiny-gpt2")
    table, full = transfer_table(fits, dev)
    direct = transfer_eval(fits[1], dev.layer(1), dev.labels["emotion"].to_numpy())
    assert table.set_index("layer").loc[1, "macro_f1"] == pytest.approx(direct["macro_f1"])
    dirs = probe_directions(fits)
    assert set(dirs[0]) == {("gratitude", "probe"), ("anger", "probe"), ("apology", "probe")}


def test_stratified_sample_keeps_proportions():
    import pandas as pd

    labels = pd.DataFrame({"emotion": ["a"] * 600 + ["b"] * 200})
    idx = stratified_sample(labels, 400, seed=1)
    counts = labels.iloc[idx]["emotion"].value_counts()
    assert counts["a"] == 300 and counts["b"] == 100 and len(set(idx)) == len(idx)
    assert np.array_equal(stratified_sample(labels, None), np.arange(800))


# --- the notebook's per-model glue ------------------------------------------------------------------------------

def _curves():
    """Two models' probe curves: m1 peaks at layer 1, m2 ties at layers 0 and 2 (the earlier wins)."""
    rows = []
    for m, accs in (("m1", [0.5, 0.9, 0.7]), ("m2", [0.8, 0.6, 0.8])):
        for layer, acc in enumerate(accs):
            for variant, a in (("probe", acc), ("shuffled labels", 0.25 + layer / 100), ("random weights", 0.4)):
                rows.append({"layer": layer, "variant": variant, "accuracy": a, "acc_lo": a - 0.05,
                             "acc_hi": a + 0.05, "macro_f1": a - 0.1, "model": m})
    return pd.DataFrame(rows)


def test_best_layers_and_report_by_hand():
    curves = _curves()
    best = best_layers(curves, ["m1", "m2"])
    assert best == {"m1": 1, "m2": 0}
    at_best = at_best_layers(curves, best)
    want = [i for i, r in curves.iterrows() if r["layer"] == best[r["model"]]]
    assert at_best.index.tolist() == want and len(at_best) == 6
    assert at_best_layers(curves, {"m1": 1})["model"].unique().tolist() == ["m1"]
    transfer = pd.DataFrame({"model": ["m1"] * 4 + ["m2"] * 4, "layer": [0, 1, 0, 1] * 2,
                             "direction": ["authored -> dev"] * 2 + ["train -> authored"] * 2
                             + ["authored -> dev"] * 2 + ["train -> authored"] * 2,
                             "macro_f1": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]})
    report = best_layer_report(at_best, transfer, best)
    assert report == {"m1": {"best_layer": 1, "accuracy": 0.9, "accuracy_ci": [0.9 - 0.05, 0.9 + 0.05],
                             "shuffled_accuracy": 0.26, "random_weights_accuracy": 0.4, "transfer_macro_f1": 0.2},
                      "m2": {"best_layer": 0, "accuracy": 0.8, "accuracy_ci": [0.8 - 0.05, 0.8 + 0.05],
                             "shuffled_accuracy": 0.25, "random_weights_accuracy": 0.4, "transfer_macro_f1": 0.5}}
    json.dumps(report)  # the report is written as JSON
    assert report_summary(report).split("; ")[1] == ("m2: best layer 0, accuracy 0.800 [0.750, 0.850], shuffled "
                                                     "0.250, random weights 0.400, GoEmotions dev macro-F1 0.500")


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


def test_directions_by_model_and_method_agreement(stores):
    m = "tiny-gpt2"
    authored = {m: load_layers([stores[m, "baseline"]], m)}
    fits = {m: fit_layers(authored[m])}
    dirs = directions_by_model(authored, stores, fits, profiles=["baseline"], readings=("sentence_end", "span"),
                               methods=("mean_vs_neutral", "pca"))
    assert list(dirs) == [(m, "sentence_end"), (m, "span")]
    x, labels = authored[m].layer(1), authored[m].labels
    d = dirs[m, "sentence_end"][1][1]
    np.testing.assert_allclose(d["anger", "pca"], emotion_directions(x, labels, ("pca",))["anger", "pca"])
    w = probe_direction(fits[m][1], "anger")
    assert d["anger", "probe"] @ w == pytest.approx(1.0)  # the probe's weights, oriented (here already)
    span = reading_layers([stores[m, "baseline"]], m, "span")
    np.testing.assert_allclose(dirs[m, "span"][1][0]["apology", "mean_vs_neutral"],
                               diff_of_means(span.layer(0), span.labels, "apology"))
    agree = method_agreement(dirs)
    assert list(agree.columns) == ["model", "reading", "layer", "emotion", "method", "cosine"]
    n_keys = sum(len(d) for _, by_layer in dirs.values() for d in by_layer.values())
    assert len(agree) == n_keys
    row = agree[(agree["reading"] == "sentence_end") & (agree["layer"] == 1) & (agree["emotion"] == "anger")
                & (agree["method"] == "pca")]["cosine"].item()
    ref = d["anger", "mean_vs_neutral"]
    assert row == pytest.approx(float(np.dot(d["anger", "pca"], ref)
                                      / np.linalg.norm(d["anger", "pca"]) / np.linalg.norm(ref)))
    assert np.allclose(agree.loc[agree["method"] == "mean_vs_neutral", "cosine"], 1.0)


def _profiled(seed, n=24, d=6, layers=(0, 1)):
    rng = np.random.default_rng(seed)
    emotions = np.tile(["gratitude", "anger", "apology", "neutral"], n // 4)
    labels = pd.DataFrame({"emotion": emotions, "profile": np.repeat(["baseline", "extended"], n // 2)})
    offsets = {e: rng.normal(size=d) * 3 for e in ("gratitude", "anger", "apology")}
    xs = [np.stack([offsets.get(e, np.zeros(d)) for e in emotions]) + rng.normal(size=(n, d)) for _ in layers]
    return LayerData("m", "hook_resid_post", "sentence_end", list(layers), xs, labels)


def test_stability_by_model_equals_stability_by_layer_on_each_profile():
    authored = {"a": _profiled(0), "b": _profiled(1)}
    got = stability_by_model(authored, ["baseline", "extended"], var_threshold=0.5, max_k=3, n_splits=2, seed=3)
    ld = authored["b"]
    base, ext = ld.subset(np.arange(12)), ld.subset(np.arange(12, 24))  # the profiles, by position
    want = stability_by_layer(base, ext, ld, var_threshold=0.5, max_k=3, n_splits=2, seed=3)
    pd.testing.assert_frame_equal(got[got["model"] == "b"].drop(columns="model").reset_index(drop=True), want)
    assert got["model"].tolist() == ["a"] * len(want) + ["b"] * len(want)


def test_save_directions_writes_the_stacked_array_and_index(tmp_path):
    dirs = {("random:m", "sentence_end"): (None, {0: {("anger", "pca"): np.array([1.0, 0.0]),
                                                      ("anger", "mean_vs_neutral"): np.array([0.6, 0.8])},
                                                  3: {("anger", "pca"): np.array([0.0, 1.0]),
                                                      ("anger", "mean_vs_neutral"): np.array([0.8, 0.6])}})}
    save_directions(tmp_path, dirs, ["random:m"], "hook_resid_post")
    arr = np.load(tmp_path / "directions--random-m.npy")
    want = np.array([[[0.6, 0.8], [1.0, 0.0]], [[0.8, 0.6], [0.0, 1.0]]], dtype=np.float32)  # keys sorted
    assert arr.dtype == np.float32 and np.array_equal(arr, want)
    index = json.loads((tmp_path / "directions--random-m.json").read_text())
    assert index == {"model": "random:m", "site": "hook_resid_post", "reading": "sentence_end", "layers": [0, 3],
                     "keys": [["anger", "mean_vs_neutral"], ["anger", "pca"]], "shape": [2, 2, 2]}

