"""Paired prompts for head interventions, split into a selection half and an evaluation half.

Emotion and neutral prompts of one token length, so no prompt is padded and row i of each can be patched
into the other at every position. Heads are chosen on the selection half and their effects estimated on
the evaluation half; the halves never share a text group (near-identical texts,
``lib.geometry.folds.text_groups``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.models.encoding import span_token_mask
from lib.stats.splits import group_halves, split_record

__all__ = ["Prompts", "PromptSplit", "HALVES", "split_prompts", "pair_counts"]

HALVES = ("selection", "evaluation")


@dataclass
class Prompts:
    """``n`` emotion and ``n`` neutral prompts of one token length ``T``, row i of each paired for patching."""

    emotion: str
    T: int
    rows: pd.DataFrame  # the 2n dataset rows (emotion first), with ``role`` (and ``half``, ``group``) columns
    emo_ids: torch.Tensor
    neu_ids: torch.Tensor
    emo_span: torch.Tensor
    neu_span: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.emo_ids.shape[0])


@dataclass
class PromptSplit:
    """The selection and evaluation halves of one emotion's prompts, and the split's manifest entry."""

    select: Prompts
    evaluate: Prompts
    record: dict

    @property
    def rows(self) -> pd.DataFrame:
        return pd.concat([self.select.rows, self.evaluate.rows], ignore_index=True)


def pair_counts(lengths: pd.Series, emotions: pd.Series, emotion: str) -> pd.Series:
    """Per token length (>= 2): min(#emotion rows, #neutral rows), the (emotion, neutral) pairs it can give."""
    counts = pd.DataFrame({"emo": lengths[emotions == emotion].value_counts(),
                           "neu": lengths[emotions == BASELINE].value_counts()}).fillna(0)
    return counts[counts.index >= 2].min(axis=1).astype(int).sort_index()


def _prompts(encoder, rows: pd.DataFrame, emotion: str, T: int) -> Prompts:
    ids, spans = {}, {}
    for role in ("emotion", "neutral"):
        r = rows[rows["role"] == role]
        enc = encoder.encode(r["text"].tolist())
        ids[role] = enc.input_ids
        spans[role] = span_token_mask(enc.offsets, r["span_start"].tolist(), r["span_end"].tolist(), T)
    return Prompts(emotion, T, rows.reset_index(drop=True), ids["emotion"], ids["neutral"], spans["emotion"],
                   spans["neutral"])


def split_prompts(encoder, df: pd.DataFrame, emotion: str, n: int, groups=None, seed: int = 0) -> PromptSplit:
    """The token length T with the most (emotion, neutral) pairs (the shortest on ties); its rows split into a
    selection and an evaluation half with every text group inside one half (``group_halves``, stratified by
    emotion, seeded); in each half ``n`` seeded rows of each role (fewer if the half has fewer).

    ``groups`` [len(df)]: text group per row (default ``text_groups`` of ``df``'s texts). The record (for
    ``save_summary(..., splits=...)``) digests the chosen rows' positions in ``df`` per half.
    """
    from lib.geometry.folds import text_groups

    if emotion not in TARGET_EMOTIONS:
        raise ValueError(f"emotion {emotion!r} is not one of {list(TARGET_EMOTIONS)} (neutral is the comparison)")
    groups = text_groups(df["text"].tolist()) if groups is None else np.asarray(groups)
    if len(groups) != len(df):
        raise ValueError(f"groups has {len(groups)} entries for {len(df)} rows; give one text group per row")
    lengths = pd.Series(encoder.n_tokens(df["text"].tolist()), index=df.index)
    best = pair_counts(lengths, df["emotion"], emotion)
    if best.empty or best.max() < 4:
        raise ValueError(f"no token length has 4 {emotion} and 4 {BASELINE} rows for {encoder.spec.name} (2 per half); "
                         f"use more rows (profiles) for phase 05")
    T = int(best[best == best.max()].index.min())
    pos = np.flatnonzero(((df["emotion"] == emotion) | (df["emotion"] == BASELINE)).to_numpy() & (lengths == T).to_numpy())
    labels = df["emotion"].to_numpy()[pos]
    try:
        halves = group_halves(labels, groups[pos], seed=seed)
    except ValueError as err:
        raise ValueError(f"{emotion} prompts of {encoder.spec.name} (length {T}) cannot be split in halves: {err}") from None
    rng = np.random.default_rng(seed)
    chosen, parts = {}, {}
    for half, idx in zip(HALVES, halves):
        rows = pos[idx]
        k = int(min(n, *(np.sum(labels[idx] == c) for c in (emotion, BASELINE))))
        picks = []
        for role, cls in (("emotion", emotion), ("neutral", BASELINE)):
            picks.append(np.sort(rng.choice(rows[df["emotion"].to_numpy()[rows] == cls], size=k, replace=False)))
            chosen[half, role] = picks[-1]
        parts[half] = np.concatenate(picks)
        frame = pd.concat([df.iloc[chosen[half, r]].assign(role=r) for r in ("emotion", "neutral")])
        parts[half + "_rows"] = frame.assign(half=half, group=groups[parts[half]])
    record = split_record(f"prompts {encoder.spec.name} {emotion}",
                          f"rows of token length {T}; halves by text group, stratified by emotion; up to {n} pairs a half",
                          seed, **{h: parts[h] for h in HALVES})
    return PromptSplit(_prompts(encoder, parts["selection_rows"], emotion, T),
                       _prompts(encoder, parts["evaluation_rows"], emotion, T), record)
