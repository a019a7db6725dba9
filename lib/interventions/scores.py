"""Screening scores for every attention head, and attribution patching (gradient-based).

All scores compare emotion prompts with neutral prompts (``emotion - neutral``, means over prompts):

- ``attn_last``: attention mass the last position puts on the emotion-bearing span tokens,
  sum_{k in span} A[last, k];
- ``attn_all``: the same averaged over every query position, mean_q sum_{k in span, k <= q} A[q, k];
- ``norm_last`` / ``norm_all``: the norm of the head's output z_h W_O^h at the last position / mean over positions;
- ``direct``: the head's last-position contribution to the residual stream projected on a unit emotion
  direction d, its direct effect along d: (z_h W_O^h) . d. Gemma 3 passes the attention output through
  an RMSNorm before the residual stream (``post_attention_layernorm``: y = a * (1 + w) / rms(a), a the
  sum of the heads' outputs); there the contribution is linearised with the norm's scale frozen at the
  clean run, (z_h W_O^h) * (1 + w) / rms(a) (``head_contributions``), so the heads' contributions add up
  to the norm's output exactly.

Attribution patching (Nanda 2023) estimates the exact patching effect of every head at once from
one forward and one backward pass on the target prompts: a_h ~ sum_pos (z_src - z_tgt)_h . dm/dz_h,
with m the probe's log-odds of the class (or its probability).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lib.activations.names import act_name
from lib.interventions.head_outputs import head_outputs
from lib.interventions.readout import Readout, readout_metrics
from lib.models.archs import block_output, blocks_of, get_path, head_out_weight, model_dims, out_proj_of

__all__ = ["SCORES", "POST_ATTENTION_NORMS", "post_attention_norm", "head_contributions", "head_activity",
           "screening_scores", "attribution_patching"]

SCORES = ("attn_last", "attn_all", "norm_last", "norm_all", "direct")

# Architectures whose attention output passes a norm before joining the residual stream: the norm's path
# inside a block. (Llama's ``post_attention_layernorm`` is its pre-MLP norm, hence the explicit list.)
POST_ATTENTION_NORMS = {"Gemma3ForCausalLM": "post_attention_layernorm"}


def post_attention_norm(hf, layer: int):
    """Block ``layer``'s norm between the attention output and the residual stream, or None (no such norm)."""
    names = list(getattr(hf.config, "architectures", None) or []) + [type(hf).__name__]
    path = next((POST_ATTENTION_NORMS[n] for n in names if n in POST_ATTENTION_NORMS), None)
    return None if path is None else get_path(blocks_of(hf)[layer], path)


def head_contributions(hf, layer: int, z: torch.Tensor) -> torch.Tensor:
    """[..., heads, d_model]: what each head adds to the residual stream from z [..., heads, d_head]:
    z_h W_O^h, or for a post-attention RMSNorm its linearisation with the norm's scale frozen at this run,
    (z_h W_O^h) * (1 + w) / sqrt(mean(a^2) + eps), a the attention output (sum of heads plus the output
    bias). The output bias's share (bias * scale) is left out."""
    n_heads, d_head = z.shape[-2:]
    w = torch.stack([head_out_weight(hf, layer, h, d_head).detach().float() for h in range(n_heads)])  # [H, dh, D]
    res = torch.einsum("...hd,hdm->...hm", z.float(), w)
    norm = post_attention_norm(hf, layer)
    if norm is None:
        return res
    bias = getattr(out_proj_of(hf, layer), "bias", None)
    a = res.sum(-2) + (0 if bias is None else bias.detach().float())
    scale = (1.0 + norm.weight.detach().float()) * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + norm.eps)
    return res * scale.unsqueeze(-2)


@torch.inference_mode()
def head_activity(lm, input_ids: torch.Tensor, span: torch.Tensor, direction: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Per prompt, layer and head [n, L, H]: the five quantities behind ``SCORES`` on one batch of
    prompts of one length (``span`` bool [n, T] marks the emotion-bearing tokens)."""
    hf = lm.bridge.original_model
    n_layers, n_heads, d_head = model_dims(hf)
    names = [act_name(site, i) for i in range(n_layers) for site in ("pattern", "z")]
    _, cache = lm.bridge.run_with_cache(input_ids, names_filter=names)
    sp = span.to(device=input_ids.device, dtype=torch.float32)
    T = input_ids.shape[1]
    causal_span = torch.tril(torch.ones(T, T, device=sp.device))[None] * sp[:, None, :]  # [n, q, k]
    out = {k: np.zeros((input_ids.shape[0], n_layers, n_heads)) for k in SCORES}
    d = None if direction is None else (direction / direction.norm()).float()
    for layer in range(n_layers):
        pat = cache[act_name("pattern", layer)].float()  # [n, H, q, k]
        z = cache[act_name("z", layer)].float()  # [n, T, H, dh]
        out["attn_last"][:, layer] = (pat[:, :, -1, :] * sp[:, None, :]).sum(-1).cpu().numpy()
        out["attn_all"][:, layer] = (pat * causal_span[:, None]).sum(-1).mean(-1).cpu().numpy()
        res = head_contributions(hf, layer, z)  # [n, T, H, D]
        norms = res.norm(dim=-1)
        out["norm_last"][:, layer] = norms[:, -1].cpu().numpy()
        out["norm_all"][:, layer] = norms.mean(1).cpu().numpy()
        if d is not None:
            out["direct"][:, layer] = (res[:, -1] @ d.to(res.device)).cpu().numpy()
    if d is None:
        del out["direct"]
    return out


def screening_scores(emotion: dict[str, np.ndarray], neutral: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long table (layer, head, score, value): mean over emotion prompts minus mean over neutral prompts."""
    rows = []
    for key in emotion:
        diff = emotion[key].mean(0) - neutral[key].mean(0)  # [L, H]
        for (layer, head), v in np.ndenumerate(diff):
            rows.append({"layer": layer, "head": head, "score": key, "value": float(v)})
    return pd.DataFrame(rows)


def attribution_patching(hf, target_ids: torch.Tensor, source_z: list[torch.Tensor], readout: Readout, cls: str,
                         positions: str = "last", metric: str = "logodds") -> np.ndarray:
    """[L, H]: attribution estimate of patching each head's z from the source prompts into the target
    prompts (row i from source row i), on the mean over prompts of the probe's ``metric`` of ``cls`` at the
    last position (``"logodds"``, log p - log(1 - p), or ``"probs"``).

    One forward and one backward pass: a[L, h] = mean_i sum_pos (z_src - z_tgt)[i, pos, h] . grad[i, pos, h]
    (``positions="last"``: the last position only).
    """
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    if cls not in readout.classes:
        raise ValueError(f"class {cls!r} is not one of the probe's {readout.classes}")
    if metric not in ("logodds", "probs"):
        raise ValueError(f"metric must be 'logodds' or 'probs', got {metric!r}")
    blocks = blocks_of(hf)
    n_layers, n_heads, _ = model_dims(hf)
    zs, box, handles = [None] * n_layers, {}, []

    def embed_hook(module, args, output):  # gradients flow from here on, whatever the parameters say
        return output.detach().requires_grad_(True)

    def keep_z(z, layer):  # z [n, T, H, dh] feeds the output projection, so z.grad is dP/dz
        z.retain_grad()
        zs[layer] = z
        return z

    handles.append(hf.get_input_embeddings().register_forward_hook(embed_hook))
    handles.append(blocks[readout.layer].register_forward_hook(lambda m, a, o: box.__setitem__("resid", block_output(o))))
    try:
        with torch.enable_grad(), head_outputs(hf, range(n_layers), keep_z):
            hf.base_model(input_ids=target_ids)
            m = readout_metrics(box["resid"][:, -1], None, Readout(readout.layer, readout.weight, readout.bias,
                                                                    readout.classes))[metric]
            m[:, readout.classes.index(cls)].mean().backward()
    finally:
        for h in handles:
            h.remove()
    out = np.zeros((n_layers, n_heads))
    for layer in range(n_layers):
        z = zs[layer]
        grad = z.grad if z.grad is not None else torch.zeros_like(z)
        delta = source_z[layer].float() - z.detach()
        if positions == "last":
            delta, grad = delta[:, -1:], grad[:, -1:]
        # grad is of the mean over prompts (it carries 1/n): the sum over prompts is the mean attribution
        out[layer] = ((delta * grad).sum((1, 3)).sum(0)).cpu().numpy()
    return out
