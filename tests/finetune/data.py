"""Planted data for the fine-tune tests: each label has its own words, so a text's label can be learned."""
from __future__ import annotations

import numpy as np

from lib.emotions import EMOTIONS

WORDS = {
    "gratitude": ["thank you", "thanks", "grateful", "appreciate it", "saved my week"],
    "anger": ["furious", "ridiculous", "fix it now", "waited two hours", "cancel my account"],
    "apology": ["sorry", "my apologies", "forgive me", "my fault", "my bad"],
    "neutral": ["the meeting", "the library", "on Thursday", "the report", "the printer"],
}
SHARED = ["and", "so", "really", "today", "for the", "in the"]


def planted(n_per_label: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(texts, labels): ``n_per_label`` texts per emotion, each two of its label's words among shared words."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n_per_label):
        for lab in EMOTIONS:
            own = rng.choice(WORDS[lab], size=2, replace=False).tolist()
            filler = rng.choice(SHARED, size=2, replace=False).tolist()
            texts.append(f"{own[0]} {filler[0]} {own[1]} {filler[1]} {i}")
            labels.append(lab)
    return texts, labels
