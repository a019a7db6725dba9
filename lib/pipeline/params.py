"""Params files: flat YAML dicts that papermill feeds into a notebook's parameters cell.

``params/<stem>.yaml`` is the embedded default run of notebook ``<stem>``; an overlay
``params/<run>.yaml`` (e.g. ``seed``) changes keys across every notebook that has them.
Unknown keys are errors, never silently ignored.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from lib import paths
from lib.paths import relative

__all__ = ["ParamsError", "notebook_parameters", "read_yaml", "effective_params", "RESERVED"]

# Keys the pipeline sets itself; a params file may not.
RESERVED = ("output_dir",)


class ParamsError(ValueError):
    """A params file that is missing, malformed, or names keys a notebook does not take."""


def notebook_parameters(stem: str) -> dict:
    """Default values of the parameters cell of ``notebooks/<stem>.py``, read without running it."""
    import jupytext

    path = paths.NOTEBOOKS / f"{stem}.py"
    if not path.exists():
        known = sorted(p.stem for p in paths.NOTEBOOKS.glob("[0-9][0-9]_*.py"))
        raise ParamsError(f"no notebook {relative(path)}; known stems: {known}")
    nb = jupytext.read(path)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ParamsError(f"{relative(path)} must have exactly one '# %% tags=[\"parameters\"]' cell, found {len(cells)}")
    scope: dict = {}
    exec(compile(cells[0].source, str(path), "exec"), {}, scope)  # literals only, by convention
    return {k: v for k, v in scope.items() if not k.startswith("_")}


def read_yaml(path: Path) -> dict:
    """A flat YAML mapping; errors name the file."""
    if not path.exists():
        raise ParamsError(f"params file {relative(path)} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{relative(path)}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{relative(path)}: expected a mapping of parameter names to values, got {type(data).__name__}")
    return data


def _check_keys(keys, valid: dict, where: Path, stem: str) -> None:
    reserved = [k for k in keys if k in RESERVED]
    if reserved:
        raise ParamsError(f"{relative(where)}: {reserved} are set by the pipeline, not by params files")
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        raise ParamsError(f"{relative(where)}: unknown key(s) {unknown} for notebook {stem}; valid keys: "
                          f"{sorted(k for k in valid if k not in RESERVED)}")


def effective_params(stem: str, run: str = "default", overlay_keys_known: set[str] | None = None) -> dict:
    """Notebook defaults, then ``params/<stem>.yaml``, then the overlay ``params/<run>.yaml``.

    Overlay keys apply to every notebook that takes them; a key no notebook takes is an error
    (``overlay_keys_known`` is the union of all notebooks' keys, computed by the caller).
    """
    defaults = notebook_parameters(stem)
    base_path = paths.PARAMS / f"{stem}.yaml"
    base = read_yaml(base_path)
    _check_keys(base, defaults, base_path, stem)
    params = {**defaults, **base}
    if run != "default":
        overlay_path = paths.PARAMS / f"{run}.yaml"
        if not overlay_path.exists():
            runs = sorted(p.stem for p in paths.PARAMS.glob("*.yaml") if not p.stem[:2].isdigit())
            raise ParamsError(f"no overlay {relative(overlay_path)} for run {run!r}; known runs: ['default'] + {runs}")
        overlay = read_yaml(overlay_path)
        reserved = [k for k in overlay if k in RESERVED]
        if reserved:
            raise ParamsError(f"{relative(overlay_path)}: {reserved} are set by the pipeline, not by params files")
        known = overlay_keys_known if overlay_keys_known is not None else set(defaults)
        unknown = sorted(set(overlay) - known)
        if unknown:
            raise ParamsError(f"{relative(overlay_path)}: unknown key(s) {unknown}; keys notebooks take: {sorted(known - set(RESERVED))}")
        params.update({k: v for k, v in overlay.items() if k in defaults})
    for key, value in params.items():
        _check_type(stem, key, value, defaults[key])
    return params


def _same_kind(value, default) -> bool:
    if isinstance(default, float) and not isinstance(default, bool):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type(value) is type(default)


def _check_type(stem: str, key: str, value, default) -> None:
    if default is None or value is None:
        return
    if not _same_kind(value, default):
        raise ParamsError(f"{stem}: parameter {key!r} should be {type(default).__name__} "
                          f"like its default {default!r}, got {value!r}")
    if isinstance(default, list) and default:
        bad = [v for v in value if not _same_kind(v, default[0])]
        if bad:
            raise ParamsError(f"{stem}: parameter {key!r} should be a list of {type(default[0]).__name__} "
                              f"like its default {default!r}; got {bad!r} in it")
