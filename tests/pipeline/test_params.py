"""Params files: real ones validate; unknown keys, reserved keys, wrong types and runs are errors that name
the file holding the value; every notebook parameter has a declared rule."""
from __future__ import annotations

import pytest

import lib.paths as paths
import lib.pipeline.params as P
from lib.pipeline.ranges import problem, rule_for
from lib.pipeline.runner import main, stems

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
    ("seed: three\n", r"00_x.yaml: seed = 'three'; valid: an integer from 0 to 4294967295$"),
    ("- a\n- b\n", r"expected a mapping"),
    ("seed: [1\n", r"not valid YAML"),
    ("rate: true\n", r"00_x.yaml: rate = true; valid: float like its default 0.5$"),
    ("models: [1]\n", r"00_x.yaml: models = \[1\] \(bad entry 1\); valid: a non-empty list of distinct entries, each a model"),
    ("models:\n", r"00_x.yaml: models = null; valid: a non-empty list"),
    ("seed: -1\n", r"00_x.yaml: seed = -1; valid: an integer from 0 to"),
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


def test_every_notebook_parameter_has_a_rule():
    """A new phase must declare what each of its parameters may hold (lib/pipeline/ranges.py)."""
    missing = [(stem, key) for stem in stems() for key in P.notebook_parameters(stem)
               if key not in P.RESERVED and rule_for(stem, key) is None]
    assert not missing, f"parameters without a rule in lib/pipeline/ranges.py: {missing}"


def test_notebook_defaults_obey_their_rules():
    """The smoke defaults are valid values, except ``stores_dir: ""``, which only an interactive run may use."""
    bad = [(stem, key, value) for stem in stems() for key, value in P.notebook_parameters(stem).items()
           if key not in P.RESERVED and problem(rule_for(stem, key), value) is not None]
    assert bad == [("02_activations", "stores_dir", "")]


def test_errors_name_the_file_that_set_the_value(fake):
    (fake / "00_x.yaml").write_text("seed: 1\n")
    (fake / "wide.yaml").write_text("seed: three\n")
    with pytest.raises(P.ParamsError, match=r"^\S*params/wide.yaml: seed = 'three'; valid: an integer"):
        P.effective_params("00_x", "wide")
    (fake / "wide.yaml").write_text("models: []\n")
    with pytest.raises(P.ParamsError, match=r"^\S*params/wide.yaml: models = \[\]; valid: a non-empty list"):
        P.effective_params("00_x", "wide")
    (fake / "wide.yaml").write_text("rate: 2\n")
    params = P.effective_params("00_x", "wide")
    assert params.run == "wide" and params == {"models": ["tiny-gpt2"], "seed": 1, "rate": 2, "output_dir": ""}
    assert [params.sources[k].rsplit("/", 2)[-2:] for k in ("models", "seed", "rate")] == [
        ["nb", "00_x.py (default)"], ["params", "00_x.yaml"], ["params", "wide.yaml"]]


@pytest.mark.parametrize("run", ["../../x", "a/b", "", ".hidden", "x y", "-x"])
def test_run_names_are_not_paths(fake, run):
    (fake.parent / "x.yaml").write_text("seed: 1\n")  # outside params/: must never be read
    with pytest.raises(P.ParamsError, match=r"^run name .* is not valid; valid: letters, digits"):
        P.effective_params("00_x", run)


def test_a_phase_is_not_a_run(fake):
    (fake / "00_x.yaml").write_text("seed: 1\n")
    with pytest.raises(P.ParamsError, match=r"^run name '00_x' is a phase's name, not a run; known runs: \['default'\]"):
        P.effective_params("00_x", "00_x")


def test_command_line_refuses_a_run_name_outside_params(capsys):
    assert main(["--run", "../../x", "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run name '../../x' is not valid") and err.count("\n") == 1
