"""ActivationComparator: a model compared with itself gives differences of exactly 0 and ratios of exactly 1 (every
tiny architecture); ratios, log-ratios, ranks and Spearman by hand; structures that differ are one error naming
both; the JSON holds no NaN."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lib.head_strength import ActivationComparator, ActivationExtractor, HeadStrengthResults
from lib.head_strength.results import HeadStrengthError
from lib.models.tiny import TINY_NAMES, build_tiny_model, build_tiny_tokenizer

TEXTS = ["Thank you so much for staying late.", "Sorry.", "Why would you cancel without telling anyone?",
         "The meeting moved to room 4B", "We are grateful for your patience."]


def _extract(name, seed=0, texts=TEXTS, **hooks):
    with ActivationExtractor(build_tiny_model(name, seed=seed), name) as ex:
        if hooks:
            ex.register_hooks(**hooks)
        ex.extract_activations([texts[:2], texts[2:]], tokenizer=build_tiny_tokenizer())
        return ex


@pytest.mark.parametrize("name", TINY_NAMES)
def test_a_model_compared_with_itself_changes_exactly_nothing(name):
    pre, again = _extract(name), _extract(name)  # two runs of the same weights on the same texts
    for fine in (pre, again):
        df = ActivationComparator(pre, fine).compare()
        for prefix in ("", "z_", "last_"):
            assert (df[f"{prefix}difference"] == 0).all()
            assert (df[f"{prefix}ratio"] == 1).all() and (df[f"{prefix}log_ratio"] == 0).all()
            assert (df[f"{prefix}rank_change"] == 0).all()
        s = df.attrs["summary"]
        assert s["mean_ratio"] == 1 and s["geometric_mean_ratio"] == 1 and s["same_inputs"]
        assert s["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert (df["R_pre"] > 0).all() and df["R_pre"].nunique() == len(df)  # the exactness above is not vacuous


def _results(name, mean, heads=(0, 1, 2), n_heads=3, sha="x"):
    mean = np.asarray(mean, dtype=np.float64).reshape(1, 1, -1)
    return HeadStrengthResults([0], list(heads), {"name": name, "n_layers": 1, "n_heads": n_heads,
                                                  "inputs_sha256": sha},
                               {"mean": mean, "last": mean, "z_mean": mean, "n_tokens": np.array([3])})


def test_ratios_log_ratios_and_ranks_by_hand():
    df = ActivationComparator(_results("a", [1.0, 4.0, 2.0]), _results("b", [2.0, 1.0, 2.0])).compare()
    assert df["difference"].tolist() == [1.0, -3.0, 0.0]
    assert df["ratio"].tolist() == [2.0, 0.25, 1.0]
    assert df["log_ratio"].tolist() == pytest.approx([np.log(2), np.log(0.25), 0.0], rel=1e-15)
    assert df["rank_pre"].tolist() == [3, 1, 2]  # 1 = strongest
    assert df["rank_fine"].tolist() == [1, 3, 1]  # ties share the lowest rank
    assert df["rank_change"].tolist() == [2, -2, 1]
    s = df.attrs["summary"]
    assert s["mean_ratio"] == pytest.approx((2 + 0.25 + 1) / 3) and s["median_ratio"] == 1.0
    assert s["geometric_mean_ratio"] == pytest.approx(0.5 ** (1 / 3), rel=1e-12)
    ra, rb = np.array([1, 3, 2.0]), np.array([2.5, 1, 2.5])  # average ranks, as Spearman uses
    want = np.corrcoef(ra, rb)[0, 1]
    assert s["spearman"] == pytest.approx(want, rel=1e-12)


def test_zero_strength_gives_nan_ratio_and_json_null(tmp_path):
    comp = ActivationComparator(_results("a", [0.0, 1.0, 2.0]), _results("b", [1.0, 1.0, 3.0], sha="y"))
    df = comp.compare()
    assert np.isnan(df["ratio"][0]) and np.isnan(df["log_ratio"][0]) and df["ratio"][2] == 1.5
    path = comp.save_comparison(tmp_path / "c.json")

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    body = json.loads(path.read_text(), parse_constant=no_constants)
    assert body["per_head"][0]["ratio"] is None and body["per_head"][2]["ratio"] == 1.5
    assert body["summary"]["same_inputs"] is False and body["pre"]["name"] == "a"
    assert [(r["layer"], r["head"]) for r in body["per_head"]] == [(0, 0), (0, 1), (0, 2)]


def test_structures_that_differ_are_one_error_naming_both():
    with pytest.raises(HeadStrengthError, match=r"pre-tuned 'a' has 1 layers x 3 heads.*fine-tuned 'b' has 1 x 4"):
        ActivationComparator(_results("a", [1, 2, 3.0]), _results("b", [1, 2, 3.0], n_heads=4))
    with pytest.raises(HeadStrengthError, match=r"hooked layers \[0\], heads \[0, 1, 2\].*heads \[1, 2, 3\]"):
        ActivationComparator(_results("a", [1, 2, 3.0], n_heads=4), _results("b", [1, 2, 3.0], (1, 2, 3), 4))
    with pytest.raises(HeadStrengthError, match="must be an ActivationExtractor"):
        ActivationComparator(3, _results("b", [1, 2, 3.0]))


def test_fine_tuned_weights_and_other_inputs_are_told_apart(tmp_path):
    pre = _extract("tiny-gpt2", layers=[1], heads=[0, 3])
    fine = _extract("tiny-gpt2", seed=1, layers=[1], heads=[0, 3])
    pre.save_results(tmp_path / "pre.json")
    df = ActivationComparator(tmp_path / "pre.json", fine).compare()
    assert (df["difference"] != 0).all() and df.attrs["summary"]["same_inputs"]
    assert df["R_pre"].tolist() == [pre.compute_R_h()[(1, 0)], pre.compute_R_h()[(1, 3)]]
    other = _extract("tiny-gpt2", texts=TEXTS[::-1], layers=[1], heads=[0, 3])
    assert not ActivationComparator(pre, other).summary()["same_inputs"]


def test_visualize_writes_png_and_self_contained_html(tmp_path):
    comp = ActivationComparator(_extract("tiny-llama"), _extract("tiny-llama", seed=1))
    png, html = comp.visualize_comparison(tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and html == tmp_path / "heat.html"
    text = html.read_text()
    assert "<script src=" not in text and len(text) > 1_000_000  # plotly.js inline: renders offline
    assert text.count("Plotly.newPlot") == 1 and text.count('"hovertemplate":"layer %{y}, head %{x}') == 4
    assert f"{comp.compare()['R_pre'][0]:.6g}"[:6] in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.html", "heat.png"]  # nothing left aside
