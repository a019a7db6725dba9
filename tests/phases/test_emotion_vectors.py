"""Phase-03 glue against direct computations on small stores of tiny models."""
from __future__ import annotations

import numpy as np
import pytest

from lib.activations.runs import obtain_stores
from lib.geometry.directions import diff_of_means
from lib.phases.emotion_vectors import (best_layer, directions_array, directions_by_layer, fit_layers, probe_curves,
                                 probe_directions, projection_table, reading_layers, transfer_table)
from lib.activations.layerwise import load_layers, paired_layers, stratified_sample
from lib.geometry.probes import transfer_eval


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("ev")
    return obtain_stores(["tiny-gpt2", "random:tiny-gpt2", "tiny-llama"], ["baseline", "goemotions:dev"], "",
                         scratch, max_per_emotion=12, seed=0, log=lambda *_: None)


def test_load_layers_equals_store_reads(stores):
    ld = load_layers([stores["tiny-gpt2", "baseline"], stores["tiny-gpt2", "goemotions:dev"]], "tiny-gpt2")
    a, b = stores["tiny-gpt2", "baseline"], stores["tiny-gpt2", "goemotions:dev"]
    for layer, x in zip(ld.layers, ld.xs):
        want = np.concatenate([a.get(f"blocks.{layer}.hook_resid_post"), b.get(f"blocks.{layer}.hook_resid_post")])
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
    want = store.get("blocks.1.hook_resid_post")[[pos[i] for i in pa.labels["id"]]]
    assert np.array_equal(pb.layer(1), want)


def test_span_reading_uses_the_token_mean_for_neutral_rows(stores):
    store = stores["tiny-gpt2", "baseline"]
    ld = reading_layers([store], "tiny-gpt2", "span")
    neutral = (store.labels["emotion"] == "neutral").to_numpy()
    span, mean = store.get("blocks.0.hook_resid_post", "span"), store.get("blocks.0.hook_resid_post", "mean")
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
