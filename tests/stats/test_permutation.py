"""Permutation p-values by hand."""
from __future__ import annotations

import pytest

from lib.stats.permutation import permutation_p


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
