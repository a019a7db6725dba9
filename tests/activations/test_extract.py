"""Extraction against independent computations: HF hidden states, hand reductions, one-prompt-at-a-time
runs, float32 stores; plus resume after SIGKILL and bad inputs. (Codec, capture, writer, store: their own files.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lib.activations.extract import StoreMismatchError, extract
from lib.activations.names import act_name
from lib.activations.plan import ExtractConfig
from lib.activations.store import open_store
from lib.models.loading import load_model
from lib.models.parity import reference_hf_model
from lib.files import IncompleteResultsError
from lib.text.datasets import load_profile


def _files(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def test_store_matches_hugging_face_and_hand_reductions(tiny, rows, tmp_path):
    """sentence-end, mean and span reductions of blocks.0.hook_resid_post, by hand from HF hidden states."""
    extract(tiny, rows, tmp_path / "s", ExtractConfig(batch_size=5, dtype="float32"), progress=False)
    store = open_store(tmp_path / "s")
    labels = store.labels
    ref = reference_hf_model(tiny)
    enc = tiny.encode(labels["text"].tolist())
    with torch.inference_mode():
        hidden = ref(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                     output_hidden_states=True).hidden_states[1].numpy()
    hook = "blocks.0.hook_resid_post"
    got = {r: store.get(hook, r) for r in ("sentence_end", "mean", "span")}
    tokens, mask = store.tokens(hook)
    for i, row in labels.iterrows():
        n = int(enc.lengths[i])
        h = hidden[i, :n]
        in_span = [j for j, (s, e) in enumerate(enc.offsets[i]) if e > s and e > row.span_start and s < row.span_end]
        assert np.abs(got["sentence_end"][i] - h[-1]).max() < 1e-4
        assert np.abs(got["mean"][i] - h.mean(0)).max() < 1e-4
        assert np.abs(got["span"][i] - h[in_span].mean(0)).max() < 1e-4
        assert mask[i].sum() == n and np.abs(tokens[i, :n] - h).max() < 1e-4
        assert not tokens[i, n:].any()  # padding stored as zeros, masked out


def test_batched_equals_one_prompt_at_a_time(tiny, rows, tmp_path):
    cfg = dict(dtype="float32", per_head=True, token_sites=("*",))
    extract(tiny, rows, tmp_path / "b", ExtractConfig(batch_size=6, **cfg), progress=False)
    extract(tiny, rows, tmp_path / "one", ExtractConfig(batch_size=1, **cfg), progress=False)
    a, b = open_store(tmp_path / "b"), open_store(tmp_path / "one")
    assert a.hooks == b.hooks and "blocks.1.attn.hook_z" in a.hooks
    for hook in a.hooks:
        for red in ("sentence_end", "mean"):
            assert np.abs(a.get(hook, red) - b.get(hook, red)).max() < 1e-4, (hook, red)
        ta, ma = a.tokens(hook)
        tb, mb = b.tokens(hook)
        assert (ma == mb).all() and np.abs(ta - tb).max() < 1e-4


def test_resid_pre_alias_is_exact(rows, tmp_path):
    lm = load_model("tiny-llama", device="cpu")
    extract(lm, rows, tmp_path / "s", ExtractConfig(dtype="float32"), progress=False)
    extract(lm, rows, tmp_path / "pre", ExtractConfig(hooks=("blocks.1.hook_resid_pre",), dtype="float32"),
            progress=False)
    aliased, direct = open_store(tmp_path / "s"), open_store(tmp_path / "pre")
    assert "blocks.1.hook_resid_pre" in aliased.attrs["aliases"]
    assert np.array_equal(aliased.tokens("blocks.1.hook_resid_pre")[0], direct.tokens("blocks.1.hook_resid_pre")[0])


def test_float16_store_close_to_float32(rows, tmp_path):
    lm = load_model("tiny-gpt2", device="cpu")
    m16 = extract(lm, rows, tmp_path / "16", ExtractConfig(), progress=False)
    extract(lm, rows, tmp_path / "32", ExtractConfig(dtype="float32"), progress=False)
    a, b = open_store(tmp_path / "16"), open_store(tmp_path / "32")
    x, y = a.get("blocks.1.hook_resid_post", "mean"), b.get("blocks.1.hook_resid_post", "mean")
    assert (np.linalg.norm(x - y, axis=1) / np.linalg.norm(y, axis=1)).max() < 2e-3
    assert 0 < m16["float16_worst_relative_error"] < 2e-3
    _assert_padding_bits_zero(tmp_path / "16", a)


def _assert_padding_bits_zero(path, store):
    """Padding is stored as +0 bit patterns (never -0 or leftovers), so it compresses away."""
    import zarr

    raw = np.asarray(zarr.open_group(str(path), mode="r")["tokens/hook_resid_post"][:])
    lengths = store.labels["n_tokens"].to_numpy()
    pad = np.arange(raw.shape[2])[None, :] >= lengths[:, None]  # [rows, max_len]
    assert pad.any() and not raw.view(np.uint16)[pad.nonzero()[0], :, pad.nonzero()[1]].any()


def test_float16_tokens_beyond_float16_range(tmp_path, rows):
    """Per-token float16 storage of a residual far beyond 65504: scaled rows, finite, close to float32."""
    lm = load_model("tiny-llama", device="cpu")
    with torch.no_grad():
        lm.bridge.original_model.model.embed_tokens.weight.mul_(1e6)
    m16 = extract(lm, rows, tmp_path / "16", ExtractConfig(batch_size=4), progress=False)
    extract(lm, rows, tmp_path / "32", ExtractConfig(batch_size=4, dtype="float32"), progress=False)
    a, b = open_store(tmp_path / "16"), open_store(tmp_path / "32")
    for layer in range(lm.cfg.n_layers):
        hook = act_name("resid_post", layer)
        (x, mask), (y, _) = a.tokens(hook), b.tokens(hook)
        assert np.abs(y).max() > 65504 and np.isfinite(x).all()
        err = np.linalg.norm(x - y, axis=-1)[mask] / np.linalg.norm(y, axis=-1)[mask]
        assert err.max() < 2e-3
        for red in ("sentence_end", "mean"):
            u, v = a.get(hook, red), b.get(hook, red)
            assert (np.linalg.norm(u - v, axis=1) / np.linalg.norm(v, axis=1)).max() < 2e-3
    assert 0 < m16["float16_worst_relative_error"] < 2e-3
    _assert_padding_bits_zero(tmp_path / "16", a)


def test_resume_after_sigkill_is_byte_identical(tmp_path):
    script = f"""
from lib.settings import apply_hub_policy; apply_hub_policy()
from lib.text.datasets import load_profile
from lib.activations.plan import ExtractConfig
from lib.activations.extract import extract
from lib.models.loading import load_model
import lib.activations.extract as E, time  # _run_batch is looked up in lib.activations.extract
orig = E._run_batch
def slow(*a, **k):
    time.sleep(0.15)
    return orig(*a, **k)
E._run_batch = slow
extract(load_model("tiny-pythia", device="cpu"), load_profile("baseline", max_per_emotion=10, seed=2),
        {str(tmp_path / "killed")!r}, ExtractConfig(batch_size=2), progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    progress = tmp_path / "killed" / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if progress.exists() and json.loads(progress.read_text())["batches_done"] >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists()
    with pytest.raises(IncompleteResultsError, match="unfinished activation store"):
        open_store(tmp_path / "killed")
    lm = load_model("tiny-pythia", device="cpu")
    df = load_profile("baseline", max_per_emotion=10, seed=2)
    resumed = extract(lm, df, tmp_path / "killed", ExtractConfig(batch_size=2), progress=False)
    assert resumed["resumed_at_batch"] >= 4
    extract(lm, df, tmp_path / "clean", ExtractConfig(batch_size=2), progress=False)
    assert _files(tmp_path / "killed") == _files(tmp_path / "clean")


def test_bad_inputs(rows, tmp_path):
    lm = load_model("tiny-gpt2", device="cpu")
    with pytest.raises(ValueError, match=r"'blocks.0.hook_resid_pots' is not a hook of tiny-gpt2"):
        extract(lm, rows, tmp_path / "a", ExtractConfig(hooks=("blocks.0.hook_resid_pots",)), progress=False)
    with pytest.raises(ValueError, match=r"layer\(s\) \[2\] out of range for tiny-gpt2, which has 2 layers"):
        extract(lm, rows, tmp_path / "a", ExtractConfig(layers=(0, 2)), progress=False)
    with pytest.raises(ValueError, match="no rows to extract"):
        extract(lm, rows.iloc[:0], tmp_path / "a", ExtractConfig(), progress=False)
    extract(lm, rows, tmp_path / "s", ExtractConfig(layers=(1,)), progress=False)
    with pytest.raises(StoreMismatchError, match="other settings"):
        extract(lm, rows, tmp_path / "s", ExtractConfig(layers=(0,)), progress=False)


def test_reduction_only_sites_are_scaled_from_their_reductions(tmp_path, rows):
    """A site without per-token storage still survives values beyond float16 (exponent from reductions)."""
    lm = load_model("tiny-llama", device="cpu")
    with torch.no_grad():
        lm.bridge.original_model.model.embed_tokens.weight.mul_(1e6)  # residual far beyond 65504
    extract(lm, rows, tmp_path / "16", ExtractConfig(token_sites=()), progress=False)
    extract(lm, rows, tmp_path / "32", ExtractConfig(token_sites=(), dtype="float32"), progress=False)
    a, b = open_store(tmp_path / "16"), open_store(tmp_path / "32")
    x, y = a.get("blocks.0.hook_resid_post", "mean"), b.get("blocks.0.hook_resid_post", "mean")
    assert np.abs(y).max() > 65504 and np.isfinite(x).all()
    assert (np.linalg.norm(x - y, axis=1) / np.linalg.norm(y, axis=1)).max() < 2e-3


def test_a_folder_that_is_not_a_store_is_never_touched(rows, tmp_path):
    lm = load_model("tiny-gpt2", device="cpu")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    with pytest.raises(StoreMismatchError, match=r"not empty and is not an activation store .*'notes.txt'.* nothing was changed"):
        extract(lm, rows, mine, ExtractConfig(layers=(1,)), progress=False, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "a user's file"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreMismatchError, match="is a file, not a folder"):
        extract(lm, rows, tmp_path / "file", ExtractConfig(layers=(1,)), progress=False)
    assert (tmp_path / "file").read_text() == "x"


def test_overwrite_replaces_only_a_store(rows, tmp_path):
    lm = load_model("tiny-gpt2", device="cpu")
    extract(lm, rows, tmp_path / "s", ExtractConfig(layers=(1,)), progress=False)
    logs = []
    extract(lm, rows, tmp_path / "s", ExtractConfig(layers=(0,)), progress=False, overwrite=True, log=logs.append)
    assert {h.split(".")[1] for h in open_store(tmp_path / "s").hooks} == {"0"}
    assert any("replacing it (--overwrite)" in line for line in logs)


def test_resumed_manifest_carries_the_float16_error_measured_before(tmp_path, monkeypatch):
    """A store resumed at batch 9 reports the worst error of batches 0 and 8, as an uninterrupted run does,
    not 0.0 from a run that measured nothing."""
    import lib.activations.extract as E

    lm = load_model("tiny-pythia", device="cpu")
    df = load_profile("baseline", max_per_emotion=6, seed=2)  # 24 rows, batches of 2: 12 batches
    config = ExtractConfig(batch_size=2, layers=(0,))
    clean = extract(lm, df, tmp_path / "clean", config, progress=False)
    calls = {"n": 0}
    orig = E._run_batch

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 11:  # the shape probe, batches 0..8, then batch 9 is interrupted
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(E, "_run_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract(lm, df, tmp_path / "cut", config, progress=False)
    monkeypatch.setattr(E, "_run_batch", orig)
    resumed = extract(lm, df, tmp_path / "cut", config, progress=False)
    assert resumed["resumed_at_batch"] == 9 and resumed["float16_batches_measured"] == 2
    assert resumed["float16_worst_relative_error"] == clean["float16_worst_relative_error"] > 0
    assert _files(tmp_path / "cut") == _files(tmp_path / "clean")


def test_sigkill_at_random_points_then_resume_equals_a_clean_run(tmp_path):
    """Killed three times at random moments (seeded), even before the first batch; the last rerun completes and
    the store equals an uninterrupted one byte for byte."""
    script = f"""
from lib.settings import apply_hub_policy; apply_hub_policy()
from lib.text.datasets import load_profile
from lib.activations.plan import ExtractConfig
from lib.activations.extract import extract
from lib.models.loading import load_model
import lib.activations.writer as W, time
orig = W.ChunkEncoder._write_chunk
def slow(*a, **k):
    time.sleep(0.01)
    return orig(*a, **k)
W.ChunkEncoder._write_chunk = slow
extract(load_model("tiny-pythia", device="cpu"), load_profile("baseline", max_per_emotion=10, seed=2),
        {str(tmp_path / "killed")!r}, ExtractConfig(batch_size=2), progress=False)
"""
    rng = np.random.default_rng(7)
    progress = tmp_path / "killed" / "progress.json"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
        before = json.loads(progress.read_text())["batches_done"] if progress.exists() else -1
        wait_batches = int(rng.integers(0, 4))  # 0: killed while starting or within the first batch
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if progress.exists() and json.loads(progress.read_text())["batches_done"] >= before + wait_batches:
                    break
            except ValueError:
                pass
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.2)))  # somewhere inside the next batch's chunk writes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists()
    lm = load_model("tiny-pythia", device="cpu")
    df = load_profile("baseline", max_per_emotion=10, seed=2)
    extract(lm, df, tmp_path / "killed", ExtractConfig(batch_size=2), progress=False)
    extract(lm, df, tmp_path / "clean", ExtractConfig(batch_size=2), progress=False)
    assert _files(tmp_path / "killed") == _files(tmp_path / "clean")
    open_store(tmp_path / "killed").verify()
