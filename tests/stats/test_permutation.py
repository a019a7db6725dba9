"""Permutation p-values by hand."""
from __future__ import annotations

import numpy as np
import pytest

from lib.stats.permutation import group_majority, group_permutation, group_permuter, permutation_p


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


def _majority_by_hand(y, g):
    """Per sorted group id: the most frequent label, ties to the label whose first row comes first."""
    out = []
    for k in sorted(set(g.tolist())):
        rows = [lab for lab, gg in zip(y.tolist(), g.tolist()) if gg == k]
        best = max(rows, key=lambda lab: (rows.count(lab), -rows.index(lab)))
        out.append(best)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_group_majority_matches_a_hand_count(seed):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 90, 300) * 7 - 40  # ids need not be 0..g-1; some groups hold one row
    y = np.array(["gratitude", "anger", "apology", "neutral"])[rng.integers(0, 4, 300)]  # mixed groups, ties
    labels, codes = group_majority(y, groups)
    assert labels.tolist() == _majority_by_hand(y, groups)
    assert np.array_equal(np.sort(np.unique(groups))[codes], groups)
    # repeated permutations draw from one generator stream: the same as calling group_permutation each time
    permute, a, b = group_permuter(y, groups), np.random.default_rng(seed), np.random.default_rng(seed)
    for _ in range(3):
        assert np.array_equal(permute(a), group_permutation(y, groups, b))
    with pytest.raises(ValueError, match="equal length"):
        group_majority(["a"], [0, 1])


def test_exact_two_sample_p_matches_scipy():
    from scipy.stats import permutation_test

    from lib.stats.permutation import exact_two_sample_p

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=5), rng.normal(size=5) + 0.8
    for alt in ("greater", "less", "two-sided"):
        ref = permutation_test((b, a), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent",
                               n_resamples=np.inf, alternative=alt).pvalue
        assert exact_two_sample_p(a, b, alternative=alt) == pytest.approx(ref, rel=1e-9), alt
