"""Split discipline against direct checks: disjoint parts, whole groups, every row used once."""
from __future__ import annotations

import numpy as np
import pytest

from lib.stats.splits import group_halves, grouped_folds, nested_folds, split_record


def _data(n_groups=60, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    labels = np.repeat(np.array(["a", "b", "c"])[np.arange(n_groups) % 3], sizes)
    return labels, groups


def test_nested_folds_use_each_row_once_as_test_and_once_as_validation():
    y, g = _data()
    nf = nested_folds(y, g, n_splits=5, seed=1)
    tests = np.concatenate([f.test for f in nf])
    vals = np.concatenate([f.val for f in nf])
    assert sorted(tests.tolist()) == list(range(len(y))) == sorted(vals.tolist())
    for f in nf:
        parts = [set(f.train.tolist()), set(f.val.tolist()), set(f.test.tolist())]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(parts[0]) + len(parts[1]) + len(parts[2]) == len(y)
        # a text group never spans two parts
        gs = [set(g[list(p)].tolist()) for p in parts]
        assert not (gs[0] & gs[1]) and not (gs[0] & gs[2]) and not (gs[1] & gs[2])
    # the outer test folds are the grouped folds' test folds
    assert [f.test.tolist() for f in nf] == [t.tolist() for _, t in grouped_folds(y, g, 5, 1)]


def test_nested_folds_need_three_folds():
    y, g = _data()
    with pytest.raises(ValueError, match="nested folds need integers >= 3"):
        nested_folds(y, g, n_splits=2)


def test_group_halves_keep_groups_whole_balanced_and_deterministic():
    y, g = _data(90)
    sel, est = group_halves(y, g, seed=3)
    assert not set(g[sel].tolist()) & set(g[est].tolist())
    assert sorted(np.r_[sel, est].tolist()) == list(range(len(y)))
    for c in "abc":
        n_sel, n_est = (y[sel] == c).sum(), (y[est] == c).sum()
        assert abs(n_sel - n_est) <= 4, (c, n_sel, n_est)
    again = group_halves(y, g, seed=3)
    assert np.array_equal(again[0], sel) and np.array_equal(again[1], est)
    assert not np.array_equal(group_halves(y, g, seed=4)[0], sel)


def test_grouped_folds_reject_bad_n_splits():
    with pytest.raises(ValueError, match="valid values are integers >= 2"):
        grouped_folds(["a", "b"], None, n_splits=1)


def test_split_record_digest_ignores_order_and_tells_sets_apart():
    a = split_record("s", "rule", 0, part=[3, 1, 2])
    b = split_record("s", "rule", 0, part=np.array([1, 2, 3]))
    c = split_record("s", "rule", 0, part=[1, 2, 4])
    assert a == b and a["sha256"]["part"] != c["sha256"]["part"]
    folds = split_record("f", "folds", 1, test=[np.array([0, 1]), np.array([2])])
    assert folds["sizes"]["test"] == [2, 1] and len(folds["sha256"]["test"]) == 2
