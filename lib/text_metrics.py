"""Metrics on generated text: emotion keyword counts, VADER sentiment, and bootstrap / permutation statistics.

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

from lib.directions import EMOTIONS
from lib.paths import DATA

__all__ = [
    "LEXICON_PATH", "LEXICON_KEYS", "ALTERNATIVES",
    "load_lexicon", "keyword_counts", "vader_compound", "paired_difference", "mean_ci", "permutation_p",
]

LEXICON_PATH = DATA / "lexicon" / "emotion_lexicon.yaml"
LEXICON_KEYS = ("keywords", "continuations")
ALTERNATIVES = ("greater", "less", "two-sided")


def load_lexicon(path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """Read and validate the emotion lexicon YAML: {emotion: {"keywords": [...], "continuations": [...]}}.

    >>> sorted(load_lexicon()) == sorted(EMOTIONS)
    True
    """
    path = Path(LEXICON_PATH if path is None else path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a non-empty mapping of emotion -> {{keywords, continuations}}, "
                         f"got {type(raw).__name__}; valid emotions: {list(EMOTIONS)}")
    lexicon: dict[str, dict[str, list[str]]] = {}
    for emotion, entry in raw.items():
        if emotion not in EMOTIONS:
            raise ValueError(f"{path}: unknown emotion {emotion!r}; valid emotions: {list(EMOTIONS)}")
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


def _finite_1d(x, name: str) -> np.ndarray:
    """``x`` as a non-empty finite float64 vector [n], or a ValueError naming ``name``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of numbers, got shape {a.shape}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {a[bad[0]]}; values must be finite ({bad.size} non-finite)")
    return a


def _check_boot(n_boot: int, level: float) -> None:
    """Raise a ValueError unless ``n_boot`` is a positive int and ``level`` lies in (0, 1)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r}; valid values are integers >= 1")
    if not 0 < level < 1:
        raise ValueError(f"level={level!r}; valid values lie strictly between 0 and 1 (e.g. 0.95)")


def mean_ci(x, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``x`` [n] with a percentile bootstrap CI over items: {mean, ci_low, ci_high, n, level}.

    Replicate b averages ``x[rng.integers(0, n, size=n)]`` with ``rng = numpy.random.default_rng(seed)``;
    the CI is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (numpy's linear method).

    >>> r = mean_ci([1.0, 2.0, 3.0, 4.0])
    >>> r["mean"], r["n"], bool(r["ci_low"] <= 2.5 <= r["ci_high"])
    (2.5, 4, True)
    """
    a = _finite_1d(x, "x")
    _check_boot(n_boot, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(int(n_boot), a.size))  # [n_boot, n]
    boot = a[idx].mean(axis=1)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(a.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(a.size),
            "level": float(level)}


def paired_difference(base, other, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean per-item difference ``other - base`` [n] with ``mean_ci``'s bootstrap CI: {mean, ci_low, ci_high, n, level}.

    >>> r = paired_difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.5])
    >>> round(r["mean"], 6), r["n"]
    (1.166667, 3)
    """
    b, o = _finite_1d(base, "base"), _finite_1d(other, "other")
    if b.shape != o.shape:
        raise ValueError(f"base has {b.size} items and other has {o.size}; paired differences need equal lengths")
    return mean_ci(o - b, n_boot=n_boot, seed=seed, level=level)


def permutation_p(observed: float, null, *, alternative: str = "greater") -> float:
    """Permutation p-value with the +1 correction: (1 + #{null as extreme as observed}) / (1 + len(null)).

    ``greater``: null >= observed; ``less``: null <= observed; ``two-sided``: |null| >= |observed|.

    >>> permutation_p(2.0, [0.0, 1.0, 2.0, 3.0])
    0.6
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}; valid alternatives: {list(ALTERNATIVES)}")
    z = _finite_1d(null, "null")
    if not np.isfinite(observed):
        raise ValueError(f"observed={observed!r}; it must be a finite number")
    if alternative == "greater":
        hits = np.sum(z >= observed)
    elif alternative == "less":
        hits = np.sum(z <= observed)
    else:
        hits = np.sum(np.abs(z) >= abs(observed))
    return float((1 + hits) / (1 + z.size))
