"""Phase-04 CKA on two halves of the texts: every layer pair of every model pair, for each nuisance variant
(``lib.geometry.nuisance``) and CKA kind, on the selection half (which chooses) and the estimation half
(which reports); the chosen layer pair's held-out CKA with a bootstrap interval over text groups; and the
layer-matching check from the same Grams.

Every model holds the same texts in the same order (``common_sample``), so each model's Gram matrices of a
half are computed once per variant and kind, and every model pair (and the model against itself, for layer
matching) is one matrix product of two Gram stacks. RBF CKA runs on the raw variant only.

>>> variant_kinds(["linear", "debiased", "rbf"])[:4]
[('raw', 'linear'), ('raw', 'debiased'), ('raw', 'rbf'), ('length', 'linear')]
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lib.activations.layerwise import LayerData
from lib.geometry.cka import match_layers, permutation_from_grams, permutation_null_mean
from lib.geometry.grams import gram_stack
from lib.geometry.nuisance import VARIANTS, nuisance_features
from lib.geometry.weighted_cka import weighted_cka
from lib.stats.bootstrap import group_bootstrap, group_codes, percentile_interval
from lib.stats.multitest import adjust_family

__all__ = ["HEADLINE_VARIANT", "HALVES", "variant_kinds", "headline_kind", "layer_features", "HalvesCKA",
           "cka_on_halves", "best_matches", "correspondence_table"]

HEADLINE_VARIANT = "length+zscore"  # the variant the findings quote: both nuisances handled
HALVES = ("selection", "estimation")
BOOT_KINDS = ("linear", "debiased")  # kinds with a weighted (bootstrap) form, in weighted_cka's order


def variant_kinds(kinds) -> list[tuple[str, str]]:
    """(variant, kind) pairs computed: every kind on the raw variant, every kind but RBF on the corrected ones."""
    return [(v, k) for v in VARIANTS for k in kinds if v == "raw" or k != "rbf"]


def headline_kind(kinds) -> str:
    """The kind the findings quote: debiased CKA when computed (near 0 for unrelated rows at any width), else
    linear.

    >>> headline_kind(["linear", "rbf"]), headline_kind(["linear", "debiased"])
    ('linear', 'debiased')
    """
    return "debiased" if "debiased" in kinds else "linear"


def layer_features(ld: LayerData, rows, variant: str) -> list[np.ndarray]:
    """Every layer of ``ld`` on ``rows`` as ``variant`` features (float64), with the model's own token counts."""
    rows = np.asarray(rows)
    n_tokens = None
    if variant.startswith("length"):
        if "n_tokens" not in ld.labels.columns:
            raise ValueError(f"variant {variant!r} needs the token count of each row; the labels of {ld.model} have "
                             f"no 'n_tokens' column (columns: {list(ld.labels.columns)})")
        n_tokens = ld.labels["n_tokens"].to_numpy()[rows]
    return [nuisance_features(x[rows], variant, n_tokens) for x in ld.xs]


@dataclass(frozen=True)
class HalvesCKA:
    """cka: every layer pair (pair, model_a, model_b, variant, kind, half, layer_a, layer_b, cka); matching:
    layer-matching accuracy (model, variant, kind, accuracy); heldout: the chosen layer pair of each (pair,
    variant, kind) with its selection and held-out CKA, chance level, bootstrap interval, optional permutation
    p-value; replicates:
    {(pair, variant, kind): [n_boot]} bootstrap replicates (the same resamples for every pair); timings."""
    cka: pd.DataFrame
    matching: pd.DataFrame
    heldout: pd.DataFrame
    replicates: dict
    timings: pd.DataFrame


def _long(m: np.ndarray, la, lb, **cols) -> pd.DataFrame:
    ia, ib = np.meshgrid(np.arange(len(la)), np.arange(len(lb)), indexing="ij")
    return pd.DataFrame({**cols, "layer_a": np.asarray(la)[ia.ravel()], "layer_b": np.asarray(lb)[ib.ravel()],
                         "cka": m.ravel()})


def cka_on_halves(data: dict, pairs: pd.DataFrame, halves, groups, kinds, *, n_boot: int = 1000, n_perm: int = 0,
                  seed: int = 0, sigma_frac: float = 0.8, level: float = 0.95) -> HalvesCKA:
    """CKA of every layer pair of every pair in ``pairs`` (columns pair, model_a, model_b) on both halves
    (selection indices, estimation indices) of the rows every model of ``data`` {model: LayerData} holds in the
    same order, for each ``variant_kinds(kinds)``.

    The chosen pair of each (pair, variant, kind) is the arg-max of the selection half's matrix; it is reported
    with its estimation-half CKA (cka_heldout), the exact mean of the rows-unpaired permutation null there
    (chance: linear CKA's chance level for these spectra, not 0; ``permutation_null_mean``) and, for the
    ``headline_kind``, a percentile interval from ``n_boot`` resamples of the estimation half's text ``groups``
    ([n] over all rows; ``weighted_cka``; seed ``seed`` for every pair, so two pairs' replicates are paired). With
    ``n_perm`` > 0 the chosen linear cells also get ``n_perm`` permutations (null_q95, p_value), BH-adjusted over
    the table (p_adjusted): a null that any two models of the same texts reject, so not a headline.
    Layer matching compares each model's self-similarity on the selection half with that on the estimation half.
    """
    sel, est = (np.asarray(h) for h in halves)
    codes = group_codes(np.asarray(groups)[est], len(est))
    plan, boot_kind = variant_kinds(kinds), headline_kind(kinds)
    parts, matching, timings, cells, boot = [], [], [], [], {}
    for variant in VARIANTS:
        chosen, picked, self_sel = {}, {}, {}
        for half, rows in zip(HALVES, (sel, est)):
            for kind in [k for v, k in plan if v == variant]:
                t0 = time.perf_counter()
                stacks = {m: gram_stack(layer_features(ld, rows, variant), kind, sigma_frac, m)
                          for m, ld in data.items()}
                for m, ld in data.items():
                    self_m = stacks[m] @ stacks[m].T
                    if half == "selection":
                        self_sel[m, kind] = self_m
                    elif len(ld.layers) >= 2:
                        matching.append({"model": m, "variant": variant, "kind": kind,
                                         "accuracy": match_layers(self_sel[m, kind], self_m)[0]})
                for p in pairs.itertuples():
                    la, lb = data[p.model_a].layers, data[p.model_b].layers
                    ga, gb = stacks[p.model_a], stacks[p.model_b]
                    m = ga @ gb.T
                    parts.append(_long(m, la, lb, pair=p.pair, model_a=p.model_a, model_b=p.model_b,
                                       variant=variant, kind=kind, half=half))
                    if half == "selection":
                        chosen[p.pair, kind] = np.unravel_index(int(np.argmax(m)), m.shape)
                        picked[p.pair, kind] = float(m.max())
                        continue
                    i, j = chosen[p.pair, kind]
                    cell = {"pair": p.pair, "model_a": p.model_a, "model_b": p.model_b, "variant": variant,
                            "kind": kind, "layer_a": la[i], "layer_b": lb[j], "cka_selection": picked[p.pair, kind],
                            "cka_heldout": float(m[i, j]), "chance": float(permutation_null_mean(ga[i], gb[j])[0, 0]),
                            "n_selection": len(sel), "n_estimation": len(est)}
                    if kind == boot_kind:
                        reps = _replicates(ga[i], gb[j], kind, codes, n_boot, seed)
                        boot[p.pair, variant, kind] = reps
                        cell["ci_low"], cell["ci_high"] = (float(v) for v in percentile_interval(reps, level))
                        cell["n_boot"] = n_boot
                    if kind == "linear" and n_perm > 0:
                        res = permutation_from_grams(ga[i:i + 1], gb[j:j + 1], n_perm=n_perm, seed=seed)
                        cell.update(null_q95=float(res.null_q95[0, 0]), p_value=float(res.p_value[0, 0]))
                    cells.append(cell)
                timings.append({"variant": variant, "kind": kind, "half": half, "texts": len(rows),
                                "gram_matrices": sum(len(ld.layers) for ld in data.values()),
                                "seconds": round(time.perf_counter() - t0, 2)})
                del stacks
    heldout = pd.DataFrame(cells)
    for col in ("ci_low", "ci_high", "n_boot", "null_q95", "p_value"):
        heldout[col] = heldout[col] if col in heldout else np.nan
    heldout["n_boot"] = heldout["n_boot"].fillna(0).astype(int)
    return HalvesCKA(pd.concat(parts, ignore_index=True), pd.DataFrame(matching), adjust_family(heldout), boot,
                     pd.DataFrame(timings))


def _replicates(gram_a: np.ndarray, gram_b: np.ndarray, kind: str, codes, n_boot: int, seed: int) -> np.ndarray:
    """Group-bootstrap replicates [n_boot] of ``kind`` CKA of one layer pair from its flattened Grams [n*n]."""
    n = len(codes)
    k, el = gram_a.reshape(n, n), gram_b.reshape(n, n)
    column = BOOT_KINDS.index(kind)
    return group_bootstrap(lambda w: weighted_cka(k, el, w)[column], codes, n_boot=n_boot, seed=seed, block=100)


def best_matches(cka: pd.DataFrame, n_layers: dict) -> pd.DataFrame:
    """For each pair, variant, kind and layer of model A: the layer of B with the highest selection-half CKA
    (layer_b, cka_selection), its estimation-half CKA (cka_heldout), the estimation half's own pick
    (layer_b_estimation, same_pick) and both layers' relative depths ((layer + 0.5) / n_layers[model]).

    >>> t = pd.DataFrame({"pair": "a vs b", "model_a": "a", "model_b": "b", "variant": "raw", "kind": "linear",
    ...                   "half": np.repeat(["selection", "estimation"], 4), "layer_a": [0, 0, 1, 1] * 2,
    ...                   "layer_b": [0, 1] * 4, "cka": [.9, .2, .3, .8, .7, .1, .6, .5]})
    >>> best_matches(t, {"a": 2, "b": 2})[["layer_b", "cka_heldout", "layer_b_estimation"]].values.tolist()
    [[0.0, 0.7, 0.0], [1.0, 0.5, 0.0]]
    """
    keys = ["pair", "model_a", "model_b", "variant", "kind", "layer_a"]
    by_half = {h: cka[cka["half"] == h] for h in HALVES}
    pick = lambda t: t.loc[t.groupby(keys, sort=False)["cka"].idxmax(), keys + ["layer_b", "cka"]]  # noqa: E731
    best = pick(by_half["selection"]).rename(columns={"cka": "cka_selection"})
    best = best.merge(by_half["estimation"][keys + ["layer_b", "cka"]].rename(columns={"cka": "cka_heldout"}),
                      on=keys + ["layer_b"], how="left")
    own = pick(by_half["estimation"]).rename(columns={"layer_b": "layer_b_estimation"}).drop(columns="cka")
    best = best.merge(own, on=keys, how="left")
    best["same_pick"] = best["layer_b"] == best["layer_b_estimation"]
    best["depth_a"] = (best["layer_a"] + 0.5) / best["model_a"].map(n_layers)
    best["depth_b"] = (best["layer_b"] + 0.5) / best["model_b"].map(n_layers)
    return best.reset_index(drop=True)


def correspondence_table(best: pd.DataFrame) -> pd.DataFrame:
    """Per pair, variant and kind: the layer of B that is most often the best match of A's layers (modal_layer_b)
    and the share of A's layers it matches (modal_share: near 1 means one layer of B matches everything, the
    sign of a nuisance), and the share of A's layers whose pick the estimation half repeats (replicated).

    >>> b = pd.DataFrame({"pair": "p", "variant": "raw", "kind": "linear", "layer_a": [0, 1, 2],
    ...                   "layer_b": [0, 0, 2], "same_pick": [True, False, True]})
    >>> correspondence_table(b)[["modal_layer_b", "modal_share", "replicated"]].round(3).values.tolist()
    [[0.0, 0.667, 0.667]]
    """
    g = best.groupby(["pair", "variant", "kind"], sort=False)
    out = g["layer_b"].agg(modal_layer_b=lambda s: int(s.value_counts().index[0]),
                           modal_share=lambda s: s.value_counts().iloc[0] / len(s), layers_a="size")
    out["replicated"] = g["same_pick"].mean()
    return out.reset_index()
