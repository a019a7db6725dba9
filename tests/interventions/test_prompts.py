"""Paired prompts of one token length."""
from __future__ import annotations

import pandas as pd
import pytest

from lib.interventions.prompts import choose_prompts
from lib.models.loading import load_model


def test_choose_prompts_pairs_equal_lengths():
    lm = load_model("tiny-llama", device="cpu")
    df = pd.DataFrame({"id": [f"r{i}" for i in range(8)],
                       "text": ["Thanks a lot", "Thanks for the help", "Thanks a lot", "The room is four",
                                "The meeting is on", "The room is here", "Thank you so much", "A b"],
                       "emotion": ["gratitude"] * 3 + ["neutral"] * 3 + ["gratitude", "neutral"],
                       "span_start": [0] * 8, "span_end": [6] * 8})
    pr = choose_prompts(lm.encoder, df, "gratitude", 2, seed=0)
    assert pr.emo_ids.shape == pr.neu_ids.shape == (2, 5) and pr.T == 5  # lengths 5 (2 + 2 rows), 6 and 4 (1 + 1)
    assert set(pr.rows["role"]) == {"emotion", "neutral"}
    assert pr.emo_span.shape == pr.emo_ids.shape and pr.emo_span.any()
    with pytest.raises(ValueError, match="emotion 'neutral' is not one of"):
        choose_prompts(lm.encoder, df, "neutral", 2)
    with pytest.raises(ValueError, match="no token length has 2 anger"):
        choose_prompts(lm.encoder, df.assign(emotion=df["emotion"].replace("gratitude", "anger")).iloc[:1], "anger", 2)
