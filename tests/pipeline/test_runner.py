"""The reproduce pipeline on a throwaway notebook: runs, skips, reruns, keeps results safe."""
from __future__ import annotations

import json

import pytest

import lib.paths as paths
import lib.pipeline.runner as PL

NOTEBOOK = '''# %% [markdown]
# # Test phase

# %% tags=["parameters"]
x = 1
fail = False
output_dir = ""

# %%
from pathlib import Path
from lib.pipeline.provenance import save_summary
assert not fail, "asked to fail"
Path(output_dir, "x.txt").write_text(str(x))
save_summary(output_dir, summary=f"x is {x}")
print("VALUE", x * 1000)
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    for sub in ("notebooks", "params"):
        (tmp_path / sub).mkdir()
    (tmp_path / "notebooks" / "00_t.py").write_text(NOTEBOOK)
    (tmp_path / "params" / "00_t.yaml").write_text("x: 1\n")
    for name, value in [("NOTEBOOKS", tmp_path / "notebooks"), ("PARAMS", tmp_path / "params"),
                        ("RESULTS", tmp_path / "results"), ("REPORTS", tmp_path / "reports")]:
        monkeypatch.setattr(paths, name, value)  # every path is read from lib.paths at call time
    return tmp_path


def _run(logs):
    return PL.run_phase("00_t", "default", "", log=logs.append)


def test_runs_then_skips_then_reruns_on_param_change(project):
    logs = []
    first = _run(logs)
    out = project / "results" / "00_t" / "default"
    assert (out / "x.txt").read_text() == "1"
    assert first["summary"] == "x is 1" and first["params"]["x"] == 1
    assert json.loads((out / "manifest.json").read_text())["inputs_sha256"] == first["inputs_sha256"]
    report = (project / "reports" / "00_t--default.html").read_text()
    assert "VALUE 1000" in report and "Test phase" in report
    assert "save_summary" not in report  # code cells are hidden in reports

    second = _run(logs)
    assert "up to date, skipped" in logs[-1] and second["started"] == first["started"]

    (project / "params" / "00_t.yaml").write_text("x: 2\n")
    third = _run(logs)
    assert (out / "x.txt").read_text() == "2" and third["inputs_sha256"] != first["inputs_sha256"]


def test_failed_run_keeps_previous_results(project):
    _run([])
    (project / "params" / "00_t.yaml").write_text("x: 5\nfail: true\n")
    with pytest.raises(PL.PhaseError, match=r"phase 00_t \(default\) failed in cell 3 of notebooks/00_t.py \(starting .from pathlib import Path.\): AssertionError: asked to fail"):
        _run([])
    out = project / "results" / "00_t" / "default"
    assert (out / "x.txt").read_text() == "1" and (out / "manifest.json").exists()


def test_half_written_results_are_moved_aside_not_trusted(project):
    _run([])
    out = project / "results" / "00_t" / "default"
    (out / "manifest.json").unlink()
    logs = []
    _run(logs)
    assert any("had no manifest" in line for line in logs)
    aside = list((project / "results" / "00_t").glob("default.incomplete-*"))
    assert len(aside) == 1 and (aside[0] / "x.txt").exists()
    assert (out / "manifest.json").exists()


def test_index_lists_phase(project):
    _run([])
    page = PL.write_index().read_text()
    assert "00_t--default.html" in page and "x is 1" in page


def test_interrupted_swaps_are_recovered(project):
    first = _run([])
    out = project / "results" / "00_t"
    # killed after moving the old results aside, before the new ones were moved in
    (out / "default").rename(out / "default.old")
    logs = []
    assert _run(logs)["started"] == first["started"]  # restored, and still up to date
    assert any("restored" in line for line in logs)
    # killed right after the new folder got its manifest, before the rename
    (out / "default").rename(out / "default.partial")
    logs = []
    assert _run(logs)["started"] == first["started"]
    assert any("finished an interrupted swap" in line for line in logs)
    assert not (out / "default.partial").exists() and not (out / "default.old").exists()


def test_a_lost_or_stale_report_is_republished_from_results(project):
    _run([])
    report = project / "reports" / "00_t--default.html"
    report.write_text("stale")
    logs = []
    _run(logs)
    assert "up to date" in logs[-1] and "VALUE 1000" in report.read_text()


def test_force_reruns_without_losing_the_previous_results(project):
    first = _run([])
    (project / "params" / "00_t.yaml").write_text("x: 1\nfail: true\n")
    with pytest.raises(PL.PhaseError):
        PL.run_phase("00_t", "default", "", force=True, log=[].append)
    manifest = json.loads((project / "results" / "00_t" / "default" / "manifest.json").read_text())
    assert manifest["started"] == first["started"]
