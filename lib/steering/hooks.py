"""Steering the residual stream of a Hugging Face causal LM while it runs or generates.

The steered site is the output hidden state of decoder block ``layer`` (what block ``layer + 1`` reads;
TransformerLens' ``blocks.{layer}.hook_resid_post``), x [batch, pos, d_model]. A ``Steering`` edits x at
the positions it names; with u = vector / ||vector|| and s = strength, per row and position:

- ``add``:    x' = x + s * vector;
- ``ablate``: x' = x - s * (x.u) u            (s = 1: the projection on u is removed);
- ``clamp``:  x' = x + s * (c - x.u) u        (s = 1: the projection is set to c = ``clamp_value``);
- ``norm_preserving``: x' is then rescaled to ||x|| (per position).

Every operator is x + s * delta(x), so s = 0 is the clean model: rows whose strength is 0 are not edited
at all (bit-identical outputs, not x + 0 * delta), and s interpolates ablate and clamp toward the full edit.
``strength`` may be a tensor [batch] and ``vector`` [batch, d_model], so a grid of settings runs as the rows
of one batch.

Positions, for a prompt batch of attention mask ``prompt_mask`` [batch, T] (left padding allowed, 0 = pad):
absolute position j of a row is ``prompt`` if j < T and the mask is 1 there, ``generated`` if j >= T, and
``both`` is their union; padding is never edited. A forward's positions are j = past + arange(pos), where
past is the KV cache's length when the forward starts (read by a pre-hook on the base model, as the models
themselves compute position ids), so the rule holds on cached ``generate`` steps (the new token only), on
uncached steps (the whole sequence again) and on a plain forward over prompt + continuation.

The steering hook runs before any other forward hook on its block (``prepend=True``): transformers 5 records
``output_hidden_states`` with its own forward hooks on the blocks, installed at the model's first forward,
and a hook appended after them would leave ``hidden_states`` reporting the unsteered output of the steered
layer while the later layers read the steered one.

>>> from lib.models.tiny import build_tiny_model
>>> hf = build_tiny_model("tiny-llama")
>>> ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
>>> s = Steering(layer=0, vector=torch.ones(64), strength=0.0, operator="add", positions="both")
>>> with torch.no_grad(), steer(hf, [s], mask):
...     steered = hf(ids).logits
>>> torch.equal(steered, hf(ids).logits)  # strength 0: the clean model, bit for bit
True
>>> s.hook_name
'blocks.0.hook_resid_post'
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Sequence

import torch

from lib.activations.names import act_name, check_layers
from lib.models.archs import block_output, blocks_of

__all__ = ["OPERATORS", "POSITIONS", "Steering", "steer", "steered_positions", "apply_steering",
           "real_positions", "mean_residual_norm", "residual_norms", "generate_steered"]

OPERATORS = ("add", "ablate", "clamp")
POSITIONS = ("prompt", "generated", "both")


@dataclass(frozen=True, kw_only=True, eq=False)
class Steering:
    """One edit of block ``layer``'s output: ``operator`` with ``vector`` [d_model] or [batch, d_model] at
    ``strength`` (a float or a tensor [batch]) on the ``positions`` named (module docstring)."""

    layer: int
    vector: torch.Tensor  # [d_model] or [batch, d_model]
    strength: float | torch.Tensor  # scalar or [batch]
    operator: str  # one of OPERATORS
    positions: str  # one of POSITIONS
    clamp_value: float = 0.0
    norm_preserving: bool = False

    def __post_init__(self):
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"Steering.layer must be an int >= 0, got {self.layer!r}")
        if self.operator not in OPERATORS:
            raise ValueError(f"Steering.operator must be one of {OPERATORS}, got {self.operator!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"Steering.positions must be one of {POSITIONS}, got {self.positions!r}")
        _check_vector(self.vector, needs_direction=self.operator != "add")
        _check_strength(self.strength, self.vector)
        if not isinstance(self.clamp_value, (int, float)) or not math.isfinite(self.clamp_value):
            raise ValueError(f"Steering.clamp_value must be a finite float, got {self.clamp_value!r}")
        if not isinstance(self.norm_preserving, bool):
            raise ValueError(f"Steering.norm_preserving must be True or False, got {self.norm_preserving!r}")

    @property
    def hook_name(self) -> str:
        """The steered site in the project's activation namespace."""
        return act_name("resid_post", self.layer)

    @property
    def rows(self) -> int | None:
        """The batch size that per-row settings fix (None: one setting for every row)."""
        if isinstance(self.strength, torch.Tensor) and self.strength.ndim == 1:
            return len(self.strength)
        return len(self.vector) if self.vector.ndim == 2 else None


def _check_vector(vector, needs_direction: bool) -> None:
    if not isinstance(vector, torch.Tensor) or vector.ndim not in (1, 2) or not vector.is_floating_point():
        what = f"shape {tuple(vector.shape)}, dtype {vector.dtype}" if isinstance(vector, torch.Tensor) else \
            type(vector).__name__
        raise ValueError(f"Steering.vector must be a float tensor [d_model] or [batch, d_model], got {what}")
    if not torch.isfinite(vector).all():
        raise ValueError("Steering.vector must be finite, got NaN or inf entries")
    if needs_direction and bool((vector.norm(dim=-1) == 0).any()):
        raise ValueError("Steering.vector must be non-zero (every row) for ablate and clamp, which use its direction")


def _check_strength(strength, vector: torch.Tensor) -> None:
    if isinstance(strength, torch.Tensor):
        if strength.ndim > 1 or not torch.isfinite(strength.float()).all():
            raise ValueError(f"Steering.strength must be a finite float or tensor [batch], got shape "
                             f"{tuple(strength.shape)}")
        if strength.ndim == 1 and vector.ndim == 2 and len(strength) != len(vector):
            raise ValueError(f"Steering.strength has {len(strength)} rows but Steering.vector has {len(vector)}; "
                             f"per-row settings need one row per batch row")
    elif isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise ValueError(f"Steering.strength must be a finite float or tensor [batch], got {strength!r}")


def steered_positions(prompt_mask: torch.Tensor, past: int, length: int, positions: str) -> torch.Tensor:
    """Bool [batch, length]: which of a forward's positions (absolute j = past + 0..length-1) the rule
    ``positions`` edits, for a prompt batch of attention mask ``prompt_mask`` [batch, T] (0 = padding).

    >>> m = torch.tensor([[0, 1, 1], [1, 1, 1]])  # row 0 is left-padded
    >>> steered_positions(m, 0, 4, "both").int().tolist()  # the prompt and one generated token
    [[0, 1, 1, 1], [1, 1, 1, 1]]
    >>> steered_positions(m, 3, 1, "prompt").int().tolist()  # a cached step: position 3, generated
    [[0], [0]]
    """
    T = prompt_mask.shape[1]
    j = past + torch.arange(length, device=prompt_mask.device)  # [length]
    in_prompt = (j < T)[None, :] & prompt_mask.bool()[:, j.clamp(max=T - 1)]  # [batch, length]
    generated = (j >= T)[None, :].expand_as(in_prompt)
    return {"prompt": in_prompt, "generated": generated, "both": in_prompt | generated}[positions]


def _per_row(value: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """``value`` [d] or [batch, d] as [batch or 1, 1, d], cast to ``like``'s dtype and device."""
    value = value.to(device=like.device, dtype=like.dtype)
    return value.reshape(batch if value.ndim == 2 else 1, 1, -1)


def apply_steering(x: torch.Tensor, steering: Steering, where: torch.Tensor) -> torch.Tensor:
    """x [batch, pos, d_model] edited by ``steering`` where ``where`` [batch, pos] is True and its row's
    strength is non-zero; every other entry is x's own (``x`` itself when nothing is edited)."""
    batch = x.shape[0]
    s = steering.strength
    if isinstance(s, torch.Tensor):
        s = s.to(device=x.device, dtype=x.dtype)
        where = where & (s != 0).reshape(-1, 1)
        s = s.reshape(-1, 1, 1)
    elif s == 0:
        return x
    if not bool(where.any()):
        return x
    v = _per_row(steering.vector, batch, x)  # [batch or 1, 1, d]
    if steering.operator == "add":
        edited = x + s * v
    else:
        u = v / v.norm(dim=-1, keepdim=True)
        target = steering.clamp_value if steering.operator == "clamp" else 0.0
        edited = x + s * (target - (x * u).sum(-1, keepdim=True)) * u
    if steering.norm_preserving:
        new_norm = edited.norm(dim=-1, keepdim=True)
        scale = torch.where(new_norm > 0, x.norm(dim=-1, keepdim=True) / new_norm.clamp_min(1e-30), 1.0)
        edited = edited * scale
    return torch.where(where[..., None], edited, x)


class _Past:
    """The KV cache length at the start of the current forward (set by ``_record_past``)."""

    value: int = 0


def _record_past(module, args, kwargs, *, past: _Past) -> None:
    cache = kwargs.get("past_key_values")
    past.value = int(cache.get_seq_length()) if cache is not None else 0


def _steer_hook(module, args, output, *, steerings: Sequence[Steering], prompt_mask: torch.Tensor, past: _Past):
    """Forward hook on one block: its output hidden states edited by ``steerings`` in order."""
    x = block_output(output)  # [batch, pos, d_model]
    if x.shape[0] != prompt_mask.shape[0]:
        raise ValueError(f"steer: a forward of batch {x.shape[0]} under a prompt_mask of batch "
                         f"{prompt_mask.shape[0]}; run the batch whose prompt mask was given")
    mask = prompt_mask.to(x.device)
    new = x
    for s in steerings:
        new = apply_steering(new, s, steered_positions(mask, past.value, x.shape[1], s.positions))
    if new is x:
        return None
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _check_batch(steerings: Sequence[Steering], batch: int) -> None:
    for i, s in enumerate(steerings):
        if s.rows is not None and s.rows != batch:
            raise ValueError(f"steerings[{i}] has per-row settings for {s.rows} rows but prompt_mask has "
                             f"{batch} rows")


@contextlib.contextmanager
def steer(model, steerings: Sequence[Steering], prompt_mask: torch.Tensor) -> Iterator[None]:
    """While open, every forward of ``model`` (a Hugging Face causal LM, also under ``generate``) has its
    residual stream edited by ``steerings`` (composed in list order per layer), for the prompt batch of
    attention mask ``prompt_mask`` [batch, T]. All hooks are removed on exit, also on errors."""
    steerings = list(steerings)
    if prompt_mask.ndim != 2:
        raise ValueError(f"prompt_mask must be [batch, T] (1 = token, 0 = padding), got shape "
                         f"{tuple(prompt_mask.shape)}")
    blocks = blocks_of(model)
    check_layers([s.layer for s in steerings], len(blocks), type(model).__name__)
    _check_batch(steerings, prompt_mask.shape[0])
    by_layer: dict[int, list[Steering]] = {}
    for s in steerings:
        by_layer.setdefault(s.layer, []).append(s)
    past, handles = _Past(), []
    try:
        if by_layer:
            handles.append(model.base_model.register_forward_pre_hook(partial(_record_past, past=past),
                                                                      with_kwargs=True))
        for layer, group in sorted(by_layer.items()):
            hook = partial(_steer_hook, steerings=group, prompt_mask=prompt_mask, past=past)
            handles.append(blocks[layer].register_forward_hook(hook, prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [batch, T] that count real tokens from 0 whatever the padding, so a padded row reads what
    it would alone (models with learned absolute positions, GPT-2 and GPT-Neo, need this).

    >>> real_positions(torch.tensor([[0, 1, 1], [1, 1, 1]])).tolist()
    [[0, 0, 1], [0, 1, 2]]
    """
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def mean_residual_norm(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int, *,
                       skip_first: bool = False) -> float:
    """Mean ||x|| over the real tokens (``attention_mask`` 1) of block ``layer``'s output x, for
    ``input_ids`` [batch, T] (left or right padded: position ids count real tokens only, so each row reads
    what it would alone): the unit in which callers may give an ``add`` strength. ``skip_first`` leaves out
    each row's first real token, whose norm is often tens of times the rest (the attention sink's massive
    activations: 22,800 against 176 at SmolLM2-135M's block 15), so the mean is that of a typical token."""
    return residual_norms(model, input_ids, attention_mask, [layer], skip_first=skip_first)[layer]


def residual_norms(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int], *,
                   skip_first: bool = False) -> dict[int, float]:
    """``mean_residual_norm`` of every block in ``layers`` from one forward pass: {layer: mean norm}."""
    blocks = blocks_of(model)
    layers = sorted({int(x) for x in layers})
    check_layers(layers, len(blocks), type(model).__name__)
    real = attention_mask.bool()
    if skip_first:
        real = real & (attention_mask.cumsum(1) > 1)
    if not bool(real.any()):
        raise ValueError("no token left to average: every row has at most one real token and skip_first=True")
    seen, handles = {}, []
    for layer in layers:
        def keep(module, args, output, layer=layer):
            seen[layer] = block_output(output).norm(dim=-1).float()  # [batch, T]
        handles.append(blocks[layer].register_forward_hook(keep))
    positions = real_positions(attention_mask)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions.to(input_ids.device))
    finally:
        for h in handles:
            h.remove()
    return {layer: seen[layer][real.to(seen[layer].device)].mean().item() for layer in layers}


def _left_padded(tokenizer, prompts: Sequence[str]):
    """``prompts`` tokenized as one left-padded batch (the tokenizer's padding side is restored)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side


def generate_steered(model, tokenizer, prompts: Sequence[str], steerings: Sequence[Steering], *, max_new_tokens: int,
                     do_sample: bool = False, seed: int = 0, use_cache: bool = True) -> list[str]:
    """The continuations (new tokens only, special tokens dropped) of ``prompts`` generated as one
    left-padded batch under ``steerings``, sampling (if ``do_sample``) from a generator seeded with ``seed``
    without touching the global random state."""
    enc = _left_padded(tokenizer, prompts)
    device = model.device
    ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
            steer(model, steerings, mask):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                             use_cache=use_cache, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
