"""Synthetic layer stacks for the phase-04 tests: labelled rows with texts, groups of near-identical texts and
token counts, and models built from shared latents, rotations and planted nuisances."""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.activations.layerwise import LayerData

EMOTIONS = ("gratitude", "anger", "apology", "neutral")
WORDS = [f"{a}{b}" for a in "bcdfghjklm" for b in ("ar", "el", "io", "un", "ox")]


def labels(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """n rows, emotions in equal blocks, distinct texts of random words except that every 8th text repeats the
    one before it with an exclamation mark (a near-duplicate group), and token counts from 3 to 40."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        texts.append(texts[-1] + "!" if i % 8 == 7 else " ".join(rng.choice(WORDS, 6)) + f" {i}")
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": texts,
                         "emotion": np.repeat(EMOTIONS, n // len(EMOTIONS)), "n_tokens": rng.integers(3, 41, n)})


def model(name: str, lab: pd.DataFrame, xs) -> LayerData:
    """LayerData over ``lab`` with layers 0..len(xs)-1."""
    return LayerData(name, "hook_resid_post", "sentence_end", list(range(len(xs))),
                     [np.asarray(x, dtype=np.float32) for x in xs], lab.reset_index(drop=True))


def emotional(name: str, lab: pd.DataFrame, seed: int, d: int = 12, layers: int = 3) -> LayerData:
    """Emotion offsets plus noise, through a sharper tanh and a random map at each layer."""
    rng = np.random.default_rng(seed)
    offsets = {e: rng.normal(size=d) * 3 for e in EMOTIONS[:3]}
    base = np.stack([offsets.get(e, np.zeros(d)) for e in lab["emotion"]]) + rng.normal(size=(len(lab), d))
    return model(name, lab, [np.tanh(base * (k + 1) / 2) @ rng.normal(size=(d, d)) for k in range(layers)])


def rotated(name: str, src: LayerData, seed: int, extra: int = 4) -> LayerData:
    """``src`` rotated into ``extra`` more dimensions, rows in another order (pair them by id)."""
    rng = np.random.default_rng(seed)
    d = src.xs[0].shape[1]
    q = np.linalg.qr(rng.normal(size=(d + extra, d + extra)))[0][:d]
    order = rng.permutation(len(src.labels))
    return LayerData(name, src.site, src.reduction, src.layers, [x[order] @ q for x in src.xs],
                     src.labels.iloc[order].reset_index(drop=True))
