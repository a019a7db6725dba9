"""Permutation p-values from a null distribution drawn elsewhere (label shuffles, random head sets).

>>> permutation_p(2.0, [0.0, 1.0, 2.0, 3.0])
0.6
"""
from __future__ import annotations

import numpy as np

from lib.stats.bootstrap import finite_1d

__all__ = ["ALTERNATIVES", "permutation_p"]

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
