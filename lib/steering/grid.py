"""A whole grid of steering settings generated in as few batches as memory allows.

A ``Setting`` is one named edit (``lib.steering.hooks``: block ``layer``'s output x [batch, pos, d_model] edited by
``operator`` with ``vector`` [d_model] at ``strength`` on ``positions``). ``generate_grid`` runs every
(setting, prompt) pair as one row of a batch: settings that share (operator, positions, norm_preserving,
clamp_value) share batches, chunked to ``batch_rows`` rows, with per-row vectors [B, d_model] and strengths [B].
Several layers run in one batch as one ``Steering`` per layer whose strength is 0 on the rows of the other layers
(strength-0 rows are not edited at all, bit for bit). Every chunk reuses the rows of one left-padded tokenization
of all prompts [P, T], so a row sees the same padding as in ``generate_steered(model, tokenizer, prompts, ...)``.

Sampling (``do_sample=True``) is Gumbel-max on the model's logits at temperature 1 (no top-k / top-p): greedy
decoding of logits + g, g ~ Gumbel(0, 1) drawn per row and step from a generator seeded by (seed, prompt index),
so a row's tokens do not depend on its batch neighbours or on the chunking (and every setting sees the same noise
for the same prompt: common random numbers). It is not the stream of ``generate_steered(..., do_sample=True)``,
which draws from the global generator for the batch as a whole.

Continuation token ids are the new tokens up to and including the first end-of-sequence token (a finished row's
padding is dropped, as it depends on when its batch stops).

>>> import torch
>>> from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
>>> hf, tok = build_tiny_model("tiny-llama"), build_tiny_tokenizer()
>>> s = Setting(name="zero", layer=0, vector=torch.ones(64), strength=0.0)
>>> df = generate_grid(hf, tok, ["Thank you", "Sorry."], [s], max_new_tokens=3)
>>> list(df.columns), len(df)
(['setting', 'prompt_index', 'prompt', 'text', 'token_ids'], 2)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from lib.settings import progress_bar
from lib.steering.hooks import OPERATORS, POSITIONS, Steering, _left_padded, steer

__all__ = ["Setting", "GumbelNoise", "generate_grid"]

COLUMNS = ["setting", "prompt_index", "prompt", "text", "token_ids"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Setting:
    """One named steering setting: ``operator`` with ``vector`` [d_model] at ``strength`` on block ``layer``'s
    output at ``positions`` (``lib.steering.hooks`` for the definitions)."""

    name: str
    layer: int
    vector: torch.Tensor  # [d_model]
    strength: float
    operator: str = "add"
    positions: str = "both"
    norm_preserving: bool = False
    clamp_value: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Setting.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.vector, torch.Tensor) or self.vector.ndim != 1:
            what = tuple(self.vector.shape) if isinstance(self.vector, torch.Tensor) else type(self.vector).__name__
            raise ValueError(f"Setting {self.name!r}: vector must be a tensor [d_model], got {what}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) \
                or not math.isfinite(self.strength):
            raise ValueError(f"Setting {self.name!r}: strength must be a finite float, got {self.strength!r}")
        if self.operator not in OPERATORS:
            raise ValueError(f"Setting {self.name!r}: operator must be one of {OPERATORS}, got {self.operator!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"Setting {self.name!r}: positions must be one of {POSITIONS}, got {self.positions!r}")
        self.steering()  # the remaining checks (layer, vector values, clamp_value, norm_preserving)

    def steering(self) -> Steering:
        """This setting alone, as a ``Steering`` for ``generate_steered``."""
        return Steering(layer=self.layer, vector=self.vector, strength=float(self.strength), operator=self.operator,
                        positions=self.positions, clamp_value=self.clamp_value, norm_preserving=self.norm_preserving)

    @property
    def group(self) -> tuple:
        """What settings must share to run as rows of one batch."""
        return (self.operator, self.positions, self.norm_preserving, float(self.clamp_value))


class GumbelNoise:
    """Logits processor adding Gumbel(0, 1) noise [B, vocab] to the scores, row r drawn from its own generator
    seeded with ``seeds[r]``: greedy decoding then samples softmax(logits) row by row, independently of the batch."""

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"GumbelNoise: scores of batch {scores.shape[0]} for {len(self.generators)} seeds")
        u = torch.stack([torch.rand(scores.shape[1], generator=g, dtype=torch.float64) for g in self.generators])
        u = u.clamp(1e-300, 1 - 1e-16)
        return scores + (-torch.log(-torch.log(u))).to(device=scores.device, dtype=scores.dtype)


def _row_seed(seed: int, prompt_index: int) -> int:
    return (int(seed) * 1_000_003 + int(prompt_index)) % (2 ** 63)


def _chunk_steerings(chunk: list[tuple[Setting, int]]) -> list[Steering]:
    """One per-row ``Steering`` per layer present in ``chunk`` (rows of other layers at strength 0)."""
    first = chunk[0][0]
    out = []
    for layer in sorted({s.layer for s, _ in chunk}):
        filler = next(s.vector for s, _ in chunk if s.layer == layer).float()  # non-zero for ablate / clamp
        vectors = torch.stack([s.vector.float() if s.layer == layer else filler for s, _ in chunk])  # [B, d]
        strengths = torch.tensor([float(s.strength) if s.layer == layer else 0.0 for s, _ in chunk])  # [B]
        out.append(Steering(layer=layer, vector=vectors, strength=strengths, operator=first.operator,
                            positions=first.positions, clamp_value=first.clamp_value,
                            norm_preserving=first.norm_preserving))
    return out


def _trim(ids: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i + 1]
    return ids


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def generate_grid(model, tokenizer, prompts: Sequence[str], settings: Sequence[Setting], *, max_new_tokens: int,
                  batch_rows: int = 64, seed: int = 0, do_sample: bool = False) -> pd.DataFrame:
    """One row per (setting, prompt), in settings order then prompt order: setting name, prompt index, prompt,
    continuation text (special tokens dropped) and continuation token ids (a list, module docstring), generated
    in batches of at most ``batch_rows`` rows (greedy, or Gumbel-max sampling seeded by (seed, prompt index))."""
    prompts, settings = list(prompts), list(settings)
    if not prompts:
        raise ValueError("generate_grid: prompts is empty; give at least one prompt")
    if not settings:
        raise ValueError("generate_grid: settings is empty; give at least one Setting")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"generate_grid: batch_rows must be an int >= 1, got {batch_rows!r}")
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"generate_grid: setting names must be unique, repeated: {dup}")
    enc = _left_padded(tokenizer, prompts)
    device = model.device
    ids_all, mask_all = enc.input_ids.to(device), enc.attention_mask.to(device)  # [P, T]
    T = ids_all.shape[1]
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)

    groups: dict[tuple, list[tuple[Setting, int]]] = {}
    for s in settings:
        groups.setdefault(s.group, []).extend((s, p) for p in range(len(prompts)))
    chunks = [rows[i:i + batch_rows] for rows in groups.values() for i in range(0, len(rows), batch_rows)]

    results: dict[tuple[str, int], list[int]] = {}
    for chunk in progress_bar(chunks, desc="steering grid", unit="batch"):
        index = torch.tensor([p for _, p in chunk], device=device)
        ids, mask = ids_all[index], mask_all[index]
        kwargs = {}
        if do_sample:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([GumbelNoise([_row_seed(seed, p) for _, p in chunk])])
        with torch.no_grad(), steer(model, _chunk_steerings(chunk), mask):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, **kwargs)
        for (s, p), row in zip(chunk, out[:, T:].tolist()):
            results[(s.name, p)] = _trim(row, eos)

    records = []
    for s in settings:
        for p, prompt in enumerate(prompts):
            toks = results[(s.name, p)]
            records.append((s.name, p, prompt, tokenizer.decode(toks, skip_special_tokens=True), toks))
    return pd.DataFrame.from_records(records, columns=COLUMNS)
