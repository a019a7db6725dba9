"""Effects of head sets: readout metrics with sets of heads intervened on together (the naive reference,
one TransformerLens forward per set; ``lib.interventions.sweep.sets_fast`` is the fast path), random
control sets, the ranking of heads by an effect, and the comparison of a chosen set with random sets.

A set chosen on one half of the prompts is compared with random sets of the same size on the other
half: ``compare_with_random`` gives the chosen set's mean change with a bootstrap interval over prompts
(resampling text groups), the random sets' band, and the permutation p-value, whose floor is
1 / (1 + random sets). Generated text, with fewer random sets, gets ``band_vs_random``: the same
comparison without a p-value.

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

__all__ = ["set_metrics", "random_head_sets", "rank_heads", "set_conditions", "condition_summary", "compare_with_random",
           "band_vs_random", "ALTERNATIVE"]

# The direction an intervention is expected to move the emotion's readout: ablation lowers it (the chosen set
# should lower it more than random sets), patching emotion -> neutral raises it.
ALTERNATIVE = {"ablate": "less", "patch": "greater"}


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
    (kind "top", as ``band_vs_random`` reads it) and each random set (kind "random").

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


def _band(null_means: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(null_means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def compare_with_random(top: np.ndarray, null: np.ndarray, *, alternative: str, groups=None, seed: int = 0,
                        level: float = 0.95) -> dict:
    """A chosen set's per-prompt changes ``top`` [n] against ``null`` [R, n], the same prompts' changes under R
    random sets: ``change`` (the mean) with its bootstrap interval over prompts (``groups``: text groups,
    resampled whole), ``random_mean`` and the random sets' central ``level`` band of mean changes, and the
    permutation p-value of the chosen mean among the random means (``alternative`` "less": the chosen set
    lowers the metric more; "greater": raises it more), whose smallest value is 1 / (R + 1).

    >>> r = compare_with_random(np.array([-2.0, -3.0]), np.array([[0.0, 1.0], [-1.0, 0.0], [0.5, 0.5]]),
    ...                         alternative="less")
    >>> r["change"], r["random_mean"], r["p_value"], r["n_random"]
    (-2.5, 0.16666666666666666, 0.25, 3)
    """
    top, null = np.asarray(top, dtype=float), np.atleast_2d(np.asarray(null, dtype=float))
    if null.shape[1] != top.shape[0]:
        raise ValueError(f"null has {null.shape[1]} prompts per set, the chosen set {top.shape[0]}; pair them")
    ci = mean_ci(top, seed=seed, level=level, groups=groups)
    means = null.mean(1)
    lo, hi = _band(means, level)
    return {"change": ci["mean"], "change_lo": ci["ci_low"], "change_hi": ci["ci_high"], "n_prompts": ci["n"],
            "random_mean": float(means.mean()), "random_lo": lo, "random_hi": hi, "n_random": int(len(means)),
            "p_value": permutation_p(ci["mean"], means, alternative=alternative)}


def band_vs_random(rows: pd.DataFrame, base: pd.DataFrame, metrics, top: list[tuple[int, int]], *, intervention: str,
                   seed: int = 0, level: float = 0.95, **labels) -> list[dict]:
    """Per metric: the ``kind == "top"`` condition's mean change from ``base`` (paired by prompt ``id``, with a
    bootstrap interval) beside the ``kind == "random"`` conditions' mean changes (their mean and central
    ``level`` band). No p-value: with few random sets its floor, 1 / (1 + sets), would be read as evidence."""
    changes, kinds = {}, {}
    for cond, c in rows[rows["kind"] != "baseline"].groupby("condition", sort=False):
        kinds[cond] = c["kind"].iloc[0]
        changes[cond] = _aligned(c, base)
    top_cond = next(c for c, k in kinds.items() if k == "top")
    out = []
    for m in metrics:
        ci = paired_difference(base[m].to_numpy(), changes[top_cond][m].to_numpy(), seed=seed, level=level)
        null = np.array([(c[m] - base[m]).mean() for cond, c in changes.items() if kinds[cond] == "random"])
        lo, hi = _band(null, level)
        out.append({"intervention": intervention, "metric": m, "top_k": len(top), "heads": format_heads(top),
                    "change": ci["mean"], "change_lo": ci["ci_low"], "change_hi": ci["ci_high"],
                    "random_mean": float(null.mean()), "random_lo": lo, "random_hi": hi, "n_random": len(null),
                    **labels})
    return out
