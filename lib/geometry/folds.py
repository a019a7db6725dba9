"""Leakage-safe cross-validation folds: near-identical texts form one group, and a group never spans a train
and a test fold (otherwise a probe can score by recognising a text it has seen, not by reading the emotion).

>>> groups = text_groups(["Thank you!", "thank you", "The bus is late.", "Thank you!!!"])
>>> groups.tolist(), [len(test) for _, test in grouped_folds(["a", "b"] * 2, [0, 1, 2, 3], n_splits=2)]
([0, 0, 1, 0], [2, 2])
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

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


def grouped_folds(labels, groups, n_splits: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds (shuffled, seeded ``StratifiedGroupKFold``) that keep each group inside one fold.

    >>> folds = grouped_folds(np.repeat(["a", "b"], 10), np.arange(20) // 2, n_splits=2)
    >>> [len(test) for _, test in folds]
    [10, 10]
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError(f"labels and groups must be 1-D of equal length; got shapes {labels.shape} and {groups.shape}")
    counts = pd.DataFrame({"y": labels, "g": groups}).groupby("y")["g"].nunique()
    low = counts[counts < n_splits]
    if len(low):
        raise ValueError(f"class {low.index[0]!r} has {int(low.iloc[0])} distinct text groups, fewer than "
                         f"n_splits={n_splits}; groups per class: {counts.to_dict()}")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(labels)), labels, groups))
