"""Phase-04 helpers: compare two models layer by layer on the same texts (CKA with permutation
nulls, best-matching layers, Procrustes distances, emotion subspaces after alignment).

>>> t = pd.DataFrame({"kind": "linear", "layer_a": [0, 0, 1, 1], "layer_b": [0, 1, 0, 1],
...                   "cka": [0.9, 0.2, 0.3, 0.8], "p_value": 0.01})
>>> best_matches(t, 2, 2)["layer_b"].tolist()
[0, 1]
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.emotions import TARGET_EMOTIONS
from lib.geometry.cka import cka_matrix, permutation_test, procrustes_align, procrustes_distance
from lib.geometry.directions import emotion_subspace, joint_subspace, random_subspace_angles, subspace_angles
from lib.activations.layerwise import LayerData, paired_layers, stratified_sample

__all__ = ["paired_sample", "cka_tables", "best_matches", "procrustes_table",
           "aligned_subspace_angles"]


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
        angles = np.degrees(subspace_angles(rot.T @ basis_a, basis_b))
        rows.append({"subspace": name, "k": k, "mean_angle": float(angles.mean()), "min_angle": float(angles.min()),
                     "max_angle": float(angles.max()), "null_mean_angle": null})
    return pd.DataFrame(rows)
