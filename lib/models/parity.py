"""Checks that a loaded bridge computes what the Hugging Face model computes.

Both checks compare real-token positions only (padding positions are undefined).
"""
from __future__ import annotations

import torch

from lib.models.loading import LoadedModel, load_hf_model

__all__ = ["reference_hf_model", "logit_parity", "batch_consistency", "greedy_continuation"]


def reference_hf_model(lm: LoadedModel):
    """An independent HF model instance with the same weights as ``lm`` (not the bridge's own)."""
    model, _ = load_hf_model(lm.spec, dtype=lm.dtype, seed=lm.seed)
    return model.to(lm.device).eval()


@torch.inference_mode()
def logit_parity(lm: LoadedModel, texts: list[str], reference=None) -> float:
    """Max |bridge logits - HF logits| over the real tokens of a right-padded batch of ``texts``."""
    reference = reference if reference is not None else reference_hf_model(lm)
    enc = lm.encode(texts)
    ours = lm.logits(enc)
    theirs = reference(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    real = enc.attention_mask.bool()
    return float((ours[real] - theirs[real]).abs().max())


@torch.inference_mode()
def batch_consistency(lm: LoadedModel, texts: list[str]) -> float:
    """Max |batched logits - one-prompt-at-a-time logits| over each prompt's real tokens."""
    enc = lm.encode(texts)
    batched = lm.logits(enc)
    worst = 0.0
    for i, text in enumerate(texts):
        single = lm.logits(lm.encode([text]))[0]
        n = int(enc.lengths[i])
        if single.shape[0] != n:
            raise AssertionError(f"row {i} has {n} real tokens batched but {single.shape[0]} alone")
        worst = max(worst, float((batched[i, :n] - single).abs().max()))
    return worst


@torch.inference_mode()
def greedy_continuation(lm: LoadedModel, prompt: str, max_new_tokens: int = 12, *,
                        stop_at_eos: bool = True) -> str:
    """Greedy (argmax) continuation of ``prompt`` through the bridge, decoded to text."""
    ids = lm.encode([prompt]).input_ids
    new = []
    for _ in range(max_new_tokens):
        nxt = lm.bridge(ids, attention_mask=torch.ones_like(ids))[0, -1].argmax()
        if stop_at_eos and nxt.item() == lm.tokenizer.eos_token_id:
            break
        new.append(int(nxt))
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return lm.tokenizer.decode(new)
