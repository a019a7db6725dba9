"""Leakage-safe cross-validation folds: near-identical texts form one group, and a group never spans a train
and a test fold (otherwise a probe can score by recognising a text it has seen, not by reading the emotion).

>>> groups = text_groups(["Thank you!", "thank you", "The bus is late.", "Thank you!!!"])
>>> groups.tolist(), [len(test) for _, test in grouped_folds(["a", "b"] * 2, [0, 1, 2, 3], n_splits=2)]
([0, 0, 1, 0], [2, 2])
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.stats.splits import grouped_folds  # noqa: F401  (re-exported: folds are built here from text groups)
from lib.text.leakage import near_duplicates, normalize

__all__ = ["text_groups", "grouped_folds"]


def text_groups(texts, threshold: float = 0.8) -> np.ndarray:
    """Group id per text ([n] int, 0..k-1, first-seen order); same normalised text or Jaccard >= threshold joins.

    >>> text_groups(["Thank you!", "thank you", "The bus is late.", "Thank you!!!"]).tolist()
    [0, 0, 1, 0]
    """
    texts = [str(t) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        union(first.setdefault(normalize(t), i), i)
    df = pd.DataFrame({"id": np.arange(len(texts)), "text": texts, "group": 0})
    pairs = near_duplicates(df, threshold=threshold) if texts else df.iloc[:0]
    for a, b in zip(pairs.get("id_a", []), pairs.get("id_b", [])):
        union(int(a), int(b))
    roots = [find(i) for i in range(len(texts))]
    return pd.factorize(np.asarray(roots, dtype=np.int64))[0].astype(np.int64)
