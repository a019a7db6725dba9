"""Permutation p-values by hand."""
from __future__ import annotations

import numpy as np
import pytest

from lib.stats.permutation import group_permutation, permutation_p


def test_permutation_p_by_hand():
    null = [-3.0, -1.0, 0.0, 1.0, 2.0, 2.0, 4.0]  # 7 values
    assert permutation_p(2.0, null) == (1 + 3) / 8                              # 2, 2, 4
    assert permutation_p(2.0, null, alternative="less") == (1 + 6) / 8          # all but 4
    assert permutation_p(-2.0, null, alternative="two-sided") == (1 + 4) / 8    # -3, 2, 2, 4
    assert permutation_p(10.0, null) == 1 / 8
    assert permutation_p(-10.0, null, alternative="less") == 1 / 8


def test_permutation_p_errors():
    with pytest.raises(ValueError, match="two-sided"):
        permutation_p(1.0, [0.0], alternative="both")
    with pytest.raises(ValueError, match="null"):
        permutation_p(1.0, [])


# --- group permutation -------------------------------------------------------------------------------------------------


def test_group_permutation_moves_whole_groups():
    g = np.repeat(np.arange(30), 3)
    y = np.repeat(np.array(["a", "b", "c"])[np.arange(30) % 3], 3)
    seen_change = False
    for seed in range(5):
        p = group_permutation(y, g, np.random.default_rng(seed))
        assert all(len(set(p[g == k].tolist())) == 1 for k in range(30))  # a group keeps one label
        assert sorted(p.tolist()) == sorted(y.tolist())  # equal group sizes: counts kept
        seen_change |= not np.array_equal(p, y)
    assert seen_change
    # without groups it is numpy's permutation of the rows
    assert np.array_equal(group_permutation(y, None, np.random.default_rng(3)), np.random.default_rng(3).permutation(y))


def test_group_permutation_uses_the_majority_label_of_mixed_groups():
    p = group_permutation(np.array(["a", "a", "b", "c"]), [0, 0, 0, 1], np.random.default_rng(0))
    assert sorted(set(p[:3].tolist())) in (["a"], ["c"]) and len(set(p[:3].tolist())) == 1
