"""Per-architecture facts in one place: where a Hugging Face causal LM keeps its blocks, each block's
attention output projection (whose input is the concatenated head outputs, TransformerLens'
``attn.hook_z`` flattened) and the final norm.

>>> sorted(ARCHS)
['GPT2LMHeadModel', 'GPTNeoForCausalLM', 'GPTNeoXForCausalLM', 'Gemma3ForCausalLM', 'LlamaForCausalLM']
>>> ARCHS["LlamaForCausalLM"].out_proj
'self_attn.o_proj'
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["HeadArch", "ARCHS", "arch_of", "get_path", "blocks_of", "out_proj_of", "block_output", "model_dims",
           "head_out_weight"]


@dataclass(frozen=True)
class HeadArch:
    """Where an architecture keeps its blocks, the attention output projection and the final norm."""

    layers: str  # attribute path from the CausalLM to the list of blocks
    out_proj: str  # inside a block: the module whose input is the concatenated head outputs (z); 'p|q' = p or q
    final_norm: str
    block_returns_tuple: bool = False  # GPT-Neo blocks return (hidden, attn_weights)
    conv1d: bool = False  # GPT-2's Conv1D keeps weight as [in, out]


ARCHS = {
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
        if name in ARCHS:
            return ARCHS[name]
    raise ValueError(f"head interventions do not know architecture {names[0]!r}; supported: {sorted(ARCHS)}")


def get_path(root, path: str):
    """``root.a.b.c`` for ``"a.b.c"``; ``"p|q"`` tries the paths in order.

    >>> import types
    >>> get_path(types.SimpleNamespace(a=types.SimpleNamespace(b=3)), "x.y|a.b")
    3
    """
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


def blocks_of(hf_model):
    """The model's list of transformer blocks (a ``ModuleList``)."""
    return get_path(hf_model, arch_of(hf_model).layers)


def out_proj_of(hf_model, layer: int) -> torch.nn.Module:
    """Block ``layer``'s attention output projection: its input is the heads' outputs, concatenated."""
    blocks = blocks_of(hf_model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} out of range for a model with {len(blocks)} layers (0..{len(blocks) - 1})")
    return get_path(blocks[layer], arch_of(hf_model).out_proj)


def block_output(output):
    """A block's hidden states, whether it returns them alone or first in a tuple (GPT-Neo)."""
    return output[0] if isinstance(output, tuple) else output


def model_dims(hf) -> tuple[int, int, int]:
    """(layers, query heads, d_head) of a Hugging Face causal LM."""
    cfg = hf.config
    n_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or cfg.num_heads
    n_layers = len(blocks_of(hf))
    d_model = hf.get_input_embeddings().weight.shape[1]
    d_head = getattr(cfg, "head_dim", None) or d_model // n_heads
    return n_layers, n_heads, d_head


def head_out_weight(hf_model, layer: int, head: int, d_head: int) -> torch.Tensor:
    """[d_head, d_model]: head ``head``'s block of the output projection (z_h @ it = the head's output,
    without bias). For Gemma 3 the post-attention norm comes after the sum of heads."""
    mod = out_proj_of(hf_model, layer)
    sl = slice(head * d_head, (head + 1) * d_head)
    return mod.weight[sl, :] if arch_of(hf_model).conv1d else mod.weight[:, sl].T
