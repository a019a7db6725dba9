"""Phase 05's saved tables, summary, findings and the tables its notebook displays (and the columns its plots
read), from a ``lib.phases.heads.HeadsRun``.

>>> scaled_screening(pd.DataFrame({"model": "m", "emotion": "a", "score": "s", "value": [1.0, -4.0]}))["scaled"].tolist()
[0.25, -1.0]
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lib.paths import RESULTS
from lib.phases.heads import HeadsRun

__all__ = ["SAVED_TABLES", "FINDINGS_FIGURE", "save_tables", "direction_agreement", "summary_text", "findings",
           "prompt_counts", "time_per_model", "scaled_screening", "probe_sweeps", "top_head_bars", "versus_random_table",
           "versus_random_points", "head_set_table", "error_bars", "generation_table", "generation_band_table",
           "generation_examples", "spearman_pivot", "attribution_panels"]

SAVED_TABLES = ("screening", "sweeps", "attribution", "attribution_spearman", "top_heads", "topk_curve",
                "top_vs_random", "generations", "generation_summary", "generation_vs_random", "prompts", "timings")
FINDINGS_FIGURE = "Top-k heads against random heads, on held-out prompts"  # the notebook heading of that figure


def save_tables(out: Path, run: HeadsRun) -> list[Path]:
    """Write ``SAVED_TABLES`` (and ``head_set.csv`` when a head set was chosen) as CSV into ``out``."""
    tables, paths = run.tables, []
    for name in SAVED_TABLES:
        paths.append(Path(out) / f"{name}.csv")
        tables[name].to_csv(paths[-1], index=False)
    if run.head_set is not None:
        paths.append(Path(out) / "head_set.csv")
        run.head_set.to_csv(paths[-1], index=False)
    return paths


def direction_agreement(run: HeadsRun, vectors_run: str, *, results: Path = RESULTS) -> dict[tuple[str, str], float]:
    """Per (model, emotion): the cosine of the direction used here with phase 03's ``mean_vs_neutral``
    direction at the same layer, read from run ``vectors_run`` of ``results/03_emotion_vectors`` (both unit)."""
    folder = Path(results) / "03_emotion_vectors" / vectors_run
    agree = {}
    for m in run.readouts:
        stem = f"directions--{m.replace(':', '-')}"  # as save_directions names them
        info = json.loads((folder / f"{stem}.json").read_text())
        arr = np.load(folder / f"{stem}.npy")
        layer = run.readouts[m].layer
        if layer not in info["layers"]:
            raise ValueError(f"{folder / f'{stem}.json'} has layers {info['layers']}, not the probe layer {layer}")
        for (mm, e), d in run.directions.items():
            if mm == m:
                k = [list(x) for x in info["keys"]].index([e, "mean_vs_neutral"])
                agree[m, e] = float(arr[info["layers"].index(layer), k] @ d)
    return agree


def _ablation_rows(tvr: pd.DataFrame) -> pd.DataFrame:
    return tvr[(tvr["intervention"] == "ablate") & (tvr["metric"] == "probe_logodds")]


def summary_text(run: HeadsRun) -> str:
    """One sentence per model and emotion: the top head, and the top-k set's held-out change in the probe's
    log-odds under mean ablation beside the random sets' band, with raw and BH-adjusted p."""
    tvr = _ablation_rows(run.tables["top_vs_random"]).set_index(["model", "emotion"])
    lines = []
    for (m, e), p in run.parts.items():
        t, r = p["top_heads"].iloc[0], tvr.loc[(m, e)]
        lines.append(f"{m} {e}: top-{int(r['top_k'])} heads ablated on held-out prompts change the log-odds by "
                     f"{r['change']:+.2f} [{r['change_lo']:+.2f}, {r['change_hi']:+.2f}] vs random "
                     f"[{r['random_lo']:+.2f}, {r['random_hi']:+.2f}], p = {r['p_value']:.3f} "
                     f"(BH {r['p_adjusted']:.3f}); top head {int(t['layer'])}:{int(t['head'])}")
    return "; ".join(lines)


def findings(run: HeadsRun) -> list[dict]:
    """The index page's lines, one per model and emotion: "Which heads matter?", the top-k set's held-out
    log-odds change with its interval, and the random sets' band with raw and BH-adjusted p."""
    out = []
    for _, r in _ablation_rows(run.tables["top_vs_random"]).iterrows():
        out.append({"question": "Which heads matter?",
                    "finding": f"{r['model']} {r['emotion']}: mean-ablating the top-{int(r['top_k'])} heads (ranked on "
                               f"the selection half) changes the probe's log-odds of {r['emotion']} by "
                               f"{r['change']:+.2f} (95% CI {r['change_lo']:+.2f} to {r['change_hi']:+.2f}) on "
                               f"{int(r['n_prompts'])} held-out prompts",
                    "control": f"{int(r['n_random'])} random sets of {int(r['top_k'])} heads: mean "
                               f"{r['random_mean']:+.2f}, 95% band {r['random_lo']:+.2f} to {r['random_hi']:+.2f}; "
                               f"p = {r['p_value']:.3f}, BH-adjusted {r['p_adjusted']:.3f} "
                               f"(family of {int(r['family_size'])} tests)",
                    "figure": FINDINGS_FIGURE})
    return out


def prompt_counts(prompts: pd.DataFrame) -> pd.DataFrame:
    """Prompt rows and their token length per model, emotion, half and role."""
    return prompts.groupby(["model", "prompt_emotion", "half", "role"]).agg(rows=("id", "size"), tokens=("T", "first"))


def time_per_model(timings: pd.DataFrame) -> pd.DataFrame:
    """Seconds per model, all steps together."""
    return timings.groupby("model")["seconds"].sum().rename("seconds in all").to_frame()


def scaled_screening(screening: pd.DataFrame) -> pd.DataFrame:
    """``screening`` with ``scaled``: each value over the largest absolute value of its model, emotion and
    score (1 where all are 0), so every score fits one colour scale."""
    out = screening.copy()
    out["scaled"] = out["value"] / out.groupby(["model", "emotion", "score"])["value"].transform(
        lambda v: v.abs().max() or 1.0)
    return out


def probe_sweeps(sweeps: pd.DataFrame) -> pd.DataFrame:
    """The probe log-odds rows of ``sweeps``, with ``what`` = "intervention, positions"."""
    return sweeps[sweeps["metric"] == "probe_logodds"].assign(what=lambda d: d["intervention"] + ", " + d["positions"])


def top_head_bars(top_heads: pd.DataFrame) -> pd.DataFrame:
    """``top_heads`` long by half: ``drop`` on the selection half (which ranked the heads) and on the
    evaluation half, with ``head_label`` "L:H" and ``ci``, the half-width of a 95% interval (1.96 se)."""
    base = top_heads.assign(head_label=lambda d: d["layer"].astype(str) + ":" + d["head"].astype(str))
    sel = base.assign(half="selection", ci=1.96 * base["se"])
    ev = base.assign(half="evaluation", drop=base["held_out_drop"], ci=1.96 * base["held_out_se"])
    return pd.concat([sel, ev], ignore_index=True)[["model", "emotion", "rank", "head_label", "half", "drop", "ci"]]


def versus_random_table(tvr: pd.DataFrame) -> pd.DataFrame:
    """The top-k set against random sets on held-out prompts: change with its interval, the random band, raw
    and BH-adjusted p, rounded to 4 places."""
    cols = ["change", "change_lo", "change_hi", "random_mean", "random_lo", "random_hi", "n_random", "n_prompts",
            "p_value", "p_adjusted"]
    return tvr.set_index(["model", "emotion", "intervention", "metric"])[cols].round(4)


def versus_random_points(tvr: pd.DataFrame, metric: str = "probe_logodds") -> pd.DataFrame:
    """Plot rows for ``metric``: per model, emotion and intervention the top-k set's change (``y``) with its
    95% interval and the random sets' mean with their 95% band, as distances ``lo`` / ``hi`` from ``y``."""
    t = tvr[tvr["metric"] == metric]
    top = t.assign(what="top-k, held out", y=t["change"], lo=t["change"] - t["change_lo"], hi=t["change_hi"] - t["change"])
    rnd = t.assign(what="random sets (95% band)", y=t["random_mean"], lo=t["random_mean"] - t["random_lo"],
                   hi=t["random_hi"] - t["random_mean"])
    return pd.concat([top, rnd], ignore_index=True)[["model", "emotion", "intervention", "what", "y", "lo", "hi"]]


def head_set_table(head_set: pd.DataFrame) -> pd.DataFrame:
    """The chosen head set's changes against the clean run, rounded to 4 places."""
    return head_set.set_index(["model", "emotion", "heads", "ablation"])[
        ["probe_logodds", "probe_logodds_change", "probe_logodds_change_lo", "probe_logodds_change_hi",
         "probe_prob_change", "logprob_change", "vader_change", "keywords_change"]].round(4)


def error_bars(summary: pd.DataFrame, intervention: str, metric: str) -> pd.DataFrame:
    """The ``intervention`` rows of a generation summary with ``lo`` / ``hi``: the distances from ``metric``'s
    mean down to its interval's low end and up to its high end (plotly's error_y_minus / error_y)."""
    return summary[summary["intervention"] == intervention].assign(
        lo=lambda d: d[metric] - d[f"{metric}_lo"], hi=lambda d: d[f"{metric}_hi"] - d[metric])


def generation_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Baseline and top-set rows of a generation summary: means and intervals, rounded to 3 places."""
    return summary[summary["kind"] != "random"][["model", "emotion", "intervention", "condition", "vader", "vader_lo",
                                                 "vader_hi", "keywords", "keywords_lo", "keywords_hi",
                                                 "probe_logodds"]].round(3)


def generation_band_table(band: pd.DataFrame) -> pd.DataFrame:
    """Generated text: the top set's change with its interval beside the random sets' band, per metric
    (columns), rounded to 3 places; no p-values (too few random sets)."""
    return band.pivot_table(index=["model", "emotion", "intervention"], columns="metric",
                            values=["change", "change_lo", "change_hi", "random_lo", "random_hi"]).round(3)


def generation_examples(gens: pd.DataFrame) -> pd.DataFrame:
    """The first continuation of each model, emotion, intervention and non-random condition."""
    return gens[gens["kind"] != "random"].groupby(["model", "emotion", "intervention", "condition"]).head(1)[
        ["model", "emotion", "intervention", "condition", "prompt", "continuation"]]


def spearman_pivot(rho: pd.DataFrame) -> pd.DataFrame:
    """Spearman's rho of attribution against exact patching per model and emotion (columns: positions)."""
    return rho.pivot_table(index=["model", "emotion"], columns="positions", values="spearman").round(3)


def attribution_panels(attr: pd.DataFrame, rho: pd.DataFrame) -> pd.DataFrame:
    """``attr`` with ``panel`` = "model emotion (rho last 0.91, rho all 0.80)", one panel per model and emotion."""
    labels = rho.groupby(["model", "emotion"]).apply(
        lambda g: ", ".join(f"rho {p} {s:.2f}" for p, s in zip(g["positions"], g["spearman"])), include_groups=False)
    return attr.assign(panel=[f"{m} {e} ({labels[m, e]})" for m, e in zip(attr["model"], attr["emotion"])])
