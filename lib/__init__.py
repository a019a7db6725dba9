"""Emotion-circuits toolkit: datasets, model loading, hooks, metrics and the reproduce pipeline.

Importing ``lib`` makes the Hugging Face hub offline unless ``EMOTION_HUB=1`` is set, so an
offline machine fails fast with a clear message instead of retrying for 30 s.
"""
from __future__ import annotations

import os
import warnings

if os.environ.get("EMOTION_HUB", "0") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# tqdm.auto without ipywidgets warns in every notebook; our progress bars go to stderr text.
warnings.filterwarnings("ignore", message="IProgress not found")
# Activation stores keep labels.jsonl, progress.json and manifest.json beside their zarr arrays.
warnings.filterwarnings("ignore", message=r"Object at .* is not recognized as a component of a Zarr hierarchy")

__all__: list[str] = ["show_progress"]


def show_progress() -> bool:
    """Whether long loops show progress bars (``EMOTION_NO_PROGRESS=1`` turns them off)."""
    return os.environ.get("EMOTION_NO_PROGRESS") != "1"
