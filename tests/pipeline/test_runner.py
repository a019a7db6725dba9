"""The reproduce pipeline on a throwaway notebook: runs, skips, reruns, keeps results safe, shows progress on
the terminal only, and reports every failure in one line with the right exit code."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import lib.paths as paths
import lib.pipeline.runner as PL

NOTEBOOK = '''# %% [markdown]
# # Test phase

# %% tags=["parameters"]
x = 1
fail = False
bar = 0
error = ""
sleep = 0.0
output_dir = ""

# %%
from pathlib import Path
from lib.pipeline.provenance import save_summary
assert not fail, "asked to fail"
Path(output_dir, "x.txt").write_text(str(x))
save_summary(output_dir, summary=f"x is {x}", splits={"rows": {"rule": "all"}},
             findings=[{"question": "What is x?", "finding": f"x = {x} [0, 2]", "control": "y = 0", "figure": "Test phase"}])
print("VALUE", x * 1000)

# %%
import time
from lib.files import IncompleteResultsError
from lib.settings import progress_bar, step
step("counting", 1, 2)
for _ in progress_bar(range(bar), desc="tiny loop", mininterval=0):
    time.sleep(sleep)
if error:
    raise eval(error)
'''


def _project(root, monkeypatch):
    for sub in ("notebooks", "params"):
        (root / sub).mkdir()
    (root / "notebooks" / "00_t.py").write_text(NOTEBOOK)
    (root / "params" / "00_t.yaml").write_text("x: 1\n")
    for name, value in [("NOTEBOOKS", root / "notebooks"), ("PARAMS", root / "params"),
                        ("RESULTS", root / "results"), ("REPORTS", root / "reports")]:
        monkeypatch.setattr(paths, name, value)  # every path is read from lib.paths at call time
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    return _project(tmp_path, monkeypatch)


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
    assert any("has no readable manifest.json" in line for line in logs)
    aside = list((project / "results" / "00_t").glob("default.incomplete-*"))
    assert len(aside) == 1 and (aside[0] / "x.txt").exists()
    assert (out / "manifest.json").exists()


def test_index_lists_phase(project):
    manifest = _run([])
    assert manifest["splits"] == {"rows": {"rule": "all"}} and manifest["findings"][0]["question"] == "What is x?"
    page = PL.write_index().read_text()
    assert "00_t--default.html" in page and "x is 1" in page
    # the findings come first, each linked to its figure's heading in the report
    assert page.index("What is x?") < page.index("x is 1")
    assert "href='00_t--default.html#Test-phase'" in page and "x = 1 [0, 2]" in page and "y = 0" in page


def test_index_refuses_a_malformed_finding(project):
    _run([])
    out = project / "results" / "00_t" / "default" / "manifest.json"
    m = json.loads(out.read_text())
    m["findings"] = [{"question": "only a question"}]
    out.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"lacks \['finding', 'control', 'figure'\]"):
        PL.write_index()


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


# --- progress on the terminal, never in the reports ---------------------------------------------------------


def test_progress_reaches_the_runner_stderr_and_not_the_notebook_or_report(project, capsys):
    (project / "params" / "00_t.yaml").write_text("x: 1\nbar: 3\n")
    _run([])
    err = capsys.readouterr().err
    assert "[00_t] step 1/2: counting" in err
    assert "[00_t] tiny loop: 100%" in err and "3/3" in err  # the bar's last state, with its rate and times
    assert "[IPKernelApp]" not in err  # the kernel's own warnings go to a log, not the terminal
    out = project / "results" / "00_t" / "default"
    cells = json.loads((out / "00_t.ipynb").read_text())["cells"]
    outputs = json.dumps([c.get("outputs", []) for c in cells])
    for text in (outputs, (out / "report.html").read_text(), (project / "reports" / "00_t--default.html").read_text()):
        assert "VALUE 1000" in text and "tiny loop:" not in text and "it/s]" not in text and "counting" not in text
    assert "EMOTION_PROGRESS_FILE" not in os.environ  # the channel is the phase's only
    assert not list(Path(tempfile.gettempdir()).glob("emotion-progress-00_t-*"))
    assert sorted(p.name for p in out.iterdir()) == ["00_t.ipynb", "manifest.json", "report.html", "summary.json",
                                                      "x.txt"]  # no marker or channel left in the results


# --- one error path: one line (and where the notebook is), an exit code, nothing lost ----------------------


def _main(project, monkeypatch, capsys, *args):
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # reproduce() prepends the checkout
    code = PL.main(["--only", "00_t", *args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def first_results(tmp_path_factory):
    """``results/`` and ``reports/`` of one complete run (x is 1), made once for the tests below."""
    root = tmp_path_factory.mktemp("first")
    with pytest.MonkeyPatch.context() as mp:
        _project(root, mp)
        PL.run_phase("00_t", "default", "", log=[].append)
    return root


@pytest.fixture
def done(project, first_results):
    """A complete earlier run (x is 1); returns a check that its results and report were kept as they were."""
    for sub in ("results", "reports"):
        shutil.copytree(first_results / sub, project / sub)
    out = project / "results" / "00_t" / "default"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    report = (project / "reports" / "00_t--default.html").read_bytes()

    def kept():
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert (project / "reports" / "00_t--default.html").read_bytes() == report
        return True

    return kept


def _fault(project, yaml: str):
    (project / "params" / "00_t.yaml").write_text(yaml)


KERNEL_FAULTS = [
    ("error: \"OSError(28, 'No space left on device', '/data/full/chunk.0')\"", 1,
     "error: phase 00_t (default): disk full while writing /data/full/chunk.0; free some space and rerun the "
     "same command"),
    ("error: \"PermissionError(13, 'Permission denied', '/data/ro/x.json')\"", 1,
     "error: phase 00_t (default): no permission to write /data/ro/x.json; choose a place you can write to"),
    ("error: \"IncompleteResultsError('results/02/x has no manifest.json: rerun it')\"", 1,
     "error: phase 00_t (default): results/02/x has no manifest.json: rerun it"),
    ("error: \"KeyboardInterrupt()\"", 130, "interrupted during phase 00_t (default); the last complete results"),
]


@pytest.mark.parametrize("yaml, code, first", KERNEL_FAULTS, ids=["ENOSPC", "EACCES", "lib error", "Ctrl-C"])
def test_an_error_in_a_phase_is_one_line_then_where_the_notebook_is(project, monkeypatch, capsys, done, yaml, code,
                                                                    first):
    _fault(project, f"x: 2\n{yaml}\n")
    got, err = _main(project, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.startswith(("error", "interrupted", "The "))]
    assert got == code and "Traceback" not in err and lines[0].startswith(first), err
    if code == 1:
        assert lines[1].startswith("The executed notebook is ") and "were kept" in lines[1] and len(lines) == 2
    else:
        assert "rerun the same command to resume" in lines[0] and len(lines) == 1
    assert done()


def test_a_bug_in_a_phase_names_the_cell(project, monkeypatch, capsys, done):
    _fault(project, "x: 2\nerror: \"ZeroDivisionError('division by zero')\"\n")
    got, err = _main(project, monkeypatch, capsys)
    assert got == 1 and "Traceback" not in err
    assert "error: phase 00_t (default) failed in cell 4 of notebooks/00_t.py (starting 'import time'): " \
           "ZeroDivisionError: division by zero" in err
    assert done()


RUNNER_FAULTS = [  # (what raises, the error, exit code, what the user reads)
    ("render_html", KeyboardInterrupt(), 130,
     "interrupted during phase 00_t (default); the last complete results ("),
    ("render_html", OSError(errno.ENOSPC, "No space left on device", "/r/00_t.partial/report.html"), 1,
     "error: phase 00_t (default): disk full while writing /r/00_t.partial/report.html"),
    ("write_json", OSError(errno.EROFS, "Read-only file system", "/r/00_t.partial/manifest.json"), 1,
     "error: phase 00_t (default): /r/00_t.partial/manifest.json is on a read-only file system"),
    ("fresh_partial", PermissionError(errno.EACCES, "Permission denied", "/r/00_t/default.partial"), 1,
     "error: phase 00_t (default): no permission to write /r/00_t/default.partial"),
]


@pytest.mark.parametrize("where, fault, code, first", RUNNER_FAULTS, ids=["Ctrl-C", "ENOSPC", "EROFS", "EACCES"])
def test_a_fault_while_writing_results_is_one_line_and_keeps_the_results(project, monkeypatch, capsys, done, where,
                                                                         fault, code, first):
    def boom(*args, **kwargs):
        raise fault

    _fault(project, "x: 2\n")
    monkeypatch.setattr(PL, where, boom)
    got, err = _main(project, monkeypatch, capsys)
    assert got == code and "Traceback" not in err and err.splitlines()[-1 - (code == 1)].startswith(first), err
    if code == 1:
        assert err.splitlines()[-1].startswith("The last complete results (") and err.splitlines()[-1].endswith(
            "were kept.")
    assert done()


def test_a_fault_outside_a_phase_is_one_line(project, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/r/reports/index.html")

    monkeypatch.setattr(PL, "write_index", full)
    got, err = _main(project, monkeypatch, capsys)
    assert got == 1 and "Traceback" not in err and err.splitlines()[-1] == (
        "error: disk full while writing /r/reports/index.html; free some space and rerun the same command")


def test_bad_params_exit_2(project, monkeypatch, capsys):
    got, err = _main(project, monkeypatch, capsys, "--only", "00_t", "99_nope")
    assert got == 2 and err.startswith("error: unknown phase(s) ['99_nope'] in --only; known: ['00_t']")


RUNNER = """
import sys
from pathlib import Path
import lib.paths as paths
for name in ("NOTEBOOKS", "PARAMS", "RESULTS", "REPORTS"):
    setattr(paths, name, Path(sys.argv[1], name.lower()))
from lib.pipeline.runner import main
raise SystemExit(main(sys.argv[2:]))
"""


def test_ctrl_c_at_the_terminal_keeps_the_results_and_says_how_to_resume(project, done):
    """A real SIGINT to the runner's process while a phase shows its bar."""
    env = {**os.environ, "PYTHONPATH": str(paths.ROOT)}
    cmd = [sys.executable, "-c", RUNNER, str(project)]
    (project / "params" / "00_t.yaml").write_text("x: 2\nbar: 600\nsleep: 0.2\n")
    # as at a terminal: Ctrl-C's default action, even when the tests run as a background job (a shell then
    # starts them with SIGINT ignored, and a child inherits that)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen, deadline = [], time.monotonic() + 240
        while not any("[00_t] tiny loop" in line for line in seen) and time.monotonic() < deadline:
            seen.append(proc.stderr.readline())  # the bar's first state is logged at once
            if not seen[-1] and proc.poll() is not None:
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == 130 and "Traceback" not in err and "[IPKernelApp]" not in err, err
    assert "interrupted during phase 00_t (default); the last complete results (" in err
    assert "rerun the same command to resume" in err
    assert done()


# --- never destroy what the runner did not make -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_folder_or_file_the_runner_did_not_make_is_moved_aside_not_deleted(project, kind):
    out = project / "results" / "00_t" / "default"
    out.parent.mkdir(parents=True)
    if kind == "folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        out.write_text("mine")
    logs = []
    _run(logs)
    aside = list(out.parent.glob("default.incomplete-*"))
    assert len(aside) == 1 and any("moved it to" in line and "not made by this runner" in line for line in logs)
    assert (aside[0] / "notes.txt" if kind == "folder" else aside[0]).read_text() == "mine"
    assert (out / "x.txt").read_text() == "1"


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_partial_or_old_the_runner_did_not_make_is_moved_aside(project, kind):
    base = project / "results" / "00_t"
    base.mkdir(parents=True)
    for name in ("default.partial", "default.old"):
        if kind == "folder":
            (base / name).mkdir()
            (base / name / "notes.txt").write_text(name)
        else:
            (base / name).write_text(name)
    logs = []
    _run(logs)
    for name in ("default.partial", "default.old"):
        aside = list(base.glob(f"{name}.incomplete-*"))
        assert len(aside) == 1, (name, logs)
        assert (aside[0] / "notes.txt" if kind == "folder" else aside[0]).read_text() == name
    assert (base / "default" / "x.txt").read_text() == "1" and not (base / "default.partial").exists()


def test_a_leftover_partial_of_the_runner_is_cleared_and_moving_aside_never_overwrites(project):
    from lib.pipeline.folders import fresh_partial, move_aside

    final = project / "results" / "00_t" / "default"
    partial = fresh_partial(final)
    (partial / "half.txt").write_text("from a killed run")
    assert fresh_partial(final) == partial and not (partial / "half.txt").exists()  # ours: cleared
    first = move_aside(partial, [].append, "test")
    again = fresh_partial(final)
    second = move_aside(again, [].append, "test")  # same second: a new name, the first kept
    assert first != second and first.exists() and second.exists()


def test_sigkill_at_random_points_keeps_the_results_and_the_rerun_completes(project, done, tmp_path_factory):
    """The runner killed with SIGKILL three times at seeded random moments (kernel start-up, the phase's loop,
    the report): the earlier complete results are kept each time, and the rerun's results equal those of an
    uninterrupted run."""
    import numpy as np

    env = {**os.environ, "PYTHONPATH": str(paths.ROOT), "EMOTION_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-c", RUNNER, str(project)]
    (project / "params" / "00_t.yaml").write_text("x: 2\nbar: 60\nsleep: 0.1\n")
    rng = np.random.default_rng(11)
    for delay in sorted(rng.uniform(0.5, 8.0, size=3)):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(delay)
        assert proc.poll() is None, "the phase finished before the kill: lengthen its loop"
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel, as an OOM kill or a power cut would
        proc.wait()
        assert done()
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    clean = tmp_path_factory.mktemp("clean")
    for sub in ("notebooks", "params"):
        shutil.copytree(project / sub, clean / sub)
    assert subprocess.run([sys.executable, "-c", RUNNER, str(clean)], env=env, capture_output=True).returncode == 0
    for name in ("x.txt", "summary.json"):
        got = (project / "results" / "00_t" / "default" / name).read_text()
        assert got == (clean / "results" / "00_t" / "default" / name).read_text()
    left = [p.name for p in (project / "results" / "00_t").iterdir() if p.name != "default"]
    assert all(".incomplete-" in name for name in left), left  # a kill before its marker: moved aside, kept
