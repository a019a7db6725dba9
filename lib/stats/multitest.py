"""Multiple-testing corrections for a report's family of tests (Benjamini-Hochberg, from statsmodels).

A report that prints several p-values prints each beside its adjusted value over the whole family: the
raw p says how surprising one result is alone, the adjusted one how surprising it is among all that were
tested.

>>> bh_adjust([0.01, 0.04, 0.03, 0.5]).round(4).tolist()
[0.04, 0.0533, 0.0533, 0.5]
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.stats.bootstrap import finite_1d

__all__ = ["bh_adjust", "adjust_family"]


def bh_adjust(p_values, alpha: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values [n] (``statsmodels.stats.multitest.multipletests``, ``fdr_bh``).

    >>> bh_adjust([0.2]).tolist()
    [0.2]
    """
    from statsmodels.stats.multitest import multipletests

    p = finite_1d(p_values, "p_values")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1]; got min {p.min()}, max {p.max()}")
    return multipletests(p, alpha=alpha, method="fdr_bh")[1]


def adjust_family(table: pd.DataFrame, p_col: str = "p_value", out_col: str = "p_adjusted") -> pd.DataFrame:
    """``table`` with ``out_col``: BH-adjusted ``p_col`` over every row that has a p-value (one family), and
    ``family_size``, the number of tests adjusted together. Rows without a p-value get NaN.

    >>> adjust_family(pd.DataFrame({"p_value": [0.01, None, 0.02]}))["p_adjusted"].tolist()
    [0.02, nan, 0.02]
    """
    if p_col not in table.columns:
        raise ValueError(f"no column {p_col!r} to adjust; columns: {list(table.columns)}")
    out = table.copy()
    has = out[p_col].notna().to_numpy()
    out[out_col] = np.nan
    if has.any():
        out.loc[has, out_col] = bh_adjust(out.loc[has, p_col].to_numpy(float))
    out["family_size"] = int(has.sum())
    return out
