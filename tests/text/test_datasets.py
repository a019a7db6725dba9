"""Dataset files and validation: real counts, and every bad input gets a precise error."""
from __future__ import annotations

import json

import pytest

from lib.emotions import EMOTIONS
from lib.text.datasets import (DatasetError, load_authored, load_goemotions, load_profile, load_profiles,
                          span_text)
from lib.text.leakage import normalize
from lib.paths import EMOTION_DATA, GOEMOTIONS_DATA

GOOD = {"id": "bl-grat-0001", "text": "Thanks a lot!", "emotion": "gratitude", "profile": "baseline",
        "span_start": 0, "span_end": 12, "register": "casual", "domain": "personal"}


def test_authored_profiles_have_the_promised_counts():
    base, ext = load_profile("baseline"), load_profile("extended")
    assert base.groupby("emotion").size().to_dict() == {e: 225 for e in EMOTIONS}
    assert (ext.groupby("emotion").size() >= 400).all()
    assert set(base["id"]).isdisjoint(ext["id"])
    assert {normalize(t) for t in base["text"]}.isdisjoint({normalize(t) for t in ext["text"]})


def test_every_authored_span_is_whole_words_of_its_text():
    df = load_profiles(["baseline", "extended"])
    spans = df.apply(span_text, axis=1)
    assert (spans == spans.str.strip()).all() and spans.str.len().gt(0).all()
    for text, s, e in zip(df["text"], df["span_start"], df["span_end"]):
        assert s == 0 or not text[s - 1].isalnum(), f"span cuts a word at its start: {text!r} [{s}:{e}]"
        assert e == len(text) or not text[e].isalnum(), f"span cuts a word at its end: {text!r} [{s}:{e}]"


def test_goemotions_counts_match_the_dataset_readme():
    """Counts by hand from the raw TSV, and as given in data/goemotions/README.md."""
    expected = {"train": {"gratitude": 1857, "anger": 1025, "apology": 353, "neutral": 12823},
                "dev": {"gratitude": 261, "anger": 109, "apology": 40, "neutral": 1592}}
    names = {15: "gratitude", 2: "anger", 24: "apology", 27: "neutral"}
    for split, counts in expected.items():
        by_hand = {}
        for line in (GOEMOTIONS_DATA / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
            labels = line.split("\t")[1].split(",")
            if len(labels) == 1 and int(labels[0]) in names:
                by_hand[names[int(labels[0])]] = by_hand.get(names[int(labels[0])], 0) + 1
        assert by_hand == counts
        assert load_goemotions(split).groupby("emotion").size().to_dict() == counts


def _write(tmp_path, rows):
    path = tmp_path / "baseline.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("bad, message", [
    ("{not json", r"baseline.jsonl:2: bad JSON \(Expecting property name enclosed in double quotes, column 2\)"),
    ({**GOOD, "id": "x2", "emotion": "joy"}, r":2: unknown emotion 'joy'; valid: \['gratitude', 'anger', 'apology', 'neutral'\]"),
    ({**GOOD, "id": "x2", "text": "   "}, r":2: empty text"),
    ({**GOOD}, r":2: duplicate id 'bl-grat-0001' \(first on line 1\)"),
    ({**GOOD, "id": "x2", "span_end": 99}, r":2: span \[0, 99\) is not a non-empty range inside the text of length 13"),
    ({k: v for k, v in GOOD.items() if k != "register"} | {"id": "x2"}, r":2: fields must be exactly .* missing \['register'\]"),
    ({**GOOD, "id": "x2", "profile": "extended"}, r":2: profile 'extended' in a file of profile 'baseline'"),
    ({**GOOD, "id": "x2", "span_start": "0"}, r":2: field 'span_start' must be int"),
    ("", r":2: blank line"),
])
def test_bad_rows_fail_with_file_line_and_reason(tmp_path, bad, message):
    path = _write(tmp_path, [GOOD, bad])
    with pytest.raises(DatasetError, match=message):
        load_authored("baseline", path)


def test_good_file_loads(tmp_path):
    df = load_authored("baseline", _write(tmp_path, [GOOD]))
    assert df.loc[0, "text"] == "Thanks a lot!" and df.loc[0, "source"] == "authored"


def test_bad_goemotions_row(tmp_path):
    (tmp_path / "dev.tsv").write_text("fine text\t27\tabc\nbroken row\t27\n")
    with pytest.raises(DatasetError, match=r"dev.tsv:2: expected 3 tab-separated columns"):
        load_goemotions("dev", tmp_path)
    (tmp_path / "dev.tsv").write_text("text\t99\tabc\n")
    with pytest.raises(DatasetError, match=r"dev.tsv:1: label ids \[99\] outside 0..27"):
        load_goemotions("dev", tmp_path)


def test_filters_and_subsampling_are_checked_and_seeded():
    a = load_profile("extended", emotions=["anger", "neutral"], max_per_emotion=50, seed=3)
    b = load_profile("extended", emotions=["anger", "neutral"], max_per_emotion=50, seed=3)
    c = load_profile("extended", emotions=["anger", "neutral"], max_per_emotion=50, seed=4)
    assert a.equals(b) and not a.equals(c)
    assert a.groupby("emotion").size().to_dict() == {"anger": 50, "neutral": 50}
    with pytest.raises(DatasetError, match="non-empty subset"):
        load_profile("baseline", emotions=[])
    with pytest.raises(DatasetError, match="non-empty subset"):
        load_profile("baseline", emotions=["joy"])
    with pytest.raises(DatasetError, match=r"unknown profile 'basline'; valid: \['baseline', 'extended', 'goemotions'\]"):
        load_profile("basline")
    with pytest.raises(DatasetError, match="only goemotions has train/dev"):
        load_profile("baseline", split="dev")


def test_bytes_that_are_not_utf8_name_file_line_and_column(tmp_path):
    good = (EMOTION_DATA / "baseline.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "baseline.jsonl").write_bytes(b"".join(good[:2]) + good[2].replace(b'"text": "', b'"text": "\xff', 1))
    with pytest.raises(DatasetError, match=r"baseline.jsonl:3: byte 0xff at column \d+ is not UTF-8"):
        load_authored("baseline", tmp_path / "baseline.jsonl")
    (tmp_path / "dev.tsv").write_bytes(b"fine\t0\tid1\nbad \xe9t\xe9\t2\tid2\n")
    with pytest.raises(DatasetError, match=r"dev.tsv:2: byte 0xe9 at column 5 is not UTF-8"):
        load_goemotions("dev", tmp_path)
