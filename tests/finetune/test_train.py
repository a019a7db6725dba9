"""The fine-tune: LoRA merged as by hand, learning a planted mapping, a saved folder that loads, every
architecture, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib.finetune.config import DEFAULT_TARGETS, FinetuneConfig, FinetuneError, resolve_targets
from lib.finetune.objective import encode_examples, score
from lib.finetune.train import batch_indices, finetune, merged_model, prepare_model
from lib.models.loading import load_hf_model
from lib.models.registry import resolve_spec
from lib.models.tiny import TINY_NAMES, build_tiny_model, build_tiny_tokenizer
from lib.models.weights import state_dict_sha256
from tests.finetune.data import planted


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def train_dev(tok):
    return encode_examples(tok, *planted(12, seed=0)), encode_examples(tok, *planted(8, seed=1))


def _randomize_lora_b(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("name, module", [("tiny-llama", "self_attn.o_proj"), ("tiny-gpt2", "attn.c_attn")])
def test_lora_merge_is_w_plus_alpha_over_r_b_a(name, module):
    hf = build_tiny_model(name)
    cfg = FinetuneConfig(lora_rank=4, lora_alpha=12.0)
    model, params, _ = prepare_model(hf, cfg)
    assert params and all("lora_" in n for n in params)
    _randomize_lora_b(model)
    block = model.get_base_model().get_submodule({"tiny-llama": "model.layers.0", "tiny-gpt2": "transformer.h.0"}[name])
    lora_mod = block.get_submodule(module)
    a, b = lora_mod.lora_A["default"].weight.detach().clone(), lora_mod.lora_B["default"].weight.detach().clone()
    w = lora_mod.base_layer.weight.detach().clone()
    merged = merged_model(model, cfg)
    delta = (12.0 / 4) * (b @ a)  # [out, in]
    want = w + (delta.T if name == "tiny-gpt2" else delta)  # GPT-2's Conv1D keeps [in, out]
    got = merged.get_submodule({"tiny-llama": "model.layers.0", "tiny-gpt2": "transformer.h.0"}[name] + "." + module)
    torch.testing.assert_close(got.weight, want, rtol=1e-6, atol=1e-6)
    assert not torch.equal(got.weight, w)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_every_architecture_trains_saves_and_reloads_as_a_local_model(tok, name, tmp_path):
    hf = build_tiny_model(name)
    before = state_dict_sha256(hf)
    ex = encode_examples(tok, *planted(3), prepend_bos=resolve_spec(name).prepend_bos)
    model, params, targets = prepare_model(hf, FinetuneConfig())
    assert targets == list(DEFAULT_TARGETS[type(hf).__name__])
    n_blocks = hf.config.num_hidden_layers if hasattr(hf.config, "num_hidden_layers") else hf.config.n_layer
    assert len(params) == 2 * len(targets) * n_blocks  # A and B on each target of each block, nothing else
    _randomize_lora_b(model)
    with torch.no_grad():  # the merged model computes what the adapted one did
        ids = torch.tensor([ex.prompts[0]])
        adapted = model(input_ids=ids).logits
        torch.testing.assert_close(merged_model(model, FinetuneConfig())(input_ids=ids).logits, adapted,
                                   rtol=1e-4, atol=1e-5)
    r = finetune(hf, tok, ex, FinetuneConfig(steps=3, batch_size=4, checkpoint_every=2), tmp_path / "ft")
    assert state_dict_sha256(hf) == before, "the caller's model must not change"
    assert r.weights_sha256 != before and len(r.losses) == 3 and np.isfinite(r.losses).all()
    files = sorted(p.name for p in (tmp_path / "ft").iterdir())
    assert "model.safetensors" in files and "manifest.json" in files and "checkpoints" not in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not (tmp_path / "ft.partial").exists()
    reloaded, _ = load_hf_model(resolve_spec(str(tmp_path / "ft")))
    assert state_dict_sha256(reloaded) == r.weights_sha256 == r.manifest["weights_sha256"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, r.model(input_ids=ids).logits)


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-gpt2"])
def test_a_full_fine_tune_of_tied_embeddings_keeps_them_tied_and_reloads(tok, name, tmp_path):
    hf = build_tiny_model(name)
    assert hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    ex = encode_examples(tok, *planted(3), prepend_bos=True)
    r = finetune(hf, tok, ex, FinetuneConfig(method="full", steps=3, batch_size=4), tmp_path / "ft")
    assert r.manifest["n_trainable_params"] == sum(p.numel() for p in hf.parameters())  # tied weight once
    assert r.model.get_output_embeddings().weight is r.model.get_input_embeddings().weight
    assert not torch.equal(r.model.get_input_embeddings().weight, hf.get_input_embeddings().weight)
    reloaded, _ = load_hf_model(resolve_spec(str(tmp_path / "ft")))
    assert state_dict_sha256(reloaded) == r.weights_sha256


@pytest.mark.parametrize("method, lr, steps", [("lora", 2e-2, 80), ("full", 3e-3, 40)])  # 3e-2 overshoots on 2 threads
def test_the_loss_falls_on_a_learnable_mapping(train_dev, tok, method, lr, steps, tmp_path):
    train, dev = train_dev
    hf = build_tiny_model("tiny-llama")
    s0, d0 = score(hf, train), score(hf, dev)
    assert d0["correct"].mean() < 0.4  # a random model does not know the mapping
    cfg = FinetuneConfig(method=method, steps=steps, batch_size=8, learning_rate=lr, warmup_steps=4)
    r = finetune(hf, tok, train, cfg, tmp_path / "ft")
    s1, d1 = score(r.model, train), score(r.model, dev)
    assert s1["loss"].mean() < s0["loss"].mean() - 2.0
    assert s1["correct"].mean() >= 0.85 and d1["correct"].mean() >= 0.6  # held-out rows too (chance: 0.25)
    assert np.mean(r.losses[-5:]) < np.mean(r.losses[:5]) - 2.0


def test_a_learning_rate_too_small_to_learn_fails_the_same_check(train_dev, tok, tmp_path):
    train, _ = train_dev
    hf = build_tiny_model("tiny-llama")
    r = finetune(hf, tok, train, FinetuneConfig(steps=20, learning_rate=1e-7), tmp_path / "ft")
    assert score(r.model, train)["loss"].mean() > score(hf, train)["loss"].mean() - 0.1


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    n, bs = 10, 4
    stream = np.concatenate([batch_indices(n, bs, 7, k) for k in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) == sorted(stream[10:].tolist())
    assert not np.array_equal(stream[:10], stream[10:])
    assert np.array_equal(batch_indices(n, bs, 7, 3), stream[12:16])
    assert not np.array_equal(batch_indices(n, bs, 8, 0), batch_indices(n, bs, 7, 0))


def test_a_finished_out_dir_is_reused_and_a_different_config_is_refused(train_dev, tok, tmp_path):
    train, _ = train_dev
    hf = build_tiny_model("tiny-llama")
    cfg = FinetuneConfig(steps=3, batch_size=4)
    first = finetune(hf, tok, train, cfg, tmp_path / "ft")
    calls = []
    again = finetune(hf, tok, train, cfg, tmp_path / "ft", progress=calls.append)
    assert again.reused and not calls and again.weights_sha256 == first.weights_sha256
    assert again.losses == first.losses
    with pytest.raises(FinetuneError, match=r"\['learning_rate'\] differ"):
        finetune(hf, tok, train, FinetuneConfig(steps=3, batch_size=4, learning_rate=5e-4), tmp_path / "ft")
    with pytest.raises(FinetuneError, match=r"\['data_sha256'\] differ"):
        finetune(hf, tok, train.subset(range(len(train))[::-1]), cfg, tmp_path / "ft")
    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    assert manifest["config"]["steps"] == 3 and manifest["base_weights_sha256"] == state_dict_sha256(hf)
    assert set(manifest["packages"]) >= {"torch", "transformers", "peft"} and manifest["tokens_seen"] > 0
    assert manifest["cost_per_step"] == {"forwards": 1, "backwards": 1, "rows": 4}


def test_a_folder_it_did_not_make_is_never_overwritten(train_dev, tok, tmp_path):
    train, _ = train_dev
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FinetuneError, match="not made by a fine-tune"):
        finetune(build_tiny_model("tiny-llama"), tok, train, FinetuneConfig(steps=1), foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_gguf_style_model_with_a_quantizer_is_saved_without_it(train_dev, tok, tmp_path):
    train, _ = train_dev
    hf = build_tiny_model("tiny-llama")
    hf.hf_quantizer = object()  # what a GGUF load leaves behind; save_pretrained refuses such a model
    hf.config.quantization_config = {"quant_method": "gguf"}
    hf.config.architectures = None
    r = finetune(hf, tok, train, FinetuneConfig(steps=1, batch_size=2), tmp_path / "ft")
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert "quantization_config" not in saved and saved["architectures"] == ["LlamaForCausalLM"]
    assert getattr(r.model, "hf_quantizer", None) is None


@pytest.mark.parametrize("kw, match", [
    ({"method": "qlora"}, "method='qlora'"),
    ({"lora_rank": 0}, "lora_rank=0"),
    ({"steps": 0}, "steps=0"),
    ({"learning_rate": 0}, "learning_rate=0"),
    ({"lora_dropout": 1.0}, "lora_dropout=1.0"),
    ({"target_modules": "q_proj"}, "target_modules='q_proj'"),
])
def test_bad_settings_get_one_clear_error(kw, match):
    with pytest.raises(FinetuneError, match=match):
        FinetuneConfig(**kw)


def test_unknown_target_modules_name_the_valid_ones():
    hf = build_tiny_model("tiny-llama")
    with pytest.raises(FinetuneError, match=r"'qkv' matches no linear layer.*'self_attn.q_proj'"):
        resolve_targets(hf, FinetuneConfig(target_modules=("q_proj", "qkv")))
    assert resolve_targets(hf, FinetuneConfig(target_modules=["mlp.up_proj"])) == ["mlp.up_proj"]
