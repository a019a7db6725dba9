"""Phase 08's glue: its rows, its tables on planted generations (shares, fluency ratios, the choice, the Pareto
front, the goals by hand), and the phase end to end on a tiny model, reading phase 03's directions from disk."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lib.geometry.folds import text_groups
from lib.phases.steering import SteeringConfig, grid_layers, run_phase
from lib.phases.steering_data import contrast_pairs, formatted, kl_texts, prompt_halves, prompted
from lib.phases.steering_tables import (choose, example_table, goals, goals_markdown, interference, pareto,
                                        prompt_changes, save_tables, setting_summary, side_effect_table, summary_text)
from lib.text.datasets import load_authored

CONFIG = SteeringConfig(models=("tiny-llama",), n_prompts=8, n_pairs=8, curve_sizes=(1, 2, 4), max_new_tokens=3,
                        n_kl_texts=3, judge_max_per_label=40, n_boot=50, n_perm=100, device="cpu",
                        layer_fractions=(0.0, 0.5), strengths=(0.25, 1.0))


def test_prompt_halves_are_disjoint_neutral_groups_and_pairs_share_register_and_domain():
    prompts, sel, rep, record = prompt_halves(12, seed=3)
    assert sorted(np.r_[sel, rep].tolist()) == list(range(12)) and not set(sel) & set(rep)
    groups = text_groups(prompts)
    assert not {groups[i] for i in sel} & {groups[i] for i in rep}
    ext = load_authored("extended").set_index("text")
    assert (ext.loc[prompts, "emotion"] == "neutral").all()
    base = load_authored("baseline").set_index("text")
    pairs = contrast_pairs("anger", 10, seed=0)
    assert len(set(pairs)) == 10 and not {t for p in pairs for t in p} & set(prompts)
    for a, n in pairs:
        assert base.loc[a, "emotion"] == "anger" and base.loc[n, "emotion"] == "neutral"
        assert tuple(base.loc[a, ["register", "domain"]]) == tuple(base.loc[n, ["register", "domain"]])
    assert pairs == contrast_pairs("anger", 10, seed=0) and pairs != contrast_pairs("anger", 10, seed=1)
    assert len(kl_texts(5, 0)) == 5
    with pytest.raises(ValueError, match="n_prompts=2"):
        prompt_halves(2, 0)
    with pytest.raises(ValueError, match="n_pairs=100000"):
        contrast_pairs("anger", 100000, 0)
    with pytest.raises(ValueError, match="must contain"):
        prompted(["x"], "Reply: {prompt}", "anger")


class _ChatTok:
    bos_token, bos_token_id, chat_template = "<s>", 1, "yes"

    def __call__(self, text):
        return {"input_ids": [1, 7]}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<s>[user] {messages[0]['content']} [assistant]"


def test_chat_format_drops_the_templates_bos_when_the_tokenizer_adds_one():
    assert formatted(_ChatTok(), ["Hi."], "chat") == ["[user] Hi. [assistant]"]
    assert formatted(_ChatTok(), ["Hi."], "plain") == ["Hi."]
    with pytest.raises(ValueError, match="prompt_format='html'"):
        formatted(_ChatTok(), ["Hi."], "html")


def test_grid_layers():
    assert grid_layers(30, (0.2, 0.35, 0.5)) == [6, 10, 15] and grid_layers(2, (0.0, 0.5, 1.0)) == [0, 1]


def _planted() -> pd.DataFrame:
    """4 prompts (0, 1 selection; 2, 3 report); the judge labels set by hand, NLL set by hand."""
    rows = []
    def add(setting, vector, layer, strength, labels, nll, text="a b c d", prompting=False, emotion="gratitude"):
        for i, (lab, n) in enumerate(zip(labels, nll)):
            row = {"model": "m", "setting": setting, "prompt_index": i, "half": "selection" if i < 2 else "report",
                   "text": text, "emotion": "" if vector == "none" and not prompting else emotion, "layer": layer,
                   "strength": strength, "vector": vector, "prompting": prompting, "judge_label": lab, "nll": n,
                   "vader": 0.0, "kw_gratitude": 0, "kw_anger": 0, "kw_apology": 0}
            for e in ("gratitude", "anger", "apology", "neutral"):
                row[f"judge_{e}"] = 0.9 if lab == e else 0.1 / 3
            rows.append(row)
    n = ["neutral"] * 4
    add("none", "none", -1, 0.0, n, [1.0] * 4)
    add("gratitude|caa|L1|s0.25", "caa", 1, 0.25, ["gratitude", "neutral", "gratitude", "gratitude"], [1.2] * 4)
    add("gratitude|caa|L1|s1", "caa", 1, 1.0, ["gratitude"] * 4, [2.0] * 4)  # effective, not fluent (ratio e^1)
    add("gratitude|caa|L2|s0.25", "caa", 2, 0.25, n, [1.0] * 4, text="a a a a")  # fluent by NLL, repetitive
    add("gratitude|random|L1|s0.25", "random", 1, 0.25, n, [1.1] * 4)
    add("gratitude|prompted", "none", 1, 0.0, ["gratitude", "neutral", "gratitude", "neutral"], [1.0] * 4,
        prompting=True)
    add("gratitude|prompted+caa|L1|s0.25", "caa", 1, 0.25, ["gratitude"] * 4, [1.0] * 4, prompting=True)
    return pd.DataFrame(rows)


def test_summary_choice_pareto_and_goals_on_planted_rows():
    cfg = SteeringConfig(models=("m",), emotions=("gratitude",), together=(), n_boot=200, n_perm=100)
    s = setting_summary(_planted(), cfg)
    at = s.set_index(["half", "setting"])
    assert at.loc[("selection", "gratitude|caa|L1|s0.25"), "share"] == 0.5
    assert at.loc[("selection", "gratitude|caa|L1|s1"), "ppl_ratio"] == pytest.approx(np.exp(1.0))
    # distinct-2: "a a a a" twice gives 1 of 6 bigrams, "a b c d" twice 3 of 6
    assert at.loc[("selection", "gratitude|caa|L2|s0.25"), "distinct_ratio"] == pytest.approx((1 / 6) / (3 / 6))
    assert at.loc[("report", "gratitude|prompted+caa|L1|s0.25"), "ppl_ratio"] == pytest.approx(1.0)  # vs prompted
    assert at.loc[("report", "none"), "share"] == 0.0
    c = choose(s, cfg).iloc[0]  # s1 beats it on share but is not fluent; L2 is repetitive
    assert c["setting"] == "gratitude|caa|L1|s0.25" and c["fluent_on_selection"] and c["n_fluent"] == 1
    front = s[pareto(s)]
    assert "gratitude|caa|L1|s1" in set(front[front["half"] == "selection"]["setting"])
    side = pd.DataFrame({"model": "m", "emotion": "gratitude", "vector": ["caa"] * 3 + ["random"] * 3,
                         "kl": [0.1, 0.2, 0.3, 0.01, 0.02, 0.03], "text_index": [0, 1, 2] * 2})
    g = goals(_planted(), s, choose(s, cfg), side, cfg).iloc[0]
    assert g["share"] == 1.0 and g["unsteered"] == 0.0 and g["gain"] == 1.0 and g["prompted"] == 0.5
    assert g["steer_over_prompt"] == 2.0 and g["prompted_plus"] == 1.0 and g["plus_gain"] == 0.5
    assert g["anti"] == 0.0 and g["kl"] == pytest.approx(0.2) and g["kl_random"] == pytest.approx(0.02)
    assert g["p_value"] == pytest.approx(0.25) and g["efficacy_met"] and g["anti_met"]  # 2 prompts: 1 of 4 patterns
    table = goals_markdown(goals(_planted(), s, choose(s, cfg), side, cfg))
    assert "| m | gratitude | L1 s0.25 |" in table
    assert len({line.count("|") for line in table.splitlines()}) == 1  # header, separator and rows: one width
    assert side_effect_table(side, cfg)["kl"].round(3).tolist() == [0.2, 0.02]
    ch = prompt_changes(_planted(), choose(s, cfg))  # report prompts 2, 3: judge_p 0.9 steered vs 0.1/3 unsteered
    assert ch["prompt_index"].tolist() == [2, 3] and np.allclose(ch["change"], 0.9 - 0.1 / 3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The phase on tiny-llama, reading phase-03 directions written as phase 03 writes them."""
    from lib.phases.emotion_vectors import save_directions

    results = tmp_path_factory.mktemp("results")
    folder = results / "03_emotion_vectors" / "planted"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    dirs = {layer: {(e, m): rng.normal(size=64) for e in ("gratitude", "anger", "apology")
                    for m in ("mean_vs_neutral", "probe")} for layer in (0, 1)}
    save_directions(folder, {("tiny-llama", "sentence_end"): (None, dirs)}, ["tiny-llama"], "hook_resid_post")
    cfg = SteeringConfig(**{**CONFIG.__dict__, "vectors_run": "planted"})
    out = tmp_path_factory.mktemp("out")
    return run_phase(cfg, out, results=results), cfg, out, dirs


def test_the_phase_end_to_end_on_a_tiny_model(tiny_run):
    run, cfg, out, dirs = tiny_run
    gens, t = run.generations, run.tables
    assert set(t["chosen"]["emotion"]) == {"gratitude", "anger"}
    halves = run.splits["prompt_indices"]
    assert set(gens.loc[gens["half"] == "report", "prompt_index"]) == set(halves["report"])
    assert set(gens.loc[gens["half"] == "selection", "prompt_index"]) == set(halves["selection"])
    assert gens.loc[gens["setting"] != "none", "vector"].notna().all()
    # every grid setting ran on all 8 prompts, the rest on the 4 report prompts only
    counts = gens.groupby("setting")["prompt_index"].nunique()
    assert counts[counts.index.str.contains(r"\|caa\|L\d+\|s[0-9.]+$") & ~counts.index.str.contains("prompted")].eq(8).all()
    assert counts[counts.index.str.contains("random|shuffled|phase03|prompted")].eq(4).all()
    # the phase-03 directions came from the file, normalised: their cosine with CAA is read from them
    cos = t["vector_cosines"]
    assert set(cos["method"]) == {"mean_vs_neutral", "probe"}
    from lib.steering.vector_files import VectorSet
    vs = VectorSet.load(out / "vectors" / "tiny-llama")
    for _, c in t["chosen"].iterrows():
        v = dirs[int(c["layer"])][c["emotion"], "mean_vs_neutral"]
        caa = vs[f"{c['emotion']}-L{int(c['layer'])}"].vector
        got = cos[(cos["emotion"] == c["emotion"]) & (cos["method"] == "mean_vs_neutral")]["cosine_with_caa"].iloc[0]
        assert got == pytest.approx(float(torch.tensor(v / np.linalg.norm(v), dtype=torch.float32) @ (caa / caa.norm())),
                                    abs=1e-5)
        norm = t["norms"].set_index("layer").loc[int(c["layer"]), "typical_norm"]
        assert float(caa.norm()) == pytest.approx(c["strength"] * norm, rel=1e-4)  # saved as the added vector
    s = setting_summary(gens, cfg)
    g = goals(gens, s, t["chosen"], t["side_effects"], cfg)
    assert len(g) == 2 and (g["p_adjusted"] >= g["p_value"] - 1e-12).all()
    assert len(interference(gens, cfg)) == 2 and len(example_table(gens, t["chosen"]))
    paths = save_tables(out, run, s, g, cfg)
    assert all(p.exists() for p in paths) and "tiny-llama gratitude" in summary_text(g)
    back = pd.read_csv(out / "generations.csv")
    assert back["token_ids"].map(lambda x: all(tok.isdigit() for tok in str(x).split())).all()


def test_the_phase_is_deterministic(tiny_run, tmp_path):
    run, cfg, _, _ = tiny_run
    results = tmp_path / "results"
    cfg2 = SteeringConfig(**{**cfg.__dict__, "vectors_run": ""})
    a, b = run_phase(cfg2, tmp_path / "a", results=results), run_phase(cfg2, tmp_path / "b", results=results)
    cols = ["setting", "prompt_index", "text", "judge_label", "nll"]
    pd.testing.assert_frame_equal(a.generations[cols], b.generations[cols])


def test_a_missing_phase03_run_is_one_clear_error(tmp_path):
    cfg = SteeringConfig(**{**CONFIG.__dict__, "vectors_run": "nope"})
    with pytest.raises(FileNotFoundError, match="directions--tiny-llama.json not found: run phase 03"):
        run_phase(cfg, tmp_path, results=tmp_path)
