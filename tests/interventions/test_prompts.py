"""Paired prompts of one token length, split into selection and evaluation halves by text group."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.interventions.prompts import split_prompts
from lib.models.loading import load_model


def _frame():
    texts = ([f"Thanks a lot {i}" for i in range(4)] + ["Thanks a lot 0"] + [f"The rooms are {i}" for i in range(5)]
             + ["Thank you so much for all of it", "A b"])  # one token length but for the last two
    emotion = ["gratitude"] * 5 + ["neutral"] * 5 + ["gratitude", "neutral"]
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts, "emotion": emotion,
                         "span_start": [0] * len(texts), "span_end": [6] * len(texts)})


def test_split_prompts_pairs_one_length_in_disjoint_halves():
    lm = load_model("tiny-llama", device="cpu")
    df = _frame()
    lengths = np.array(lm.encoder.n_tokens(df["text"].tolist()))
    groups = np.arange(len(df))
    groups[4] = 0  # a duplicate text: one group, so one half
    sp = split_prompts(lm.encoder, df, "gratitude", 2, groups=groups, seed=0)
    T = sp.select.T
    assert sp.evaluate.T == T and (lengths[:10] == T).all() and lengths[10] != T
    for half in (sp.select, sp.evaluate):
        assert half.emo_ids.shape == half.neu_ids.shape == (2, T)
        assert half.emo_span.shape == half.emo_ids.shape and half.emo_span.any()
        assert list(half.rows["role"]) == ["emotion"] * 2 + ["neutral"] * 2
    sel, ev = sp.select.rows, sp.evaluate.rows
    assert not set(sel["id"]) & set(ev["id"]) and not set(sel["group"]) & set(ev["group"])
    assert set(sp.rows["half"]) == {"selection", "evaluation"}
    enc = lm.encoder.encode(sel[sel["role"] == "emotion"]["text"].tolist())
    assert (enc.input_ids == sp.select.emo_ids).all()
    assert sp.record["sizes"] == {"selection": 4, "evaluation": 4} and sp.record["seed"] == 0
    again = split_prompts(lm.encoder, df, "gratitude", 2, groups=groups, seed=0)
    assert again.record == sp.record and split_prompts(lm.encoder, df, "gratitude", 1, groups=groups, seed=0).select.n == 1


def test_split_prompts_errors_name_the_problem():
    lm = load_model("tiny-llama", device="cpu")
    df = _frame()
    with pytest.raises(ValueError, match="emotion 'neutral' is not one of"):
        split_prompts(lm.encoder, df, "neutral", 2)
    with pytest.raises(ValueError, match="no token length has 4 anger"):
        split_prompts(lm.encoder, df.assign(emotion=df["emotion"].replace("gratitude", "anger")).iloc[:7], "anger", 2)
    with pytest.raises(ValueError, match="groups has 3 entries for 12 rows"):
        split_prompts(lm.encoder, df, "gratitude", 2, groups=[0, 1, 2])
    with pytest.raises(ValueError, match="cannot be split in halves"):
        split_prompts(lm.encoder, df, "gratitude", 2, groups=np.zeros(len(df), dtype=int))
