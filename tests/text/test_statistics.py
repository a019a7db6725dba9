"""Text statistics against hand computations and planted signals."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lib.text.statistics import distinctive_words, surface_baseline, surface_features


def test_surface_features_by_hand():
    f = surface_features(pd.Series(["Hi, there! Is it?", "plain text"]))
    assert f.loc[0, ["words", "commas", "exclamations", "questions", "sentences"]].tolist() == [4, 1, 1, 1, 2]
    assert f.loc[0, "final"] == "?" and f.loc[1, "final"] == "none"


def test_distinctive_words_formula_by_hand():
    texts = pd.Series(["cat cat dog", "cat dog dog", "dog dog dog", "cat fish"])
    labels = pd.Series(["a", "a", "b", "b"])
    got = distinctive_words(texts, labels, top=10, min_count=1).set_index(["label", "word"])["z"]
    # Monroe et al. (2008), eq. 22: prior alpha_w = total count of w; a0 = total words.
    counts = {"a": {"cat": 3, "dog": 3, "fish": 0}, "b": {"cat": 1, "dog": 3, "fish": 1}}
    alpha = {w: counts["a"][w] + counts["b"][w] for w in ["cat", "dog", "fish"]}
    a0, n = sum(alpha.values()), {k: sum(v.values()) for k, v in counts.items()}
    y_i, y_j = counts["a"]["cat"], counts["b"]["cat"]
    delta = (math.log((y_i + alpha["cat"]) / (n["a"] + a0 - y_i - alpha["cat"]))
             - math.log((y_j + alpha["cat"]) / (n["b"] + a0 - y_j - alpha["cat"])))
    z = delta / math.sqrt(1 / (y_i + alpha["cat"]) + 1 / (y_j + alpha["cat"]))
    assert abs(got[("a", "cat")] - z) < 1e-9
    assert abs(got[("b", "cat")] + z) < 1e-9  # two labels: symmetric


def test_surface_baseline_detects_planted_length_signal_and_not_otherwise():
    rng = np.random.default_rng(0)
    words = lambda k: " ".join(["word"] * k)  # noqa: E731
    same = [words(int(rng.integers(3, 20))) + "." for _ in range(400)]
    labels = pd.Series(["neutral", "anger"] * 200)
    flat = surface_baseline(pd.Series(same), labels)
    assert 0.35 < flat["neutral_auc"] < 0.65
    skewed = pd.Series([words(3 if lab == "neutral" else 15) + "." for lab in labels])
    assert surface_baseline(skewed, labels)["neutral_auc"] > 0.95
