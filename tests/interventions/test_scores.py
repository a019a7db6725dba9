"""Screening scores against planted structure and a hand computation; attribution against exact patching."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from lib.activations.names import act_name
from lib.interventions.scores import SCORES, attribution_patching, head_activity, screening_scores
from lib.interventions.sweep import clean_state, sweep_fast
from lib.models.loading import load_model
from tests.interventions.helpers import PROMPTS, one_length_ids as _ids, random_readout as _readout


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


def test_attribution_matches_exact_patching_for_small_changes(tiny):
    hf = tiny.bridge.original_model
    ids = _ids(tiny)
    ro = _readout(tiny, logits=False)
    ro = dataclasses.replace(ro, weight=ro.weight * 0.2)
    st = clean_state(hf, ids, ro)
    g = torch.Generator().manual_seed(3)
    src = dataclasses.replace(st, z=[z + 1e-3 * torch.randn(z.shape, generator=g) for z in st.z])
    for pos in ("last", "all"):
        exact = sweep_fast(hf, st, ro, "patch", pos, source=src)["probs"][..., 0].mean(-1) - st.metrics["probs"][:, 0].mean().item()
        attr = attribution_patching(hf, ids, src.z, ro, "gratitude", pos)
        np.testing.assert_allclose(attr, exact, atol=0.02 * np.abs(exact).max() + 1e-6)
        assert np.abs(exact).max() > 1e-6
