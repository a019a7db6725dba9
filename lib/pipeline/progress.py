"""A phase's progress on the runner's terminal, never in its report: the kernel writes bars and steps to a
side channel (``lib.settings``), and a thread here copies them to stderr, prefixed with the phase. The
kernel's own messages (ipykernel's warnings, a traceback when Ctrl-C stops it) go to a log file instead.

On a terminal a bar redraws one line in place; in a log (stderr not a terminal) each bar is written as
a whole line at most every ``every`` seconds, and once more when it ends.

>>> import io; out = io.StringIO(); lines = Lines("[00_t] ", out, tty=False, every=0)
>>> lines.feed("\\rbar  0%\\rbar 50%\\rbar 100%\\n\\rstep 2/3: sweeps\\n")
>>> print(out.getvalue(), end="")
[00_t] bar  0%
[00_t] bar 50%
[00_t] bar 100%
[00_t] step 2/3: sweeps
"""
from __future__ import annotations

import codecs
import contextlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from lib.settings import PROGRESS_COLUMNS, PROGRESS_FILE

__all__ = ["Lines", "relay_progress", "kernel_manager_class"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SEPARATORS = re.compile(r"(\r|\n)")


class Lines:
    """Turns tqdm's output (``\\r``-separated redraws, ``\\n``-ended lines) into prefixed terminal or log lines."""

    def __init__(self, prefix: str, out=None, *, tty: bool | None = None, every: float = 15.0):
        self.prefix, self._out, self.every = prefix, out, every
        self.tty = self._stream().isatty() if tty is None else tty
        self._buffer, self._current, self._shown = "", None, True
        self._open_line, self._last_logged = False, float("-inf")

    def _stream(self):
        return self._out if self._out is not None else sys.stderr  # read late: tests capture sys.stderr

    def _write(self, text: str) -> None:
        stream = self._stream()
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # a closed or odd terminal: progress is not worth failing for
            pass

    def feed(self, text: str) -> None:
        """Handle more of the channel's text; the unterminated tail is the bar's current state."""
        parts = _SEPARATORS.split(self._buffer + text)
        for segment, sep in zip(parts[:-1:2], parts[1::2]):
            (self._line if sep == "\n" else self._redraw)(segment)
        self._buffer = parts[-1]
        if self._buffer:
            self._redraw(self._buffer)

    def _redraw(self, segment: str) -> None:
        if not segment:  # two separators in a row
            return
        segment = _ANSI.sub("", segment).rstrip()
        if segment == self._current:
            return
        if not segment:  # blanks: tqdm clears a bar that is not kept (leave=False)
            self.end()
            return
        self._current, self._shown = segment, False
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self._write("\r" + (self.prefix + segment)[:width] + "\x1b[K")
            self._open_line = self._shown = True
        elif time.monotonic() - self._last_logged >= self.every:
            self._log(segment)

    def _log(self, segment: str) -> None:
        self._write(self.prefix + segment + "\n")
        self._shown, self._last_logged = True, time.monotonic()

    def _line(self, segment: str) -> None:
        segment = _ANSI.sub("", segment).rstrip()
        if not segment:
            return
        if not self.tty and segment == self._current and self._shown:
            self._current = None  # a bar's last state, already logged
            return
        self._write(("\r" if self._open_line else "") + self.prefix + segment + ("\x1b[K\n" if self.tty else "\n"))
        self._current, self._shown, self._open_line = None, True, False

    def end(self) -> None:
        """Finish the bar in progress: end its terminal line, or log its last state if not yet logged."""
        if self._open_line:
            self._write("\n")
        elif self._current is not None and not self._shown:
            self._log(self._current)
        self._current, self._shown, self._open_line = None, True, False


def _follow(path: Path, lines: Lines, stop: threading.Event, poll: float) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offset = 0
    while True:
        finished = stop.is_set()  # read once more after the phase ended, then stop
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            data = b""
        offset += len(data)
        if data:
            lines.feed(decoder.decode(data))
        if finished:
            lines.end()
            return
        stop.wait(poll)


@contextlib.contextmanager
def relay_progress(label: str, *, out=None, poll: float = 0.25, every: float = 15.0):
    """While the block runs, a phase kernel started in it (which inherits this environment) sends its
    progress through a temporary file that is copied to ``out`` (stderr) as ``[label] ...`` lines.
    If no temporary file can be made, progress is turned off for the block instead (never into a report)."""
    saved = {k: os.environ.get(k) for k in (PROGRESS_FILE, PROGRESS_COLUMNS, "EMOTION_NO_PROGRESS")}
    lines = Lines(f"[{label}] ", out, every=every)
    try:
        fd, name = tempfile.mkstemp(prefix=f"emotion-progress-{label}-", suffix=".log")
        os.close(fd)
    except OSError:
        name = None
    stop, thread = threading.Event(), None
    try:
        if name is None:
            os.environ["EMOTION_NO_PROGRESS"] = "1"
        else:
            os.environ[PROGRESS_FILE] = name
            if lines.tty:
                os.environ[PROGRESS_COLUMNS] = str(max(shutil.get_terminal_size().columns - len(lines.prefix) - 1, 40))
            thread = threading.Thread(target=_follow, args=(Path(name), lines, stop, poll), daemon=True,
                                      name=f"progress {label}")
            thread.start()
        yield lines
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=5)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if name is not None:
            Path(name).unlink(missing_ok=True)


def kernel_manager_class(stream):
    """A ``jupyter_client`` kernel manager whose kernel process writes its own stdout and stderr to ``stream``
    (an open file, or ``subprocess.DEVNULL``) instead of the terminal; what a cell prints still reaches the
    notebook. For papermill's ``kernel_manager_class``."""
    from jupyter_client import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw.setdefault("stdout", stream)
            kw.setdefault("stderr", stream)
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggedKernelManager
