"""Exact single-head sweeps, fast: recompute only what an intervention can change.

The naive sweep runs one full forward per head. An intervention on head h of layer L cannot change
(1) anything before layer L: we start from the clean residual cached at layer L's input;
(2) for a last-position intervention, any earlier position (attention is causal): we reuse the
    clean keys and values of positions < T-1 and recompute only the last token;
(3) the unembedding, except at the last position where a metric reads it (or not at all when
    only the probe is read: the forward stops at the probe's layer).
Every head of a layer runs in one batch (rows = head-major copies of the prompts). Results equal
the naive ones (``sweep_naive``, through TransformerLens' ``attn.hook_z``) within float32 rounding;
tests check it per architecture.

Prompts of one call share one token length (no padding): group prompts by length first.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lib.activations.names import act_name
from lib.interventions.head_outputs import head_outputs
from lib.interventions.heads import head_hooks, run_with_hooks_cached
from lib.interventions.readout import Readout, class_index, final_logits, readout_metrics
from lib.models.archs import arch_of, block_output, blocks_of, model_dims

__all__ = ["CleanState", "clean_state", "mean_head_z", "sweep_fast", "sweep_naive", "sweep_frame"]


class _Stop(Exception):
    pass


class _Skip(torch.nn.Module):
    """Stands in for a block the intervention cannot reach: returns its input."""

    def __init__(self, returns_tuple: bool):
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states, None) if self.returns_tuple else hidden_states


@contextlib.contextmanager
def _run_from(hf, start: int, hidden: torch.Tensor | None, z_edit=None, read_layer: int | None = None,
              stop_after_read: bool = False):
    """Blocks < ``start`` skipped, block ``start``'s input replaced by ``hidden``, ``z_edit(z)`` applied to
    block ``start``'s head outputs z [batch, pos, head, d_head], and block ``read_layer``'s output kept in
    ``box['resid']``."""
    arch, blocks, box = arch_of(hf), blocks_of(hf), {}
    with contextlib.ExitStack() as stack:
        for i in range(start):
            stack.callback(blocks.__setitem__, i, blocks[i])
            blocks[i] = _Skip(arch.block_returns_tuple)
        if hidden is not None:
            def replace(module, args, kwargs):
                return (hidden, *args[1:]), kwargs
            stack.callback(blocks[start].register_forward_pre_hook(replace, with_kwargs=True).remove)
        if z_edit is not None:
            stack.enter_context(head_outputs(hf, [start], lambda z, layer: z_edit(z)))
        if read_layer is not None and read_layer >= start:
            def read(module, args, output):
                box["resid"] = block_output(output)
                if stop_after_read:
                    raise _Stop
            stack.callback(blocks[read_layer].register_forward_hook(read).remove)
        yield box


@dataclass
class CleanState:
    """One clean run of ``n`` prompts of length ``T``: what the fast sweeps start from.

    resid_pre[L] [n, T, d] (block L's input), z[L] [n, T, heads, d_head] (head outputs),
    cache: keys and values of positions < T-1 for every block; metrics: the clean readout at T-1.
    """

    input_ids: torch.Tensor
    resid_pre: list[torch.Tensor]
    z: list[torch.Tensor]
    cache: object
    metrics: dict[str, torch.Tensor]
    probe_resid: torch.Tensor  # [n, d]: the probe layer's output at the last position

    @property
    def n(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def T(self) -> int:
        return int(self.input_ids.shape[1])


@torch.inference_mode()
def clean_state(hf, input_ids: torch.Tensor, readout: Readout) -> CleanState:
    """Run ``input_ids`` [n, T] (one length, no padding) once, keeping what the sweeps reuse."""
    if input_ids.ndim != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"clean_state needs input_ids [n, T >= 2] of one length, got {tuple(input_ids.shape)}")
    blocks = blocks_of(hf)
    n_layers = len(blocks)
    resid, zs, handles, box = [None] * n_layers, [None] * n_layers, [], {}

    def keep_z(z, layer):
        zs[layer] = z.detach().clone()

    for i, block in enumerate(blocks):
        def pre(module, args, i=i):
            resid[i] = args[0].detach().clone()
        def post(module, args, output, i=i):
            if i == readout.layer:
                box["resid"] = block_output(output).detach()
        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    try:
        with head_outputs(hf, range(n_layers), keep_z):
            out = hf.base_model(input_ids=input_ids)
    finally:
        for h in handles:
            h.remove()
    logits = final_logits(hf, out.last_hidden_state[:, -1]) if readout.needs_logits else None
    metrics = readout_metrics(box["resid"][:, -1], logits, readout)
    cache = hf.base_model(input_ids=input_ids[:, :-1], use_cache=True).past_key_values
    return CleanState(input_ids, resid, zs, cache, metrics, box["resid"][:, -1])


def mean_head_z(*states: CleanState) -> dict[int, torch.Tensor]:
    """Per layer [heads, d_head]: each head's mean z over every prompt and position of ``states`` (mean ablation)."""
    return {layer: torch.cat([s.z[layer] for s in states]).mean((0, 1)) for layer in range(len(states[0].z))}


def _repeat_cache(cache, reps: int, start: int):
    """A cache for ``reps`` head-major copies of the batch; blocks < ``start`` get zero-copy views."""
    new = copy.copy(cache)
    new.layers = []
    for i, layer in enumerate(cache.layers):
        lay = copy.copy(layer)
        if i < start:  # never read (block skipped): a view with the right shape
            lay.keys = layer.keys[:1].expand(layer.keys.shape[0] * reps, *layer.keys.shape[1:])
            lay.values = layer.values[:1].expand(layer.values.shape[0] * reps, *layer.values.shape[1:])
        else:
            lay.keys = layer.keys.repeat(reps, 1, 1, 1)
            lay.values = layer.values.repeat(reps, 1, 1, 1)
        new.layers.append(lay)
    return new


def _new_values(mode: str, layer: int, state: CleanState, positions: str, *, mean_z=None, source: CleanState | None = None):
    """[heads, n, P, d_head] (or broadcastable): head h's replacement on row block h."""
    if mode == "zero":
        return torch.zeros(())
    if mode == "mean":
        return mean_z[layer][:, None, None, :]  # [H, 1, 1, dh]
    src = source.z[layer]  # [n, T, H, dh]
    if src.shape[0] != state.n:
        raise ValueError(f"patch source has {src.shape[0]} prompts, target {state.n}")
    if positions == "last":
        return src[:, -1:].permute(2, 0, 1, 3)  # [H, n, 1, dh]
    if src.shape[1] != state.T:
        raise ValueError(f"patching all positions needs equal lengths: source {src.shape[1]}, target {state.T}")
    return src.permute(2, 0, 1, 3)


def _z_editor(n_heads: int, n: int, d_head: int, values: torch.Tensor):
    """Edits z [H*n, P, H, dh] (rows head-major): row block h gets head h replaced by ``values[h]``."""
    idx = torch.arange(n_heads)

    def edit(z):
        z = z.clone()
        zv = z.view(n_heads, n, z.shape[1], n_heads, d_head)
        zv[idx, :, :, idx] = values.to(z).expand(n_heads, n, z.shape[1], d_head)
        return z
    return edit


@torch.inference_mode()
def sweep_fast(hf, state: CleanState, readout: Readout, mode: str, positions: str, *, layers=None,
               mean_z=None, source: CleanState | None = None, progress=None) -> dict[str, np.ndarray]:
    """Single-head ``mode`` intervention (zero / mean / patch from ``source``) on every head of ``layers``,
    at the last position or all positions: metrics per head and prompt, ``probs`` [L, H, n, classes]
    and ``logprob`` [L, H, n, emotions]."""
    n_layers, n_heads, d_head = model_dims(hf)
    layers = list(range(n_layers)) if layers is None else list(layers)
    n, T = state.n, state.T
    out: dict[str, list] = {}
    for layer in layers:
        values = _new_values(mode, layer, state, positions, mean_z=mean_z, source=source)
        editor = _z_editor(n_heads, n, d_head, values)
        stop = not readout.needs_logits
        if positions == "last":
            hidden = state.resid_pre[layer][:, -1:].repeat(n_heads, 1, 1)
            ids = state.input_ids[:, -1:].repeat(n_heads, 1)
            kwargs = {"past_key_values": _repeat_cache(state.cache, n_heads, layer), "use_cache": True}
        else:
            hidden = state.resid_pre[layer].repeat(n_heads, 1, 1)
            ids = state.input_ids.repeat(n_heads, 1)
            kwargs = {"use_cache": False}
        with _run_from(hf, layer, hidden, editor, readout.layer, stop_after_read=stop) as box:
            if layer > readout.layer and stop:  # the probe is upstream of the intervention: unchanged
                res = {k: v.repeat(n_heads, 1) for k, v in state.metrics.items()}
            else:
                try:
                    o = hf.base_model(input_ids=ids, **kwargs)
                    logits = final_logits(hf, o.last_hidden_state[:, -1])
                except _Stop:
                    logits = None
                resid = box["resid"][:, -1] if layer <= readout.layer else state.probe_resid.repeat(n_heads, 1)
                res = readout_metrics(resid, logits, readout)
        for k, v in res.items():
            out.setdefault(k, []).append(v.view(n_heads, n, -1).cpu().numpy())
        if progress is not None:
            progress(1)
    return {k: np.stack(v) for k, v in out.items()}


def _probe_resid_from_cache(cache, readout) -> torch.Tensor:
    return cache[act_name("resid_post", readout.layer)][:, -1]


def sweep_naive(lm, input_ids: torch.Tensor, readout: Readout, mode: str, positions: str, *, layers=None,
                mean_z=None, source_z=None, progress=None) -> dict[str, np.ndarray]:
    """The reference: one full TransformerLens forward per head, the head edited on ``attn.hook_z``.
    ``source_z``: per layer [n, T, heads, d_head] of the patch source (``CleanState.z``)."""
    hf = lm.bridge.original_model
    n_layers, n_heads, _ = model_dims(hf)
    layers = list(range(n_layers)) if layers is None else list(layers)
    n, T = input_ids.shape
    last = torch.full((n,), T - 1)
    names = [act_name("resid_post", readout.layer)]
    out: dict[str, list] = {}
    for layer in layers:
        per_head: dict[str, list] = {}
        for head in range(n_heads):
            hooks = head_hooks([(layer, head)], mode, positions=positions, last_index=last, mean_z=mean_z,
                               source_z=source_z)
            logits, cache = run_with_hooks_cached(lm, input_ids, None, hooks, names)
            res = readout_metrics(_probe_resid_from_cache(cache, readout), logits[:, -1], readout)
            for k, v in res.items():
                per_head.setdefault(k, []).append(v.cpu().numpy())
            if progress is not None:
                progress(1)
        for k, v in per_head.items():
            out.setdefault(k, []).append(np.stack(v))
    return {k: np.stack(v) for k, v in out.items()}


def sweep_frame(res: dict[str, np.ndarray], clean: dict[str, torch.Tensor], readout: Readout, cls: str,
                **labels) -> pd.DataFrame:
    """Long table of a sweep: per head, the mean change (intervened - clean) over prompts of the probe's
    ``cls`` probability and of the continuation log-probability, with its standard error."""
    frames = []
    ci = class_index(readout, cls)
    metrics = {"probe_prob": (res["probs"][..., ci], clean["probs"][:, ci].numpy())}
    if "logprob" in res:
        ei = list(readout.continuations).index(cls)
        metrics["logprob"] = (res["logprob"][..., ei], clean["logprob"][:, ei].numpy())
    for metric, (got, base) in metrics.items():
        delta = got - base[None, None, :]  # [L, H, n]
        L, H, n = delta.shape
        frames.append(pd.DataFrame({
            "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L), "metric": metric,
            "effect": delta.mean(-1).ravel(), "se": (delta.std(-1, ddof=1) / np.sqrt(n)).ravel() if n > 1 else np.nan,
        }))
    return pd.concat(frames, ignore_index=True).assign(**labels)
