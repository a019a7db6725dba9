"""Paired prompts for head interventions: emotion and neutral prompts of one token length, so no prompt is
padded and row i of each can be patched into the other at every position."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.models.encoding import span_token_mask

__all__ = ["Prompts", "choose_prompts"]


@dataclass
class Prompts:
    """``n`` emotion and ``n`` neutral prompts of one token length ``T``, row i of each paired for patching."""

    emotion: str
    T: int
    rows: pd.DataFrame  # the 2n dataset rows (emotion first), with a ``role`` column
    emo_ids: torch.Tensor
    neu_ids: torch.Tensor
    emo_span: torch.Tensor
    neu_span: torch.Tensor


def choose_prompts(encoder, df: pd.DataFrame, emotion: str, n: int, seed: int = 0) -> Prompts:
    """The token length with the most (emotion, neutral) rows, and ``n`` seeded rows of each at that length
    (fewer if no length has ``n`` of both; an error if none has 2)."""
    if emotion not in TARGET_EMOTIONS:
        raise ValueError(f"emotion {emotion!r} is not one of {list(TARGET_EMOTIONS)} (neutral is the comparison)")
    lengths = pd.Series(encoder.n_tokens(df["text"].tolist()), index=df.index)
    counts = pd.DataFrame({"emo": lengths[df["emotion"] == emotion].value_counts(),
                           "neu": lengths[df["emotion"] == BASELINE].value_counts()}).fillna(0)
    counts = counts[counts.index >= 2]
    if counts.empty or counts.min(axis=1).max() < 2:
        raise ValueError(f"no token length has 2 {emotion} and 2 {BASELINE} rows for {encoder.spec.name}; "
                         f"use more rows (profiles) for phase 05")
    best = counts.min(axis=1)
    T = int(best[best == best.max()].index.min())  # the most common length (the shortest on ties)
    k = int(min(n, best[T]))
    rng = np.random.default_rng(seed)
    pick = {}
    for role, cls in (("emotion", emotion), ("neutral", BASELINE)):
        idx = df.index[(df["emotion"] == cls) & (lengths == T)]
        pick[role] = df.loc[sorted(rng.choice(idx, size=k, replace=False))].assign(role=role)
    ids, spans = {}, {}
    for role, rows in pick.items():
        enc = encoder.encode(rows["text"].tolist())
        ids[role] = enc.input_ids
        spans[role] = span_token_mask(enc.offsets, rows["span_start"].tolist(), rows["span_end"].tolist(), T)
    return Prompts(emotion, T, pd.concat([pick["emotion"], pick["neutral"]], ignore_index=True),
                   ids["emotion"], ids["neutral"], spans["emotion"], spans["neutral"])
