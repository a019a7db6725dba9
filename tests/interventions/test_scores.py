"""Screening scores against planted structure and a hand computation; attribution against exact patching."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from lib.activations.names import act_name
from lib.interventions.scores import (SCORES, attribution_patching, head_activity, head_contributions,
                                     post_attention_norm, screening_scores)
from lib.interventions.sweep import clean_state, sweep_fast
from lib.models.loading import load_model
from lib.models.archs import out_proj_of
from lib.models.tiny import build_tiny_model
from tests.interventions.helpers import HAND_OUT_PROJ, PROMPTS, one_length_ids as _ids, random_readout as _readout


def _planted_llama(scale=40.0):
    """tiny-llama whose head 1:2 writes strongly along a chosen unit direction d."""
    lm = load_model("tiny-llama", device="cpu")
    hf = lm.bridge.original_model
    d = torch.zeros(lm.cfg.d_model)
    d[5] = 1.0
    o = hf.model.layers[1].self_attn.o_proj
    dh = lm.cfg.d_head
    with torch.no_grad():
        w = o.weight  # [d_model, heads * d_head]
        w[:, 2 * dh:3 * dh] = scale * d[:, None] * torch.linspace(-1, 1, dh)[None, :]
    return lm, d


def test_screening_scores_are_distinct_and_find_a_planted_head():
    lm, d = _planted_llama()
    emo, neu = _ids(lm, PROMPTS[:1] * 2), _ids(lm, PROMPTS[1:] * 2)
    T = min(emo.shape[1], neu.shape[1])
    emo, neu = emo[:, :T], neu[:, :T]
    span = torch.zeros_like(emo, dtype=torch.bool)
    span[:, 2:4] = True
    act_e, act_n = head_activity(lm, emo, span, d), head_activity(lm, neu, span, d)
    scores = screening_scores(act_e, act_n)
    assert set(scores["score"]) == set(SCORES)
    for score, g in scores.groupby("score"):
        assert g["value"].nunique() == len(g), f"{score}: distinct heads share a score"
    direct = scores[scores["score"] == "direct"]
    top = direct.loc[direct["value"].abs().idxmax()]
    assert (top["layer"], top["head"]) == (1, 2)
    # the attention score is the pattern mass on the span, checked by hand for one head
    _, cache = lm.bridge.run_with_cache(emo, names_filter=[act_name("pattern", 0)])
    pat = cache[act_name("pattern", 0)]
    assert np.isclose(act_e["attn_last"][0, 0, 1], float(pat[0, 1, -1, 2:4].sum()), atol=1e-6)


def test_head_contributions_add_up_to_what_attention_adds_to_the_residual_stream(tiny):
    """Per position, the heads' contributions plus the output bias's share equal the attention output as it
    joins the residual stream: the output projection's output, or on Gemma 3 its post-attention norm's output
    (scale frozen at this run), read from the Hugging Face modules by hooks."""
    hf = build_tiny_model(tiny.name)  # a plain Hugging Face model, its weights ours to change
    ids = _ids(tiny)
    layer = 1
    norm = post_attention_norm(hf, layer)
    assert (norm is not None) == (tiny.name == "tiny-gemma3")
    seen = {}
    proj = HAND_OUT_PROJ[tiny.name](hf, layer)
    hooks = [proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].detach().clone())),
             proj.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o.detach().clone()))]
    if norm is not None:
        with torch.no_grad():  # a non-trivial norm weight, so (1 + w) cannot pass for w or 1
            norm.weight.copy_(torch.randn(norm.weight.shape, generator=torch.Generator().manual_seed(0)))
        hooks.append(hf.model.layers[layer].post_attention_layernorm.register_forward_hook(
            lambda m, a, o: seen.__setitem__("normed", o.detach().clone())))
    try:
        with torch.no_grad():
            hf(ids)
    finally:
        for h in hooks:
            h.remove()
    z = seen["z"].view(*seen["z"].shape[:2], tiny.cfg.n_heads, tiny.cfg.d_head)
    parts = head_contributions(hf, layer, z)  # [n, T, H, D]
    bias = getattr(proj, "bias", None)
    bias = torch.zeros(()) if bias is None else bias.detach()
    if norm is None:
        torch.testing.assert_close(parts.sum(2) + bias, seen["attn"], atol=1e-5, rtol=1e-5)
    else:
        a = seen["attn"]
        scale = (1 + norm.weight.detach()) / torch.sqrt(a.pow(2).mean(-1, keepdim=True) + norm.eps)
        torch.testing.assert_close(parts.sum(2) + bias * scale, seen["normed"], atol=1e-5, rtol=1e-5)
        assert (parts.sum(2) - a).abs().max() > 1e-2  # the norm matters: the raw sum is not the output


def test_attribution_matches_exact_patching_for_small_changes(tiny):
    hf = tiny.bridge.original_model
    ids = _ids(tiny)
    ro = _readout(tiny, logits=False)
    ro = dataclasses.replace(ro, weight=ro.weight * 0.2)
    st = clean_state(hf, ids, ro)
    g = torch.Generator().manual_seed(3)
    src = dataclasses.replace(st, z=[z + 1e-3 * torch.randn(z.shape, generator=g) for z in st.z])
    for metric in ("logodds", "probs"):
        for pos in ("last", "all"):
            exact = (sweep_fast(hf, st, ro, "patch", pos, source=src)[metric][..., 0].mean(-1)
                     - st.metrics[metric][:, 0].mean().item())
            attr = attribution_patching(hf, ids, src.z, ro, "gratitude", pos, metric=metric)
            np.testing.assert_allclose(attr, exact, atol=0.02 * np.abs(exact).max() + 1e-6)
            assert np.abs(exact).max() > 1e-6


def test_gemma_head_contributions_through_the_loaded_bridge():
    """The same identity on the model as phase 05 loads it (a TransformerBridge over the Hugging Face model),
    with a non-zero norm weight: the bridge's norm applies (1 + w) / rms as the frozen-scale formula does."""
    lm = load_model("tiny-gemma3", device="cpu")
    hf = lm.bridge.original_model
    norm = post_attention_norm(hf, 1)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=torch.Generator().manual_seed(1)))
    seen = {}
    hooks = [out_proj_of(hf, 1).register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].detach().clone())),
             norm.register_forward_hook(lambda m, a, o: seen.__setitem__("normed", o.detach().clone()))]
    try:
        with torch.no_grad():
            hf.base_model(input_ids=_ids(lm))
    finally:
        for h in hooks:
            h.remove()
    z = seen["z"].view(*seen["z"].shape[:2], lm.cfg.n_heads, lm.cfg.d_head)
    torch.testing.assert_close(head_contributions(hf, 1, z).sum(2), seen["normed"], atol=1e-5, rtol=1e-5)
