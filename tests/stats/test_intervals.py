"""Closed-form intervals against their formulas."""
from __future__ import annotations

import numpy as np
import pytest

from lib.stats.intervals import wilson_interval


def test_wilson_by_formula():
    k, n, z = 37, 50, 1.959964
    p = k / n
    lo = (p + z**2 / (2 * n) - z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))) / (1 + z**2 / n)
    assert wilson_interval(k, n)[0] == pytest.approx(lo)


def test_wilson_edge_cases():
    assert all(np.isnan(v) for v in wilson_interval(0, 0))
    lo, hi = wilson_interval(0, 20)
    assert lo == pytest.approx(0, abs=1e-12) and 0 < hi < 0.2  # never below 0, unlike the Wald interval
    lo, hi = wilson_interval(20, 20)
    assert hi == pytest.approx(1, abs=1e-12) and 0.8 < lo < 1
