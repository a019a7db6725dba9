"""Benjamini-Hochberg adjustment against the textbook step-up formula."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.stats.multitest import adjust_family, bh_adjust


def _bh_by_hand(p):
    p = np.asarray(p, float)
    m = len(p)
    order = np.argsort(p)
    q = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):  # q_(i) = min over j >= i of p_(j) m / j, capped at 1
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = running
    return q


def test_bh_matches_the_step_up_formula():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.uniform(size=rng.integers(1, 40)) ** 3
        assert np.allclose(bh_adjust(p), _bh_by_hand(p))


def test_bh_on_a_floor_p_with_many_tests_is_not_significant():
    # 36 tests each at the floor p = 0.05 of 19 random sets: nothing survives, which is why 199 sets are needed
    assert bh_adjust(np.full(36, 0.05)).min() == pytest.approx(0.05)
    assert bh_adjust(np.r_[np.full(6, 0.005), np.full(30, 0.5)]).max() <= 0.5
    assert bh_adjust(np.r_[np.full(6, 0.005), np.full(30, 0.5)])[:6].max() == pytest.approx(0.03)


def test_adjust_family_skips_missing_p_and_counts_the_family():
    t = adjust_family(pd.DataFrame({"p_value": [0.01, np.nan, 0.04, 0.03]}))
    assert np.isnan(t["p_adjusted"][1]) and t["family_size"].iloc[0] == 3
    assert np.allclose(t["p_adjusted"].dropna(), _bh_by_hand([0.01, 0.04, 0.03]))
    with pytest.raises(ValueError, match="no column 'p'"):
        adjust_family(pd.DataFrame({"p_value": [0.1]}), p_col="p")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        bh_adjust([1.5])
