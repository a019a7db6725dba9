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
from lib.geometry.probes import probe_direction
from lib.geometry.subspaces import emotion_subspace, joint_subspace
from lib.phases.emotion_probes import fit_layers, probe_directions
from lib.phases.emotion_vectors import (directions_array, directions_by_layer, directions_by_model, finite_rows,
                                        method_agreement, reading_layers, readings_by_model, save_directions,
                                        stability_by_layer, stability_by_model, stability_long, subspace_dims)


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


def test_span_reading_reads_every_rows_own_span(stores):
    store = stores["tiny-gpt2", "baseline"]
    ld = reading_layers([store], "tiny-gpt2", "span")
    span = store.get(act_name("resid_post", 0), "span")
    neutral = (store.labels["emotion"] == "neutral").to_numpy()
    assert neutral.any() and np.isfinite(span[neutral]).all()  # authored neutral rows have spans
    np.testing.assert_array_equal(ld.layer(0), span)  # every row its span, neutral rows included
    assert not np.array_equal(span[neutral], store.get(act_name("resid_post", 0), "mean")[neutral])


def test_rows_without_a_span_are_dropped_and_counted(stores):
    m = "tiny-gpt2"
    authored = {m: load_layers([stores[m, "baseline"]], m)}
    data, counts = readings_by_model(authored, stores, profiles=["baseline", "goemotions:dev"],
                                     readings=("sentence_end", "span"))
    n_dev, n_base = len(stores[m, "goemotions:dev"].labels), len(stores[m, "baseline"].labels)  # dev: no spans
    span = counts[counts["reading"] == "span"]
    assert span["dropped"].sum() == n_dev and span["rows"].sum() == n_base == len(data[m, "span"].labels)
    assert counts[counts["reading"] == "sentence_end"]["dropped"].sum() == 0
    assert data[m, "sentence_end"] is authored[m]
    kept, dropped = finite_rows(load_layers([stores[m, "goemotions:dev"]], m, reduction="span"))
    assert len(kept.labels) == 0 and sum(dropped.values()) == n_dev


def test_directions_by_layer_match_direct_diff_of_means(stores):
    ld = load_layers([stores["tiny-gpt2", "baseline"]], "tiny-gpt2")
    dirs = directions_by_layer(ld)
    for layer in ld.layers:
        assert np.allclose(dirs[layer]["anger", "mean_vs_neutral"], diff_of_means(ld.layer(layer), ld.labels, "anger"))
    arr, layers, keys = directions_array(dirs)
    assert arr.shape == (len(layers), len(keys), ld.xs[0].shape[1])
    assert np.allclose(np.linalg.norm(arr, axis=-1), 1, atol=1e-5)


def test_stratified_sample_keeps_proportions():
    import pandas as pd

    labels = pd.DataFrame({"emotion": ["a"] * 600 + ["b"] * 200})
    idx = stratified_sample(labels, 400, seed=1)
    counts = labels.iloc[idx]["emotion"].value_counts()
    assert counts["a"] == 300 and counts["b"] == 100 and len(set(idx)) == len(idx)
    assert np.array_equal(stratified_sample(labels, None), np.arange(800))


# --- the notebook's per-model glue ---------------------------------------------------------------------------

def test_directions_by_model_and_method_agreement(stores):
    m = "tiny-gpt2"
    authored = {m: load_layers([stores[m, "baseline"]], m)}
    fits = {m: fit_layers(authored[m])}
    data, _ = readings_by_model(authored, stores, profiles=["baseline"], readings=("sentence_end", "span"))
    dirs = directions_by_model(data, {m: probe_directions(fits[m])}, methods=("mean_vs_neutral", "pca"))
    assert list(dirs) == [(m, "sentence_end"), (m, "span")]
    x, labels = authored[m].layer(1), authored[m].labels
    d = dirs[m, "sentence_end"][1][1]
    np.testing.assert_allclose(d["anger", "pca"], emotion_directions(x, labels, ("pca",))["anger", "pca"])
    w = probe_direction(fits[m][1], "anger")
    assert d["anger", "probe"] @ w == pytest.approx(1.0)  # the probe's weights, oriented (here already)
    assert ("anger", "probe") not in dirs[m, "span"][1][0]  # probe directions join the sentence-end reading only
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
    """Four classes in two profiles (first half baseline), emotion offsets of 3 sd, unit noise."""
    rng = np.random.default_rng(seed)
    emotions = np.tile(["gratitude", "anger", "apology", "neutral"], n // 4)
    labels = pd.DataFrame({"emotion": emotions, "profile": np.repeat(["baseline", "extended"], n // 2)})
    offsets = {e: rng.normal(size=d) * 3 for e in ("gratitude", "anger", "apology")}
    xs = [np.stack([offsets.get(e, np.zeros(d)) for e in emotions]) + rng.normal(size=(n, d)) for _ in layers]
    return LayerData("m", "hook_resid_post", "sentence_end", list(layers), xs, labels)


def test_stability_by_model_equals_stability_by_layer_on_each_profile():
    authored = {"a": _profiled(0), "b": _profiled(1)}
    got = stability_by_model(authored, ["baseline", "extended"], var_threshold=0.5, max_k=3, n_splits=2, seed=3,
                             n_null=10)
    ld = authored["b"]
    base, ext = ld.subset(np.arange(12)), ld.subset(np.arange(12, 24))  # the profiles, by position
    want = stability_by_layer(base, ext, ld, var_threshold=0.5, max_k=3, n_splits=2, seed=3, n_null=10)
    pd.testing.assert_frame_equal(got[got["model"] == "b"].drop(columns="model").reset_index(drop=True), want)
    assert got["model"].tolist() == ["a"] * len(want) + ["b"] * len(want)
    assert len(want) == 2 * 4 * 2 * 2  # layers x subspaces x kinds x comparisons
    row = want[(want["layer"] == 1) & (want["subspace"] == "anger") & (want["kind"] == "within")]
    assert (row["k"] == emotion_subspace(ld.layer(1), ld.labels, "anger", 0.5, 3).k).all()
    row = want[(want["layer"] == 0) & (want["subspace"] == "joint") & (want["kind"] == "between")]
    assert (row["k"] == joint_subspace(ld.layer(0), ld.labels, 0.5, 3, kind="between").k).all()
    assert want["beats_null"].dtype == bool and want[["mean_angle", "null_mean_angle_p05"]].le(90).all().all()
    long = stability_long(want.assign(model="b"))
    assert set(long["series"]) == {"split halves", "profiles", "null, 5th percentile"}
    assert len(long) == len(want) * 3 // 2


def test_subspace_dims_say_what_k_measures():
    ld = _profiled(2, n=80, d=8)
    dims = subspace_dims(ld, 1, var_threshold=0.6, max_k=5)
    within = dims[(dims["subspace"] == "joint") & (dims["kind"] == "within")]
    fit = joint_subspace(ld.layer(1), ld.labels, 0.6, 5)
    assert (within["k"] == fit.k).all() and within["explained"].tolist() == pytest.approx(fit.explained[:5].tolist())
    assert set(dims["measures"]) == {"within-class variance", "class-mean offsets from neutral"}
    anger = dims[(dims["subspace"] == "anger") & (dims["kind"] == "between")].iloc[0]
    x, e = ld.layer(1).astype(np.float64), ld.labels["emotion"].to_numpy()
    offset = x[e == "anger"].mean(0) - x[e == "neutral"].mean(0)
    assert anger["offset_norm"] == pytest.approx(np.linalg.norm(offset)) and anger["k"] == 1
    spread = x[e == "anger"] - x[e == "anger"].mean(0)
    assert anger["within_rms"] == pytest.approx(np.sqrt((spread ** 2).sum(1).mean()))


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

