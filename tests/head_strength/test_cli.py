"""The command line ``python -m lib.head_strength``, in process and once as a subprocess, on two tiny models saved
with save_pretrained: what it writes equals the API's results; bad input is one line and exit 2, changing nothing;
a file it did not make is never overwritten; a run that fails midway leaves the last complete outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lib.head_strength import ActivationExtractor, load_results, load_texts
from lib.head_strength.cli import MANIFEST, OUTPUT_FILES, main
from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
from lib.paths import ROOT

ITEMS = [{"text": "Thank you so much for your help."}, {"input": "I am furious!", "id": 2}, "Sorry I missed it.",
         {"question": "Why was the train cancelled again?"}, {"text": "The meeting moved to Thursday."}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("models")
    tok = build_tiny_tokenizer()
    for name, seed in (("pre", 0), ("fine", 1)):
        build_tiny_model("tiny-llama", seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    cfg = LlamaConfig(**{**build_tiny_model("tiny-llama").config.to_dict(), "num_attention_heads": 8, "head_dim": 8})
    LlamaForCausalLM(cfg).save_pretrained(root / "eight_heads")
    tok.save_pretrained(root / "eight_heads")
    (root / "data.json").write_text(json.dumps(ITEMS))
    return root


def _argv(folders, out, *extra, fine="fine"):
    return ["--pre_tuned_model", str(folders / "pre"), "--fine_tuned_model", str(folders / fine), "--data_path",
            str(folders / "data.json"), "--output_dir", str(out), "--batch_size", "2", "--device", "cpu", *extra]


def test_writes_every_file_and_they_equal_the_api(folders, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(folders, out, "--sample_num", "4", "--seed", "3", "--layers", "1", "--heads", "0-2")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_FILES, MANIFEST])
    assert summary["n_texts"] == 4 and summary["same_inputs"]
    texts = load_texts(folders / "data.json", 4, seed=3)
    for name, file in (("pre", "pre_tuned_activations.json"), ("fine", "fine_tuned_activations.json")):
        with ActivationExtractor(str(folders / name), device="cpu") as ex:
            ex.register_hooks(layers=[1], heads=[0, 1, 2])
            ex.extract_activations([texts[:2], texts[2:]])
            assert load_results(out / file).compute_R_h() == ex.compute_R_h()
    comparison = json.loads((out / "comparison.json").read_text())
    assert [(r["layer"], r["head"]) for r in comparison["per_head"]] == [(1, 0), (1, 1), (1, 2)]
    assert comparison["summary"]["spearman"] == summary["spearman"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["args"]["sample_num"] == 4 and set(manifest["files"]) == set(OUTPUT_FILES)
    assert manifest["timings"]["pre"]["tokens"] == sum(load_results(out / "pre_tuned_activations.json")
                                                       .per_sample["n_tokens"])
    assert main(_argv(folders, out)) == 0  # a rerun replaces its own files


def _one_line(capsys, code, expect):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # progress bars aside
    assert code == 2 and "Traceback" not in err and len(lines) == 1 and expect in lines[0], err
    return lines[0]


@pytest.mark.parametrize("extra, expect", [
    (["--layers", "5"], "layer 5 out of range"),
    (["--heads", "0-9"], "head 4 out of range"),
    (["--layers", "1-0"], "--layers '1-0': the range '1-0' runs backwards"),
    (["--heads", "x"], "--heads 'x': 'x' is not an index or a range"),
    (["--sample_num", "0"], "--sample_num 0: give a count >= 1"),
])
def test_bad_flags_are_one_line_and_write_nothing(folders, tmp_path, capsys, extra, expect):
    _one_line(capsys, main(_argv(folders, tmp_path / "out", *extra)), expect)
    assert not (tmp_path / "out").exists()


def test_bad_models_and_data_are_one_line(folders, tmp_path, capsys):
    out = tmp_path / "out"
    _one_line(capsys, main(_argv(folders, out, fine="eight_heads")),
              "pre' has 2 layers x 4 heads, --fine_tuned_model")
    _one_line(capsys, main(_argv(folders, out, fine="nowhere")), "unknown model")
    (folders / "no_field.json").write_text(json.dumps(["a", {"label": "x"}]))
    argv = _argv(folders, out)
    argv[argv.index("--data_path") + 1] = str(folders / "no_field.json")
    _one_line(capsys, main(argv), "item 1 has none of the fields ['input', 'text', 'question']")
    (folders / "empty.json").write_text("[]")
    argv[argv.index("--data_path") + 1] = str(folders / "empty.json")
    _one_line(capsys, main(argv), "holds no items")
    assert not out.exists()


def test_never_overwrites_what_it_did_not_make(folders, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "comparison.json").write_text("a user's file")
    _one_line(capsys, main(_argv(folders, out)), "comparison.json exists and was not written by this command")
    assert [p.name for p in out.iterdir()] == ["comparison.json"]
    (out / "comparison.json").unlink()
    assert main(_argv(folders, out)) == 0
    (out / "comparison_heatmap.png").write_bytes(b"edited by hand")
    _one_line(capsys, main(_argv(folders, out)), "comparison_heatmap.png exists and was not written")
    assert (out / "comparison_heatmap.png").read_bytes() == b"edited by hand"


def test_a_run_failing_midway_keeps_the_last_complete_outputs(folders, tmp_path, capsys, monkeypatch):
    import lib.head_strength.heatmaps as heatmaps

    out = tmp_path / "out"
    assert main(_argv(folders, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / ".head_strength.partial" / "comparison_heatmap.html"))

    monkeypatch.setattr(heatmaps, "write_comparison_html", full_disk)
    assert main(_argv(folders, out, "--layers", "0")) == 1
    assert "disk full while writing" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no partial folder, nothing half-written
    monkeypatch.undo()
    assert main(_argv(folders, tmp_path / "new")) == 0 and (tmp_path / "new").is_dir()
    monkeypatch.setattr(heatmaps, "write_comparison_html", full_disk)
    assert main(_argv(folders, tmp_path / "newer")) == 1 and not (tmp_path / "newer").exists()


def test_subprocess_runs_and_fails_in_one_line(folders, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "EMOTION_NO_PROGRESS": "1"}
    run = subprocess.run([sys.executable, "-m", "lib.head_strength", *_argv(folders, tmp_path / "o")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["n_texts"] == len(ITEMS)
    assert (tmp_path / "o" / "comparison_heatmap.html").is_file()
    bad = subprocess.run([sys.executable, "-m", "lib.head_strength", *_argv(folders, tmp_path / "p", "--heads", "7")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == \
        f"error: head 7 out of range: {folders / 'pre'} has 4 heads (valid: 0..3)"


def test_a_swap_cut_short_leaves_files_a_rerun_still_owns(folders, tmp_path, capsys, monkeypatch):
    import lib.head_strength.cli as cli

    out = tmp_path / "out"
    assert main(_argv(folders, out)) == 0
    real_replace, calls = os.replace, []

    def cut(src, dst):  # the run dies after renaming two of its files into place
        calls.append(dst)
        if len(calls) > 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(cli, "_rename", cut)
    assert main(_argv(folders, out, "--layers", "0")) == 130
    monkeypatch.undo()
    assert not (out / ".head_strength.partial").exists()
    assert json.loads((out / MANIFEST).read_text())["complete"] is False
    assert len(json.loads((out / "pre_tuned_activations.json").read_text())["layers"]) == 1  # new
    assert len(json.loads((out / "fine_tuned_activations.json").read_text())["layers"]) == 2  # old
    assert main(_argv(folders, out, "--layers", "0")) == 0, capsys.readouterr().err
    assert json.loads((out / "fine_tuned_activations.json").read_text())["layers"] == [0]
    assert json.loads((out / MANIFEST).read_text())["complete"] is True
