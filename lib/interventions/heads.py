"""Attention heads: parse head sets, intervene exactly on TransformerLens' ``attn.hook_z``.

A head's output is its slice of the attention output projection's input (TransformerLens'
``blocks.L.attn.hook_z`` [batch, pos, head, d_head]); zeroing, mean-replacing or patching that
slice is exact for every architecture, grouped-query ones included (we intervene on query heads:
SmolLM2 has 9 over 3 key-value heads, Gemma 3 270M 4 over 1).

>>> parse_heads("3:1, 0:0", n_layers=4, n_heads=2)
[(0, 0), (3, 1)]
>>> parse_heads("1:*", n_layers=4, n_heads=3)
[(1, 0), (1, 1), (1, 2)]
>>> format_heads([(0, 0), (3, 1)])
'0:0,3:1'
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

import torch

from lib.activations.names import act_name

__all__ = ["MODES", "parse_heads", "format_heads", "ablate_head_hook", "patch_head_hook", "head_hooks",
           "run_with_hooks_cached"]

MODES = ("zero", "mean", "patch")


def parse_heads(spec: str | Iterable, *, n_layers: int, n_heads: int, model_name: str = "the model") -> list[tuple[int, int]]:
    """Sorted unique ``(layer, head)`` pairs from ``"L:H,L:H"`` (``"L:*"`` = every head of layer L)
    or an iterable of pairs; an error names the bad entry and the valid ranges."""
    valid = f"layers 0..{n_layers - 1}, heads 0..{n_heads - 1}"
    items = [p.strip() for p in spec.split(",") if p.strip()] if isinstance(spec, str) else list(spec)
    if not items:
        raise ValueError(f"empty head set {spec!r}; write heads as 'L:H,L:H' ({valid} for {model_name})")
    out = set()
    for item in items:
        try:
            if isinstance(item, str):
                layer_s, head_s = item.split(":")
                layer = int(layer_s)
                heads = range(n_heads) if head_s.strip() == "*" else [int(head_s)]
            else:
                layer, head = item
                layer, heads = int(layer), [int(head)]
        except (ValueError, TypeError):
            raise ValueError(f"head {item!r} is not 'L:H' (layer:head, e.g. '3:1' or '3:*')") from None
        for head in heads:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(f"head {layer}:{head} is out of range for {model_name} ({valid})")
            out.add((layer, head))
    return sorted(out)


def format_heads(heads: Iterable[tuple[int, int]]) -> str:
    """``"L:H,L:H"`` for ``[(L, H), ...]``, in the given order (the inverse of ``parse_heads`` on sorted pairs)."""
    return ",".join(f"{layer}:{head}" for layer, head in heads)


def _positions(z: torch.Tensor, positions: str, last_index) -> tuple:
    """Index of the edited positions of z [b, pos, head, d_head]: every position, or each row's last token."""
    if positions == "all":
        return (slice(None), slice(None))
    rows = torch.arange(z.shape[0], device=z.device)
    return (rows, torch.as_tensor(last_index, device=z.device))


def ablate_head_hook(z: torch.Tensor, hook, *, heads: list[int], value: torch.Tensor | None = None,
                     positions: str = "all", last_index=None) -> torch.Tensor:
    """z [batch, pos, head, d_head] with ``heads`` set to 0, or to ``value`` [pos, head, d_head], a reference
    set's mean at the same position (mean ablation, position-matched: row b's position p gets value[p])."""
    z = z.clone()
    if value is not None:
        value = value.to(z)
        if value.ndim != 3 or value.shape[1:] != z.shape[2:]:
            raise ValueError(f"mean-ablation value of shape {tuple(value.shape)} does not fit z {tuple(z.shape)}: "
                             f"give per layer [pos, head, d_head], the position-matched mean (position_mean_z)")
        if positions == "all" and value.shape[0] != z.shape[1]:
            raise ValueError(f"mean-ablation value covers {value.shape[0]} positions, z has {z.shape[1]}: "
                             f"the reference prompts must share the target prompts' token length")
    where = _positions(z, positions, last_index)
    for h in heads:
        if value is None:
            z[(*where, h)] = 0.0
        elif positions == "all":
            z[:, :, h] = value[:, h]
        else:
            z[(*where, h)] = value[where[1], h]
    return z


def patch_head_hook(z: torch.Tensor, hook, *, heads: list[int], source: torch.Tensor, positions: str = "all",
                    last_index=None) -> torch.Tensor:
    """z [batch, pos, head, d_head] with ``heads`` copied from ``source`` [batch, pos', head, d_head] (the same
    heads on other prompts): every position (pos' = pos), or the last token from the source's last token."""
    source = source.to(z)
    if source.shape[0] != z.shape[0] or (positions == "all" and source.shape[1] != z.shape[1]):
        raise ValueError(f"patch source of shape {tuple(source.shape[:2])} does not fit target {tuple(z.shape[:2])} "
                         f"(batch, pos): pair prompts one to one, of equal token length to patch all positions")
    z = z.clone()
    rows = torch.arange(z.shape[0], device=z.device)
    for h in heads:
        if positions == "all":
            z[:, :, h] = source[:, :, h]
        else:
            z[rows, torch.as_tensor(last_index, device=z.device), h] = source[:, -1, h]
    return z


def head_hooks(heads: list[tuple[int, int]], mode: str, *, positions: str = "all", last_index=None,
               mean_z: dict[int, torch.Tensor] | None = None,
               source_z: dict[int, torch.Tensor] | None = None) -> list[tuple[str, Callable]]:
    """Hooks on ``blocks.L.attn.hook_z`` that intervene on ``heads`` [(layer, head)]:

    - ``zero``: the head's output is zero;
    - ``mean``: replaced by ``mean_z[layer][:, head]`` [pos, d_head], its mean over a reference set of prompts
      at the same position (``lib.interventions.sweep.position_mean_z``);
    - ``patch``: replaced by ``source_z[layer]`` [b, pos, head, d_head], the same head's z on paired prompts
      (same length when ``positions="all"``; at the last position the source's last token is read).

    ``positions``: ``"all"`` or ``"last"`` (each row's last real token, ``last_index`` [b]).

    >>> [name for name, _ in head_hooks([(2, 0), (0, 1), (2, 3)], "zero")]
    ['blocks.0.attn.hook_z', 'blocks.2.attn.hook_z']
    """
    if mode not in MODES:
        raise ValueError(f"unknown intervention mode {mode!r}; valid: {list(MODES)}")
    if positions not in ("all", "last"):
        raise ValueError(f"positions must be 'all' or 'last', got {positions!r}")
    if positions == "last" and last_index is None:
        raise ValueError("positions='last' needs last_index (each row's last real token)")
    if mode == "mean" and mean_z is None:
        raise ValueError("mode 'mean' needs mean_z (per layer [pos, head, d_head])")
    if mode == "patch" and source_z is None:
        raise ValueError("mode 'patch' needs source_z (per layer [b, pos, head, d_head])")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, hs in sorted(by_layer.items()):
        if mode == "patch":
            fn = partial(patch_head_hook, heads=hs, source=source_z[layer], positions=positions, last_index=last_index)
        else:
            fn = partial(ablate_head_hook, heads=hs, value=None if mode == "zero" else mean_z[layer],
                         positions=positions, last_index=last_index)
        hooks.append((act_name("z", layer), fn))
    return hooks


def run_with_hooks_cached(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          hooks: list[tuple[str, Callable]], names: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bridge forward with ``hooks`` (e.g. from ``head_hooks``): (logits, cache of ``names``)."""
    bridge = lm.bridge
    with torch.inference_mode(), bridge.hooks(fwd_hooks=list(hooks)):
        logits, cache = bridge.run_with_cache(input_ids, attention_mask=attention_mask, names_filter=list(names))
    return logits, {k: cache[k] for k in names}
