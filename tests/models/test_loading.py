"""Model loading against independent computations: the Hugging Face model, plain PyTorch."""
from __future__ import annotations

import pytest
import torch

from lib.models.encoding import load_encoder
from lib.models.loading import load_model
from lib.models.registry import ModelUnavailableError, UnknownModelError, resolve_device, resolve_dtype, resolve_spec
from lib.models.weights import state_dict_sha256
from lib.models.parity import batch_consistency, greedy_continuation, logit_parity, reference_hf_model
from lib.models.tiny import build_tiny_model


def test_logits_match_hugging_face_on_a_padded_batch(tiny, texts):
    enc = tiny.encode(texts)
    assert enc.lengths.min() < enc.lengths.max(), "the batch must actually contain padding"
    assert logit_parity(tiny, texts) < 1e-4


def test_padding_does_not_change_real_tokens(tiny, texts):
    assert batch_consistency(tiny, texts) < 1e-4


def test_padding_positions_can_hold_anything(tiny, texts):
    """Changing the pad token id must not move any real-token logit (the mask really masks)."""
    enc = tiny.encode(texts)
    real = enc.attention_mask.bool()
    with torch.inference_mode():
        a = tiny.logits(enc)
        enc.input_ids[~real] = 7
        b = tiny.logits(enc)
    assert (a[real] - b[real]).abs().max() < 1e-5


def test_resid_post_hook_equals_hugging_face_hidden_state(tiny, texts):
    """blocks.0.hook_resid_post is the HF hidden state after block 0 (hidden_states[1])."""
    enc = tiny.encode(texts)
    ref = reference_hf_model(tiny)
    with torch.inference_mode():
        _, cache = tiny.bridge.run_with_cache(enc.input_ids, attention_mask=enc.attention_mask,
                                              names_filter=["blocks.0.hook_resid_post"])
        hf = ref(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True)
    real = enc.attention_mask.bool()
    diff = (cache["blocks.0.hook_resid_post"][real] - hf.hidden_states[1][real]).abs().max()
    assert diff < 1e-4


def test_right_padding_and_lengths(tiny, texts):
    enc = tiny.encode(texts)
    assert torch.equal(enc.attention_mask.sum(1), enc.lengths)
    for row, n in zip(enc.attention_mask, enc.lengths):
        assert row[:n].all() and not row[n:].any()
    assert enc.last_index.tolist() == (enc.lengths - 1).tolist()


def test_bos_policy():
    gpt2, llama = load_encoder("tiny-gpt2"), load_encoder("tiny-llama")
    g, l = gpt2.encode(["Thank you"]), llama.encode(["Thank you"])
    bos = gpt2.tokenizer.bos_token_id
    assert g.input_ids[0, 0] == bos and g.offsets[0][0] == (0, 0)
    assert l.input_ids[0, 0] != bos  # like SmolLM2: no BOS, matching Hugging Face
    assert g.lengths[0] == l.lengths[0] + 1


def test_offsets_cover_the_text():
    enc = load_encoder("tiny-llama").encode(["Thanks a lot, friend."])
    spans = enc.offsets[0]
    assert "".join("Thanks a lot, friend."[s:e] for s, e in spans) == "Thanks a lot, friend."


def test_identity_fields(tiny):
    ident = tiny.identity()
    expected_kv = {"tiny-llama": 2, "tiny-gemma3": 1}.get(tiny.name, 4)
    assert (ident["n_layers"], ident["n_heads"], ident["n_key_value_heads"]) == (2, 4, expected_kv)
    assert ident["d_model"] == 64 and ident["d_head"] == 16
    assert ident["weights_sha256"] == state_dict_sha256(build_tiny_model(tiny.name, seed=0))
    assert ident["weights_sha256"] != state_dict_sha256(build_tiny_model(tiny.name, seed=1))
    assert ident["has_resid_mid"] == (tiny.name != "tiny-pythia")


def test_attn_result_quirk_matches_the_bridge(tiny, texts):
    """supports_attn_result is what set_use_attn_result actually does, and results sum to z @ W_O."""
    enc = tiny.encode(texts)
    if not tiny.quirks["supports_attn_result"]:
        with pytest.raises(NotImplementedError):
            tiny.bridge.set_use_attn_result(True)
        return
    tiny.bridge.set_use_attn_result(True)
    try:
        with torch.inference_mode():
            _, cache = tiny.bridge.run_with_cache(enc.input_ids, attention_mask=enc.attention_mask,
                                                  names_filter=["blocks.0.attn.hook_result", "blocks.0.attn.hook_z"])
    finally:
        tiny.bridge.set_use_attn_result(False)
    result = cache["blocks.0.attn.hook_result"]  # [batch, pos, head, d_model]
    with torch.inference_mode():
        by_hand = torch.einsum("bphd,hdm->bphm", cache["blocks.0.attn.hook_z"], tiny.bridge.blocks[0].attn.W_O.detach())
    assert (result - by_hand).abs().max() < 1e-5


def test_hook_names_follow_quirks(tiny):
    hooks = tiny.bridge.hook_dict
    assert "blocks.1.attn.hook_z" in hooks and "blocks.1.hook_resid_post" in hooks
    assert ("blocks.0.hook_resid_mid" in hooks) == tiny.quirks["has_resid_mid"]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-pythia", "tiny-gpt-neo", "tiny-llama", "tiny-gemma3"])
def test_greedy_continuation_matches_hugging_face_generate(name):
    lm = load_model(name, device="cpu")
    ref = reference_hf_model(lm)
    enc = lm.encode(["Thank you so much for"])
    with torch.inference_mode():
        out = ref.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8,
                           do_sample=False, pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=None)
    expected = lm.tokenizer.decode(out[0, enc.input_ids.shape[1]:])
    assert greedy_continuation(lm, "Thank you so much for", 8, stop_at_eos=False) == expected


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModelError, match="smollm2-135m") as err:
        resolve_spec("smolm2")
    assert "gpt2" in str(err.value)


def test_hub_model_offline_and_not_cached_says_so(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="work offline.*smollm2-135m"):
        load_model("gpt2", device="cpu")


def test_bad_device_and_dtype():
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="float32"):
        resolve_dtype("float64")
    with pytest.raises(ValueError, match="non-empty list"):
        load_encoder("tiny-gpt2").encode("a single string")


def test_a_hub_id_loads_offline_from_the_local_cache(tmp_path):
    """The hub path (from_pretrained + boot_transformers by id) on a hand-built HF cache, offline.

    Runs in a subprocess: huggingface_hub reads HF_HUB_CACHE when first imported.
    """
    import os
    import subprocess
    import sys

    script = f"""
import pathlib
from lib.settings import apply_hub_policy; apply_hub_policy()
from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
snap = pathlib.Path({str(tmp_path)!r}) / "models--acme--tiny-gpt2" / "snapshots" / ("0" * 40)
snap.mkdir(parents=True)
build_tiny_model("tiny-gpt2").save_pretrained(snap)
build_tiny_tokenizer().save_pretrained(snap)
(snap.parent.parent / "refs").mkdir()
(snap.parent.parent / "refs" / "main").write_text("0" * 40)
from lib.models.loading import load_model
from lib.models.weights import state_dict_sha256
from lib.models.parity import logit_parity
lm = load_model("acme/tiny-gpt2", device="cpu")
assert lm.spec.kind == "hub" and lm.weights_sha256 == state_dict_sha256(build_tiny_model("tiny-gpt2"))
print("PARITY", logit_parity(lm, ["Thank you", "Sorry about that, truly."]))
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split("PARITY")[1]) < 1e-4


@pytest.mark.parametrize("base", ["tiny-llama", "tiny-gpt2"])
def test_random_weights_control_keeps_architecture_and_tokenizer(base, texts):
    real, control = load_model(base, device="cpu"), load_model(f"random:{base}", device="cpu")
    again = load_model(f"random:{base}", device="cpu")
    assert control.identity()["kind"] == "random" and control.identity()["source"] == base
    for key in ("n_layers", "n_heads", "d_model", "d_vocab", "architecture"):
        assert control.identity()[key] == real.identity()[key], key
    assert control.weights_sha256 != real.weights_sha256  # other weights ...
    assert again.weights_sha256 == control.weights_sha256  # ... the same ones for the same seed
    assert torch.equal(control.encode(texts).input_ids, real.encode(texts).input_ids)
    assert logit_parity(control, texts) < 1e-4  # the bridge still equals an independent HF model


def test_random_prefix_applies_once():
    with pytest.raises(UnknownModelError, match="applies once"):
        resolve_spec("random:random:tiny-gpt2")
    with pytest.raises(UnknownModelError, match="unknown model"):
        resolve_spec("random:no-such-model")
