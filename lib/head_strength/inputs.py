"""What the head-strength extractor reads: texts from a JSON list (or JSONL file) whose items are strings or dicts
carrying ``input``, ``text`` or ``question`` (the first present, in that order), an optional seeded subsample,
batches of texts, and any accepted batch as (input_ids, attention_mask) tensors.

``sample_num``: None (or at least the number of items) keeps every item; otherwise ``seed`` an int draws a seeded
random subsample of that size (kept in file order), and ``seed=None`` keeps the first ``sample_num`` items.

>>> import json, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "d.json"
>>> _ = p.write_text(json.dumps(["a", {"text": "b"}, {"question": "c", "id": 3}]))
>>> load_texts(p)
['a', 'b', 'c']
>>> load_texts(p, sample_num=2, seed=None), list(TextBatches(["a", "b", "c"], batch_size=2))
(['a', 'b'], [['a', 'b'], ['c']])
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from lib.errors import UserError
from lib.head_strength.results import HeadStrengthError

__all__ = ["DataFileError", "TEXT_FIELDS", "load_items", "load_texts", "TextBatches", "batch_tensors"]

TEXT_FIELDS = ("input", "text", "question")


class DataFileError(UserError, ValueError):
    """A data file that is missing, not JSON/JSONL, empty, or has an item without a text."""


def load_items(path) -> list:
    """The items of a JSON list, or of a JSONL file (``.jsonl`` / ``.ndjson``: one JSON value per non-blank line)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"--data_path {path}: no such file" if not path.exists() else
                            f"--data_path {path} is a folder; give a JSON list or JSONL file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        items = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataFileError(f"{path}, line {lineno}: not valid JSON ({err.msg}, column {err.colno})") \
                        from None
    else:
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            hint = "; a file of one JSON value per line should be named .jsonl" if err.msg == "Extra data" else ""
            raise DataFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}){hint}") \
                from None
        if not isinstance(items, list):
            raise DataFileError(f"{path} holds a JSON {type(items).__name__}; expected a list of strings or of "
                                f"objects with one of the fields {list(TEXT_FIELDS)}")
    if not items:
        raise DataFileError(f"{path} holds no items; give at least one text")
    return items


def _text(item, index: int, path) -> str:
    if isinstance(item, str):
        text = item
    elif isinstance(item, dict):
        field = next((f for f in TEXT_FIELDS if f in item), None)
        if field is None:
            raise DataFileError(f"{path}: item {index} has none of the fields {list(TEXT_FIELDS)} "
                                f"(its keys: {sorted(item)})")
        text = item[field]
        if not isinstance(text, str):
            raise DataFileError(f"{path}: item {index} field {field!r} is a {type(text).__name__}, not a string")
    else:
        raise DataFileError(f"{path}: item {index} is a {type(item).__name__}; items must be strings or objects "
                            f"with one of the fields {list(TEXT_FIELDS)}")
    if not text.strip():
        raise DataFileError(f"{path}: item {index} is an empty text")
    return text


def load_texts(path, sample_num: int | None = None, seed: int | None = 0) -> list[str]:
    """The texts of ``path`` (see the module's docstring for the format and ``sample_num``)."""
    texts = [_text(item, i, path) for i, item in enumerate(load_items(path))]  # every item checked
    if sample_num is not None and (isinstance(sample_num, bool) or not isinstance(sample_num, int)
                                   or sample_num < 1):
        raise DataFileError(f"--sample_num {sample_num!r}: give a count >= 1, or leave it out for every item")
    if sample_num is None or sample_num >= len(texts):
        return texts
    if seed is None:
        return texts[:sample_num]
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=sample_num, replace=False))
    return [texts[i] for i in keep]


class TextBatches:
    """Lists of at most ``batch_size`` texts, in order: a minimal data loader (``len`` is the batch count)."""

    def __init__(self, texts: list[str], batch_size: int = 8):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataFileError(f"--batch_size {batch_size!r}: give a count >= 1")
        self.texts, self.batch_size = list(texts), batch_size

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.texts), self.batch_size):
            yield self.texts[i:i + self.batch_size]


def batch_tensors(batch, encode=None, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [batch, pos] of one batch: a dict with ``input_ids`` (and ``attention_mask``), an
    (input_ids, attention_mask) pair, an input_ids tensor (no padding), or a non-empty list of strings, given to
    ``encode(texts) -> (input_ids, attention_mask)``; cut to ``max_length`` tokens.

    >>> batch_tensors({"input_ids": torch.tensor([[5, 6, 7]])}, max_length=2)
    (tensor([[5, 6]]), tensor([[1, 1]]))
    """
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise HeadStrengthError(f"a dict batch needs 'input_ids' (and 'attention_mask'); it has {sorted(batch)}")
        ids, mask = batch["input_ids"], batch.get("attention_mask")
    elif isinstance(batch, torch.Tensor):
        ids, mask = batch, None
    elif isinstance(batch, (list, tuple)) and batch and all(isinstance(t, str) for t in batch):
        if encode is None:
            raise HeadStrengthError("batches of strings need a tokenizer")
        ids, mask = encode(list(batch))
    elif isinstance(batch, (list, tuple)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        ids, mask = batch
    else:
        raise HeadStrengthError(f"a batch must be a dict with input_ids/attention_mask, an (input_ids, "
                                f"attention_mask) pair or a non-empty list of strings; got {type(batch).__name__}")
    ids = torch.as_tensor(ids)
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise HeadStrengthError(f"input_ids {tuple(ids.shape)} and attention_mask {tuple(mask.shape)} must both be "
                                f"[batch, pos]")
    if max_length is not None:
        ids, mask = ids[:, :max_length], mask[:, :max_length]
    if not bool((mask.sum(1) > 0).all()):
        raise HeadStrengthError("a row of the batch has no real token (attention_mask all 0)")
    return ids, mask
