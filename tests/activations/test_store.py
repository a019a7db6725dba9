"""Store reads against the raw arrays: lazy chunk reads, the float16 decode (bit for bit against
plain numpy), and reads that ask for what a store lacks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.activations.extract import extract
from lib.activations.plan import ExtractConfig
from lib.activations.store import StoreError, open_store
from lib.models.loading import load_model


def test_lazy_reads_touch_only_their_chunks(rows, tmp_path):
    lm = load_model("tiny-gpt2", device="cpu")
    extract(lm, rows, tmp_path / "s", ExtractConfig(batch_size=4, token_sites=("*",)), progress=False)
    store = open_store(tmp_path / "s")
    full = store.get("blocks.1.hook_mlp_out", "sentence_end")
    anger = store.get("blocks.1.hook_mlp_out", "sentence_end", emotion="anger")
    assert np.array_equal(anger, full[store.labels["emotion"].to_numpy() == "anger"])
    assert np.array_equal(store.get("blocks.1.hook_mlp_out", rows=slice(4, 8)), full[4:8])
    x, labels = store.select("blocks.1.hook_mlp_out", emotion="anger")
    assert np.array_equal(x, anger) and (labels["emotion"] == "anger").all() and len(labels) == len(x)
    # delete every per-token chunk except layer 1's first row chunk: that read still works
    tokens_dir = tmp_path / "s" / "tokens" / "hook_mlp_out" / "c"
    keep = tokens_dir / "0" / "1"
    for f in tokens_dir.rglob("*"):
        if f.is_file() and keep not in f.parents:
            f.unlink()
    t, m = store.tokens("blocks.1.hook_mlp_out", rows=slice(0, 4))
    assert t.shape[0] == 4 and m.any()


def test_bad_reads_are_named(rows, tmp_path):
    lm = load_model("tiny-gpt2", device="cpu")
    extract(lm, rows, tmp_path / "s", ExtractConfig(layers=(1,)), progress=False)
    store = open_store(tmp_path / "s")
    with pytest.raises(StoreError, match=r"'blocks.0.hook_resid_post' is not in the store"):
        store.get("blocks.0.hook_resid_post")
    with pytest.raises(StoreError, match=r"keeps every token only for sites "
                                         r"\['hook_resid_pre', 'hook_resid_post'\], not 'hook_mlp_out'"):
        store.tokens("blocks.1.hook_mlp_out")
    with pytest.raises(StoreError, match=r"emotion filter \['joy'\] not in this store's emotions"):
        store.get("blocks.1.hook_resid_post", emotion="joy")
    chunk = next((tmp_path / "s" / "sentence_end" / "hook_resid_post").rglob("c/*/*/*"))
    chunk.write_bytes(b"garbage" * 10)
    with pytest.raises(StoreError, match=r"checksum do not match.*corrupted or truncated; run `python -m lib.activations verify"):
        open_store(tmp_path / "s").get("blocks.1.hook_resid_post")


def test_float16_reads_equal_numpy_decode_bit_for_bit(rows, tmp_path):
    """Reads undo the per-row scaling exactly as ``raw.astype(float32) * 2.0**scale`` does in plain numpy,
    for rows far beyond float16's range (k > 0), NaN spans, tokens, aliases and row subsets."""
    import zarr

    lm = load_model("tiny-llama", device="cpu")
    with torch.no_grad():
        lm.bridge.original_model.model.embed_tokens.weight.mul_(1e6)  # residual far beyond 65504
    has_span = np.arange(len(rows)) % 3 > 0  # the others without a span (NaN, as in GoEmotions)
    rows = rows.assign(span_start=rows["span_start"].where(has_span), span_end=rows["span_end"].where(has_span))
    extract(lm, rows, tmp_path / "s", ExtractConfig(batch_size=4, per_head=True), progress=False)
    store = open_store(tmp_path / "s")
    group = zarr.open_group(str(tmp_path / "s"), mode="r")
    pick = np.array([7, 0, 3])
    scales_seen = []
    for hook in store.hooks:
        site, li = store._resolve(hook)
        scale = np.asarray(group[f"scale/{site}"][:, li]).astype(np.float32)
        scales_seen.append(scale.max())
        for red in ("sentence_end", "mean", "span"):
            raw = np.asarray(group[f"{red}/{site}"][:, li]).astype(np.float32)
            want = raw * np.exp2(scale).reshape((-1,) + (1,) * (raw.ndim - 1))
            got = store.get(hook, red)
            assert got.dtype == np.float32 and got.tobytes() == want.tobytes(), (hook, red)
            assert store.get(hook, red, rows=pick).tobytes() == want[pick].tobytes(), (hook, red)
        if site in store.attrs["token_sites"]:
            raw = np.asarray(group[f"tokens/{site}"][:, li]).astype(np.float32)
            want = raw * np.exp2(scale).reshape(-1, 1, 1)
            got, _ = store.tokens(hook)
            assert got.tobytes() == want[:, :got.shape[1]].tobytes(), hook
    assert max(scales_seen) > 0
    assert np.isnan(store.get("blocks.1.hook_resid_post", "span")).any()
