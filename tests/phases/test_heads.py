"""Phase-05 glue against direct computations: the driver on a tiny model, the chosen head set, the check
against phase 03's directions, and every table the notebook displays."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from lib.activations.runs import obtain_stores
from lib.activations.names import act_name
from lib.interventions.effects import set_metrics
from lib.interventions.prompts import Prompts
from lib.interventions.readout import readout_metrics
from lib.models.loading import load_model
from lib.phases.heads import (SAVED_TABLES, HeadsConfig, HeadsRun, analyse_models, attribution_panels,
                              direction_agreement, error_bars, generation_examples, generation_table, head_set_effects,
                              head_set_table, permutation_pivot, probe_sweeps, prompt_counts, save_tables,
                              scaled_screening, spearman_pivot, summary_text, time_per_model, top_head_bars)
from lib.text.datasets import load_profiles
from lib.text.generated import load_lexicon
from tests.interventions.helpers import one_length_ids as _ids, random_readout as _readout

CONFIG = HeadsConfig(n_prompts=3, top_k=2, ks=(1, 2), n_random=3, n_gen_tokens=3, heads="1:0", seed=0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return obtain_stores(["tiny-gpt2"], ["baseline"], "", tmp_path_factory.mktemp("heads"), max_per_emotion=12,
                         seed=0, log=lambda *_: None)


@pytest.fixture(scope="module")
def run(stores):
    return analyse_models(["tiny-gpt2"], ["gratitude"], stores, ["baseline"], load_profiles(["baseline"]),
                          load_lexicon(), CONFIG)


def test_head_set_effects_against_set_metrics():
    lm = load_model("tiny-gpt2", device="cpu")
    ids = _ids(lm)
    pr = Prompts("gratitude", ids.shape[1], pd.DataFrame(), ids, ids.flip(0), None, None)
    ro = _readout(lm)
    got = head_set_effects(lm, ro, pr, "1:0,0:2", load_lexicon(), n_gen_tokens=4).set_index("ablation")
    assert list(got.index) == ["none", "zero", "mean"] and (got["heads"] == "0:2,1:0").all()
    assert got.loc["none", "probe_prob_change"] == 0
    want = set_metrics(lm, ids, ro, [(1, 0), (0, 2)], "zero")["probs"][:, 0] - set_metrics(lm, ids, ro, [], None)["probs"][:, 0]
    assert np.isclose(got.loc["zero", "probe_prob_change"], want.mean(), atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        head_set_effects(lm, ro, pr, "5:0", load_lexicon())


def test_driver_fits_the_readout_and_direction_on_the_stores(run, stores):
    """The probe equals scikit-learn's on the stored rows; the direction is the unit mean difference by hand."""
    store = stores["tiny-gpt2", "baseline"]
    ro = run.readouts["tiny-gpt2"]
    assert ro.layer == 1 and set(ro.continuations) == {"gratitude"}
    x = store.get(act_name("resid_post", 1))
    emotion = store.labels["emotion"].to_numpy()
    d = x[emotion == "gratitude"].mean(0) - x[emotion == "neutral"].mean(0)
    np.testing.assert_allclose(run.directions["tiny-gpt2", "gratitude"], d / np.linalg.norm(d), atol=1e-6)
    from lib.geometry.probes import fit_probe  # the same fit, read through sklearn's own predict_proba
    probe = fit_probe(x, emotion, seed=0)
    got = readout_metrics(torch.tensor(x, dtype=torch.float32), None, dataclasses.replace(ro, continuations={}))
    got = got["probs"].numpy()
    np.testing.assert_allclose(got, probe.predict_proba(x), atol=1e-4)


def test_driver_tables_agree_with_each_other(run):
    (key, part), = run.parts.items()
    assert key == ("tiny-gpt2", "gratitude") and set(SAVED_TABLES) <= set(part)
    sweeps, top = part["sweeps"], part["top_heads"]
    abl = sweeps.query("intervention == 'ablate (mean)' and positions == 'all' and metric == 'probe_prob'")
    assert np.allclose(top["drop"], np.sort(-abl["effect"].to_numpy())[::-1][:2])
    # the fast sweep's single-head drop equals the full-forward top-1 ablation of the curve
    curve = part["topk_curve"].set_index("k")
    assert np.isclose(curve.loc[1, "drop"], top["drop"].iloc[0], atol=1e-5)
    assert curve.loc[1, "heads"] == f"{top['layer'].iloc[0]}:{top['head'].iloc[0]}"
    # the permutation p of the probe under ablation, from the generations frame by hand
    gens = part["generations"].query("intervention == 'ablate'")
    base = gens[gens["kind"] == "baseline"].set_index("id")["probe_prob"]
    eff = {c: -(g.set_index("id")["probe_prob"] - base).mean() for c, g in gens.groupby("condition") if c != "baseline"}
    null = [v for c, v in eff.items() if c.startswith("random")]
    p = part["permutation"].set_index(["intervention", "metric"]).loc[("ablate", "probe_prob")]
    assert np.isclose(p["top_effect"], eff["top-2"]) and p["p_value"] == (1 + sum(v >= eff["top-2"] for v in null)) / 4
    assert list(part["timings"]["step"])[:2] == ["clean runs", "screening"] and len(part["timings"]) == 11
    assert run.head_set is not None and list(run.head_set["ablation"]) == ["none", "zero", "mean"]
    assert run.tables["sweeps"].equals(sweeps)


def test_save_tables_and_summary(run, tmp_path):
    paths = save_tables(tmp_path, run)
    assert [p.name for p in paths] == [f"{n}.csv" for n in SAVED_TABLES] + ["head_set.csv"]
    back = pd.read_csv(tmp_path / "top_heads.csv")
    assert list(back.columns) == ["layer", "head", "drop", "se", "rank", "model", "emotion"]
    top = run.parts["tiny-gpt2", "gratitude"]["top_heads"].iloc[0]
    p = run.parts["tiny-gpt2", "gratitude"]["permutation"].set_index(["intervention", "metric"])["p_value"]
    assert summary_text(run, 2) == (f"tiny-gpt2 gratitude: top head {top['layer']}:{top['head']} (drop {top['drop']:.3f}); "
                                    f"top-2 vs random p = {p['ablate', 'probe_prob']:.3f} (probe), "
                                    f"{p['ablate', 'keywords']:.3f} (keywords)")


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
    sweeps = pd.DataFrame({"metric": ["probe_prob", "logprob"], "intervention": ["ablate", "ablate"],
                           "positions": ["all", "all"], "effect": [0.1, 0.2]})
    assert probe_sweeps(sweeps)["what"].tolist() == ["ablate, all"]
    top = top_head_bars(pd.DataFrame({"layer": [3], "head": [1], "se": [0.5]}))
    assert top["head_label"].tolist() == ["3:1"] and top["ci"].tolist() == [0.98]
    gs = pd.DataFrame({"intervention": ["ablate", "patch"], "vader": [0.5, 0.1], "vader_lo": [0.2, 0.0],
                       "vader_hi": [0.6, 0.3], "kind": ["top", "random"]})
    bars = error_bars(gs, "ablate", "vader")
    assert len(bars) == 1 and np.isclose(bars["lo"].iloc[0], 0.3) and np.isclose(bars["hi"].iloc[0], 0.1)
    rho = pd.DataFrame({"model": "m", "emotion": "a", "positions": ["last", "all"], "spearman": [0.912, 0.5]})
    attr = attribution_panels(pd.DataFrame({"model": ["m"], "emotion": ["a"]}), rho)
    assert attr["panel"].tolist() == ["m a (rho last 0.91, rho all 0.50)"]
    assert spearman_pivot(rho).loc[("m", "a")].to_dict() == {"all": 0.5, "last": 0.912}
    prompts = pd.DataFrame({"model": "m", "prompt_emotion": "a", "role": ["emotion"] * 2 + ["neutral"], "id": [1, 2, 3],
                            "T": 7})
    counts = prompt_counts(prompts)
    assert counts["rows"].tolist() == [2, 1] and counts["tokens"].tolist() == [7, 7]
    timings = pd.DataFrame({"model": ["m", "m", "n"], "seconds": [1.0, 2.5, 4.0]})
    assert time_per_model(timings)["seconds in all"].to_dict() == {"m": 3.5, "n": 4.0}


def test_display_tables_of_a_run(run):
    t = run.tables
    pivot = permutation_pivot(t["permutation"])
    perm = t["permutation"].set_index(["intervention", "metric"])
    for role in ("ablate", "patch"):
        row = pivot.xs(role, level="intervention").iloc[0]
        assert row[("p_value", "vader")] == round(perm.loc[(role, "vader"), "p_value"], 4)
        assert row[("top_effect", "keywords")] == round(perm.loc[(role, "keywords"), "top_effect"], 4)
    hs = head_set_table(run.head_set)
    assert list(hs.index.get_level_values("ablation")) == ["none", "zero", "mean"] and "vader_change" in hs
    table = generation_table(t["generation_summary"])
    assert set(table["condition"]) == {"baseline", "top-2"} and len(table) == 4  # 2 interventions
    ex = generation_examples(t["generations"])
    assert len(ex) == 4 and list(ex.columns)[-2:] == ["prompt", "continuation"]
    first = t["generations"].query("intervention == 'patch' and condition == 'top-2'").iloc[0]
    assert ex.query("intervention == 'patch' and condition == 'top-2'")["continuation"].iloc[0] == first["continuation"]
