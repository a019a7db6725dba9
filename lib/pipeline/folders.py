"""Result folders that are never lost: a run writes into ``<run>.partial`` and is swapped in when complete;
an interrupted swap is finished or undone on the next run. Nothing this runner did not make is deleted or
overwritten: a half-written folder, or a folder or file someone else put where a result goes, is moved
aside to ``<run>.incomplete-<time>`` with a log line.

What the runner may delete, because it made it: a ``<run>.partial`` folder holding its marker file
(``MARKER``), and ``<run>.old``, the previous complete results (with their ``manifest.json``) during a swap.
"""
from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from lib.paths import relative

__all__ = ["recover", "move_aside", "fresh_partial", "swap_in", "MARKER"]

MARKER = ".made-by-reproduce"  # in a ``.partial`` folder: the runner made it, and may clear it


def _aside(final: Path, suffix: str) -> Path:
    return final.with_name(f"{final.name}.{suffix}")


def _is_ours(folder: Path, mark: str) -> bool:
    return folder.is_dir() and not folder.is_symlink() and (folder / mark).is_file()


def recover(final: Path, log) -> None:
    """Finish or undo a folder swap that a kill interrupted, so complete results are never lost."""
    partial, old = _aside(final, "partial"), _aside(final, "old")
    if not final.exists() and _is_ours(partial, "manifest.json"):
        partial.rename(final)  # killed between the two renames: the new results were complete
        (final / MARKER).unlink(missing_ok=True)
        log(f"[reproduce] finished an interrupted swap: {relative(final)}")
    if not final.exists() and _is_ours(old, "manifest.json"):
        old.rename(final)
        log(f"[reproduce] restored {relative(final)} from an interrupted swap")
    if _is_ours(old, "manifest.json"):
        shutil.rmtree(old, ignore_errors=True)  # the previous results, replaced by complete new ones
    elif old.exists() or old.is_symlink():
        move_aside(old, log, "is not a complete result of this runner")


def move_aside(final: Path, log, why: str) -> Path:
    """Rename ``final`` (a folder or a file) to ``<name>.incomplete-<time>`` (never onto anything that
    exists), say why, and return the new path."""
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    aside, n = _aside(final, f"incomplete-{stamp}"), 1
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = _aside(final, f"incomplete-{stamp}-{n}")
    final.rename(aside)
    log(f"[reproduce] {relative(final)} {why}; moved it to {relative(aside)}")
    return aside


def fresh_partial(final: Path, log=print) -> Path:
    """An empty ``<name>.partial`` folder beside ``final``, holding ``MARKER``. A leftover one this runner
    made is cleared; anything else there (no marker: a user's folder, a file) is moved aside."""
    partial = _aside(final, "partial")
    if _is_ours(partial, MARKER):
        try:
            shutil.rmtree(partial)
        except OSError as err:  # name the folder: rmtree's own message names only a file inside it
            raise OSError(err.errno, err.strerror, str(relative(partial))) from err
    elif partial.is_dir() and not partial.is_symlink() and not any(partial.iterdir()):
        partial.rmdir()
    elif partial.exists() or partial.is_symlink():
        move_aside(partial, log, "is not marked as made by this runner")
    partial.mkdir(parents=True)
    (partial / MARKER).write_text("made by `python -m lib.pipeline`; cleared when the phase reruns\n")
    return partial


def swap_in(partial: Path, final: Path) -> None:
    """Replace ``final`` by the complete ``partial`` (whose ``manifest.json`` is written): old aside,
    new in, old removed."""
    old = _aside(final, "old")
    (partial / MARKER).unlink(missing_ok=True)  # complete from here: its manifest says so
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)
