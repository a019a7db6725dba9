"""The command line (``python -m lib.activations``) and its deprecated alias ``python -m lib.extract``."""
from __future__ import annotations

import json
import runpy
import sys

import pytest

from lib.activations.cli import main
from lib.activations.store import open_store


def test_main_extracts_and_reports(tmp_path, capsys):
    argv = ["--model", "tiny-gpt2", "--profile", "baseline", "--max-per-emotion", "2", "--layers", "1",
            "--sites", "hook_resid_post", "--token-sites", "--device", "cpu", "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    store = open_store(tmp_path / "s")
    assert summary["n_rows"] == len(store.labels) == 8 and store.hooks == ["blocks.1.hook_resid_post"]
    assert summary["n_tokens"] == int(store.labels["n_tokens"].sum()) and store.attrs["token_sites"] == []


def test_main_names_a_bad_hook(tmp_path, capsys):
    argv = ["--model", "tiny-gpt2", "--profile", "baseline", "--max-per-emotion", "1", "--device", "cpu",
            "--hooks", "blocks.0.hook_resid_pots", "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: 'blocks.0.hook_resid_pots' is not a hook of tiny-gpt2. Closest: ['blocks.0.hook_resid_post'" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("module", ["lib.activations", "lib.extract"])
def test_both_entry_points_run_main(module, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module(module, run_name="__main__")
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m lib.activations") and "--per-head" in out and "--token-sites" in out


_BASE = ["--model", "tiny-gpt2", "--profile", "baseline", "--max-per-emotion", "2", "--layers", "1",
         "--sites", "hook_resid_post", "--token-sites", "hook_resid_post", "--device", "cpu"]


def _one_error_line(capsys, code, expect, got):
    err = capsys.readouterr().err
    assert got == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and expect in lines[0], err
    return lines[0]


def test_out_dot_in_a_folder_with_files_changes_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path)
    code = main([*_BASE, "--out", "."])
    _one_error_line(capsys, 2, "is not empty and is not an activation store", code)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    _one_error_line(capsys, 2, "is a file, not a folder", main([*_BASE, "--out", str(tmp_path / "f")]))


@pytest.mark.parametrize("argv, expect", [
    (["--hooks", "blocks.0.hook_resid_post", "--layers", "1"], "not both: layers would be ignored"),
    (["--layers", "1", "1"], "layer(s) [1] given more than once"),
    (["--token-sites", "hook_resid_psot"], "token site(s) ['hook_resid_psot'] are not sites of tiny-gpt2"),
    (["--max-per-emotion", "0"], "--max-per-emotion 0: give a count >= 1"),
    (["--profile", "goemotions:test"], "unknown GoEmotions split 'test'"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, argv, expect):
    base = ["--model", "tiny-gpt2", "--profile", "baseline", "--max-per-emotion", "1", "--device", "cpu"]
    _one_error_line(capsys, 2, expect, main([*base, *argv, "--out", str(tmp_path / "s")]))
    assert not (tmp_path / "s").exists()


def test_disk_full_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    import errno

    import lib.activations.writer as W

    orig, calls = W.ChunkEncoder._write_chunk, {"n": 0}

    def full(self, coords, chunk):
        calls["n"] += 1
        if calls["n"] > 12:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.dir))
        return orig(self, coords, chunk)

    monkeypatch.setattr(W.ChunkEncoder, "_write_chunk", full)
    argv = [*_BASE, "--batch-size", "2", "--out", str(tmp_path / "s")]
    _one_error_line(capsys, 1, "error: disk full while writing", main(argv))
    assert not (tmp_path / "s" / "manifest.json").exists()
    monkeypatch.setattr(W.ChunkEncoder, "_write_chunk", orig)
    assert main(argv) == 0
    assert "resuming at batch" in capsys.readouterr().err
    assert main([*_BASE, "--batch-size", "2", "--out", str(tmp_path / "clean")]) == 0
    a, b = open_store(tmp_path / "s"), open_store(tmp_path / "clean")
    assert a.manifest["settings_sha256"] == b.manifest["settings_sha256"]
    assert (a.get("blocks.1.hook_resid_post") == b.get("blocks.1.hook_resid_post")).all()


def test_read_only_place_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    from pathlib import Path

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    _one_error_line(capsys, 1, "is on a read-only file system", main([*_BASE, "--out", str(tmp_path / "s")]))


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import lib.activations.extract as E

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "_run_batches", interrupted)
    monkeypatch.setenv("EMOTION_NO_PROGRESS", "1")
    code = main([*_BASE, "--out", str(tmp_path / "s")])
    _one_error_line(capsys, 130, "interrupted; rerun the same command to resume", code)


def test_verify_and_gc_commands(tmp_path, monkeypatch, capsys):
    assert main([*_BASE, "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {tmp_path / 's'} (")
    chunk = next((tmp_path / "s" / "mean").rglob("c/*/*/*"))
    chunk.write_bytes(chunk.read_bytes()[:-1] + bytes([chunk.read_bytes()[-1] ^ 1]))
    _one_error_line(capsys, 2, "checksum mismatch", main(["verify", str(tmp_path / "s")]))
    monkeypatch.setattr("lib.activations.cleanup.RESULTS", tmp_path / "results")
    assert main(["gc", "--stores-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"unused: {tmp_path / 's'}" in out and "rerun with --delete" in out and (tmp_path / "s").exists()
