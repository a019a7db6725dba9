"""Values every phase shares, checked before anything runs: models, dataset profiles, emotions, device, dtype.

A key named ``profiles`` or ending in ``_profiles`` holds dataset profiles; what ``emotions`` may hold is
the phase's own business (``lib.phases.emotion_choices``).
"""
from __future__ import annotations

from lib.pipeline.params import ParamsError

__all__ = ["check_values", "check_profile_spec"]


def check_profile_spec(spec: str) -> None:
    """A ValueError unless ``spec`` is a dataset profile, or ``goemotions:train`` / ``goemotions:dev``."""
    from lib.text.datasets import PROFILES

    profile, _, split = spec.partition(":")
    if profile not in PROFILES or (split and (profile != "goemotions" or split not in ("train", "dev"))):
        raise ValueError(f"unknown profile {spec!r}; valid: {list(PROFILES)}, or goemotions:train / goemotions:dev")


def _check_models(params: dict) -> None:
    from lib.models.registry import check_available, resolve_spec

    for name in [*params.get("models", []), *params.get("control_models", [])]:
        spec = resolve_spec(name)
        check_available(resolve_spec(spec.source) if spec.kind == "random" else spec)


def _check_emotions(stem: str, emotions: list[str]) -> None:
    from lib.phases import emotion_choices

    valid = emotion_choices(stem)
    bad = [e for e in emotions if e not in valid]
    if bad or not emotions:
        raise ValueError(f"emotions {emotions!r}: {bad or 'empty'}; valid: a non-empty subset of {list(valid)}")


def check_values(stem: str, params: dict) -> None:
    """Raise ParamsError, naming the phase, unless the shared values of ``params`` are valid here."""
    from lib.models.registry import ModelUnavailableError, resolve_device, resolve_dtype

    try:
        _check_models(params)
        for key in [k for k in params if k == "profiles" or k.endswith("_profiles")]:
            for spec in params[key] or []:
                check_profile_spec(spec)
        if params.get("emotions") is not None:
            _check_emotions(stem, params["emotions"])
        if "device" in params:
            resolve_device(params["device"])
        if "dtype" in params:
            resolve_dtype(params["dtype"])
    except (ValueError, ModelUnavailableError) as err:
        raise ParamsError(f"params for {stem}: {err}") from err
