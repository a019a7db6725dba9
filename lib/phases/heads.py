"""Phase 05 glue: for every model and emotion, its prompts split into a selection and an evaluation half.
On the selection half, screening, exact single-head sweeps and attribution patching rank the heads; on
the evaluation half, the top-k curve, the top-k set against random sets of k heads and generated text
measure the ranked heads. The readout probe and the direction are fitted on rows outside every prompt's
text group. Display tables, the summary and the findings live in ``lib.phases.heads_tables``.

Everything returns long DataFrames (one row per model, emotion, head, ...), so the notebook only
calls, plots and narrates.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from lib.activations.layerwise import load_layers
from lib.geometry.directions import diff_of_means
from lib.geometry.folds import text_groups
from lib.geometry.probes import fit_probe
from lib.interventions.effects import (ALTERNATIVE, band_vs_random, compare_with_random, condition_summary,
                                      random_head_sets, rank_heads, set_conditions, set_metrics)
from lib.interventions.generation import generate, generate_sets
from lib.interventions.heads import format_heads, parse_heads
from lib.interventions.prompts import Prompts, PromptSplit, split_prompts
from lib.interventions.readout import Readout, class_index, continuation_ids, metric_changes, readout_from_probe
from lib.interventions.scores import attribution_patching, head_activity, screening_scores
from lib.interventions.sweep import CleanState, clean_state, position_mean_z, sets_fast, sweep_fast, sweep_frame
from lib.models.loading import load_model
from lib.settings import progress_bar, step as announce
from lib.stats.bootstrap import mean_ci, paired_difference
from lib.stats.multitest import adjust_family
from lib.stats.splits import split_record
from lib.text.generated import keyword_counts, vader_compound

__all__ = ["SWEEPS", "REFERENCE", "GEN_METRICS", "TESTED_METRICS", "screen_heads", "sweep_positions", "run_sweeps",
           "attribution_frame", "ablation_ranking", "held_out_sets", "generation_frame", "generation_stats",
           "analyse_emotion", "head_set_effects", "prompt_disjoint_rows", "HeadsConfig", "HeadsRun", "analyse_models"]

GEN_METRICS = ("vader", "keywords", "probe_logodds")
TESTED_METRICS = ("probe_logodds", "logprob")  # the forward metrics tested against random sets (one BH family)
REFERENCE = "neutral prompts of the selection half"  # the mean-ablation reference set (position-matched means)
_ROLES = {"ablate": ("emotion", "mean"), "patch": ("neutral", "patch")}  # intervention -> (target prompts, mode)


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


# (name, mode, target, source): target/source "emotion" or "neutral" prompts of the selection half
SWEEPS = (("ablate (mean)", "mean", "emotion", None), ("patch emotion->neutral", "patch", "neutral", "emotion"),
          ("patch neutral->emotion", "patch", "emotion", "neutral"))


def sweep_positions(positions: str, all_positions: bool) -> list[str]:
    """The sweeps' positions: the position rule first (it ranks the heads), then "all" as a descriptive
    extra when ``all_positions`` asks for it."""
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    return [positions] + (["all"] if all_positions and positions != "all" else [])


def run_sweeps(hf, states: dict[str, CleanState], readout: Readout, mean_z, emotion: str, tag: dict, *,
               positions: list[str], step) -> pd.DataFrame:
    """Every ``SWEEPS`` single-head sweep on every head at each of ``positions``, long form."""
    frames = []
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
                      *, positions: list[str]) -> pd.DataFrame:
    """Attribution patching emotion -> neutral beside the exact effect of the same patch, per head, both on
    the probe's log-odds of the emotion."""
    frames = []
    for pos in positions:
        a = attribution_patching(hf, prompts.neu_ids, source.z, readout, prompts.emotion, pos, metric="logodds")
        ex = sweeps.query("intervention == 'patch emotion->neutral' and positions == @pos and metric == 'probe_logodds'")
        frames.append(pd.DataFrame({"layer": ex["layer"], "head": ex["head"], "exact": ex["effect"],
                                    "attribution": a[ex["layer"], ex["head"]], "positions": pos, **tag}))
    return pd.concat(frames, ignore_index=True)


def ablation_ranking(sweeps: pd.DataFrame, positions: str) -> tuple[pd.DataFrame, list[tuple[int, int]]]:
    """The mean-ablation rows of ``sweeps`` (probe log-odds, ``positions``) and every head ranked by how much
    ablating it lowers the emotion's log-odds, largest drop first."""
    abl = sweeps.query("intervention == 'ablate (mean)' and positions == @positions and metric == 'probe_logodds'")
    if abl.empty:
        raise ValueError(f"no mean-ablation sweep at positions {positions!r} to rank heads by")
    effect = np.zeros((int(abl["layer"].max()) + 1, int(abl["head"].max()) + 1))
    effect[abl["layer"], abl["head"]] = -abl["effect"].to_numpy()
    return abl, rank_heads(effect)


def held_out_sets(hf, states: dict[str, CleanState], readout: Readout, emotion: str, ranked: list, null_sets: list,
                  *, top_k: int, ks, mean_z, positions: str, groups: dict, seed: int = 0, tag: dict) -> dict:
    """On the evaluation half (``states``: its clean emotion and neutral runs): the top-k heads of ``ranked``
    (chosen on the selection half) and each of ``null_sets`` mean-ablated on the emotion prompts and
    patched emotion -> neutral into the neutral ones (``sets_fast``); each top head alone and the top-k
    curve (ablation). ``groups``: per role ("emotion", "neutral") the target prompts' text groups, which
    intervals resample. Returns the tables ``top_vs_random`` (per intervention and ``TESTED_METRICS``),
    ``topk_curve`` and ``held_out_heads``, and ``changes``: per intervention, metric -> [1 + sets, n] (row 0
    the top set)."""
    top, R = ranked[:top_k], len(null_sets)
    curve_ks = [k for k in ks if k <= len(ranked)]
    sets = {"ablate": [top, *null_sets, *([h] for h in top), *(ranked[:k] for k in curve_ks)],
            "patch": [top, *null_sets]}
    changes = {}
    for role, (target, mode) in _ROLES.items():
        st = states[target]
        res = sets_fast(hf, st, readout, sets[role], mode, positions, mean_z=mean_z,
                        source=states["emotion"] if mode == "patch" else None)
        changes[role] = metric_changes(res, st.metrics, readout, emotion)
    rows = []
    for role, ch in changes.items():
        for metric in [m for m in TESTED_METRICS if m in ch]:
            rows.append({"intervention": role, "metric": metric, "positions": positions, "top_k": len(top),
                         "heads": format_heads(top), "prob_change": float(ch["probe_prob"][0].mean()),
                         **compare_with_random(ch[metric][0], ch[metric][1:1 + R], alternative=ALTERNATIVE[role],
                                               groups=groups[_ROLES[role][0]], seed=seed), **tag})
    abl, first = changes["ablate"], 1 + R + len(top)
    singles = abl["probe_logodds"][1 + R:first]
    curve = []
    for i, k in enumerate(curve_ks):
        ci = mean_ci(abl["probe_logodds"][first + i], seed=seed, groups=groups["emotion"])
        curve.append({"k": k, "heads": format_heads(ranked[:k]), **{f"{m}_change": float(v[first + i].mean())
                                                                    for m, v in abl.items()},
                      "logodds_lo": ci["ci_low"], "logodds_hi": ci["ci_high"], **tag})
    heads = pd.DataFrame({"layer": [h[0] for h in top], "head": [h[1] for h in top],
                          "held_out_drop": -singles.mean(1),
                          "held_out_se": singles.std(1, ddof=1) / np.sqrt(singles.shape[1]) if singles.shape[1] > 1
                          else np.nan})
    return {"top_vs_random": pd.DataFrame(rows), "topk_curve": pd.DataFrame(curve), "held_out_heads": heads,
            "changes": {r: {m: v[:1 + R] for m, v in ch.items()} for r, ch in changes.items()}}


def generation_frame(lm, prompts: Prompts, conds: list, mean_z, source: CleanState, lexicon, tag: dict, *,
                     forward: dict, positions: str, n_gen_tokens: int, seed: int) -> pd.DataFrame:
    """Per prompt and condition (``set_conditions``): the continuation, its VADER and keyword scores, and the
    probe's log-odds change at the last token (``forward``: per intervention [conditions - 1, n], the sets'
    changes in order), with the sets mean-ablated on the emotion prompts and patched emotion -> neutral into
    the neutral ones under the position rule ``positions``."""
    frames = []
    for role, (target, mode) in _ROLES.items():
        ids = prompts.emo_ids if target == "emotion" else prompts.neu_ids
        texts = generate_sets(lm, ids, [heads or [] for _, heads, _ in conds], n_tokens=n_gen_tokens, seed=seed,
                              mode=mode, positions=positions, mean_z=mean_z,
                              source_z=source.z if mode == "patch" else None)
        rows = prompts.rows[prompts.rows["role"] == target]
        fwd = np.concatenate([np.zeros((1, len(rows))), forward[role]])
        for i, ((cond, heads, kind), tx) in enumerate(zip(conds, texts)):
            vad, kw = _gen_scores(tx, lexicon, prompts.emotion)
            frames.append(pd.DataFrame({"id": rows["id"].to_numpy(), "prompt": rows["text"].to_numpy(),
                                        "continuation": tx, "vader": vad, "keywords": kw, "probe_logodds": fwd[i],
                                        "intervention": role, "condition": cond, "kind": kind or "baseline",
                                        "heads": "" if heads is None else format_heads(heads), **tag}))
    return pd.concat(frames, ignore_index=True)


def generation_stats(gens: pd.DataFrame, top: list, tag: dict, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, band): per intervention and condition the metrics with intervals, and per metric the top
    set's change beside the random sets' band (no p-value: ``band_vs_random``)."""
    summary, band = [], []
    for role, g in gens.groupby("intervention", sort=False):
        base = g[g["kind"] == "baseline"].set_index("id")
        summary += condition_summary(g, base, GEN_METRICS, intervention=role, seed=seed, **tag)
        band += band_vs_random(g, base, GEN_METRICS, top, intervention=role, seed=seed, **tag)
    return pd.DataFrame(summary), pd.DataFrame(band)


@dataclass(frozen=True)
class HeadsConfig:
    """Phase-05 settings shared by every model and emotion (the notebook's parameters of the same names)."""

    probe_layer: int = -1
    n_prompts: int = 16  # pairs per half
    top_k: int = 8
    ks: tuple = (1, 2, 4, 8, 16)
    n_random_null: int = 199  # random sets for the forward metrics' test
    n_random: int = 19  # of those, the ones generated with
    n_gen_tokens: int = 20
    positions: str = "last"  # ranking, set interventions, the null and generation
    all_positions: bool = False  # also the descriptive all-positions sweeps
    heads: str = ""  # a head set for ``head_set_effects`` ("L:H,L:H"); empty: none
    seed: int = 0


def analyse_emotion(lm, readout: Readout, direction: np.ndarray | None, split: PromptSplit, lexicon,
                    cfg: HeadsConfig = HeadsConfig(), progress=None) -> dict[str, pd.DataFrame]:
    """Every analysis of phase 05 for one model and one emotion (see notebooks/05_heads.py): heads ranked on
    ``split.select``, measured on ``split.evaluate``."""
    sel, ev = split.select, split.evaluate
    class_index(readout, sel.emotion)  # fail before any run if the probe lacks the emotion
    hf = lm.bridge.original_model
    tag = {"model": lm.name, "emotion": sel.emotion}
    step = _Steps(f"{lm.name} {sel.emotion}", progress)
    positions = sweep_positions(cfg.positions, cfg.all_positions)
    with step("clean runs"):
        se, sn = clean_state(hf, sel.emo_ids, readout), clean_state(hf, sel.neu_ids, readout)
        ee, en = clean_state(hf, ev.emo_ids, readout), clean_state(hf, ev.neu_ids, readout)
        mean_z = position_mean_z(sn)
    with step("screening"):
        screen = screen_heads(lm, sel, direction, tag)
    sweeps = run_sweeps(hf, {"emotion": se, "neutral": sn}, readout, mean_z, sel.emotion, tag, positions=positions,
                        step=step)
    with step("attribution"):
        attr = attribution_frame(hf, sel, se, readout, sweeps, tag, positions=positions)
    abl, ranked = ablation_ranking(sweeps, cfg.positions)
    n_layers, n_heads = len(se.z), se.z[0].shape[2]
    null_sets = random_head_sets(n_layers, n_heads, min(cfg.top_k, len(ranked)), cfg.n_random_null, cfg.seed)
    with step("held-out sets"):
        held = held_out_sets(hf, {"emotion": ee, "neutral": en}, readout, sel.emotion, ranked, null_sets,
                             top_k=cfg.top_k, ks=cfg.ks, mean_z=mean_z, positions=cfg.positions,
                             groups={r: g["group"].to_numpy() for r, g in ev.rows.groupby("role")}, seed=cfg.seed,
                             tag=tag)
    top = ranked[:cfg.top_k]
    n_gen = min(cfg.n_random, len(null_sets))
    with step("generation"):
        fwd = {r: ch["probe_logodds"][:1 + n_gen] for r, ch in held["changes"].items()}
        gens = generation_frame(lm, ev, set_conditions(top, null_sets[:n_gen]), mean_z, ee, lexicon, tag,
                                forward=fwd, positions=cfg.positions, n_gen_tokens=cfg.n_gen_tokens, seed=cfg.seed)
    summary, band = generation_stats(gens, top, tag, cfg.seed)
    attr_s = {pos: float(spearmanr(g["exact"], g["attribution"])[0]) for pos, g in attr.groupby("positions", sort=False)}
    top_rows = abl.assign(drop=-abl["effect"]).sort_values("drop", ascending=False, kind="stable").head(cfg.top_k)
    top_rows = top_rows[["layer", "head", "drop", "se"]].merge(held["held_out_heads"], on=["layer", "head"])
    return {"screening": screen, "sweeps": sweeps, "attribution": attr, "topk_curve": held["topk_curve"],
            "top_vs_random": held["top_vs_random"], "generations": gens, "generation_summary": summary,
            "generation_vs_random": band,
            "top_heads": top_rows.assign(rank=np.arange(1, len(top_rows) + 1), **tag),
            "attribution_spearman": pd.DataFrame([{"positions": p, "spearman": s, **tag} for p, s in attr_s.items()]),
            "timings": pd.DataFrame([{"step": k, "seconds": v, **tag} for k, v in step.timings.items()]),
            "prompts": split.rows.assign(T=sel.T, model=lm.name, prompt_emotion=sel.emotion)}


def head_set_effects(lm, readout: Readout, split: PromptSplit, heads_spec: str, lexicon, *, positions: str = "last",
                     n_gen_tokens: int = 20, seed: int = 0) -> pd.DataFrame:
    """A chosen head set (``"L:H,L:H"``) zero- and mean-ablated (the position-matched mean of ``REFERENCE``)
    on the evaluation half's emotion prompts: the probe's log-odds and probability of the emotion, the
    continuation log-probability and generated-text scores, each with a 95% bootstrap interval of the
    change from the clean run."""
    heads = parse_heads(heads_spec, n_layers=lm.cfg.n_layers, n_heads=lm.cfg.n_heads, model_name=lm.name)
    ev, emotion = split.evaluate, split.evaluate.emotion
    ci, ei = class_index(readout, emotion), list(readout.continuations).index(emotion)
    mean_z = position_mean_z(clean_state(lm.bridge.original_model, split.select.neu_ids, readout))
    rows, base = [], None
    for mode in (None, "zero", "mean"):
        m = set_metrics(lm, ev.emo_ids, readout, heads, mode, positions=positions, mean_z=mean_z)
        texts = generate(lm, ev.emo_ids, n_tokens=n_gen_tokens, seed=seed, heads=heads, mode=mode, positions=positions,
                         mean_z=mean_z)
        vad, kw = _gen_scores(texts, lexicon, emotion)
        cur = {"probe_logodds": m["logodds"][:, ci], "probe_prob": m["probs"][:, ci], "logprob": m["logprob"][:, ei],
               "vader": vad, "keywords": kw}
        base = cur if mode is None else base
        row = {"model": lm.name, "emotion": emotion, "heads": format_heads(heads), "ablation": mode or "none",
               "positions": positions}
        for k, v in cur.items():
            mc, dc = mean_ci(v, seed=seed), paired_difference(base[k], v, seed=seed)
            row.update({k: mc["mean"], f"{k}_change": dc["mean"], f"{k}_change_lo": dc["ci_low"],
                        f"{k}_change_hi": dc["ci_high"]})
        rows.append(row)
    return pd.DataFrame(rows)


def prompt_disjoint_rows(fit_texts, prompt_texts, group: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, dropped) indices of ``fit_texts``: a row is dropped when its text group holds any of
    ``prompt_texts`` (``group``: text -> group, e.g. ``text_groups`` over every authored row; default
    ``text_groups`` over the texts given).

    >>> prompt_disjoint_rows(["Thanks a lot!", "thanks a lot", "The bus is late."], ["Thanks a lot"])
    (array([2]), array([0, 1]))
    """
    fit, prompts = [str(t) for t in fit_texts], [str(t) for t in prompt_texts]
    if group is None:
        texts = list(dict.fromkeys([*fit, *prompts]))
        group = dict(zip(texts, text_groups(texts)))
    missing = [t for t in [*fit, *prompts] if t not in group]
    if missing:
        raise ValueError(f"{len(missing)} texts have no text group, e.g. {missing[0]!r}; group every fit and prompt text")
    banned = {group[t] for t in prompts}
    drop = np.array([group[t] in banned for t in fit], dtype=bool)
    return np.flatnonzero(~drop), np.flatnonzero(drop)


@dataclass
class HeadsRun:
    """What ``analyse_models`` found: per (model, emotion) the ``analyse_emotion`` tables and the direction,
    per model its identity and readout, the chosen head set's table and the splits' manifest entries."""

    parts: dict = field(default_factory=dict)  # (model, emotion) -> {table name: DataFrame}
    directions: dict = field(default_factory=dict)  # (model, emotion) -> unit direction [d_model]
    readouts: dict = field(default_factory=dict)  # model -> Readout
    identities: list = field(default_factory=list)
    chosen: list = field(default_factory=list)  # head_set_effects tables
    splits: list = field(default_factory=list)  # split_record entries: prompt halves and probe rows

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Each table concatenated over models and emotions, in run order; ``top_vs_random`` with p-values
        adjusted (Benjamini-Hochberg) over all its rows, one family."""
        out = {k: pd.concat([p[k] for p in self.parts.values()], ignore_index=True)
               for k in next(iter(self.parts.values()))}
        out["top_vs_random"] = adjust_family(out["top_vs_random"])
        return out

    @property
    def head_set(self) -> pd.DataFrame | None:
        return pd.concat(self.chosen, ignore_index=True) if self.chosen else None


def analyse_models(models: list[str], emotions: list[str], stores, fit_profiles: list[str], prompt_rows: pd.DataFrame,
                   lexicon, cfg: HeadsConfig, *, authored: pd.DataFrame | None = None, device: str = "cpu",
                   progress=None) -> HeadsRun:
    """Phase 05 for every model and emotion: per model each emotion's prompt halves (``split_prompts``,
    text groups over ``authored`` and the prompt and store rows), then the probe and continuation readout
    at ``cfg.probe_layer`` and each emotion's direction, fitted on the sentence-end ``hook_resid_post`` of
    ``fit_profiles``' stores without the rows whose text group holds a prompt of any emotion; then per
    emotion the chosen head set (first, so a bad set fails in seconds) and ``analyse_emotion``."""
    run = HeadsRun()
    authored_texts = [] if authored is None else authored["text"].tolist()
    for m in models:
        lm = load_model(m, device=device)
        run.identities.append(lm.identity())
        layer = cfg.probe_layer % lm.cfg.n_layers
        ld = load_layers([stores[m, p] for p in fit_profiles], m, "hook_resid_post", layers=[layer])
        texts = list(dict.fromkeys([*authored_texts, *prompt_rows["text"], *ld.labels["text"]]))
        group = dict(zip(texts, text_groups(texts)))
        splits = {e: split_prompts(lm.encoder, prompt_rows, e, cfg.n_prompts,
                                   groups=prompt_rows["text"].map(group).to_numpy(), seed=cfg.seed) for e in emotions}
        used = pd.concat([s.rows for s in splits.values()])["text"]
        keep, drop = prompt_disjoint_rows(ld.labels["text"], used, group)
        run.splits += [s.record for s in splits.values()]
        run.splits.append(split_record(f"probe rows {m}", "store rows whose text group holds no phase-05 prompt of "
                                       "any emotion fit the probe and directions", cfg.seed, fit=keep, dropped=drop))
        x, labels = ld.xs[0][keep], ld.labels.iloc[keep].reset_index(drop=True)
        probe = fit_probe(x, labels["emotion"].to_numpy(), seed=cfg.seed)
        words = {e: lexicon[e]["continuations"] for e in emotions}
        run.readouts[m] = readout_from_probe(probe, layer, continuation_ids(lm.tokenizer, words))
        for e in emotions:
            run.directions[m, e] = diff_of_means(x, labels, e)
            if cfg.heads:
                run.chosen.append(head_set_effects(lm, run.readouts[m], splits[e], cfg.heads, lexicon,
                                                   positions=cfg.positions, n_gen_tokens=cfg.n_gen_tokens,
                                                   seed=cfg.seed))
            run.parts[m, e] = analyse_emotion(lm, run.readouts[m], run.directions[m, e], splits[e], lexicon, cfg,
                                              progress=progress)
        del lm
    return run
