"""Files written whole or not at all, and the error for a folder whose writing never finished.

>>> import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp()); write_json(d / "a.json", {"x": 1})
>>> json.loads((d / "a.json").read_text())
{'x': 1}
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_json", "IncompleteResultsError"]


class IncompleteResultsError(RuntimeError):
    """A results folder without a manifest: a run that was interrupted or copied half-way."""


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temp file then rename), so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
