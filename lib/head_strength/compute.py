"""Per-head output strength, as pure tensor functions: each head's block of the attention output projection,
its output y_h = z_h W_O^h, and ||y_h|| computed through the head's Gram matrix without forming y_h.

Shapes: z [batch, pos, head_index, d_head] (TransformerLens' ``attn.hook_z``); w [head_index, d_head, d_model]
(the query heads' blocks of W_O, GQA included); y [batch, pos, head_index, d_model].

>>> import torch
>>> z, w = torch.randn(2, 3, 4, 8), torch.randn(4, 8, 16)
>>> torch.allclose(head_result_norms(z, w), head_results(z, w).norm(dim=-1), rtol=1e-4, atol=1e-5)
True
"""
from __future__ import annotations

import torch

from lib.models.archs import head_out_weight, model_dims

__all__ = ["head_out_weights", "module_head_weights", "head_results", "head_gram", "head_result_norms",
           "masked_token_sums", "last_token_index"]


def head_out_weights(hf, layer: int) -> torch.Tensor:
    """[head_index, d_head, d_model]: each query head's block of layer ``layer``'s output projection
    (``lib.models.archs.head_out_weight``, raw weights), detached.

    >>> from lib.models.tiny import build_tiny_model
    >>> tuple(head_out_weights(build_tiny_model("tiny-llama"), 0).shape)
    (4, 16, 64)
    """
    _, n_heads, d_head = model_dims(hf)
    return torch.stack([head_out_weight(hf, layer, h, d_head).detach() for h in range(n_heads)])


def module_head_weights(module: torch.nn.Module, n_heads: int) -> torch.Tensor:
    """[head_index, d_head, d_model] from a projection module whose input is the concatenated head outputs:
    an ``nn.Linear`` (weight [out, in]) or a GPT-2 style ``Conv1D`` (weight [in, out], told apart by type).

    >>> lin = torch.nn.Linear(8, 5, bias=False)
    >>> torch.equal(module_head_weights(lin, 2)[1], lin.weight[:, 4:].T)
    True
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise TypeError(f"{type(module).__name__} has no 2-D weight; the hook point must be a linear projection "
                        f"(nn.Linear or Conv1D) whose input is the concatenated head outputs")
    weight = weight.detach()
    in_by_out = type(module).__name__ == "Conv1D"  # transformers.pytorch_utils.Conv1D keeps [in, out]
    w = weight if in_by_out else weight.T  # [in = heads * d_head, out = d_model]
    if w.shape[0] % n_heads:
        raise ValueError(f"{type(module).__name__} takes {w.shape[0]} input features, not a multiple of "
                         f"{n_heads} heads; check the number of heads given to set_model_structure")
    return w.reshape(n_heads, w.shape[0] // n_heads, w.shape[1])


def head_results(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y [batch, pos, head_index, d_model] = z_h @ W_O^h for every head (without the projection's bias).

    >>> head_results(torch.ones(1, 2, 3, 4), torch.ones(3, 4, 5)).shape
    torch.Size([1, 2, 3, 5])
    """
    return torch.einsum("bphd,hdm->bphm", z, w.to(z.dtype))


def head_gram(w: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """G [head_index, d_head, d_head] = W_O^h W_O^h^T, computed in float64, returned in ``dtype``
    (default: ``w``'s), so that ||z_h W_O^h||^2 = z_h G_h z_h^T.

    >>> head_gram(torch.eye(2).reshape(1, 2, 2)).squeeze(0)
    tensor([[1., 0.],
            [0., 1.]])
    """
    gram = torch.einsum("hdm,hem->hde", w.double(), w.double())
    return gram.to(w.dtype if dtype is None else dtype)


def head_result_norms(z: torch.Tensor, w: torch.Tensor | None, gram: torch.Tensor | None = None) -> torch.Tensor:
    """||y_h|| [batch, pos, head_index] through the Gram matrices (``head_gram(w)`` when ``gram`` is None):
    sqrt(max(z_h G_h z_h^T, 0)); d_head^2 multiply-adds per head and token instead of d_head * d_model.
    Half-precision z is computed in float32.

    >>> head_result_norms(torch.tensor([[[[3.0, 4.0]]]]), torch.eye(2).reshape(1, 2, 2))
    tensor([[[5.]]])
    """
    work = torch.float32 if z.dtype in (torch.float16, torch.bfloat16) else z.dtype
    z = z.to(work)
    gram = head_gram(w, work) if gram is None else gram.to(work)
    zg = torch.einsum("bphd,hde->bphe", z, gram)
    return (zg * z).sum(-1).clamp_min_(0).sqrt_()


def masked_token_sums(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, ...]: the sum over real tokens (``mask`` [batch, pos], 1 = real) of ``values`` [batch, pos, ...],
    in float64.

    >>> masked_token_sums(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[1, 1, 0]]))
    tensor([3.], dtype=torch.float64)
    """
    m = mask.to(torch.float64).reshape(*mask.shape, *([1] * (values.ndim - 2)))
    return (values.to(torch.float64) * m).sum(1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[batch]: the position of each row's last real token (right or left padding).

    >>> last_token_index(torch.tensor([[1, 1, 0], [0, 1, 1]]))
    tensor([1, 2])
    """
    pos = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask.bool(), pos, torch.full_like(pos, -1)).amax(1)
