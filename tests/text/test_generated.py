"""Text metrics against hand counts, direct VADER calls and explicit resampling loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from lib.emotions import TARGET_EMOTIONS
from lib.stats.bootstrap import mean_ci, paired_difference
from lib.stats.permutation import permutation_p
from lib.text.generated import LEXICON_PATH, keyword_counts, load_lexicon, vader_compound

SMALL = {
    "gratitude": {"keywords": ["thanks", "thank you", "thank", "grateful"]},
    "anger": {"keywords": ["angry", "fed up"]},
}


def test_keyword_counts_match_hand_count():
    texts = [
        "THANK you! Thanks, thanks... I'm grateful.",   # "thank you" is one phrase match, then 2x thanks, grateful
        "Happy Thanksgiving; thankless work, ungrateful boss.",  # keywords only inside longer words: none
        "I am angry, ANGRY: fed   up and fed\nup. Anger?",     # phrase across any whitespace; 'anger' not a keyword
        "",
        "thank-you notes, thank.",                         # hyphen is a word boundary: thank, thank
    ]
    got = keyword_counts(texts, SMALL)
    assert list(got.columns) == ["gratitude", "anger"]
    assert got["gratitude"].tolist() == [4, 0, 0, 0, 2]
    assert got["anger"].tolist() == [0, 0, 4, 0, 0]
    assert str(got.dtypes["gratitude"]) == "int64" and len(got) == len(texts)


def test_keyword_counts_longest_first_is_non_overlapping():
    # "so sorry" and "sorry" both listed: one match per occurrence, not two.
    lex = {"apology": {"keywords": ["sorry", "so sorry"]}}
    assert keyword_counts(["I'm so sorry. Sorry!"], lex)["apology"].tolist() == [2]


def test_keyword_counts_on_real_lexicon_by_hand():
    lex = load_lexicon()
    got = keyword_counts([
        "Thank you so much, I really appreciate it.",      # thank you, appreciate
        "This is ridiculous and I'm furious!",             # ridiculous, furious
        "I apologize, it was my fault. Sorry.",            # apologize, my fault, sorry
        "The meeting moved to room 4B.",
    ], lex)
    assert got[list(TARGET_EMOTIONS)].to_numpy().tolist() == [[2, 0, 0], [0, 2, 0], [0, 0, 3], [0, 0, 0]]


def test_keyword_counts_rejects_non_strings():
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        keyword_counts(["fine", None], SMALL)


def test_vader_compound_equals_direct_call_and_has_right_sign():
    texts = ["Thank you so much, this is wonderful!", "I hate this, it is awful and disgusting.",
             "The meeting is at noon.", ""]
    analyzer = SentimentIntensityAnalyzer()
    expected = [analyzer.polarity_scores(t)["compound"] for t in texts]
    got = vader_compound(texts)
    assert got.dtype == np.float64 and got.shape == (4,)
    assert got.tolist() == expected
    assert got[0] > 0.5 and got[1] < -0.5 and got[2] == 0.0
    assert vader_compound([]).shape == (0,)


def _quantile_linear(values, q):
    """numpy's default ('linear', Hyndman-Fan type 7) quantile, by hand."""
    s = sorted(values)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def _bootstrap_by_loop(x, n_boot, seed, level):
    rng = np.random.default_rng(seed)
    n = len(x)
    means = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        means.append(sum(x[int(i)] for i in idx) / n)
    return _quantile_linear(means, (1 - level) / 2), _quantile_linear(means, (1 + level) / 2)


@pytest.mark.parametrize("n", [5, 12, 31])
def test_mean_ci_matches_explicit_loop(n):
    x = [float(v) for v in np.random.default_rng(100 + n).normal(1.0, 2.0, size=n)]
    got = mean_ci(x, n_boot=500, seed=7, level=0.9)
    low, high = _bootstrap_by_loop(x, 500, 7, 0.9)
    assert got["n"] == n and got["level"] == 0.9
    assert got["mean"] == pytest.approx(sum(x) / n, abs=1e-12)
    assert got["ci_low"] == pytest.approx(low, abs=1e-12)
    assert got["ci_high"] == pytest.approx(high, abs=1e-12)
    assert got["ci_low"] <= got["mean"] <= got["ci_high"]


def test_paired_difference_matches_loop_on_differences():
    rng = np.random.default_rng(3)
    base = rng.normal(size=20)
    other = base + 0.5 + rng.normal(scale=0.3, size=20)
    got = paired_difference(base.tolist(), other.tolist(), n_boot=400, seed=11)
    diffs = [float(o - b) for b, o in zip(base, other)]
    low, high = _bootstrap_by_loop(diffs, 400, 11, 0.95)
    assert got["mean"] == pytest.approx(sum(diffs) / 20, abs=1e-12)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert got["ci_low"] <= got["mean"] <= got["ci_high"] and got["ci_low"] > 0  # clear planted shift


def test_ci_narrows_with_more_items():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200, 2000):
        r = mean_ci(rng.normal(size=n))
        widths.append(r["ci_high"] - r["ci_low"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(10, rel=0.3)  # width ~ 1 / sqrt(n)


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="non-empty"):
        paired_difference([], [])
    with pytest.raises(ValueError, match=r"x\[1\]"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], level=95)


def test_permutation_p_by_hand():
    null = [-3.0, -1.0, 0.0, 1.0, 2.0, 2.0, 4.0]  # 7 values
    assert permutation_p(2.0, null) == (1 + 3) / 8                              # 2, 2, 4
    assert permutation_p(2.0, null, alternative="less") == (1 + 6) / 8          # all but 4
    assert permutation_p(-2.0, null, alternative="two-sided") == (1 + 4) / 8    # -3, 2, 2, 4
    assert permutation_p(10.0, null) == 1 / 8
    assert permutation_p(-10.0, null, alternative="less") == 1 / 8


def test_permutation_p_errors():
    with pytest.raises(ValueError, match="two-sided"):
        permutation_p(1.0, [0.0], alternative="both")
    with pytest.raises(ValueError, match="null"):
        permutation_p(1.0, [])


def test_load_lexicon_real_file():
    lex = load_lexicon()
    assert set(lex) == set(TARGET_EMOTIONS) and load_lexicon(LEXICON_PATH) == lex
    for emotion, entry in lex.items():
        assert 20 <= len(entry["keywords"]) <= 40, emotion
        assert 6 <= len(entry["continuations"]) <= 12, emotion
        assert all(k == k.lower() for k in entry["keywords"])
        assert all(c.startswith(" ") and " " not in c[1:] for c in entry["continuations"])
    # no keyword is claimed by two emotions
    seen = [k for entry in lex.values() for k in entry["keywords"]]
    assert len(seen) == len(set(seen))


GOOD = """
gratitude:
  keywords: [thanks]
  continuations: [" thanks"]
"""


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("gratitude", "joy"), r"unknown emotion 'joy'.*gratitude"),
    (GOOD.replace("keywords: [thanks]", "keywords: []"), r"'gratitude' key 'keywords'.*non-empty"),
    (GOOD + "  weights: [1]\n", r"'gratitude' has unknown key\(s\) \['weights'\].*keywords"),
    (GOOD.replace('  continuations: [" thanks"]\n', ""), r"'gratitude' key 'continuations' is missing"),
    (GOOD.replace('" thanks"', '"thanks"'), r"leading space"),
    (GOOD.replace("[thanks]", "[thanks, '']"), r"item 1"),
    ("[]", r"non-empty mapping"),
])
def test_load_lexicon_rejects_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_lexicon(path)
    assert str(path) in str(err.value)


def test_load_lexicon_accepts_good_temp_file(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert load_lexicon(path) == {"gratitude": {"keywords": ["thanks"], "continuations": [" thanks"]}}
