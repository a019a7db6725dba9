"""Extraction benchmark: bare forward (a), the seed's way (b), our store (c), on the same batches.

(a) forward through all blocks, no hooks, no unembedding: the floor for this work.
(b) the seed's way: run_with_cache of resid_pre and resid_post of every layer, with logits,
    held in memory as float32, then written to a scratch pickle file (written, never read back).
(c) lib.activations.extract.extract with the default sites (resid_pre, resid_post, mlp_out, attn_out; every token plus
    the reductions) written to a float16 zarr store, every chunk with its CRC32C checksum.
(c0) the same without checksums, and the checksums' own cost: zarr's crc32c codec timed over every chunk
    of (c)'s store, as a share of the bare forward (target < 3 %).
Then the peak RSS of (c) in fresh processes at 1x and 4x the rows (CPU only: skipped with --device cuda).

--device picks where the model runs for (a), (b) and (c) (default cpu); on CUDA each timing ends with
torch.cuda.synchronize() so queued kernels are counted.

Usage: .venv/bin/python benchmarks/extraction.py [--model smollm2-135m] [--rows 900] [--batch-size 32]
       [--device cpu|cuda|cuda:N] [--no-rss | --rss-only]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.settings import apply_hub_policy

apply_hub_policy()  # before transformers is imported
from benchmarks.devices import device_name, sync
from lib.text.datasets import load_profiles
from lib.activations.capture import StopForward, stop_forward_hook
from lib.activations.extract import extract
from lib.activations.names import act_name
from lib.activations.plan import ExtractConfig
from lib.models.loading import load_model


def rows(n: int) -> pd.DataFrame:
    """The first ``n`` authored rows (baseline then extended), repeated with new ids if needed."""
    base = load_profiles(["baseline", "extended"])
    reps = -(-n // len(base))
    df = pd.concat([base.assign(id=base["id"] + f"-r{i}") for i in range(reps)], ignore_index=True)
    return df.iloc[:n].reset_index(drop=True)


def batches(lm, df, batch_size):
    enc = lm.encoder.encode(df["text"].tolist())
    order = np.argsort(enc.lengths.numpy(), kind="stable")
    return [lm.encoder.encode(df["text"].iloc[order[i:i + batch_size]].tolist(), device=lm.device)
            for i in range(0, len(df), batch_size)], int(enc.lengths.sum())


def bare_forward(lm, encs) -> float:
    t0 = time.perf_counter()
    stop = [(act_name("resid_post", lm.cfg.n_layers - 1), stop_forward_hook)]
    with torch.inference_mode(), lm.bridge.hooks(fwd_hooks=stop):
        for e in encs:
            try:
                lm.bridge(e.input_ids, attention_mask=e.attention_mask)
            except StopForward:
                pass
    sync(lm.device)
    return time.perf_counter() - t0


def seed_way(lm, encs, scratch: Path) -> tuple[float, int]:
    names = [act_name(k, i) for i in range(lm.cfg.n_layers) for k in ("resid_pre", "resid_post")]
    t0 = time.perf_counter()
    held = {"resid_pre": [], "resid_post": []}
    with torch.inference_mode():
        for e in encs:
            _, cache = lm.bridge.run_with_cache(e.input_ids, attention_mask=e.attention_mask, names_filter=names)
            for k in held:
                held[k].append(torch.stack([cache[act_name(k, i)] for i in range(lm.cfg.n_layers)], 1)
                               .float().cpu().numpy())
    with open(scratch, "wb") as fh:  # the seed's format; written for the comparison, never loaded
        pickle.dump(held, fh, protocol=pickle.HIGHEST_PROTOCOL)
    sync(lm.device)
    return time.perf_counter() - t0, scratch.stat().st_size


def ours(lm, df, out: Path, batch_size: int, checksum: bool = True) -> tuple[float, dict]:
    t0 = time.perf_counter()
    manifest = extract(lm, df, out, ExtractConfig(batch_size=batch_size, checksum=checksum), progress=False,
                       log=lambda *_: None)
    sync(lm.device)
    return time.perf_counter() - t0, manifest


def checksum_seconds(store: Path) -> float:
    """Time zarr's crc32c codec takes to checksum every chunk of ``store`` (their compressed bytes)."""
    from lib.activations.integrity import add_checksum, chunk_files, crc32c_codec

    codec = crc32c_codec()
    blobs = [(store / array / name).read_bytes()[:-4]
             for array in json.loads((store / "manifest.json").read_text())["integrity"]["chunks"]
             for name in chunk_files(store, array)]
    t0 = time.perf_counter()
    for blob in blobs:
        add_checksum(codec, blob)
    return time.perf_counter() - t0


def resid_bytes(out: Path) -> int:
    """On-disk bytes of the content (b) holds: resid_pre and resid_post tokens (and their scales)."""
    parts = [out / "tokens" / "hook_resid_pre", out / "tokens" / "hook_resid_post",
             out / "scale" / "hook_resid_pre", out / "scale" / "hook_resid_post"]
    return sum(f.stat().st_size for p in parts if p.exists() for f in p.rglob("*") if f.is_file())


def child(model: str, n: int, batch_size: int, out: str) -> None:
    """Peak RSS of the whole process, and the highest RSS sampled while extraction runs."""
    import resource
    import threading

    import psutil

    lm = load_model(model, device="cpu")
    df = rows(n)
    proc, peak, done = psutil.Process(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    extract(lm, df, Path(out), ExtractConfig(batch_size=batch_size), progress=False, log=lambda *_: None)
    done.set()
    thread.join()
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "extraction_rss_mb": peak[0] / 2**20}))


def _throughput(lm, df, encs, n_tokens, tmp, a) -> None:
    print(f"{a.model}: {len(df)} rows, {n_tokens} tokens, batch {a.batch_size}, {torch.get_num_threads()} threads, "
          f"device {device_name(lm.device)}")
    bare_forward(lm, encs[:2] + encs[-1:])  # warm-up: shortest and longest batches
    ta = bare_forward(lm, encs)
    tb, b_bytes = seed_way(lm, encs, tmp / "seed.pkl")
    (tmp / "seed.pkl").unlink()
    if a.c0_first:  # the run after another one writes into pages just freed: alternate to see that effect
        tc0, _ = ours(lm, df, tmp / "store0", a.batch_size, checksum=False)
        shutil.rmtree(tmp / "store0")
    tc, manifest = ours(lm, df, tmp / "store", a.batch_size)
    c_bytes = resid_bytes(tmp / "store")
    tcrc = checksum_seconds(tmp / "store")
    if not a.c0_first:
        tc0, _ = ours(lm, df, tmp / "store0", a.batch_size, checksum=False)
        shutil.rmtree(tmp / "store0")
    print(f"(a) bare forward        {n_tokens / ta:8.0f} tokens/s  ({ta:.1f} s)")
    print(f"(b) seed's way          {n_tokens / tb:8.0f} tokens/s  ({tb:.1f} s, {b_bytes / 1e9:.2f} GB pickle)")
    print(f"(c) ours, default sites {n_tokens / tc:8.0f} tokens/s  ({tc:.1f} s, {manifest['bytes'] / 1e9:.2f} GB store, "
          f"float16 worst relative error {manifest['float16_worst_relative_error']:.1e})")
    print(f"(c0) ours, no checksums {n_tokens / tc0:8.0f} tokens/s  ({tc0:.1f} s)")
    print(f"checksums: time c / time c0 = {tc / tc0:.3f}; crc32c over every chunk {tcrc:.3f} s = {100 * tcrc / ta:.2f} % of the "
          f"bare forward   (target < 3 %)")
    print(f"c/a = {ta / tc:.3f}   (target >= 0.9)")
    print(f"c/b = {tb / tc:.3f}   (target >= 1.5)")
    print(f"bytes of c's resid_pre + resid_post / bytes of b = {c_bytes / b_bytes:.3f}   (target <= 0.3)")
    shutil.rmtree(tmp / "store")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=900)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--child", nargs=2, metavar=("ROWS", "OUT"))
    p.add_argument("--rss-only", action="store_true", help="only the peak-RSS part")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS part")
    p.add_argument("--c0-first", action="store_true", help="run (c0) before (c) instead of after it")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where (a), (b), (c) run (RSS part: cpu only)")
    a = p.parse_args()
    if a.child:
        child(a.model, int(a.child[0]), a.batch_size, a.child[1])
        return
    torch.manual_seed(0)
    on_cuda = a.device.startswith("cuda")
    if a.rss_only and on_cuda:
        p.error("--rss-only measures CPU extraction; use --device cpu")
    lm = load_model(a.model, device=a.device)
    df = rows(a.rows)
    encs, n_tokens = batches(lm, df, a.batch_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        if not a.rss_only:
            _throughput(lm, df, encs, n_tokens, tmp, a)
        if a.no_rss:
            return
        if on_cuda:
            print(f"peak RSS part skipped: it measures CPU extraction, and this run is on {device_name(lm.device)}")
            return
        rss = {}
        for mult in (1, 4):
            out = tmp / f"rss{mult}"
            proc = subprocess.run([sys.executable, __file__, "--model", a.model, "--batch-size", str(a.batch_size),
                                   "--child", str(a.rows * mult), str(out)], capture_output=True, text=True,
                                  env={**os.environ})
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            rss[mult] = json.loads(proc.stdout.strip().splitlines()[-1])
            shutil.rmtree(out)
        for key, what in (("peak_rss_mb", "peak RSS of the process (c)"),
                          ("extraction_rss_mb", "highest RSS while (c) extracts")):
            print(f"{what}: {rss[1][key]:.0f} MB at {a.rows} rows, {rss[4][key]:.0f} MB at {4 * a.rows} rows, "
                  f"ratio {rss[4][key] / rss[1][key]:.3f}   (target <= 1.10)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
