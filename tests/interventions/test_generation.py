"""Seeded generation against Hugging Face's generate with hand hooks; sets in one batch; top-k sampling."""
from __future__ import annotations

import pytest
import torch

from lib.interventions.generation import generate, generate_sets, sample_top_k
from lib.interventions.sweep import clean_state, position_mean_z
from lib.models.loading import load_model
from tests.interventions.helpers import one_length_ids as _ids, random_readout as _readout


def test_generation_is_seeded_and_ablation_matches_a_hand_hook():
    lm = load_model("tiny-gpt2", device="cpu")
    ids = _ids(lm)
    a = generate(lm, ids, n_tokens=6, seed=4)
    assert a == generate(lm, ids, n_tokens=6, seed=4) and a != generate(lm, ids, n_tokens=6, seed=5)
    # greedy (top_k=1) with two heads zeroed equals Hugging Face's generate with a hand-written hook
    got = generate(lm, ids, n_tokens=6, seed=4, heads=[(0, 1), (1, 2)], mode="zero", top_k=1)
    hf = lm.bridge.original_model
    dh = lm.cfg.d_head

    def hand(h):
        def pre(module, args):
            z = args[0].clone()
            z[..., h * dh:(h + 1) * dh] = 0
            return (z,)
        return pre
    hs = [hf.transformer.h[0].attn.c_proj.register_forward_pre_hook(hand(1)),
          hf.transformer.h[1].attn.c_proj.register_forward_pre_hook(hand(2))]
    try:
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                          pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        for h in hs:
            h.remove()
    assert got == lm.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    assert got != generate(lm, ids, n_tokens=6, seed=4, top_k=1)


def test_generating_sets_in_one_batch_equals_one_at_a_time():
    lm = load_model("tiny-llama", device="cpu")
    ids = _ids(lm)
    sets = [[], [(0, 1)], [(1, 0), (1, 3)]]
    st = clean_state(lm.bridge.original_model, ids.flip(0), _readout(lm))
    for mode, kw in (("mean", {"mean_z": position_mean_z(st)}), ("patch", {"source_z": st.z})):
        for positions in ("all", "last"):
            batched = generate_sets(lm, ids, sets, n_tokens=5, seed=2, mode=mode, positions=positions, **kw)
            single = [generate(lm, ids, n_tokens=5, seed=2, heads=s, mode=mode, positions=positions, **kw)
                      for s in sets]
            assert batched == single
            assert batched[0] != batched[2]


def test_position_rule_and_matched_means_equal_a_hand_hook():
    """Greedy generation, one head mean-ablated: under "last" the prompt's last position and every generated
    one are edited, under "all" every position; prompt position p gets the reference mean at p, generated
    positions the mean at the last prompt position (Hugging Face's generate with a hand-written hook)."""
    lm = load_model("tiny-llama", device="cpu")
    hf = lm.bridge.original_model
    ids = _ids(lm)
    T, dh, (layer, head) = ids.shape[1], lm.cfg.d_head, (0, 2)  # layer 0: earlier positions reach the last via layer 1
    mean_z = {layer: torch.randn(T, lm.cfg.n_heads, dh, generator=torch.Generator().manual_seed(0))}
    m = mean_z[layer][:, head]
    outs = {}
    for positions in ("all", "last"):
        def pre(module, args):
            z = args[0].clone()
            sl = slice(head * dh, (head + 1) * dh)
            if z.shape[1] == 1:  # a generated token
                z[:, :, sl] = m[-1]
            elif positions == "all":
                z[:, :, sl] = m
            else:
                z[:, -1, sl] = m[-1]
            return (z,)
        handle = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre)
        try:
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                              pad_token_id=lm.tokenizer.pad_token_id)
        finally:
            handle.remove()
        want = lm.tokenizer.batch_decode(out[:, T:], skip_special_tokens=True)
        outs[positions] = generate(lm, ids, n_tokens=6, seed=0, heads=[(layer, head)], mode="mean",
                                   positions=positions, mean_z=mean_z, top_k=1)
        assert outs[positions] == want, positions
    assert outs["all"] != outs["last"] != generate(lm, ids, n_tokens=6, seed=0, top_k=1)
    with pytest.raises(ValueError, match=r"need \[" + str(T) + ", heads, d_head\]"):
        generate(lm, ids, n_tokens=2, seed=0, heads=[(layer, head)], mode="mean", mean_z={layer: mean_z[layer][1:]})


def test_sample_top_k_draws_from_the_truncated_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    u = torch.rand((20000, 5), generator=g).clamp_(min=1e-20)
    draws = sample_top_k(logits.repeat(20000, 1), -torch.log(-torch.log(u)), top_k=3)
    freq = torch.bincount(draws, minlength=5).float() / 20000
    want = torch.zeros(5)
    want[[0, 1, 4]] = torch.softmax(logits[0, [0, 1, 4]], -1)
    assert torch.allclose(freq, want, atol=0.015), (freq, want)
    assert freq[2] == 0 and freq[3] == 0
