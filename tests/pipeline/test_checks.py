"""Params are checked before anything runs, for every phase: each key's type and range, keys against each other,
models, and the runs a phase reads; each error is one line naming the file that set the value, the key and
what would be valid."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

import lib.paths as paths
from lib.emotions import EMOTIONS, TARGET_EMOTIONS
from lib.phases import emotion_choices, phase_module
from lib.pipeline.checks import check_values
from lib.pipeline.params import ParamsError, all_keys, effective_params
from lib.pipeline.ranges import BLOCK_SITES
from lib.pipeline.runner import stems

REAL_PARAMS = paths.PARAMS


@pytest.fixture
def params_dir(tmp_path, monkeypatch):
    """A copy of params/ to edit (results in an empty folder); the real notebooks."""
    shutil.copytree(REAL_PARAMS, tmp_path / "params")
    monkeypatch.setattr(paths, "PARAMS", tmp_path / "params")
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    return tmp_path / "params"


def edit(folder, name, **values):
    path = folder / f"{name}.yaml"
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    path.write_text(yaml.safe_dump({**(data or {}), **values}))


def check(stem, run="default"):
    check_values(stem, effective_params(stem, run, overlay_keys_known=all_keys()))


def refused(stem, message, run="default") -> str:
    with pytest.raises(ParamsError, match=message) as err:
        check(stem, run)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_every_real_params_file_validates(monkeypatch):
    import lib.models.registry as registry

    for stem in stems():
        check(stem)
    # The seed overlay needs hub models (offline: refused, naming the overlay); with them at hand, its values pass.
    with pytest.raises(ParamsError, match=r"^params/seed.yaml: models: model 'gpt2' .* not in the local Hugging Face"):
        check("00_models", "seed")
    monkeypatch.setattr(registry, "check_available", lambda spec: None)
    own_stores = "activations_run" in (yaml.safe_load((REAL_PARAMS / "seed.yaml").read_text()) or {})
    for stem in stems():
        params = effective_params(stem, "seed", overlay_keys_known=all_keys())
        if params.get("activations_run") and not own_stores:
            # Phases 03-05 of seed would read phase 02's default run, which has no stores of the seed models: the
            # overlay needs activations_run: seed and vectors_run: seed. --check says so before anything runs.
            with pytest.raises(ParamsError, match=r"activations_run = 'default' \(phase 02 of run 'default' stores "
                                                  r"no hook_resid_post of gpt2 on baseline"):
                check_values(stem, params)
        else:
            check_values(stem, params)


F01, F02, F03, F04, F05 = (f"params/{s}.yaml" for s in ("01_dataset", "02_activations", "03_emotion_vectors",
                                                         "04_cross_model_alignment", "05_heads"))


@pytest.mark.parametrize("stem, values, message", [
    ("01_dataset", {"near_duplicate_threshold": 7.5}, f"{F01}: near_duplicate_threshold = 7.5; valid: a number from 0 to 1$"),
    ("01_dataset", {"examples_per_emotion": -3}, f"{F01}: examples_per_emotion = -3; valid: an integer >= 1$"),
    ("01_dataset", {"profiles": ["goemotions:dev"]}, f"{F01}: profiles = .*valid: .* one of \\['baseline', 'extended', 'goemotions'\\]$"),
    ("03_emotion_vectors", {"n_splits": 2}, f"{F03}: n_splits = 2; valid: an integer >= 3$"),
    ("00_models", {"models": []}, r"params/00_models.yaml: models = \[\]; valid: a non-empty list of distinct entries"),
    ("02_activations", {"models": None}, f"{F02}: models = null; valid: a non-empty list"),
    ("02_activations", {"profiles": None}, f"{F02}: profiles = null; valid: a non-empty list"),
    ("02_activations", {"batch_size": 0}, f"{F02}: batch_size = 0; valid: an integer >= 1$"),
    ("02_activations", {"dtype": "bfloat16"}, f"{F02}: dtype = 'bfloat16' .*valid: one of \\['float16', 'float32'\\]$"),
    ("02_activations", {"layers": [1, 1]}, f"{F02}: layers = \\[1, 1\\] \\(repeated: \\[1\\]\\); valid: null \\(every layer\\)"),
    ("02_activations", {"layers": [-1]}, f"{F02}: layers = \\[-1\\] \\(bad entry -1\\); valid: null"),
    ("02_activations", {"layers": []}, f"{F02}: layers = \\[\\]; valid: null \\(every layer\\) or a non-empty list"),
    ("02_activations", {"goemotions_max_per_emotion": 0}, f"{F02}: goemotions_max_per_emotion = 0; valid: null \\(no cap\\)"),
    ("02_activations", {"stores_dir": ""}, f"{F02}: stores_dir = ''; valid: a folder"),
    ("02_activations", {"device": "gpu"}, f"{F02}: device = 'gpu'; valid: auto, cpu, cuda, cuda:N or mps$"),
    ("02_activations", {"hooks": ["blocks.0.hook_resid_psot"]}, f"{F02}: hooks = .*bad entry 'blocks.0.hook_resid_psot'.*valid: a list of distinct entries, each a full hook name"),
    ("02_activations", {"hooks": ["blocks.1.hook_resid_post"], "layers": [1]}, f"{F02}: layers = \\[1\\] \\(hooks = \\['blocks.1.hook_resid_post'\\] is set in .*\\); valid: null when hooks are given"),
    ("02_activations", {"hooks": ["blocks.1.hook_resid_post"], "per_head": True, "token_sites": []}, f"{F02}: per_head = true .*valid: false when hooks are given"),
    ("02_activations", {"token_sites": ["hook_resid_psot"]}, f"{F02}: token_sites = \\['hook_resid_psot'\\] \\(bad entry 'hook_resid_psot'; closest: \\['hook_resid_post'"),
    ("02_activations", {"token_sites": ["attn.hook_z"]}, f"{F02}: token_sites = \\['attn.hook_z'\\] \\(not extracted: \\['attn.hook_z'\\]\\); valid: \\['\\*'\\] \\(every site\\), or some of the sites this run extracts: \\['hook_resid_pre', 'hook_resid_post', 'hook_mlp_out', 'hook_attn_out'\\]$"),
    ("02_activations", {"control_sites": []}, f"{F02}: control_sites = \\[\\] \\(control_models = .*\\); valid: a non-empty list when control_models"),
    ("02_activations", {"emotions": ["anger", "anger"]}, f"{F02}: emotions = .*repeated: \\['anger'\\]"),
    ("03_emotion_vectors", {"var_threshold": 0}, f"{F03}: var_threshold = 0; valid: a number > 0 and <= 1$"),
    ("03_emotion_vectors", {"var_threshold": 1.5}, f"{F03}: var_threshold = 1.5; valid: a number > 0 and <= 1$"),
    ("03_emotion_vectors", {"max_per_emotion": 0}, f"{F03}: max_per_emotion = 0; valid: null \\(no cap\\) or an integer >= 1$"),
    ("03_emotion_vectors", {"methods": ["pca"]}, f"{F03}: methods = \\['pca'\\] \\(missing \\['mean_vs_neutral'\\]\\)"),
    ("03_emotion_vectors", {"readings": ["span"]}, f"{F03}: readings = .*missing \\['sentence_end'\\]"),
    ("03_emotion_vectors", {"transfer_profiles": ["goemotions:train"]}, f"{F03}: transfer_profiles = .*valid: two profiles"),
    ("03_emotion_vectors", {"fit_profiles": ["baseline"]}, f"{F03}: fit_profiles = \\['baseline'\\]; valid: a list of at least 2"),
    ("03_emotion_vectors", {"site": "resid_post"}, f"{F03}: site = 'resid_post' \\(closest: \\['hook_resid_post'"),
    ("03_emotion_vectors", {"control_models": ["random:smollm2-135m"]}, f"{F03}: control_models = .*valid: one control per model"),
    ("03_emotion_vectors", {"seed": -1}, f"{F03}: seed = -1; valid: an integer from 0 to 4294967295$"),
    ("04_cross_model_alignment", {"n_perm": -1}, f"{F04}: n_perm = -1; valid: an integer >= 0"),
    ("04_cross_model_alignment", {"kinds": ["rbf"]}, f"{F04}: kinds = .*missing \\['linear'\\]"),
    ("04_cross_model_alignment", {"reduction": "last"}, f"{F04}: reduction = 'last'.*valid: one of \\['sentence_end', 'mean', 'span'\\]$"),
    ("04_cross_model_alignment", {"models": ["smollm2-135m"], "control_models": []}, f"{F04}: models = .*valid: at least two models"),
    ("05_heads", {"n_random": 0}, f"{F05}: n_random = 0; valid: an integer >= 1$"),
    ("05_heads", {"top_k": 0}, f"{F05}: top_k = 0; valid: an integer >= 1$"),
    ("05_heads", {"ks": [1, 0]}, f"{F05}: ks = \\[1, 0\\] \\(bad entry 0\\); valid: a non-empty list"),
    ("05_heads", {"ks": [2, 2]}, f"{F05}: ks = \\[2, 2\\] \\(repeated: \\[2\\]\\)"),
    ("05_heads", {"heads": "0-1"}, f"{F05}: heads = '0-1'; valid: '' \\(none\\) or a head set"),
    ("05_heads", {"emotions": ["neutral"]}, f"{F05}: emotions = \\['neutral'\\].*each one of \\['gratitude', 'anger', 'apology'\\]$"),
    ("05_heads", {"prompt_profiles": ["goemotions:dev"]}, f"{F05}: prompt_profiles = "),
])
def test_bad_values_are_refused_naming_file_key_and_valid_values(params_dir, stem, values, message):
    edit(params_dir, stem, **values)
    refused(stem, message)


def test_a_value_from_an_overlay_or_a_notebook_default_names_that_file(params_dir):
    edit(params_dir, "wide", n_splits=2)
    refused("03_emotion_vectors", r"^\S*/params/wide.yaml: n_splits = 2; valid: an integer >= 3$", run="wide")
    edit(params_dir, "wide", n_splits=5, examples_per_emotion="3")
    refused("01_dataset", r"^\S*/params/wide.yaml: examples_per_emotion = '3'; valid: an integer >= 1$", run="wide")
    data = yaml.safe_load((params_dir / "02_activations.yaml").read_text())
    del data["stores_dir"]
    (params_dir / "02_activations.yaml").write_text(yaml.safe_dump(data))
    refused("02_activations", r"^notebooks/02_activations.py \(default\): stores_dir = ''; valid: a folder")


@pytest.mark.parametrize("key, stem", [("activations_run", "03_emotion_vectors"), ("vectors_run", "05_heads")])
def test_runs_read_must_exist_and_not_be_paths(params_dir, key, stem):
    edit(params_dir, stem, **{key: "../x"})
    refused(stem, f"{key} = '../x'; valid: '' .* or a run name")
    edit(params_dir, stem, **{key: "nope"})
    refused(stem, f"{key} = 'nope' \\(phase 0[23]_[a-z_]+ has no run 'nope'\\); valid: '' or a run: "
                  f"\\['default', 'seed', 'synthetic-large'\\]")
    edit(params_dir, "nope", seed=0)  # an overlay is a run this project can make
    check(stem)


def test_a_run_read_from_must_store_what_the_phase_reads(params_dir):
    edit(params_dir, "small", models=["tiny-gpt2"], control_models=["random:tiny-gpt2"])
    msg = refused("03_emotion_vectors", r"^\S*/params/03_emotion_vectors.yaml: activations_run = 'default' \(phase 02 of "
                  r"run 'default' stores no hook_resid_post of tiny-gpt2 on baseline and \d+ more\)", run="small")
    assert msg.endswith("/params/small.yaml") and "this phase's models are set in" in msg
    edit(params_dir, "small", activations_run="small", vectors_run="small")
    for stem in stems():
        check(stem, "small")
    edit(params_dir, "03_emotion_vectors", site="hook_mlp_in")
    refused("03_emotion_vectors", r"stores no hook_mlp_in of smollm2-135m on baseline")
    edit(params_dir, "03_emotion_vectors", site="hook_resid_post")
    edit(params_dir, "02_activations", emotions=["anger", "neutral"])
    refused("05_heads", r"activations_run = 'default' \(phase 02 of run 'default' keeps only emotions \['anger', "
                        r"'neutral'\]; missing \['gratitude', 'apology'\]\)")


def test_a_finished_run_that_is_no_overlay_is_read_from_its_manifest(params_dir):
    folder = paths.RESULTS / "02_activations" / "old"
    folder.mkdir(parents=True)
    p2 = effective_params("02_activations")
    (folder / "manifest.json").write_text(json.dumps({"params": {**p2, "models": ["smollm2-135m"]}}))
    edit(params_dir, "04_cross_model_alignment", activations_run="old")
    refused("04_cross_model_alignment", r"stores no hook_resid_post of gemma3-270m on baseline")
    edit(params_dir, "04_cross_model_alignment", models=["smollm2-135m"], control_models=["random:smollm2-135m"])
    check("04_cross_model_alignment")


def test_vectors_run_must_hold_the_same_directions(params_dir):
    edit(params_dir, "05_heads", fit_profiles=["baseline"])
    refused("05_heads", r"vectors_run = 'default' \(phase 03 of run 'default' fits its directions on "
                        r"\{'fit_profiles': \['baseline', 'extended'\]\}; this phase on \{'fit_profiles': \['baseline'\]\}\)")
    edit(params_dir, "05_heads", fit_profiles=["extended", "baseline"])  # the same rows, another order
    check("05_heads")
    edit(params_dir, "03_emotion_vectors", models=["smollm2-135m"], control_models=["random:smollm2-135m"])
    refused("05_heads", r"\(phase 03 of run 'default' has no directions of \['gemma3-270m'\]\)")


def test_plain_dicts_are_named_by_phase():
    with pytest.raises(ParamsError, match=r"^params for 00_models: models: unknown model 'smolm2'"):
        check_values("00_models", {"models": ["smolm2"]})
    with pytest.raises(ParamsError, match=r"params for 01_dataset: profiles = \['goemotion'\] \(bad entry 'goemotion'; "
                                          r"closest: \['goemotions'"):
        check_values("01_dataset", {"profiles": ["goemotion"]})
    with pytest.raises(ParamsError, match=r"dtype = 'fp16'.*valid: one of \['float32', 'float16', 'bfloat16'\]"):
        check_values("00_models", {"dtype": "fp16"})
    with pytest.raises(ParamsError, match=r"control_models: unknown model 'gemma'"):
        check_values("03_emotion_vectors", {"control_models": ["random:gemma"]})
    with pytest.raises(ParamsError, match=r"bad entry 'extnded'"):
        check_values("03_emotion_vectors", {"fit_profiles": ["baseline", "extnded"]})
    check_values("03_emotion_vectors", {"models": ["tiny-gpt2"], "control_models": ["random:tiny-gpt2"],
                                        "transfer_profiles": ["goemotions:train", "goemotions:dev"]})
    with pytest.raises(ParamsError, match=r"params for 05_heads: emotions = \['angre'\] \(bad entry 'angre'; closest: "
                                          r"\['anger'\]\); valid: a non-empty list of distinct entries, each one of "
                                          r"\['gratitude', 'anger', 'apology'\]$"):
        check_values("05_heads", {"emotions": ["angre"]})
    with pytest.raises(ParamsError, match=r"05_heads: emotions = \['neutral'\]"):
        check_values("05_heads", {"emotions": ["neutral"]})
    with pytest.raises(ParamsError, match=r"emotions = \[\]; valid: a non-empty list"):
        check_values("05_heads", {"emotions": []})
    check_values("02_activations", {"emotions": ["neutral", "anger"]})
    check_values("02_activations", {"emotions": None})


def test_random_control_of_an_uncached_hub_model_is_refused_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ParamsError, match=r"not in the local Hugging Face cache"):
        check_values("02_activations", {"control_models": ["random:gpt2"]})


def test_every_key_holding_profiles_is_checked():
    with pytest.raises(ParamsError, match=r"params for 05_heads: prompt_profiles = \['baseline', 'extnded'\]"):
        check_values("05_heads", {"prompt_profiles": ["baseline", "extnded"]})
    with pytest.raises(ParamsError, match=r"bad entry 'goemotions:test'"):
        check_values("03_emotion_vectors", {"transfer_profiles": ["goemotions:test", "goemotions:dev"]})


def test_each_phase_says_what_its_emotions_may_hold():
    assert phase_module("02_activations").__name__ == "lib.phases.activations"
    assert phase_module("00_models") is None and phase_module("01_dataset") is None
    assert emotion_choices("02_activations") == EMOTIONS  # a filter over the dataset's labels
    assert emotion_choices("05_heads") == TARGET_EMOTIONS == tuple(e for e in EMOTIONS if e != "neutral")


def test_block_sites_cover_every_site_of_each_architecture(tiny):
    """Every hook inside a block of each supported architecture is a site params may name."""
    sites = {name.split(".", 2)[2] for name in tiny.bridge.hook_dict if name.startswith("blocks.")}
    assert sites <= set(BLOCK_SITES), sorted(sites - set(BLOCK_SITES))
    assert {"hook_resid_post", "attn.hook_z", "hook_mlp_out"} <= sites
