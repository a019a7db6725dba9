"""Store specs by run, and their checks in params."""
from __future__ import annotations

import pytest

from lib.activations.runs import parse_profile


def test_profile_specs():
    assert parse_profile("goemotions:dev") == ("goemotions", "dev") and parse_profile("baseline") == ("baseline", None)
    from lib.pipeline.checks import check_values
    from lib.pipeline.params import ParamsError

    with pytest.raises(ParamsError, match="goemotions:dev"):
        check_values("02_activations", {"profiles": ["goemotions:test"]})


def test_runs_with_other_settings_keep_their_own_stores(tmp_path, monkeypatch):
    """Run A (5 rows per emotion) then run B (6): B writes beside A, A still reads its 20 rows; equal settings share."""
    import json

    import lib.activations.runs as R
    from lib.activations.cleanup import unused_stores
    from lib.activations.plan import ExtractConfig

    monkeypatch.setattr(R, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(R, "ROOT", tmp_path)
    monkeypatch.setattr("lib.activations.cleanup.RESULTS", tmp_path / "results")
    monkeypatch.setattr("lib.activations.cleanup.ROOT", tmp_path)
    config = ExtractConfig(layers=(1,), sites=("hook_resid_post",), token_sites=())
    quiet = {"device": "cpu", "log": lambda *_: None}
    for run, cap in (("A", 5), ("B", 6), ("C", 5)):
        paths = R.extract_all(["tiny-gpt2"], ["baseline"], config, tmp_path / "stores", max_per_emotion=cap, **quiet)
        index = tmp_path / "results" / "02_activations" / run / "stores.json"
        index.parent.mkdir(parents=True)
        index.write_text(json.dumps({m: {p: str(path.relative_to(tmp_path)) for p, path in by.items()}
                                     for m, by in paths.items()}))
    a, b, c = (R.open_run_store("tiny-gpt2", "baseline", run) for run in "ABC")
    assert len(a.labels) == len(c.labels) == 20 and len(b.labels) == 24
    assert a.path == c.path != b.path and a.path.name.startswith("baseline--")
    assert unused_stores(tmp_path / "stores") == []
    (tmp_path / "results" / "02_activations" / "B" / "stores.json").unlink()
    assert [e.path for e in unused_stores(tmp_path / "stores")] == [b.path]


def test_open_run_store_checks_every_chunk_and_the_folder_name(tmp_path, monkeypatch):
    import json
    import shutil

    import lib.activations.runs as R
    from lib.activations.plan import ExtractConfig
    from lib.activations.store import StoreError

    monkeypatch.setattr(R, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(R, "ROOT", tmp_path)
    config = ExtractConfig(layers=(1,), sites=("hook_resid_post",), token_sites=())
    paths = R.extract_all(["tiny-gpt2"], ["baseline"], config, tmp_path / "stores", max_per_emotion=2, device="cpu",
                          log=lambda *_: None)
    path = paths["tiny-gpt2"]["baseline"]
    index = tmp_path / "results" / "02_activations" / "default" / "stores.json"
    index.parent.mkdir(parents=True)
    index.write_text(json.dumps({"tiny-gpt2": {"baseline": str(path.relative_to(tmp_path))}}))
    chunk = next((path / "mean").rglob("c/*/*/*"))
    blob = chunk.read_bytes()
    chunk.write_bytes(bytes([blob[0] ^ 0x10]) + blob[1:])
    with pytest.raises(StoreError, match="checksum mismatch"):
        R.open_run_store("tiny-gpt2", "baseline")  # opening alone would not read that chunk
    chunk.write_bytes(blob)
    renamed = path.with_name("baseline--000000000000")
    shutil.move(path, renamed)
    index.write_text(json.dumps({"tiny-gpt2": {"baseline": str(renamed.relative_to(tmp_path))}}))
    with pytest.raises(StoreError, match="not the ones its folder is named for"):
        R.open_run_store("tiny-gpt2", "baseline")
    index.write_text("{")
    with pytest.raises(StoreError, match="stores.json is damaged"):
        R.open_run_store("tiny-gpt2", "baseline")


def test_gc_deletes_only_finished_stores(tmp_path, monkeypatch):
    """A folder under the stores holding some other manifest.json, or an unfinished store, is never deleted."""
    import json

    from lib.activations.cleanup import remove_stores, unused_stores

    monkeypatch.setattr("lib.activations.cleanup.RESULTS", tmp_path / "results")
    mine = tmp_path / "stores" / "notes"
    mine.mkdir(parents=True)
    (mine / "manifest.json").write_text(json.dumps({"title": "my own manifest"}))
    begun = tmp_path / "stores" / "m" / "baseline--0123"
    begun.mkdir(parents=True)
    (begun / "progress.json").write_text(json.dumps({"settings_sha256": "0123", "batches_done": 1}))
    unused = unused_stores(tmp_path / "stores")
    assert {e.path for e in unused} == {mine, begun}
    assert remove_stores(unused, log=lambda *_: None) == 0 and mine.exists() and begun.exists()
