"""Steering-grid benchmark: a grid of steering settings generated as rows of shared batches (ours) vs one
``generate_steered`` call per setting vs the ``steering-vectors`` library one setting at a time, in one process.

Grid: 2 "emotions" (random unit directions, seeded) x 3 layers (spread over the model's depth; a 2-layer tiny
model has only 2) x 4 strengths (add, at 0.25, 0.5, 1, 2 times the layer's mean residual norm on the prompts)
x 8 prompts x 16 new tokens, greedy.

(grid)      lib.steering.grid.generate_grid: every (setting, prompt) a row, batches of --batch-rows rows.
(per-set)   lib.steering.hooks.generate_steered: one left-padded batch of the 8 prompts per setting.
(library)   steering-vectors: SteeringVector({layer: v}, "decoder_block").apply(model, multiplier=s,
            min_token_index=0) around model.generate on the same left-padded batch, one setting at a time (it
            also steers the padding, so its texts are not expected to equal ours).
Prints wall time and new tokens/s (nominal: rows x new tokens) of each, per-set / grid (target >= 5) and
library / grid, and the share of (setting, prompt) texts where grid and per-set agree.

Usage: .venv/bin/python benchmarks/steering.py [--model tiny-llama] [--device cpu|cuda] [--batch-rows 64]
       [--new-tokens 16] [--repeats 1]   (on a tiny model the times say little about a real one)
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from lib.settings import apply_hub_policy

apply_hub_policy()  # before transformers is imported
from benchmarks.devices import device_name, sync
from lib.models.archs import blocks_of
from lib.models.loading import load_hf_model
from lib.models.registry import resolve_spec
from lib.steering.grid import Setting, generate_grid
from lib.steering.hooks import _left_padded, generate_steered, mean_residual_norm

PROMPTS = ["Thank you so much for your help with the move.", "The meeting has been moved to Thursday.",
           "Why does this keep happening?", "I'm sorry I missed your call.", "Could you send me the report?",
           "The library closes at six on weekdays.", "We are grateful for your patience.", "My bad, I forgot."]
EMOTIONS = ("gratitude", "anger")
STRENGTHS = (0.25, 0.5, 1.0, 2.0)


def make_settings(hf, tokenizer) -> list[Setting]:
    n = len(blocks_of(hf))
    layers = sorted({round(i * (n - 1) / 2) for i in range(3)})
    enc = _left_padded(tokenizer, PROMPTS)
    ids, mask = enc.input_ids.to(hf.device), enc.attention_mask.to(hf.device)
    d = hf.get_input_embeddings().weight.shape[1]
    out = []
    for e, emotion in enumerate(EMOTIONS):
        v = torch.randn(d, generator=torch.Generator().manual_seed(e))
        v = v / v.norm()
        for layer in layers:
            norm = mean_residual_norm(hf, ids, mask, layer)
            for k in STRENGTHS:
                out.append(Setting(name=f"{emotion}-L{layer}-x{k}", layer=layer, vector=v.to(hf.device),
                                   strength=k * norm))
    return out


def run_grid(hf, tokenizer, settings, new_tokens, batch_rows) -> tuple[float, list[str]]:
    sync(hf.device)
    t0 = time.perf_counter()
    df = generate_grid(hf, tokenizer, PROMPTS, settings, max_new_tokens=new_tokens, batch_rows=batch_rows)
    sync(hf.device)
    return time.perf_counter() - t0, df.text.tolist()


def run_per_setting(hf, tokenizer, settings, new_tokens) -> tuple[float, list[str]]:
    sync(hf.device)
    t0 = time.perf_counter()
    texts = []
    for s in settings:
        texts += generate_steered(hf, tokenizer, PROMPTS, [s.steering()], max_new_tokens=new_tokens)
    sync(hf.device)
    return time.perf_counter() - t0, texts


def run_library(hf, tokenizer, settings, new_tokens) -> float:
    from steering_vectors import SteeringVector

    enc = _left_padded(tokenizer, PROMPTS)
    ids, mask = enc.input_ids.to(hf.device), enc.attention_mask.to(hf.device)
    sync(hf.device)
    t0 = time.perf_counter()
    for s in settings:
        vector = SteeringVector(layer_activations={s.layer: s.vector}, layer_type="decoder_block")
        with torch.no_grad(), vector.apply(hf, multiplier=s.strength, min_token_index=0):
            hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id)
    sync(hf.device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-rows", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="time each method this many times, keep the best")
    a = p.parse_args()
    os.environ.setdefault("EMOTION_NO_PROGRESS", "1")

    hf, tokenizer = load_hf_model(resolve_spec(a.model))
    hf = hf.to(a.device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    settings = make_settings(hf, tokenizer)
    rows = len(settings) * len(PROMPTS)
    n_tok = rows * a.new_tokens
    print(f"{a.model}: {len(blocks_of(hf))} layers; {len(settings)} settings x {len(PROMPTS)} prompts = {rows} "
          f"rows x {a.new_tokens} new tokens; batch_rows {a.batch_rows}; {torch.get_num_threads()} threads; "
          f"device {device_name(a.device)}")

    run_grid(hf, tokenizer, settings[:2], 2, a.batch_rows)  # warm-up
    run_per_setting(hf, tokenizer, settings[:2], 2)
    run_library(hf, tokenizer, settings[:2], 2)
    t_grid = t_per = t_lib = float("inf")
    for _ in range(a.repeats):  # the best of the repeats: the least disturbed by other work on the machine
        t, grid_texts = run_grid(hf, tokenizer, settings, a.new_tokens, a.batch_rows)
        t_grid = min(t_grid, t)
        t, per_texts = run_per_setting(hf, tokenizer, settings, a.new_tokens)
        t_per = min(t_per, t)
        t_lib = min(t_lib, run_library(hf, tokenizer, settings, a.new_tokens))
    agree = sum(g == q for g, q in zip(grid_texts, per_texts)) / rows
    for label, t in (("grid (ours)", t_grid), ("per-setting", t_per), ("steering-vectors", t_lib)):
        print(f"{label:18s} {t:8.3f} s  {n_tok / t:10.1f} new tokens/s")
    print(f"per-setting / grid: {t_per / t_grid:.2f}x (target >= 5)")
    print(f"steering-vectors / grid: {t_lib / t_grid:.2f}x")
    print(f"grid texts equal to per-setting texts: {agree:.1%} of {rows} rows")


if __name__ == "__main__":
    main()
