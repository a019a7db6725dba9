"""Time all-layer-pair CKA (linear, debiased, RBF) and a linear-CKA permutation test between two synthetic
"models" shaped like SmolLM2-135M (30 layers, width 576) and Gemma 3 270M (18 layers, width 640) on n texts,
against a naive loop of single-pair calls (a few pairs timed, extrapolated to all pairs).

Usage: .venv/bin/python benchmarks/cka.py [--n 2000] [--perms 200] [--naive-pairs 3]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from threadpoolctl import threadpool_info

from lib.geometry.cka import cka_matrix, debiased_cka, linear_cka, permutation_test, rbf_cka

SINGLE = {"linear": linear_cka, "debiased": debiased_cka, "rbf": rbf_cka}


def synthetic_model(latent: np.ndarray, n_layers: int, width: int, seed: int) -> list[np.ndarray]:
    """Layers [n, width] that read a shared latent [n, k] with a sharper nonlinearity at each depth, plus noise."""
    rng = np.random.default_rng(seed)
    embed = rng.standard_normal((latent.shape[1], width)) / np.sqrt(latent.shape[1])
    base = latent @ embed
    layers = []
    for depth in np.linspace(0.0, 1.0, n_layers):
        signed_permutation = rng.permutation(width), rng.choice([-1.0, 1.0], width)  # a cheap orthogonal map
        h = np.tanh((0.3 + 4.0 * depth) * base)[:, signed_permutation[0]] * signed_permutation[1]
        layers.append((h + 0.3 * rng.standard_normal(base.shape)).astype(np.float32))
    return layers


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--perms", type=int, default=200)
    ap.add_argument("--naive-pairs", type=int, default=3)
    args = ap.parse_args()
    latent = np.random.default_rng(0).standard_normal((args.n, 96))
    xs = synthetic_model(latent, 30, 576, seed=1)  # SmolLM2-135M-like
    ys = synthetic_model(latent, 18, 640, seed=2)  # Gemma-3-270M-like
    pairs = len(xs) * len(ys)
    sample = [(i, i * len(ys) // len(xs)) for i in range(0, len(xs), max(1, len(xs) // args.naive_pairs))]
    sample = sample[:args.naive_pairs]
    blas = ", ".join(f"{p['internal_api']} {p['num_threads']} threads" for p in threadpool_info())
    print(f"n={args.n} texts; X: {len(xs)} layers x 576, Y: {len(ys)} layers x 640 -> {pairs} layer pairs; "
          f"torch {torch.get_num_threads()} threads, {blas}, {os.cpu_count()} cpus visible")
    print(f"{'kind':<9} {'cka_matrix s':>12} {'single s/pair':>14} {pairs:>4} single calls s (extrap.) "
          f"{'speed-up':>8}   CKA at layers (0,0) (10,6) (20,12) (29,17)")
    for kind in ("linear", "debiased", "rbf"):
        m, t_matrix = timed(cka_matrix, xs, ys, kind)
        t0 = time.perf_counter()
        for i, j in sample:  # each single call recomputes its own kernels: the naive loop body
            single = SINGLE[kind](xs[i], ys[j])
            assert abs(single - m[i, j]) < 1e-8, (kind, i, j, single, m[i, j])
        per_pair = (time.perf_counter() - t0) / len(sample)
        naive = per_pair * pairs
        print(f"{kind:<9} {t_matrix:>12.2f} {per_pair:>14.3f} {naive:>30.1f} {naive / t_matrix:>7.1f}x"
              f"   {np.round(m[[0, 10, 20, 29], [0, 6, 12, 17]], 3).tolist()}")
    res, t_perm = timed(permutation_test, xs, ys, "linear", n_perm=args.perms, seed=0)
    per_pair = np.mean([timed(linear_cka, xs[i], ys[j][np.random.default_rng(i).permutation(args.n)])[1]
                        for i, j in sample])
    naive = per_pair * pairs * args.perms
    print(f"permutation test, linear CKA, {args.perms} permutations x {pairs} pairs: {t_perm:.1f} s "
          f"({1000 * t_perm / args.perms:.0f} ms per permutation); naive single calls (extrap.) {naive:.0f} s; "
          f"speed-up {naive / t_perm:.0f}x")
    print(f"  p-values in [{res.p_value.min():.4f}, {res.p_value.max():.4f}]; null mean {res.null_mean.mean():.3f}, "
          f"largest null 95th percentile {res.null_q95.max():.3f}, smallest observed CKA {res.observed.min():.3f}")


if __name__ == "__main__":
    main()
