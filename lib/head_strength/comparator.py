"""``ActivationComparator``: per-head strength of a pre-tuned and a fine-tuned model side by side: differences,
ratios, log-ratios and ranks of R_h (token mean of ||y_h||), of ||z_h|| and of R_h at the last token, their
Spearman correlations, the heatmaps and a JSON file.

Conventions: difference = fine - pre; ratio = fine / pre (NaN where pre is 0); log_ratio = ln(ratio); rank 1 is
the strongest head (ties share the lowest rank); rank_change = rank_pre - rank_fine (> 0: the head moved up).

>>> import numpy as np
>>> from lib.head_strength.results import HeadStrengthResults
>>> ps = {k: np.arange(1.0, 5.0).reshape(2, 1, 2) for k in ("mean", "last", "z_mean")}
>>> r = HeadStrengthResults([0], [0, 1], {"name": "m", "n_layers": 1, "n_heads": 2}, {**ps, "n_tokens": np.ones(2)})
>>> df = ActivationComparator(r, r).compare()
>>> df[["layer", "head", "R_pre", "difference", "ratio", "log_ratio", "rank_pre"]].to_dict("records")[0]
{'layer': 0, 'head': 0, 'R_pre': 2.0, 'difference': 0.0, 'ratio': 1.0, 'log_ratio': 0.0, 'rank_pre': 2}
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from lib.files import write_json
from lib.head_strength.results import HeadStrengthError, HeadStrengthResults, load_results

__all__ = ["ActivationComparator", "METRICS", "compare_tables", "json_safe"]

COMPARISON_FORMAT = "head_strength_comparison/1"
# per-sample key -> (column of the pre value, of the fine value, prefix of the derived columns)
METRICS = {"mean": ("R_pre", "R_fine", ""), "z_mean": ("z_pre", "z_fine", "z_"),
           "last": ("R_last_pre", "R_last_fine", "last_")}


def _as_results(obj, which: str) -> HeadStrengthResults:
    if isinstance(obj, HeadStrengthResults):
        return obj
    if isinstance(obj, (str, Path)):
        return load_results(obj)
    if callable(getattr(obj, "results", None)):  # an ActivationExtractor
        return obj.results()
    raise HeadStrengthError(f"{which} must be an ActivationExtractor, results or a results file; "
                            f"got {type(obj).__name__}")


def _check_same_structure(pre: HeadStrengthResults, fine: HeadStrengthResults) -> None:
    def shape(r):
        return (r.identity.get("n_layers"), r.identity.get("n_heads"))

    if shape(pre) != shape(fine) or (pre.layers, pre.heads) != (fine.layers, fine.heads):
        raise HeadStrengthError(
            f"the models differ in structure: pre-tuned {pre.identity.get('name')!r} has {shape(pre)[0]} layers x "
            f"{shape(pre)[1]} heads (hooked layers {pre.layers}, heads {pre.heads}), fine-tuned "
            f"{fine.identity.get('name')!r} has {shape(fine)[0]} x {shape(fine)[1]} (hooked layers {fine.layers}, "
            f"heads {fine.heads}); compare models of one architecture, hooked at the same layers and heads")
    for r, which in ((pre, "pre-tuned"), (fine, "fine-tuned")):
        if r.n_samples == 0:
            raise HeadStrengthError(f"the {which} results of {r.identity.get('name')!r} hold no samples")


def _ranks(x: np.ndarray) -> np.ndarray:
    return pd.Series(x).rank(ascending=False, method="min").to_numpy().astype(np.int64)


def compare_tables(pre: np.ndarray, fine: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
    """Derived columns of two per-head vectors: difference, ratio, log_ratio, rank_pre, rank_fine, rank_change
    (each name after ``prefix``).

    >>> compare_tables(np.array([1.0, 2.0]), np.array([2.0, 2.0]))["ratio"].tolist()
    [2.0, 1.0]
    """
    pre, fine = np.asarray(pre, dtype=np.float64), np.asarray(fine, dtype=np.float64)
    ratio = np.divide(fine, pre, out=np.full_like(pre, np.nan), where=pre != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(ratio)
    rank_pre, rank_fine = _ranks(pre), _ranks(fine)
    return {f"{prefix}difference": fine - pre, f"{prefix}ratio": ratio, f"{prefix}log_ratio": log_ratio,
            f"{prefix}rank_pre": rank_pre, f"{prefix}rank_fine": rank_fine, f"{prefix}rank_change": rank_pre - rank_fine}


def _spearman(x, y) -> tuple[float, float]:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def json_safe(value):
    """JSON-safe: NaN and infinities as None, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ActivationComparator:
    """Compare per-head strength between ``pre`` and ``fine`` (extractors, results or results files) of one
    structure (same layer and head counts, the same hooked layers and heads)."""

    def __init__(self, pre, fine):
        self.pre, self.fine = _as_results(pre, "pre"), _as_results(fine, "fine")
        _check_same_structure(self.pre, self.fine)
        self._df: pd.DataFrame | None = None

    def compare(self) -> pd.DataFrame:
        """One row per hooked head: layer, head, and for R_h, ||z_h|| and R_h at the last token the pre and fine
        values, difference, ratio, log_ratio, rank_pre, rank_fine, rank_change. ``df.attrs['summary']`` holds
        ``summary()``."""
        if self._df is None:
            layers, heads = self.pre.layers, self.pre.heads
            cols = {"layer": np.repeat(layers, len(heads)).astype(np.int64),
                    "head": np.tile(heads, len(layers)).astype(np.int64)}
            for key, (pre_col, fine_col, prefix) in METRICS.items():
                a, b = self.pre.table(key).ravel(), self.fine.table(key).ravel()
                cols |= {pre_col: a, fine_col: b, **compare_tables(a, b, prefix)}
            self._df = pd.DataFrame(cols)
            self._df.attrs["summary"] = self.summary()
        return self._df.copy(deep=True)

    def summary(self) -> dict:
        """Spearman rho (and p) of pre vs fine for R_h, ||z_h|| and R_h at the last token; the mean, median and
        geometric mean of the R_h ratios; sample counts and whether both models saw the same token ids."""
        out = {"pre_model": self.pre.identity.get("name"), "fine_model": self.fine.identity.get("name"),
               "n_heads_compared": len(self.pre.layers) * len(self.pre.heads),
               "n_samples_pre": self.pre.n_samples, "n_samples_fine": self.fine.n_samples,
               "same_inputs": bool(self.pre.identity.get("inputs_sha256")
                                   and self.pre.identity.get("inputs_sha256") == self.fine.identity.get("inputs_sha256")),
               "weight_processing": {"pre": self.pre.identity.get("weight_processing"),
                                     "fine": self.fine.identity.get("weight_processing")}}
        for key, (_, _, prefix) in METRICS.items():
            rho, p = _spearman(self.pre.table(key).ravel(), self.fine.table(key).ravel())
            out[f"{prefix}spearman"], out[f"{prefix}spearman_p"] = rho, p
        ratio = compare_tables(self.pre.table("mean").ravel(), self.fine.table("mean").ravel())["ratio"]
        finite = ratio[np.isfinite(ratio)]
        out["mean_ratio"] = float(finite.mean()) if finite.size else math.nan
        out["median_ratio"] = float(np.median(finite)) if finite.size else math.nan
        out["geometric_mean_ratio"] = float(np.exp(np.log(finite[finite > 0]).mean())) if (finite > 0).any() \
            else math.nan
        return out

    def visualize_comparison(self, path) -> tuple[Path, Path]:
        """Write the 4 heatmaps (layer x head: pre, fine, difference, ratio) to ``path`` (PNG) and a self-contained
        HTML version beside it (``.html``); returns both paths."""
        from lib.head_strength.heatmaps import write_comparison_html, write_comparison_png

        path = Path(path)
        df = self.compare()
        title = f"R_h = E||y_h||: {self.pre.identity.get('name')} (pre) vs {self.fine.identity.get('name')} (fine)"
        write_comparison_png(df, path, title=title)
        html = path.with_suffix(".html")
        write_comparison_html(df, html, title=title)
        return path, html

    def to_json(self) -> dict:
        """The comparison as JSON: summary, both models' identities, hooked layers and heads, one record per head."""
        df = self.compare()
        return json_safe({"format": COMPARISON_FORMAT, "summary": df.attrs["summary"],
                       "pre": self.pre.identity, "fine": self.fine.identity,
                       "layers": self.pre.layers, "heads": self.pre.heads,
                       "per_head": df.to_dict(orient="records")})

    def save_comparison(self, path) -> Path:
        """Write ``to_json()`` to ``path`` (written aside, then renamed into place); returns ``path``."""
        path = Path(path)
        write_json(path, self.to_json())
        return path
