"""Manifests, input hashes and half-written result folders."""
from __future__ import annotations

import json

import pytest

from lib.paths import ROOT
from lib.provenance import IncompleteResultsError, hash_paths, read_manifest, write_json


def test_half_written_folder_is_refused(tmp_path):
    (tmp_path / "counts.csv").write_text("a,b\n")
    with pytest.raises(IncompleteResultsError, match="no manifest.json: it is half-written"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        read_manifest(tmp_path / "missing")
    write_json(tmp_path / "manifest.json", {"stem": "x"})
    assert read_manifest(tmp_path) == {"stem": "x"}
    assert not list(tmp_path.glob("*.tmp"))


def test_hash_changes_with_content_and_extra(tmp_path):
    folder = ROOT / "results" / "_hash_test"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / "a.txt").write_text("one")
        h1 = hash_paths([folder])
        assert hash_paths([folder]) == h1
        assert hash_paths([folder], extra=b"params") != h1
        (folder / "a.txt").write_text("two")
        assert hash_paths([folder]) != h1
    finally:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def test_write_json_round_trip(tmp_path):
    write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2], "b": 1}
