"""Manifests, input hashes and half-written result folders."""
from __future__ import annotations

import json

import pytest

from lib.files import IncompleteResultsError, write_json
from lib.pipeline.provenance import hash_paths, read_manifest


def test_half_written_folder_is_refused(tmp_path):
    (tmp_path / "counts.csv").write_text("a,b\n")
    with pytest.raises(IncompleteResultsError, match="no manifest.json: it is half-written"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        read_manifest(tmp_path / "missing")
    write_json(tmp_path / "manifest.json", {"stem": "x"})
    assert read_manifest(tmp_path) == {"stem": "x"}
    assert not list(tmp_path.glob("*.tmp"))


def test_hash_changes_with_content_and_extra_but_not_hidden_files(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    h1 = hash_paths([tmp_path])
    assert hash_paths([tmp_path]) == h1
    assert hash_paths([tmp_path], extra=b"params") != h1
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    assert hash_paths([tmp_path]) == h1
    (tmp_path / "a.txt").write_text("two")
    assert hash_paths([tmp_path]) != h1


def test_write_json_round_trip(tmp_path):
    write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2], "b": 1}
