"""The emotion labels, in one place: the four dataset classes and the three studied against neutral.

>>> EMOTIONS
('gratitude', 'anger', 'apology', 'neutral')
>>> TARGET_EMOTIONS
('gratitude', 'anger', 'apology')
"""
from __future__ import annotations

__all__ = ["EMOTIONS", "TARGET_EMOTIONS", "BASELINE"]

BASELINE = "neutral"
TARGET_EMOTIONS = ("gratitude", "anger", "apology")
EMOTIONS = (*TARGET_EMOTIONS, BASELINE)
