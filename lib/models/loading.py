"""Model loading: a ``ModelSpec`` becomes a TransformerBridge over eager-attention HF weights.

>>> load_model("tiny-gpt2", device="cpu").cfg.n_layers
2
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import torch

from lib.models.encoding import Encoded, TextEncoder, prepare_tokenizer
from lib.models.registry import ARCH_QUIRKS, ModelSpec, check_available, resolve_device, resolve_dtype, resolve_spec
from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
from lib.settings import apply_hub_policy
from lib.models.weights import ensure_cached, state_dict_sha256, verify_cached_weights

__all__ = ["LoadedModel", "load_model", "load_hf_model"]


def load_hf_model(spec: ModelSpec, *, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A fresh Hugging Face model (eager attention, eval mode) and tokenizer for ``spec``."""
    apply_hub_policy()
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.disable_progress_bar()  # per-tensor "Loading weights" bars clutter reports
    if spec.kind == "random":
        return _random_model(resolve_spec(spec.source), dtype=dtype, seed=seed)
    if spec.kind == "tiny":
        return build_tiny_model(spec.name, seed=seed, dtype=dtype), build_tiny_tokenizer()
    if spec.kind == "gguf":
        where = str(ensure_cached(spec.name))
    elif spec.kind == "hub":
        check_available(spec)
        where = spec.source
    else:
        where = spec.source
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(where)
    return model.eval(), tokenizer


def _config_source(spec: ModelSpec) -> str:
    if spec.kind == "gguf":
        return str(ensure_cached(spec.name))
    if spec.kind == "hub":
        check_available(spec)
    return spec.source


def _random_model(base: ModelSpec, *, dtype: torch.dtype, seed: int):
    """``base``'s architecture and tokenizer, weights drawn by its own initialiser under ``seed``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if base.kind == "tiny":
        return build_tiny_model(base.name, seed=seed + 1, dtype=dtype), build_tiny_tokenizer()
    where = _config_source(base)
    config = AutoConfig.from_pretrained(where)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    return model.eval(), AutoTokenizer.from_pretrained(where)


@dataclass
class LoadedModel:
    """A TransformerBridge with the tokenizer and policy used to feed it."""

    spec: ModelSpec
    bridge: object
    encoder: TextEncoder
    device: str
    dtype: torch.dtype
    weights_sha256: str  # of the Hugging Face state dict as loaded, before the bridge wraps it
    seed: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def architecture(self) -> str:
        return self.bridge.original_model.config.architectures[0]

    @property
    def quirks(self) -> dict[str, bool]:
        return {"supports_attn_result": True, "has_resid_mid": True, **ARCH_QUIRKS.get(self.architecture, {})}

    def encode(self, texts: list[str]) -> Encoded:
        """Tokenize ``texts`` with this model's BOS policy into a right-padded batch on its device."""
        return self.encoder.encode(texts, device=self.device)

    def logits(self, enc: Encoded) -> torch.Tensor:
        """Logits [batch, pos, vocab] of a padded batch (padding positions are meaningless)."""
        return self.bridge(enc.input_ids, attention_mask=enc.attention_mask)

    def identity(self) -> dict:
        """What a manifest records about this model."""
        cfg = self.cfg
        ident = {
            "name": self.name,
            "kind": self.spec.kind,
            "source": self.spec.source,
            "architecture": self.architecture,
            "weights_sha256": self.weights_sha256,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": self.device,
            "n_layers": int(cfg.n_layers),
            "n_heads": int(cfg.n_heads),
            "n_key_value_heads": int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
            "d_model": int(cfg.d_model),
            "d_head": int(cfg.d_head),
            "d_vocab": int(cfg.d_vocab),
            "n_params": int(sum(p.numel() for p in self.bridge.original_model.parameters())),
            "prepend_bos": bool(self.spec.prepend_bos or self.encoder.tokenizer_adds_bos),
            "padding_side": "right",
            **self.quirks,
        }
        if self.spec.kind == "gguf":
            cached = json.loads((ensure_cached(self.name) / "identity.json").read_text())
            ident["gguf_sha256"] = cached["gguf_sha256"]
            ident["source"] = cached["source"]
        if self.spec.kind in ("tiny", "random"):
            ident["seed"] = self.seed
        return ident


def load_model(name: str, *, device: str = "auto", dtype: str = "float32", seed: int = 0) -> LoadedModel:
    """Load ``name`` (see ``REGISTRY``) as a TransformerBridge over eager-attention HF weights.

    >>> lm = load_model("tiny-gpt2", device="cpu")
    >>> lm.cfg.n_layers, lm.cfg.n_heads
    (2, 4)
    """
    from transformer_lens.model_bridge import TransformerBridge

    spec = resolve_spec(name)
    device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    hf_model, tokenizer = load_hf_model(spec, dtype=torch_dtype, seed=seed)
    tokenizer = prepare_tokenizer(tokenizer)
    weights_sha256 = state_dict_sha256(hf_model)
    if spec.kind == "gguf" and torch_dtype == torch.float32:
        verify_cached_weights(spec.name, weights_sha256)
    base = resolve_spec(spec.source) if spec.kind == "random" else spec
    boot_name = str(ensure_cached(base.name)) if base.kind == "gguf" else base.source
    # The bridge may swap or reconfigure the tokenizer it is given; ours stays as set above.
    bridge = TransformerBridge.boot_transformers(boot_name, hf_model=hf_model.to(device),
                                                 tokenizer=copy.deepcopy(tokenizer),
                                                 device=device, dtype=torch_dtype)
    bridge.eval()
    return LoadedModel(spec=spec, bridge=bridge, encoder=TextEncoder(spec, tokenizer), device=device,
                       dtype=torch_dtype, weights_sha256=weights_sha256, seed=seed)
