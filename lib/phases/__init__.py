"""The glue each phase notebook calls, one module per notebook, named by its stem
(``notebooks/03_emotion_vectors.py`` -> ``lib.phases.emotion_vectors``).
"""
from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec

__all__ = ["phase_module", "emotion_choices"]


def phase_module(stem: str):
    """The glue module of phase ``stem`` (``03_emotion_vectors`` -> ``lib.phases.emotion_vectors``), or None."""
    name = f"{__name__}.{stem.split('_', 1)[-1]}"
    return import_module(name) if find_spec(name) is not None else None


def emotion_choices(stem: str) -> tuple[str, ...]:
    """What phase ``stem``'s ``emotions`` parameter may hold: its module's ``EMOTION_CHOICES``, else the three
    emotions studied against neutral."""
    from lib.emotions import TARGET_EMOTIONS

    return getattr(phase_module(stem), "EMOTION_CHOICES", TARGET_EMOTIONS)
