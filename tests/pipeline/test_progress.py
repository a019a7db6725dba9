"""A phase's progress relayed to the terminal: tqdm's redraws become one redrawn line on a terminal and
whole lines in a log; the side channel lives only while the phase runs."""
from __future__ import annotations

import io
import os
import tempfile
import time

import pytest
from tqdm.std import tqdm

from lib.pipeline.progress import Lines, relay_progress
from lib.settings import PROGRESS_FILE, progress_bar, step


def _tqdm_output(n: int, leave: bool = True) -> str:
    """What tqdm itself writes for a bar over ``n`` items (the independent source of the input)."""
    buf = io.StringIO()
    for _ in tqdm(range(n), file=buf, desc="loop", mininterval=0, leave=leave, ncols=60):
        pass
    return buf.getvalue()


def test_a_log_gets_whole_lines_with_the_prefix():
    out = io.StringIO()
    lines = Lines("[02_x] ", out, tty=False, every=0)
    lines.feed(_tqdm_output(3))
    lines.feed("\rstep 2/5: sweeps\n")
    lines.end()
    got = out.getvalue().splitlines()
    assert all(line.startswith("[02_x] ") for line in got) and "\r" not in out.getvalue()
    # every redraw (every=0), then the line tqdm keeps, then the step
    assert [line.split("|")[0] for line in got[:-1]] == [f"[02_x] loop: {p:>3}%" for p in (0, 33, 67, 100, 100)]
    assert got[-1] == "[02_x] step 2/5: sweeps"


def test_a_log_is_throttled_and_a_bar_not_kept_still_logs_its_last_state():
    out = io.StringIO()
    lines = Lines("[p] ", out, tty=False, every=3600)
    lines.feed(_tqdm_output(50, leave=False))  # redrawn 51 times, then cleared with blanks
    got = out.getvalue().splitlines()
    assert len(got) == 2 and "0/50" in got[0] and "50/50" in got[1]


def test_a_terminal_gets_one_redrawn_line_per_bar():
    out = io.StringIO()
    lines = Lines("[p] ", out, tty=True)
    lines.feed(_tqdm_output(3))
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("it/s]\x1b[K\n") and "| 3/3 [" in text.rsplit("\r", 1)[1]
    assert text.count("\r[p] loop:") == 5  # four redraws, then the kept line, each erasing the rest of the line
    lines.feed("\rhalf" + "\x1b[A")  # cursor moves from nested bars are dropped
    lines.end()
    assert out.getvalue().endswith("\r[p] half\x1b[K\n")


def test_a_partial_utf8_write_and_a_split_redraw_are_joined():
    out = io.StringIO()
    lines = Lines("", out, tty=False, every=0)
    lines.feed("\rab")
    lines.feed("c \u2588\n")
    assert out.getvalue().splitlines() == ["ab", "abc \u2588"]


def test_the_relay_copies_the_channel_while_the_block_runs_then_removes_it(monkeypatch):
    monkeypatch.delenv(PROGRESS_FILE, raising=False)
    monkeypatch.delenv("EMOTION_NO_PROGRESS", raising=False)
    out = io.StringIO()
    with relay_progress("03_v", out=out, poll=0.01) as lines:
        path = os.environ[PROGRESS_FILE]
        assert not lines.tty
        step("probes", 1, 2)  # as the kernel would, through the environment it inherits
        for _ in progress_bar(range(4), desc="layers", mininterval=0):
            pass
        time.sleep(0.05)
    assert PROGRESS_FILE not in os.environ and not os.path.exists(path)
    got = out.getvalue().splitlines()
    assert got[0] == "[03_v] step 1/2: probes" and got[-1].startswith("[03_v] layers: 100%")


def test_without_a_temporary_file_progress_is_off_not_in_the_report(monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.delenv("EMOTION_NO_PROGRESS", raising=False)
    monkeypatch.setattr(tempfile, "mkstemp", full)
    with relay_progress("03_v", out=io.StringIO()):
        assert os.environ["EMOTION_NO_PROGRESS"] == "1" and PROGRESS_FILE not in os.environ
    assert "EMOTION_NO_PROGRESS" not in os.environ


@pytest.mark.parametrize("value", [None, "1"])
def test_the_relay_restores_the_environment(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("EMOTION_NO_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("EMOTION_NO_PROGRESS", value)
    with relay_progress("x", out=io.StringIO()):
        pass
    assert os.environ.get("EMOTION_NO_PROGRESS") == value
