"""Effects of head sets: readout metrics with sets of heads intervened on together, random control sets,
the ranking of heads by an effect, and the comparison of a top set with random sets.

Sets (top-k, random controls) are intervened on through TransformerLens' ``attn.hook_z`` (one full
forward per set); generation with the same sets is ``lib.interventions.generation``.

>>> rank_heads(np.array([[0.1, 0.5], [0.3, 0.5]]))
[(0, 1), (1, 1), (1, 0), (0, 0)]
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lib.activations.names import act_name
from lib.interventions.heads import format_heads, head_hooks, run_with_hooks_cached
from lib.interventions.readout import Readout, class_index, readout_metrics
from lib.stats.bootstrap import mean_ci, paired_difference
from lib.stats.permutation import permutation_p

__all__ = ["set_metrics", "topk_curve", "random_head_sets", "rank_heads", "set_conditions", "condition_summary",
           "top_vs_random"]


def set_metrics(lm, input_ids: torch.Tensor, readout: Readout, heads, mode: str | None, *, positions: str = "all",
                mean_z=None, source_z=None) -> dict[str, np.ndarray]:
    """Readout metrics per prompt with ``heads`` intervened on together (``mode=None``: clean run)."""
    n, T = input_ids.shape
    hooks = [] if mode is None or not heads else head_hooks(
        list(heads), mode, positions=positions, last_index=torch.full((n,), T - 1), mean_z=mean_z,
        source_z=source_z)
    name = act_name("resid_post", readout.layer)
    logits, cache = run_with_hooks_cached(lm, input_ids, None, hooks, [name])
    res = readout_metrics(cache[name][:, -1], logits[:, -1], readout)
    return {k: v.cpu().numpy() for k, v in res.items()}


def topk_curve(lm, input_ids: torch.Tensor, readout: Readout, ranked: list[tuple[int, int]], ks, cls: str, *,
               mean_z, **labels) -> pd.DataFrame:
    """For each k in ``ks`` (up to ``len(ranked)``): the first k heads of ``ranked`` mean-ablated together,
    the drop in the probe's ``cls`` probability and the change in ``cls``'s continuation log-probability
    (means over prompts), one row per k."""
    ci = class_index(readout, cls)
    clean = set_metrics(lm, input_ids, readout, [], None)
    curve = []
    for k in [k for k in ks if k <= len(ranked)]:
        m = set_metrics(lm, input_ids, readout, ranked[:k], "mean", mean_z=mean_z)
        ei = list(readout.continuations).index(cls) if "logprob" in m else None
        curve.append({"k": k, "heads": format_heads(ranked[:k]),
                      "drop": float((clean["probs"][:, ci] - m["probs"][:, ci]).mean()),
                      "logprob_change": float((m["logprob"][:, ei] - clean["logprob"][:, ei]).mean())
                      if "logprob" in m else np.nan, **labels})
    return pd.DataFrame(curve)


def random_head_sets(n_layers: int, n_heads: int, k: int, n_sets: int, seed: int) -> list[list[tuple[int, int]]]:
    """``n_sets`` sets of ``k`` distinct heads drawn uniformly from all heads (seeded)."""
    total = n_layers * n_heads
    if not 0 < k <= total:
        raise ValueError(f"k={k} must be in 1..{total} (the model's head count)")
    rng = np.random.default_rng(seed)
    return [sorted((int(i) // n_heads, int(i) % n_heads) for i in rng.choice(total, size=k, replace=False))
            for _ in range(n_sets)]


def rank_heads(effect: np.ndarray) -> list[tuple[int, int]]:
    """Heads of an [L, H] effect array, largest first (ties broken by layer, then head)."""
    flat = [(-float(v), layer, head) for (layer, head), v in np.ndenumerate(effect)]
    return [(layer, head) for _, layer, head in sorted(flat)]


def set_conditions(top: list, random_sets: list) -> list[tuple[str, list | None, str | None]]:
    """(condition, heads, kind) of a comparison of sets: the baseline (no heads, kind None), the top set
    (kind "top", as ``top_vs_random`` reads it) and each random set (kind "random").

    >>> [c for c, _, _ in set_conditions([(0, 1)], [[(1, 1)], [(0, 0)]])]
    ['baseline', 'top-1', 'random 0', 'random 1']
    """
    return ([("baseline", None, None), (f"top-{len(top)}", top, "top")]
            + [(f"random {i}", s, "random") for i, s in enumerate(random_sets)])


def _aligned(c: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    return c.set_index("id").loc[base.index]


def condition_summary(rows: pd.DataFrame, base: pd.DataFrame, metrics, *, intervention: str, seed: int,
                      **labels) -> list[dict]:
    """Per condition of ``rows`` (one row per prompt ``id`` and ``condition``, with a ``kind``): each metric's
    mean and its change from ``base`` (the baseline rows, indexed by ``id``), paired by prompt, with 95%
    bootstrap intervals over prompts (columns ``m``, ``m_lo``, ``m_hi``, ``m_change``, ...)."""
    out = []
    for cond, c in rows.groupby("condition", sort=False):
        c = _aligned(c, base)
        row = {"intervention": intervention, "condition": cond, "kind": c["kind"].iloc[0], **labels}
        for m in metrics:
            mc = mean_ci(c[m].to_numpy(), seed=seed)
            dc = paired_difference(base[m].to_numpy(), c[m].to_numpy(), seed=seed)
            row.update({m: mc["mean"], f"{m}_lo": mc["ci_low"], f"{m}_hi": mc["ci_high"],
                        f"{m}_change": dc["mean"], f"{m}_change_lo": dc["ci_low"], f"{m}_change_hi": dc["ci_high"]})
        out.append(row)
    return out


def top_vs_random(rows: pd.DataFrame, base: pd.DataFrame, metrics, top: list[tuple[int, int]], *, intervention: str,
                  sign: int, **labels) -> list[dict]:
    """Per metric: the ``kind == "top"`` condition's mean change from ``base`` (times ``sign``, so larger is the
    expected direction) against the same for every ``kind == "random"`` condition, with the permutation p
    (1 + #random >= top) / (1 + random sets)."""
    effects = {}  # condition -> {metric: signed mean change}, in the order of rows
    kinds = {}
    for cond, c in rows[rows["kind"] != "baseline"].groupby("condition", sort=False):
        kinds[cond] = c["kind"].iloc[0]
        c = _aligned(c, base)
        effects[cond] = {m: sign * (c[m] - base[m]).mean() for m in metrics}
    top_cond = next(c for c, k in kinds.items() if k == "top")
    out = []
    for m in metrics:
        null = np.array([e[m] for c, e in effects.items() if kinds[c] == "random"])
        out.append({"intervention": intervention, "metric": m, "top_k": len(top), "heads": format_heads(top),
                    "top_effect": effects[top_cond][m], "random_mean": float(null.mean()),
                    "random_hi": float(np.quantile(null, 0.95)), "n_random": len(null),
                    "p_value": permutation_p(effects[top_cond][m], null, alternative="greater"), **labels})
    return out
