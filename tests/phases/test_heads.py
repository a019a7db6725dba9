"""Phase-05 glue against direct computations: heads ranked on the selection half and measured on the
evaluation half (a planted head keeps its effect, a noise winner regresses), the readout fitted on rows
disjoint from the prompts, the chosen head set, the BH family, the check against phase 03's directions,
and every table the notebook displays."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from lib.activations.names import act_name
from lib.activations.runs import obtain_stores
from lib.interventions.effects import compare_with_random, random_head_sets, set_metrics
from lib.interventions.prompts import Prompts, PromptSplit
from lib.interventions.readout import Readout, class_index, readout_metrics
from lib.interventions.sweep import clean_state, position_mean_z, sweep_fast, sweep_frame
from lib.models.loading import load_model
from lib.phases.heads import (HeadsConfig, HeadsRun, ablation_ranking, analyse_models, head_set_effects,
                              prompt_disjoint_rows)
from lib.phases.heads_tables import (SAVED_TABLES, attribution_panels, direction_agreement, error_bars, findings,
                                     generation_band_table, generation_examples, generation_table, head_set_table,
                                     probe_sweeps, prompt_counts, save_tables, scaled_screening, spearman_pivot,
                                     summary_text, time_per_model, top_head_bars, versus_random_points,
                                     versus_random_table)
from lib.stats.multitest import bh_adjust
from lib.text.datasets import load_profiles
from lib.text.generated import load_lexicon
from tests.interventions.helpers import one_length_ids as _ids, random_readout as _readout

CONFIG = HeadsConfig(n_prompts=3, top_k=2, ks=(1, 2), n_random_null=39, n_random=3, n_gen_tokens=3, heads="1:0",
                     all_positions=True, seed=0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Every baseline row, so the prompts (drawn from the same rows) are in the store."""
    return obtain_stores(["tiny-gpt2"], ["baseline"], "", tmp_path_factory.mktemp("heads"), max_per_emotion=None,
                         seed=0, log=lambda *_: None)


@pytest.fixture(scope="module")
def run(stores):
    return analyse_models(["tiny-gpt2"], ["gratitude"], stores, ["baseline"], load_profiles(["baseline"]),
                          load_lexicon(), CONFIG, authored=load_profiles(["baseline", "extended"]))


def _held_out(select_effect: np.ndarray, evaluate_effect: np.ndarray, *, k: int = 1, seed: int = 0) -> dict:
    """The phase's selection and evaluation functions on synthetic single-head ablation effects on the
    log-odds [layers, heads, prompts]: the sweep table of the selection prompts ranks the heads
    (``sweep_frame``, ``ablation_ranking``); the top-k set and 199 random sets are scored on the evaluation
    prompts (set effect = sum of its heads' effects) by ``compare_with_random``."""
    L, H, n = select_effect.shape
    ro = Readout(0, torch.zeros(2, 1), torch.zeros(2), ["gratitude", "neutral"])
    res = {"logodds": np.stack([select_effect, -select_effect], -1), "probs": np.zeros((L, H, n, 2))}
    clean = {"logodds": torch.zeros(n, 2), "probs": torch.zeros(n, 2)}
    sweeps = sweep_frame(res, clean, ro, "gratitude", intervention="ablate (mean)", positions="last")
    abl, ranked = ablation_ranking(sweeps, "last")
    top = ranked[:k]
    sets = [top, *random_head_sets(L, H, k, 199, seed)]
    changes = np.stack([sum(evaluate_effect[layer, head] for layer, head in s) for s in sets])
    drop = float(-abl.set_index(["layer", "head"]).loc[top[0], "effect"])
    return {"top": top, "selection_drop": drop,
            **compare_with_random(changes[0], changes[1:], alternative="less", seed=seed)}


def test_planted_head_keeps_its_effect_held_out_and_a_noise_winner_regresses():
    rng = np.random.default_rng(0)
    shape = (6, 8, 16)  # layers, heads, prompts per half; noise sd 1 per prompt
    planted = np.zeros(shape[:2])
    planted[2, 5] = -2.0  # ablating head 2:5 lowers the log-odds by 2 on every prompt
    sel, ev = rng.normal(size=shape), rng.normal(size=shape)
    got = _held_out(planted[..., None] + sel, planted[..., None] + ev)
    assert got["top"] == [(2, 5)]
    assert got["change_hi"] < -1.0 and abs(got["change"] + 2.0) < 0.6  # keeps its effect on new prompts
    assert got["p_value"] < 0.05  # beats the random heads (a few random draws are the planted head itself)
    # pure noise: the winner's selection drop is the largest of 48 noisy means, far from 0 ...
    noise = _held_out(sel, ev)
    assert noise["selection_drop"] > 0.5
    # ... and on the evaluation half it regresses toward 0: the interval covers 0, the p-value is unremarkable
    assert noise["change_lo"] < 0 < noise["change_hi"] and -noise["change"] < noise["selection_drop"] / 2
    assert noise["p_value"] > 0.05
    # over 20 noise draws: winners drop about 0.5 on the selection half and about 0 on the evaluation half
    reps = [_held_out(rng.normal(size=shape), rng.normal(size=shape), seed=s) for s in range(20)]
    assert np.mean([r["selection_drop"] for r in reps]) > 0.4 and abs(np.mean([r["change"] for r in reps])) < 0.12
    # the same-prompts path (ranking and scoring on one set of prompts, as before the split) calls the noise
    # winner a real effect: these are the numbers the held-out path must not reproduce
    same = _held_out(sel, sel)
    assert same["change_hi"] < 0 and same["p_value"] < 0.05 and np.isclose(-same["change"], same["selection_drop"])


def _state(lm, rows, role, ro):
    enc = lm.encoder.encode(rows[rows["role"] == role]["text"].tolist())
    return clean_state(lm.bridge.original_model, enc.input_ids, ro), enc.input_ids


def test_driver_ranks_on_the_selection_half_and_measures_on_the_evaluation_half(run):
    (key, part), = run.parts.items()
    assert key == ("tiny-gpt2", "gratitude") and set(SAVED_TABLES) <= set(part)
    lm, ro = load_model("tiny-gpt2", device="cpu"), run.readouts["tiny-gpt2"]
    ci = class_index(ro, "gratitude")
    prompts = part["prompts"]
    sel, ev = prompts[prompts["half"] == "selection"], prompts[prompts["half"] == "evaluation"]
    assert not set(sel["id"]) & set(ev["id"]) and not set(sel["group"]) & set(ev["group"]) and len(ev) >= 4
    (se, _), (sn, _) = _state(lm, sel, "emotion", ro), _state(lm, sel, "neutral", ro)
    (ee, ev_ids), (en, _) = _state(lm, ev, "emotion", ro), _state(lm, ev, "neutral", ro)
    mean_z = position_mean_z(sn)  # the reference: the selection half's neutral prompts
    # the ranking sweep: mean ablation at the last position on the selection half's emotion prompts
    want = sweep_fast(lm.bridge.original_model, se, ro, "mean", "last", mean_z=mean_z)["logodds"][..., ci]
    want = (want - se.metrics["logodds"][:, ci].numpy()).mean(-1)
    sw = part["sweeps"].query("intervention == 'ablate (mean)' and positions == 'last' and metric == 'probe_logodds'")
    np.testing.assert_allclose(sw["effect"], want.ravel(), atol=1e-5)
    top = part["top_heads"]
    assert np.allclose(top["drop"], np.sort(-want.ravel())[::-1][:2], atol=1e-5)
    heads = list(zip(top["layer"], top["head"]))
    # the top set against random sets on the evaluation half, by one TransformerLens forward
    tvr = part["top_vs_random"].set_index(["intervention", "metric"])
    clean = set_metrics(lm, ev_ids, ro, [], None)
    abl = set_metrics(lm, ev_ids, ro, heads, "mean", positions="last", mean_z=mean_z)
    assert np.isclose(tvr.loc[("ablate", "probe_logodds"), "change"],
                      (abl["logodds"][:, ci] - clean["logodds"][:, ci]).mean(), atol=1e-5)
    assert np.isclose(tvr.loc[("ablate", "probe_logodds"), "prob_change"],
                      (abl["probs"][:, ci] - clean["probs"][:, ci]).mean(), atol=1e-6)
    _, nids = _state(lm, ev, "neutral", ro)
    pat = set_metrics(lm, nids, ro, heads, "patch", positions="last", source_z=ee.z)
    ei = list(ro.continuations).index("gratitude")
    assert np.isclose(tvr.loc[("patch", "logprob"), "change"],
                      (pat["logprob"][:, ei] - en.metrics["logprob"][:, ei].numpy()).mean(), atol=1e-5)
    assert set(tvr.index) == {(i, m) for i in ("ablate", "patch") for m in ("probe_logodds", "logprob")}
    assert (tvr["n_random"] == 39).all() and (tvr["n_prompts"] == len(ev) // 2).all()
    # each top head alone held out, and k = 1 of the curve is the first of them
    one = set_metrics(lm, ev_ids, ro, heads[:1], "mean", positions="last", mean_z=mean_z)
    held = -(one["logodds"][:, ci] - clean["logodds"][:, ci]).mean()
    assert np.isclose(top["held_out_drop"].iloc[0], held, atol=1e-5)
    curve = part["topk_curve"].set_index("k")
    assert np.isclose(curve.loc[1, "probe_logodds_change"], -held, atol=1e-5) and curve.loc[2, "heads"] == "{}:{},{}:{}".format(
        *heads[0], *heads[1])
    # generation: the forward log-odds of each condition come from the same held-out sets
    gens = part["generations"].query("intervention == 'ablate' and kind == 'top'")
    assert np.allclose(gens["probe_logodds"], abl["logodds"][:, ci] - clean["logodds"][:, ci], atol=1e-5)
    assert list(part["timings"]["step"])[:2] == ["clean runs", "screening"] and len(part["timings"]) == 11
    assert run.head_set is not None and list(run.head_set["ablation"]) == ["none", "zero", "mean"]


def test_driver_fits_the_readout_and_direction_on_rows_disjoint_from_the_prompts(run, stores):
    """The probe equals scikit-learn's on the stored rows minus every prompt's row; the direction is the unit
    mean difference of those rows by hand."""
    store = stores["tiny-gpt2", "baseline"]
    ro = run.readouts["tiny-gpt2"]
    assert ro.layer == 1 and set(ro.continuations) == {"gratitude"}
    prompts = run.parts["tiny-gpt2", "gratitude"]["prompts"]
    keep = ~store.labels["id"].isin(prompts["id"]).to_numpy()  # every authored text is its own group
    assert (~keep).sum() == len(prompts) > 0
    record = next(r for r in run.splits if r["name"] == "probe rows tiny-gpt2")
    assert record["sizes"] == {"fit": int(keep.sum()), "dropped": len(prompts)}
    x = store.get(act_name("resid_post", 1))[keep]
    emotion = store.labels["emotion"].to_numpy()[keep]
    d = x[emotion == "gratitude"].mean(0) - x[emotion == "neutral"].mean(0)
    np.testing.assert_allclose(run.directions["tiny-gpt2", "gratitude"], d / np.linalg.norm(d), atol=1e-6)
    from lib.geometry.probes import fit_probe  # the same fit, read through sklearn's own predict_proba
    probe = fit_probe(x, emotion, seed=0)
    got = readout_metrics(torch.tensor(x, dtype=torch.float32), None, dataclasses.replace(ro, continuations={}))
    np.testing.assert_allclose(got["probs"].numpy(), probe.predict_proba(x), atol=1e-4)
    assert [r["name"] for r in run.splits] == ["prompts tiny-gpt2 gratitude", "probe rows tiny-gpt2"]


def test_prompt_disjoint_rows_drops_whole_text_groups():
    kept, dropped = prompt_disjoint_rows(["a b c d", "x y", "a b c d e", "p q"], ["a b c d"],
                                         {"a b c d": 0, "a b c d e": 0, "x y": 1, "p q": 2})
    assert kept.tolist() == [1, 3] and dropped.tolist() == [0, 2]
    with pytest.raises(ValueError, match="have no text group, e.g. 'p q'"):
        prompt_disjoint_rows(["p q"], ["x y"], {"x y": 1})


def test_top_vs_random_p_values_are_adjusted_over_the_whole_family(run):
    tvr = run.tables["top_vs_random"]
    assert np.allclose(tvr["p_adjusted"], bh_adjust(tvr["p_value"])) and (tvr["family_size"] == len(tvr)).all()
    assert (tvr["p_value"] >= 1 / 40).all() and (tvr["p_adjusted"] >= tvr["p_value"]).all()
    assert "p_value" not in run.tables["generation_vs_random"]


def test_head_set_effects_on_the_evaluation_half():
    lm = load_model("tiny-gpt2", device="cpu")
    ids = _ids(lm)
    sel = Prompts("gratitude", ids.shape[1], pd.DataFrame(), ids, ids.flip(0), None, None)
    ev = Prompts("gratitude", ids.shape[1], pd.DataFrame(), ids.flip(0) + 1, ids, None, None)
    ro = _readout(lm)
    got = head_set_effects(lm, ro, PromptSplit(sel, ev, {}), "1:0,0:2", load_lexicon(), n_gen_tokens=4).set_index(
        "ablation")
    assert list(got.index) == ["none", "zero", "mean"] and (got["heads"] == "0:2,1:0").all()
    assert got.loc["none", "probe_logodds_change"] == 0
    clean = set_metrics(lm, ev.emo_ids, ro, [], None)
    zero = set_metrics(lm, ev.emo_ids, ro, [(1, 0), (0, 2)], "zero", positions="last")
    assert np.isclose(got.loc["zero", "probe_logodds_change"], (zero["logodds"][:, 0] - clean["logodds"][:, 0]).mean(),
                      atol=1e-6)
    mean_z = position_mean_z(clean_state(lm.bridge.original_model, sel.neu_ids, ro))  # the selection's neutral
    mean = set_metrics(lm, ev.emo_ids, ro, [(1, 0), (0, 2)], "mean", positions="last", mean_z=mean_z)
    assert np.isclose(got.loc["mean", "probe_prob_change"], (mean["probs"][:, 0] - clean["probs"][:, 0]).mean(),
                      atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        head_set_effects(lm, ro, PromptSplit(sel, ev, {}), "5:0", load_lexicon())


def test_save_tables_summary_and_findings(run, tmp_path):
    paths = save_tables(tmp_path, run)
    assert [p.name for p in paths] == [f"{n}.csv" for n in SAVED_TABLES] + ["head_set.csv"]
    back = pd.read_csv(tmp_path / "top_heads.csv")
    assert list(back.columns) == ["layer", "head", "drop", "se", "held_out_drop", "held_out_se", "rank", "model",
                                  "emotion"]
    r = run.tables["top_vs_random"].query("intervention == 'ablate' and metric == 'probe_logodds'").iloc[0]
    top = run.parts["tiny-gpt2", "gratitude"]["top_heads"].iloc[0]
    assert summary_text(run) == (
        f"tiny-gpt2 gratitude: top-2 heads ablated on held-out prompts change the log-odds by {r['change']:+.2f} "
        f"[{r['change_lo']:+.2f}, {r['change_hi']:+.2f}] vs random [{r['random_lo']:+.2f}, {r['random_hi']:+.2f}], "
        f"p = {r['p_value']:.3f} (BH {r['p_adjusted']:.3f}); top head {top['layer']}:{top['head']}")
    (f,) = findings(run)
    assert set(f) == {"question", "finding", "control", "figure"} and f"{r['change']:+.2f}" in f["finding"]
    assert f"p = {r['p_value']:.3f}, BH-adjusted {r['p_adjusted']:.3f}" in f["control"]


def test_direction_agreement_reads_phase_03_at_the_probe_layer(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(3, 4, 5)).astype(np.float32)  # layers [0, 2, 5], four keys
    keys = [["anger", "pca"], ["gratitude", "mean_vs_neutral"], ["anger", "mean_vs_neutral"], ["gratitude", "pca"]]
    folder = tmp_path / "03_emotion_vectors" / "r1"
    folder.mkdir(parents=True)
    np.save(folder / "directions--m.npy", arr)
    (folder / "directions--m.json").write_text(json.dumps({"layers": [0, 2, 5], "keys": keys}))
    d = {e: rng.normal(size=5) for e in ("gratitude", "anger")}
    run = HeadsRun(directions={("m", "gratitude"): d["gratitude"], ("m", "anger"): d["anger"]},
                   readouts={"m": type("R", (), {"layer": 2})()})
    got = direction_agreement(run, "r1", results=tmp_path)
    assert got == {("m", "gratitude"): pytest.approx(float(np.dot(arr[1, 1], d["gratitude"]))),
                   ("m", "anger"): pytest.approx(float(np.dot(arr[1, 2], d["anger"])))}
    run.readouts["m"].layer = 3
    with pytest.raises(ValueError, match=r"has layers \[0, 2, 5\], not the probe layer 3"):
        direction_agreement(run, "r1", results=tmp_path)


def test_display_tables_by_hand():
    screening = pd.DataFrame({"model": "m", "emotion": ["a"] * 3 + ["b"] * 2, "score": "s",
                              "value": [1.0, -4.0, 2.0, 0.0, 0.0]})
    assert scaled_screening(screening)["scaled"].tolist() == [0.25, -1.0, 0.5, 0.0, 0.0]
    assert "scaled" not in screening
    sweeps = pd.DataFrame({"metric": ["probe_logodds", "logprob"], "intervention": ["ablate", "ablate"],
                           "positions": ["all", "all"], "effect": [0.1, 0.2]})
    assert probe_sweeps(sweeps)["what"].tolist() == ["ablate, all"]
    top = top_head_bars(pd.DataFrame({"model": "m", "emotion": "a", "rank": [1], "layer": [3], "head": [1], "drop": [2.0],
                                      "se": [0.5], "held_out_drop": [0.25], "held_out_se": [1.0]}))
    assert top["head_label"].tolist() == ["3:1"] * 2 and top["half"].tolist() == ["selection", "evaluation"]
    assert top["drop"].tolist() == [2.0, 0.25] and top["ci"].tolist() == [0.98, 1.96]
    tvr = pd.DataFrame({"model": "m", "emotion": "a", "intervention": "ablate", "metric": ["probe_logodds", "logprob"],
                        "change": [-2.0, 0.0], "change_lo": [-3.0, 0.0], "change_hi": [-1.5, 0.0],
                        "random_mean": [0.1, 0.0], "random_lo": [-0.4, 0.0], "random_hi": [0.3, 0.0],
                        "n_random": 199, "n_prompts": 16, "p_value": [0.005, 0.5], "p_adjusted": [0.01, 0.5]})
    pts = versus_random_points(tvr).set_index("what")
    assert pts.loc["top-k, held out", ["y", "lo", "hi"]].tolist() == [-2.0, 1.0, 0.5]
    assert np.allclose(pts.loc["random sets (95% band)", ["y", "lo", "hi"]].tolist(), [0.1, 0.5, 0.2])
    assert versus_random_table(tvr).loc[("m", "a", "ablate", "probe_logodds"), "p_adjusted"] == 0.01
    gs = pd.DataFrame({"intervention": ["ablate", "patch"], "vader": [0.5, 0.1], "vader_lo": [0.2, 0.0],
                       "vader_hi": [0.6, 0.3], "kind": ["top", "random"]})
    bars = error_bars(gs, "ablate", "vader")
    assert len(bars) == 1 and np.isclose(bars["lo"].iloc[0], 0.3) and np.isclose(bars["hi"].iloc[0], 0.1)
    rho = pd.DataFrame({"model": "m", "emotion": "a", "positions": ["last", "all"], "spearman": [0.912, 0.5]})
    attr = attribution_panels(pd.DataFrame({"model": ["m"], "emotion": ["a"]}), rho)
    assert attr["panel"].tolist() == ["m a (rho last 0.91, rho all 0.50)"]
    assert spearman_pivot(rho).loc[("m", "a")].to_dict() == {"all": 0.5, "last": 0.912}
    prompts = pd.DataFrame({"model": "m", "prompt_emotion": "a", "half": "selection",
                            "role": ["emotion"] * 2 + ["neutral"], "id": [1, 2, 3], "T": 7})
    counts = prompt_counts(prompts)
    assert counts["rows"].tolist() == [2, 1] and counts["tokens"].tolist() == [7, 7]
    timings = pd.DataFrame({"model": ["m", "m", "n"], "seconds": [1.0, 2.5, 4.0]})
    assert time_per_model(timings)["seconds in all"].to_dict() == {"m": 3.5, "n": 4.0}


def test_display_tables_of_a_run(run):
    t = run.tables
    hs = head_set_table(run.head_set)
    assert list(hs.index.get_level_values("ablation")) == ["none", "zero", "mean"] and "vader_change" in hs
    table = generation_table(t["generation_summary"])
    assert set(table["condition"]) == {"baseline", "top-2"} and len(table) == 4  # 2 interventions
    band = generation_band_table(t["generation_vs_random"])
    g = t["generation_vs_random"].set_index(["intervention", "metric"])
    assert band.loc[("tiny-gpt2", "gratitude", "patch"), ("random_hi", "keywords")] == round(
        g.loc[("patch", "keywords"), "random_hi"], 3)
    ex = generation_examples(t["generations"])
    assert len(ex) == 4 and list(ex.columns)[-2:] == ["prompt", "continuation"]
    first = t["generations"].query("intervention == 'patch' and condition == 'top-2'").iloc[0]
    assert ex.query("intervention == 'patch' and condition == 'top-2'")["continuation"].iloc[0] == first["continuation"]
