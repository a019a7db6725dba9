"""What the steering tests share: their prompts and the tiny Hugging Face models, built once per session."""
from __future__ import annotations

from functools import lru_cache

from lib.models.tiny import build_tiny_model

PROMPTS = ["Thank you so much for your help with the move", "Sorry.", "Why does this keep happening?"]


@lru_cache(maxsize=None)
def tiny_hf(name: str):
    """The tiny model ``name`` (``lib.models.tiny``), built once."""
    return build_tiny_model(name)
