"""Metrics on generated text: emotion keyword counts and VADER sentiment (their statistics: ``lib.stats``).

The emotion lexicon lives in ``data/lexicon/emotion_lexicon.yaml`` (see its README); keyword
matching is case-insensitive and whole-word (``\\b``-style boundaries), non-overlapping, longest
keyword first, so ``"thank you"`` counts once and ``"thanks"`` does not count inside
``"thanksgiving"``. There is no stemming: the lexicon lists inflections explicitly.

>>> lex = load_lexicon()
>>> keyword_counts(["Thanks so much!", "Sorry, I am so sorry."], lex).to_dict("list")
{'gratitude': [1, 0], 'anger': [0, 0], 'apology': [0, 2]}
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lib.emotions import TARGET_EMOTIONS
from lib.paths import DATA

__all__ = [
    "LEXICON_PATH", "LEXICON_KEYS",
    "load_lexicon", "keyword_counts", "vader_compound",
]

LEXICON_PATH = DATA / "lexicon" / "emotion_lexicon.yaml"
LEXICON_KEYS = ("keywords", "continuations")


def load_lexicon(path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """Read and validate the emotion lexicon YAML: {emotion: {"keywords": [...], "continuations": [...]}}.

    >>> sorted(load_lexicon()) == sorted(TARGET_EMOTIONS)
    True
    """
    path = Path(LEXICON_PATH if path is None else path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a non-empty mapping of emotion -> {{keywords, continuations}}, "
                         f"got {type(raw).__name__}; valid emotions: {list(TARGET_EMOTIONS)}")
    lexicon: dict[str, dict[str, list[str]]] = {}
    for emotion, entry in raw.items():
        if emotion not in TARGET_EMOTIONS:
            raise ValueError(f"{path}: unknown emotion {emotion!r}; valid emotions: {list(TARGET_EMOTIONS)}")
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: emotion {emotion!r} must be a mapping with keys {list(LEXICON_KEYS)}, "
                             f"got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(LEXICON_KEYS), key=str)
        if unknown:
            raise ValueError(f"{path}: emotion {emotion!r} has unknown key(s) {unknown}; "
                             f"valid keys: {list(LEXICON_KEYS)}")
        lexicon[emotion] = {key: _string_list(path, emotion, key, entry.get(key)) for key in LEXICON_KEYS}
        for word in lexicon[emotion]["continuations"]:
            if not re.fullmatch(r" \S+", word):
                raise ValueError(f"{path}: emotion {emotion!r} key 'continuations' has {word!r}; each continuation "
                                 "must be one word with a single leading space, like ' sorry'")
    return lexicon


def _string_list(path: Path, emotion: str, key: str, value) -> list[str]:
    """The list ``value`` of non-empty strings under ``emotion.key``, or a ValueError naming the fault."""
    where = f"{path}: emotion {emotion!r} key {key!r}"
    if value is None:
        raise ValueError(f"{where} is missing; each emotion needs a non-empty list under each of {list(LEXICON_KEYS)}")
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of non-empty strings, got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{where} item {i} is {item!r}; valid items are non-empty strings")
    return list(value)


def _keyword_pattern(keywords: list[str]) -> re.Pattern:
    """One case-insensitive whole-word regex matching any keyword, longest first, phrases on any whitespace."""
    alternatives = sorted({k.strip().lower() for k in keywords}, key=lambda k: (-len(k), k))
    body = "|".join(r"\s+".join(re.escape(w) for w in k.split()) for k in alternatives)
    # (?<!\w) / (?!\w) equal \b at keyword edges that are word characters, and stay whole-word otherwise.
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)


def keyword_counts(texts: list[str], lexicon: dict[str, dict[str, list[str]]]) -> pd.DataFrame:
    """Per text [n rows], per emotion [one int column each]: non-overlapping whole-word keyword matches.

    >>> keyword_counts(["I'm FURIOUS. Thank you, truly.", "Happy Thanksgiving"],
    ...                {"gratitude": {"keywords": ["thank", "thank you"]}, "anger": {"keywords": ["furious"]}})
       gratitude  anger
    0          1      1
    1          0      0
    """
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__} {t!r}; keyword_counts needs a list of strings")
    columns = {}
    for emotion, entry in lexicon.items():
        if not entry.get("keywords"):
            raise ValueError(f"lexicon[{emotion!r}] has no 'keywords'; pass load_lexicon() or "
                             "{emotion: {'keywords': [...]}} with a non-empty list")
        pattern = _keyword_pattern(entry["keywords"])
        columns[emotion] = np.array([len(pattern.findall(t)) for t in texts], dtype=np.int64)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(texts)))


@lru_cache(maxsize=1)
def _vader():
    """The one shared VADER analyzer (loading its lexicon takes ~0.1 s)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


def vader_compound(texts: list[str]) -> np.ndarray:
    """VADER compound sentiment in [-1, 1] per text: float64 [n].

    >>> s = vader_compound(["Thank you, this is wonderful!", "This is awful and I hate it."])
    >>> bool(s[0] > 0.5 and s[1] < -0.5)
    True
    """
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__} {t!r}; vader_compound needs a list of strings")
    analyzer = _vader()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)
