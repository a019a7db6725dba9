"""Closed-form intervals.

>>> [round(v, 3) for v in wilson_interval(8, 10)]
[0.49, 0.943]
"""
from __future__ import annotations

import numpy as np

__all__ = ["wilson_interval"]


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (95% by default)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / denom, z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(centre - half), float(centre + half))
