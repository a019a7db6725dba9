"""The GoEmotions emotion judge: accuracy on held-out dev against chance and a shuffled-label control,
seeding, and share() on planted texts."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from lib.steering.judge import EmotionJudge, judge_accuracy, judge_from_goemotions

EMOTIONS = ["gratitude", "anger", "neutral"]
MAX_PER_LABEL = 300


@lru_cache(maxsize=None)
def _judge(seed: int = 0) -> EmotionJudge:
    return judge_from_goemotions(EMOTIONS, max_per_label=MAX_PER_LABEL, seed=seed)


def test_judge_beats_chance_on_dev():
    # Measured (max_per_label=300, seed 0): accuracy 0.762 [0.743, 0.780] on n=1962 dev rows (81% neutral),
    # balanced accuracy 0.779 (recall gratitude 0.93, anger 0.67, neutral 0.74) against chance 1/3.
    r = judge_accuracy(_judge(), EMOTIONS)
    assert r["n"] == sum(r["n_per_label"].values()) > 1000
    assert r["balanced_accuracy"] > 0.65, r
    assert min(r["recall"].values()) > 0.5, r
    assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    assert r["balanced_accuracy"] == pytest.approx(np.mean(list(r["recall"].values())))


def test_shuffled_labels_judge_is_near_chance():
    # The control that could have failed: the same pipeline on permuted labels learns nothing about dev.
    from lib.text.datasets import load_goemotions

    df = load_goemotions("train")
    df = pd.concat([g.sample(n=150, random_state=0) for _, g in df[df["emotion"].isin(EMOTIONS)].groupby("emotion")])
    labels = np.random.default_rng(0).permutation(df["emotion"].to_numpy())
    r = judge_accuracy(EmotionJudge().fit(df["text"].tolist(), labels.tolist(), seed=0), EMOTIONS)
    assert r["balanced_accuracy"] < 0.45, r
    assert judge_accuracy(_judge(), EMOTIONS)["balanced_accuracy"] > r["balanced_accuracy"] + 0.2


def test_judge_is_seeded():
    a = judge_from_goemotions(EMOTIONS, max_per_label=100, seed=3)
    b = judge_from_goemotions(EMOTIONS, max_per_label=100, seed=3)
    c = judge_from_goemotions(EMOTIONS, max_per_label=100, seed=4)
    texts = ["thank you so much", "this makes me furious", "the bus leaves at noon"]
    pa, pb, pc = a.predict_proba(texts), b.predict_proba(texts), c.predict_proba(texts)
    assert list(pa.columns) == sorted(EMOTIONS) and pa.shape == (3, 3)
    np.testing.assert_array_equal(pa.to_numpy(), pb.to_numpy())
    np.testing.assert_allclose(pa.to_numpy().sum(1), 1.0)
    assert not np.allclose(pa.to_numpy(), pc.to_numpy())  # another seed samples other training rows


def test_share_on_planted_texts():
    j = _judge()
    grateful = ["Thank you so much, I really appreciate it!", "Thanks a lot for the help, much appreciated.",
                "Thank you!"]
    angry = ["I hate this, it makes me so angry.", "This is infuriating, I am so pissed off."]
    assert j.share(grateful, "gratitude") == 1.0
    assert j.share(angry, "anger") == 1.0
    assert j.share(grateful + angry, "gratitude") == pytest.approx(3 / 5)
    assert j.share(grateful + angry, "anger") == pytest.approx(2 / 5)
    argmax = j.predict_proba(grateful + angry).to_numpy().argmax(1)
    assert j.share(grateful + angry, "neutral") == np.mean(np.array(j.labels)[argmax] == "neutral") == 0.0


def test_errors_name_the_input():
    with pytest.raises(ValueError, match="unknown emotion 'joy'"):
        _judge().share(["hi"], "joy")
    with pytest.raises(ValueError, match="not fitted"):
        EmotionJudge().predict_proba(["hi"])
    with pytest.raises(ValueError, match="emotions="):
        judge_from_goemotions(["gratitude", "joy"])
