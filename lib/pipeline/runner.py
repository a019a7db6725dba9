"""``make reproduce``: run every phase notebook headlessly, skip what is up to date, render HTML.

For each ``notebooks/NN_name.py`` in order: compute the hash of its inputs (notebook, effective
params, ``lib/``, ``data/``, requirements, and the phases before it); if
``results/<stem>/<run>/manifest.json`` records the same hash and the report exists, skip it.
Otherwise execute it with papermill into ``results/<stem>/<run>.partial/``, render
``reports/<stem>--<run>.html``, write the manifest last, and swap the folder in. A failed or
killed run leaves the previous complete results untouched.
"""
from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import shutil
import sys
import time
from pathlib import Path

from lib.pipeline.params import effective_params, notebook_parameters
from lib.paths import DATA, KERNEL_NAME, LIB, NOTEBOOKS, REPORTS, RESULTS, ROOT
from lib.settings import apply_hub_policy
from lib.pipeline.provenance import git_commit, hash_paths, package_versions, read_manifest, relative, write_json
from lib.models.weights import sha256_file

__all__ = ["PhaseError", "stems", "input_hash", "check_values", "run_phase", "reproduce", "write_index", "render_html"]


class PhaseError(RuntimeError):
    """A phase notebook raised; the message names the phase, the error and where the traceback is."""


def stems() -> list[str]:
    """Phase notebooks in run order: ``notebooks/NN_name.py``."""
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def _all_keys() -> set[str]:
    return set().union(*(notebook_parameters(s) for s in stems()))


def render_html(executed: Path, target: Path, title: str) -> None:
    """Self-contained HTML of an executed notebook, code hidden (plotly.js is inlined by the renderer)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    nb.metadata["title"] = title
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(target)


def check_values(stem: str, params: dict) -> None:
    """Fail before running a notebook on values every phase shares: models, profiles, device, dtype."""
    from lib.text.datasets import PROFILES
    from lib.models.registry import (ModelUnavailableError, check_available, resolve_device, resolve_dtype, resolve_spec)
    from lib.pipeline.params import ParamsError

    try:
        for name in [*params.get("models", []), *params.get("control_models", [])]:
            spec = resolve_spec(name)
            check_available(resolve_spec(spec.source) if spec.kind == "random" else spec)
        profile_keys = ("profiles", "fit_profiles", "transfer_profiles", "control_profiles")
        for spec in [s for key in profile_keys for s in params.get(key, [])]:
            profile, _, split = spec.partition(":")
            if profile not in PROFILES or (split and (profile != "goemotions" or split not in ("train", "dev"))):
                raise ValueError(f"unknown profile {spec!r}; valid: {list(PROFILES)}, or goemotions:train / "
                                 f"goemotions:dev")
        if params.get("emotions") is not None:  # an emotion filter (02) or the emotions studied (05)
            from lib.emotions import EMOTIONS, TARGET_EMOTIONS

            valid = EMOTIONS if stem.startswith("02_") else TARGET_EMOTIONS
            bad = [e for e in params["emotions"] if e not in valid]
            if bad or not params["emotions"]:
                raise ValueError(f"emotions {params['emotions']!r}: {bad or 'empty'}; valid: a non-empty subset of "
                                 f"{list(valid)}")
        if "device" in params:
            resolve_device(params["device"])
        if "dtype" in params:
            resolve_dtype(params["dtype"])
    except (ValueError, ModelUnavailableError) as err:
        raise ParamsError(f"params for {stem}: {err}") from err


def _parameters_index(nb_path: Path) -> int:
    import nbformat

    cells = nbformat.read(nb_path, as_version=4).cells
    return next((i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])), -1)


def _recover(final: Path, log) -> None:
    """Finish or undo a folder swap that a kill interrupted, so complete results are never lost."""
    partial, old = final.with_name(f"{final.name}.partial"), final.with_name(f"{final.name}.old")
    if not final.exists() and (partial / "manifest.json").exists():
        partial.rename(final)  # killed between the two renames: the new results were complete
        log(f"[reproduce] finished an interrupted swap: {relative(final)}")
    if not final.exists() and old.exists():
        old.rename(final)
        log(f"[reproduce] restored {relative(final)} from an interrupted swap")
    shutil.rmtree(old, ignore_errors=True)


def _move_aside(final: Path, log, why: str) -> None:
    aside = final.with_name(f"{final.name}.incomplete-{dt.datetime.now():%Y%m%dT%H%M%S}")
    final.rename(aside)
    log(f"[reproduce] {relative(final)} {why}; moved it to {relative(aside)}")


def _publish_report(final: Path, report: Path) -> None:
    """Copy the report kept inside the results folder to ``reports/`` (atomic replace)."""
    REPORTS.mkdir(exist_ok=True)
    tmp = report.with_name(report.name + ".tmp")
    shutil.copyfile(final / "report.html", tmp)
    tmp.replace(report)


def input_hash(stem: str, params: dict, upstream: str) -> str:
    """What a phase's results depend on: its notebook, params, lib/, data/, the pinned and the
    installed packages, the device ``auto`` resolves to here, and the phases before it."""
    from lib.models.registry import resolve_device

    extra = {"params": params, "upstream": upstream, "versions": package_versions(),
             "device": resolve_device(params["device"]) if "device" in params else None}
    return hash_paths([NOTEBOOKS / f"{stem}.py", LIB, DATA, ROOT / "requirements.txt",
                       ROOT / "requirements-lock.txt"],
                      extra=json.dumps(extra, sort_keys=True, default=str).encode())


def run_phase(stem: str, run: str, upstream: str, *, force: bool = False, log=print) -> dict:
    """Run one phase if its inputs changed; return its manifest."""
    import jupytext
    import nbformat
    import papermill as pm

    params = effective_params(stem, run, overlay_keys_known=_all_keys())
    check_values(stem, params)
    inputs = input_hash(stem, params, upstream)
    final = RESULTS / stem / run
    report = REPORTS / f"{stem}--{run}.html"
    _recover(final, log)
    if final.exists():
        try:
            old = read_manifest(final)
        except Exception:  # half-written: keep it aside, never delete results silently
            _move_aside(final, log, "had no manifest (half-written)")
        else:
            external_ok = all((ROOT / p / "manifest.json").exists() for p in old.get("external_outputs", []))
            if old.get("inputs_sha256") == inputs and not force and not external_ok:
                log(f"[reproduce] {stem} ({run}): an output outside its folder is missing or unfinished; rerunning")
            if old.get("inputs_sha256") == inputs and not force and external_ok:
                if not report.exists() or sha256_file(report) != old.get("report_sha256"):
                    _publish_report(final, report)
                log(f"[reproduce] {stem} ({run}): up to date, skipped")
                return old
    partial = final.with_name(f"{run}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    nb_in = partial / f"{stem}.input.ipynb"
    nbformat.write(jupytext.read(NOTEBOOKS / f"{stem}.py"), nb_in)
    log(f"[reproduce] {stem} ({run}): running with {params}")
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    executed = partial / f"{stem}.ipynb"
    where = (f"The executed notebook is {relative(executed)}; the last complete results "
             f"({relative(final)}) were left as they were.")
    try:
        pm.execute_notebook(str(nb_in), str(executed), parameters={**params, "output_dir": str(partial)},
                            kernel_name=KERNEL_NAME, language="python", cwd=str(NOTEBOOKS), progress_bar=False,
                            log_output=False)
    except pm.PapermillExecutionError as err:
        first_line = ((err.source or "").strip().splitlines() or ["?"])[0]
        # papermill injects one cell after the parameters cell; count cells as in the .py file
        number = err.cell_index + 1 - (err.cell_index > _parameters_index(nb_in))
        raise PhaseError(f"phase {stem} ({run}) failed in cell {number} of notebooks/{stem}.py "
                         f"(starting {first_line!r}): {err.ename}: {err.evalue}\n{where}") from err
    except Exception as err:  # kernel died, kernel missing, ...
        raise PhaseError(f"phase {stem} ({run}) could not run: {type(err).__name__}: {err}\n{where}") from err
    nb_in.unlink()
    summary = json.loads((partial / "summary.json").read_text()) if (partial / "summary.json").exists() else {}
    render_html(executed, partial / "report.html", title=f"{stem} ({run})")
    wall = time.perf_counter() - t0
    manifest = {
        "stem": stem, "run": run, "params": params, "inputs_sha256": inputs, "upstream_sha256": upstream,
        "git": git_commit(), "versions": package_versions(), "started": started.isoformat(timespec="seconds"),
        "wall_s": round(wall, 2), "report": str(relative(report)),
        "report_sha256": sha256_file(partial / "report.html"),
        "summary": summary.get("summary", ""), "models": summary.get("models", []),
        # folders a phase writes outside its run folder (activation stores); each must stay finished
        "external_outputs": summary.get("external_outputs", []),
    }
    write_json(partial / "manifest.json", manifest)  # last: only now is the folder complete
    old = final.with_name(f"{run}.old")
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    _publish_report(final, report)
    log(f"[reproduce] {stem} ({run}): done in {wall:.1f} s -> {relative(report)}")
    return manifest


def write_index() -> Path:
    """``reports/index.html``: every report with its summary, when and from what it was made."""
    rows = []
    for path in sorted(RESULTS.glob("*/*/manifest.json")):
        m = json.loads(path.read_text())
        commit = (m.get("git") or {}).get("commit") or "uncommitted"
        dirty = " (with local changes)" if (m.get("git") or {}).get("dirty") else ""
        models = ", ".join(x.get("name", "?") for x in m.get("models", [])) or "-"
        href = Path(m["report"]).name
        rows.append(
            f"<tr><td><a href='{html.escape(href)}'>{html.escape(m['stem'])}</a></td>"
            f"<td>{html.escape(m['run'])}</td><td>{html.escape(m.get('summary', ''))}</td>"
            f"<td>{html.escape(models)}</td><td>{html.escape(m['started'])}<br>{m['wall_s']} s</td>"
            f"<td><code>{commit[:10]}</code>{dirty}<br><code>params/{html.escape(m['stem'])}.yaml</code>"
            f"{'' if m['run'] == 'default' else ' + <code>params/' + html.escape(m['run']) + '.yaml</code>'}"
            f"</td></tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Emotion circuits: reports</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.5em;text-align:left;vertical-align:top}}
th{{background:#f5f5f5}}code{{font-size:.9em}}</style></head><body>
<h1>Emotion circuits: reports</h1>
<p>Made by <code>make reproduce</code>. Each phase's artifacts and manifest are in <code>results/&lt;phase&gt;/&lt;run&gt;/</code>.</p>
<table><tr><th>Phase</th><th>Run</th><th>Summary</th><th>Models</th><th>Made</th><th>From</th></tr>
{''.join(rows) or '<tr><td colspan=6>No reports yet.</td></tr>'}</table></body></html>"""
    REPORTS.mkdir(exist_ok=True)
    target = REPORTS / "index.html"
    target.write_text(page, encoding="utf-8")
    return target


def reproduce(run: str = "default", only: list[str] | None = None, force: bool = False,
              check_only: bool = False) -> None:
    """Run every phase (or ``only`` those) for ``run``, in order, then write the index."""
    # The kernel imports this checkout's lib, whatever venv .pth file another checkout left.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["EMOTION_NO_PROGRESS"] = "1"  # progress bars belong in terminals and JupyterLab, not in reports
    all_stems = stems()
    unknown = sorted(set(only or []) - set(all_stems))
    if unknown:
        raise SystemExit(f"error: unknown phase(s) {unknown}; known: {all_stems}")
    keys = _all_keys()
    for stem in all_stems:  # every params file and shared value is checked before anything runs
        if not only or stem in only:
            check_values(stem, effective_params(stem, run, overlay_keys_known=keys))
    if check_only:
        print(f"[reproduce] params for run {run!r} are valid")
        return
    upstream = ""
    t0 = time.perf_counter()
    for stem in all_stems:
        if not only or stem in only:
            run_phase(stem, run, upstream, force=force)
        # Later phases depend on earlier ones: chain each phase's notebook and params into the next.
        upstream = hash_paths([NOTEBOOKS / f"{stem}.py"], extra=(upstream + json.dumps(
            effective_params(stem, run, overlay_keys_known=keys), sort_keys=True)).encode())
    index = write_index()
    print(f"[reproduce] all phases ({run}) done in {time.perf_counter() - t0:.1f} s; open {relative(index)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="default", help="params overlay: default, or NAME for params/NAME.yaml")
    parser.add_argument("--only", nargs="*", help="phase stems to run (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun even if up to date")
    parser.add_argument("--check", action="store_true", help="only validate params and exit")
    args = parser.parse_args(argv)
    apply_hub_policy()
    from lib.pipeline.params import ParamsError

    try:
        reproduce(args.run, args.only, args.force, check_only=args.check)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PhaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
