"""Exact head interventions, fast: recompute only what an intervention can change.

A naive evaluation runs one full forward per head (or head set). An intervention whose first edited
head is in layer L cannot change
(1) anything before layer L: we start from the clean residual cached at layer L's input;
(2) for a last-position intervention, any earlier position (attention is causal): we reuse the
    clean keys and values of positions < T-1 and recompute only the last token;
(3) the unembedding, except at the last position where a metric reads it (or not at all when
    only the probe is read: the forward stops at the probe's layer).
``sets_fast`` evaluates many head sets at once: rows are set-major copies of the prompts, sets are
grouped by their first layer, and each group runs from that layer. ``sweep_fast`` is the special case
of every single head (one group per layer). Results equal the naive ones (``sweep_naive`` and
``lib.interventions.effects.set_metrics``, through TransformerLens' ``attn.hook_z``) within float32
rounding; tests check it per architecture.

Mean ablation is position-matched: ``position_mean_z`` gives each head's mean z at each position over a
reference set of prompts of the same token length, and position p of a target prompt gets the mean at p.

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
from lib.interventions.readout import Readout, final_logits, metric_changes, readout_metrics
from lib.models.archs import arch_of, block_output, blocks_of, model_dims

__all__ = ["CleanState", "clean_state", "position_mean_z", "sets_fast", "sweep_fast", "sweep_naive", "sweep_frame"]


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
def _run_from(hf, start: int, hidden: torch.Tensor | None, z_edit=None, edit_layers=(), read_layer: int | None = None,
              stop_after_read: bool = False):
    """Blocks < ``start`` skipped, block ``start``'s input replaced by ``hidden``, ``z_edit(z, layer)`` applied
    to the head outputs z [batch, pos, head, d_head] of each of ``edit_layers``, and block ``read_layer``'s
    output kept in ``box['resid']``."""
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
            stack.enter_context(head_outputs(hf, list(edit_layers), z_edit))
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


def position_mean_z(*states: CleanState) -> dict[int, torch.Tensor]:
    """Per layer [T, heads, d_head]: each head's mean z at each position over the prompts of ``states`` (the
    reference set of position-matched mean ablation; all of one token length T)."""
    lengths = sorted({s.T for s in states})
    if len(lengths) != 1:
        raise ValueError(f"reference prompts must share one token length for position-matched means; got {lengths}")
    return {layer: torch.cat([s.z[layer] for s in states]).mean(0) for layer in range(len(states[0].z))}


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


def _replacement(mode: str, layer: int, state: CleanState, positions: str, mean_z=None,
                 source: CleanState | None = None) -> torch.Tensor:
    """What replaced heads of ``layer`` get, broadcastable to z [sets, n, P, heads, d_head] (P = 1 at the last
    position, T at all positions)."""
    if mode == "zero":
        return torch.zeros(())
    if mode == "mean":
        if mean_z is None:
            raise ValueError("mode 'mean' needs mean_z (per layer [T, heads, d_head], position_mean_z)")
        m = mean_z[layer]
        if m.ndim != 3 or m.shape[0] != state.T:
            raise ValueError(f"mean_z[{layer}] has shape {tuple(m.shape)}; position-matched means of the target's "
                             f"token length need [{state.T}, heads, d_head] (a reference set of that length)")
        return (m[-1:] if positions == "last" else m)[None, None]
    if mode != "patch":
        raise ValueError(f"unknown intervention mode {mode!r}; valid: zero, mean, patch")
    if source is None:
        raise ValueError("mode 'patch' needs source (the clean state of the paired prompts)")
    src = source.z[layer]  # [n, T, H, dh]
    if src.shape[0] != state.n:
        raise ValueError(f"patch source has {src.shape[0]} prompts, target {state.n}")
    if positions == "last":
        return src[:, -1:][None]
    if src.shape[1] != state.T:
        raise ValueError(f"patching all positions needs equal lengths: source {src.shape[1]}, target {state.T}")
    return src[None]


def _set_editor(sets: list, n: int, n_heads: int, values: dict[int, torch.Tensor]):
    """``(z, layer) -> z'`` on rows in set-major order (row s * n + i = prompt i under set s): set s has each of
    its heads of ``layer`` replaced by ``values[layer]`` (broadcastable to [sets, n, P, heads, d_head])."""
    masks = {layer: torch.zeros(len(sets), n_heads, dtype=torch.bool) for layer in values}
    for s, heads in enumerate(sets):
        for layer, head in heads:
            masks[layer][s, head] = True

    def edit(z, layer):
        zv = z.view(len(sets), n, *z.shape[1:])
        new = torch.where(masks[layer].to(z.device)[:, None, None, :, None], values[layer].to(z), zv)
        return new.reshape(z.shape)
    return edit


def _check_sets(sets, n_layers: int, n_heads: int) -> list[list[tuple[int, int]]]:
    out = []
    for heads in sets:
        heads = sorted({(int(layer), int(head)) for layer, head in heads})
        bad = [(layer, head) for layer, head in heads if not (0 <= layer < n_layers and 0 <= head < n_heads)]
        if bad:
            raise ValueError(f"head {bad[0][0]}:{bad[0][1]} is out of range (layers 0..{n_layers - 1}, "
                             f"heads 0..{n_heads - 1})")
        out.append(heads)
    return out


@torch.inference_mode()
def _run_chunk(hf, state: CleanState, readout: Readout, sets: list, start: int, values: dict, positions: str):
    """Metrics [len(sets) * n, ...] of one chunk of sets whose first edited layer is ``start``."""
    m, n_heads = len(sets), model_dims(hf)[1]
    stop = not readout.needs_logits
    if start > readout.layer and stop:  # the probe is upstream of every edit: unchanged
        return {k: v.repeat(m, 1) for k, v in state.metrics.items()}
    if positions == "last":
        hidden = state.resid_pre[start][:, -1:].repeat(m, 1, 1)
        ids = state.input_ids[:, -1:].repeat(m, 1)
        kwargs = {"past_key_values": _repeat_cache(state.cache, m, start), "use_cache": True}
    else:
        hidden, ids, kwargs = state.resid_pre[start].repeat(m, 1, 1), state.input_ids.repeat(m, 1), {"use_cache": False}
    edit = _set_editor(sets, state.n, n_heads, values)
    with _run_from(hf, start, hidden, edit, sorted(values), readout.layer, stop_after_read=stop) as box:
        try:
            o = hf.base_model(input_ids=ids, **kwargs)
            logits = final_logits(hf, o.last_hidden_state[:, -1])
        except _Stop:
            logits = None
        resid = box["resid"][:, -1] if start <= readout.layer else state.probe_resid.repeat(m, 1)
        return readout_metrics(resid, logits, readout)


@torch.inference_mode()
def sets_fast(hf, state: CleanState, readout: Readout, sets: list, mode: str, positions: str, *, mean_z=None,
              source: CleanState | None = None, max_rows: int = 256, progress=None) -> dict[str, np.ndarray]:
    """Readout metrics with each head set of ``sets`` (lists of (layer, head)) intervened on together (``zero``,
    position-matched ``mean``, or ``patch`` from ``source``), at the last position or at all positions:
    ``probs`` and ``logodds`` [sets, n, classes], ``logprob`` [sets, n, emotions]; an empty set is the clean run.
    At most ``max_rows`` rows (sets x prompts) run in one batch; ``progress(k)`` after every k sets."""
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    n_layers, n_heads, _ = model_dims(hf)
    sets = _check_sets(sets, n_layers, n_heads)
    n = state.n
    out = {k: np.empty((len(sets), n, v.shape[-1]), dtype=np.float32) for k, v in state.metrics.items()}
    by_start: dict[int, list[int]] = {}
    for i, heads in enumerate(sets):
        if heads:
            by_start.setdefault(heads[0][0], []).append(i)
        else:
            for k, v in state.metrics.items():
                out[k][i] = v.cpu().numpy()
    per_chunk = max(1, int(max_rows) // n)
    for start, idx in sorted(by_start.items()):
        for c in range(0, len(idx), per_chunk):
            chunk = idx[c:c + per_chunk]
            members = [sets[i] for i in chunk]
            values = {layer: _replacement(mode, layer, state, positions, mean_z, source)
                      for layer in sorted({layer for heads in members for layer, _ in heads})}
            res = _run_chunk(hf, state, readout, members, start, values, positions)
            for k, v in res.items():
                out[k][chunk] = v.view(len(chunk), n, -1).float().cpu().numpy()
            if progress is not None:
                progress(len(chunk))
    return out


def sweep_fast(hf, state: CleanState, readout: Readout, mode: str, positions: str, *, layers=None,
               mean_z=None, source: CleanState | None = None, progress=None) -> dict[str, np.ndarray]:
    """Single-head ``mode`` intervention (zero / mean / patch from ``source``) on every head of ``layers``,
    at the last position or all positions: metrics per head and prompt, ``probs`` and ``logodds``
    [L, H, n, classes] and ``logprob`` [L, H, n, emotions] (``sets_fast``, one batch per layer;
    ``progress(1)`` after each layer)."""
    n_layers, n_heads, _ = model_dims(hf)
    layers = list(range(n_layers)) if layers is None else list(layers)
    sets = [[(layer, head)] for layer in layers for head in range(n_heads)]
    res = sets_fast(hf, state, readout, sets, mode, positions, mean_z=mean_z, source=source,
                    max_rows=n_heads * state.n, progress=None if progress is None else lambda k: progress(k // n_heads))
    return {k: v.reshape(len(layers), n_heads, *v.shape[1:]) for k, v in res.items()}


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
    ``cls`` log-odds and probability and of the continuation log-probability (``metric_changes``), with
    its standard error."""
    frames = []
    for metric, delta in metric_changes(res, clean, readout, cls).items():  # [L, H, n]
        L, H, n = delta.shape
        frames.append(pd.DataFrame({
            "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L), "metric": metric,
            "effect": delta.mean(-1).ravel(), "se": (delta.std(-1, ddof=1) / np.sqrt(n)).ravel() if n > 1 else np.nan,
        }))
    return pd.concat(frames, ignore_index=True).assign(**labels)
