"""Shared by the intervention and phase-05 tests: prompts of one length, a random readout, and the output
projection of each tiny architecture written by hand (independent of ``lib.models.archs``' table)."""
from __future__ import annotations

import torch

from lib.interventions.readout import Readout

__all__ = ["PROMPTS", "HAND_OUT_PROJ", "one_length_ids", "random_readout"]

PROMPTS = ["Thank you so much for your help with the move", "I am furious that the train was cancelled again"]

# The module whose input is the concatenation of head outputs, in a plain Hugging Face model.
HAND_OUT_PROJ = {
    "tiny-gpt2": lambda m, L: m.transformer.h[L].attn.c_proj,
    "tiny-pythia": lambda m, L: m.gpt_neox.layers[L].attention.dense,
    "tiny-gpt-neo": lambda m, L: m.transformer.h[L].attn.attention.out_proj,
    "tiny-llama": lambda m, L: m.model.layers[L].self_attn.o_proj,
    "tiny-gemma3": lambda m, L: m.model.layers[L].self_attn.o_proj,
}


def one_length_ids(lm, texts=PROMPTS) -> torch.Tensor:
    """``texts`` encoded and cut to the shortest one's length (one length, no padding)."""
    enc = lm.encoder.encode(texts)
    return enc.input_ids[:, : int(enc.lengths.min())]


def random_readout(lm, layer=None, logits=True, seed=0) -> Readout:
    """A seeded random 4-class probe at ``layer`` (default: the last), with continuation tokens if ``logits``."""
    d = lm.cfg.d_model
    g = torch.Generator().manual_seed(seed)
    return Readout(layer=lm.cfg.n_layers - 1 if layer is None else layer, weight=torch.randn(4, d, generator=g),
                   bias=torch.randn(4, generator=g), classes=["gratitude", "anger", "apology", "neutral"],
                   continuations={"gratitude": torch.tensor([3, 5, 7]), "anger": torch.tensor([11]),
                                  "apology": torch.tensor([2, 13])} if logits else {})
