"""c/a measured in alternating pairs: (a) bare forward, then (c) our extraction, N times in one process.

`benchmarks/extraction.py` runs (a), (b), (c) once each, so (c) always follows (b), which frees
several GB just before (c) starts. On this kind of VM, memory freed a few seconds earlier is
cheap to touch again and memory handed back to the host is not (about 0.4 GB/s to touch again),
so the order changes what (c) costs. This script alternates (a) and (c) so each (c) runs in the
steady state of repeated extraction, and prints every pair and the median.

Usage: .venv/bin/python benchmarks/extraction_pairs.py [--pairs 3] [--model smollm2-135m] [--rows 900]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from lib.settings import apply_hub_policy

apply_hub_policy()  # before transformers is imported
from extraction import bare_forward, batches, ours, rows  # the script beside this one
from lib.models.loading import load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=900)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pairs", type=int, default=3)
    a = p.parse_args()
    lm = load_model(a.model, device="cpu")
    df = rows(a.rows)
    encs, n_tokens = batches(lm, df, a.batch_size)
    bare_forward(lm, encs[:2] + encs[-1:])  # warm-up
    ta, tc = [], []
    for i in range(a.pairs):
        ta.append(bare_forward(lm, encs))
        tmp = Path(tempfile.mkdtemp(prefix="bench-pairs-"))
        try:
            tc.append(ours(lm, df, tmp / "store", a.batch_size)[0])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"pair {i + 1}: (a) {ta[-1]:.2f} s  (c) {tc[-1]:.2f} s  c/a {ta[-1] / tc[-1]:.3f}", flush=True)
    ma, mc = statistics.median(ta), statistics.median(tc)
    print(f"{a.model}, {len(df)} rows, {n_tokens} tokens: median (a) {ma:.2f} s, (c) {mc:.2f} s, "
          f"c/a {ma / mc:.3f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
