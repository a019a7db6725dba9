"""Activation extraction into a resumable store (see ``lib.store`` for the layout).

Rows are sorted by token count and cut into fixed batches; each batch is one chunk of every
array, written as soon as it is computed, so memory stays flat and a killed run resumes at the
first unwritten batch and ends byte-identical to an uninterrupted one. The forward pass stops
after the last block asked for (no unembedding).

>>> default_hook_names(2)[:3]
['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post', 'blocks.0.hook_mlp_out']
"""
from __future__ import annotations

import argparse
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

from lib.hooks import check_hook_names, check_layers
from lib.provenance import relative, write_json
from lib.store import FORMAT_VERSION, REDUCTIONS, store_complete

__all__ = ["DEFAULT_SITES", "ExtractConfig", "default_hook_names", "hook_names_for", "extract",
           "span_token_mask", "dataset_sha256", "StoreMismatchError"]

DEFAULT_SITES = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out")
_F16_MAX_EXP = 15  # scale rows so that max |x| < 2**15 = 32768 < 65504


class StoreMismatchError(RuntimeError):
    """An unfinished store at the target path was started with different settings."""


class _StopForward(Exception):
    pass


def default_hook_names(n_layers: int, layers=None, sites=DEFAULT_SITES, per_head: bool = False) -> list[str]:
    """Full hook names for ``sites`` (names inside a block) at ``layers`` (default all)."""
    layers = range(n_layers) if layers is None else layers
    sites = list(sites) + (["attn.hook_z"] if per_head and "attn.hook_z" not in sites else [])
    return [f"blocks.{layer}.{site}" for layer in layers for site in sites]


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract. ``hooks`` empty means the default sites at ``layers`` (None: all).

    Every site gets the sentence-end, mean and span reductions; the sites in ``token_sites``
    also keep every token (the residual stream by default: per-token MLP and attention outputs
    of every layer triple the store and are rarely needed; ask with ``("*",)``).
    """

    hooks: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None
    per_head: bool = False
    batch_size: int = 32
    dtype: str = "float16"
    # sites whose every token is stored (reductions are stored for all); ("*",) = every site
    token_sites: tuple[str, ...] = ("hook_resid_pre", "hook_resid_post")
    reductions: tuple[str, ...] = REDUCTIONS

    def __post_init__(self):
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"store dtype {self.dtype!r} must be 'float16' or 'float32'")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        bad = [r for r in self.reductions if r not in REDUCTIONS]
        if bad:
            raise ValueError(f"unknown reduction(s) {bad}; valid: {list(REDUCTIONS)}")


def hook_names_for(lm, config: ExtractConfig) -> list[str]:
    """The validated hook names ``config`` asks of ``lm`` (fails before any work, naming valid ones)."""
    n_layers = int(lm.cfg.n_layers)
    if config.layers is not None:
        check_layers(list(config.layers), n_layers, lm.name)
    names = list(config.hooks) or default_hook_names(n_layers, config.layers, per_head=config.per_head)
    return check_hook_names(names, lm.bridge.hook_dict, lm.name)


def dataset_sha256(df: pd.DataFrame) -> str:
    """Hash of the rows an extraction reads (ids, texts, labels, spans), in order."""
    cols = ["id", "text", "emotion", "profile", "split", "span_start", "span_end"]
    payload = df[cols].astype(str).to_csv(index=False).encode()
    return hashlib.sha256(payload).hexdigest()


def span_token_mask(offsets: list[list[tuple[int, int]]], starts, ends, width: int) -> torch.Tensor:
    """bool [rows, width]: tokens whose character range overlaps the row's span (BOS never does)."""
    mask = torch.zeros((len(offsets), width), dtype=torch.bool)
    for i, (row, s, e) in enumerate(zip(offsets, starts, ends)):
        if s is None or pd.isna(s):
            continue
        for j, (ts, te) in enumerate(row):
            if te > ts and te > s and ts < e:
                mask[i, j] = True
    return mask


def _layer_of(name: str) -> int:
    return int(name.split(".")[1])


def _plan(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Stored hooks, and aliases: resid_pre of layer l > 0 is resid_post of layer l - 1 (exactly)."""
    aliases = {}
    for name in names:
        layer = _layer_of(name)
        if name.endswith(".hook_resid_pre") and layer > 0 and f"blocks.{layer - 1}.hook_resid_post" in names:
            aliases[name] = f"blocks.{layer - 1}.hook_resid_post"
    return [n for n in names if n not in aliases], aliases


def _grab(act, hook, *, site: str, li: int, n_layers: int, sink: dict):
    """Copy ``act`` into slot ``li`` of the site's [batch, layers, pos, *shape] float32 buffer."""
    buf = sink.get(site)
    if buf is None:
        buf = sink[site] = torch.empty((act.shape[0], n_layers, *act.shape[1:]), dtype=torch.float32)
    buf[:, li] = act


def _stop(act, hook):
    raise _StopForward


def _reduce(act: torch.Tensor, mask: torch.Tensor, last: torch.Tensor, span: torch.Tensor) -> dict:
    """act [b, layers, pos, *shape] float32 -> the reductions, each [b, layers, *shape]."""
    b, n, p = act.shape[:3]
    flat = act.reshape(b, n, p, -1)
    m = mask.to(act.dtype)
    sp = span.to(act.dtype)
    n_span = sp.sum(1)
    # mean and span mean in one batched matmul: [b, 1, 2, p] @ [b, n, p, d] -> [b, n, 2, d]
    weights = torch.stack([m / m.sum(1, keepdim=True), sp / n_span.clamp(min=1)[:, None]], 1).view(b, 1, 2, p)
    both = torch.matmul(weights, flat)
    span_mean = both[:, :, 1]
    span_mean[n_span == 0] = torch.nan
    out = {"sentence_end": flat[torch.arange(b), :, last], "mean": both[:, :, 0], "span": span_mean}
    return {k: v.reshape(b, n, *act.shape[3:]) for k, v in out.items()}


def _row_exponents(act: torch.Tensor) -> torch.Tensor:
    """int8 [b, layers]: k >= 0 with max |x| * 2**-k < 2**15 per row and layer (padding is zero)."""
    lo, hi = torch.aminmax(act.flatten(2), dim=2)
    peak = torch.maximum(hi, -lo)
    exp = torch.ceil(torch.log2(peak.clamp(min=1.0))) - _F16_MAX_EXP + 1
    return exp.clamp(min=0).to(torch.int8)


def _to_store(x: torch.Tensor, exp: torch.Tensor | None) -> np.ndarray:
    """x [b, layers, ...] -> stored dtype; float16 rows divided by 2**exp first (exact)."""
    if exp is None:
        return x.numpy()
    if exp.any():
        x = x * torch.exp2(-exp.float()).view(*exp.shape, *(1,) * (x.ndim - 2))
    return x.to(torch.float16).numpy()


def _encode_f16(act: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """float16 of ``act`` [b, layers, ...] (padding zero) and the int8 exponents [b, layers].

    One cast in the common case; only (row, layer) pairs that overflow float16 get k > 0, so a
    row's stored bytes never depend on the other rows of its batch.
    """
    x16 = act.to(torch.float16)
    over = torch.isinf(x16).flatten(2).any(2)
    exp = torch.zeros(over.shape, dtype=torch.int8)
    if over.any():
        exp = torch.where(over, _row_exponents(act), exp)
        x16 = torch.from_numpy(_to_store(act, exp))
    return x16.numpy(), exp


def _from_store(x: np.ndarray, exp: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(x).float() * torch.exp2(exp.float()).view(*exp.shape, *(1,) * (x.ndim - 2))


def _relative_error(stored: np.ndarray, exp: torch.Tensor, act: torch.Tensor) -> float:
    """Largest ||stored - exact|| / ||exact|| over the real token vectors of one batch."""
    back = _from_store(stored, exp)
    num = (back - act).flatten(3).norm(dim=-1)
    den = act.flatten(3).norm(dim=-1)
    real = den > 0
    return float((num[real] / den[real]).max()) if real.any() else 0.0


class _Writer:
    """Writes batches in a background thread, in order, then records each as done (resume point).

    Compression and file writes overlap the next forward pass; at most two batches wait in memory.
    """

    def __init__(self, group, progress_path: Path, settings_sha: str, on_done):
        import queue
        import threading

        self.group, self.progress_path, self.settings_sha, self.on_done = group, progress_path, settings_sha, on_done
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue
            done, writes = item
            try:
                for name, where, data in writes:
                    self.group[name][where] = data
                write_json(self.progress_path, {"settings_sha256": self.settings_sha, "batches_done": done})
                self.on_done()
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                self.error = err

    def put(self, done: int, writes: list) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((done, writes))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _keeps_tokens(site: str, config: ExtractConfig) -> bool:
    return "*" in config.token_sites or site in config.token_sites


def _sites(stored: list[str]) -> dict[str, list[int]]:
    """Stored hooks grouped by site (the name inside the block) -> layers, in order."""
    sites: dict[str, list[int]] = {}
    for name in stored:
        sites.setdefault(name.split(".", 2)[2], []).append(_layer_of(name))
    return sites


def _create_arrays(group, sites, shapes, n_rows, width, config):
    from zarr.codecs import BloscCodec

    comp = [BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")]  # fastest measured here; padding zeros still vanish
    np_dtype = np.float16 if config.dtype == "float16" else np.float32
    b = config.batch_size
    group.create_array("lengths", shape=(n_rows,), chunks=(b,), dtype=np.int32, compressors=comp, fill_value=0)
    for site, layers in sites.items():
        shape, n = shapes[site], len(layers)
        if config.dtype == "float16":
            group.create_array(f"scale/{site}", shape=(n_rows, n), chunks=(b, n), dtype=np.int8,
                               compressors=comp, fill_value=0)
        for red in config.reductions:
            group.create_array(f"{red}/{site}", shape=(n_rows, n, *shape), chunks=(b, n, *shape),
                               dtype=np_dtype, compressors=comp, fill_value=0)
        if _keeps_tokens(site, config):
            group.create_array(f"tokens/{site}", shape=(n_rows, n, width, *shape), chunks=(b, 1, width, *shape),
                               dtype=np_dtype, compressors=comp, fill_value=0)


def extract(lm, df: pd.DataFrame, out: Path, config: ExtractConfig = ExtractConfig(), *,
            progress: bool = True, replace_mismatched: bool = False, log=print) -> dict:
    """Extract ``config``'s hooks of ``lm`` on the rows of ``df`` into the store at ``out``.

    Resumes an unfinished store with the same settings and reuses a finished one; a store made
    with other settings is an error, or is replaced (with a log line) if ``replace_mismatched``.
    Returns the manifest (also written as ``out/manifest.json``, last).
    """
    import zarr
    from tqdm.auto import tqdm

    out = Path(out)
    if df.empty:
        raise ValueError("no rows to extract (check the profile, emotion filter and max_per_emotion)")
    names = hook_names_for(lm, config)
    stored, aliases = _plan(names)
    last_layer = max(_layer_of(n) for n in names)
    texts = df["text"].tolist()
    enc_all = lm.encoder.encode(texts)  # CPU; only lengths and offsets are used here
    lengths = enc_all.lengths.numpy()
    order = np.argsort(lengths, kind="stable")
    width = int(lengths.max())
    n_ctx = getattr(lm.cfg, "n_ctx", None)
    if n_ctx and width > n_ctx:
        longest = int(lengths.argmax())
        raise ValueError(f"row {df['id'].iloc[longest]!r} has {width} tokens, more than {lm.name}'s context of "
                         f"{n_ctx}; drop or shorten such rows")
    n_rows = len(df)
    batches = [order[i:i + config.batch_size] for i in range(0, n_rows, config.batch_size)]
    identity = lm.identity()
    settings = {
        "format_version": FORMAT_VERSION, "config": asdict(config), "model": identity["name"],
        "weights_sha256": identity["weights_sha256"], "dataset_sha256": dataset_sha256(df),
        "hooks": names, "stored_hooks": stored, "aliases": aliases, "n_rows": n_rows, "max_len": width,
    }
    settings_sha = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if store_complete(out):
        done = json.loads((out / "manifest.json").read_text())
        if done.get("settings_sha256") == settings_sha:
            log(f"[extract] {relative(out)}: complete, reused")
            return done
        if not replace_mismatched:
            raise StoreMismatchError(f"{relative(out)} is a finished store made with other settings; "
                                     f"delete it or choose another output folder")
        log(f"[extract] {relative(out)}: made with other settings; replacing it")
        shutil.rmtree(out)
    progress_path = out / "progress.json"
    start = 0
    if progress_path.exists():
        state = json.loads(progress_path.read_text())
        if state.get("settings_sha256") != settings_sha and replace_mismatched:
            log(f"[extract] {relative(out)}: unfinished store with other settings; starting over")
            shutil.rmtree(out)
            state = None
    if progress_path.exists():
        if state.get("settings_sha256") != settings_sha:
            raise StoreMismatchError(
                f"{relative(out)} is an unfinished store started with other settings (model, data, hooks "
                f"or dtype differ); delete it to start over, or rerun with the settings it was started with")
        start = int(state["batches_done"])
        log(f"[extract] {relative(out)}: resuming at batch {start} of {len(batches)}")
    else:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        labels = df.iloc[order].assign(row=np.arange(n_rows), n_tokens=lengths[order])
        labels.to_json(out / "labels.jsonl", orient="records", lines=True)
    for stray in out.rglob("*.partial"):  # a chunk write cut short by a kill (zarr writes atomically)
        stray.unlink()
    group = zarr.open_group(str(out), mode="a")
    sites = _sites(stored)
    sink: dict[str, torch.Tensor] = {}
    hooks = [(f"blocks.{layer}.{site}", partial(_grab, site=site, li=li, n_layers=len(layers), sink=sink))
             for site, layers in sites.items() for li, layer in enumerate(layers)]
    hooks.append((f"blocks.{last_layer}.hook_resid_post", _stop))  # registered last: runs last
    if start == 0 and "lengths" not in group:
        _run_batch(lm, texts, df, batches[0][:1], hooks, sink)  # shapes from one row
        shapes = {site: tuple(sink[site].shape[3:]) for site in sites}
        group.attrs.update({**settings, "sites": sites, "shapes": {k: list(v) for k, v in shapes.items()},
                            "reductions": list(config.reductions),
                            "token_sites": [site for site in sites if _keeps_tokens(site, config)],
                            "dtype": config.dtype, "settings_sha256": settings_sha})
        _create_arrays(group, sites, shapes, n_rows, width, config)
        write_json(progress_path, {"settings_sha256": settings_sha, "batches_done": 0})
    f16 = config.dtype == "float16"
    worst_rel = 0.0
    t0 = time.perf_counter()
    bar = tqdm(total=len(batches), initial=start, desc=f"{lm.name} {out.name}", unit="batch",
               disable=not progress or os.environ.get("EMOTION_NO_PROGRESS") == "1", file=sys.stderr)
    writer = _Writer(group, progress_path, settings_sha, on_done=lambda: bar.update(1))
    try:
        with torch.inference_mode():
            for b in range(start, len(batches)):
                idx = batches[b]
                enc, mask, last, span = _run_batch(lm, texts, df, idx, hooks, sink)
                lo, hi, w = b * config.batch_size, b * config.batch_size + len(idx), enc.input_ids.shape[1]
                writes = [("lengths", np.s_[lo:hi], enc.lengths.cpu().numpy().astype(np.int32))]
                for site in sites:
                    act = sink.pop(site)  # [b, layers, pos, *shape]; padding zeroed so it never leaks
                    for row, n in enumerate(enc.lengths.tolist()):
                        act[row, :, n:] = 0
                    keep_tokens = _keeps_tokens(site, config)
                    reds = _reduce(act, mask, last, span)
                    if f16:  # the exponent comes from what is stored: every token, or only the reductions
                        basis = act if keep_tokens else torch.cat([r.nan_to_num(0.0) for r in reds.values()], -1)
                        stored_tokens, exp = _encode_f16(basis)
                        writes.append((f"scale/{site}", np.s_[lo:hi], exp.numpy()))
                    else:
                        stored_tokens, exp = act.numpy(), None
                    writes += [(f"{red}/{site}", np.s_[lo:hi], _to_store(reds[red], exp)) for red in config.reductions]
                    if keep_tokens:
                        writes.append((f"tokens/{site}", np.s_[lo:hi, :, :w], stored_tokens))
                        if f16 and b % 8 == 0:  # float16 error, measured on every 8th batch
                            worst_rel = max(worst_rel, _relative_error(stored_tokens, exp, act))
                writer.put(b + 1, writes)
    finally:
        writer.close()
    bar.close()
    wall = time.perf_counter() - t0
    n_tokens = int(lengths.sum())
    done_rows = sum(len(batches[b]) for b in range(start, len(batches)))
    done_tokens = int(sum(lengths[batches[b]].sum() for b in range(start, len(batches))))
    manifest = {
        **settings, "settings_sha256": settings_sha, "identity": identity, "n_tokens": n_tokens,
        "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
        "wall_s": round(wall, 3), "rows_this_run": done_rows,
        "samples_per_s": round(done_rows / wall, 2) if wall > 0 else None,
        "tokens_per_s": round(done_tokens / wall, 2) if wall > 0 else None,
        "float16_worst_relative_error": worst_rel if f16 and any(_keeps_tokens(s, config) for s in sites) else None,
        "resumed_at_batch": start,
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def _run_batch(lm, texts, df, idx, hooks, sink):
    enc = lm.encoder.encode([texts[i] for i in idx], device=lm.device)
    width = enc.input_ids.shape[1]
    mask = enc.attention_mask.bool().cpu()
    span = span_token_mask(enc.offsets, df["span_start"].to_numpy()[idx], df["span_end"].to_numpy()[idx], width)
    sink.clear()
    try:
        with torch.inference_mode(), lm.bridge.hooks(fwd_hooks=hooks):
            lm.bridge(enc.input_ids, attention_mask=enc.attention_mask)
    except _StopForward:
        pass
    return enc, mask, enc.last_index.cpu(), span


def main(argv: list[str] | None = None) -> int:
    """Command line: the same extraction as the notebook, for batch jobs."""
    import lib  # noqa: F401  (offline hub policy)
    from lib.datasets import load_profile
    from lib.models import load_model

    p = argparse.ArgumentParser(prog="python -m lib.extract", description="Extract activations into a store.")
    p.add_argument("--model", required=True)
    p.add_argument("--profile", required=True, help="baseline, extended, goemotions or goemotions:dev")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--hooks", nargs="*", default=[], help="full hook names (default: the default sites)")
    p.add_argument("--layers", nargs="*", type=int, default=None)
    p.add_argument("--per-head", action="store_true", help="also store attn.hook_z")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--device", default="auto")
    p.add_argument("--max-per-emotion", type=int, default=None)
    p.add_argument("--emotions", nargs="*", default=None)
    p.add_argument("--token-sites", nargs="*", default=["hook_resid_pre", "hook_resid_post"],
                   help="sites whose every token is stored ('*' for all; none: only reductions)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    profile, _, split = a.profile.partition(":")
    try:
        df = load_profile(profile, split=split or None, emotions=a.emotions, max_per_emotion=a.max_per_emotion,
                          seed=a.seed)
        lm = load_model(a.model, device=a.device)
        cfg = ExtractConfig(hooks=tuple(a.hooks), layers=tuple(a.layers) if a.layers else None,
                            per_head=a.per_head, batch_size=a.batch_size, dtype=a.dtype,
                            token_sites=tuple(a.token_sites))
        manifest = extract(lm, df, a.out, cfg)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("n_rows", "n_tokens", "bytes", "wall_s", "tokens_per_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
