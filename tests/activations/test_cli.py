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
