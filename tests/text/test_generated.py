"""Text metrics against hand counts and direct VADER calls."""
from __future__ import annotations

import numpy as np
import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from lib.emotions import TARGET_EMOTIONS
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
