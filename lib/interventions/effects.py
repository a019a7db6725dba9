"""Effects of head sets: forward-pass metrics and seeded generation with heads ablated or patched.

Sets of heads (top-k, random controls) are intervened on together through ``attn.hook_z`` (one
full forward per set); generation intervenes on the same head slices of the Hugging Face model
(the output projection's input), at every step for ablations and on the prompt for patches.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from lib.interventions.sweep import Readout, final_logits, model_dims, readout_metrics
from lib.interventions.heads import arch_of, get_path, head_hooks, run_with_hooks_cached

__all__ = ["set_metrics", "sample_top_k", "generate_sets", "generate", "random_head_sets", "rank_heads"]


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
def _set_edits(hf, head_sets: list, mode: str | None, n: int, prompt_len: int, mean_z=None, source_z=None):
    """Pre-hooks on the output projections: rows are set-major (row s * n + i = prompt i under set s), and
    set s has its heads zeroed, mean-replaced (every position, every step) or patched (the prompt only)."""
    arch = arch_of(hf)
    blocks = get_path(hf, arch.layers)
    _, n_heads, d_head = model_dims(hf)
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for s, heads in enumerate(head_sets):
        for layer, head in heads or []:
            by_layer.setdefault(layer, []).append((s, head))
    handles = []

    def make(layer, edits):
        def pre(module, args):
            z = args[0]
            if mode == "patch" and z.shape[1] != prompt_len:
                return None  # generated positions have no source: left as computed
            z = z.clone()
            zv = z.view(len(head_sets), n, z.shape[1], n_heads, d_head)
            for s, h in edits:
                if mode == "zero":
                    zv[s, :, :, h] = 0
                elif mode == "mean":
                    zv[s, :, :, h] = mean_z[layer][h].to(z)
                else:
                    zv[s, :, :, h] = source_z[layer][:, :, h].to(z)
            return (z, *args[1:])
        return pre

    try:
        if mode is not None:
            for layer, edits in by_layer.items():
                handles.append(get_path(blocks[layer], arch.out_proj).register_forward_pre_hook(make(layer, edits)))
        yield
    finally:
        for h in handles:
            h.remove()


def sample_top_k(logits: torch.Tensor, gumbel: torch.Tensor, top_k: int) -> torch.Tensor:
    """Token ids [rows]: a draw from softmax(logits) over each row's ``top_k`` largest logits, by the
    Gumbel-max trick; row r reads the noise row ``gumbel[r % len(gumbel)]`` [vocab], so the same noise
    gives the same draw wherever the logits agree (common random numbers across conditions)."""
    vals, idx = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # [rows, k]
    noise_rows = torch.arange(logits.shape[0], device=logits.device) % gumbel.shape[0]
    noise = gumbel.to(logits.device)[noise_rows[:, None], idx]
    return idx.gather(-1, (vals + noise).argmax(-1, keepdim=True)).squeeze(-1)


@torch.inference_mode()
def generate_sets(lm, input_ids: torch.Tensor, head_sets: list, *, n_tokens: int, seed: int, mode: str | None = None,
                  mean_z=None, source_z=None, top_k: int = 50, temperature: float = 1.0) -> list[list[str]]:
    """Sampled continuations of prompts of one length [n, T] under each head set, in one batch: per set a
    list of ``n`` texts of ``n_tokens`` new tokens (top-k sampling at ``temperature``). Sets are zero- or
    mean-ablated at every position, or patched from ``source_z`` [n, T, head, d_head] over the prompt
    (``mode=None`` or an empty set: no intervention). Prompt i draws the same Gumbel noise at each step
    under every set (seeded), so conditions differ only through the intervention."""
    if mode is not None and mode not in ("zero", "mean", "patch"):
        raise ValueError(f"unknown mode {mode!r}; valid: zero, mean, patch")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    hf = lm.bridge.original_model
    n, T = input_ids.shape
    S = len(head_sets)
    gen = torch.Generator().manual_seed(int(seed))
    cur, past, out = input_ids.repeat(S, 1), None, []
    with _set_edits(hf, head_sets, mode, n, T, mean_z, source_z):
        for _ in range(n_tokens):
            o = hf.base_model(input_ids=cur, past_key_values=past, use_cache=True)
            logits = final_logits(hf, o.last_hidden_state[:, -1]).float() / temperature
            u = torch.rand((n, logits.shape[-1]), generator=gen).clamp_(min=1e-20)
            gumbel = -torch.log(-torch.log(u)).to(logits.device)
            nxt = sample_top_k(logits, gumbel, top_k)
            out.append(nxt)
            cur, past = nxt[:, None], o.past_key_values
    tokens = torch.stack(out, 1).cpu().view(S, n, n_tokens)
    return [lm.tokenizer.batch_decode(t, skip_special_tokens=True) for t in tokens]


def generate(lm, input_ids: torch.Tensor, *, n_tokens: int, seed: int, heads=None, mode: str | None = None,
             mean_z=None, source_z=None, top_k: int = 50, temperature: float = 1.0) -> list[str]:
    """``generate_sets`` for one head set (``heads=None`` or ``mode=None``: the clean model)."""
    return generate_sets(lm, input_ids, [heads or []], n_tokens=n_tokens, seed=seed, mode=mode if heads else None,
                         mean_z=mean_z, source_z=source_z, top_k=top_k, temperature=temperature)[0]


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
