"""Phase-04 helpers: compare two models layer by layer on the same texts (CKA with permutation
nulls, best-matching layers, Procrustes distances, emotion subspaces after alignment).

>>> t = pd.DataFrame({"kind": "linear", "layer_a": [0, 0, 1, 1], "layer_b": [0, 1, 0, 1],
...                   "cka": [0.9, 0.2, 0.3, 0.8], "p_value": 0.01})
>>> best_matches(t, 2, 2)["layer_b"].tolist()
[0, 1]
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from lib.emotions import TARGET_EMOTIONS
from lib.activations.layerwise import LayerData, paired_layers, stratified_sample
from lib.geometry.cka import cka_matrix, layer_matching_accuracy, permutation_test
from lib.geometry.procrustes import procrustes_align, procrustes_distance
from lib.geometry.subspaces import emotion_subspace, joint_subspace, principal_angles, random_subspace_angles

__all__ = ["paired_sample", "cka_tables", "best_matches", "procrustes_table", "aligned_subspace_angles",
           "cka_by_pair", "best_matches_by_pair", "best_vs_null", "top_match", "layer_matching_table",
           "procrustes_by_pair", "aligned_angles_by_pair", "alignment_summary"]


def paired_sample(a: LayerData, b: LayerData, n_texts: int | None, seed: int = 0) -> tuple[LayerData, LayerData]:
    """The texts both models hold, in the same order, stratified down to ``n_texts`` (None: all)."""
    pa, pb = paired_layers(a, b)
    idx = stratified_sample(pa.labels, n_texts, seed)
    return pa.subset(idx), pb.subset(idx)


def cka_tables(a: LayerData, b: LayerData, kinds=("linear", "debiased", "rbf"), *, n_perm: int = 200,
               perm_kinds=("linear", "debiased"), seed: int = 0) -> pd.DataFrame:
    """Long table of every layer pair and CKA kind: layer_a, layer_b, kind, cka, and for
    ``perm_kinds`` the permutation null's mean, 95th percentile and p-value (``n_perm`` permutations)."""
    rows = []
    for kind in kinds:
        if kind in perm_kinds and n_perm > 0:
            res = permutation_test(a.xs, b.xs, kind, n_perm=n_perm, seed=seed)
            obs, p = res.observed, res.p_value
            null_mean, null_q95 = res.null.mean(0), np.quantile(res.null, 0.95, axis=0)
        else:
            obs = cka_matrix(a.xs, b.xs, kind)
            p = null_mean = null_q95 = np.full(obs.shape, np.nan)
        for i, la in enumerate(a.layers):
            for j, lb in enumerate(b.layers):
                rows.append({"layer_a": la, "layer_b": lb, "kind": kind, "cka": float(obs[i, j]),
                             "null_mean": float(null_mean[i, j]), "null_q95": float(null_q95[i, j]),
                             "p_value": float(p[i, j])})
    return pd.DataFrame(rows)


def best_matches(table: pd.DataFrame, n_a: int, n_b: int) -> pd.DataFrame:
    """For each kind and layer of model A, the layer of model B with the highest CKA, with both
    layers' relative depths ((layer + 0.5) / n_layers)."""
    idx = table.groupby(["kind", "layer_a"])["cka"].idxmax()
    best = table.loc[idx, ["kind", "layer_a", "layer_b", "cka", "p_value"]].reset_index(drop=True)
    best["depth_a"] = (best["layer_a"] + 0.5) / n_a
    best["depth_b"] = (best["layer_b"] + 0.5) / n_b
    return best


def procrustes_table(a: LayerData, b: LayerData, pairs=None) -> pd.DataFrame:
    """Orthogonal Procrustes distance (0 = same up to rotation, 2 = maximal) for layer pairs
    (default: every pair)."""
    pairs = pairs if pairs is not None else [(la, lb) for la in a.layers for lb in b.layers]
    return pd.DataFrame([{"layer_a": la, "layer_b": lb, "procrustes": procrustes_distance(a.layer(la), b.layer(lb))}
                         for la, lb in pairs])


def aligned_subspace_angles(a: LayerData, b: LayerData, layer_a: int, layer_b: int, *, k: int = 4,
                            n_null: int = 200, seed: int = 0) -> pd.DataFrame:
    """Principal angles (degrees) between each emotion subspace (and the joint one), fit in model B,
    and the same subspace fit in model A and carried into B's space by the orthogonal Procrustes map
    from A's layer to B's layer; with the mean angle between random k-dim subspaces of B's width.

    Both models see the same rows (pair them first). k dimensions for every subspace, so angles
    compare like with like.
    """
    xa, xb = a.layer(layer_a), b.layer(layer_b)
    rot = procrustes_align(xa, xb)  # [d_a, d_b]: centred xa @ rot ~ centred xb
    null = float(np.degrees(random_subspace_angles(xb.shape[1], k, k, n_null, seed)).mean())
    rows = []
    for name in (*TARGET_EMOTIONS, "joint"):
        fit = (lambda x, lab: joint_subspace(x, lab, k=k)) if name == "joint" else (
            lambda x, lab, e=name: emotion_subspace(x, lab, e, k=k))
        basis_a, basis_b = fit(xa, a.labels).basis, fit(xb, b.labels).basis
        angles = np.degrees(principal_angles(rot.T @ basis_a, basis_b))
        rows.append({"subspace": name, "k": k, "mean_angle": float(angles.mean()), "min_angle": float(angles.min()),
                     "max_angle": float(angles.max()), "null_mean_angle": null})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------ every model pair at once, for the notebook
def cka_by_pair(paired: dict, kinds, *, n_perm: int = 200, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``cka_tables`` for every model pair of ``paired`` {(a, b): (LayerData, LayerData)} (same texts), with
    model_a, model_b and n_texts added; and a table of timings (pair, texts, layer_pairs, seconds)."""
    tables, timings = [], []
    for (a, b), (pa, pb) in paired.items():
        t0 = time.perf_counter()
        t = cka_tables(pa, pb, kinds, n_perm=n_perm, seed=seed)
        timings.append({"pair": f"{a} vs {b}", "texts": len(pa.labels), "layer_pairs": len(pa.layers) * len(pb.layers),
                        "seconds": round(time.perf_counter() - t0, 1)})
        tables.append(t.assign(model_a=a, model_b=b, n_texts=len(pa.labels)))
    return pd.concat(tables, ignore_index=True), pd.DataFrame(timings)


def best_matches_by_pair(cka: pd.DataFrame, n_layers: dict, pairs) -> pd.DataFrame:
    """``best_matches`` of each model pair (a, b) in ``pairs`` from the ``cka_by_pair`` table, with model_a,
    model_b and pair ("a vs b"); ``n_layers`` {model: layer count} gives the relative depths."""
    return pd.concat([best_matches(cka[(cka["model_a"] == a) & (cka["model_b"] == b)], n_layers[a], n_layers[b])
                      .assign(model_a=a, model_b=b, pair=f"{a} vs {b}") for a, b in pairs], ignore_index=True)


def best_vs_null(cka: pd.DataFrame, best: pd.DataFrame, kinds=("linear", "debiased")) -> pd.DataFrame:
    """Long table (pair, kind, layer_a, variable in cka / null_mean / null_q95, value) of each best-matching
    layer pair's CKA beside its permutation null, for the ``kinds`` that have one."""
    nulls = cka.merge(best[["model_a", "model_b", "pair", "kind", "layer_a", "layer_b"]])
    return nulls[nulls["kind"].isin(list(kinds))].melt(
        id_vars=["pair", "kind", "layer_a"], value_vars=["cka", "null_mean", "null_q95"])


def top_match(best: pd.DataFrame, a: str, b: str, kind: str = "linear") -> pd.Series:
    """The row of ``best`` (``best_matches_by_pair``) with the highest CKA of ``kind`` for the pair (a, b)."""
    sub = best[(best["model_a"] == a) & (best["model_b"] == b) & (best["kind"] == kind)]
    if sub.empty:
        raise ValueError(f"no best matches of kind {kind!r} for {a} vs {b}; pairs: "
                         f"{sorted(set(zip(best['model_a'], best['model_b'])))}, kinds: {sorted(set(best['kind']))}")
    return sub.loc[sub["cka"].idxmax()]


def layer_matching_table(data: dict, kinds, *, n_texts: int | None, seed: int = 0) -> pd.DataFrame:
    """``layer_matching_accuracy`` of each model in ``data`` {model: LayerData} against itself, per kind, on up
    to ``n_texts`` texts stratified by emotion (``paired_sample``): columns model, kind, accuracy."""
    return pd.DataFrame([{"model": m, "kind": k, "accuracy": layer_matching_accuracy(
        paired_sample(ld, ld, n_texts, seed)[0].xs, k, seed)[0]} for m, ld in data.items() for k in kinds])


def procrustes_by_pair(paired: dict) -> pd.DataFrame:
    """``procrustes_table`` of every layer pair of every model pair in ``paired``, with model_a and model_b."""
    return pd.concat([procrustes_table(pa, pb).assign(model_a=a, model_b=b) for (a, b), (pa, pb) in paired.items()],
                     ignore_index=True)


def aligned_angles_by_pair(paired: dict, best: pd.DataFrame, *, k: int = 4, seed: int = 0) -> pd.DataFrame:
    """``aligned_subspace_angles`` of every model pair at its ``top_match`` linear-CKA layers, with model_a,
    model_b, layer_a and layer_b."""
    parts = []
    for (a, b), (pa, pb) in paired.items():
        top = top_match(best, a, b, "linear")
        la, lb = int(top["layer_a"]), int(top["layer_b"])
        parts.append(aligned_subspace_angles(pa, pb, la, lb, k=k, seed=seed).assign(model_a=a, model_b=b, layer_a=la,
                                                                                    layer_b=lb))
    return pd.concat(parts, ignore_index=True)


def alignment_summary(best: pd.DataFrame, pairs, kinds=("linear", "debiased")) -> str:
    """The phase's one-line summary: each pair's ``top_match`` per kind, "a La ~ b Lb: kind CKA c (p p)".

    >>> best = pd.DataFrame({"model_a": "a", "model_b": "b", "kind": "linear", "layer_a": [0, 1], "layer_b": [2, 3],
    ...                      "cka": [0.5, 0.75], "p_value": 0.01})
    >>> alignment_summary(best, [("a", "b")], kinds=("linear",))
    'a L1 ~ b L3: linear CKA 0.750 (p 0.01)'
    """
    lines = []
    for a, b in pairs:
        for kind in kinds:
            top = top_match(best, a, b, kind)
            lines.append(f"{a} L{int(top['layer_a'])} ~ {b} L{int(top['layer_b'])}: {kind} CKA {top['cka']:.3f} "
                         f"(p {top['p_value']:.3g})")
    return "; ".join(lines)

