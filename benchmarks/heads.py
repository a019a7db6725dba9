"""Exact single-head sweep benchmark: naive (one full forward per head) vs ours, same prompts, one process.

For every head of every layer, mean-ablate the head (its z replaced by its mean over the prompts at the same
position)
and read the readout at the last token (a probe on the last layer's resid_post and the
log-probability of continuation tokens): at the last position only, and at all positions.
(naive) one full TransformerLens forward per head, z edited on blocks.L.attn.hook_z;
(fast)  lib.interventions.sweep.sweep_fast: starts from the cached clean residual at layer L, recomputes only
        the last token against cached keys and values (last position), all heads of a layer in one
        batch, unembedding only at the last position.
Prints times, ratios, the largest difference between the two, and the Spearman correlation of
attribution patching with exact patching (emotion -> neutral, same length) on the probe's log-odds.

Usage: .venv/bin/python benchmarks/heads.py [--model smollm2-135m] [--prompts 32] [--tokens 16]
       [--device cpu|cuda] [--layers N]   (--layers: time the naive sweep on the first N layers and
       extrapolate; every layer costs the naive sweep the same full forward per head)
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from lib.settings import apply_hub_policy

apply_hub_policy()  # before transformers is imported
from lib.activations.names import act_name
from lib.geometry.probes import fit_probe
from lib.interventions.readout import continuation_ids, readout_from_probe
from lib.interventions.scores import attribution_patching
from lib.interventions.sweep import clean_state, position_mean_z, sweep_fast, sweep_naive
from lib.models.loading import load_model
from lib.text.datasets import load_profiles
from lib.text.generated import load_lexicon


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def prompts(lm, df, n: int, tokens: int) -> torch.Tensor:
    """The first ``n`` rows of at least ``tokens`` tokens, cut to ``tokens`` (one length, no padding)."""
    lengths = np.array(lm.encoder.n_tokens(df["text"].tolist()))
    rows = df[lengths >= tokens].head(n)
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} rows have >= {tokens} tokens; ask for fewer prompts or tokens")
    enc = lm.encoder.encode(rows["text"].tolist())
    return enc.input_ids[:, :tokens].to(lm.device)


def fit_readout(lm, df, n_rows: int = 400):
    """The last layer's probe, fitted on the sentence-end resid_post of ``n_rows`` authored rows."""
    layer = lm.cfg.n_layers - 1
    sub = df.groupby("emotion").head(n_rows // 4)
    name = act_name("resid_post", layer)
    xs = []
    with torch.inference_mode():
        for i in range(0, len(sub), 32):
            enc = lm.encoder.encode(sub["text"].iloc[i:i + 32].tolist(), device=lm.device)
            _, cache = lm.bridge.run_with_cache(enc.input_ids, attention_mask=enc.attention_mask, names_filter=[name])
            xs.append(cache[name][torch.arange(len(enc.lengths)), enc.lengths - 1].float().cpu().numpy())
    lex = load_lexicon()
    probe = fit_probe(np.concatenate(xs), sub["emotion"].to_numpy())
    return readout_from_probe(probe, layer, continuation_ids(lm.tokenizer, {e: lex[e]["continuations"] for e in lex}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=None, help="naive sweep on the first N layers only (extrapolated)")
    a = p.parse_args()

    lm = load_model(a.model, device=a.device)
    hf = lm.bridge.original_model
    df = load_profiles(["baseline", "extended"])
    ids = prompts(lm, df, a.prompts, a.tokens)
    readout = fit_readout(lm, df)
    n_layers, n_heads = lm.cfg.n_layers, lm.cfg.n_heads
    naive_layers = list(range(n_layers if a.layers is None else min(a.layers, n_layers)))
    dev = (f"{a.device} ({torch.cuda.get_device_name(a.device)})" if a.device.startswith("cuda")
           else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
    print(f"{a.model}: {n_layers} layers x {n_heads} heads = {n_layers * n_heads} heads; {ids.shape[0]} prompts x "
          f"{ids.shape[1]} tokens; {torch.get_num_threads()} threads; device {dev}")

    t0 = time.perf_counter()
    state = clean_state(hf, ids, readout)
    mean_z = position_mean_z(state)
    sync(lm.device)
    t_clean = time.perf_counter() - t0
    for pos in ("last", "all"):
        t0 = time.perf_counter()
        fast = sweep_fast(hf, state, readout, "mean", pos, mean_z=mean_z)
        sync(lm.device)
        t_fast = time.perf_counter() - t0 + t_clean
        t0 = time.perf_counter()
        naive = sweep_naive(lm, ids, readout, "mean", pos, layers=naive_layers, mean_z=mean_z)
        sync(lm.device)
        t_naive = (time.perf_counter() - t0) * n_layers / len(naive_layers)
        diff = max(float(np.abs(fast[k][naive_layers] - naive[k]).max()) for k in naive)
        note = "" if len(naive_layers) == n_layers else f", extrapolated from {len(naive_layers)} layers"
        print(f"{pos:>4} position(s): naive {t_naive:7.1f} s{note}   ours {t_fast:6.1f} s (incl. clean run "
              f"{t_clean:.1f} s)   ratio {t_naive / t_fast:5.1f}x   (target >= {10 if pos == 'last' else 2}x)   "
              f"max |ours - naive| {diff:.1e}  (target <= 1e-4)")

    emo = prompts(lm, df[df["emotion"] == "gratitude"], min(16, a.prompts), a.tokens)
    neu = prompts(lm, df[df["emotion"] == "neutral"], min(16, a.prompts), a.tokens)
    se, sn = clean_state(hf, emo, readout), clean_state(hf, neu, readout)
    k = readout.classes.index("gratitude")
    for pos in ("last", "all"):
        exact = sweep_fast(hf, sn, readout, "patch", pos, source=se)["logodds"][..., k].mean(-1) \
            - float(sn.metrics["logodds"][:, k].mean())
        t0 = time.perf_counter()
        attr = attribution_patching(hf, neu, se.z, readout, "gratitude", pos)
        t_attr = time.perf_counter() - t0
        rho = spearmanr(exact.ravel(), attr.ravel())[0]
        print(f"attribution vs exact patching (gratitude -> neutral, {pos} position(s), {emo.shape[0]} pairs): "
              f"Spearman {rho:.3f} (target >= 0.8); attribution took {t_attr:.2f} s for all heads")


if __name__ == "__main__":
    main()
