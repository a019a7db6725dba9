"""Shared params values are checked before anything runs, with errors that name the phase and the valid values."""
from __future__ import annotations

import pytest

from lib.emotions import EMOTIONS, TARGET_EMOTIONS
from lib.phases import emotion_choices, phase_module
from lib.pipeline.checks import check_values
from lib.pipeline.params import ParamsError


def test_shared_values_are_checked_before_running():
    with pytest.raises(ParamsError, match=r"params for 00_models: unknown model 'smolm2'"):
        check_values("00_models", {"models": ["smolm2"]})
    with pytest.raises(ParamsError, match=r"unknown profile 'goemotion'"):
        check_values("01_dataset", {"profiles": ["goemotion"]})
    with pytest.raises(ParamsError, match=r"dtype 'fp16' is not one of"):
        check_values("00_models", {"dtype": "fp16"})
    with pytest.raises(ParamsError, match=r"unknown model 'gemma'"):
        check_values("03_emotion_vectors", {"control_models": ["random:gemma"]})
    with pytest.raises(ParamsError, match=r"unknown profile 'extnded'"):
        check_values("03_emotion_vectors", {"fit_profiles": ["baseline", "extnded"]})
    check_values("03_emotion_vectors", {"models": ["tiny-gpt2"], "control_models": ["random:tiny-gpt2"],
                                           "transfer_profiles": ["goemotions:train", "goemotions:dev"]})
    with pytest.raises(ParamsError, match=r"emotions \['angre'\]: \['angre'\]; valid: a non-empty subset of \['gratitude', 'anger', 'apology'\]"):
        check_values("05_heads", {"emotions": ["angre"]})
    with pytest.raises(ParamsError, match=r"05_heads: emotions \['neutral'\]"):
        check_values("05_heads", {"emotions": ["neutral"]})
    with pytest.raises(ParamsError, match=r"emotions \[\]: empty"):
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
    with pytest.raises(ParamsError, match=r"params for 05_heads: unknown profile 'extnded'"):
        check_values("05_heads", {"prompt_profiles": ["baseline", "extnded"]})
    with pytest.raises(ParamsError, match=r"unknown profile 'goemotions:test'"):
        check_values("03_emotion_vectors", {"transfer_profiles": ["goemotions:test"]})


def test_each_phase_says_what_its_emotions_may_hold():
    assert phase_module("02_activations").__name__ == "lib.phases.activations"
    assert phase_module("00_models") is None and phase_module("01_dataset") is None
    assert emotion_choices("02_activations") == EMOTIONS  # a filter over the dataset's labels
    assert emotion_choices("05_heads") == TARGET_EMOTIONS == tuple(e for e in EMOTIONS if e != "neutral")
