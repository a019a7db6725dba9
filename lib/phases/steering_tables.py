"""Phase 08's tables: per-setting summaries, the choice of setting, the goals, the interference of two vectors.

Per (model, half, target emotion, setting), over the setting's prompts (one row per prompt):

- ``share``: the fraction of continuations the judge labels with the target emotion, with a 95% bootstrap
  interval over prompts; ``judge_p`` the judge's mean probability of the target; ``vader``, ``keywords``
  (target lexicon hits per continuation), ``probe_p`` (the model's own probe, NaN rows left out);
- ``ppl_ratio``: exp(mean NLL - mean NLL of the unsteered continuations of the same prompts), both under the
  unsteered model (``lib.steering.metrics``); the unsteered reference of a prompted setting is the prompted,
  unsteered one; ``distinct2`` and ``distinct_ratio`` likewise (repetition lowers it, and lowers NLL too, which
  is why fluency needs both);
- the unsteered setting ``none`` is summarised once per target emotion.

``choose`` picks, per model and emotion, among the CAA grid settings of the *selection* half: the highest
share among the fluent ones (ppl_ratio <= ``max_ppl_ratio`` and distinct_ratio >= ``min_distinct_ratio``),
ties to the smaller strength then the earlier layer; when none is fluent, the highest share of all, flagged.
Every number of ``goals`` is then read on the *report* half, which chose nothing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lib.files import write_json
from lib.stats.bootstrap import mean_ci, paired_difference
from lib.stats.multitest import adjust_family
from lib.stats.permutation import sign_flip_p
from lib.steering.metrics import anti_steerable, distinct_n

__all__ = ["setting_summary", "choose", "pareto", "prompt_changes", "goals", "interference", "side_effect_table"]


def _targeted(rows: pd.DataFrame, emotions) -> pd.DataFrame:
    """Rows with a ``target`` column: the unsteered, unprompted rows once per emotion, the rest their own."""
    plain = rows["vector"].eq("none") & ~rows["prompting"].astype(bool)
    out = [rows[~plain].assign(target=rows.loc[~plain, "emotion"])]
    out += [rows[plain].assign(target=e) for e in emotions]
    return pd.concat(out, ignore_index=True)


def _reference(df: pd.DataFrame, row) -> pd.DataFrame:
    """The unsteered rows a setting is compared with: same model, half and prompts (prompted or not)."""
    if row["prompting"]:
        return df[(df["setting"] == f"{row['target']}|prompted")]
    return df[df["setting"] == "none"]


def setting_summary(rows: pd.DataFrame, config) -> pd.DataFrame:
    """One row per (model, half, target, setting) with the measures of the module docstring."""
    emotions = tuple(dict.fromkeys((*config.emotions, *config.together)))
    out = []
    t = _targeted(rows.assign(model=rows.get("model", "")), emotions)
    for (model, half), part in t.groupby(["model", "half"], sort=False):
        for (target, setting), g in part.groupby(["target", "setting"], sort=False):
            first = g.iloc[0]
            ref = _reference(part[part["target"] == target], {"prompting": bool(first["prompting"]),
                                                              "target": target})
            ref = ref[ref["prompt_index"].isin(g["prompt_index"])]
            hits = (g["judge_label"] == target).to_numpy(float)
            ci = mean_ci(hits, n_boot=config.n_boot, seed=config.seed)
            d_ref = distinct_n(ref["text"].tolist(), 2) if len(ref) else np.nan
            d2 = distinct_n(g["text"].tolist(), 2)
            out.append({"model": model, "half": half, "emotion": target, "setting": setting,
                        "vector": first["vector"], "layer": int(first["layer"]), "strength": float(first["strength"]),
                        "prompting": bool(first["prompting"]), "n": len(g), "share": ci["mean"],
                        "share_low": ci["ci_low"], "share_high": ci["ci_high"],
                        "judge_p": float(g[f"judge_{target}"].mean()), "vader": float(g["vader"].mean()),
                        "keywords": float(g[f"kw_{target}"].mean()) if f"kw_{target}" in g else np.nan,
                        "probe_p": float(g[f"probe_{target}"].mean()) if f"probe_{target}" in g else np.nan,
                        "ppl_ratio": float(np.exp(g["nll"].mean() - ref["nll"].mean())) if len(ref) else np.nan,
                        "distinct2": d2, "distinct_ratio": d2 / d_ref if d_ref else np.nan})
    return pd.DataFrame(out)


def pareto(summary: pd.DataFrame) -> pd.Series:
    """True for the CAA grid settings (unprompted) that no other grid setting of the same (model, half, emotion)
    beats on both share (higher) and ppl_ratio (lower), one at least strictly; False for every other row."""
    flags = pd.Series(False, index=summary.index)
    grid = summary[(summary["vector"] == "caa") & ~summary["prompting"].astype(bool)
                   & ~summary["setting"].str.endswith("|alone")]
    for _, g in grid.groupby(["model", "half", "emotion"], sort=False):
        s, p = g["share"].to_numpy(), g["ppl_ratio"].to_numpy()
        for i, idx in enumerate(g.index):
            dominated = ((s >= s[i]) & (p <= p[i]) & ((s > s[i]) | (p < p[i]))).any()
            flags[idx] = not dominated
    return flags


def choose(summary: pd.DataFrame, config) -> pd.DataFrame:
    """Per (model, emotion): the chosen CAA grid setting of the selection half (module docstring)."""
    grid = summary[(summary["vector"] == "caa") & ~summary["prompting"] & (summary["half"] == "selection")
                   & summary["emotion"].isin(config.emotions)]
    out = []
    for (model, emotion), g in grid.groupby(["model", "emotion"], sort=False):
        fluent = g[(g["ppl_ratio"] <= config.max_ppl_ratio) & (g["distinct_ratio"] >= config.min_distinct_ratio)]
        pool = fluent if len(fluent) else g
        best = pool.sort_values(["share", "strength", "layer"], ascending=[False, True, True]).iloc[0]
        out.append({"model": model, "emotion": emotion, "setting": best["setting"], "layer": int(best["layer"]),
                    "strength": float(best["strength"]), "share_selection": best["share"],
                    "ppl_ratio_selection": best["ppl_ratio"], "distinct_ratio_selection": best["distinct_ratio"],
                    "fluent_on_selection": bool(len(fluent)), "n_fluent": len(fluent), "n_settings": len(g)})
    return pd.DataFrame(out)


def _per_prompt(rows, setting, target, col="judge_p"):
    g = rows[rows["setting"] == setting].sort_values("prompt_index")
    value = (g["judge_label"] == target).astype(float) if col == "hit" else g[f"judge_{target}"]
    return pd.Series(value.to_numpy(), index=g["prompt_index"].to_numpy())


def prompt_changes(rows: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """Per model, emotion and report prompt: the judge's probability of the target at the chosen setting minus
    unsteered (``change`` < 0: the prompt is anti-steerable), the distribution behind the anti-steerable fraction."""
    out = []
    rep = rows[rows["half"] == "report"]
    for _, c in chosen.iterrows():
        r = rep[rep["model"] == c["model"]]
        after, before = _per_prompt(r, c["setting"], c["emotion"]), _per_prompt(r, "none", c["emotion"])
        out.append(pd.DataFrame({"model": c["model"], "emotion": c["emotion"], "prompt_index": after.index,
                                 "change": (after - before).to_numpy()}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def goals(rows: pd.DataFrame, summary: pd.DataFrame, chosen: pd.DataFrame, side: pd.DataFrame, config) -> pd.DataFrame:
    """Per (model, emotion), on the report half: the chosen setting's share against unsteered (paired
    difference with its interval, sign-flip p, BH over the table), fluency, KL beside the random vector's,
    prompting, prompting + steering, the anti-steerable fraction, and whether each goal is met."""
    rep = rows[rows["half"] == "report"]
    s = summary[summary["half"] == "report"].set_index(["model", "emotion", "setting"])
    out = []
    for _, c in chosen.iterrows():
        m, e, name = c["model"], c["emotion"], c["setting"]
        r = rep[rep["model"] == m]
        layer_s = name.split("|", 2)[2]
        steered, none = _per_prompt(r, name, e, "hit"), _per_prompt(r, "none", e, "hit")
        ask, both = _per_prompt(r, f"{e}|prompted", e, "hit"), _per_prompt(r, f"{e}|prompted+caa|{layer_s}", e, "hit")
        diff = paired_difference(none.to_numpy(), steered.to_numpy(), n_boot=config.n_boot, seed=config.seed)
        add = paired_difference(ask.to_numpy(), both.to_numpy(), n_boot=config.n_boot, seed=config.seed)
        anti = anti_steerable(_per_prompt(r, "none", e).to_numpy(), _per_prompt(r, name, e).to_numpy(),
                              n_boot=config.n_boot, seed=config.seed)
        kl = side[(side["model"] == m) & (side["emotion"] == e)]
        kl_caa = mean_ci(kl.loc[kl["vector"] == "caa", "kl"], n_boot=config.n_boot, seed=config.seed)
        kl_rnd = mean_ci(kl.loc[kl["vector"] == "random", "kl"], n_boot=config.n_boot, seed=config.seed)
        row = s.loc[(m, e, name)]
        share_ask = float(ask.mean())
        out.append({"model": m, "emotion": e, "setting": name, "share": row["share"], "share_low": row["share_low"],
                    "share_high": row["share_high"], "unsteered": float(none.mean()), "gain": diff["mean"],
                    "gain_low": diff["ci_low"], "gain_high": diff["ci_high"],
                    "p_value": sign_flip_p((steered - none).to_numpy(), n_perm=config.n_perm, seed=config.seed),
                    "ppl_ratio": row["ppl_ratio"], "distinct_ratio": row["distinct_ratio"],
                    "kl": kl_caa["mean"], "kl_low": kl_caa["ci_low"], "kl_high": kl_caa["ci_high"],
                    "kl_random": kl_rnd["mean"], "kl_random_low": kl_rnd["ci_low"], "kl_random_high": kl_rnd["ci_high"],
                    "prompted": share_ask, "steer_over_prompt": row["share"] / share_ask if share_ask else np.nan,
                    "prompted_plus": float(both.mean()), "plus_gain": add["mean"], "plus_low": add["ci_low"],
                    "plus_high": add["ci_high"], "anti": anti["fraction_negative"], "anti_low": anti["ci_low"],
                    "anti_high": anti["ci_high"], "n": int(len(steered))})
    g = adjust_family(pd.DataFrame(out))
    g["efficacy_met"] = (g["share"] >= 0.5) & (g["gain"] >= 0.3) & (g["ppl_ratio"] <= config.max_ppl_ratio)
    g["anti_met"] = g["anti"] <= 0.2
    return g


def interference(rows: pd.DataFrame, config) -> pd.DataFrame:
    """Two vectors at once (``together``): each emotion's share alone and in the sum, on the report half."""
    if len(config.together) < 2:
        return pd.DataFrame()
    a, b = config.together[:2]
    rep = rows[(rows["half"] == "report") & rows["vector"].eq(f"with-{b}")]
    out = []
    for (m, name), g in rep.groupby(["model", "setting"], sort=False):
        tail = name.split("|", 2)[2]
        alone = {a: rows[(rows["model"] == m) & (rows["setting"] == f"{a}|caa|{tail}") & (rows["half"] == "report")],
                 b: rows[(rows["model"] == m) & (rows["setting"] == f"{b}|caa|{tail}|alone")]}
        none = rows[(rows["model"] == m) & (rows["setting"] == "none") & (rows["half"] == "report")]
        for e in (a, b):
            out.append({"model": m, "emotion": e, "setting": tail, "unsteered": float((none["judge_label"] == e).mean()),
                        "alone": float((alone[e]["judge_label"] == e).mean()),
                        "together": float((g["judge_label"] == e).mean()), "n": len(g)})
    t = pd.DataFrame(out)
    if len(t):
        t["change"] = t["together"] - t["alone"]
    return t


def side_effect_table(side: pd.DataFrame, config) -> pd.DataFrame:
    """Mean next-token KL on held-out neutral text per (model, emotion, vector), with 95% intervals."""
    out = []
    for (m, e, v), g in side.groupby(["model", "emotion", "vector"], sort=False):
        ci = mean_ci(g["kl"], n_boot=config.n_boot, seed=config.seed)
        out.append({"model": m, "emotion": e, "vector": v, "kl": ci["mean"], "kl_low": ci["ci_low"],
                    "kl_high": ci["ci_high"], "n_texts": len(g)})
    return pd.DataFrame(out)


def example_table(rows: pd.DataFrame, chosen: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The first ``n`` report prompts of each chosen setting: unsteered, prompted, steered and both."""
    out = []
    rep = rows[rows["half"] == "report"]
    for _, c in chosen.iterrows():
        r = rep[rep["model"] == c["model"]]
        tail = c["setting"].split("|", 2)[2]
        names = {"unsteered": "none", "prompted": f"{c['emotion']}|prompted", "steered": c["setting"],
                 "prompted + steered": f"{c['emotion']}|prompted+caa|{tail}"}
        for i in sorted(r["prompt_index"].unique())[:n]:
            row = {"model": c["model"], "emotion": c["emotion"], "prompt_index": int(i)}
            for label, name in names.items():
                hit = r[(r["setting"] == name) & (r["prompt_index"] == i)]
                row[label] = hit["text"].iloc[0].strip() if len(hit) else ""
            out.append(row)
    return pd.DataFrame(out)


def _where(setting: str) -> str:
    """'gratitude|caa|L6|s0.1875' -> 'L6 s0.1875' (no '|', which would break a Markdown table)."""
    return " ".join(setting.split("|")[2:])


def _ci(v, lo, hi, fmt="{:.2f}") -> str:
    return f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def goals_markdown(g: pd.DataFrame) -> str:
    """The goals table as Markdown, one row per model and emotion."""
    lines = ["| model | emotion | chosen | share (goal >= 0.50) | unsteered | gain (goal >= 0.30), BH p | ppl ratio "
             "(<= 1.5) | KL chosen | KL random | prompted | steer / prompt | prompted + steered | anti-steerable "
             "(<= 0.20) |", "|" + " --- |" * 13]
    for _, r in g.iterrows():
        lines.append(
            f"| {r['model']} | {r['emotion']} | {_where(r['setting'])} | "
            f"{_ci(r['share'], r['share_low'], r['share_high'])} | {r['unsteered']:.2f} | "
            f"{_ci(r['gain'], r['gain_low'], r['gain_high'], '{:+.2f}')}, {r['p_adjusted']:.3g} | "
            f"{r['ppl_ratio']:.2f} | {_ci(r['kl'], r['kl_low'], r['kl_high'], '{:.3f}')} | "
            f"{_ci(r['kl_random'], r['kl_random_low'], r['kl_random_high'], '{:.3f}')} | {r['prompted']:.2f} | "
            f"{'n/a' if pd.isna(r['steer_over_prompt']) else format(r['steer_over_prompt'], '.2f')} | "
            f"{r['prompted_plus']:.2f} ({r['plus_gain']:+.2f} "
            f"[{r['plus_low']:+.2f}, {r['plus_high']:+.2f}]) | {_ci(r['anti'], r['anti_low'], r['anti_high'])} |")
    return "\n".join(lines)


def summary_text(g: pd.DataFrame) -> str:
    """One sentence per model and emotion: the chosen setting's share on report prompts against unsteered."""
    parts = [f"{r['model']} {r['emotion']}: {r['share']:.2f} [{r['share_low']:.2f}, {r['share_high']:.2f}] of report "
             f"continuations judged {r['emotion']} at {_where(r['setting'])} vs {r['unsteered']:.2f} "
             f"unsteered (BH p {r['p_adjusted']:.3g}), perplexity ratio {r['ppl_ratio']:.2f}, anti-steerable "
             f"{r['anti']:.2f}; efficacy goal {'met' if r['efficacy_met'] else 'missed'}" for _, r in g.iterrows()]
    return "; ".join(parts)


def findings(g: pd.DataFrame, judge: dict) -> list[dict]:
    """The index page's lines: per model and emotion, the steered share against unsteered and prompting."""
    return [{"question": f"Does steering make {r['model']} write {r['emotion']}?",
             "finding": f"{r['share']:.2f} [{r['share_low']:.2f}, {r['share_high']:.2f}] of held-out prompts judged "
                        f"{r['emotion']} (gain {r['gain']:+.2f}, BH p {r['p_adjusted']:.3g}; perplexity ratio "
                        f"{r['ppl_ratio']:.2f})",
             "control": f"unsteered {r['unsteered']:.2f}; prompting {r['prompted']:.2f}; KL on neutral text "
                        f"{r['kl']:.3f} vs random vector {r['kl_random']:.3f}; judge dev balanced accuracy "
                        f"{judge['balanced_accuracy']:.2f}",
             "figure": "Goals at the chosen setting (report half)"} for _, r in g.iterrows()]


def save_tables(out, run, summary: pd.DataFrame, goal: pd.DataFrame, config) -> list:
    """Every table of the phase as CSV (token ids as space-separated integers) and the judge as JSON."""
    out = Path(out)
    gens = run.generations.copy()
    gens["token_ids"] = [" ".join(map(str, t)) for t in gens["token_ids"]]
    tables = {"generations": gens, "settings": summary, "goals": goal,
              "interference": interference(run.generations, config),
              "side_effect_summary": side_effect_table(run.tables["side_effects"], config), **run.tables}
    paths = []
    for name, table in tables.items():
        paths.append(out / f"{name}.csv")
        table.to_csv(paths[-1], index=False)
    write_json(out / "judge.json", run.judge)
    return paths + [out / "judge.json"]
