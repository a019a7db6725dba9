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
from lib.activations.store import FORMAT_VERSION, quiet_zarr, store_complete
from lib.activations.writer import Writer, create_arrays
from lib.models.encoding import span_token_mask
from lib.files import write_json
from lib.paths import relative
from lib.settings import progress_bar

__all__ = ["extract", "StoreMismatchError"]


class StoreMismatchError(RuntimeError):
    """A store at the target path (finished or not) was made with different settings."""


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


def _reuse_finished(out: Path, settings_sha: str, *, replace_mismatched: bool, log) -> dict | None:
    """The manifest of a finished store at ``out`` with these settings; None if there is none (a
    finished store with other settings is an error, or deleted if ``replace_mismatched``)."""
    if not store_complete(out):
        return None
    done = json.loads((out / "manifest.json").read_text())
    if done.get("settings_sha256") == settings_sha:
        log(f"[extract] {relative(out)}: complete, reused")
        return done
    if not replace_mismatched:
        raise StoreMismatchError(f"{relative(out)} is a finished store made with other settings; "
                                 f"delete it or choose another output folder")
    log(f"[extract] {relative(out)}: made with other settings; replacing it")
    shutil.rmtree(out)
    return None


def _resume_point(out: Path, settings_sha: str, n_batches: int, *, replace_mismatched: bool, log) -> int | None:
    """The first unwritten batch of an unfinished store at ``out`` with these settings; None if there
    is none (one with other settings is an error, or deleted if ``replace_mismatched``)."""
    progress_path = out / "progress.json"
    if not progress_path.exists():
        return None
    state = json.loads(progress_path.read_text())
    if state.get("settings_sha256") != settings_sha:
        if not replace_mismatched:
            raise StoreMismatchError(
                f"{relative(out)} is an unfinished store started with other settings (model, data, hooks "
                f"or dtype differ); delete it to start over, or rerun with the settings it was started with")
        log(f"[extract] {relative(out)}: unfinished store with other settings; starting over")
        shutil.rmtree(out)
        return None
    start = int(state["batches_done"])
    log(f"[extract] {relative(out)}: resuming at batch {start} of {n_batches}")
    return start


def _start_store(out: Path, df: pd.DataFrame, rows: _Rows) -> None:
    """An empty folder at ``out`` holding only ``labels.jsonl`` (the rows in store order)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    labels = df.iloc[rows.order].assign(row=np.arange(len(df)), n_tokens=rows.lengths[rows.order])
    labels.to_json(out / "labels.jsonl", orient="records", lines=True)


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


def _run_batches(lm, rows: _Rows, start: int, hooks, cap: Capture, config: ExtractConfig, writer: Writer) -> float:
    """Forward batches ``start..`` and queue their chunks; the worst float16 relative error measured."""
    f16 = config.dtype == "float16"
    worst_rel = 0.0
    with torch.inference_mode():
        for b in range(start, len(rows.batches)):
            idx = rows.batches[b]
            # float16 error measured on every 8th batch
            _run_batch(lm, rows.encoded, idx, hooks, cap, measure=f16 and b % 8 == 0)
            writes = _batch_writes(b * config.batch_size, rows.lengths[idx], cap.finish(), config.reductions)
            worst_rel = max(worst_rel, cap.worst_relative_error())
            writer.put(b + 1, writes)
    return worst_rel


def _manifest(settings: dict, settings_sha: str, identity: dict, out: Path, rows: _Rows, start: int,
              wall: float, float16_error: float | None) -> dict:
    """What ``manifest.json`` records: the settings, identity, size and this run's throughput."""
    done = rows.batches[start:]
    done_rows = sum(len(idx) for idx in done)
    done_tokens = int(sum(rows.lengths[idx].sum() for idx in done))
    return {
        **settings, "settings_sha256": settings_sha, "identity": identity, "n_tokens": int(rows.lengths.sum()),
        "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
        "wall_s": round(wall, 3), "rows_this_run": done_rows,
        "samples_per_s": round(done_rows / wall, 2) if wall > 0 else None,
        "tokens_per_s": round(done_tokens / wall, 2) if wall > 0 else None,
        "float16_worst_relative_error": float16_error,
        "resumed_at_batch": start,
    }


def extract(lm, df: pd.DataFrame, out: Path, config: ExtractConfig = ExtractConfig(), *,
            progress: bool = True, replace_mismatched: bool = False, log=print) -> dict:
    """Extract ``config``'s hooks of ``lm`` on the rows of ``df`` into the store at ``out``.

    Resumes an unfinished store with the same settings and reuses a finished one; a store made
    with other settings is an error, or is replaced (with a log line) if ``replace_mismatched``.
    Returns the manifest (also written as ``out/manifest.json``, last).
    """
    out = Path(out)
    if df.empty:
        raise ValueError("no rows to extract (check the profile, emotion filter and max_per_emotion)")
    names = hook_names_for(lm, config)
    rows = _encode_rows(lm, df, config.batch_size)
    identity = lm.identity()
    settings = _settings(identity, df, config, names, rows.width)
    settings_sha = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    finished = _reuse_finished(out, settings_sha, replace_mismatched=replace_mismatched, log=log)
    if finished is not None:
        return finished
    start = _resume_point(out, settings_sha, len(rows.batches), replace_mismatched=replace_mismatched, log=log)
    if start is None:
        _start_store(out, df, rows)
        start = 0
    group = _open_group(out)
    sites = sites_by_layer(settings["stored_hooks"])
    cap = Capture(sites, config)
    hooks = _capture_hooks(cap, sites, last_layer=max(layer_of(n) for n in names))
    if start == 0 and "lengths" not in group:
        _run_batch(lm, rows.encoded, rows.batches[0][:1], hooks, cap, measure=False)  # shapes from one row
        _create_store_arrays(group, sites, dict(cap.shapes), settings, settings_sha, config)
        write_json(out / "progress.json", {"settings_sha256": settings_sha, "batches_done": 0})
    t0 = time.perf_counter()
    bar = progress_bar(total=len(rows.batches), initial=start, desc=f"{lm.name} {out.name}", unit="batch",
                       disable=not progress or os.environ.get("EMOTION_NO_PROGRESS") == "1", file=sys.stderr)
    writer = Writer(group, out / "progress.json", settings_sha, on_done=lambda: bar.update(1))
    try:
        worst_rel = _run_batches(lm, rows, start, hooks, cap, config, writer)
    finally:
        writer.close()
    bar.close()
    measured = config.dtype == "float16" and any(keeps_tokens(s, config) for s in sites)
    manifest = _manifest(settings, settings_sha, identity, out, rows, start, time.perf_counter() - t0,
                         worst_rel if measured else None)
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
