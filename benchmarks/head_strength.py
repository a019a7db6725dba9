"""Head-strength benchmark: R_h of every head in one pass (ours) vs the per-head hook approach vs the bare forward,
on the same batches of GoEmotions train comments, in one process.

(bare)      the forward through every block, no hooks, no unembedding (stopped after the last block, as in
            benchmarks/extraction.py); also the full forward with logits, for reference.
(ours)      lib.head_strength.ActivationExtractor: one pre-hook per layer on the attention output projection,
            ||y_h|| of every head through the per-head Gram matrix, per-sample masked means; the forward stops at
            the last layer's projection. Also timed without stopping early (the hooks' own cost on a full forward).
(per-head)  the approach being replaced: one hook per head (on the attention's output projection, whose input is
            z), each forming its head's y_h = z_h W_O^h explicitly, its norm, the masked mean per sample, and
            moving it to the CPU.
Prints tokens/s of each, ours / bare (target <= 1.15), per-head / ours (target >= 5), and the largest relative
difference of R_h between ours and per-head (target <= 1e-5). Also the fine-tune's training throughput (phase 06's
LoRA steps), beside the bare forward.

Usage: .venv/bin/python benchmarks/head_strength.py [--model smollm2-135m] [--samples 256] [--batch-size 32]
       [--device cpu|cuda] [--repeats 1] [--tiny]   (--tiny: tiny-llama, 64 samples, best of 5: a quick check that
       it runs; its times say nothing about a real model)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lib.settings import apply_hub_policy

apply_hub_policy()  # before transformers is imported
from benchmarks.devices import device_name, sync
from lib.activations.capture import StopForward
from lib.head_strength import ActivationExtractor
from lib.models.archs import blocks_of, model_dims, out_proj_of
from lib.models.encoding import TextEncoder, prepare_tokenizer
from lib.models.loading import load_hf_model
from lib.models.registry import resolve_spec
from lib.text.datasets import load_goemotions


def batches(name: str, tokenizer, n: int, batch_size: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` GoEmotions train comments, in file order, as right-padded (input_ids, attention_mask)."""
    texts = load_goemotions("train")["text"].head(n).tolist()
    enc = TextEncoder(resolve_spec(name), prepare_tokenizer(tokenizer))
    out = []
    for i in range(0, len(texts), batch_size):
        e = enc.encode(texts[i:i + batch_size], device=device)
        out.append((e.input_ids, e.attention_mask))
    return out


def bare(hf, data, *, logits: bool = False) -> float:
    """Seconds for the forward of every batch: through every block (stopped after the last), or with logits."""
    def stop(module, args, output):
        raise StopForward

    handle = None if logits else blocks_of(hf)[-1].register_forward_hook(stop)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for ids, mask in data:
                try:
                    hf(input_ids=ids, attention_mask=mask, use_cache=False)
                except StopForward:
                    pass
        sync(ids.device)
    finally:
        if handle is not None:
            handle.remove()
    return time.perf_counter() - t0


def ours(hf, name, data, *, stop_early: bool = True) -> tuple[float, dict]:
    t0 = time.perf_counter()
    with ActivationExtractor(hf, name, stop_early=stop_early, hash_weights=False) as ex:
        ex.extract_activations(data)
        sync(data[0][0].device)
        seconds = time.perf_counter() - t0
        return seconds, ex.compute_R_h()


def per_head(hf, data) -> tuple[float, dict]:
    """The replaced approach: one hook per head, each computing its y_h, norm and per-sample mean on its own."""
    n_layers, n_heads, d_head = model_dims(hf)
    rows: dict[tuple[int, int], list[float]] = {(L, h): [] for L in range(n_layers) for h in range(n_heads)}
    box = {}
    handles = []
    for L in range(n_layers):
        mod = out_proj_of(hf, L)
        conv = type(mod).__name__ == "Conv1D"
        for h in range(n_heads):
            def hook(module, args, L=L, h=h, conv=conv):
                sl = slice(h * d_head, (h + 1) * d_head)
                w_h = module.weight[sl, :] if conv else module.weight[:, sl].T  # [d_head, d_model]
                y = args[0][..., sl] @ w_h  # [batch, pos, d_model]
                mask = box["mask"].to(y.dtype)
                rows[(L, h)] += ((y.norm(dim=-1) * mask).sum(1) / mask.sum(1)).cpu().tolist()
            handles.append(mod.register_forward_pre_hook(hook))
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for ids, mask in data:
                box["mask"] = mask
                hf(input_ids=ids, attention_mask=mask, use_cache=False)
        sync(data[0][0].device)
    finally:
        for handle in handles:
            handle.remove()
    return time.perf_counter() - t0, {k: float(np.mean(v)) for k, v in rows.items()}


def training_tokens_per_s(name: str, data, device, *, steps: int = 10) -> float | None:
    """Tokens per second of the phase-06 fine-tune's training steps (LoRA, the params' defaults: rank 8 on the
    attention projections, batch 8, comments cut at 32 tokens, "Text: ...\nEmotion:" -> label) over ``steps``
    steps on GoEmotions train rows, checkpoints off; counted as the fine-tune counts them (every real token of
    prompt + answer; lib.finetune.train)."""
    import tempfile
    from pathlib import Path

    from lib.emotions import EMOTIONS
    from lib.finetune import FinetuneConfig, encode_examples, finetune

    hf, tokenizer = load_hf_model(resolve_spec(name))
    tokenizer = prepare_tokenizer(tokenizer)
    rows = load_goemotions("train")
    rows = rows[rows["emotion"].isin(EMOTIONS)].head(8 * steps)
    ex = encode_examples(tokenizer, rows["text"].tolist(), rows["emotion"].tolist(), max_text_tokens=32,
                         prepend_bos=bool(resolve_spec(name).prepend_bos))
    cfg = FinetuneConfig(steps=steps, batch_size=8, max_text_tokens=32, checkpoint_every=10 ** 6)
    with tempfile.TemporaryDirectory() as tmp:
        return float(finetune(hf.to(device), tokenizer, ex, cfg, Path(tmp) / "ft").train_tokens_per_s)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1, help="time each method this many times, keep the best")
    p.add_argument("--tiny", action="store_true", help="tiny-llama, 64 samples, best of 5: a quick check")
    a = p.parse_args()
    if a.tiny:
        a.model, a.samples, a.repeats = "tiny-llama", min(a.samples, 64), max(a.repeats, 5)

    hf, tokenizer = load_hf_model(resolve_spec(a.model))
    hf = hf.to(a.device)
    data = batches(a.model, tokenizer, a.samples, a.batch_size, a.device)
    n_tok = int(sum(int(m.sum()) for _, m in data))
    n_layers, n_heads, _ = model_dims(hf)
    print(f"{a.model}: {n_layers} layers x {n_heads} heads; {a.samples} samples, {n_tok} real tokens in "
          f"{len(data)} batches of {a.batch_size}; {torch.get_num_threads()} threads; device {device_name(a.device)}")

    bare(hf, data[:1])  # warm-up
    ours(hf, a.model, data[:1])
    per_head(hf, data[:1])
    bare(hf, data[:1], logits=True)
    ours(hf, a.model, data[:1], stop_early=False)
    t_bare = t_logits = t_ours = t_full = t_head = float("inf")
    for _ in range(a.repeats):  # the best of the repeats: the least disturbed by other work on the machine
        t_bare, t_logits = min(t_bare, bare(hf, data)), min(t_logits, bare(hf, data, logits=True))
        t, r_ours = ours(hf, a.model, data)
        t_ours = min(t_ours, t)
        t_full = min(t_full, ours(hf, a.model, data, stop_early=False)[0])
        t, r_head = per_head(hf, data)
        t_head = min(t_head, t)
    diff = max(abs(r_ours[k] - r_head[k]) / abs(r_head[k]) for k in r_head)
    for label, t in (("bare forward (blocks, no unembedding)", t_bare), ("bare forward with logits", t_logits),
                     ("ours (one hook per layer, stops early)", t_ours), ("ours without stopping early", t_full),
                     ("per-head hooks", t_head)):
        print(f"{label:<42} {t:8.2f} s  {n_tok / t:10.0f} tokens/s")
    print(f"ours / bare forward        {t_ours / t_bare:5.2f}x  (target <= 1.15; without stopping early "
          f"{t_full / t_bare:.2f}x, against the forward with logits {t_full / t_logits:.2f}x)")
    print(f"per-head hooks / ours      {t_head / t_ours:5.2f}x  (target >= 5)")
    print(f"max |R_h ours - per-head| / R_h: {diff:.1e}  (target <= 1e-5)")
    train = training_tokens_per_s(a.model, data, a.device)
    if train is None:
        print("fine-tune training: not measured")
    else:
        print(f"fine-tune training {train:10.0f} tokens/s   bare forward {n_tok / t_bare:10.0f} tokens/s   "
              f"ratio {train / (n_tok / t_bare):.2f}")


if __name__ == "__main__":
    main()
