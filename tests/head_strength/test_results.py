"""Results files: a round trip keeps every per-sample array bit for bit; a missing, damaged, replaced or edited
file is one ResultsFileError naming it; statistics by hand from the per-sample arrays."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lib.head_strength import ActivationExtractor, load_results
from lib.head_strength.results import HeadStrengthResults, ResultsFileError, samples_path
from lib.models.tiny import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("results") / "pre.json"
    with ActivationExtractor(build_tiny_model("tiny-llama"), "tiny-llama") as ex:
        ex.register_hooks(layers=[1], heads=[0, 2, 3])
        ex.extract_activations([["Thank you so much.", "Sorry."], ["Why on earth would you cancel?"]],
                               tokenizer=build_tiny_tokenizer())
        ex.save_results(path)
        return path, ex.results()


def test_round_trip_is_exact(saved):
    path, results = saved
    for loaded in (load_results(path), ActivationExtractor.load_results(path)):
        assert (loaded.layers, loaded.heads) == ([1], [0, 2, 3])
        for key, value in results.per_sample.items():
            assert np.array_equal(loaded.per_sample[key], value) and loaded.per_sample[key].dtype == value.dtype
        assert loaded.compute_R_h() == results.compute_R_h()
        assert loaded.identity == json.loads(json.dumps(results.identity))
    body = json.loads(path.read_text())
    assert body["samples_file"]["name"] == "pre.samples.safetensors" and samples_path(path).is_file()
    assert [(s["layer_idx"], s["head_idx"]) for s in body["stats"]] == [(1, 0), (1, 2), (1, 3)]


def test_stats_by_hand():
    mean = np.array([[[1.0, 4.0]], [[3.0, 8.0]]])
    r = HeadStrengthResults([2], [0, 5], {"name": "m"}, {"mean": mean, "last": mean * 2, "z_mean": mean + 1,
                                                          "n_tokens": np.array([3, 4])})
    s = r.get_all_stats()[1]
    assert (s.layer_idx, s.head_idx, s.R_h, s.R_h_last, s.z_norm, s.n_samples, s.n_tokens) == (2, 5, 6.0, 12.0, 7.0,
                                                                                                2, 7)
    assert s.R_h_std == pytest.approx(np.sqrt(8.0), rel=1e-15)  # ddof=1 over samples
    with pytest.raises(ResultsFileError, match=r"shape \(2, 1, 1\); expected \(2, 1, 2\)"):
        HeadStrengthResults([2], [0, 5], {}, {"mean": mean[..., :1], "last": mean, "z_mean": mean,
                                              "n_tokens": np.array([3, 4])})


def _copy(saved, tmp_path):
    path, _ = saved
    dst = tmp_path / path.name
    dst.write_bytes(path.read_bytes())
    samples_path(dst).write_bytes(samples_path(path).read_bytes())
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), "no such results file"),
    (lambda p: p.write_text(p.read_text()[:50]), "is not valid JSON"),
    (lambda p: p.write_text(json.dumps([1, 2])), "is not a head-strength results file"),
    (lambda p: samples_path(p).unlink(), "per-sample arrays pre.samples.safetensors are missing"),
    (lambda p: samples_path(p).write_bytes(samples_path(p).read_bytes()[:-8]), "sha256 differs"),
    (lambda p: p.write_text(p.read_text().replace('"R_h": ', '"R_h": 1')), "does not match its per-sample arrays"),
    (lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "layers"})),
     "lacks the field 'layers'"),
])
def test_damaged_files_are_one_clear_error(saved, tmp_path, damage, message):
    path = _copy(saved, tmp_path)
    damage(path)
    with pytest.raises(ResultsFileError, match=message):
        load_results(path)
