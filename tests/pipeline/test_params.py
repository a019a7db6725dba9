"""Params files: real ones validate; unknown keys, reserved keys, wrong types and runs are errors."""
from __future__ import annotations

import pytest

import lib.paths as paths
import lib.pipeline.params as P
from lib.pipeline.runner import stems

NOTEBOOK = '''# %% tags=["parameters"]
models = ["tiny-gpt2"]
seed = 0
rate = 0.5
output_dir = ""
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    (tmp_path / "nb").mkdir()
    (tmp_path / "params").mkdir()
    (tmp_path / "nb" / "00_x.py").write_text(NOTEBOOK)
    monkeypatch.setattr(paths, "NOTEBOOKS", tmp_path / "nb")  # read from lib.paths at call time
    monkeypatch.setattr(paths, "PARAMS", tmp_path / "params")
    return tmp_path / "params"


def test_every_real_params_file_validates():
    keys = set().union(*(P.notebook_parameters(s) for s in stems()))
    for stem in stems():
        for run in ("default", "seed"):
            params = P.effective_params(stem, run, overlay_keys_known=keys)
            assert set(params) == set(P.notebook_parameters(stem))
    assert P.effective_params("00_models", "seed", overlay_keys_known=keys)["models"] == ["gpt2", "pythia-160m", "gpt-neo-125m"]


def test_defaults_then_file_then_overlay(fake):
    (fake / "00_x.yaml").write_text("seed: 3\nrate: 1\n")
    (fake / "wide.yaml").write_text("models: [a, b]\n")
    assert P.effective_params("00_x") == {"models": ["tiny-gpt2"], "seed": 3, "rate": 1, "output_dir": ""}
    assert P.effective_params("00_x", "wide")["models"] == ["a", "b"]


@pytest.mark.parametrize("text, message", [
    ("sede: 3\n", r"00_x.yaml: unknown key\(s\) \['sede'\] for notebook 00_x; valid keys: \['models', 'rate', 'seed'\]"),
    ("output_dir: /tmp\n", r"set by the pipeline"),
    ("seed: three\n", r"parameter 'seed' should be int like its default 0, got 'three'"),
    ("- a\n- b\n", r"expected a mapping"),
    ("seed: [1\n", r"not valid YAML"),
    ("rate: true\n", r"parameter 'rate' should be float like its default 0.5, got True"),
    ("models: [1]\n", r"parameter 'models' should be a list of str like its default \['tiny-gpt2'\]; got \[1\] in it"),
])
def test_bad_params_files(fake, text, message):
    (fake / "00_x.yaml").write_text(text)
    with pytest.raises(P.ParamsError, match=message):
        P.effective_params("00_x")


def test_unknown_run_and_overlay_key(fake):
    (fake / "00_x.yaml").write_text("seed: 1\n")
    with pytest.raises(P.ParamsError, match=r"no overlay .*nope.yaml for run 'nope'"):
        P.effective_params("00_x", "nope")
    (fake / "wide.yaml").write_text("output_dir: /etc\n")
    with pytest.raises(P.ParamsError, match=r"\['output_dir'\] are set by the pipeline"):
        P.effective_params("00_x", "wide")
    (fake / "wide.yaml").write_text("modles: [a]\n")
    with pytest.raises(P.ParamsError, match=r"unknown key\(s\) \['modles'\]"):
        P.effective_params("00_x", "wide")


def test_missing_notebook_and_missing_parameters_cell(fake):
    with pytest.raises(P.ParamsError, match="known stems: \\['00_x'\\]"):
        P.notebook_parameters("99_nope")
    (fake.parent / "nb" / "01_y.py").write_text("# %%\nx = 1\n")
    with pytest.raises(P.ParamsError, match="exactly one"):
        P.notebook_parameters("01_y")
