"""Phase 06 glue: the rows of each role are disjoint, orders go weakest first, the per-head table and the
agreement table are the means and correlations of what they are given, and a fine-tune key follows its settings."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from lib.geometry.folds import text_groups
from lib.phases.head_strength import (StrengthConfig, agreement_frame, finetune_key, head_frame, pruning_orders,
                                      select_rows)
from lib.phases.head_strength_tables import findings, loss_at, pruning_band

L, H, N = 2, 3, 12


class _Extractor:
    def __init__(self, arrays):
        self.arrays = arrays

    def per_sample(self):
        return self.arrays


def _measured(rng, scale=1.0):
    per = {k: rng.gamma(2.0, scale, size=(N, L, H)) for k in ("mean", "last", "z_mean")}
    return {"extractor": _Extractor(per), "ablation": {"delta": rng.normal(size=(L, H, N))},
            "gradient": {"per_row": np.abs(rng.normal(size=(L, H, N)))}}


def test_select_rows_keeps_roles_apart():
    cfg = StrengthConfig(pre_model="tiny-llama", n_train_per_emotion=10, n_reference=12, n_eval_per_emotion=8)
    rows, splits = select_rows(cfg)
    assert len(rows["train"]) == 10 * 4 and len(rows["reference"]) == 12
    assert not set(rows["train"]["id"]) & set(rows["reference"]["id"])
    assert (rows["train"]["split"] == "train").all() and (rows["measure"]["split"] == "dev").all()
    dev = pd.concat([rows["measure"], rows["prune"]], ignore_index=True)
    groups = text_groups(dev["text"])
    half = np.r_[np.zeros(len(rows["measure"])), np.ones(len(rows["prune"]))]
    assert all(len(set(half[groups == g])) == 1 for g in np.unique(groups))  # no text group in both halves
    assert dev["emotion"].value_counts().eq(8).all()
    assert splits["dev_halves"]["sizes"] == {"measure": len(rows["measure"]), "prune": len(rows["prune"])}
    again, _ = select_rows(cfg)
    assert again["measure"]["id"].tolist() == rows["measure"]["id"].tolist()  # seeded


def test_head_frame_is_the_mean_over_rows_in_layer_major_order():
    rng = np.random.default_rng(0)
    pre, fine = _measured(rng), _measured(rng, 2.0)
    df = head_frame(pre, fine, L, H)
    i = int(np.flatnonzero((df["layer"] == 1) & (df["head"] == 2))[0])
    assert df.loc[i, "R_pre"] == pytest.approx(pre["extractor"].arrays["mean"][:, 1, 2].mean())
    assert df.loc[i, "ablation_fine"] == pytest.approx(fine["ablation"]["delta"][1, 2].mean())
    assert df.loc[i, "R_ratio"] == pytest.approx(df.loc[i, "R_fine"] / df.loc[i, "R_pre"])


def test_agreement_frame_rho_matches_scipy_and_is_adjusted_as_one_family():
    rng = np.random.default_rng(1)
    pre, fine = _measured(rng), _measured(rng)
    cfg = StrengthConfig(pre_model="tiny-llama", n_boot=50, n_perm=50)
    ag = agreement_frame(pre, fine, cfg)
    row = ag[(ag["x"] == "R_pre") & (ag["importance"] == "ablation")].iloc[0]
    want = spearmanr(pre["extractor"].arrays["mean"].mean(0).ravel(), fine["ablation"]["delta"].mean(-1).ravel())[0]
    assert row["rho"] == pytest.approx(want)
    assert len(ag) == 10 and (ag["family_size"] == 10).all() and (ag["p_adjusted"] >= ag["p_value"]).all()


def test_pruning_orders_go_weakest_first_and_cover_every_head():
    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "R_pre": [3.0, 1.0, 2.0, 4.0],
                          "R_fine": [1.0, 2.0, 3.0, 4.0], "ablation_fine": [0.5, -0.1, 0.2, 0.0],
                          "gradient_fine": [4.0, 3.0, 2.0, 1.0]})
    orders = pruning_orders(heads, StrengthConfig(pre_model="tiny-llama", n_random_orders=3))
    assert orders["R_h before"] == [(0, 1), (1, 0), (0, 0), (1, 1)]
    assert orders["ablation importance after"] == [(0, 1), (1, 1), (1, 0), (0, 0)]
    assert orders["|ablation effect| after"] == [(1, 1), (0, 1), (1, 0), (0, 0)]
    assert len(orders) == 8 and all(sorted(o) == sorted(orders["R_h before"]) for o in orders.values())


def test_finetune_key_follows_every_setting_that_changes_the_weights():
    base = StrengthConfig(pre_model="smollm2-135m")
    k = finetune_key(base, "abc")
    assert k.startswith("smollm2-135m-lora-") and finetune_key(base, "abc") == k
    assert finetune_key(StrengthConfig(pre_model="smollm2-135m", steps=5), "abc") != k
    assert finetune_key(base, "abd") != k  # another base model
    assert finetune_key(StrengthConfig(pre_model="smollm2-135m", n_boot=7), "abc") == k  # analysis only


def test_pruning_summaries_against_hand_values():
    curves = pd.DataFrame({"order": ["R_h before"] * 2 + ["random 1"] * 2 + ["random 2"] * 2,
                           "fraction": [0.0, 0.3] * 3, "n_removed": [0, 3] * 3, "loss": [1.0, 1.5, 1.0, 2.0, 1.0, 3.0]})
    at = loss_at(curves, 0.3).set_index("order")
    assert at.loc["R_h before", "increase"] == pytest.approx(0.5)
    assert at.iloc[-1]["increase"] == pytest.approx(1.5) and at.iloc[-1]["band_low"] == pytest.approx(1.025)
    band = pruning_band(curves)
    assert band.loc[band["fraction"] == 0.3, "median"].item() == pytest.approx(2.5)


def test_findings_name_the_headline_numbers():
    rng = np.random.default_rng(2)
    cfg = StrengthConfig(pre_model="tiny-llama", n_boot=30, n_perm=30)
    ag = agreement_frame(_measured(rng), _measured(rng), cfg)
    obj = pd.DataFrame({"model": ["before fine-tuning", "after fine-tuning", "probe on the base model (layer 1)",
                                  "chance (always one label)"], "metric": "accuracy", "mean": [0.3, 0.6, 0.5, 0.25],
                        "ci_low": [0.2, 0.5, 0.4, np.nan], "ci_high": [0.4, 0.7, 0.6, np.nan]})
    curves = pd.DataFrame({"order": ["gradient importance after"] * 2 + ["random 1"] * 2, "fraction": [0.0, 0.3] * 2,
                           "n_removed": [0, 3] * 2, "loss": [1.0, 1.2, 1.0, 2.0]})
    run = SimpleNamespace(tables={"objective": obj, "agreement": ag, "pruning": curves})
    f = findings(run)
    assert "0.300 [0.200, 0.400] before, 0.600 [0.500, 0.700] after" in f[0]["finding"]
    h = ag[(ag["x"] == "R_pre") & (ag["importance"] == "ablation")].iloc[0]
    assert f"{h['rho']:.3f}" in f[1]["finding"] and "+0.200" in f[2]["finding"]


def test_two_given_checkpoints_are_compared_without_fine_tuning(tmp_path):
    """``fine_model`` set: no fine-tune; a model compared with a copy of itself has ratios 1 and the same importance."""
    from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
    from lib.phases.head_strength import run_phase

    folder = tmp_path / "copy"
    build_tiny_model("tiny-gpt2").save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    cfg = StrengthConfig(pre_model="tiny-gpt2", fine_model=str(folder), n_train_per_emotion=6, n_probe_per_emotion=6,
                         n_reference=4, n_eval_per_emotion=4, fractions=(0.0, 0.5), n_random_orders=2, n_boot=20,
                         n_perm=20, eval_batch_size=4, device="cpu")
    run = run_phase(cfg, tmp_path / "scratch")
    assert not run.finetune["trained_here"] and not (tmp_path / "scratch").exists()
    h = run.tables["heads"]
    assert np.allclose(h["R_ratio"], 1.0, rtol=1e-6) and np.allclose(h["ablation_pre"], h["ablation_fine"], atol=1e-6)
    assert [i["role"] for i in run.identities] == ["pre", "fine"]
    assert run.identities[0]["weights_sha256"] == run.identities[1]["weights_sha256"]
    obj = run.tables["objective"].set_index(["model", "metric"])["mean"]
    assert obj[("before fine-tuning", "loss")] == pytest.approx(obj[("after fine-tuning", "loss")], rel=1e-6)


def test_a_fine_model_of_another_shape_is_refused(tmp_path):
    from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
    from lib.phases.head_strength import run_phase

    import transformers

    config = build_tiny_model("tiny-gpt2").config
    config.n_layer = 3  # the same tokenizer, one more layer
    folder = tmp_path / "deeper"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    cfg = StrengthConfig(pre_model="tiny-gpt2", fine_model=str(folder), n_train_per_emotion=6, n_probe_per_emotion=6,
                         n_reference=4, n_eval_per_emotion=4, device="cpu")
    with pytest.raises(ValueError, match="has 2 layers x 4 heads but fine_model .* has 3 x 4"):
        run_phase(cfg, tmp_path / "scratch")
