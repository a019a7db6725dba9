"""Phase 05 for one model and one emotion: prompts, screening, exact sweeps, attribution, head sets, generation.

Everything returns long DataFrames (one row per model, emotion, head, ...), so the notebook only
concatenates, plots and narrates.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.models.encoding import span_token_mask
from lib.interventions.effects import generate, generate_sets, random_head_sets, rank_heads, set_metrics
from lib.interventions.scores import attribution_patching, head_activity, screening_scores
from lib.interventions.sweep import Readout, clean_state, mean_head_z, sweep_fast
from lib.interventions.heads import format_heads
from lib.stats.bootstrap import mean_ci, paired_difference
from lib.stats.permutation import permutation_p
from lib.text.generated import keyword_counts, vader_compound

__all__ = ["Prompts", "choose_prompts", "sweep_frame", "analyse_emotion", "head_set_effects"]


@dataclass
class Prompts:
    """``n`` emotion and ``n`` neutral prompts of one token length ``T``, row i of each paired for patching."""

    emotion: str
    T: int
    rows: pd.DataFrame  # the 2n dataset rows (emotion first), with a ``role`` column
    emo_ids: torch.Tensor
    neu_ids: torch.Tensor
    emo_span: torch.Tensor
    neu_span: torch.Tensor


def choose_prompts(encoder, df: pd.DataFrame, emotion: str, n: int, seed: int = 0) -> Prompts:
    """The token length with the most (emotion, neutral) rows, and ``n`` seeded rows of each at that length
    (fewer if no length has ``n`` of both; an error if none has 2)."""
    if emotion not in TARGET_EMOTIONS:
        raise ValueError(f"emotion {emotion!r} is not one of {list(TARGET_EMOTIONS)} (neutral is the comparison)")
    lengths = pd.Series(encoder.n_tokens(df["text"].tolist()), index=df.index)
    counts = pd.DataFrame({"emo": lengths[df["emotion"] == emotion].value_counts(),
                           "neu": lengths[df["emotion"] == BASELINE].value_counts()}).fillna(0)
    counts = counts[counts.index >= 2]
    if counts.empty or counts.min(axis=1).max() < 2:
        raise ValueError(f"no token length has 2 {emotion} and 2 {BASELINE} rows for {encoder.spec.name}; "
                         f"use more rows (profiles) for phase 05")
    best = counts.min(axis=1)
    T = int(best[best == best.max()].index.min())  # the most common length (the shortest on ties)
    k = int(min(n, best[T]))
    rng = np.random.default_rng(seed)
    pick = {}
    for role, cls in (("emotion", emotion), ("neutral", BASELINE)):
        idx = df.index[(df["emotion"] == cls) & (lengths == T)]
        pick[role] = df.loc[sorted(rng.choice(idx, size=k, replace=False))].assign(role=role)
    ids, spans = {}, {}
    for role, rows in pick.items():
        enc = encoder.encode(rows["text"].tolist())
        ids[role] = enc.input_ids
        spans[role] = span_token_mask(enc.offsets, rows["span_start"].tolist(), rows["span_end"].tolist(), T)
    return Prompts(emotion, T, pd.concat([pick["emotion"], pick["neutral"]], ignore_index=True),
                   ids["emotion"], ids["neutral"], spans["emotion"], spans["neutral"])


def _class_index(readout: Readout, emotion: str) -> int:
    if emotion not in readout.classes:
        raise ValueError(f"the probe has no class {emotion!r}; classes: {readout.classes}")
    return readout.classes.index(emotion)


def sweep_frame(res: dict[str, np.ndarray], clean: dict[str, torch.Tensor], readout: Readout, cls: str,
                **labels) -> pd.DataFrame:
    """Long table of a sweep: per head, the mean change (intervened - clean) over prompts of the probe's
    ``cls`` probability and of the continuation log-probability, with its standard error."""
    frames = []
    ci = _class_index(readout, cls)
    metrics = {"probe_prob": (res["probs"][..., ci], clean["probs"][:, ci].numpy())}
    if "logprob" in res:
        ei = list(readout.continuations).index(cls)
        metrics["logprob"] = (res["logprob"][..., ei], clean["logprob"][:, ei].numpy())
    for metric, (got, base) in metrics.items():
        delta = got - base[None, None, :]  # [L, H, n]
        L, H, n = delta.shape
        frames.append(pd.DataFrame({
            "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L), "metric": metric,
            "effect": delta.mean(-1).ravel(), "se": (delta.std(-1, ddof=1) / np.sqrt(n)).ravel() if n > 1 else np.nan,
        }))
    return pd.concat(frames, ignore_index=True).assign(**labels)


def _gen_scores(texts: list[str], lexicon, emotion: str) -> tuple[np.ndarray, np.ndarray]:
    return vader_compound(texts), keyword_counts(texts, {emotion: lexicon[emotion]})[emotion].to_numpy(float)


def analyse_emotion(lm, readout: Readout, direction: np.ndarray | None, prompts: Prompts, lexicon, *,
                    top_k: int = 8, ks=(1, 2, 4, 8, 16), n_random: int = 19, n_gen_tokens: int = 24,
                    all_positions: bool = True, seed: int = 0, progress=None) -> dict[str, pd.DataFrame]:
    """Every analysis of phase 05 for one model and one emotion (see notebooks/05_heads.py)."""
    hf = lm.bridge.original_model
    emotion, model = prompts.emotion, lm.name
    ci = _class_index(readout, emotion)
    tag = {"model": model, "emotion": emotion}
    timings = {}

    def tick(name, t0):
        timings[name] = round(time.perf_counter() - t0, 2)
        if progress is not None:
            progress(f"{model} {emotion}: {name} {timings[name]:.1f} s")

    t0 = time.perf_counter()
    se, sn = clean_state(hf, prompts.emo_ids, readout), clean_state(hf, prompts.neu_ids, readout)
    mean_z = mean_head_z(se, sn)
    tick("clean runs", t0)

    t0 = time.perf_counter()
    d = None if direction is None else torch.tensor(direction, dtype=torch.float32)
    screen = screening_scores(head_activity(lm, prompts.emo_ids, prompts.emo_span, d),
                              head_activity(lm, prompts.neu_ids, prompts.neu_span, d)).assign(**tag)
    tick("screening", t0)

    sweeps, plan = [], [("ablate (mean)", "mean", "last", se, None), ("patch emotion->neutral", "patch", "last", sn, se),
                        ("patch neutral->emotion", "patch", "last", se, sn)]
    if all_positions:
        plan += [("ablate (mean)", "mean", "all", se, None), ("patch emotion->neutral", "patch", "all", sn, se),
                 ("patch neutral->emotion", "patch", "all", se, sn)]
    for name, mode, pos, target, source in plan:
        t0 = time.perf_counter()
        res = sweep_fast(hf, target, readout, mode, pos, mean_z=mean_z, source=source)
        sweeps.append(sweep_frame(res, target.metrics, readout, emotion, intervention=name, positions=pos, **tag))
        tick(f"sweep {name} {pos}", t0)
    sweeps = pd.concat(sweeps, ignore_index=True)

    t0 = time.perf_counter()
    attr = []
    for pos in (["last", "all"] if all_positions else ["last"]):
        a = attribution_patching(hf, prompts.neu_ids, se.z, readout, emotion, pos)
        ex = sweeps.query("intervention == 'patch emotion->neutral' and positions == @pos and metric == 'probe_prob'")
        attr.append(pd.DataFrame({"layer": ex["layer"], "head": ex["head"], "exact": ex["effect"],
                                  "attribution": a[ex["layer"], ex["head"]], "positions": pos, **tag}))
    attr = pd.concat(attr, ignore_index=True)
    tick("attribution", t0)

    # heads ranked by how much mean-ablating them lowers the emotion's probe probability on emotion prompts
    rank_pos = "all" if all_positions else "last"
    abl = sweeps.query("intervention == 'ablate (mean)' and positions == @rank_pos and metric == 'probe_prob'")
    effect = np.zeros((int(abl["layer"].max()) + 1, int(abl["head"].max()) + 1))
    effect[abl["layer"], abl["head"]] = -abl["effect"].to_numpy()
    ranked = rank_heads(effect)
    top = ranked[:top_k]

    t0 = time.perf_counter()
    clean_e = set_metrics(lm, prompts.emo_ids, readout, [], None)
    curve = []
    for k in [k for k in ks if k <= len(ranked)]:
        m = set_metrics(lm, prompts.emo_ids, readout, ranked[:k], "mean", mean_z=mean_z)
        curve.append({"k": k, "heads": format_heads(ranked[:k]), "drop": float((clean_e["probs"][:, ci] - m["probs"][:, ci]).mean()),
                      "logprob_change": float((m["logprob"][:, list(readout.continuations).index(emotion)]
                                               - clean_e["logprob"][:, list(readout.continuations).index(emotion)]).mean())
                      if "logprob" in m else np.nan, **tag})
    curve = pd.DataFrame(curve)
    tick("top-k curve", t0)

    # top-k vs k random heads: forward metric and generated text
    t0 = time.perf_counter()
    sets = random_head_sets(len(se.z), se.z[0].shape[2], min(top_k, len(ranked)), n_random, seed)
    conds = [("baseline", None, None), (f"top-{len(top)}", top, "top")] + [(f"random {i}", s, "random") for i, s in enumerate(sets)]
    gens = []
    for role, ids, src in (("ablate", prompts.emo_ids, None), ("patch", prompts.neu_ids, se.z)):
        mode = "mean" if role == "ablate" else "patch"
        texts = generate_sets(lm, ids, [heads or [] for _, heads, _ in conds], n_tokens=n_gen_tokens, seed=seed,
                              mode=mode, mean_z=mean_z, source_z=src)
        rows = prompts.rows[prompts.rows["role"] == ("emotion" if role == "ablate" else "neutral")]
        for (cond, heads, kind), tx in zip(conds, texts):
            vad, kw = _gen_scores(tx, lexicon, emotion)
            fwd = set_metrics(lm, ids, readout, heads or [], None if heads is None else mode, mean_z=mean_z, source_z=src)
            gens.append(pd.DataFrame({"id": rows["id"].to_numpy(), "prompt": rows["text"].to_numpy(), "continuation": tx,
                                      "vader": vad, "keywords": kw, "probe_prob": fwd["probs"][:, ci],
                                      "intervention": role, "condition": cond, "kind": kind or "baseline",
                                      "heads": "" if heads is None else format_heads(heads), **tag}))
    gens = pd.concat(gens, ignore_index=True)
    tick("generation", t0)

    summary, perm = [], []
    for role, g in gens.groupby("intervention"):
        base = g[g["kind"] == "baseline"].set_index("id")
        sign = -1 if role == "ablate" else 1  # ablation should lower, patching raise, the emotion
        stats = {}
        for cond, c in g[g["kind"] != "baseline"].groupby("condition", sort=False):
            c = c.set_index("id").loc[base.index]
            stats[cond] = {m: sign * (c[m] - base[m]).mean() for m in ("vader", "keywords", "probe_prob")}
        for cond, c in g.groupby("condition", sort=False):
            c = c.set_index("id").loc[base.index]
            row = {"intervention": role, "condition": cond, "kind": c["kind"].iloc[0], **tag}
            for m in ("vader", "keywords", "probe_prob"):
                mc = mean_ci(c[m].to_numpy(), seed=seed)
                dc = paired_difference(base[m].to_numpy(), c[m].to_numpy(), seed=seed)
                row.update({m: mc["mean"], f"{m}_lo": mc["ci_low"], f"{m}_hi": mc["ci_high"],
                            f"{m}_change": dc["mean"], f"{m}_change_lo": dc["ci_low"], f"{m}_change_hi": dc["ci_high"]})
            summary.append(row)
        topname = next(c for c in stats if c.startswith("top-"))
        for m in ("vader", "keywords", "probe_prob"):
            null = np.array([s[m] for c, s in stats.items() if c.startswith("random")])
            perm.append({"intervention": role, "metric": m, "top_k": len(top), "heads": format_heads(top),
                         "top_effect": stats[topname][m], "random_mean": float(null.mean()),
                         "random_hi": float(np.quantile(null, 0.95)), "n_random": len(null),
                         "p_value": permutation_p(stats[topname][m], null, alternative="greater"), **tag})
    attr_s = {pos: float(spearmanr(g["exact"], g["attribution"])[0]) for pos, g in attr.groupby("positions")}
    top_rows = abl.assign(drop=-abl["effect"]).sort_values("drop", ascending=False).head(top_k)
    return {"screening": screen, "sweeps": sweeps, "attribution": attr, "topk_curve": curve,
            "generations": gens, "generation_summary": pd.DataFrame(summary), "permutation": pd.DataFrame(perm),
            "top_heads": top_rows[["layer", "head", "drop", "se"]].assign(rank=np.arange(1, len(top_rows) + 1), **tag),
            "attribution_spearman": pd.DataFrame([{"positions": p, "spearman": s, **tag} for p, s in attr_s.items()]),
            "timings": pd.DataFrame([{"step": k, "seconds": v, **tag} for k, v in timings.items()]),
            "prompts": prompts.rows.assign(T=prompts.T, model=model, prompt_emotion=emotion)}


def head_set_effects(lm, readout: Readout, prompts: Prompts, heads_spec: str, lexicon, *, n_gen_tokens: int = 20,
                     seed: int = 0) -> pd.DataFrame:
    """A chosen head set (``"L:H,L:H"``) zero- and mean-ablated on the emotion prompts: the probe's emotion
    probability, the continuation log-probability and generated-text scores, each with a 95% bootstrap
    interval, against the clean run."""
    from lib.interventions.heads import parse_heads

    heads = parse_heads(heads_spec, n_layers=lm.cfg.n_layers, n_heads=lm.cfg.n_heads, model_name=lm.name)
    emotion = prompts.emotion
    ci, ei = _class_index(readout, emotion), list(readout.continuations).index(emotion)
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
