"""Exact and near-duplicate texts within and across dataset profiles.

Near-duplicates are pairs whose sets of character 5-grams (within word boundaries) have a
Jaccard similarity of at least ``threshold``.

>>> import pandas as pd
>>> df = pd.DataFrame({"id": ["a", "b", "c"], "text": ["Thanks a lot!", "thanks a lot", "The bus is late."],
...                    "group": ["x", "y", "y"]})
>>> near_duplicates(df, threshold=0.8)[["id_a", "id_b", "exact"]].values.tolist()
[['a', 'b', True]]
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

__all__ = ["normalize", "jaccard", "near_duplicates"]


def normalize(text: str) -> str:
    """Lower-case, punctuation dropped, whitespace collapsed: what counts as the same text."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def _shingles(text: str, n: int = 5) -> set[str]:
    t = f" {normalize(text)} "
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))}


def jaccard(a: str, b: str) -> float:
    """Jaccard similarity of the character 5-gram sets of two texts (the reference definition)."""
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


def near_duplicates(df: pd.DataFrame, *, threshold: float = 0.8, chunk: int = 2000) -> pd.DataFrame:
    """All pairs of rows (columns ``id``, ``text``, ``group``) with Jaccard >= ``threshold``.

    Returns columns id_a, id_b, group_a, group_b, text_a, text_b, jaccard, exact (same
    normalized text), one row per unordered pair. Vectorised as sparse products in row chunks.
    """
    from scipy import sparse

    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    texts = df["text"].tolist()
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, t in enumerate(texts):
        for s in _shingles(t):
            rows.append(i)
            cols.append(vocab.setdefault(s, len(vocab)))
    m = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(texts), len(vocab)))
    sizes = np.asarray(m.sum(axis=1)).ravel()
    mt = m.T.tocsr()
    pairs = []
    for start in range(0, len(texts), chunk):
        inter = (m[start:start + chunk] @ mt).toarray()
        union = sizes[start:start + chunk, None] + sizes[None, :] - inter
        sim = inter / np.maximum(union, 1)
        a, b = np.nonzero(sim >= threshold)
        a = a + start
        keep = a < b
        pairs.extend(zip(a[keep], b[keep], sim[a[keep] - start, b[keep]]))
    norm = [normalize(t) for t in texts]
    ids, groups = df["id"].tolist(), df["group"].tolist()
    out = pd.DataFrame([{"id_a": ids[a], "id_b": ids[b], "group_a": groups[a], "group_b": groups[b],
                         "text_a": texts[a], "text_b": texts[b], "jaccard": float(s),
                         "exact": norm[a] == norm[b]} for a, b, s in pairs],
                       columns=["id_a", "id_b", "group_a", "group_b", "text_a", "text_b", "jaccard", "exact"])
    return out.sort_values(["group_a", "group_b", "jaccard"], ascending=[True, True, False]).reset_index(drop=True)
