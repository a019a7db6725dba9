"""The settings of a fine-tune, checked when made, and which modules LoRA adapts per architecture.

>>> FinetuneConfig().method, FinetuneConfig(method="full").key()["method"]
('lora', 'full')
>>> DEFAULT_TARGETS["LlamaForCausalLM"]
('q_proj', 'k_proj', 'v_proj', 'o_proj')
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from lib.errors import UserError

__all__ = ["FinetuneError", "FinetuneConfig", "DEFAULT_TARGETS", "resolve_targets", "lr_factor"]


class FinetuneError(UserError, ValueError):
    """A fine-tune setting, model or output folder that cannot be used, named with what would be valid."""


# LoRA's default: the attention projections (queries, keys, values, output) of every block.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "LlamaForCausalLM": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "Gemma3ForCausalLM": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "GPT2LMHeadModel": ("attn.c_attn", "attn.c_proj"),  # "c_proj" alone would also adapt the MLP's
    "GPTNeoXForCausalLM": ("attention.query_key_value", "attention.dense"),
    "GPTNeoForCausalLM": ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.out_proj"),
}


def _int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise FinetuneError(f"{name}={value!r}; valid values are integers >= {low}")


def _num(name: str, value, low: float, high: float | None = None, *, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = ok and (value > low if open_low else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"> {low}" if open_low else f">= {low}"
        raise FinetuneError(f"{name}={value!r}; valid values are numbers {bound}" + (f" and < {high}" if high else ""))


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tune. ``method``: ``lora`` (peft adapters on ``target_modules``, merged at the end) or ``full``
    (every parameter). AdamW with ``weight_decay``; the learning rate warms up linearly over ``warmup_steps``
    and then decays linearly towards 0 at ``steps``; gradients clipped to norm ``max_grad_norm`` (0: off).
    ``max_text_tokens`` is recorded (the examples are encoded with it); ``checkpoint_every`` steps a
    checkpoint is written (0: never)."""

    method: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: DEFAULT_TARGETS of the model's architecture
    steps: int = 120
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    max_text_tokens: int = 48
    seed: int = 0
    checkpoint_every: int = 20

    def __post_init__(self):
        if self.method not in ("lora", "full"):
            raise FinetuneError(f"method={self.method!r}; valid values are 'lora' and 'full'")
        _int("lora_rank", self.lora_rank, 1)
        _num("lora_alpha", self.lora_alpha, 0.0, open_low=True)
        _num("lora_dropout", self.lora_dropout, 0.0, 1.0)
        if self.target_modules is not None:
            tm = self.target_modules
            if isinstance(tm, str) or not tm or not all(isinstance(t, str) and t for t in tm):
                raise FinetuneError(f"target_modules={tm!r}; give a non-empty list of module names such as "
                                    f"['q_proj', 'v_proj'], or None for the architecture's default")
            object.__setattr__(self, "target_modules", tuple(tm))
        _int("steps", self.steps, 1)
        _int("batch_size", self.batch_size, 1)
        _num("learning_rate", self.learning_rate, 0.0, open_low=True)
        _num("weight_decay", self.weight_decay, 0.0)
        _int("warmup_steps", self.warmup_steps, 0)
        _num("max_grad_norm", self.max_grad_norm, 0.0)
        _int("max_text_tokens", self.max_text_tokens, 1)
        _int("seed", self.seed, 0)
        _int("checkpoint_every", self.checkpoint_every, 0)

    def key(self) -> dict:
        """The settings that change the result (all but ``checkpoint_every``), as JSON values."""
        out = asdict(self)
        out.pop("checkpoint_every")
        return json.loads(json.dumps(out))


def resolve_targets(hf, config: FinetuneConfig) -> list[str]:
    """The LoRA target module names for ``hf`` (the config's or the architecture's default); an error names
    any that match no linear layer, with the linear layers' names.

    >>> from lib.models.tiny import build_tiny_model
    >>> resolve_targets(build_tiny_model("tiny-gpt2"), FinetuneConfig())
    ['attn.c_attn', 'attn.c_proj']
    """
    from transformers.pytorch_utils import Conv1D

    names = config.target_modules
    if names is None:
        archs = list(getattr(hf.config, "architectures", None) or []) + [type(hf).__name__]
        known = [a for a in archs if a in DEFAULT_TARGETS]
        if not known:
            raise FinetuneError(f"no default LoRA target modules for {archs[0]}; set target_modules (defaults "
                                f"known for {sorted(DEFAULT_TARGETS)})")
        names = DEFAULT_TARGETS[known[0]]
    linear = [n for n, m in hf.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    missing = [t for t in names if not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:
        suffixes = sorted({".".join(n.split(".")[-2:]) for n in linear} | {n.split(".")[-1] for n in linear})
        raise FinetuneError(f"target module {missing[0]!r} matches no linear layer of {type(hf).__name__}; "
                            f"valid names (a module's last part or last two parts): {suffixes}")
    return list(names)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the learning rate at 0-based ``step``: linear warm-up, then linear decay.

    >>> [round(lr_factor(k, 6, 2), 3) for k in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    """
    if step < warmup:
        return (step + 1) / warmup
    return (steps - step) / max(1, steps - warmup)
