"""Params checked before anything runs, for every phase of a run: each key against its rule
(``lib.pipeline.ranges``), keys against each other within a phase, models against the registry, the
device, and the runs a phase reads (``activations_run``, ``vectors_run``) against what those runs make.

Errors are one line naming the file that set the value (``Params.sources``; ``params for <stem>`` when
given a plain dict), the key, and what would be valid. What ``emotions`` may hold is the phase's own
business (``lib.phases.emotion_choices``).
"""
from __future__ import annotations

import json

from lib import paths
from lib.emotions import EMOTIONS
from lib.pipeline.params import ParamsError, all_keys, effective_params, known_runs, params_error

__all__ = ["check_values", "check_profile_spec"]


def check_profile_spec(spec: str) -> None:
    """A ValueError unless ``spec`` is a dataset profile, or ``goemotions:train`` / ``goemotions:dev``."""
    from lib.text.datasets import PROFILES

    profile, _, split = spec.partition(":")
    if profile not in PROFILES or (split and (profile != "goemotions" or split not in ("train", "dev"))):
        raise ValueError(f"unknown profile {spec!r}; valid: {list(PROFILES)}, or goemotions:train / goemotions:dev")


def _src(stem: str, params: dict, key: str) -> str:
    return getattr(params, "sources", {}).get(key, f"params for {stem}")


def _check_rules(stem: str, params: dict) -> None:
    from lib.pipeline.ranges import describe, problem, rule_for

    for key, value in params.items():
        rule = rule_for(stem, key)
        hint = problem(rule, value) if rule is not None else None
        if hint is not None:
            raise params_error(_src(stem, params, key), key, value, describe(rule), hint)


def _check_registry(stem: str, params: dict) -> None:
    from lib.models.registry import ModelUnavailableError, check_available, resolve_device, resolve_spec

    for key in ("models", "control_models", "pre_model", "fine_model"):
        value = params.get(key) or []
        for name in [value] if isinstance(value, str) else value:
            try:
                spec = resolve_spec(name)
                check_available(resolve_spec(spec.source) if spec.kind == "random" else spec)
            except (ValueError, ModelUnavailableError) as err:
                raise ParamsError(f"{_src(stem, params, key)}: {key}: {err}") from err
    if "device" in params:
        try:
            resolve_device(params["device"])
        except ValueError as err:
            raise ParamsError(f"{_src(stem, params, 'device')}: device: {err}") from err


# ------------------------------------------------------------------------------------ keys against each other
def extracted_sites(params: dict) -> list[str]:
    """The sites inside a block that phase 02 extracts for its ``models``: those of ``hooks``, else the default
    sites (and ``attn.hook_z`` with ``per_head``)."""
    from lib.activations.plan import DEFAULT_SITES

    if params.get("hooks"):
        return list(dict.fromkeys(h.split(".", 2)[2] for h in params["hooks"]))
    return [*DEFAULT_SITES, *(["attn.hook_z"] if params.get("per_head") else [])]


def _check_extraction(stem: str, p: dict) -> None:
    """Phase 02: nothing a key asks for may be silently ignored."""
    hooks, src = p.get("hooks") or [], lambda key: _src(stem, p, key)
    if hooks and p.get("layers") is not None:
        raise params_error(src("layers"), "layers", p["layers"], f"null when hooks are given (each hook name holds "
                           f"its layer), or hooks: [] to take the default sites at these layers",
                           f"hooks = {hooks} is set in {src('hooks')}")
    if hooks and p.get("per_head"):
        raise params_error(src("per_head"), "per_head", True, "false when hooks are given (name the "
                           "blocks.L.attn.hook_z hooks instead)", f"hooks = {hooks} is set in {src('hooks')}")
    tokens, sites = p.get("token_sites") or [], extracted_sites(p)
    bad = [s for s in tokens if s not in sites]
    if tokens != ["*"] and bad:
        raise params_error(src("token_sites"), "token_sites", tokens, f"['*'] (every site), or some of the sites "
                           f"this run extracts: {sites}", f"not extracted: {bad}")
    if p.get("control_models"):
        for key in ("control_profiles", "control_sites"):
            if key in p and not p[key]:
                raise params_error(src(key), key, p[key], "a non-empty list when control_models are given",
                                   f"control_models = {p['control_models']}")


def _check_probe_controls(stem: str, p: dict) -> None:
    """Phase 03 pairs each model with the control at the same place in ``control_models``."""
    if "models" in p and "control_models" in p and len(p["control_models"]) != len(p["models"]):
        raise params_error(_src(stem, p, "control_models"), "control_models", p["control_models"],
                           f"one control per model, in the order of models = {p['models']}, e.g. "
                           f"{[f'random:{m}' for m in p['models']]}")


def _check_pairs(stem: str, p: dict) -> None:
    """Phase 04 compares every two models, and each model with its ``random:`` control."""
    models, controls = p.get("models") or [], p.get("control_models") or []
    if "models" in p and len(models) < 2 and not any(f"random:{m}" in controls for m in models):
        raise params_error(_src(stem, p, "models"), "models", models, "at least two models, or one with its "
                           "control 'random:<model>' in control_models (nothing to compare otherwise)")


_WITHIN = {"02_activations": _check_extraction, "03_emotion_vectors": _check_probe_controls,
           "04_cross_model_alignment": _check_pairs}


# ---------------------------------------------------------------------------- the runs a phase reads from
def _run_params(phase: str, name: str, stem: str, p: dict, key: str) -> dict | None:
    """The params that made (or will make) run ``name`` of ``phase``: its params files for ``default`` and the
    overlays, else the manifest of an existing result; None if that result's manifest is unreadable."""
    if name in known_runs():
        return effective_params(phase, name, overlay_keys_known=all_keys())
    manifest = paths.RESULTS / phase / name / "manifest.json"
    if manifest.exists():
        try:
            return json.loads(manifest.read_text())["params"]
        except (ValueError, KeyError, TypeError):
            return None  # the phase reading it reports the damaged result itself
    raise params_error(_src(stem, p, key), key, name, f"'' or a run: {known_runs()} (params/<run>.yaml), or one "
                       f"with results in results/{phase}/", f"phase {phase} has no run {name!r}")


def _stores_made(p2: dict) -> dict[tuple[str, str], list[str]]:
    """(model, profile) -> the sites phase 02 stores with params ``p2``."""
    from lib.activations.names import SITES

    made = {(m, q): extracted_sites(p2) for m in p2.get("models", []) for q in p2.get("profiles", [])}
    controls = [SITES.get(s, s) for s in p2.get("control_sites", [])]
    made.update({(c, q): controls for c in p2.get("control_models", []) for q in p2.get("control_profiles", [])})
    return made


# What each later phase reads from phase 02's stores: (model, profile, site), and the emotions it needs rows of.
_STORES_READ = {
    "03_emotion_vectors": lambda p: [(m, q, p["site"]) for m in p["models"]
                                     for q in p["fit_profiles"] + p["transfer_profiles"]]
    + [(c, q, p["site"]) for c in p["control_models"] for q in p["fit_profiles"] + p["transfer_profiles"]],
    "04_cross_model_alignment": lambda p: [(m, q, p["site"]) for m in p["models"] + p["control_models"]
                                           for q in p["profiles"]],
    "05_heads": lambda p: [(m, q, "hook_resid_post") for m in p["models"] for q in p["fit_profiles"]],
}
_EMOTIONS_READ = {"03_emotion_vectors": lambda p: list(EMOTIONS),
                  "05_heads": lambda p: [*p["emotions"], "neutral"]}


def _check_activations_run(stem: str, p: dict) -> None:
    run = p["activations_run"]
    p2 = _run_params("02_activations", run, stem, p, "activations_run")
    if p2 is None or stem not in _STORES_READ:
        return
    made = _stores_made(p2)
    missing = [(m, q, s) for m, q, s in _STORES_READ[stem](p) if s not in made.get((m, q), [])]
    where = _src(stem, p, "activations_run")
    models_from = _src(stem, p, "models")
    also = f"; this phase's models are set in {models_from}" if models_from != where else ""
    if missing:
        m, q, s = missing[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise params_error(where, "activations_run", run, "'' (extract small stores here), or a run whose phase 02 "
                           f"stores every model, profile and site this phase reads{also}",
                           f"phase 02 of run {run!r} stores no {s} of {m} on {q}{more}")
    kept = p2.get("emotions")
    lacking = [e for e in _EMOTIONS_READ.get(stem, lambda _: [])(p) if kept is not None and e not in kept]
    if lacking:
        raise params_error(where, "activations_run", run, "a run whose phase 02 keeps the rows of every emotion "
                           "this phase reads", f"phase 02 of run {run!r} keeps only emotions {kept}; missing {lacking}")


def _check_vectors_run(stem: str, p: dict) -> None:
    """Phase 05 compares its directions with phase 03's: same models, site and rows, else they cannot agree.
    Phase 08 steers with phase 03's directions: same models and site (it reads no stores, so rows are its own)."""
    run, where = p["vectors_run"], _src(stem, p, "vectors_run")
    p3 = _run_params("03_emotion_vectors", run, stem, p, "vectors_run")
    if p3 is None:
        return
    valid = ("'' (phase 05: no comparison; phase 08: directions fitted here), or a phase 03 run with this phase's "
             "models, site hook_resid_post and rows")
    lacking = [m for m in p.get("models", []) if m not in p3.get("models", [])]
    if lacking:
        raise params_error(where, "vectors_run", run, valid, f"phase 03 of run {run!r} has no directions of {lacking}")
    if p3.get("site") != "hook_resid_post":
        raise params_error(where, "vectors_run", run, valid, f"phase 03 of run {run!r} reads {p3.get('site')!r}")
    if "activations_run" not in p:
        return
    rows = ["activations_run", "fit_profiles"] + ([] if p.get("activations_run") else ["max_per_emotion", "seed"])
    differ = [k for k in rows if _same_rows_key(p3.get(k)) != _same_rows_key(p.get(k))]
    if differ:
        theirs = {k: p3.get(k) for k in differ}
        raise params_error(where, "vectors_run", run, valid, f"phase 03 of run {run!r} fits its directions on "
                           f"{theirs}; this phase on {({k: p.get(k) for k in differ})}")


def _same_rows_key(value):
    return sorted(value) if isinstance(value, list) else value


def check_values(stem: str, params: dict) -> None:
    """Raise ParamsError (one line: the file, the key, what would be valid) unless ``params`` are valid for
    phase ``stem``: every key's rule, keys against each other, models and device, the runs it reads."""
    _check_rules(stem, params)
    if stem in _WITHIN:
        _WITHIN[stem](stem, params)
    _check_registry(stem, params)
    if params.get("activations_run"):
        _check_activations_run(stem, params)
    if params.get("vectors_run"):
        _check_vectors_run(stem, params)
