"""``make reproduce``: run every phase notebook headlessly, skip what is up to date, render HTML.

For each ``notebooks/NN_name.py`` in order: compute the hash of its inputs (notebook, effective
params, ``lib/``, ``data/``, requirements, and the phases before it); if
``results/<stem>/<run>/manifest.json`` records the same hash and the report exists, skip it.
Otherwise execute it with papermill into ``results/<stem>/<run>.partial/``, render
``reports/<stem>--<run>.html``, write the manifest last, and swap the folder in. A failed or
killed run leaves the previous complete results untouched. While a phase runs, its progress bars and
steps reach this terminal through a side channel (``lib.pipeline.progress``), never its report.

Every failure ends in one line on stderr (and, for a phase, a second saying where its executed notebook
is), never a traceback: exit 2 for bad params, 1 for a failed phase or a fault of the machine (disk full,
read-only, no permission), 130 for Ctrl-C.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lib import paths
from lib.errors import UserError, describe_os_error
from lib.models.weights import sha256_file
from lib.pipeline.checks import check_values
from lib.pipeline.folders import fresh_partial, move_aside, recover, swap_in
from lib.pipeline.params import ParamsError, effective_params, notebook_parameters
from lib.files import write_json
from lib.paths import relative
from lib.pipeline.progress import kernel_manager_class, relay_progress
from lib.pipeline.provenance import git_commit, hash_paths, package_versions, read_manifest
from lib.report.html import render_html, write_index
from lib.settings import apply_hub_policy

__all__ = ["PhaseError", "PhaseInterrupted", "stems", "input_hash", "run_phase", "reproduce", "main"]

RESUME = "rerun the same command to resume (activation stores resume at their first unwritten batch)"


class PhaseError(RuntimeError):
    """A phase failed; the message's first line says why, the second where its executed notebook is."""


class PhaseInterrupted(KeyboardInterrupt):
    """Ctrl-C during a phase; the message says what was kept and how to resume."""


def stems() -> list[str]:
    """Phase notebooks in run order: ``notebooks/NN_name.py``."""
    return sorted(p.stem for p in paths.NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def _all_keys() -> set[str]:
    return set().union(*(notebook_parameters(s) for s in stems()))


def _parameters_index(nb_path: Path) -> int:
    import nbformat

    cells = nbformat.read(nb_path, as_version=4).cells
    return next((i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])), -1)


def _publish_report(final: Path, report: Path) -> None:
    """Copy the report kept inside the results folder to ``reports/`` (atomic replace)."""
    paths.REPORTS.mkdir(exist_ok=True)
    tmp = report.with_name(report.name + ".tmp")
    shutil.copyfile(final / "report.html", tmp)
    tmp.replace(report)


def input_hash(stem: str, params: dict, upstream: str) -> str:
    """What a phase's results depend on: its notebook, params, lib/, data/, the pinned and the
    installed packages, the device ``auto`` resolves to here, and the phases before it."""
    from lib.models.registry import resolve_device

    extra = {"params": params, "upstream": upstream, "versions": package_versions(),
             "device": resolve_device(params["device"]) if "device" in params else None}
    return hash_paths([paths.NOTEBOOKS / f"{stem}.py", paths.LIB, paths.DATA, paths.ROOT / "requirements.txt",
                       paths.ROOT / "requirements-lock.txt"],
                      extra=json.dumps(extra, sort_keys=True, default=str).encode())


def _up_to_date(stem: str, run: str, final: Path, report: Path, inputs: str, force: bool, log) -> dict | None:
    """The manifest of ``final`` if it is complete and made from ``inputs`` (republishing a lost report), else None;
    a folder (or file) without a manifest is moved aside, never deleted."""
    if not final.exists():
        return None
    try:
        old = read_manifest(final)
        if not isinstance(old, dict):
            raise ValueError("not a manifest")
    except Exception:  # half-written, or not ours: keep it aside, never delete what this runner did not make
        move_aside(final, log, "has no readable manifest.json (half-written, copied half-way, or not made by "
                               "this runner)")
        return None
    if old.get("inputs_sha256") != inputs or force:
        return None
    if not all((paths.ROOT / p / "manifest.json").exists() for p in old.get("external_outputs", [])):
        log(f"[reproduce] {stem} ({run}): an output outside its folder is missing or unfinished; rerunning")
        return None
    if not report.exists() or sha256_file(report) != old.get("report_sha256"):
        _publish_report(final, report)
    log(f"[reproduce] {stem} ({run}): up to date, skipped")
    return old


_OS_ERRORS = {"OSError", "IOError", "PermissionError", "FileNotFoundError", "FileExistsError", "IsADirectoryError",
              "NotADirectoryError"}


def _lib_errors() -> set[str]:
    """Names of the error classes ``lib`` defines: their messages are written for users (read, not imported,
    since the kernel may have raised one from a module this process never loaded)."""
    return {name for f in paths.LIB.rglob("*.py")
            for name in re.findall(r"^class (\w+Error)\b", f.read_text(encoding="utf-8"), re.M)} - {"PhaseError"}


def _os_error(evalue: str) -> OSError | None:
    """The OSError that printed as ``evalue`` (``[Errno 28] No space left on device: '/x'``), or None."""
    m = re.match(r"\[Errno (\d+)\] (.+?)(?:: '(.+?)'(?: -> '.*')?)?$", evalue)
    return OSError(int(m.group(1)), m.group(2), m.group(3)) if m else None


def _kept(final: Path) -> str:
    if (final / "manifest.json").exists() or (final.with_name(final.name + ".old") / "manifest.json").exists():
        return f"the last complete results ({relative(final)}) were kept"
    return f"nothing was written to {relative(final)}"


def _upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def _failure(stem: str, run: str, err, nb_in: Path) -> str:
    """The first line for an error a phase's notebook raised: its message alone when it is written for users
    (lib's own errors, faults of the machine), else the error and the cell of ``notebooks/<stem>.py``."""
    evalue = " ".join(str(err.evalue or "").split())
    if err.ename in _OS_ERRORS and (fault := _os_error(evalue)) is not None:
        return f"phase {stem} ({run}): {describe_os_error(fault)}"
    if err.ename in _lib_errors():
        return f"phase {stem} ({run}): {evalue}"
    if err.ename in _OS_ERRORS:
        return f"phase {stem} ({run}): {err.ename}: {evalue}"
    first_line = ((err.source or "").strip().splitlines() or ["?"])[0]
    # papermill injects one cell after the parameters cell; count cells as in the .py file
    number = err.cell_index + 1 - (err.cell_index > _parameters_index(nb_in))
    return (f"phase {stem} ({run}) failed in cell {number} of notebooks/{stem}.py (starting {first_line!r}): "
            f"{err.ename}: {evalue}")


def _execute(stem: str, run: str, params: dict, partial: Path, final: Path) -> Path:
    """Run the notebook with papermill into ``partial``; a failure says why in one line, then where the
    executed notebook is."""
    import jupytext
    import nbformat
    import papermill as pm

    nb_in = partial / f"{stem}.input.ipynb"
    nbformat.write(jupytext.read(paths.NOTEBOOKS / f"{stem}.py"), nb_in)
    executed, kernel_log = partial / f"{stem}.ipynb", partial / "kernel.log"
    where = f"The executed notebook is {relative(executed)}; {_kept(final)}."
    try:
        stream = open(kernel_log, "w", encoding="utf-8")
    except OSError:
        stream = subprocess.DEVNULL
    try:
        pm.execute_notebook(str(nb_in), str(executed), parameters={**params, "output_dir": str(partial)},
                            kernel_name=paths.KERNEL_NAME, language="python", cwd=str(paths.NOTEBOOKS),
                            progress_bar=False, log_output=False, kernel_manager_class=kernel_manager_class(stream))
    except pm.PapermillExecutionError as err:
        if err.ename == "KeyboardInterrupt":
            raise KeyboardInterrupt from None
        raise PhaseError(f"{_failure(stem, run, err, nb_in)}\n{where}") from err
    except OSError as err:  # disk full or read-only while writing the executed notebook: reported by run_phase
        if err.filename:
            raise
        raise OSError(err.errno, err.strerror, str(relative(executed))) from err
    except Exception as err:  # kernel died, kernel missing, ...
        raise PhaseError(f"phase {stem} ({run}) could not run: {type(err).__name__}: {' '.join(str(err).split())}\n"
                         f"The kernel's messages are in {relative(kernel_log)}; {_kept(final)}.") from err
    finally:
        if stream is not subprocess.DEVNULL:
            stream.close()
    nb_in.unlink()
    kernel_log.unlink(missing_ok=True)  # ipykernel's start-up warnings: not results
    return executed


def _manifest(stem: str, run: str, params: dict, inputs: str, upstream: str, partial: Path, report: Path,
              started: dt.datetime, wall: float) -> dict:
    summary = json.loads((partial / "summary.json").read_text()) if (partial / "summary.json").exists() else {}
    return {
        "stem": stem, "run": run, "params": params, "inputs_sha256": inputs, "upstream_sha256": upstream,
        "git": git_commit(), "versions": package_versions(), "started": started.isoformat(timespec="seconds"),
        "wall_s": round(wall, 2), "report": str(relative(report)),
        "report_sha256": sha256_file(partial / "report.html"),
        "summary": summary.get("summary", ""), "models": summary.get("models", []),
        # the report's headline answers (shown first on the index page) and the splits they were estimated on
        "findings": summary.get("findings", []), "splits": summary.get("splits", {}),
        # folders a phase writes outside its run folder (activation stores); each must stay finished
        "external_outputs": summary.get("external_outputs", []),
    }


def _log(line: str) -> None:
    print(line, flush=True)  # before the phase's progress on stderr, even when stdout is a pipe


def run_phase(stem: str, run: str, upstream: str, *, force: bool = False, log=_log) -> dict:
    """Run one phase if its inputs changed; return its manifest. A fault of the machine becomes a
    ``PhaseError`` and Ctrl-C a ``PhaseInterrupted``, each saying what was kept."""
    params = effective_params(stem, run, overlay_keys_known=_all_keys())
    check_values(stem, params)
    inputs = input_hash(stem, params, upstream)
    final = paths.RESULTS / stem / run
    report = paths.REPORTS / f"{stem}--{run}.html"
    try:
        recover(final, log)
        done = _up_to_date(stem, run, final, report, inputs, force, log)
        if done is not None:
            return done
        partial = fresh_partial(final, log)
        log(f"[reproduce] {stem} ({run}): running with {params}")
        started = dt.datetime.now(dt.timezone.utc)
        t0 = time.perf_counter()
        with relay_progress(stem):
            executed = _execute(stem, run, params, partial, final)
        render_html(executed, partial / "report.html", title=f"{stem} ({run})")
        wall = time.perf_counter() - t0
        manifest = _manifest(stem, run, params, inputs, upstream, partial, report, started, wall)
        write_json(partial / "manifest.json", manifest)  # last: only now is the folder complete
        swap_in(partial, final)
        _publish_report(final, report)
    except KeyboardInterrupt:
        raise PhaseInterrupted(f"interrupted during phase {stem} ({run}); {_kept(final)}; {RESUME}") from None
    except OSError as err:
        fault = err if err.filename else OSError(err.errno, err.strerror, str(relative(final.parent)))
        raise PhaseError(f"phase {stem} ({run}): {describe_os_error(fault)}\n{_upper(_kept(final))}.") from err
    log(f"[reproduce] {stem} ({run}): done in {wall:.1f} s -> {relative(report)}")
    return manifest


def reproduce(run: str = "default", only: list[str] | None = None, force: bool = False,
              check_only: bool = False) -> None:
    """Run every phase (or ``only`` those) for ``run``, in order, then write the index."""
    # The kernel imports this checkout's lib, whatever venv .pth file another checkout left.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.ROOT), os.environ.get("PYTHONPATH")]))
    all_stems = stems()
    unknown = sorted(set(only or []) - set(all_stems))
    if unknown:
        raise ParamsError(f"unknown phase(s) {unknown} in --only; known: {all_stems}")
    keys = _all_keys()
    for stem in all_stems:  # every params file and shared value is checked before anything runs
        if not only or stem in only:
            check_values(stem, effective_params(stem, run, overlay_keys_known=keys))
    if check_only:
        _log(f"[reproduce] params for run {run!r} are valid")
        return
    upstream = ""
    t0 = time.perf_counter()
    for stem in all_stems:
        if not only or stem in only:
            run_phase(stem, run, upstream, force=force)
        # Later phases depend on earlier ones: chain each phase's notebook and params into the next.
        upstream = hash_paths([paths.NOTEBOOKS / f"{stem}.py"], extra=(upstream + json.dumps(
            effective_params(stem, run, overlay_keys_known=keys), sort_keys=True)).encode())
    index = write_index()
    _log(f"[reproduce] all phases ({run}) done in {time.perf_counter() - t0:.1f} s; open {relative(index)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="default", help="params overlay: default, or NAME for params/NAME.yaml")
    parser.add_argument("--only", nargs="*", help="phase stems to run (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun even if up to date")
    parser.add_argument("--check", action="store_true", help="only validate params and exit")
    args = parser.parse_args(argv)
    apply_hub_policy()
    try:
        reproduce(args.run, args.only, args.force, check_only=args.check)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (PhaseError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except PhaseInterrupted as err:
        print(err, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"interrupted; the last complete results were kept; {RESUME}", file=sys.stderr)
        return 130
    except OSError as err:
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
