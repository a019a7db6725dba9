"""Phase 07's decision rules on planted per-run measurements (a planted effect must be found, none must not),
the planted metric checks, the matched rank and the params-to-spec glue."""
import numpy as np
import pandas as pd
import pytest

from lib.phases.shared_subspace import (SharedConfig, control_specs, participation_ratio, planted_checks,
                                        run_specs)
from lib.phases.shared_subspace_tables import GATE, condition_table, hypothesis_table


def _measures(effect: float, in_dist: float = 0.99, seeds: int = 5) -> pd.DataFrame:
    """Per-run rows where the regulariser (on) shifts every metric by ``effect`` in its favour."""
    rng = np.random.default_rng(0)
    rows = []
    for cond, shift in (("off", 0.0), ("on", effect), ("matched-rank", 0.0)):
        for s in range(seeds):
            noise = lambda: 0.01 * rng.normal()  # noqa: E731
            rows.append({"condition": cond, "seed": s, "sharing_distance": 2.0 - shift + noise(),
                         "zero_shot_accuracy": 0.3 + shift + noise(), "few_shot_auc": 0.4 + shift + noise(),
                         "sae_f1": 0.5 + shift + noise(), "pca_f1": 0.5 + noise(), "ica_f1": 0.45 + noise(),
                         "chance_f1": 0.2, "in_dist_accuracy": in_dist})
    return pd.DataFrame(rows)


def _verdicts(table):
    return dict(zip(table.loc[table["verdict"] != "", "hypothesis"], table.loc[table["verdict"] != "", "verdict"]))


def test_a_planted_effect_is_supported_everywhere():
    table = hypothesis_table(_measures(0.2), n_boot=500)
    assert _verdicts(table) == {h: "supported" for h in ("H1", "H2", "H3", "H4")}
    assert (table["estimate"] > 0.15).all() and np.allclose(table["p_value"], 1 / 252)


def test_no_effect_is_not_supported():
    table = hypothesis_table(_measures(0.0), n_boot=500)
    assert set(_verdicts(table).values()) == {"not supported"}
    assert (table["ci_low"] < 0.05).all()


def test_h2_is_not_testable_below_the_gate():
    v = _verdicts(hypothesis_table(_measures(0.2, in_dist=GATE - 0.1), n_boot=500))
    assert v["H2"].startswith("not testable") and v["H1"] == "supported"


def test_h1_needs_to_beat_the_matched_rank_control():
    m = _measures(0.2)
    m.loc[m["condition"] == "matched-rank", "sharing_distance"] -= 0.3  # low rank alone shares even more
    assert _verdicts(hypothesis_table(m, n_boot=500))["H1"] == "not supported"


def test_condition_table_intervals_hold_the_mean():
    t = condition_table(_measures(0.2).assign(in_dist_iou=0.5, zero_shot_iou=0.1), n_boot=200)
    assert ((t["ci_low"] <= t["mean"]) & (t["mean"] <= t["ci_high"])).all()
    assert set(t["condition"]) == {"off", "on", "matched-rank"}


def test_planted_checks_pass():
    rows = {r["check"].split(",")[0] + r["check"].split(",")[-1]: r for r in planted_checks(SharedConfig(n_null=20))}
    assert [r["passes"] for r in rows.values()] == [True, True, True, None, None]
    sae = rows["H4 SAE 1-sparse F1 planted primitive directions"]
    assert sae["value"] > 0.9 > sae["reference"] + 0.3


def test_participation_ratio_by_hand():
    x = np.diag([3.0, 1.0, 0.0]) @ np.random.default_rng(0).normal(size=(3, 20000))
    ev = np.array([9.0, 1.0, 0.0])
    assert participation_ratio(x.T) == pytest.approx(ev.sum() ** 2 / (ev ** 2).sum(), rel=0.05)


def test_specs_cover_seeds_and_conditions(tmp_path):
    config = SharedConfig(seeds=3, alpha=0.1, alpha_sweep=(0.0, 0.05, 0.1), encoders=("transformer", "gru"))
    specs = run_specs(config, tmp_path)
    names = sorted({s["condition"] for s in specs})
    assert names == ["alpha=0.05", "alpha=0.05-gru", "off", "off-gru", "on", "on-gru"]
    assert len(specs) == 6 * 3 and len({s["out_dir"] for s in specs}) == len(specs)
    on = next(s for s in specs if s["condition"] == "on")
    assert on["train"]["alpha"] == 0.1 and on["train"]["alpha_start"] < on["train"]["alpha_end"]
    ctrl = control_specs(config, tmp_path, matched_rank=7)
    assert {s["condition"] for s in ctrl} == {"untrained", "matched-rank"}
    assert all(s["model"]["bottleneck_rank"] == 7 for s in ctrl if s["condition"] == "matched-rank")
    assert all(s["train"]["alpha"] == 0.0 for s in ctrl)


def test_bad_config_is_one_line():
    with pytest.raises(ValueError, match="seeds must be >= 2"):
        SharedConfig(seeds=1)
