"""Phase-04 glue against direct computations on synthetic layer stacks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.activations.layerwise import LayerData
from lib.geometry.cka import cka_matrix, layer_matching_accuracy
from lib.geometry.procrustes import procrustes_distance
from lib.phases.cross_model_alignment import (aligned_angles_by_pair, aligned_subspace_angles, alignment_summary,
                                              best_matches, best_matches_by_pair, best_vs_null, cka_by_pair,
                                              cka_tables, layer_matching_table, paired_sample, procrustes_by_pair,
                                              procrustes_table, top_match)


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


# --- the notebook's per-pair glue -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pairs():
    a, c = _model("a", 0, layers=2), _model("c", 5, layers=3)
    b = _model("b", 1, rotate_from=a)
    data = {"a": a, "b": b, "c": c}
    pairs = [("a", "b"), ("a", "c")]
    return data, pairs, {(x, y): paired_sample(data[x], data[y], 120, 0) for x, y in pairs}


def test_cka_and_best_matches_by_pair_by_hand(pairs):
    data, pair_list, paired = pairs
    cka, timings = cka_by_pair(paired, ["linear", "rbf"], n_perm=9, seed=2)
    assert timings["pair"].tolist() == ["a vs b", "a vs c"] and timings["layer_pairs"].tolist() == [4, 6]
    assert (timings["texts"] == 120).all()
    for (x, y), (px_, py_) in paired.items():
        sub = cka[(cka["model_a"] == x) & (cka["model_b"] == y)]
        want = cka_tables(px_, py_, ["linear", "rbf"], n_perm=9, seed=2)
        pd.testing.assert_frame_equal(sub.drop(columns=["model_a", "model_b", "n_texts"]).reset_index(drop=True), want)
    best = best_matches_by_pair(cka, {m: len(d.layers) for m, d in data.items()}, pair_list)
    for (x, y), (px_, py_) in paired.items():
        m = cka_matrix(px_.xs, py_.xs, "rbf")  # argmax over model y's layers, by numpy
        got = best[(best["pair"] == f"{x} vs {y}") & (best["kind"] == "rbf")]
        assert got["layer_b"].tolist() == np.argmax(m, axis=1).tolist()
        assert np.allclose(got["cka"], m.max(axis=1))
        assert got["depth_b"].tolist() == pytest.approx(((np.argmax(m, axis=1) + 0.5) / len(py_.layers)).tolist())
    top = top_match(best, "a", "c", "rbf")
    sub = best[(best["pair"] == "a vs c") & (best["kind"] == "rbf")]
    assert top["cka"] == sub["cka"].max() and top["layer_a"] == sub["layer_a"].iloc[int(np.argmax(sub["cka"]))]
    with pytest.raises(ValueError, match="no best matches of kind 'debiased'"):
        top_match(best, "a", "c", "debiased")
    nulls = best_vs_null(cka, best, ("linear",))
    assert set(nulls["kind"]) == {"linear"} and set(nulls["variable"]) == {"cka", "null_mean", "null_q95"}
    for _, r in best[best["kind"] == "linear"].iterrows():
        cell = cka[(cka["model_a"] == r["model_a"]) & (cka["model_b"] == r["model_b"]) & (cka["kind"] == "linear")
                   & (cka["layer_a"] == r["layer_a"]) & (cka["layer_b"] == r["layer_b"])].iloc[0]
        got = nulls[(nulls["pair"] == r["pair"]) & (nulls["layer_a"] == r["layer_a"])].set_index("variable")["value"]
        assert got.to_dict() == {"cka": cell["cka"], "null_mean": cell["null_mean"], "null_q95": cell["null_q95"]}
    summary = alignment_summary(best, pair_list, ("linear",))
    first = top_match(best, "a", "b", "linear")
    assert summary.split("; ")[0] == (f"a L{int(first['layer_a'])} ~ b L{int(first['layer_b'])}: linear CKA "
                                      f"{first['cka']:.3f} (p {first['p_value']:.3g})")


def test_matching_procrustes_and_angles_by_pair_equal_direct_calls(pairs):
    data, pair_list, paired = pairs
    matching = layer_matching_table({"a": data["a"], "c": data["c"]}, ["linear", "debiased"], n_texts=100, seed=1)
    assert matching[["model", "kind"]].values.tolist() == [["a", "linear"], ["a", "debiased"], ["c", "linear"],
                                                             ["c", "debiased"]]
    half = paired_sample(data["c"], data["c"], 100, 1)[0]
    assert matching["accuracy"].iloc[3] == layer_matching_accuracy(half.xs, "debiased", 1)[0]
    proc = procrustes_by_pair(paired)
    assert len(proc) == 4 + 6
    assert proc[["model_a", "model_b"]].drop_duplicates().values.tolist() == [list(p) for p in pair_list]
    pa, pc = paired["a", "c"]
    row = proc[(proc["model_b"] == "c") & (proc["layer_a"] == 1) & (proc["layer_b"] == 2)]["procrustes"].item()
    assert row == procrustes_distance(pa.layer(1), pc.layer(2))
    cka, _ = cka_by_pair(paired, ["linear"], n_perm=0)
    best = best_matches_by_pair(cka, {m: len(d.layers) for m, d in data.items()}, pair_list)
    angles = aligned_angles_by_pair(paired, best, k=2, seed=0)
    top = top_match(best, "a", "c", "linear")
    want = aligned_subspace_angles(pa, pc, int(top["layer_a"]), int(top["layer_b"]), k=2, seed=0)
    got = angles[angles["model_b"] == "c"]
    pd.testing.assert_frame_equal(got[want.columns].reset_index(drop=True), want)
    assert (got["layer_a"] == int(top["layer_a"])).all() and (got["layer_b"] == int(top["layer_b"])).all()

