"""Text into models: a tokenizer plus the model's BOS policy, right-padded batches with offsets.

>>> load_encoder("tiny-gpt2").encode(["Thank you"]).input_ids.shape[0]
1
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd
import torch

from lib.models.registry import ModelSpec, check_available, resolve_spec
from lib.models.tiny import build_tiny_tokenizer
from lib.models.weights import ensure_cached
from lib.settings import apply_hub_policy

__all__ = ["Encoded", "TextEncoder", "load_encoder", "prepare_tokenizer", "span_token_mask"]


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
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        definition = backend.to_str() if backend is not None else repr(sorted(self.tokenizer.get_vocab().items()))
        return {"name": self.spec.name, "kind": self.spec.kind, "source": self.spec.source,
                "tokenizer_sha256": hashlib.sha256(definition.encode()).hexdigest(),
                "prepend_bos": bool(self.spec.prepend_bos or self.tokenizer_adds_bos)}

    def n_tokens(self, texts: list[str]) -> list[int]:
        """Real-token count of each text under this policy (BOS included where prepended)."""
        return self.encode(list(texts)).lengths.tolist()


def prepare_tokenizer(tokenizer):
    """``tokenizer`` set to pad on the right, with EOS as its pad token when it has none."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_encoder(name: str) -> TextEncoder:
    """Only the tokenizer and BOS policy of ``name``, without loading weights.

    >>> load_encoder("tiny-gpt2").n_tokens(["Thank you"])[0] > 1
    True
    """
    apply_hub_policy()
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
    return TextEncoder(spec, prepare_tokenizer(tokenizer))


def span_token_mask(offsets: list[list[tuple[int, int]]], starts, ends, width: int) -> torch.Tensor:
    """bool [rows, width]: tokens whose character range overlaps the row's span (BOS never does)."""
    mask = torch.zeros((len(offsets), width), dtype=torch.bool)
    for i, (row, s, e) in enumerate(zip(offsets, starts, ends)):
        if s is None or pd.isna(s):
            continue
        for j, (ts, te) in enumerate(row):
            if te > ts and te > s and ts < e:
                mask[i, j] = True
    return mask
