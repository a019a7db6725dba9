"""Phase 07's tables: per-condition means with intervals over seeds, the H1-H4 tests with their decision
rules (fixed here, before any run), and what the phase saves.

Each hypothesis compares one metric between two conditions over seeds: the estimate is the mean difference
(``b - a``, signed so that positive supports the hypothesis) with a 95% percentile bootstrap interval over
seeds (paired by seed: the same seed gives both conditions the same initial weights and data order), the
probability of improvement (bootstrap), and an exact one-sided two-sample permutation p over the seeds,
Benjamini-Hochberg adjusted over H1-H4. A hypothesis is **supported** when the interval lies above 0 and the
adjusted p < 0.05 (H1 also against the matched-rank control; H2 only if in-distribution accuracy reaches the
gate; H4 also above chance); **not supported** otherwise; H2 is **not testable** when the gate fails.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lib.stats.bootstrap import paired_difference
from lib.stats.multitest import bh_adjust
from lib.stats.permutation import exact_two_sample_p
from lib.synthetic.analysis import probability_of_improvement, seed_interval

__all__ = ["METRICS", "RULES", "GATE", "condition_table", "hypothesis_table", "sweep_table", "summary_text",
           "run_table", "training_curves", "findings", "save_tables"]

GATE = 0.95  # in-distribution exact accuracy needed before a zero-shot failure is read as a failure to compose

METRICS = {  # column: (label, higher is better)
    "sharing_distance": ("sharing distance (geodesic, lower = more shared)", False),
    "group_cka_debiased": ("task-group CKA, debiased", True),
    "participation_ratio": ("participation ratio of h", None),
    "in_dist_accuracy": ("in-distribution accuracy", True),
    "in_dist_iou": ("in-distribution IoU", True),
    "zero_shot_accuracy": ("zero-shot accuracy (length 3)", True),
    "zero_shot_iou": ("zero-shot IoU (length 3)", True),
    "few_shot_auc": ("few-shot AUC (query IoU)", True),
    "probe_accuracy": ("primitive probe accuracy", True),
    "probe_selectivity": ("probe selectivity (minus control task)", True),
    "sae_f1": ("SAE 1-sparse F1", True),
    "pca_f1": ("PCA 1-sparse F1", True),
    "ica_f1": ("ICA 1-sparse F1", True),
    "sae_variance_explained": ("SAE variance explained", True),
    "sae_dead_fraction": ("SAE dead units", False),
    "sae_l0": ("SAE L0", None),
}

RULES = {
    "H1": "the regulariser increases cross-task subspace sharing: sharing distance off - on > 0 and matched-rank - "
          "on > 0, both with 95% intervals above 0, adjusted p < 0.05",
    "H2": f"it improves zero-shot exact accuracy on unseen length-3 compositions: on - off > 0, interval above 0, "
          f"adjusted p < 0.05; read only if in-distribution accuracy >= {GATE} in both conditions (else not testable)",
    "H3": "it speeds few-shot LoRA adaptation: few-shot AUC of query IoU on - off > 0, interval above 0, "
          "adjusted p < 0.05",
    "H4": "SAE units of the regularised bottleneck align with the primitives: SAE 1-sparse F1 - best of PCA/ICA "
          "F1 > 0, interval above 0, adjusted p < 0.05, and SAE F1 above chance",
}


def condition_table(measures: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean and 95% interval over seeds of every metric per condition (long format)."""
    rows = []
    for cond, g in measures.groupby("condition", sort=False):
        for col, (label, _) in METRICS.items():
            if col not in g:
                continue
            values = g[col].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if values.size >= 2:
                ci = seed_interval(values, n_boot=n_boot, seed=seed)
                rows.append({"condition": cond, "metric": col, "label": label, "mean": ci["mean"],
                             "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n_seeds": ci["n"]})
            elif values.size == 1:
                rows.append({"condition": cond, "metric": col, "label": label, "mean": float(values[0]),
                             "ci_low": np.nan, "ci_high": np.nan, "n_seeds": 1})
    return pd.DataFrame(rows)


def _values(measures: pd.DataFrame, condition: str, col: str) -> pd.Series:
    g = measures[measures["condition"] == condition].sort_values("seed")
    return pd.Series(g[col].to_numpy(dtype=float), index=g["seed"].to_numpy())


def _compare(name: str, a: pd.Series, b: pd.Series, what: str, n_boot: int, seed: int) -> dict:
    """b - a over the seeds both have (positive = supports)."""
    common = sorted(set(a.index) & set(b.index))
    x, y = a.loc[common].to_numpy(), b.loc[common].to_numpy()
    d = paired_difference(x, y, n_boot=n_boot, seed=seed)
    return {"hypothesis": name, "comparison": what, "a_mean": float(x.mean()), "b_mean": float(y.mean()),
            "estimate": d["mean"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "n_seeds": len(common),
            "p_improvement": probability_of_improvement(x, y, n_boot=n_boot, seed=seed, paired=True),
            "p_value": exact_two_sample_p(x, y, alternative="greater")}


def hypothesis_table(measures: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per test (H1 has two: against off and against the matched-rank control), the primary tests
    BH-adjusted together, and a verdict per hypothesis on its first row."""
    conds = set(measures["condition"])
    rows = []
    neg = lambda s: -s  # noqa: E731  (distance: lower is better, so compare its negative)
    dist = "sharing_distance"
    rows.append(_compare("H1", neg(_values(measures, "off", dist)), neg(_values(measures, "on", dist)),
                         "sharing distance: off - on", n_boot, seed))
    if "matched-rank" in conds:
        rows.append(_compare("H1", neg(_values(measures, "matched-rank", dist)), neg(_values(measures, "on", dist)),
                             "sharing distance: matched-rank - on", n_boot, seed))
    rows.append(_compare("H2", _values(measures, "off", "zero_shot_accuracy"),
                         _values(measures, "on", "zero_shot_accuracy"), "zero-shot accuracy: on - off", n_boot, seed))
    rows.append(_compare("H3", _values(measures, "off", "few_shot_auc"), _values(measures, "on", "few_shot_auc"),
                         "few-shot AUC: on - off", n_boot, seed))
    on = measures[measures["condition"] == "on"].sort_values("seed")
    best_baseline = pd.Series(np.maximum(on["pca_f1"], on["ica_f1"]).to_numpy(), index=on["seed"].to_numpy())
    rows.append(_compare("H4", best_baseline, _values(measures, "on", "sae_f1"),
                         "SAE F1 - best of PCA/ICA F1 (regulariser on)", n_boot, seed))
    table = pd.DataFrame(rows)
    table["p_adjusted"] = bh_adjust(table["p_value"].to_numpy())
    table["rule"] = table["hypothesis"].map(RULES)
    passes = (table["ci_low"] > 0) & (table["p_adjusted"] < 0.05)
    verdicts = {}
    for h, g in table.groupby("hypothesis", sort=False):
        ok = bool(passes[g.index].all())
        if h == "H2":
            gate = min(measures.loc[measures["condition"] == c, "in_dist_accuracy"].mean() for c in ("off", "on"))
            verdicts[h] = ("supported" if ok else "not supported") if gate >= GATE else \
                f"not testable (in-distribution accuracy {gate:.3f} < {GATE})"
        elif h == "H4":
            above = on["sae_f1"].mean() > on["chance_f1"].mean()
            verdicts[h] = "supported" if ok and above else "not supported"
        else:
            verdicts[h] = "supported" if ok else "not supported"
    table["controls"] = _controls(measures, table)
    table["verdict"] = ""
    for h, verdict in verdicts.items():
        table.loc[table.index[table["hypothesis"] == h][0], "verdict"] = verdict
    return table


def _mean(measures: pd.DataFrame, condition: str, col: str) -> float:
    if col not in measures:
        return float("nan")
    values = measures.loc[measures["condition"] == condition, col]
    return float(values.mean()) if len(values) else float("nan")


def _controls(measures: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """What stands beside each test: the untrained encoder, the gate, chance and the unregularised SAE."""
    m = lambda c, col: _mean(measures, c, col)  # noqa: E731
    text = {
        "H1": f"untrained {m('untrained', 'sharing_distance'):.3f}; participation ratio off "
              f"{m('off', 'participation_ratio'):.1f}, on {m('on', 'participation_ratio'):.1f}",
        "H2": f"in-distribution accuracy off {m('off', 'in_dist_accuracy'):.3f}, on {m('on', 'in_dist_accuracy'):.3f} "
              f"(gate {GATE}); untrained {m('untrained', 'zero_shot_accuracy'):.3f}",
        "H3": f"untrained {m('untrained', 'few_shot_auc'):.3f}",
        "H4": f"chance {m('on', 'chance_f1'):.3f}; untrained SAE {m('untrained', 'sae_f1'):.3f}; "
              f"SAE on the unregularised model {m('off', 'sae_f1'):.3f} (PCA {m('off', 'pca_f1'):.3f})",
    }
    return [text[h] for h in table["hypothesis"]]


def sweep_table(measures: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of the main metrics per condition (the alpha sweep and encoders, in larger runs)."""
    cols = ["sharing_distance", "zero_shot_accuracy", "zero_shot_iou", "in_dist_accuracy", "few_shot_auc", "sae_f1"]
    return measures.groupby("condition", sort=False)[cols].mean().reset_index()


def run_table(run) -> pd.DataFrame:
    """One row per run: condition, seed, training speed and seconds, in-distribution and zero-shot accuracy."""
    rows = []
    for r in run.records:
        t = r["train"] or {}
        rows.append({"condition": r["spec"]["condition"], "seed": r["seed"], "steps": t.get("steps", 0),
                     "steps_per_s": t.get("steps_per_s", np.nan), "train_seconds": t.get("train_seconds", 0.0),
                     "run_seconds": r["seconds"], "in_dist_accuracy": r["in_distribution"]["accuracy"],
                     "zero_shot_accuracy": r["zero_shot"]["accuracy"], "zero_shot_iou": r["zero_shot"]["iou"]})
    return pd.DataFrame(rows)


def training_curves(run) -> pd.DataFrame:
    """Validation accuracy and IoU during training, every trained run (from its ``train/eval.csv``)."""
    parts = []
    for r in run.records:
        path = Path(r["spec"]["out_dir"]) / "train" / "eval.csv"
        if path.is_file():
            df = pd.read_csv(path)
            parts.append(df.assign(condition=r["spec"]["condition"], seed=r["seed"],
                                   run=f"{r['spec']['condition']}_s{r['seed']}"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["step", "val_accuracy", "val_iou", "condition", "seed", "run"])


def findings(hyp: pd.DataFrame, measures: pd.DataFrame) -> list[dict]:
    """The index page's headline answers: each hypothesis's verdict with its estimate and the control."""
    out = []
    controls = {"H1": "matched-rank bottleneck and random subspaces", "H2": f"in-distribution gate {GATE}",
                "H3": "regulariser off", "H4": "PCA and FastICA codes of the same h; chance F1"}
    for r in hyp[hyp["verdict"] != ""].itertuples():
        out.append({"question": f"{r.hypothesis}: {RULES[r.hypothesis].split(':')[0]}?",
                    "finding": f"{r.verdict}: {r.comparison} {r.estimate:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}], "
                               f"BH p {r.p_adjusted:.3f}",
                    "control": controls[r.hypothesis], "figure": "The hypotheses"})
    return out


def summary_text(hyp: pd.DataFrame) -> str:
    first = hyp[hyp["verdict"] != ""]
    return "; ".join(f"{r.hypothesis} {r.verdict} ({r.comparison} {r.estimate:+.3f} [{r.ci_low:+.3f}, "
                     f"{r.ci_high:+.3f}], BH p {r.p_adjusted:.3f})" for r in first.itertuples())


def save_tables(out: Path, tables: dict[str, pd.DataFrame]) -> None:
    for name, table in tables.items():
        table.to_csv(Path(out) / f"{name}.csv", index=False)
