"""Phase 06's display tables, saved files, summary and findings (the computation is in
``lib.phases.head_strength``).

>>> band = pruning_band(pd.DataFrame({"order": ["random 1", "random 2", "R_h before"], "fraction": [0.1] * 3,
...                                   "n_removed": [1] * 3, "loss": [1.0, 3.0, 2.0]}))
>>> band[["fraction", "low", "high"]].round(2).values.tolist()
[[0.1, 1.05, 2.95]]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lib.files import write_json

__all__ = ["named_curves", "pruning_band", "loss_at", "objective_table", "agreement_table", "save_tables",
           "summary_text", "findings", "head_grid", "external_outputs"]

RANDOM = "random"


def _is_random(order: pd.Series) -> pd.Series:
    return order.str.startswith(RANDOM)


def named_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """The pruning curves of the named orders (R_h, importance), without the random ones."""
    return curves[~_is_random(curves["order"])].reset_index(drop=True)


def pruning_band(curves: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per fraction, the random orders' median loss and central ``level`` band (their 2.5 and 97.5 percentiles)."""
    r = curves[_is_random(curves["order"])]
    q = (1 - level) / 2
    g = r.groupby("fraction")["loss"]
    return pd.DataFrame({"median": g.median(), "low": g.quantile(q), "high": g.quantile(1 - q),
                         "n_orders": g.size()}).reset_index()


def loss_at(curves: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Per order, the loss increase over the intact model when ``fraction`` of the heads are removed (the
    fraction of the curves closest to it); random orders summarised by their median and band."""
    fr = curves["fraction"].unique()
    f = float(fr[np.argmin(np.abs(fr - fraction))])
    clean = float(curves.loc[curves["n_removed"] == 0, "loss"].iloc[0])
    at = curves[curves["fraction"] == f]
    named = at[~_is_random(at["order"])]
    rand = at.loc[_is_random(at["order"]), "loss"]
    rows = [{"order": o, "fraction": f, "loss": l, "increase": l - clean} for o, l in zip(named["order"], named["loss"])]
    if len(rand):
        rows.append({"order": f"random ({len(rand)} orders): median [2.5%, 97.5%]", "fraction": f,
                     "loss": float(rand.median()), "increase": float(rand.median()) - clean,
                     "band_low": float(rand.quantile(0.025)) - clean, "band_high": float(rand.quantile(0.975)) - clean})
    return pd.DataFrame(rows)


def objective_table(objective: pd.DataFrame) -> pd.DataFrame:
    """The objective before and after, the probe and chance, as 'mean [low, high]' per metric."""
    def fmt(r):
        return f"{r['mean']:.3f}" + ("" if np.isnan(r["ci_low"]) else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    t = objective.assign(value=objective.apply(fmt, axis=1))
    return t.pivot(index="model", columns="metric", values="value").fillna("")


def agreement_table(agreement: pd.DataFrame) -> pd.DataFrame:
    """Spearman rho with its interval, permutation p (raw and BH-adjusted) and top overlap per pair."""
    a = agreement
    return pd.DataFrame({
        "importance after": a["importance"], "against": a["label"],
        "rho [95% CI]": [f"{r:.3f} [{lo:.3f}, {hi:.3f}]" for r, lo, hi in zip(a["rho"], a["ci_low"], a["ci_high"])],
        "p (perm.)": a["p_value"].map("{:.4f}".format), "p (BH)": a["p_adjusted"].map("{:.4f}".format),
        "top overlap / chance": [f"{o} / {e:.1f} of {k} (p {p:.3f})" for o, e, k, p in
                                 zip(a["top_overlap"], a["top_expected"], a["top_k"], a["top_p"])]})


def head_grid(heads: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """[len(columns), layers, heads]: each column of ``heads`` as a layer x head grid (for faceted heatmaps).

    >>> head_grid(pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "a": [1., 2., 3., 4.]}), ["a"]).tolist()
    [[[1.0, 2.0], [3.0, 4.0]]]
    """
    n_layers, n_heads = int(heads["layer"].max()) + 1, int(heads["head"].max()) + 1
    d = heads.sort_values(["layer", "head"])
    return np.stack([d[c].to_numpy(float).reshape(n_layers, n_heads) for c in columns])


def external_outputs(run) -> list[str]:
    """The fine-tune folder this run made or reused (kept outside the run folder), relative to the project."""
    from lib.paths import relative

    return [str(relative(Path(run.finetune["folder"])))] if run.finetune.get("trained_here") else []


def save_tables(out: Path, run) -> None:
    """Every table as CSV, and the command line's files: pre_tuned_activations.json, fine_tuned_activations.json,
    comparison.json, comparison_heatmap.png and .html."""
    out = Path(out)
    for name, table in run.tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    pre, fine = run.stats["extractors"]
    pre.save_results(out / "pre_tuned_activations.json")
    fine.save_results(out / "fine_tuned_activations.json")
    run.stats["comparator"].save_comparison(out / "comparison.json")
    run.stats["comparator"].visualize_comparison(out / "comparison_heatmap.png")
    write_json(out / "finetune.json", {k: v for k, v in run.finetune.items()})


def _headline(agreement: pd.DataFrame, x: str, kind: str = "ablation") -> pd.Series:
    return agreement[(agreement["x"] == x) & (agreement["importance"] == kind)].iloc[0]


def summary_text(run) -> str:
    """One paragraph: the objective before and after, the headline correlation and its comparison."""
    obj, a = run.tables["objective"], run.tables["agreement"]
    acc = obj[obj["metric"] == "accuracy"].set_index("model")["mean"]
    h, c = _headline(a, "R_pre"), _headline(a, "importance_pre")
    return (f"Fine-tuning took label accuracy on GoEmotions dev from {acc.iloc[0]:.2f} to {acc.iloc[1]:.2f}. "
            f"Strength before vs ablation importance after: Spearman rho {h['rho']:.2f} "
            f"[{h['ci_low']:.2f}, {h['ci_high']:.2f}] (p {h['p_adjusted']:.3g}, BH); importance before vs after: "
            f"{c['rho']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}].")


def findings(run) -> list[dict]:
    """The index page's headline answers, each with its control and the figure that shows it."""
    obj, a, curves = run.tables["objective"], run.tables["agreement"], run.tables["pruning"]
    acc = obj[obj["metric"] == "accuracy"].reset_index(drop=True)
    pre, fine, probe = acc.iloc[0], acc.iloc[1], acc.iloc[2]
    h, c = _headline(a, "R_pre"), _headline(a, "importance_pre")
    at = loss_at(curves, 0.3).set_index("order")
    imp = at.loc["gradient importance after"]
    rnd = at.iloc[-1]
    return [
        {"question": "Does the fine-tune learn the label objective?",
         "finding": f"dev accuracy {pre['mean']:.3f} [{pre['ci_low']:.3f}, {pre['ci_high']:.3f}] before, "
                    f"{fine['mean']:.3f} [{fine['ci_low']:.3f}, {fine['ci_high']:.3f}] after",
         "control": f"{probe['model']}: {probe['mean']:.3f} [{probe['ci_low']:.3f}, {probe['ci_high']:.3f}]; "
                    f"chance {acc.iloc[3]['mean']:.3f}",
         "figure": "The objective before and after"},
        {"question": "Do heads strong before fine-tuning matter after it?",
         "finding": f"Spearman rho(R_h before, ablation importance after) {h['rho']:.3f} [{h['ci_low']:.3f}, "
                    f"{h['ci_high']:.3f}], p {h['p_adjusted']:.3g} (BH); top 10% overlap {h['top_overlap']} of "
                    f"{h['top_k']} (chance {h['top_expected']:.1f})",
         "control": f"importance before vs after: rho {c['rho']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]; "
                    f"permutation null over heads",
         "figure": "Strength before against importance after"},
        {"question": "How many heads can go?",
         "finding": f"removing {imp['fraction']:.0%} of heads, least important first by Michel et al.'s gradient "
                    f"score, changes the prune half's loss by {imp['increase']:+.3f}",
         "control": f"random orders: {rnd['increase']:+.3f} [{rnd.get('band_low', np.nan):+.3f}, "
                    f"{rnd.get('band_high', np.nan):+.3f}]",
         "figure": "Pruning curves"},
    ]
