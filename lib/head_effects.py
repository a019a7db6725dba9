"""Effects of head sets: forward-pass metrics and seeded generation with heads ablated or patched.

Sets of heads (top-k, random controls) are intervened on together through ``attn.hook_z`` (one
full forward per set); generation intervenes on the same head slices of the Hugging Face model
(the output projection's input), at every step for ablations and on the prompt for patches.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from lib.head_sweep import Readout, _model_dims, readout_metrics
from lib.heads import arch_of, get_path, head_hooks, run_with_hooks_cached

__all__ = ["set_metrics", "generate", "random_head_sets", "rank_heads"]


def set_metrics(lm, input_ids: torch.Tensor, readout: Readout, heads, mode: str | None, *, positions: str = "all",
                mean_z=None, source_z=None) -> dict[str, np.ndarray]:
    """Readout metrics per prompt with ``heads`` intervened on together (``mode=None``: clean run)."""
    n, T = input_ids.shape
    hooks = [] if mode is None or not heads else head_hooks(
        list(heads), mode, positions=positions, last_index=torch.full((n,), T - 1), mean_z=mean_z,
        source_z=source_z)
    name = f"blocks.{readout.layer}.hook_resid_post"
    logits, cache = run_with_hooks_cached(lm, input_ids, None, hooks, [name])
    res = readout_metrics(cache[name][:, -1], logits[:, -1], readout)
    return {k: v.cpu().numpy() for k, v in res.items()}


@contextlib.contextmanager
def _generation_edits(hf, heads, mode, prompt_len: int, mean_z=None, source_z=None):
    arch = arch_of(hf)
    blocks = get_path(hf, arch.layers)
    _, n_heads, d_head = _model_dims(hf)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads or []:
        by_layer.setdefault(layer, []).append(head)
    handles = []

    def make(layer, hs):
        def pre(module, args):
            z = args[0]
            if mode == "patch" and z.shape[1] != prompt_len:
                return None  # generated positions have no source: left as computed
            z = z.clone()
            zv = z.view(*z.shape[:2], n_heads, d_head)
            for h in hs:
                if mode == "zero":
                    zv[:, :, h] = 0
                elif mode == "mean":
                    zv[:, :, h] = mean_z[layer][h].to(z)
                else:
                    zv[:, :, h] = source_z[layer][:, :, h].to(z)
            return (z, *args[1:])
        return pre

    try:
        for layer, hs in by_layer.items():
            handles.append(get_path(blocks[layer], arch.out_proj).register_forward_pre_hook(make(layer, hs)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def generate(lm, input_ids: torch.Tensor, *, n_tokens: int, seed: int, heads=None, mode: str | None = None,
             mean_z=None, source_z=None, top_k: int = 50, temperature: float = 1.0) -> list[str]:
    """Sampled continuations (``n_tokens`` new tokens, top-k sampling, ``seed``) of prompts of one length,
    with ``heads`` zero- or mean-ablated at every position, or patched from ``source_z`` on the prompt.
    The same seed gives the same random stream with and without the intervention."""
    if mode is not None and mode not in ("zero", "mean", "patch"):
        raise ValueError(f"unknown mode {mode!r}; valid: zero, mean, patch")
    hf = lm.bridge.original_model
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with _generation_edits(hf, heads if mode else None, mode, input_ids.shape[1], mean_z, source_z):
        torch.manual_seed(seed)
        out = hf.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n_tokens,
                          do_sample=True, top_k=top_k, temperature=temperature, pad_token_id=pad)
    return tok.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)


def random_head_sets(n_layers: int, n_heads: int, k: int, n_sets: int, seed: int) -> list[list[tuple[int, int]]]:
    """``n_sets`` sets of ``k`` distinct heads drawn uniformly from all heads (seeded)."""
    total = n_layers * n_heads
    if not 0 < k <= total:
        raise ValueError(f"k={k} must be in 1..{total} (the model's head count)")
    rng = np.random.default_rng(seed)
    return [sorted((int(i) // n_heads, int(i) % n_heads) for i in rng.choice(total, size=k, replace=False))
            for _ in range(n_sets)]


def rank_heads(effect: np.ndarray) -> list[tuple[int, int]]:
    """Heads of an [L, H] effect array, largest first (ties broken by layer, then head)."""
    flat = [(-float(v), layer, head) for (layer, head), v in np.ndenumerate(effect)]
    return [(layer, head) for _, layer, head in sorted(flat)]
