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

__all__: list[str] = []
