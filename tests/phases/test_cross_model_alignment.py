"""Phase-04 glue against direct computations on synthetic layer stacks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.phases.cross_model_alignment import aligned_subspace_angles, best_matches, cka_tables, paired_sample, procrustes_table
from lib.geometry.cka import cka_matrix, procrustes_distance
from lib.activations.layerwise import LayerData


def _model(name, seed, n=240, d=12, layers=3, rotate_from=None):
    rng = np.random.default_rng(seed)
    emotions = np.repeat(["gratitude", "anger", "apology", "neutral"], n // 4)
    labels = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)],
                           "emotion": emotions})
    if rotate_from is not None:  # same representation, rotated into a wider space, rows in another order
        q = np.linalg.qr(rng.normal(size=(d + 4, d + 4)))[0][:d]
        order = rng.permutation(n)
        xs = [x[order] @ q for x in rotate_from.xs]
        return LayerData(name, "hook_resid_post", "sentence_end", rotate_from.layers, xs,
                         rotate_from.labels.iloc[order].reset_index(drop=True))
    offsets = {e: rng.normal(size=d) * 3 for e in ("gratitude", "anger", "apology")}
    base = np.stack([offsets.get(e, np.zeros(d)) for e in emotions]) + rng.normal(size=(n, d))
    xs = [np.tanh(base * (k + 1) / 2) @ rng.normal(size=(d, d)) for k in range(layers)]
    return LayerData(name, "hook_resid_post", "sentence_end", list(range(layers)), xs, labels)


def test_cka_tables_equal_cka_matrix_and_pair_by_id():
    a = _model("a", 0)
    b = _model("b", 1, rotate_from=a)
    pa, pb = paired_sample(a, b, None)
    t = cka_tables(pa, pb, ["linear", "rbf"], n_perm=19, perm_kinds=("linear",))
    lin = t[t["kind"] == "linear"].pivot(index="layer_a", columns="layer_b", values="cka").to_numpy()
    assert np.allclose(lin, cka_matrix(pa.xs, pb.xs, "linear"))
    assert np.allclose(np.diag(lin), 1)  # rows were re-paired by id, so the rotation is invisible
    assert t.loc[t["kind"] == "rbf", "p_value"].isna().all()
    assert t.loc[t["kind"] == "linear", "p_value"].between(1 / 20, 1).all()
    best = best_matches(t, 3, 3)
    assert best[best["kind"] == "linear"]["layer_b"].tolist() == [0, 1, 2]
    assert best["depth_a"].tolist()[:3] == pytest.approx([0.5 / 3, 1.5 / 3, 2.5 / 3])


def test_procrustes_table_and_aligned_angles():
    a = _model("a", 0)
    b = _model("b", 2, rotate_from=a)
    pa, pb = paired_sample(a, b, None)
    proc = procrustes_table(pa, pb, [(0, 0), (0, 2)])
    assert proc["procrustes"].iloc[0] == pytest.approx(0, abs=1e-6)
    assert proc["procrustes"].iloc[1] == pytest.approx(procrustes_distance(pa.layer(0), pb.layer(2)))
    angles = aligned_subspace_angles(pa, pb, 1, 1, k=3)
    assert set(angles["subspace"]) == {"gratitude", "anger", "apology", "joint"}
    assert (angles["max_angle"] < 1e-3).all()  # a rotation carries every subspace onto itself
    unrelated = _model("c", 5)
    pa2, pc = paired_sample(a, unrelated, None)
    far = aligned_subspace_angles(pa2, pc, 1, 1, k=3)
    assert far["mean_angle"].mean() > angles["mean_angle"].mean() + 10


def test_paired_sample_is_stratified_and_deterministic():
    a = _model("a", 0)
    b = _model("b", 3, rotate_from=a)
    pa, pb = paired_sample(a, b, 100, seed=4)
    again, _ = paired_sample(a, b, 100, seed=4)
    assert len(pa.labels) == 100 and (pa.labels["emotion"].value_counts() == 25).all()
    assert pa.labels["id"].tolist() == pb.labels["id"].tolist() == again.labels["id"].tolist()
