"""Phase-04 CKA on two halves against direct computations: every matrix is cka_matrix of the variant's features on
that half, the chosen cell is the selection half's arg-max reported on the estimation half, and choosing and
reporting on different texts removes the winner's bias that choosing and reporting on the same texts has."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.geometry.cka import cka_matrix, match_layers, permutation_null_mean, permutation_test
from lib.geometry.grams import gram_stack
from lib.geometry.nuisance import nuisance_features
from lib.geometry.weighted_cka import weighted_cka
from lib.phases.alignment_cka import (HALVES, best_matches, cka_on_halves, correspondence_table, headline_kind,
                                      layer_features, variant_kinds)
from lib.phases.cross_model_alignment import alignment_split, common_sample, model_pairs
from lib.stats.bootstrap import group_bootstrap, group_codes, percentile_interval
from lib.stats.multitest import bh_adjust
from tests.phases.alignment_data import emotional, labels, model, rotated


@pytest.fixture(scope="module")
def run():
    lab = labels(160, 0)
    a = emotional("a", lab, 0, layers=3)
    data = common_sample({"a": a, "b": rotated("b", a, 1), "c": emotional("c", lab, 5, layers=2)}, None)
    pairs = model_pairs(["a", "b"], []).iloc[:0]
    pairs = pd.concat([pairs, pd.DataFrame({"model_a": ["a", "a"], "model_b": ["b", "c"], "pair": ["a vs b", "a vs c"],
                                            "role": "models", "control_pair": ""})], ignore_index=True)
    sel, est, groups, _ = alignment_split(data["a"].labels, 0)
    res = cka_on_halves(data, pairs, (sel, est), groups, ["linear", "debiased", "rbf"], n_boot=60, n_perm=39, seed=3)
    return data, pairs, (sel, est), groups, res


def test_variants_kinds_and_headline():
    assert ("length", "rbf") not in variant_kinds(["linear", "rbf"]) and ("raw", "rbf") in variant_kinds(["rbf"])
    assert len(variant_kinds(["linear", "debiased", "rbf"])) == 3 + 3 * 2
    assert headline_kind(["linear", "debiased"]) == "debiased" and headline_kind(["linear"]) == "linear"


@pytest.mark.parametrize("variant, kind", [("raw", "rbf"), ("length", "linear"), ("length+zscore", "debiased"),
                                           ("zscore", "debiased")])
def test_every_matrix_is_cka_of_the_variant_features_on_its_half(run, variant, kind):
    data, pairs, halves, _, res = run
    for half, rows in zip(HALVES, halves):
        feats = {m: [nuisance_features(x[rows], variant, d.labels["n_tokens"].to_numpy()[rows]) for x in d.xs]
                 for m, d in data.items()}
        for p in pairs.itertuples():
            got = res.cka[(res.cka["pair"] == p.pair) & (res.cka["variant"] == variant) & (res.cka["kind"] == kind)
                          & (res.cka["half"] == half)].pivot(index="layer_a", columns="layer_b", values="cka")
            np.testing.assert_allclose(got.to_numpy(), cka_matrix(feats[p.model_a], feats[p.model_b], kind), atol=1e-10)
    assert not res.cka[(res.cka["variant"] != "raw") & (res.cka["kind"] == "rbf")].size  # RBF only on raw features


def test_chosen_cell_heldout_value_interval_and_null_by_direct_computation(run):
    data, pairs, (sel, est), groups, res = run
    codes = group_codes(groups[est], len(est))
    weights = group_bootstrap(lambda w: w, codes, n_boot=60, seed=3, block=100)
    for r in res.heldout.itertuples():
        fa = {h: layer_features(data[r.model_a], rows, r.variant) for h, rows in (("s", sel), ("e", est))}
        fb = {h: layer_features(data[r.model_b], rows, r.variant) for h, rows in (("s", sel), ("e", est))}
        m_sel = cka_matrix(fa["s"], fb["s"], r.kind)
        i, j = np.unravel_index(np.argmax(m_sel), m_sel.shape)
        assert (r.layer_a, r.layer_b) == (data[r.model_a].layers[i], data[r.model_b].layers[j])
        assert r.cka_selection == pytest.approx(m_sel.max(), abs=1e-10)
        assert r.cka_heldout == pytest.approx(cka_matrix([fa["e"][i]], [fb["e"][j]], r.kind)[0, 0], abs=1e-10)
        grams = [gram_stack([f], r.kind, 0.8, "f") for f in (fa["e"][i], fb["e"][j])]
        assert r.chance == pytest.approx(permutation_null_mean(*grams)[0, 0], abs=1e-12)
        if r.kind == "debiased":  # the headline kind: an interval from group resamples of the estimation half
            xa, xb = (f - f.mean(0) for f in (fa["e"][i], fb["e"][j]))
            reps = weighted_cka(xa @ xa.T, xb @ xb.T, weights)[1]
            np.testing.assert_allclose(res.replicates[r.pair, r.variant, r.kind], reps, atol=1e-10)
            assert (r.ci_low, r.ci_high) == pytest.approx(tuple(percentile_interval(reps)), abs=1e-10)
            # (at CKA = 1 the bounds and the value differ in the last bits, in either order)
            assert r.n_boot == 60 and r.ci_low - 1e-12 <= r.cka_heldout <= r.ci_high + 1e-12
        else:
            assert np.isnan(r.ci_low) and r.n_boot == 0
        if r.kind == "linear":
            perm = permutation_test([fa["e"][i]], [fb["e"][j]], "linear", n_perm=39, seed=3)
            assert r.p_value == perm.p_value[0, 0] and r.null_q95 == pytest.approx(perm.null_q95[0, 0])
        else:
            assert np.isnan(r.p_value)
    has = res.heldout["p_value"].notna()
    np.testing.assert_allclose(res.heldout.loc[has, "p_adjusted"], bh_adjust(res.heldout.loc[has, "p_value"]))
    rot = res.heldout[res.heldout["pair"] == "a vs b"]  # b is a rotation of a: CKA 1 unless the basis matters
    assert (rot["layer_a"] == rot["layer_b"]).all()
    assert (rot.loc[rot["variant"].isin(["raw", "length"]), "cka_heldout"] > 0.999).all()
    assert (rot.loc[rot["variant"].str.contains("zscore"), "cka_heldout"] < 0.99).all()  # standardising is not


def test_layer_matching_compares_the_two_halves(run):
    data, _, (sel, est), _, res = run
    for r in res.matching.itertuples():
        fs, fe = (layer_features(data[r.model], rows, r.variant) for rows in (sel, est))
        assert r.accuracy == match_layers(cka_matrix(fs, fs, r.kind), cka_matrix(fe, fe, r.kind))[0]
    assert len(res.matching) == 3 * 9 and (res.matching["accuracy"] > 0.6).all()


def test_best_matches_and_correspondence_by_hand(run):
    data, _, _, _, res = run
    best = best_matches(res.cka, {m: len(d.layers) for m, d in data.items()})
    sub = res.cka[(res.cka["pair"] == "a vs c") & (res.cka["variant"] == "zscore") & (res.cka["kind"] == "linear")]
    s, e = (sub[sub["half"] == h].pivot(index="layer_a", columns="layer_b", values="cka").to_numpy() for h in HALVES)
    got = best[(best["pair"] == "a vs c") & (best["variant"] == "zscore") & (best["kind"] == "linear")]
    assert got["layer_b"].tolist() == s.argmax(1).tolist()
    assert got["cka_heldout"].tolist() == pytest.approx(e[np.arange(3), s.argmax(1)].tolist())
    assert got["same_pick"].tolist() == (s.argmax(1) == e.argmax(1)).tolist()
    assert got["depth_b"].tolist() == pytest.approx(((s.argmax(1) + 0.5) / 2).tolist())
    corr = correspondence_table(best)
    row = corr[(corr["pair"] == "a vs c") & (corr["variant"] == "zscore") & (corr["kind"] == "linear")].iloc[0]
    counts = np.bincount(s.argmax(1))
    assert row["modal_layer_b"] == counts.argmax() and row["modal_share"] == pytest.approx(counts.max() / 3)


def test_choosing_and_reporting_on_different_texts_removes_the_winners_bias():
    """Unrelated models with many layers: the best of 400 layer pairs looks related on the texts that chose it,
    and not on the others; reporting the chosen value on the same texts (the old procedure) would say it is."""
    lab = labels(160, 2)
    rng = np.random.default_rng(7)
    data = {m: model(m, lab, [rng.standard_normal((160, 2)) for _ in range(20)]) for m in ("u", "v")}
    pairs = model_pairs(["u", "v"], [])
    sel, est, groups, _ = alignment_split(lab, 0)
    r = cka_on_halves(data, pairs, (sel, est), groups, ["linear", "debiased"], n_boot=200).heldout
    r = r[(r["variant"] == "raw") & (r["kind"] == "debiased")].iloc[0]
    in_sample = cka_matrix(data["u"].xs, data["v"].xs, "debiased").max()  # chosen and reported on every text
    assert r.cka_selection > 0.08 and in_sample > 0.03
    assert abs(r.cka_heldout) < r.cka_selection / 4 and r.ci_low < 0 < r.ci_high < r.cka_selection


def test_a_length_layer_attracts_every_raw_match_and_not_the_corrected_ones():
    """Both models' layer 0 is their token count; their other layers carry a large token-count component and a
    latent shared layer by layer. Raw CKA matches every layer with layer 0; with the count regressed out the
    layers correspond one to one."""
    lab = labels(400, 1)
    rng = np.random.default_rng(5)
    h = np.log(lab["n_tokens"].to_numpy())[:, None]
    h = (h - h.mean()) / h.std()
    n, d = len(lab), 16
    z = [rng.standard_normal((n, 3)) for _ in range(4)]

    def planted(seed, private):
        r = np.random.default_rng(seed)
        return [8 * h @ r.standard_normal((1, d)) + 0.3 * r.standard_normal((n, d))] + [
            8 * h @ r.standard_normal((1, d)) + z[i] @ r.standard_normal((3, d)) + private * r.standard_normal((n, d))
            for i in range(1, 4)]

    data = {"a": model("a", lab, planted(1, 0.5)), "b": model("b", lab, planted(2, 2.0))}
    sel, est, groups, _ = alignment_split(lab, 0)
    res = cka_on_halves(data, model_pairs(["a", "b"], []), (sel, est), groups, ["linear", "debiased"], n_boot=50)
    best = best_matches(res.cka, {"a": 4, "b": 4})
    pick = lambda v: best[(best["variant"] == v) & (best["kind"] == "debiased")]["layer_b"].tolist()  # noqa: E731
    assert pick("raw") == [0, 0, 0, 0]
    assert pick("length")[1:] == pick("length+zscore")[1:] == [1, 2, 3]
    top = res.heldout[res.heldout["kind"] == "debiased"].set_index("variant")
    assert (top.loc["raw", "layer_a"], top.loc["raw", "layer_b"]) == (0, 0) and top.loc["raw", "cka_heldout"] > 0.99
    assert top.loc["length+zscore", "layer_a"] == top.loc["length+zscore", "layer_b"] > 0
    assert 0.3 < top.loc["length+zscore", "ci_low"] and top.loc["length+zscore", "ci_high"] < 0.9
