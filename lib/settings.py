"""Process-wide policy, applied where it is needed (never on import): the hub, progress bars.

>>> import os; os.environ.get("EMOTION_NO_PROGRESS") == "1" or show_progress()
True
"""
from __future__ import annotations

import os
import warnings

__all__ = ["apply_hub_policy", "show_progress", "progress_bar"]


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


def show_progress() -> bool:
    """Whether long loops show progress bars (``EMOTION_NO_PROGRESS=1`` turns them off)."""
    return os.environ.get("EMOTION_NO_PROGRESS") != "1"


def progress_bar(*args, **kwargs):
    """``tqdm.auto.tqdm(*args, **kwargs)``, without the warning tqdm gives in a notebook lacking ipywidgets
    (the bar then falls back to text on stderr)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)
