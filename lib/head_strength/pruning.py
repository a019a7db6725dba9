"""Pruning curves: the objective as heads are removed (mean-ablated together) in a given order.

An order lists heads, most important (or strongest) first; at fraction f the first ``n_removed(f, N)`` heads of
the order are removed together (N = the model's head count), each head's z at the answer position replaced by
its reference mean (as in ``lib.head_strength.importance.ablation_importance``). All (order, fraction) sets are
evaluated exactly by ``lib.interventions.sweep.sets_fast``, identical sets once.

>>> random_orders([(0, 0), (0, 1), (1, 0)], 2, seed=0)[0]
[(1, 0), (0, 0), (0, 1)]
>>> n_removed(0.25, 30), n_removed(0.0, 30), n_removed(1.0, 30)
(8, 0, 30)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lib.head_strength.importance import (ImportanceInputError, check_positions, check_rows, eval_mode, expand_mean,
                                          length_groups, model_device, reference_mean_z, target_readout)
from lib.interventions.sweep import clean_state, sets_fast
from lib.models.archs import model_dims

__all__ = ["random_orders", "n_removed", "set_losses", "pruning_curves"]


def random_orders(heads, n: int, seed: int) -> list[list[tuple[int, int]]]:
    """``n`` seeded uniform permutations of ``heads`` (a list of (layer, head)): the random control orders."""
    heads = [(int(layer), int(head)) for layer, head in heads]
    rng = np.random.default_rng(seed)
    return [[heads[i] for i in rng.permutation(len(heads))] for _ in range(int(n))]


def n_removed(fraction: float, n_heads_total: int) -> int:
    """How many heads fraction ``fraction`` of ``n_heads_total`` removes: rounded half up."""
    return int(np.floor(float(fraction) * n_heads_total + 0.5))


def set_losses(hf, prompts, targets, sets, *, reference_prompts=None, reference_mean=None, positions: str = "last",
               candidates=None, batch_rows: int = 256, progress=None) -> dict[str, np.ndarray]:
    """Per head set (a list of (layer, head); empty = clean) and row: ``loss`` [S, n] = -log p(target) with the
    set's heads mean-ablated together, and, with ``candidates`` (token ids, every target among them),
    ``correct`` [S, n] (bool: the target has the highest probability among the candidates; ties to the
    lowest id). An empty set's loss is the clean state's, exactly.

    Rows run in eval mode, in groups of one length, at most ``batch_rows`` per clean state and per rerun batch
    (sets x prompts). ``progress(k)``: k more rows done. Cost: 2 forwards per row (clean state), then one
    last-token forward per row and distinct non-empty set, from the set's first layer on.
    """
    check_positions(positions)
    rows, tg = check_rows(hf, prompts, targets)
    check_positions(positions, rows)
    n_layers, n_heads, _ = model_dims(hf)
    sets = [_checked_set(s, i, n_layers, n_heads) for i, s in enumerate(sets)]
    if reference_mean is None:
        if reference_prompts is None:
            raise ImportanceInputError("mean ablation needs reference_prompts (or reference_mean)")
        reference_mean = reference_mean_z(hf, reference_prompts, positions=positions)
    cand = None
    if candidates is not None:
        cand = sorted({int(t) for t in candidates})
        missing = [i for i, t in enumerate(tg.tolist()) if t not in cand]
        if missing:
            raise ImportanceInputError(f"targets[{missing[0]}] = {int(tg[missing[0]])} is not among the candidates "
                                       f"{cand}; accuracy needs every target among them")
    ro = target_readout(hf, tg.tolist() + (cand or []))
    col = {int(t): j for j, t in enumerate(ro.continuations)}
    tcol = np.array([col[int(t)] for t in tg])
    unique = sorted(set(sets))
    where = {s: j for j, s in enumerate(unique)}
    loss = np.empty((len(unique), len(rows)), dtype=np.float64)
    correct = np.empty((len(unique), len(rows)), dtype=bool) if cand is not None else None
    for idx in length_groups([r.numel() for r in rows], batch_rows):
        with eval_mode(hf):
            state = clean_state(hf, torch.stack([rows[i] for i in idx]).to(model_device(hf)), ro)
            res = sets_fast(hf, state, ro, [list(s) for s in unique], "mean", positions,
                            mean_z=expand_mean(reference_mean, state.T, positions), max_rows=batch_rows)
        lp = res["logprob"].astype(np.float64)  # [S, n_group, tokens]
        loss[:, idx] = -np.take_along_axis(lp, tcol[idx][None, :, None], -1)[..., 0]
        if cand is not None:
            cc = np.array([col[t] for t in cand])
            correct[:, idx] = cc[lp[..., cc].argmax(-1)] == tcol[idx][None]
        if progress is not None:
            progress(len(idx))
    pick = [where[s] for s in sets]
    out = {"loss": loss[pick]}
    if correct is not None:
        out["correct"] = correct[pick]
    return out


def _checked_set(heads, i: int, n_layers: int, n_heads: int) -> tuple:
    try:
        pairs = [(int(layer), int(head)) for layer, head in heads]
    except (TypeError, ValueError):
        raise ImportanceInputError(f"head set {i} is not a list of (layer, head) pairs: {str(heads)[:60]!r}") from None
    bad = [p for p in pairs if not (0 <= p[0] < n_layers and 0 <= p[1] < n_heads)]
    if bad:
        raise ImportanceInputError(f"head {bad[0][0]}:{bad[0][1]} in head set {i} is out of range (layers "
                                   f"0..{n_layers - 1}, heads 0..{n_heads - 1})")
    return tuple(sorted(set(pairs)))


def _check_orders(orders: dict, fractions, n_total: int) -> list[float]:
    if not orders:
        raise ImportanceInputError("orders is empty; give at least one named order of (layer, head) pairs")
    fr = [float(f) for f in fractions]
    if not fr or any(not 0.0 <= f <= 1.0 for f in fr):
        raise ImportanceInputError(f"fractions={list(fractions)!r}; give fractions of the heads in [0, 1]")
    need = max(n_removed(f, n_total) for f in fr)
    for name, order in orders.items():
        pairs = [tuple(p) for p in order]
        if len(set(pairs)) != len(pairs):
            raise ImportanceInputError(f"order {name!r} lists a head twice; an order lists distinct heads")
        if len(pairs) < need:
            raise ImportanceInputError(f"order {name!r} lists {len(pairs)} heads but fraction {max(fr)} removes "
                                       f"{need} of the model's {n_total}")
    return fr


def pruning_curves(hf, prompts, targets, orders: dict, fractions, *, reference_prompts=None, reference_mean=None,
                   positions: str = "last", candidates=None, batch_rows: int = 256, progress=None) -> pd.DataFrame:
    """One row per (order, fraction): ``order``, ``fraction``, ``n_removed``, ``loss`` (mean over rows of
    -log p(target)), ``loss_se`` (its standard error over rows) and, with ``candidates``, ``accuracy``. The
    first ``n_removed(fraction, L * H)`` heads of each order are mean-ablated together (``set_losses``).

    Cost: 2 forwards per row, then one last-token forward per row and distinct non-empty set (at most
    orders x fractions).
    """
    n_layers, n_heads, _ = model_dims(hf)
    fr = _check_orders(orders, fractions, n_layers * n_heads)
    keys = [(name, f, n_removed(f, n_layers * n_heads)) for name in orders for f in fr]
    sets = [list(orders[name])[:k] for name, _, k in keys]
    res = set_losses(hf, prompts, targets, sets, reference_prompts=reference_prompts, reference_mean=reference_mean,
                     positions=positions, candidates=candidates, batch_rows=batch_rows, progress=progress)
    n = res["loss"].shape[1]
    df = pd.DataFrame({"order": [k[0] for k in keys], "fraction": [k[1] for k in keys],
                       "n_removed": [k[2] for k in keys], "loss": res["loss"].mean(1),
                       "loss_se": res["loss"].std(1, ddof=1) / np.sqrt(n) if n > 1 else np.nan})
    if "correct" in res:
        df["accuracy"] = res["correct"].mean(1)
    return df
