"""Read or edit the heads' outputs of a Hugging Face model: the one pre-hook every fast path uses.

A head's output z_h is its slice of the attention output projection's input (TransformerLens'
``blocks.L.attn.hook_z``, flattened over heads). ``head_outputs`` registers a forward pre-hook on
the output projection of each given layer, shows the callback that input as
z [batch, pos, head_index, d_head] (a view when the input is contiguous, as in every supported
model) and, if the callback returns a tensor of that shape, feeds it to the projection instead
(``None``: unchanged). The hooks are removed on exit, also on errors.

>>> from lib.models.tiny import build_tiny_model
>>> hf = build_tiny_model("tiny-llama")
>>> seen = {}
>>> with head_outputs(hf, [1], lambda z, layer: seen.update({layer: tuple(z.shape)})):  # read only
...     _ = hf(torch.tensor([[1, 2, 3]]))
>>> seen
{1: (1, 3, 4, 16)}
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch

from lib.models.archs import model_dims, out_proj_of

__all__ = ["HeadOutputFn", "head_outputs"]

# fn(z, layer) -> None (read) or a tensor of z's shape (replace); z is [batch, pos, head_index, d_head]
HeadOutputFn = Callable[[torch.Tensor, int], "torch.Tensor | None"]


def _pre_hook(fn: HeadOutputFn, layer: int, n_heads: int, d_head: int):
    def pre(module, args):
        flat = args[0]  # [batch, pos, head_index * d_head]
        new = fn(flat.reshape(*flat.shape[:2], n_heads, d_head), layer)
        if new is None:
            return None
        if not isinstance(new, torch.Tensor):
            raise TypeError(f"head_outputs callback for layer {layer} returned {type(new).__name__}; return None "
                            f"(read only) or a tensor [batch, pos, head_index, d_head] (replace z)")
        if new.shape[-2:] != (n_heads, d_head) or new.shape[:2] != flat.shape[:2]:
            raise ValueError(f"head_outputs callback for layer {layer} returned shape {tuple(new.shape)}; "
                             f"expected {(*flat.shape[:2], n_heads, d_head)} [batch, pos, head_index, d_head]")
        return (new.reshape(flat.shape), *args[1:])
    return pre


@contextlib.contextmanager
def head_outputs(hf, layers: Iterable[int], fn: HeadOutputFn) -> Iterator[None]:
    """While open, ``fn(z, layer)`` sees (and may replace) z [batch, pos, head_index, d_head] of each of
    ``layers`` on every forward of ``hf`` (a Hugging Face causal LM)."""
    _, n_heads, d_head = model_dims(hf)
    handles = []
    try:
        for layer in layers:
            handles.append(out_proj_of(hf, layer).register_forward_pre_hook(_pre_hook(fn, layer, n_heads, d_head)))
        yield
    finally:
        for h in handles:
            h.remove()
