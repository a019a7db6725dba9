"""Phase-04 glue against direct computations on synthetic layer stacks: pairs and their controls, one common
sample split by text group, Procrustes maps fitted on one half and read on the other, subspaces carried across
models, each pair beside its random-weights control, and the summary and findings."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.geometry.nuisance import nuisance_features
from lib.geometry.procrustes import MAX_DISTANCE, procrustes_align, procrustes_distance
from lib.geometry.subspaces import emotion_subspace, joint_subspace, principal_angles
from lib.phases.alignment_cka import cka_on_halves
from lib.phases.cross_model_alignment import (against_control, aligned_geometry, alignment_findings, alignment_split,
                                              alignment_summary, common_sample, covariance_null_angles,
                                              model_pairs)
from lib.stats.bootstrap import percentile_interval
from tests.phases.alignment_data import emotional, labels, rotated


def test_model_pairs_put_each_trained_pair_beside_its_random_weights_pair():
    p = model_pairs(["a", "b", "c"], ["random:a", "random:b"])
    assert p[["pair", "role", "control_pair"]].values.tolist() == [
        ["a vs b", "models", "random:a vs random:b"], ["a vs c", "models", ""], ["b vs c", "models", ""],
        ["a vs random:a", "own random weights", ""], ["b vs random:b", "own random weights", ""],
        ["random:a vs random:b", "random-weights control", ""]]
    assert model_pairs(["a"], ["random:a"])["role"].tolist() == ["own random weights"]


def test_common_sample_holds_the_same_texts_in_one_order_for_every_model():
    lab = labels(200, 0)
    a = emotional("a", lab, 0)
    b = rotated("b", a, 1)  # rows in another order
    c = emotional("c", lab.drop(index=range(0, 200, 10)).reset_index(drop=True), 2)  # lacks every 10th text
    got = common_sample({"a": a, "b": b, "c": c}, 100, seed=4)
    ids = got["a"].labels["id"].tolist()
    assert ids == got["b"].labels["id"].tolist() == got["c"].labels["id"].tolist()
    assert len(ids) == 100 and not set(ids) & {f"r{i}" for i in range(0, 200, 10)}
    assert got["a"].labels["emotion"].value_counts().to_dict() == {e: 25 for e in ("gratitude", "anger", "apology",
                                                                                   "neutral")}
    pos = a.labels.set_index("id").index.get_indexer(ids)  # b's rows are a's rows rotated: same text, same values
    np.testing.assert_allclose(got["a"].xs[1], a.xs[1][pos])
    again = common_sample({"a": a, "b": b, "c": c}, 100, seed=4)
    assert got["a"].labels["id"].tolist() == again["a"].labels["id"].tolist()


def test_split_keeps_near_identical_texts_in_one_half_and_records_it():
    lab = labels(160, 0)
    sel, est, groups, record = alignment_split(lab, seed=2)
    assert sorted(np.r_[sel, est].tolist()) == list(range(160)) and not set(sel) & set(est)
    assert not set(groups[sel]) & set(groups[est])
    assert len(set(groups)) == 160 - 160 // 8  # each repeated text joined the text before it
    assert record["sizes"] == {"selection": len(sel), "estimation": len(est)} and abs(len(sel) - len(est)) <= 8
    assert record["seed"] == 2 and "selection: layer pair" in record["rule"]
    assert lab.iloc[sel]["emotion"].value_counts().min() >= 16  # stratified by emotion


@pytest.fixture(scope="module")
def aligned():
    lab = labels(240, 3)
    a = emotional("a", lab, 0, layers=2)
    data = common_sample({"a": a, "b": rotated("b", a, 1), "c": emotional("c", lab, 5, layers=2)}, None)
    pairs = pd.DataFrame({"model_a": ["a", "a"], "model_b": ["b", "c"], "pair": ["a vs b", "a vs c"],
                          "role": ["models", "own random weights"], "control_pair": ["a vs c", ""]})
    halves = alignment_split(data["a"].labels, 0)
    res = cka_on_halves(data, pairs, halves[:2], halves[2], ["linear", "debiased"], n_boot=100, seed=1)
    return data, pairs, halves[:2], res


def test_procrustes_and_angles_use_the_selection_map_on_held_out_subspaces(aligned):
    data, pairs, (sel, est), res = aligned
    proc, angles = aligned_geometry(data, pairs, res.heldout, (sel, est), variant="length", kind="debiased", k=3,
                                    n_null=50, seed=0)
    for p in proc.itertuples():
        f = {m: {h: nuisance_features(data[m].layer(layer)[rows], "length",
                                      data[m].labels["n_tokens"].to_numpy()[rows])
                 for h, rows in (("s", sel), ("e", est))}
             for m, layer in ((p.model_a, p.layer_a), (p.model_b, p.layer_b))}
        xa, xb = f[p.model_a], f[p.model_b]
        rot = procrustes_align(xa["s"], xb["s"])
        ca, cb = ((x - x.mean(0)) / np.linalg.norm(x - x.mean(0)) for x in (xa["e"], xb["e"]))
        assert p.distance_heldout == pytest.approx(np.linalg.norm(ca @ rot - cb), abs=1e-10)  # rot: rows orthonormal
        assert p.distance_selection == pytest.approx(procrustes_distance(xa["s"], xb["s"]))
        assert p.distance_refit == pytest.approx(procrustes_distance(xa["e"], xb["e"]))
        lab = data[p.model_a].labels.iloc[est]
        for name, skind, k, fit in (
                ("anger", "within", 3, lambda x: emotion_subspace(x, lab, emotion="anger", k=3, kind="within").basis),
                ("joint", "within", 3, lambda x: joint_subspace(x, lab, k=3, kind="within").basis),
                ("anger", "between", 1, lambda x: emotion_subspace(x, lab, emotion="anger", kind="between").basis),
                ("joint", "between", 3, lambda x: joint_subspace(x, lab, k=3, kind="between").basis)):
            want = np.degrees(principal_angles(rot.T @ fit(xa["e"]), fit(xb["e"])))
            row = angles[(angles["pair"] == p.pair) & (angles["subspace"] == name)
                         & (angles["subspace_kind"] == skind)].iloc[0]
            assert row["k"] == k and row["mean_angle"] == pytest.approx(want.mean())
            assert row["max_angle"] == pytest.approx(want.max())
            null = covariance_null_angles(rot.T @ fit(xa["e"]), xb["e"], 50, 0)
            assert row["null_mean_angle"] == pytest.approx(null.mean())
            assert row["null_p05"] == pytest.approx(np.quantile(null, 0.05))
    assert len(angles) == 2 * 8
    rot_row, far_row = proc.set_index("pair").loc["a vs b"], proc.set_index("pair").loc["a vs c"]
    assert rot_row["distance_heldout"] < 1e-6 and rot_row["distance_selection"] < 1e-6  # b is a rotation of a
    assert far_row["distance_heldout"] > far_row["distance_selection"]  # a map fitted elsewhere does worse
    assert (proc["distance_selection"] <= MAX_DISTANCE).all()
    same, other = (angles[angles["pair"] == p] for p in ("a vs b", "a vs c"))
    assert (same["max_angle"] < 1e-3).all()  # a rotation carries every held-out subspace onto B's own
    assert (same["mean_angle"] < same["null_p05"]).all() and other["mean_angle"].mean() > 10


def test_covariance_null_sits_in_the_high_variance_directions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 10)) * np.r_[10.0, 10.0, np.full(8, 0.1)]  # two dominant directions
    top, bottom = np.eye(10)[:, :2], np.eye(10)[:, 5:7]
    assert covariance_null_angles(top, x, 30).mean() < 10  # random draws live where the variance is
    assert covariance_null_angles(bottom, x, 30).mean() > 80


def test_against_control_differences_come_from_paired_replicates(aligned):
    _, pairs, _, res = aligned
    out = against_control(res.heldout, pairs, res.replicates)
    row = out[(out["pair"] == "a vs b") & (out["variant"] == "raw") & (out["kind"] == "debiased")].iloc[0]
    ctrl = res.heldout[(res.heldout["pair"] == "a vs c") & (res.heldout["variant"] == "raw")
                       & (res.heldout["kind"] == "debiased")].iloc[0]
    assert row["control_pair"] == "a vs c" and row["control_cka"] == ctrl["cka_heldout"]
    assert row["diff"] == pytest.approx(row["cka_heldout"] - ctrl["cka_heldout"])
    diffs = res.replicates["a vs b", "raw", "debiased"] - res.replicates["a vs c", "raw", "debiased"]
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx(tuple(percentile_interval(diffs)))
    assert row["diff_ci_low"] > 0  # the rotation beats the unrelated model
    assert out[out["pair"] == "a vs c"]["control_cka"].isna().all() and len(out) == len(res.heldout)


def test_summary_and_findings_quote_held_out_values_beside_the_control(aligned):
    data, pairs, halves, res = aligned
    heldout = against_control(res.heldout, pairs, res.replicates)
    _, angles = aligned_geometry(data, pairs, heldout, halves, variant="length", kind="debiased", k=3, n_null=20)
    top = heldout.set_index(["pair", "variant", "kind"]).loc[("a vs b", "length", "debiased")]
    ctrl = heldout.set_index(["pair", "variant", "kind"]).loc[("a vs c", "length", "debiased")]
    summary = alignment_summary(heldout, pairs, variant="length", kind="debiased")
    assert summary == (f"a L{top['layer_a']} ~ b L{top['layer_b']}: held-out length debiased CKA "
                       f"{top['cka_heldout']:.3f} [{top['ci_low']:.3f}, {top['ci_high']:.3f}] (random-weights pair "
                       f"{ctrl['cka_heldout']:.3f} [{ctrl['ci_low']:.3f}, {ctrl['ci_high']:.3f}])")
    found = alignment_findings(heldout, angles, pairs, variant="length", kind="debiased", cka_figure="F1",
                               angles_figure="F2")
    assert [f["question"] for f in found] == ["Which layers correspond across models?",
                                              "Do emotion subspaces align after Procrustes?"]
    assert f"{top['cka_heldout']:.3f} [{top['ci_low']:.3f}, {top['ci_high']:.3f}]" in found[0]["finding"]
    assert f"random-weights pair (a vs c), same procedure: {ctrl['cka_heldout']:.3f}" in found[0]["control"]
    assert found[0]["figure"] == "F1" and found[1]["figure"] == "F2" and "covariance" in found[1]["control"]
    with pytest.raises(ValueError, match="no chosen layers of zscore debiased CKA for a vs b"):
        aligned_geometry(data, pairs, heldout[heldout["variant"] == "raw"], halves, variant="zscore", kind="debiased")
