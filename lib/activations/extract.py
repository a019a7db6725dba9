"""Activation extraction into a resumable store (see ``lib.activations.store`` for the layout).

Rows are sorted by token count and cut into fixed batches; each batch is one chunk of every
array, written as soon as it is computed, so memory stays flat and a killed run resumes at the
first unwritten batch and ends byte-identical to an uninterrupted one. The forward pass stops
after the last block asked for (no unembedding).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.activations.capture import Capture, StopForward, stop_forward_hook
from lib.activations.names import act_name
from lib.activations.plan import (ExtractConfig, dataset_sha256, hook_names_for, keeps_tokens, layer_of,
                                  plan_aliases, sites_by_layer)
from lib.activations.integrity import StoreError, integrity_record
from lib.activations.store import FORMAT_VERSION, quiet_zarr
from lib.activations.writer import Writer, create_arrays
from lib.models.encoding import span_token_mask
from lib.files import write_json
from lib.paths import relative
from lib.settings import progress_bar

__all__ = ["extract", "plan_store", "settings_sha256", "StoreMismatchError"]


class StoreMismatchError(StoreError, RuntimeError):
    """A store at the target path (finished or not) was made with other settings, or the target holds
    files that are not a store."""


@dataclass(frozen=True)
class _Rows:
    """The rows of one extraction, tokenized once on the CPU (right-padded): batches are row slices."""

    encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input ids, attention mask, span mask [rows, width]
    lengths: np.ndarray  # [rows] real tokens
    order: np.ndarray  # [rows] store order: rows by token count (stable)
    width: int  # the longest row's token count
    batches: list[np.ndarray]  # row indices of each batch, in store order


def _encode_rows(lm, df: pd.DataFrame, batch_size: int) -> _Rows:
    """Tokenize every row once (CPU), refusing rows longer than the model's context; sort and batch them."""
    enc_all = lm.encoder.encode(df["text"].tolist())
    lengths = enc_all.lengths.numpy()
    order = np.argsort(lengths, kind="stable")
    width = int(lengths.max())
    n_ctx = getattr(lm.cfg, "n_ctx", None)
    if n_ctx and width > n_ctx:
        longest = int(lengths.argmax())
        raise ValueError(f"row {df['id'].iloc[longest]!r} has {width} tokens, more than {lm.name}'s context of "
                         f"{n_ctx}; drop or shorten such rows")
    span_all = span_token_mask(enc_all.offsets, df["span_start"].to_numpy(), df["span_end"].to_numpy(), width)
    batches = [order[i:i + batch_size] for i in range(0, len(df), batch_size)]
    return _Rows((enc_all.input_ids, enc_all.attention_mask, span_all), lengths, order, width, batches)


def _settings(identity: dict, df: pd.DataFrame, config: ExtractConfig, names: list[str], width: int) -> dict:
    """Everything that decides a store's bytes; its hash tells a resumable store from another one."""
    stored, aliases = plan_aliases(names)
    return {
        "format_version": FORMAT_VERSION, "config": asdict(config), "model": identity["name"],
        "weights_sha256": identity["weights_sha256"], "dataset_sha256": dataset_sha256(df),
        "hooks": names, "stored_hooks": stored, "aliases": aliases, "n_rows": len(df), "max_len": width,
    }


def settings_sha256(settings: dict) -> str:
    """The hash that names a store's settings (its folder name in a run's stores, its resume key)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _folder_state(out: Path) -> str:
    """What ``out`` is: missing, empty, finished (a store), unfinished (a store), or foreign (anything else)."""
    if not out.exists():
        return "missing"
    if not out.is_dir():
        raise StoreMismatchError(f"{relative(out)} is a file, not a folder; give a new or empty folder for the store")
    if (out / "manifest.json").exists():
        return "finished"
    if (out / "progress.json").exists():
        return "unfinished"
    return "foreign" if any(out.iterdir()) else "empty"


def _recorded_sha(out: Path, name: str) -> str | None:
    """The settings hash recorded in ``out/name`` (None if the file is damaged: a store of unknown settings)."""
    try:
        return json.loads((out / name).read_text()).get("settings_sha256")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def _claim(out: Path, settings_sha: str, n_batches: int, *, overwrite: bool, log) -> dict | int:
    """What to do at ``out``: the manifest of a finished store with these settings (reuse it), or the batch
    to start at (0 for a new store). Never deletes anything but a store, and that only with ``overwrite``."""
    state = _folder_state(out)
    if state == "foreign":
        sample = sorted(p.name for p in out.iterdir())[:3]
        raise StoreMismatchError(f"{relative(out)} is not empty and is not an activation store (it holds {sample}); "
                                 f"nothing was changed: give a new or empty folder")
    if state in ("missing", "empty"):
        return 0
    sha = _recorded_sha(out, "manifest.json" if state == "finished" else "progress.json")
    if sha == settings_sha and state == "finished":
        log(f"[extract] {relative(out)}: complete, reused")
        return json.loads((out / "manifest.json").read_text())
    if sha == settings_sha:
        start = int(json.loads((out / "progress.json").read_text()).get("batches_done", 0))
        log(f"[extract] {relative(out)}: resuming at batch {start} of {n_batches}")
        return start
    if not overwrite:
        raise StoreMismatchError(f"{relative(out)} is {'a finished' if state == 'finished' else 'an unfinished'} store "
                                 f"made with other settings (model, data, hooks or dtype differ); nothing was changed: "
                                 f"give another folder, or pass --overwrite to replace it")
    log(f"[extract] {relative(out)}: a store made with other settings; replacing it (--overwrite)")
    shutil.rmtree(out)
    return 0


def _start_store(out: Path, df: pd.DataFrame, rows: _Rows, settings_sha: str) -> None:
    """``out`` as a new store: ``progress.json`` first (the folder is ours from then on), then ``labels.jsonl``
    (the rows in store order)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "progress.json", {"settings_sha256": settings_sha, "batches_done": 0})
    labels = df.iloc[rows.order].assign(row=np.arange(len(df)), n_tokens=rows.lengths[rows.order])
    labels.to_json(out / "labels.jsonl.tmp", orient="records", lines=True)
    (out / "labels.jsonl.tmp").replace(out / "labels.jsonl")


def _open_group(out: Path):
    """The store's zarr group, opened for writing, without chunk writes a kill cut short."""
    import zarr

    for stray in out.rglob("*.partial"):  # a chunk write cut short by a kill (zarr writes atomically)
        stray.unlink()
    with quiet_zarr():
        return zarr.open_group(str(out), mode="a")


def _capture_hooks(cap: Capture, sites: dict[str, list[int]], last_layer: int) -> list[tuple[str, object]]:
    """``cap``'s hook at every stored (site, layer), then the stop after ``last_layer`` (registered last: runs last)."""
    hooks = [(act_name(site, layer), partial(cap.hook, site=site, li=li))
             for site, layers in sites.items() for li, layer in enumerate(layers)]
    hooks.append((act_name("hook_resid_post", last_layer), stop_forward_hook))
    return hooks


def _create_store_arrays(group, sites, shapes, settings: dict, settings_sha: str, config: ExtractConfig) -> None:
    """The group's attributes (settings, sites, shapes) and its empty arrays."""
    group.attrs.update({**settings, "sites": sites, "shapes": {k: list(v) for k, v in shapes.items()},
                        "reductions": list(config.reductions),
                        "token_sites": [site for site in sites if keeps_tokens(site, config)],
                        "dtype": config.dtype, "settings_sha256": settings_sha})
    create_arrays(group, sites, shapes, settings["n_rows"], settings["max_len"], config)


def _batch_writes(lo: int, lengths: np.ndarray, got: dict[str, dict], reductions) -> list:
    """(array name, start, data) of one batch's chunks, from ``Capture.finish``'s output; rows from ``lo``."""
    writes = [("lengths", (lo,), lengths.astype(np.int32))]
    for site, arrays in got.items():
        if arrays["exp"] is not None:
            writes.append((f"scale/{site}", (lo,), arrays["exp"]))
        writes += [(f"{red}/{site}", (lo,), arrays["reductions"][red]) for red in reductions]
        if arrays["tokens"] is not None:
            writes.append((f"tokens/{site}", (lo,), arrays["tokens"]))
    return writes


def _run_batches(lm, rows: _Rows, start: int, hooks, cap: Capture, config: ExtractConfig, writer: Writer,
                 f16_error: dict) -> dict:
    """Forward batches ``start..`` and queue their chunks. ``f16_error`` (worst float16 relative error
    and batches measured, carried over from the batches before ``start``) is updated and returned."""
    f16 = config.dtype == "float16"
    measuring = f16 and any(cap.keep.values())  # the error is measured on every stored token
    with torch.inference_mode():
        for b in range(start, len(rows.batches)):
            idx = rows.batches[b]
            measure = f16 and b % 8 == 0  # float16 error measured on every 8th batch
            _run_batch(lm, rows.encoded, idx, hooks, cap, measure=measure)
            writes = _batch_writes(b * config.batch_size, rows.lengths[idx], cap.finish(), config.reductions)
            if measure and measuring:
                worst = f16_error["float16_worst_relative_error"]
                f16_error = {"float16_worst_relative_error": max(worst or 0.0, cap.worst_relative_error()),
                             "float16_batches_measured": f16_error["float16_batches_measured"] + 1}
            writer.put(b + 1, writes, f16_error)
    return f16_error


def _manifest(settings: dict, settings_sha: str, identity: dict, out: Path, rows: _Rows, start: int,
              wall: float, f16_error: dict, checksum: bool) -> dict:
    """What ``manifest.json`` records: the settings, identity, size, this run's throughput, and the
    digests its readers check (``lib.activations.integrity``)."""
    done = rows.batches[start:]
    done_rows = sum(len(idx) for idx in done)
    done_tokens = int(sum(rows.lengths[idx].sum() for idx in done))
    return {
        **settings, "settings_sha256": settings_sha, "identity": identity, "n_tokens": int(rows.lengths.sum()),
        "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
        "wall_s": round(wall, 3), "rows_this_run": done_rows,
        "samples_per_s": round(done_rows / wall, 2) if wall > 0 else None,
        "tokens_per_s": round(done_tokens / wall, 2) if wall > 0 else None,
        **f16_error,  # None when no batch was measured (float32, or no per-token site)
        "resumed_at_batch": start,
        "integrity": integrity_record(out, checksum=checksum),
    }


def plan_store(lm, df: pd.DataFrame, config: ExtractConfig = ExtractConfig()) -> tuple[dict, str]:
    """The settings of the store ``extract`` would write for ``lm``, ``df`` and ``config``, and their hash
    (which names the store's folder in a run: ``lib.activations.runs.store_folder``)."""
    if df.empty:
        raise ValueError("no rows to extract (check the profile, emotion filter and max_per_emotion)")
    names = hook_names_for(lm, config)
    rows = _encode_rows(lm, df, config.batch_size)
    settings = _settings(lm.identity(), df, config, names, rows.width)
    return settings, settings_sha256(settings)


def _prepare(lm, df, out: Path, rows: _Rows, settings: dict, settings_sha: str, config: ExtractConfig,
             start: int, cap: Capture, hooks) -> tuple[object, dict]:
    """The store's zarr group, ready for batch ``start``, and the float16 error carried over."""
    if start == 0:  # nothing written yet: (re)start from an empty folder (a store of ours, or new)
        if out.exists() and any(out.iterdir()):
            shutil.rmtree(out)
        _start_store(out, df, rows, settings_sha)
    group = _open_group(out)
    if start == 0:
        _run_batch(lm, rows.encoded, rows.batches[0][:1], hooks, cap, measure=False)  # shapes from one row
        _create_store_arrays(group, sites_by_layer(settings["stored_hooks"]), dict(cap.shapes), settings, settings_sha,
                             config)
    state = json.loads((out / "progress.json").read_text())
    return group, {"float16_worst_relative_error": state.get("float16_worst_relative_error"),
                   "float16_batches_measured": int(state.get("float16_batches_measured", 0))}


def extract(lm, df: pd.DataFrame, out: Path, config: ExtractConfig = ExtractConfig(), *,
            progress: bool = True, overwrite: bool = False, log=print) -> dict:
    """Extract ``config``'s hooks of ``lm`` on the rows of ``df`` into the store at ``out``.

    ``out`` must be missing, empty, or a store: one with the same settings is resumed (unfinished)
    or reused (finished); one with other settings is an error, or is replaced (with a log line) if
    ``overwrite``. A folder holding anything else is never touched. Returns the manifest (also
    written as ``out/manifest.json``, last).
    """
    out = Path(out)
    if df.empty:
        raise ValueError("no rows to extract (check the profile, emotion filter and max_per_emotion)")
    names = hook_names_for(lm, config)
    rows = _encode_rows(lm, df, config.batch_size)
    identity = lm.identity()
    settings = _settings(identity, df, config, names, rows.width)
    settings_sha = settings_sha256(settings)
    claimed = _claim(out, settings_sha, len(rows.batches), overwrite=overwrite, log=log)
    if isinstance(claimed, dict):
        return claimed
    start = claimed
    sites = sites_by_layer(settings["stored_hooks"])
    cap = Capture(sites, config)
    hooks = _capture_hooks(cap, sites, last_layer=max(layer_of(n) for n in names))
    group, f16_error = _prepare(lm, df, out, rows, settings, settings_sha, config, start, cap, hooks)
    t0 = time.perf_counter()
    bar = progress_bar(total=len(rows.batches), initial=start, desc=f"{lm.name} {out.name}", unit="batch",
                       disable=not progress or os.environ.get("EMOTION_NO_PROGRESS") == "1", file=sys.stderr)
    writer = Writer(group, out / "progress.json", settings_sha, on_done=lambda: bar.update(1))
    try:
        f16_error = _run_batches(lm, rows, start, hooks, cap, config, writer, f16_error)
    finally:
        writer.close()
        bar.close()
    manifest = _manifest(settings, settings_sha, identity, out, rows, start, time.perf_counter() - t0,
                         f16_error, config.checksum)
    write_json(out / "manifest.json", manifest)
    return manifest


def _run_batch(lm, encoded, idx, hooks, cap: Capture, measure: bool) -> None:
    """Forward rows ``idx`` of ``encoded`` (ids, mask, span mask of every row) with the capture hooks."""
    ids, mask, span = (t[idx] for t in encoded)
    lengths = mask.sum(1)
    width = int(lengths.max())  # right-padded: the batch alone would be this wide
    ids, mask, span = (t[:, :width].to(lm.device) for t in (ids, mask, span))
    cap.begin(mask.bool(), (lengths - 1).to(lm.device), span, measure)
    try:
        with torch.inference_mode(), lm.bridge.hooks(fwd_hooks=hooks):
            lm.bridge(ids, attention_mask=mask)
    except StopForward:
        pass
