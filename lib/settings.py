"""Process-wide policy, applied where it is needed (never on import): the hub, progress bars and steps.

Progress goes to the terminal, never into a report. In JupyterLab and tests, bars are ``tqdm.auto`` on
stderr. Under the runner (``python -m lib.pipeline``), which names a side channel in
``EMOTION_PROGRESS_FILE``, bars and steps are written to that file instead, and the runner copies it to
its terminal, prefixed with the phase. ``EMOTION_NO_PROGRESS=1`` turns bars and steps off.

>>> import os; os.environ.get("EMOTION_NO_PROGRESS") == "1" or bool(progress_channel()) or show_progress()
True
"""
from __future__ import annotations

import functools
import os
import sys
import warnings

__all__ = ["apply_hub_policy", "show_progress", "progress_bar", "progress_channel", "step", "PROGRESS_FILE",
           "PROGRESS_COLUMNS"]

PROGRESS_FILE = "EMOTION_PROGRESS_FILE"  # set by the runner: where a phase's bars and steps go
PROGRESS_COLUMNS = "EMOTION_PROGRESS_COLUMNS"  # set by the runner: the width a bar may take on its terminal


def apply_hub_policy() -> None:
    """Keep the Hugging Face hub offline unless ``EMOTION_HUB=1``, so an offline machine fails fast with a
    clear message instead of retrying for 30 s, and quiet tqdm's notebook warning. Call it before
    ``transformers`` is first imported (model loading does)."""
    if os.environ.get("EMOTION_HUB", "0") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # transformers and huggingface_hub import tqdm.auto, which warns in a notebook without ipywidgets;
    # progress bars then fall back to text, so the warning only clutters reports.
    warnings.filterwarnings("ignore", message="IProgress not found")


def _off() -> bool:
    return os.environ.get("EMOTION_NO_PROGRESS") == "1"


def progress_channel() -> str | None:
    """The file the runner reads a phase's progress from (``EMOTION_PROGRESS_FILE``), or None outside the runner."""
    return os.environ.get(PROGRESS_FILE) or None


def show_progress() -> bool:
    """Whether code may print progress lines on its own output (a notebook's stdout): yes in JupyterLab and
    tests; no under the runner, whose notebook output becomes a report, nor with ``EMOTION_NO_PROGRESS=1``.
    ``progress_bar`` and ``step`` decide for themselves and are always safe to call."""
    return not _off() and progress_channel() is None


class _Channel:
    """The runner's progress file, appended to; a failed write (disk full) is dropped, never raised,
    because progress must not fail a phase."""

    def __init__(self, path: str):
        self.path, self._file = path, None

    def write(self, text: str) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(text)
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        try:
            if self._file is not None:
                self._file.flush()
        except (OSError, ValueError):
            pass


_CHANNELS: dict[str, _Channel] = {}


def _channel() -> _Channel | None:
    path = progress_channel()
    return None if path is None else _CHANNELS.setdefault(path, _Channel(path))


def progress_bar(*args, **kwargs):
    """A tqdm bar: ``tqdm.auto.tqdm(*args, **kwargs)`` on stderr (without the warning tqdm gives in a notebook
    lacking ipywidgets); under the runner a text bar written to its progress channel, never to the
    notebook; disabled with ``EMOTION_NO_PROGRESS=1``."""
    if _off():
        kwargs["disable"] = True
    channel = _channel()
    if channel is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IProgress not found")
            from tqdm.auto import tqdm
        return tqdm(*args, **kwargs)
    kwargs["file"] = channel
    kwargs.setdefault("mininterval", 0.5)
    kwargs.setdefault("position", 0)  # one line: nested bars share it rather than move the cursor
    if os.environ.get(PROGRESS_COLUMNS, "").isdigit():
        kwargs.setdefault("ncols", int(os.environ[PROGRESS_COLUMNS]))
    return _channel_bar()(*args, **kwargs)


@functools.cache
def _channel_bar():
    """tqdm's text bar (whatever widgets the kernel has) that shows its last count before it closes, so a bar
    that is not kept does not end on a stale count in a log."""
    from tqdm.std import tqdm

    class ChannelBar(tqdm):
        def close(self):
            if not self.disable and self.n != self.last_print_n:
                self.refresh()
            super().close()

    return ChannelBar


def step(text: str, number: int | None = None, total: int | None = None) -> None:
    """Announce the step a phase starts, e.g. ``step("single-head sweeps", 3, 7)`` shows
    ``step 3/7: single-head sweeps``: on the runner's terminal (prefixed with the phase), or on stderr
    outside the runner; nothing with ``EMOTION_NO_PROGRESS=1``. Never written to a notebook's stdout.

    >>> import contextlib, io; err = io.StringIO()
    >>> with contextlib.redirect_stderr(err): step("sweeps", 3, 7)
    >>> err.getvalue() in ("", "step 3/7: sweeps\\n")
    True
    """
    if _off():
        return
    line = f"step {number}/{total}: {text}" if number is not None and total is not None else \
        f"step {number}: {text}" if number is not None else text
    channel = _channel()
    if channel is None:
        print(line, file=sys.stderr, flush=True)
        return
    channel.write(f"\r{line}\n")  # "\r" ends any bar line in progress, so the step gets its own line
    channel.flush()
