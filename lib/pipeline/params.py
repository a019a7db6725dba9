"""Params files: flat YAML dicts that papermill feeds into a notebook's parameters cell.

``params/<stem>.yaml`` is the embedded default run of notebook ``<stem>``; an overlay
``params/<run>.yaml`` (e.g. ``seed``) changes keys across every notebook that has them.
Unknown keys are errors, never silently ignored; every value is checked against its key's rule
(``lib.pipeline.ranges``), and an error names the file that set the value.
"""
from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path

import yaml

from lib import paths
from lib.paths import relative

__all__ = ["ParamsError", "Params", "params_error", "notebook_parameters", "notebook_stems", "all_keys", "known_runs",
           "read_yaml", "effective_params", "RESERVED"]

# Keys the pipeline sets itself; a params file may not.
RESERVED = ("output_dir",)


class ParamsError(ValueError):
    """A params file that is missing, malformed, names keys a notebook does not take, or holds a bad value."""


class Params(dict):
    """A phase's effective params (a plain dict of values) that also knows, per key, the file that set the
    value (``sources``, as errors name it) and the run it was made for (``run``)."""

    def __init__(self, values=(), sources: dict[str, str] | None = None, run: str = "default"):
        super().__init__(values)
        self.sources = dict(sources or {})
        self.run = run


def params_error(source: str, key: str, value, valid: str, hint: str = "") -> ParamsError:
    """The one-line error for a bad value: ``params/03_emotion_vectors.yaml: n_splits = 1; valid: an integer >= 2``."""
    from lib.pipeline.ranges import show

    return ParamsError(f"{source}: {key} = {show(value)}" + (f" ({hint})" if hint else "") + f"; valid: {valid}")


def notebook_parameters(stem: str) -> dict:
    """Default values of the parameters cell of ``notebooks/<stem>.py``, read without running it."""
    path = paths.NOTEBOOKS / f"{stem}.py"
    if not path.exists():
        known = sorted(p.stem for p in paths.NOTEBOOKS.glob("[0-9][0-9]_*.py"))
        raise ParamsError(f"no notebook {relative(path)}; known stems: {known}")
    stat = path.stat()
    return copy.deepcopy(_parameters_cell(str(path), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=64)
def _parameters_cell(path: str, mtime_ns: int, size: int) -> dict:
    """The parameters cell's values (cached per file version: checks read each notebook many times)."""
    import jupytext

    nb = jupytext.read(path)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ParamsError(f"{relative(Path(path))} must have exactly one '# %% tags=[\"parameters\"]' cell, found {len(cells)}")
    scope: dict = {}
    exec(compile(cells[0].source, path, "exec"), {}, scope)  # literals only, by convention
    return {k: v for k, v in scope.items() if not k.startswith("_")}


def notebook_stems() -> list[str]:
    """Phase notebooks in run order: ``notebooks/NN_name.py``."""
    return sorted(p.stem for p in paths.NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def all_keys() -> set[str]:
    """Every key some phase notebook takes (what an overlay may set)."""
    return set().union(*(notebook_parameters(s) for s in notebook_stems()))


def known_runs() -> list[str]:
    """``default`` and the overlays in ``params/`` (files not named after a phase)."""
    return ["default", *sorted(p.stem for p in paths.PARAMS.glob("*.yaml") if not p.stem[:2].isdigit())]


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


def _check_keys(keys, valid: dict, where: Path, stem: str | None) -> None:
    reserved = [k for k in keys if k in RESERVED]
    if reserved:
        raise ParamsError(f"{relative(where)}: {reserved} are set by the pipeline, not by params files")
    unknown = sorted(set(keys) - set(valid), key=str)
    if unknown:
        for_stem = f" for notebook {stem}" if stem else ""
        raise ParamsError(f"{relative(where)}: unknown key(s) {unknown}{for_stem}; valid keys: "
                          f"{sorted(k for k in valid if k not in RESERVED)}")


def _check_run_name(run: str) -> None:
    from lib.pipeline.ranges import RUN_NAME

    if not isinstance(run, str) or not re.fullmatch(RUN_NAME, run):
        raise ParamsError(f"run name {run!r} is not valid; valid: letters, digits, '_' and '-', starting with a letter "
                          f"or digit (it names params/<run>.yaml and results/<stem>/<run>/); known runs: {known_runs()}")
    if run in notebook_stems():
        raise ParamsError(f"run name {run!r} is a phase's name, not a run; known runs: {known_runs()}")


def effective_params(stem: str, run: str = "default", overlay_keys_known: set[str] | None = None) -> Params:
    """Notebook defaults, then ``params/<stem>.yaml``, then the overlay ``params/<run>.yaml``, each value checked.

    Overlay keys apply to every notebook that takes them; a key no notebook takes is an error
    (``overlay_keys_known`` is the union of all notebooks' keys, ``all_keys()``). The result's ``sources``
    name the file each value came from.
    """
    _check_run_name(run)
    defaults = notebook_parameters(stem)
    sources = dict.fromkeys(defaults, f"{relative(paths.NOTEBOOKS / f'{stem}.py')} (default)")
    base_path = paths.PARAMS / f"{stem}.yaml"
    base = read_yaml(base_path)
    _check_keys(base, defaults, base_path, stem)
    params = {**defaults, **base}
    sources.update(dict.fromkeys(base, str(relative(base_path))))
    if run != "default":
        overlay_path = paths.PARAMS / f"{run}.yaml"
        if not overlay_path.exists():
            raise ParamsError(f"no overlay {relative(overlay_path)} for run {run!r}; known runs: {known_runs()}")
        overlay = read_yaml(overlay_path)
        _check_keys(overlay, overlay_keys_known if overlay_keys_known is not None else defaults, overlay_path, None)
        mine = {k: v for k, v in overlay.items() if k in defaults}
        params.update(mine)
        sources.update(dict.fromkeys(mine, str(relative(overlay_path))))
    for key, value in params.items():
        _check_value(stem, key, value, defaults[key], sources[key])
    return Params(params, sources, run)


def _same_kind(value, default) -> bool:
    if isinstance(default, float) and not isinstance(default, bool):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type(value) is type(default)


def _check_value(stem: str, key: str, value, default, source: str) -> None:
    """``value`` against the rule declared for ``key``; a key with none (a new phase's, until it declares
    them; tests require every real one to) must at least have its default's type."""
    from lib.pipeline.ranges import describe, problem, rule_for

    if key in RESERVED:
        return
    rule = rule_for(stem, key)
    if rule is not None:
        hint = problem(rule, value)
        if hint is not None:
            raise params_error(source, key, value, describe(rule), hint)
        return
    if default is None or value is None:
        return
    like = f"{type(default).__name__} like its default {default!r}"
    if not _same_kind(value, default):
        raise params_error(source, key, value, like)
    if isinstance(default, list) and default:
        bad = [v for v in value if not _same_kind(v, default[0])]
        if bad:
            raise params_error(source, key, value, f"a list of {type(default[0]).__name__} like its default "
                                                   f"{default!r}", f"bad entries {bad!r}")
