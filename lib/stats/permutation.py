"""Permutation p-values from a null distribution drawn elsewhere (label shuffles, random head sets).

>>> permutation_p(2.0, [0.0, 1.0, 2.0, 3.0])
0.6
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.stats.bootstrap import finite_1d

__all__ = ["ALTERNATIVES", "permutation_p", "group_permutation"]

ALTERNATIVES = ("greater", "less", "two-sided")


def permutation_p(observed: float, null, *, alternative: str = "greater") -> float:
    """Permutation p-value with the +1 correction: (1 + #{null as extreme as observed}) / (1 + len(null)).

    ``greater``: null >= observed; ``less``: null <= observed; ``two-sided``: |null| >= |observed|.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}; valid alternatives: {list(ALTERNATIVES)}")
    z = finite_1d(null, "null")
    if not np.isfinite(observed):
        raise ValueError(f"observed={observed!r}; it must be a finite number")
    if alternative == "greater":
        hits = np.sum(z >= observed)
    elif alternative == "less":
        hits = np.sum(z <= observed)
    else:
        hits = np.sum(np.abs(z) >= abs(observed))
    return float((1 + hits) / (1 + z.size))


def group_permutation(labels, groups, rng: np.random.Generator) -> np.ndarray:
    """Labels [n] shuffled between whole groups: each group takes the label of another group (its majority
    label, ties to the first seen), so rows of one group still share a label as near-duplicates do in real
    data. Class counts move by the size differences of the swapped groups. ``groups=None``: row by row.

    >>> y = np.array(["a", "a", "b", "b", "c", "c"]); p = group_permutation(y, [0, 0, 1, 1, 2, 2], np.random.default_rng(0))
    >>> bool((p[0::2] == p[1::2]).all()), sorted(set(p.tolist()))
    (True, ['a', 'b', 'c'])
    """
    y = np.asarray(labels)
    if groups is None:
        return rng.permutation(y)
    g = np.asarray(groups)
    if g.shape != y.shape or y.ndim != 1:
        raise ValueError(f"labels and groups must be 1-D of equal length; got shapes {y.shape} and {g.shape}")
    codes = np.unique(g, return_inverse=True)[1].ravel()
    majority = []
    frame = pd.DataFrame({"g": codes, "y": y})
    for _, sub in frame.groupby("g", sort=True):
        counts = sub["y"].value_counts(sort=False)
        majority.append(counts.index[int(np.argmax(counts.to_numpy()))])
    majority = np.asarray(majority, dtype=y.dtype)
    return rng.permutation(majority)[codes]
