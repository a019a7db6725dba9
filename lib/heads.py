"""Attention heads: parse head sets, reach each architecture's modules, intervene exactly on ``attn.hook_z``.

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

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

__all__ = ["MODES", "HeadArch", "arch_of", "parse_heads", "format_heads", "head_out_weight",
           "z_hooks", "run_with_z_hooks"]

MODES = ("zero", "mean", "patch")


@dataclass(frozen=True)
class HeadArch:
    """Where an architecture keeps its blocks, the attention output projection and the final norm."""

    layers: str  # attribute path from the CausalLM to the list of blocks
    out_proj: str  # inside a block: the module whose input is the concatenated head outputs (z); 'p|q' = p or q
    final_norm: str
    block_returns_tuple: bool = False  # GPT-Neo blocks return (hidden, attn_weights)
    conv1d: bool = False  # GPT-2's Conv1D keeps weight as [in, out]


_ARCHS = {
    "GPT2LMHeadModel": HeadArch("transformer.h", "attn.c_proj", "transformer.ln_f", conv1d=True),
    "GPTNeoXForCausalLM": HeadArch("gpt_neox.layers", "attention.dense", "gpt_neox.final_layer_norm"),
    # under a TransformerBridge, GPT-Neo's block.attn is the inner attention (attn.attention in HF)
    "GPTNeoForCausalLM": HeadArch("transformer.h", "attn.attention.out_proj|attn.out_proj", "transformer.ln_f",
                                  block_returns_tuple=True),
    "LlamaForCausalLM": HeadArch("model.layers", "self_attn.o_proj", "model.norm"),
    "Gemma3ForCausalLM": HeadArch("model.layers", "self_attn.o_proj", "model.norm"),
}


def arch_of(hf_model) -> HeadArch:
    """The ``HeadArch`` of a Hugging Face causal LM (an error names the supported ones)."""
    names = list(getattr(hf_model.config, "architectures", None) or []) + [type(hf_model).__name__]
    for name in names:
        if name in _ARCHS:
            return _ARCHS[name]
    raise ValueError(f"head interventions do not know architecture {names[0]!r}; supported: {sorted(_ARCHS)}")


def get_path(root, path: str):
    """``root.a.b.c`` for ``"a.b.c"``; ``"p|q"`` tries the paths in order."""
    errors = []
    for alt in path.split("|"):
        obj = root
        try:
            for part in alt.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError as err:
            errors.append(str(err))
    raise AttributeError(f"none of {path.split('|')} found on {type(root).__name__}: {errors}")


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
    return ",".join(f"{layer}:{head}" for layer, head in heads)


def head_out_weight(hf_model, layer: int, head: int, d_head: int) -> torch.Tensor:
    """[d_head, d_model]: head ``head``'s block of the output projection (z_h @ it = the head's output,
    without bias). For Gemma 3 the post-attention norm comes after the sum of heads."""
    arch = arch_of(hf_model)
    mod = get_path(get_path(hf_model, arch.layers)[layer], arch.out_proj)
    sl = slice(head * d_head, (head + 1) * d_head)
    return mod.weight[sl, :] if arch.conv1d else mod.weight[:, sl].T


def z_hooks(layer_values: dict[int, Callable]) -> list[tuple[str, Callable]]:
    """Bridge hooks on ``blocks.L.attn.hook_z`` from per-layer functions ``fn(z) -> z`` (z [b, pos, head, d_head])."""
    def wrap(fn):
        def hook(z, hook):
            return fn(z)
        return hook
    return [(f"blocks.{layer}.attn.hook_z", wrap(fn)) for layer, fn in sorted(layer_values.items())]


def intervention(heads: list[tuple[int, int]], mode: str, *, positions: str = "all", last_index=None,
                 mean_z: dict[int, torch.Tensor] | None = None,
                 source_z: dict[int, torch.Tensor] | None = None) -> dict[int, Callable]:
    """Per layer, a function that edits z [b, pos, head, d_head] for ``heads``:

    - ``zero``: the head's output is zero;
    - ``mean``: replaced by ``mean_z[layer][head]`` (its mean over a reference set of prompts and positions);
    - ``patch``: replaced by ``source_z[layer]`` [b, pos, head, d_head], the same head's z on other prompts
      (same length when ``positions="all"``; at the last position only the source's last row is read).

    ``positions``: ``"all"`` or ``"last"`` (the last real token of each row, ``last_index`` [b]).
    """
    if mode not in MODES:
        raise ValueError(f"unknown intervention mode {mode!r}; valid: {list(MODES)}")
    if positions not in ("all", "last"):
        raise ValueError(f"positions must be 'all' or 'last', got {positions!r}")
    if mode == "mean" and mean_z is None:
        raise ValueError("mode 'mean' needs mean_z (per layer [head, d_head])")
    if mode == "patch" and source_z is None:
        raise ValueError("mode 'patch' needs source_z (per layer [b, pos, head, d_head])")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def make(layer, hs):
        def fn(z):
            z = z.clone()
            rows = torch.arange(z.shape[0], device=z.device)
            for h in hs:
                if mode == "zero":
                    new = torch.zeros_like(z[:, :, h])
                elif mode == "mean":
                    new = mean_z[layer][h].to(z).expand_as(z[:, :, h])
                else:
                    src = source_z[layer].to(z)
                    if positions == "all" and src.shape[:2] != z.shape[:2]:
                        raise ValueError(f"patching all positions needs sources of the same shape: {tuple(src.shape[:2])} "
                                         f"vs {tuple(z.shape[:2])} (pair prompts of equal token length)")
                    new = src[:, :, h] if positions == "all" else None
                if positions == "all":
                    z[:, :, h] = new
                else:
                    last = torch.as_tensor(last_index, device=z.device)
                    if mode == "patch":
                        src_last = torch.as_tensor(last_index if src.shape[1] == z.shape[1] else
                                                   [src.shape[1] - 1] * len(rows), device=z.device)
                        z[rows, last, h] = src[rows, src_last, h]
                    else:
                        z[rows, last, h] = new[rows, last]
            return z
        return fn

    return {layer: make(layer, hs) for layer, hs in by_layer.items()}


def run_with_z_hooks(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     fns: dict[int, Callable], names: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bridge forward with ``fns`` applied on ``attn.hook_z``: (logits, cache of ``names``)."""
    bridge = lm.bridge
    with torch.inference_mode(), bridge.hooks(fwd_hooks=z_hooks(fns)):
        logits, cache = bridge.run_with_cache(input_ids, attention_mask=attention_mask, names_filter=list(names))
    return logits, {k: cache[k] for k in names}
