"""Result folders that are never lost: a run writes into ``<run>.partial`` and is swapped in when complete;
an interrupted swap is finished or undone on the next run; a half-written folder is moved aside, not deleted."""
from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from lib.paths import relative

__all__ = ["recover", "move_aside", "fresh_partial", "swap_in"]


def _aside(final: Path, suffix: str) -> Path:
    return final.with_name(f"{final.name}.{suffix}")


def recover(final: Path, log) -> None:
    """Finish or undo a folder swap that a kill interrupted, so complete results are never lost."""
    partial, old = _aside(final, "partial"), _aside(final, "old")
    if not final.exists() and (partial / "manifest.json").exists():
        partial.rename(final)  # killed between the two renames: the new results were complete
        log(f"[reproduce] finished an interrupted swap: {relative(final)}")
    if not final.exists() and old.exists():
        old.rename(final)
        log(f"[reproduce] restored {relative(final)} from an interrupted swap")
    shutil.rmtree(old, ignore_errors=True)


def move_aside(final: Path, log, why: str) -> None:
    """Rename ``final`` to ``<name>.incomplete-<time>`` and say why."""
    aside = _aside(final, f"incomplete-{dt.datetime.now():%Y%m%dT%H%M%S}")
    final.rename(aside)
    log(f"[reproduce] {relative(final)} {why}; moved it to {relative(aside)}")


def fresh_partial(final: Path) -> Path:
    """An empty ``<name>.partial`` folder beside ``final`` (a leftover one, which this pipeline made, is cleared)."""
    partial = _aside(final, "partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def swap_in(partial: Path, final: Path) -> None:
    """Replace ``final`` by the complete ``partial``: old aside, new in, old removed."""
    old = _aside(final, "old")
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)
