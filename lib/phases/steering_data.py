"""Phase 08's rows: neutral prompts (a selection half and a report half), contrast pairs, held-out neutral text.

- Prompts: ``n_prompts`` neutral utterances of the authored *extended* profile (a seeded sample), split by
  ``lib.stats.splits.group_halves`` over near-duplicate text groups into a *selection* half (the steering
  setting is chosen there) and a *report* half (every printed number of the chosen setting).
- Contrast pairs (CAA): authored *baseline* rows, each emotion row paired with a neutral row of the same
  register and domain (the k-th emotion row of a (register, domain) cell with the k-th neutral row of it, in
  file order), then ``n_pairs`` pairs drawn with a seeded generator. No baseline text is a prompt.
- Held-out neutral text for side effects: ``n_kl_texts`` single-label neutral GoEmotions *dev* comments.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.emotions import BASELINE
from lib.geometry.folds import text_groups
from lib.stats.splits import group_halves, split_record
from lib.text.datasets import load_authored, load_goemotions

__all__ = ["PROMPT_FORMATS", "prompt_halves", "contrast_pairs", "kl_texts", "prompted", "formatted"]

PROMPT_FORMATS = ("chat", "plain")


def prompt_halves(n_prompts: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """(prompts, selection indices, report indices, split record) over ``n_prompts`` extended neutral rows."""
    rows = load_authored("extended")
    rows = rows[rows["emotion"] == BASELINE].reset_index(drop=True)
    if not 4 <= n_prompts <= len(rows):
        raise ValueError(f"n_prompts={n_prompts!r}; valid values are 4..{len(rows)} (extended neutral rows)")
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=n_prompts, replace=False))
    prompts = rows["text"].iloc[pick].tolist()
    sel, rep = group_halves(np.array([BASELINE] * len(prompts)), text_groups(prompts), seed=seed)
    record = split_record("prompts", "extended neutral rows, seeded sample, halves by text group", seed,
                          selection=sel, report=rep)
    return prompts, sel, rep, record


def contrast_pairs(emotion: str, n_pairs: int, seed: int) -> list[tuple[str, str]]:
    """``n_pairs`` (emotion text, neutral text) pairs of the baseline profile sharing register and domain."""
    rows = load_authored("baseline")
    pairs = []
    for _, cell in rows.groupby(["register", "domain"], sort=True):
        pos = cell[cell["emotion"] == emotion]["text"].tolist()
        neg = cell[cell["emotion"] == BASELINE]["text"].tolist()
        pairs.extend(zip(pos, neg))
    if not 2 <= n_pairs <= len(pairs):
        raise ValueError(f"n_pairs={n_pairs!r}; valid values are 2..{len(pairs)} ({emotion} / neutral pairs of "
                         "the baseline profile that share register and domain)")
    pick = np.random.default_rng(seed).choice(len(pairs), size=n_pairs, replace=False)
    return [pairs[i] for i in pick]


def kl_texts(n: int, seed: int) -> list[str]:
    """``n`` neutral GoEmotions dev comments (a seeded sample)."""
    dev = load_goemotions("dev")
    neutral = dev[dev["emotion"] == BASELINE]["text"].reset_index(drop=True)
    if not 1 <= n <= len(neutral):
        raise ValueError(f"n_kl_texts={n!r}; valid values are 1..{len(neutral)} (neutral GoEmotions dev comments)")
    return neutral.iloc[np.sort(np.random.default_rng(seed).choice(len(neutral), size=n, replace=False))].tolist()


def prompted(prompts, template: str, emotion: str) -> list[str]:
    """The prompting baseline's prompts: ``template`` with {emotion} and {prompt} filled in.

    >>> prompted(["The bus is late."], "Reply with {emotion}: {prompt}", "gratitude")
    ['Reply with gratitude: The bus is late.']
    """
    if "{prompt}" not in template or "{emotion}" not in template:
        raise ValueError(f"prompt_template={template!r}; it must contain {{emotion}} and {{prompt}}")
    return [template.format(emotion=emotion, prompt=p) for p in prompts]



def formatted(tokenizer, prompts, how: str) -> list[str]:
    """The texts the model is given: ``plain`` leaves each prompt as it is; ``chat`` wraps it as a user message
    in the tokenizer's chat template, ready for the assistant's reply (a tokenizer without a template keeps the
    plain text). A template's leading BOS is dropped when the tokenizer adds its own, so no text has two."""
    if how not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format={how!r}; valid: {list(PROMPT_FORMATS)}")
    prompts = list(prompts)
    if how == "plain" or not getattr(tokenizer, "chat_template", None):
        return prompts
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    out = []
    for p in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True)
        out.append(text[len(bos):] if adds_bos and text.startswith(bos) else text)
    return out
