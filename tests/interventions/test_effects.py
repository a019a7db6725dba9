"""Head-set metrics against single-head sweeps; random sets and ranking; the top-vs-random comparison by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.interventions.effects import (band_vs_random, compare_with_random, condition_summary, random_head_sets,
                                      rank_heads, set_conditions, set_metrics)
from lib.interventions.sweep import clean_state, sweep_fast
from lib.models.loading import load_model
from lib.stats.bootstrap import mean_ci, paired_difference
from tests.interventions.helpers import one_length_ids as _ids, random_readout as _readout


def test_set_metrics_equal_single_head_sweep_and_clean_run():
    lm = load_model("tiny-gpt2", device="cpu")
    ids = _ids(lm)
    ro = _readout(lm)
    st = clean_state(lm.bridge.original_model, ids, ro)
    clean = set_metrics(lm, ids, ro, [], None)
    np.testing.assert_allclose(clean["probs"], st.metrics["probs"].numpy(), atol=1e-5)
    one = set_metrics(lm, ids, ro, [(1, 3)], "zero")
    sweep = sweep_fast(lm.bridge.original_model, st, ro, "zero", "all")
    np.testing.assert_allclose(one["probs"], sweep["probs"][1, 3], atol=1e-5)


def test_random_sets_and_ranking():
    sets = random_head_sets(3, 4, 5, 10, seed=0)
    assert all(len(set(s)) == 5 and all(0 <= l < 3 and 0 <= h < 4 for l, h in s) for s in sets)
    assert sets == random_head_sets(3, 4, 5, 10, seed=0) and sets != random_head_sets(3, 4, 5, 10, seed=1)
    with pytest.raises(ValueError, match="k=13"):
        random_head_sets(3, 4, 13, 1, seed=0)
    assert rank_heads(np.array([[0.1, 0.5], [0.3, 0.5]]))[:3] == [(0, 1), (1, 1), (1, 0)]


def _conditions():
    """Three prompts under a baseline, a top set and three random sets (values listed for ids b, a, c; the
    top set's rows come in another order, so results must pair rows by id)."""
    vals = {"baseline": [1.0, 2.0, 3.0], "top-2": [0.0, 0.5, 1.0], "random 0": [1.0, 2.0, 2.5],
            "random 1": [0.0, 0.5, 0.5], "random 2": [1.0, 2.5, 3.0]}
    kinds = {"baseline": "baseline", "top-2": "top"}
    frames = [pd.DataFrame([{"id": i, "condition": c, "kind": kinds.get(c, "random"), "m": v[j], "other": 10 * v[j]}
                            for j, i in enumerate(["b", "a", "c"])]) for c, v in vals.items()]
    frames[1] = frames[1].iloc[::-1]
    g = pd.concat(frames, ignore_index=True)
    return g, g[g["kind"] == "baseline"].set_index("id"), vals


def test_compare_with_random_by_hand():
    rng = np.random.default_rng(0)
    top, null = rng.normal(-1.0, 1.0, size=8), rng.normal(0.0, 1.0, size=(39, 8))
    groups = np.repeat(np.arange(4), 2)
    got = compare_with_random(top, null, alternative="less", groups=groups, seed=3)
    means = null.mean(1)
    assert np.isclose(got["change"], top.mean()) and np.isclose(got["random_mean"], means.mean())
    assert (got["random_lo"], got["random_hi"]) == tuple(np.quantile(means, [0.025, 0.975]))
    assert got["p_value"] == (1 + np.sum(means <= top.mean())) / 40 and got["n_random"] == 39 and got["n_prompts"] == 8
    ci = mean_ci(top, seed=3, groups=groups)
    assert (got["change_lo"], got["change_hi"]) == (ci["ci_low"], ci["ci_high"])
    up = compare_with_random(-top, -null, alternative="greater", groups=groups, seed=3)
    assert up["p_value"] == got["p_value"] and np.isclose(up["change"], -got["change"])
    assert compare_with_random(null.min(0) - 1, null, alternative="less")["p_value"] == 1 / 40  # the floor
    with pytest.raises(ValueError, match="null has 8 prompts per set, the chosen set 3"):
        compare_with_random(top[:3], null, alternative="less")


def test_band_vs_random_is_the_paired_change_beside_the_random_band():
    g, base, vals = _conditions()
    assert [(c, k) for c, _, k in set_conditions([(0, 1), (1, 0)], [[]] * 3)] == [
        ("baseline", None), ("top-2", "top"), ("random 0", "random"), ("random 1", "random"), ("random 2", "random")]
    got = band_vs_random(g, base, ("m", "other"), [(0, 1), (1, 0)], intervention="ablate", model="x")
    assert [r["metric"] for r in got] == ["m", "other"] and got[0]["heads"] == "0:1,1:0" and got[0]["model"] == "x"
    change = {c: np.mean(np.subtract(v, vals["baseline"])) for c, v in vals.items()}
    null = [change["random 0"], change["random 1"], change["random 2"]]
    assert np.isclose(got[0]["change"], change["top-2"]) and np.isclose(got[0]["random_mean"], np.mean(null))
    assert np.isclose(got[0]["random_lo"], np.quantile(null, 0.025)) and got[0]["n_random"] == 3
    # paired by id although the top set's rows come in another order
    ci = paired_difference(vals["baseline"], vals["top-2"])
    assert np.isclose(got[0]["change_lo"], ci["ci_low"]) and np.isclose(got[1]["change"], 10 * change["top-2"])
    assert "p_value" not in got[0]


def test_condition_summary_has_means_and_paired_changes():
    g, base, vals = _conditions()
    got = condition_summary(g, base, ("m",), intervention="patch", seed=0, model="x")
    assert [r["condition"] for r in got] == list(vals) and [r["kind"] for r in got][:2] == ["baseline", "top"]
    top = got[1]
    assert np.isclose(top["m"], np.mean(vals["top-2"])) and np.isclose(top["m_lo"], mean_ci(vals["top-2"])["ci_low"])
    assert np.isclose(top["m_change"], np.mean(np.subtract(vals["top-2"], vals["baseline"])))
    assert got[0]["m_change"] == 0 and list(top)[:5] == ["intervention", "condition", "kind", "model", "m"]
