"""Runs the grid of independent runs of phase 07 (seeds x conditions): one JSON-able dict spec per run, one
JSON-able dict result per run, returned in the order of the specs.

``run_grid(fn, specs)`` with ``workers=1`` and no ``address`` is a plain loop in this process; otherwise each
run is a Ray task (``num_cpus=1``) on a local Ray started here with ``num_cpus=workers`` (and shut down here,
also on error), or on an existing cluster at ``address``. An already initialised Ray is used as it is and left
running. There is no other process pool.

Definitions: ``fn`` is a top-level function (importable by Ray workers, so not a lambda nor a nested
function) from one spec dict to one result dict. Every run, in this process or in a worker, first calls
``torch.set_num_threads(1)``, and Ray workers get ``OMP_NUM_THREADS=MKL_NUM_THREADS=1``, ``PYTHONHASHSEED=0``,
``HF_HUB_OFFLINE=1`` and the project root on ``PYTHONPATH``, so a run's result depends on its spec only,
not on where it ran. A failed run stops the grid with a one-line ``RuntimeError`` naming its spec index.

On this 2-core machine a local Ray start takes about 12-16 s, the first tasks with the runtime_env another
6-7 s (workers start with the env vars) and a shutdown about 2 s: use Ray when the runs are long.

>>> run_grid(dict, [{"seed": 0}, {"seed": 1}], progress=False)
[{'seed': 0}, {'seed': 1}]
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lib.settings import progress_bar

__all__ = ["run_grid", "ray_available", "worker_env"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # lib/synthetic/grid.py -> the repository root
_SPEC_CHARS = 120  # how much of a failed run's spec its error message shows


def ray_available() -> bool:
    """Whether Ray can be imported here (without importing it).

    >>> isinstance(ray_available(), bool)
    True
    """
    return importlib.util.find_spec("ray") is not None


def worker_env() -> dict[str, str]:
    """The environment variables Ray workers get: the project root first on ``PYTHONPATH`` (then this
    process's entries), one thread for OpenMP and MKL, a fixed hash seed and the Hugging Face hub offline.

    >>> env = worker_env(); env["PYTHONPATH"].split(os.pathsep)[0] == str(PROJECT_ROOT), env["OMP_NUM_THREADS"]
    (True, '1')
    """
    paths = [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1"}


def _call(fn: Callable[[dict], dict], spec: dict) -> dict:
    """One run: one torch thread, then ``fn(spec)``."""
    torch.set_num_threads(1)
    return fn(spec)


def _call_caught(fn: Callable[[dict], dict], spec: dict) -> tuple[bool, object]:
    """One run as a Ray task: ``(True, result)``, or ``(False, "Type: message")`` when it raised, so the driver
    reports the failure in one line instead of Ray's traceback dump."""
    try:
        return True, _call(fn, spec)
    except Exception as exc:  # noqa: BLE001 - any failure of a run is reported by the driver
        return False, _describe(exc)


def _describe(exc: BaseException) -> str:
    """``"Type: message"`` on one line (whitespace, newlines included, collapsed to single spaces)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _failure(index: int, spec: dict, what: str) -> RuntimeError:
    shown = json.dumps(spec, sort_keys=True)
    shown = shown if len(shown) <= _SPEC_CHARS else shown[:_SPEC_CHARS - 3] + "..."
    return RuntimeError(f"run {index} (spec {shown}) failed: {what}")


def _checked(index: int, spec: dict, result: object) -> dict:
    if not isinstance(result, dict):
        raise _failure(index, spec, f"fn returned {type(result).__name__}, not a dict")
    return result


def _validate(fn: Callable[[dict], dict], specs: Sequence[dict], workers: int) -> list[dict]:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1; got {workers!r}")
    qualname = getattr(fn, "__qualname__", None)
    if not callable(fn) or qualname is None or "<" in qualname:
        raise ValueError(f"fn must be a top-level function that Ray workers can import (not a lambda or a nested "
                         f"function); got {qualname or fn!r}")
    if isinstance(specs, (str, bytes, dict)) or not isinstance(specs, Sequence):
        raise ValueError(f"specs must be a list of dicts; got {type(specs).__name__}")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise ValueError(f"spec {i} must be a dict; got {type(spec).__name__}: {spec!r}")
        try:
            json.dumps(spec)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"spec {i} must be JSON-able; {_describe(exc)}") from None
    return list(specs)


def run_grid(fn: Callable[[dict], dict], specs: Sequence[dict], *, workers: int = 1, address: str | None = None,
             progress: bool = True, desc: str = "runs") -> list:
    """``[fn(spec) for spec in specs]``, in this process (``workers=1``, no ``address``) or as Ray tasks on a
    local Ray of ``workers`` CPUs or on the cluster at ``address`` (whose CPUs then decide how many run at
    once); a progress bar counts finished runs. Raises ``RuntimeError`` naming the first failed run's index.

    >>> run_grid(dict, [], workers=2)
    []
    """
    specs = _validate(fn, specs, workers)
    if not specs:
        return []
    with progress_bar(total=len(specs), desc=desc, disable=not progress) as bar:
        if workers == 1 and address is None:
            return _run_here(fn, specs, bar)
        return _run_ray(fn, specs, workers, address, bar)


def _run_here(fn: Callable[[dict], dict], specs: list[dict], bar) -> list[dict]:
    """The plain loop; restores this process's torch thread count afterwards."""
    threads, results = torch.get_num_threads(), []
    try:
        for i, spec in enumerate(specs):
            try:
                result = _call(fn, spec)
            except Exception as exc:
                raise _failure(i, spec, _describe(exc)) from exc
            results.append(_checked(i, spec, result))
            bar.update(1)
    finally:
        torch.set_num_threads(threads)
    return results


def _start_ray(workers: int, address: str | None) -> bool:
    """Initialise Ray unless it already is; True when this call started it (so must shut it down)."""
    if not ray_available():
        raise ImportError("Ray is not installed; run the grid with workers=1 and address=None, or install ray")
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, configure_logging=True, logging_level=logging.ERROR,
                 runtime_env={"env_vars": worker_env()})
    if address is None:
        ray.init(address="local", num_cpus=workers, include_dashboard=False, **quiet)  # never a stray cluster
    else:
        ray.init(address=address, **quiet)
    return True


def _run_ray(fn: Callable[[dict], dict], specs: list[dict], workers: int, address: str | None, bar) -> list[dict]:
    """Ray tasks collected with ``ray.wait`` as they finish; pending tasks are cancelled when one fails."""
    started = _start_ray(workers, address)
    import ray

    pending = []
    try:
        task = ray.remote(num_cpus=1)(_call_caught)
        refs = [task.remote(fn, spec) for spec in specs]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(specs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = index[ref]
                try:
                    ok, value = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died, or the task could not run
                    raise _failure(i, specs[i], str(exc).strip().splitlines()[0] if str(exc).strip()
                                   else type(exc).__name__) from None
                if not ok:
                    raise _failure(i, specs[i], value)
                results[i] = _checked(i, specs[i], value)
                bar.update(1)
        return results
    finally:
        for ref in pending:  # empty unless a run failed or the driver was interrupted
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - best effort: a finished task cannot be cancelled
                pass
        if started:
            ray.shutdown()
