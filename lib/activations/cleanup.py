"""Finding the stores no run uses any more (``python -m lib.activations gc``).

Stores are named by their settings (``lib.activations.runs.store_folder``), so a run with new
settings writes a new store beside the old ones and never replaces them. A store is in use while
some ``results/02_activations/*/stores.json`` names it (complete runs, runs in progress, and folders
the runner moved aside all count); the others are listed, and deleted only on request. Unfinished
stores are listed but never deleted: rerunning the run that started them resumes them.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from lib.activations.integrity import StoreError
from lib.paths import RESULTS, ROOT, relative

__all__ = ["StoreEntry", "find_stores", "referenced_stores", "unused_stores", "remove_stores"]


@dataclass(frozen=True)
class StoreEntry:
    path: Path
    finished: bool
    bytes: int


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def find_stores(stores_dir: Path) -> list[StoreEntry]:
    """Every store (finished or not) under ``stores_dir``: folders holding a manifest or a resume point."""
    found = []
    for manifest in sorted(Path(stores_dir).rglob("*.json")):
        if manifest.name in ("manifest.json", "progress.json") and manifest.parent not in {s.path for s in found}:
            folder = manifest.parent
            if any(folder.is_relative_to(s.path) for s in found):
                continue
            found.append(StoreEntry(folder, (folder / "manifest.json").exists(), _size(folder)))
    return found


def referenced_stores(results: Path | None = None) -> set[Path]:
    """Stores some phase-02 results folder names (every ``stores.json`` under ``results/02_activations``)."""
    used = set()
    for index in Path(results or RESULTS, "02_activations").glob("*/stores.json"):
        try:
            stores = json.loads(index.read_text())
        except ValueError as err:  # which stores it names is unknown: nothing may be called unused
            raise StoreError(f"{relative(index)} is damaged ({err}), so which stores are in use is unknown; "
                             f"rerun that run's phase 02 or move the folder away, then run gc again") from err
        used |= {(ROOT / path).resolve() for by_profile in stores.values() for path in by_profile.values()}
    return used


def unused_stores(stores_dir: Path, results: Path | None = None) -> list[StoreEntry]:
    """Stores under ``stores_dir`` that no run names."""
    used = referenced_stores(results)
    return [s for s in find_stores(stores_dir) if s.path.resolve() not in used]


def _is_store(path: Path) -> bool:
    """Whether ``path`` holds a finished store's manifest (written by extraction), not some other manifest.json."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "settings_sha256" in manifest and "format_version" in manifest


def remove_stores(entries: list[StoreEntry], log=print) -> int:
    """Delete the finished ones of ``entries`` (stores, never anything else); bytes freed."""
    freed = 0
    for entry in entries:
        if entry.finished and _is_store(entry.path):
            shutil.rmtree(entry.path)
            freed += entry.bytes
            log(f"[gc] deleted {relative(entry.path)} ({entry.bytes / 1e6:.1f} MB)")
    return freed
