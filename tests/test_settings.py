"""Progress policy: bars and steps go to the runner's side channel when it names one, else to stderr; never
to a notebook's stdout; off with EMOTION_NO_PROGRESS=1."""
from __future__ import annotations

import pytest

import lib.settings as S


@pytest.fixture
def clean(monkeypatch):
    for key in (S.PROGRESS_FILE, S.PROGRESS_COLUMNS, "EMOTION_NO_PROGRESS"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_with_a_channel_bars_and_steps_go_there_and_nowhere_else(clean, tmp_path, capsys):
    channel = tmp_path / "progress.log"
    clean.setenv(S.PROGRESS_FILE, str(channel))
    clean.setenv(S.PROGRESS_COLUMNS, "70")
    S.step("sweeps", 3, 7)
    assert sum(1 for _ in S.progress_bar(range(5), desc="heads", mininterval=0)) == 5
    S.step("generation")
    text = channel.read_bytes().decode()  # as written: redraws start with "\r"
    assert capsys.readouterr() == ("", "")  # nothing for the notebook, hence nothing for its report
    assert text.startswith("\rstep 3/7: sweeps\n") and text.endswith("\rgeneration\n")
    redraws = text.split("\n")[1].split("\r")[1:]
    assert [r.split("|")[0] for r in redraws] == [f"heads: {p:>3}%" for p in (0, 20, 40, 60, 80, 100, 100)]
    assert all(len(r.rstrip()) <= 70 for r in redraws)  # the width the runner asked for
    assert not S.show_progress()  # code that prints its own progress must not, under the runner


def test_without_a_channel_bars_and_steps_are_on_stderr(clean, capsys):
    S.step("probes", 1)
    for _ in S.progress_bar(range(2), desc="layers", mininterval=0):
        pass
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("step 1: probes\n") and "layers: 100%" in err and S.show_progress()


def test_no_progress_turns_bars_and_steps_off_everywhere(clean, tmp_path, capsys):
    clean.setenv("EMOTION_NO_PROGRESS", "1")
    S.step("probes")
    assert list(S.progress_bar(range(3), desc="layers")) == [0, 1, 2]
    assert capsys.readouterr() == ("", "") and not S.show_progress()
    clean.setenv(S.PROGRESS_FILE, str(tmp_path / "progress.log"))
    S.step("probes")
    list(S.progress_bar(range(3), desc="layers"))
    assert not (tmp_path / "progress.log").exists()


def test_a_channel_that_cannot_be_written_never_fails_the_phase(clean, tmp_path, capsys):
    clean.setenv(S.PROGRESS_FILE, str(tmp_path / "missing" / "progress.log"))  # as when the disk is full
    S.step("sweeps")
    assert list(S.progress_bar(range(3), desc="heads")) == [0, 1, 2]
    assert capsys.readouterr() == ("", "")
