"""Emotion datasets: the authored profiles (baseline, extended) and real GoEmotions text.

Every row is validated on load; the first bad row stops the load with its file, line and fault.

>>> EMOTIONS
('gratitude', 'anger', 'apology', 'neutral')
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lib.emotions import EMOTIONS
from lib.errors import UserError
from lib.paths import EMOTION_DATA, GOEMOTIONS_DATA, relative

__all__ = [
    "PROFILES", "AUTHORED_PROFILES", "REGISTERS", "DOMAINS", "GOEMOTIONS_LABELS", "DatasetError",
    "load_authored", "load_goemotions", "load_profile", "load_profiles", "span_text",
]

AUTHORED_PROFILES = ("baseline", "extended")
PROFILES = (*AUTHORED_PROFILES, "goemotions")
REGISTERS = ("casual", "formal", "workplace", "service", "family", "online", "spoken")
# GoEmotions label ids (line numbers of emotions.txt) kept, and the emotion each becomes.
GOEMOTIONS_LABELS = {15: "gratitude", 2: "anger", 24: "apology", 27: "neutral"}
COLUMNS = ["id", "text", "emotion", "profile", "split", "span_start", "span_end", "register", "domain",
           "source"]
_AUTHORED_FIELDS = {"id": str, "text": str, "emotion": str, "profile": str, "span_start": int,
                    "span_end": int, "register": str, "domain": str}
DOMAINS = ("personal", "public")


class DatasetError(UserError, ValueError):
    """A dataset file or row that does not follow the schema; the message names file and line."""


def _fail(path: Path, line: int, what: str) -> None:
    raise DatasetError(f"{relative(path)}:{line}: {what}")


def _lines(path: Path):
    """(line number, text) of a UTF-8 text file; bytes that are not UTF-8 are an error naming file, line and column."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                _fail(path, line_no, f"byte {raw[err.start]:#04x} at column {err.start + 1} is not UTF-8; "
                                     f"save the file as UTF-8")
            yield line_no, text.replace("\r\n", "\n")  # as text mode reads Windows line ends


def _validate_authored_row(row, path: Path, line: int, profile: str, seen: dict[str, int]) -> dict:
    if not isinstance(row, dict):
        _fail(path, line, f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in _AUTHORED_FIELDS if k not in row]
    extra = sorted(set(row) - set(_AUTHORED_FIELDS))
    if missing or extra:
        _fail(path, line, f"fields must be exactly {list(_AUTHORED_FIELDS)}; missing {missing}, unexpected {extra}")
    for key, typ in _AUTHORED_FIELDS.items():
        if not isinstance(row[key], typ) or isinstance(row[key], bool):
            _fail(path, line, f"field {key!r} must be {typ.__name__}, got {row[key]!r}")
    text = row["text"]
    if not text.strip():
        _fail(path, line, f"empty text in row {row['id']!r}")
    if text != text.strip():
        _fail(path, line, f"text of row {row['id']!r} has leading or trailing whitespace")
    if row["emotion"] not in EMOTIONS:
        _fail(path, line, f"unknown emotion {row['emotion']!r}; valid: {list(EMOTIONS)}")
    if row["profile"] != profile:
        _fail(path, line, f"profile {row['profile']!r} in a file of profile {profile!r}")
    if row["register"] not in REGISTERS:
        _fail(path, line, f"unknown register {row['register']!r}; valid: {list(REGISTERS)}")
    if row["domain"] not in DOMAINS:
        _fail(path, line, f"unknown domain {row['domain']!r}; valid: {list(DOMAINS)}")
    s, e = row["span_start"], row["span_end"]
    if not 0 <= s < e <= len(text):
        _fail(path, line, f"span [{s}, {e}) is not a non-empty range inside the text of length {len(text)}")
    if row["id"] in seen:
        _fail(path, line, f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
    seen[row["id"]] = line
    return {**row, "split": "all", "source": "authored"}


def load_authored(profile: str, path: Path | None = None) -> pd.DataFrame:
    """Rows of an authored profile (``baseline`` or ``extended``), validated, in file order."""
    if profile not in AUTHORED_PROFILES:
        raise DatasetError(f"unknown authored profile {profile!r}; valid: {list(AUTHORED_PROFILES)}")
    path = Path(path) if path is not None else EMOTION_DATA / f"{profile}.jsonl"
    if not path.exists():
        raise DatasetError(f"{path}: file not found (authored profile {profile!r})")
    rows, seen = [], {}
    for line_no, line in _lines(path):
        if not line.strip():
            _fail(path, line_no, "blank line (one JSON object per line, no blank lines)")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            _fail(path, line_no, f"bad JSON ({err.msg}, column {err.colno})")
        rows.append(_validate_authored_row(row, path, line_no, profile, seen))
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return pd.DataFrame(rows, columns=COLUMNS)


def load_goemotions(split: str, folder: Path | None = None) -> pd.DataFrame:
    """GoEmotions ``train`` or ``dev`` rows whose whole label set is one kept label.

    remorse becomes apology; counts stay as they are (neutral dominates; see the README).
    """
    if split not in ("train", "dev"):
        raise DatasetError(f"unknown GoEmotions split {split!r}; valid: ['train', 'dev']")
    path = Path(folder or GOEMOTIONS_DATA) / f"{split}.tsv"
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    rows = []
    for line_no, line in _lines(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3:
            _fail(path, line_no, f"expected 3 tab-separated columns (text, label ids, comment id), got {len(parts)}")
        text, labels, comment_id = parts
        try:
            ids = {int(x) for x in labels.split(",")}
        except ValueError:
            _fail(path, line_no, f"label ids {labels!r} are not comma-separated integers")
        if not ids or min(ids) < 0 or max(ids) > 27:
            _fail(path, line_no, f"label ids {sorted(ids)} outside 0..27")
        if not comment_id:
            _fail(path, line_no, "empty comment id")
        if len(ids) != 1 or next(iter(ids)) not in GOEMOTIONS_LABELS or not text.strip():
            continue
        rows.append({"id": f"goemo-{split}-{comment_id}", "text": text.strip(),
                     "emotion": GOEMOTIONS_LABELS[next(iter(ids))], "profile": "goemotions",
                     "split": split, "span_start": None, "span_end": None,
                     "register": "online", "domain": "public", "source": "goemotions"})
    df = pd.DataFrame(rows, columns=COLUMNS)
    dup = df["id"].duplicated()
    if dup.any():
        raise DatasetError(f"{path}: duplicate comment id {df['id'][dup].iloc[0]!r}")
    return df


def load_profile(profile: str, *, split: str | None = None, emotions: list[str] | None = None,
                 max_per_emotion: int | None = None, seed: int = 0) -> pd.DataFrame:
    """One profile's rows, optionally filtered to ``emotions`` and subsampled per emotion (seeded).

    GoEmotions takes ``split`` (``train`` for fitting, ``dev`` for evaluation; default both).
    """
    if profile in AUTHORED_PROFILES:
        if split not in (None, "all"):
            raise DatasetError(f"profile {profile!r} has no split {split!r}; only goemotions has train/dev")
        df = load_authored(profile)
    elif profile == "goemotions":
        df = pd.concat([load_goemotions(s) for s in ([split] if split else ["train", "dev"])], ignore_index=True)
    else:
        raise DatasetError(f"unknown profile {profile!r}; valid: {list(PROFILES)}")
    if emotions is not None:
        bad = [e for e in emotions if e not in EMOTIONS]
        if bad or not emotions:
            raise DatasetError(f"emotion filter {emotions!r} must be a non-empty subset of {list(EMOTIONS)}")
        df = df[df["emotion"].isin(emotions)]
    if max_per_emotion is not None:
        if max_per_emotion < 1:
            raise DatasetError(f"max_per_emotion must be >= 1, got {max_per_emotion}")
        rng = np.random.default_rng(seed)
        keep = []
        for _, grp in df.groupby("emotion", sort=False):
            idx = grp.index.to_numpy()
            keep.extend(sorted(rng.choice(idx, size=min(max_per_emotion, len(idx)), replace=False)))
        df = df.loc[sorted(keep)]
    return df.reset_index(drop=True)


def load_profiles(profiles: list[str], **kwargs) -> pd.DataFrame:
    """Several profiles stacked, each as ``load_profile`` gives it."""
    if not profiles:
        raise DatasetError(f"no profiles asked for; valid: {list(PROFILES)}")
    return pd.concat([load_profile(p, **kwargs) for p in profiles], ignore_index=True)


def span_text(row) -> str | None:
    """The emotion-bearing phrase of a row, or None where no span is annotated (GoEmotions)."""
    if row["span_start"] is None or pd.isna(row["span_start"]):
        return None
    return row["text"][int(row["span_start"]):int(row["span_end"])]
