"""Phase 05 glue: prompts, screening, exact sweeps, attribution, head sets and generation for every model
and emotion, the tables the notebook displays and saves, and the check of the direction against phase 03.

Everything returns long DataFrames (one row per model, emotion, head, ...), so the notebook only
calls, plots and narrates.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from lib.activations.layerwise import load_layers
from lib.geometry.directions import diff_of_means
from lib.geometry.probes import fit_probe
from lib.interventions.effects import (condition_summary, random_head_sets, rank_heads, set_conditions, set_metrics,
                                      top_vs_random, topk_curve)
from lib.interventions.generation import generate, generate_sets
from lib.interventions.heads import format_heads, parse_heads
from lib.interventions.prompts import Prompts, choose_prompts
from lib.interventions.readout import Readout, class_index, continuation_ids, readout_from_probe
from lib.interventions.scores import attribution_patching, head_activity, screening_scores
from lib.interventions.sweep import CleanState, clean_state, mean_head_z, sweep_fast, sweep_frame
from lib.models.loading import load_model
from lib.paths import RESULTS
from lib.settings import progress_bar, step as announce
from lib.stats.bootstrap import mean_ci, paired_difference
from lib.text.generated import keyword_counts, vader_compound

__all__ = ["SWEEPS", "screen_heads", "run_sweeps", "attribution_frame", "ablation_ranking", "generation_frame",
           "generation_stats", "analyse_emotion", "head_set_effects", "HeadsConfig", "HeadsRun", "analyse_models", "SAVED_TABLES",
           "save_tables", "summary_text", "direction_agreement", "prompt_counts", "time_per_model",
           "scaled_screening", "probe_sweeps", "top_head_bars", "permutation_pivot", "head_set_table", "error_bars",
           "generation_table", "generation_examples", "spearman_pivot", "attribution_panels"]

GEN_METRICS = ("vader", "keywords", "probe_prob")


def _gen_scores(texts: list[str], lexicon, emotion: str) -> tuple[np.ndarray, np.ndarray]:
    return vader_compound(texts), keyword_counts(texts, {emotion: lexicon[emotion]})[emotion].to_numpy(float)


@dataclass
class _Steps:
    """Times named steps (seconds, 2 decimals) and reports each to ``progress``."""

    label: str
    progress: object = None
    timings: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str):
        announce(f"{self.label}: {name}")
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 2)
        if self.progress is not None:
            self.progress(f"{self.label}: {name} {self.timings[name]:.1f} s")


def screen_heads(lm, prompts: Prompts, direction: np.ndarray | None, tag: dict) -> pd.DataFrame:
    """The screening scores of every head, emotion minus neutral prompts (``lib.interventions.scores``)."""
    d = None if direction is None else torch.tensor(direction, dtype=torch.float32)
    return screening_scores(head_activity(lm, prompts.emo_ids, prompts.emo_span, d),
                            head_activity(lm, prompts.neu_ids, prompts.neu_span, d)).assign(**tag)


# (name, mode, target, source): target/source "emotion" or "neutral" prompts; run at the last position, then all
SWEEPS = (("ablate (mean)", "mean", "emotion", None), ("patch emotion->neutral", "patch", "neutral", "emotion"),
          ("patch neutral->emotion", "patch", "emotion", "neutral"))


def run_sweeps(hf, states: dict[str, CleanState], readout: Readout, mean_z, emotion: str, tag: dict, *,
               all_positions: bool, step) -> pd.DataFrame:
    """Every ``SWEEPS`` single-head sweep on every head, at the last position (and all positions), long form."""
    frames, positions = [], (["last", "all"] if all_positions else ["last"])
    with progress_bar(total=len(positions) * len(SWEEPS) * len(states["emotion"].resid_pre), unit="layer",
                      desc=f"{tag['model']} {emotion} single-head sweeps") as bar:
        for pos in positions:
            for name, mode, target, source in SWEEPS:
                with step(f"sweep {name} {pos}"):
                    res = sweep_fast(hf, states[target], readout, mode, pos, mean_z=mean_z,
                                     source=None if source is None else states[source], progress=bar.update)
                    frames.append(sweep_frame(res, states[target].metrics, readout, emotion, intervention=name,
                                              positions=pos, **tag))
    return pd.concat(frames, ignore_index=True)


def attribution_frame(hf, prompts: Prompts, source: CleanState, readout: Readout, sweeps: pd.DataFrame, tag: dict,
                      *, all_positions: bool) -> pd.DataFrame:
    """Attribution patching emotion -> neutral beside the exact effect of the same patch, per head."""
    frames = []
    for pos in (["last", "all"] if all_positions else ["last"]):
        a = attribution_patching(hf, prompts.neu_ids, source.z, readout, prompts.emotion, pos)
        ex = sweeps.query("intervention == 'patch emotion->neutral' and positions == @pos and metric == 'probe_prob'")
        frames.append(pd.DataFrame({"layer": ex["layer"], "head": ex["head"], "exact": ex["effect"],
                                    "attribution": a[ex["layer"], ex["head"]], "positions": pos, **tag}))
    return pd.concat(frames, ignore_index=True)


def ablation_ranking(sweeps: pd.DataFrame, positions: str) -> tuple[pd.DataFrame, list[tuple[int, int]]]:
    """The mean-ablation rows of ``sweeps`` (probe probability, ``positions``) and every head ranked by
    how much ablating it lowers the emotion's probe probability, largest drop first."""
    abl = sweeps.query("intervention == 'ablate (mean)' and positions == @positions and metric == 'probe_prob'")
    effect = np.zeros((int(abl["layer"].max()) + 1, int(abl["head"].max()) + 1))
    effect[abl["layer"], abl["head"]] = -abl["effect"].to_numpy()
    return abl, rank_heads(effect)


def generation_frame(lm, prompts: Prompts, readout: Readout, conds: list, mean_z, source: CleanState, lexicon,
                     tag: dict, *, n_gen_tokens: int, seed: int) -> pd.DataFrame:
    """Per prompt and condition: the continuation, its VADER and keyword scores, and the probe probability,
    with the sets mean-ablated on the emotion prompts and patched emotion -> neutral into the neutral ones."""
    ci = class_index(readout, prompts.emotion)
    frames = []
    for role, ids, src in (("ablate", prompts.emo_ids, None), ("patch", prompts.neu_ids, source.z)):
        mode = "mean" if role == "ablate" else "patch"
        texts = generate_sets(lm, ids, [heads or [] for _, heads, _ in conds], n_tokens=n_gen_tokens, seed=seed,
                              mode=mode, mean_z=mean_z, source_z=src)
        rows = prompts.rows[prompts.rows["role"] == ("emotion" if role == "ablate" else "neutral")]
        for (cond, heads, kind), tx in zip(conds, texts):
            vad, kw = _gen_scores(tx, lexicon, prompts.emotion)
            fwd = set_metrics(lm, ids, readout, heads or [], None if heads is None else mode, mean_z=mean_z, source_z=src)
            frames.append(pd.DataFrame({"id": rows["id"].to_numpy(), "prompt": rows["text"].to_numpy(),
                                        "continuation": tx, "vader": vad, "keywords": kw, "probe_prob": fwd["probs"][:, ci],
                                        "intervention": role, "condition": cond, "kind": kind or "baseline",
                                        "heads": "" if heads is None else format_heads(heads), **tag}))
    return pd.concat(frames, ignore_index=True)


def generation_stats(gens: pd.DataFrame, top: list, tag: dict, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, permutation): per intervention and condition the metrics with intervals, and the top set
    against the random sets per metric (ablation should lower, patching raise, the emotion)."""
    summary, perm = [], []
    for role, g in gens.groupby("intervention"):
        base = g[g["kind"] == "baseline"].set_index("id")
        summary += condition_summary(g, base, GEN_METRICS, intervention=role, seed=seed, **tag)
        perm += top_vs_random(g, base, GEN_METRICS, top, intervention=role, sign=-1 if role == "ablate" else 1, **tag)
    return pd.DataFrame(summary), pd.DataFrame(perm)


def analyse_emotion(lm, readout: Readout, direction: np.ndarray | None, prompts: Prompts, lexicon, *,
                    top_k: int = 8, ks=(1, 2, 4, 8, 16), n_random: int = 19, n_gen_tokens: int = 24,
                    all_positions: bool = True, seed: int = 0, progress=None) -> dict[str, pd.DataFrame]:
    """Every analysis of phase 05 for one model and one emotion (see notebooks/05_heads.py)."""
    class_index(readout, prompts.emotion)  # fail before any run if the probe lacks the emotion
    hf = lm.bridge.original_model
    tag = {"model": lm.name, "emotion": prompts.emotion}
    step = _Steps(f"{lm.name} {prompts.emotion}", progress)
    with step("clean runs"):
        se, sn = clean_state(hf, prompts.emo_ids, readout), clean_state(hf, prompts.neu_ids, readout)
        mean_z = mean_head_z(se, sn)
    with step("screening"):
        screen = screen_heads(lm, prompts, direction, tag)
    sweeps = run_sweeps(hf, {"emotion": se, "neutral": sn}, readout, mean_z, prompts.emotion, tag,
                        all_positions=all_positions, step=step)
    with step("attribution"):
        attr = attribution_frame(hf, prompts, se, readout, sweeps, tag, all_positions=all_positions)
    abl, ranked = ablation_ranking(sweeps, "all" if all_positions else "last")
    top = ranked[:top_k]
    with step("top-k curve"):
        curve = topk_curve(lm, prompts.emo_ids, readout, ranked, ks, prompts.emotion, mean_z=mean_z, **tag)
    with step("generation"):  # top-k vs k random heads: forward metric and generated text
        sets = random_head_sets(len(se.z), se.z[0].shape[2], min(top_k, len(ranked)), n_random, seed)
        gens = generation_frame(lm, prompts, readout, set_conditions(top, sets), mean_z, se, lexicon, tag,
                                n_gen_tokens=n_gen_tokens, seed=seed)
    summary, perm = generation_stats(gens, top, tag, seed)
    attr_s = {pos: float(spearmanr(g["exact"], g["attribution"])[0]) for pos, g in attr.groupby("positions")}
    top_rows = abl.assign(drop=-abl["effect"]).sort_values("drop", ascending=False).head(top_k)
    return {"screening": screen, "sweeps": sweeps, "attribution": attr, "topk_curve": curve,
            "generations": gens, "generation_summary": summary, "permutation": perm,
            "top_heads": top_rows[["layer", "head", "drop", "se"]].assign(rank=np.arange(1, len(top_rows) + 1), **tag),
            "attribution_spearman": pd.DataFrame([{"positions": p, "spearman": s, **tag} for p, s in attr_s.items()]),
            "timings": pd.DataFrame([{"step": k, "seconds": v, **tag} for k, v in step.timings.items()]),
            "prompts": prompts.rows.assign(T=prompts.T, model=lm.name, prompt_emotion=prompts.emotion)}


def head_set_effects(lm, readout: Readout, prompts: Prompts, heads_spec: str, lexicon, *, n_gen_tokens: int = 20,
                     seed: int = 0) -> pd.DataFrame:
    """A chosen head set (``"L:H,L:H"``) zero- and mean-ablated on the emotion prompts: the probe's emotion
    probability, the continuation log-probability and generated-text scores, each with a 95% bootstrap
    interval, against the clean run."""
    heads = parse_heads(heads_spec, n_layers=lm.cfg.n_layers, n_heads=lm.cfg.n_heads, model_name=lm.name)
    emotion = prompts.emotion
    ci, ei = class_index(readout, emotion), list(readout.continuations).index(emotion)
    se, sn = clean_state(lm.bridge.original_model, prompts.emo_ids, readout), \
        clean_state(lm.bridge.original_model, prompts.neu_ids, readout)
    mean_z = mean_head_z(se, sn)
    rows, base = [], None
    for mode in (None, "zero", "mean"):
        m = set_metrics(lm, prompts.emo_ids, readout, heads, mode, mean_z=mean_z)
        texts = generate(lm, prompts.emo_ids, n_tokens=n_gen_tokens, seed=seed, heads=heads, mode=mode, mean_z=mean_z)
        vad, kw = _gen_scores(texts, lexicon, emotion)
        cur = {"probe_prob": m["probs"][:, ci], "logprob": m["logprob"][:, ei], "vader": vad, "keywords": kw}
        base = cur if mode is None else base
        row = {"model": lm.name, "emotion": emotion, "heads": format_heads(heads), "ablation": mode or "none"}
        for k, v in cur.items():
            mc, dc = mean_ci(v, seed=seed), paired_difference(base[k], v, seed=seed)
            row.update({k: mc["mean"], f"{k}_change": dc["mean"], f"{k}_change_lo": dc["ci_low"],
                        f"{k}_change_hi": dc["ci_high"]})
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class HeadsConfig:
    """Phase-05 settings shared by every model and emotion (the notebook's parameters of the same names)."""

    probe_layer: int = -1
    n_prompts: int = 16
    top_k: int = 8
    ks: tuple = (1, 2, 4, 8, 16)
    n_random: int = 19
    n_gen_tokens: int = 20
    all_positions: bool = True
    heads: str = ""  # a head set for ``head_set_effects`` ("L:H,L:H"); empty: none
    seed: int = 0


@dataclass
class HeadsRun:
    """What ``analyse_models`` found: per (model, emotion) the ``analyse_emotion`` tables and the direction,
    per model its identity and readout, and the chosen head set's table."""

    parts: dict = field(default_factory=dict)  # (model, emotion) -> {table name: DataFrame}
    directions: dict = field(default_factory=dict)  # (model, emotion) -> unit direction [d_model]
    readouts: dict = field(default_factory=dict)  # model -> Readout
    identities: list = field(default_factory=list)
    chosen: list = field(default_factory=list)  # head_set_effects tables

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Each table concatenated over models and emotions, in run order."""
        return {k: pd.concat([p[k] for p in self.parts.values()], ignore_index=True)
                for k in next(iter(self.parts.values()))}

    @property
    def head_set(self) -> pd.DataFrame | None:
        return pd.concat(self.chosen, ignore_index=True) if self.chosen else None


def analyse_models(models: list[str], emotions: list[str], stores, fit_profiles: list[str], prompt_rows: pd.DataFrame,
                   lexicon, cfg: HeadsConfig, *, device: str = "cpu", progress=None) -> HeadsRun:
    """Phase 05 for every model and emotion: per model the probe and continuation readout at
    ``cfg.probe_layer`` (fitted on the sentence-end ``hook_resid_post`` of ``fit_profiles``' stores), then
    per emotion its direction, prompts, the chosen head set (first, so a bad set fails in seconds) and
    ``analyse_emotion``."""
    run = HeadsRun()
    for m in models:
        lm = load_model(m, device=device)
        run.identities.append(lm.identity())
        layer = cfg.probe_layer % lm.cfg.n_layers
        ld = load_layers([stores[m, p] for p in fit_profiles], m, "hook_resid_post", layers=[layer])
        probe = fit_probe(ld.xs[0], ld.labels["emotion"].to_numpy(), seed=cfg.seed)
        words = {e: lexicon[e]["continuations"] for e in emotions}
        run.readouts[m] = readout_from_probe(probe, layer, continuation_ids(lm.tokenizer, words))
        for e in emotions:
            run.directions[m, e] = diff_of_means(ld.xs[0], ld.labels, e)
            prompts = choose_prompts(lm.encoder, prompt_rows, e, cfg.n_prompts, cfg.seed)
            if cfg.heads:
                run.chosen.append(head_set_effects(lm, run.readouts[m], prompts, cfg.heads, lexicon,
                                                   n_gen_tokens=cfg.n_gen_tokens, seed=cfg.seed))
            run.parts[m, e] = analyse_emotion(lm, run.readouts[m], run.directions[m, e], prompts, lexicon,
                                              top_k=cfg.top_k, ks=cfg.ks, n_random=cfg.n_random,
                                              n_gen_tokens=cfg.n_gen_tokens, all_positions=cfg.all_positions,
                                              seed=cfg.seed, progress=progress)
        del lm
    return run


SAVED_TABLES = ("screening", "sweeps", "attribution", "attribution_spearman", "top_heads", "topk_curve", "generations",
                "generation_summary", "permutation", "prompts", "timings")


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


def summary_text(run: HeadsRun, top_k: int) -> str:
    """One sentence per model and emotion: the top head and its drop, and the top-k set's permutation p
    (probe, keywords) under ablation."""
    lines = []
    for (m, e), p in run.parts.items():
        t = p["top_heads"].iloc[0]
        pv = p["permutation"].set_index(["intervention", "metric"])["p_value"]
        lines.append(f"{m} {e}: top head {int(t['layer'])}:{int(t['head'])} (drop {t['drop']:.3f}); "
                     f"top-{top_k} vs random p = {pv['ablate', 'probe_prob']:.3f} (probe), "
                     f"{pv['ablate', 'keywords']:.3f} (keywords)")
    return "; ".join(lines)


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


# The tables the notebook displays (and the columns its plots read).

def prompt_counts(prompts: pd.DataFrame) -> pd.DataFrame:
    """Prompt rows and their token length per model, emotion and role."""
    return prompts.groupby(["model", "prompt_emotion", "role"]).agg(rows=("id", "size"), tokens=("T", "first"))


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
    """The probe-probability rows of ``sweeps``, with ``what`` = "intervention, positions"."""
    return sweeps[sweeps["metric"] == "probe_prob"].assign(what=lambda d: d["intervention"] + ", " + d["positions"])


def top_head_bars(top_heads: pd.DataFrame) -> pd.DataFrame:
    """``top_heads`` with a ``head_label`` "L:H" and ``ci``, the half-width of a 95% interval (1.96 se)."""
    return top_heads.assign(head_label=lambda d: d["layer"].astype(str) + ":" + d["head"].astype(str),
                            ci=lambda d: 1.96 * d["se"])


def permutation_pivot(perm: pd.DataFrame) -> pd.DataFrame:
    """Top set vs random sets: effect, random mean and p per metric (columns), rounded to 4 places."""
    return perm.pivot_table(index=["model", "emotion", "intervention", "heads"], columns="metric",
                            values=["top_effect", "random_mean", "p_value"]).round(4)


def head_set_table(head_set: pd.DataFrame) -> pd.DataFrame:
    """The chosen head set's changes against the clean run, rounded to 4 places."""
    return head_set.set_index(["model", "emotion", "heads", "ablation"])[
        ["probe_prob", "probe_prob_change", "probe_prob_change_lo", "probe_prob_change_hi", "logprob_change",
         "vader_change", "keywords_change"]].round(4)


def error_bars(summary: pd.DataFrame, intervention: str, metric: str) -> pd.DataFrame:
    """The ``intervention`` rows of a generation summary with ``lo`` / ``hi``: the distances from ``metric``'s
    mean down to its interval's low end and up to its high end (plotly's error_y_minus / error_y)."""
    return summary[summary["intervention"] == intervention].assign(
        lo=lambda d: d[metric] - d[f"{metric}_lo"], hi=lambda d: d[f"{metric}_hi"] - d[metric])


def generation_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Baseline and top-set rows of a generation summary: means and intervals, rounded to 3 places."""
    return summary[summary["kind"] != "random"][["model", "emotion", "intervention", "condition", "vader", "vader_lo",
                                                 "vader_hi", "keywords", "keywords_lo", "keywords_hi",
                                                 "probe_prob"]].round(3)


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
