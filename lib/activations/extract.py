"""Activation extraction into a resumable store (see ``lib.activations.store`` for the layout).

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

from lib.activations.names import check_hook_names, check_layers
from lib.models.encoding import span_token_mask
from lib.pipeline.provenance import relative, write_json
from lib.settings import apply_hub_policy, progress_bar
from lib.activations.store import FORMAT_VERSION, REDUCTIONS, quiet_zarr, store_complete

__all__ = ["DEFAULT_SITES", "ExtractConfig", "default_hook_names", "hook_names_for", "extract",
           "dataset_sha256", "StoreMismatchError"]

DEFAULT_SITES = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out")
_F16_MAX_EXP = 15  # scale rows so that max |x| < 2**15 = 32768 < 65504
_POS_CHUNK = 16  # positions per chunk of per-token arrays: short batches do not write the padding of long ones


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
    """What to extract. ``hooks`` empty means ``sites`` (default: the four default sites) at
    ``layers`` (None: all).

    Every site gets the sentence-end, mean and span reductions; the sites in ``token_sites``
    also keep every token (the residual stream by default: per-token MLP and attention outputs
    of every layer triple the store and are rarely needed; ask with ``("*",)``).
    """

    hooks: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None
    sites: tuple[str, ...] = DEFAULT_SITES  # used when ``hooks`` is empty
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
    names = list(config.hooks) or default_hook_names(n_layers, config.layers, sites=config.sites,
                                                                 per_head=config.per_head)
    return check_hook_names(names, lm.bridge.hook_dict, lm.name)


def dataset_sha256(df: pd.DataFrame) -> str:
    """Hash of the rows an extraction reads (ids, texts, labels, spans), in order."""
    cols = ["id", "text", "emotion", "profile", "split", "span_start", "span_end"]
    payload = df[cols].astype(str).to_csv(index=False).encode()
    return hashlib.sha256(payload).hexdigest()


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


def _stop(act, hook):
    raise _StopForward


class _Capture:
    """Hook state for one batch: each hook reduces its layer (and encodes its tokens) on the
    forward's device as the forward runs, so only what is stored is kept and moved off the device.

    Per site: ``red`` float32 [layers, b, 3, D] (sentence-end, mean, span; D = flattened shape),
    filled by one batched matmul per hook with weights [b, 3, pos] (a one-hot row at the last real
    token, the mean over real tokens, the mean over span tokens); for token sites ``tok``
    [b, layers, pos, *shape] in the stored dtype with padding zeroed, and for float16 ``exp`` int8
    [b, layers] (see ``_encode_f16``). Each hook costs a few passes over its activation: the
    matmul, the cast, and for float16 one min/max that sends the rare rows beyond float16's range
    (or non-finite values) down the careful path.
    """

    def __init__(self, sites: dict[str, list[int]], config: ExtractConfig):
        self.n_layers = {site: len(layers) for site, layers in sites.items()}
        self.keep = {site: _keeps_tokens(site, config) for site in sites}
        self.f16 = config.dtype == "float16"
        self.store_dtype = torch.float16 if self.f16 else torch.float32
        self.shapes: dict[str, tuple[int, ...]] = {}

    def begin(self, mask: torch.Tensor, last: torch.Tensor, span: torch.Tensor, measure: bool) -> None:
        """mask, span bool [b, pos]; last long [b]; all on the forward's device."""
        m, sp = mask.float(), span.float()
        self.pad = ~mask[:, :, None]
        self.span_n = sp.sum(1)
        onehot = torch.zeros_like(m)
        onehot[torch.arange(len(last), device=last.device), last] = 1.0
        self.weights = torch.stack([onehot, m / m.sum(1, keepdim=True), sp / self.span_n.clamp(min=1)[:, None]], 1)
        # padding zeroed by an AND on the stored bits (exact, and +0 even where the value is negative)
        self.padded = not bool(mask.all())
        bits = torch.int16 if self.f16 else torch.int32
        self.keep_bits = torch.where(mask, -1, 0).to(bits)[:, :, None]
        self.measure, self.worst = measure, []
        self.red, self.tok, self.exp = {}, {}, {}

    def hook(self, act, hook, *, site: str, li: int):
        b, p = act.shape[:2]
        self.shapes.setdefault(site, tuple(act.shape[2:]))
        flat = act.reshape(b, p, -1)
        flat = flat if flat.dtype == torch.float32 else flat.float()
        red = self.red.get(site)
        if red is None:
            red = self.red[site] = torch.empty((self.n_layers[site], b, 3, flat.shape[-1]), device=act.device)
        # padding rows get weight 0; they are finite (right padding: padding positions attend to real tokens)
        torch.bmm(self.weights, flat, out=red[li])
        if not self.keep[site]:
            return
        dst = self.tok.get(site)
        if dst is None:
            dst = self.tok[site] = torch.empty((b, self.n_layers[site], p, *act.shape[2:]), device=act.device,
                                               dtype=self.store_dtype)
            if self.f16:
                self.exp[site] = torch.zeros((b, self.n_layers[site]), dtype=torch.int8, device=act.device)
        out = dst[:, li].view(b, p, -1)
        careful = self.f16 and not _fits_f16(flat)  # rare: beyond float16's range (or not finite)
        measure = self.measure and self.f16
        exact = torch.where(self.pad, 0.0, flat)[:, None] if careful or measure else None
        if careful:
            x16, exp = _encode_f16(exact)
            out.copy_(x16[:, 0])
            self.exp[site][:, li] = exp[:, 0]
        else:
            out.copy_(flat)  # one pass: cast to the stored dtype
            if self.padded:
                bits = out.view(self.keep_bits.dtype)
                torch.bitwise_and(bits, self.keep_bits, out=bits)
        if measure:
            self.worst.append(_relative_error(out[:, None], self.exp[site][:, li:li + 1], exact))

    def finish(self) -> dict[str, dict]:
        """Per site, on the CPU: the stored reductions (and tokens, exponents) of this batch."""
        out = {}
        for site, red in self.red.items():
            red = red.permute(1, 0, 2, 3)  # [b, layers, 3, D]
            exp = self.exp.get(site)
            if self.f16 and exp is None:  # reductions only: exponents from the reductions themselves
                exp = torch.zeros(red.shape[:2], dtype=torch.int8, device=red.device)
                if not _fits_f16(red):
                    _, exp = _encode_f16(red.nan_to_num(0.0))
            red[:, :, 2][self.span_n == 0] = torch.nan  # no span tokens in that row
            red = red.reshape(*red.shape[:3], *self.shapes[site])
            reds = {k: _to_store(red[:, :, i], exp) for i, k in enumerate(REDUCTIONS)}
            out[site] = {"reductions": reds, "exp": None if exp is None else exp.cpu().numpy(),
                         "tokens": self.tok[site].cpu().numpy() if site in self.tok else None}
        return out

    def worst_relative_error(self) -> float:
        return max((float(w) for w in self.worst), default=0.0)


_F16_INF = 65520.0  # float32 values at or beyond this magnitude round to inf in float16


def _fits_f16(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is finite and casts to a finite float16 (one pass)."""
    lo, hi = torch.aminmax(x)
    return bool((lo > -_F16_INF) & (hi < _F16_INF))  # False for NaN too


def _row_exponents(act: torch.Tensor) -> torch.Tensor:
    """int8 [b, layers]: k >= 0 with max |x| * 2**-k < 2**15 per row and layer (padding is zero)."""
    lo, hi = torch.aminmax(act.flatten(2), dim=2)
    peak = torch.maximum(hi, -lo)
    exp = torch.ceil(torch.log2(peak.clamp(min=1.0))) - _F16_MAX_EXP + 1
    return exp.clamp(min=0).to(torch.int8)


def _scale_view(exp: torch.Tensor, ndim: int) -> torch.Tensor:
    return exp.float().view(*exp.shape, *(1,) * (ndim - exp.ndim))


def _to_store(x: torch.Tensor, exp: torch.Tensor | None) -> np.ndarray:
    """x [b, layers, ...] -> stored dtype on the CPU; float16 rows divided by 2**exp first (exact)."""
    if exp is None:
        return x.cpu().numpy()
    if exp.any():
        x = x * torch.exp2(-_scale_view(exp, x.ndim))
    return x.to(torch.float16).cpu().numpy()


def _encode_f16(act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 of ``act`` [b, layers, ...] (padding zero) and the int8 exponents [b, layers], on its device.

    One cast in the common case; only (row, layer) pairs that overflow float16 get k > 0, so a
    row's stored bytes never depend on the other rows of its batch.
    """
    x16 = act.to(torch.float16)
    over = torch.isinf(x16).flatten(2).any(2)
    exp = torch.zeros(over.shape, dtype=torch.int8, device=act.device)
    if over.any():
        exp = torch.where(over, _row_exponents(act), exp)
        x16 = (act * torch.exp2(-_scale_view(exp, act.ndim))).to(torch.float16)
    return x16, exp


def _from_store(x, exp: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    return x.float() * torch.exp2(_scale_view(exp.to(x.device), x.ndim))


def _relative_error(stored, exp: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Largest ||stored - exact|| / ||exact|| over the real token vectors (a 0-d tensor, no sync)."""
    back = _from_store(stored, exp)
    num = (back - act).flatten(3).norm(dim=-1)
    den = act.flatten(3).norm(dim=-1)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), 0.0).max()


class _ChunkEncoder:
    """Writes whole chunks of one zarr array straight to its files, the way zarr itself encodes them.

    zarr's own write path costs about five times the compression and the file write (measured
    here), which on two cores is taken from the forward pass. Chunks are encoded with the array's
    own codecs (little-endian bytes, then Blosc) and written atomically (a temporary file renamed),
    so zarr reads them back as if it had written them; a test compares the files byte for byte.
    """

    def __init__(self, root: Path, name: str, arr):
        from zarr.codecs import BloscCodec, BytesCodec

        codecs = arr.metadata.codecs
        if not (len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)
                and (codecs[0].endian is None or codecs[0].endian.value == sys.byteorder)):
            raise ValueError(f"unexpected codecs for {name}: {codecs}")
        self.dir = root / name
        self.chunks = tuple(arr.chunks)
        self.dtype = arr.dtype
        self.fill = arr.fill_value
        self.key = arr.metadata.chunk_key_encoding.encode_chunk_key
        self.blosc = codecs[1]._blosc_codec
        self.made: set[Path] = set()  # chunk folders already created

    def write(self, start: tuple[int, ...], data: np.ndarray) -> None:
        """Write ``data`` at offset ``start``; the region must begin on chunk boundaries, and chunks it
        covers only in part are filled with the fill value (here: padding and rows past the end)."""
        start = tuple(start) + (0,) * (data.ndim - len(start))
        first = [s // c for s, c in zip(start, self.chunks)]
        counts = [-(-d // c) for d, c in zip(data.shape, self.chunks)]
        for rel in np.ndindex(*counts):
            lo = [r * c for r, c in zip(rel, self.chunks)]
            part = data[tuple(slice(a, a + c) for a, c in zip(lo, self.chunks))]
            if part.shape == self.chunks:
                chunk = np.ascontiguousarray(part, dtype=self.dtype)
            else:
                chunk = np.full(self.chunks, self.fill, dtype=self.dtype)
                chunk[tuple(slice(0, s) for s in part.shape)] = part
            path = self.dir / self.key(tuple(f + r for f, r in zip(first, rel)))
            if path.parent not in self.made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.made.add(path.parent)
            tmp = path.with_name(path.name + ".partial")
            tmp.write_bytes(self.blosc.encode(chunk.view(np.uint8).reshape(-1)))
            os.replace(tmp, path)


class _Writer:
    """Writes batches in a background thread, in order, then records each as done (resume point).

    Compression and file writes overlap the next forward pass; at most two batches wait in memory.
    """

    def __init__(self, group, progress_path: Path, settings_sha: str, on_done):
        import queue
        import threading

        import zarr

        root = progress_path.parent
        with quiet_zarr():
            members = list(group.members(max_depth=None))
        self.encoders = {name: _ChunkEncoder(root, name, arr) for name, arr in members if isinstance(arr, zarr.Array)}
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
                for name, start, data in writes:
                    self.encoders[name].write(start, data)
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
            group.create_array(f"tokens/{site}", shape=(n_rows, n, width, *shape), chunks=(b, 1, min(width, _POS_CHUNK), *shape),
                               dtype=np_dtype, compressors=comp, fill_value=0)


def extract(lm, df: pd.DataFrame, out: Path, config: ExtractConfig = ExtractConfig(), *,
            progress: bool = True, replace_mismatched: bool = False, log=print) -> dict:
    """Extract ``config``'s hooks of ``lm`` on the rows of ``df`` into the store at ``out``.

    Resumes an unfinished store with the same settings and reuses a finished one; a store made
    with other settings is an error, or is replaced (with a log line) if ``replace_mismatched``.
    Returns the manifest (also written as ``out/manifest.json``, last).
    """
    import zarr

    out = Path(out)
    if df.empty:
        raise ValueError("no rows to extract (check the profile, emotion filter and max_per_emotion)")
    names = hook_names_for(lm, config)
    stored, aliases = _plan(names)
    last_layer = max(_layer_of(n) for n in names)
    texts = df["text"].tolist()
    enc_all = lm.encoder.encode(texts)  # CPU, once: batches are row slices of it (right-padded)
    lengths = enc_all.lengths.numpy()
    order = np.argsort(lengths, kind="stable")
    width = int(lengths.max())
    n_ctx = getattr(lm.cfg, "n_ctx", None)
    if n_ctx and width > n_ctx:
        longest = int(lengths.argmax())
        raise ValueError(f"row {df['id'].iloc[longest]!r} has {width} tokens, more than {lm.name}'s context of "
                         f"{n_ctx}; drop or shorten such rows")
    span_all = span_token_mask(enc_all.offsets, df["span_start"].to_numpy(), df["span_end"].to_numpy(), width)
    encoded = (enc_all.input_ids, enc_all.attention_mask, span_all)
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
    with quiet_zarr():
        group = zarr.open_group(str(out), mode="a")
    sites = _sites(stored)
    cap = _Capture(sites, config)
    hooks = [(f"blocks.{layer}.{site}", partial(cap.hook, site=site, li=li))
             for site, layers in sites.items() for li, layer in enumerate(layers)]
    hooks.append((f"blocks.{last_layer}.hook_resid_post", _stop))  # registered last: runs last
    if start == 0 and "lengths" not in group:
        _run_batch(lm, encoded, batches[0][:1], hooks, cap, measure=False)  # shapes from one row
        shapes = dict(cap.shapes)
        group.attrs.update({**settings, "sites": sites, "shapes": {k: list(v) for k, v in shapes.items()},
                            "reductions": list(config.reductions),
                            "token_sites": [site for site in sites if _keeps_tokens(site, config)],
                            "dtype": config.dtype, "settings_sha256": settings_sha})
        _create_arrays(group, sites, shapes, n_rows, width, config)
        write_json(progress_path, {"settings_sha256": settings_sha, "batches_done": 0})
    f16 = config.dtype == "float16"
    worst_rel = 0.0
    t0 = time.perf_counter()
    bar = progress_bar(total=len(batches), initial=start, desc=f"{lm.name} {out.name}", unit="batch",
               disable=not progress or os.environ.get("EMOTION_NO_PROGRESS") == "1", file=sys.stderr)
    writer = _Writer(group, progress_path, settings_sha, on_done=lambda: bar.update(1))
    try:
        with torch.inference_mode():
            for b in range(start, len(batches)):
                idx = batches[b]
                # float16 error measured on every 8th batch
                _run_batch(lm, encoded, idx, hooks, cap, measure=f16 and b % 8 == 0)
                lo = b * config.batch_size
                writes = [("lengths", (lo,), lengths[idx].astype(np.int32))]
                for site, got in cap.finish().items():
                    if got["exp"] is not None:
                        writes.append((f"scale/{site}", (lo,), got["exp"]))
                    writes += [(f"{red}/{site}", (lo,), got["reductions"][red]) for red in config.reductions]
                    if got["tokens"] is not None:
                        writes.append((f"tokens/{site}", (lo,), got["tokens"]))
                worst_rel = max(worst_rel, cap.worst_relative_error())
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


def _run_batch(lm, encoded, idx, hooks, cap: _Capture, measure: bool) -> None:
    """Forward rows ``idx`` of ``encoded`` (ids, mask, span mask of every row) with the capture hooks."""
    ids, mask, span = (t[idx] for t in encoded)
    lengths = mask.sum(1)
    width = int(lengths.max())  # right-padded: the batch alone would be this wide
    ids, mask, span = (t[:, :width].to(lm.device) for t in (ids, mask, span))
    cap.begin(mask.bool(), (lengths - 1).to(lm.device), span, measure)
    try:
        with torch.inference_mode(), lm.bridge.hooks(fwd_hooks=hooks):
            lm.bridge(ids, attention_mask=mask)
    except _StopForward:
        pass


def main(argv: list[str] | None = None) -> int:
    """Command line: the same extraction as the notebook, for batch jobs."""
    apply_hub_policy()
    from lib.text.datasets import load_profile
    from lib.models.loading import load_model

    p = argparse.ArgumentParser(prog="python -m lib.activations", description="Extract activations into a store.")
    p.add_argument("--model", required=True)
    p.add_argument("--profile", required=True, help="baseline, extended, goemotions or goemotions:dev")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--hooks", nargs="*", default=[], help="full hook names (default: the default sites)")
    p.add_argument("--layers", nargs="*", type=int, default=None)
    p.add_argument("--sites", nargs="*", default=list(DEFAULT_SITES), help="sites inside a block, used without --hooks")
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
        cfg = ExtractConfig(hooks=tuple(a.hooks), layers=tuple(a.layers) if a.layers else None, sites=tuple(a.sites),
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
