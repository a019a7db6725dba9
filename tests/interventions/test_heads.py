"""Head interventions against hand-written Hugging Face hooks; fast sweeps against naive ones;
screening and attribution against planted structure and a linear regime."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from lib.interventions.effects import generate, generate_sets, random_head_sets, rank_heads, sample_top_k, set_metrics
from lib.phases.heads import choose_prompts
from lib.interventions.scores import SCORES, attribution_patching, head_activity, screening_scores
from lib.interventions.sweep import Readout, clean_state, readout_metrics, sweep_fast, sweep_naive
from lib.interventions.heads import head_hooks, parse_heads, run_with_hooks_cached
from lib.models.loading import load_model
from lib.models.tiny import build_tiny_model

PROMPTS = ["Thank you so much for your help with the move", "I am furious that the train was cancelled again"]

# Written by hand per architecture (independent of lib.interventions.heads' table): the module whose input is the
# concatenation of head outputs, in a plain Hugging Face model.
HAND_OUT_PROJ = {
    "tiny-gpt2": lambda m, L: m.transformer.h[L].attn.c_proj,
    "tiny-pythia": lambda m, L: m.gpt_neox.layers[L].attention.dense,
    "tiny-gpt-neo": lambda m, L: m.transformer.h[L].attn.attention.out_proj,
    "tiny-llama": lambda m, L: m.model.layers[L].self_attn.o_proj,
    "tiny-gemma3": lambda m, L: m.model.layers[L].self_attn.o_proj,
}


def _ids(lm, texts=PROMPTS):
    enc = lm.encoder.encode(texts)
    return enc.input_ids[:, : int(enc.lengths.min())]  # one length, no padding


def _readout(lm, layer=None, logits=True, seed=0):
    d = lm.cfg.d_model
    g = torch.Generator().manual_seed(seed)
    return Readout(layer=lm.cfg.n_layers - 1 if layer is None else layer, weight=torch.randn(4, d, generator=g),
                   bias=torch.randn(4, generator=g), classes=["gratitude", "anger", "apology", "neutral"],
                   continuations={"gratitude": torch.tensor([3, 5, 7]), "anger": torch.tensor([11]),
                                  "apology": torch.tensor([2, 13])} if logits else {})


def test_parse_heads_and_errors():
    assert parse_heads("1:0,0:1, 1:0", n_layers=2, n_heads=2) == [(0, 1), (1, 0)]
    with pytest.raises(ValueError, match=r"2:0 is out of range .*layers 0..1, heads 0..3"):
        parse_heads("2:0", n_layers=2, n_heads=4, model_name="m")
    with pytest.raises(ValueError, match="is not 'L:H'"):
        parse_heads("1-2", n_layers=2, n_heads=4)
    with pytest.raises(ValueError, match="empty head set"):
        parse_heads(" , ", n_layers=2, n_heads=4)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_equals_hand_hook_on_hugging_face_model(tiny, mode):
    """lib (TransformerLens hook_z) vs a plain HF model whose head slice is edited before the output projection."""
    hf = build_tiny_model(tiny.name)
    ids = _ids(tiny)
    d_head = tiny.cfg.d_head
    layer, head = 1, 2
    mean = torch.randn(d_head, generator=torch.Generator().manual_seed(1))
    mean_z = {layer: torch.stack([mean] * tiny.cfg.n_heads)}

    def hand(module, args):
        z = args[0].clone()
        z[..., head * d_head:(head + 1) * d_head] = 0.0 if mode == "zero" else mean
        return (z,)

    handle = HAND_OUT_PROJ[tiny.name](hf, layer).register_forward_pre_hook(hand)
    with torch.no_grad():
        want = hf(ids).logits
    handle.remove()
    with torch.no_grad():
        clean = hf(ids).logits
    got, _ = run_with_hooks_cached(tiny, ids, None, head_hooks([(layer, head)], mode, mean_z=mean_z), [])
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (want - clean).abs().max() > 1e-3  # the intervention does something


def test_patching_every_head_of_a_layer_copies_the_attention_output(tiny):
    ids = _ids(tiny)
    a, b = ids[:1], ids[1:]
    layer = 1
    names = [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"]
    _, ca = run_with_hooks_cached(tiny, a, None, [], names)
    _, cb = run_with_hooks_cached(tiny, b, None, [], names)
    heads = [(layer, h) for h in range(tiny.cfg.n_heads)]
    fns = head_hooks(heads, "patch", source_z={layer: ca[names[0]]})
    _, patched = run_with_hooks_cached(tiny, b, None, fns, names)
    assert torch.allclose(patched[names[1]], ca[names[1]], atol=1e-5)
    assert not torch.allclose(cb[names[1]], ca[names[1]], atol=1e-3)
    # one head only at the last position: the other positions keep B's output
    fns = head_hooks([(layer, 0)], "patch", positions="last", last_index=torch.tensor([b.shape[1] - 1]),
                       source_z={layer: ca[names[0]]})
    _, one = run_with_hooks_cached(tiny, b, None, fns, names)
    assert torch.allclose(one[names[1]][:, :-1], cb[names[1]][:, :-1], atol=1e-6)


@pytest.mark.parametrize("readout_layer", [None, 0])
def test_fast_sweep_equals_naive(tiny, readout_layer):
    hf = tiny.bridge.original_model
    ids = _ids(tiny)
    ro = _readout(tiny, readout_layer)
    st, src = clean_state(hf, ids, ro), clean_state(hf, ids.flip(0), ro)
    mean_z = {layer: z.mean((0, 1)) for layer, z in enumerate(st.z)}
    for mode in ("zero", "mean", "patch"):
        for pos in ("last", "all"):
            fast = sweep_fast(hf, st, ro, mode, pos, mean_z=mean_z, source=src)
            naive = sweep_naive(tiny, ids, ro, mode, pos, mean_z=mean_z, source_z=src.z)
            for k in ("probs", "logprob"):
                assert fast[k].shape == (tiny.cfg.n_layers, tiny.cfg.n_heads, 2, naive[k].shape[-1])
                np.testing.assert_allclose(fast[k], naive[k], atol=1e-4, err_msg=f"{mode} {pos} {k}")
            changed = np.abs(fast["probs"] - st.metrics["probs"].numpy()[None, None]).max()
            assert changed > 1e-4
    # the clean state's readout is the readout of a plain full forward
    logits, cache = run_with_hooks_cached(tiny, ids, None, [], [f"blocks.{ro.layer}.hook_resid_post"])
    ref = readout_metrics(cache[f"blocks.{ro.layer}.hook_resid_post"][:, -1], logits[:, -1], ro)
    for k in ref:
        assert torch.allclose(ref[k], st.metrics[k], atol=1e-5)


def test_readout_probe_matches_sklearn():
    from lib.interventions.sweep import readout_from_probe
    from lib.geometry.probes import fit_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)) * rng.uniform(0.5, 3, 6) + rng.normal(size=6)
    y = np.array(["anger", "gratitude", "neutral", "apology"] * 20)
    x[y == "anger", 0] += 2
    probe = fit_probe(x, y)
    ro = readout_from_probe(probe, 0)
    got = readout_metrics(torch.tensor(x, dtype=torch.float32), None, ro)["probs"].numpy()
    np.testing.assert_allclose(got, probe.predict_proba(x), atol=1e-5)
    assert ro.classes == list(probe.classes_)


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
    _, cache = lm.bridge.run_with_cache(emo, names_filter=["blocks.0.attn.hook_pattern"])
    pat = cache["blocks.0.attn.hook_pattern"]
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


def test_set_metrics_equal_single_head_sweep_and_clean_run():
    lm = load_model("tiny-gpt2", device="cpu")
    ids = _ids(lm)
    ro = _readout(lm)
    st = clean_state(lm.bridge.original_model, ids, ro)
    clean = set_metrics(lm, ids, ro, [], None)
    np.testing.assert_allclose(clean["probs"], st.metrics["probs"].numpy(), atol=1e-5)
    one = set_metrics(lm, ids, ro, [(1, 3)], "zero")
    sweep = sweep_fast(lm.bridge.original_model, st, ro, "zero", "all")
    np.testing.assert_allclose(one["probs"], sweep["probs"][1, 3], atol=1e-5)


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
    z = clean_state(lm.bridge.original_model, ids.flip(0), _readout(lm)).z
    mean_z = {layer: zz.mean((0, 1)) for layer, zz in enumerate(z)}
    for mode, kw in (("mean", {"mean_z": mean_z}), ("patch", {"source_z": z})):
        batched = generate_sets(lm, ids, sets, n_tokens=5, seed=2, mode=mode, **kw)
        single = [generate(lm, ids, n_tokens=5, seed=2, heads=s, mode=mode, **kw) for s in sets]
        assert batched == single
        assert batched[0] != batched[2]


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


def test_random_sets_and_ranking():
    sets = random_head_sets(3, 4, 5, 10, seed=0)
    assert all(len(set(s)) == 5 and all(0 <= l < 3 and 0 <= h < 4 for l, h in s) for s in sets)
    assert sets == random_head_sets(3, 4, 5, 10, seed=0) and sets != random_head_sets(3, 4, 5, 10, seed=1)
    with pytest.raises(ValueError, match="k=13"):
        random_head_sets(3, 4, 13, 1, seed=0)
    assert rank_heads(np.array([[0.1, 0.5], [0.3, 0.5]]))[:3] == [(0, 1), (1, 1), (1, 0)]


def test_choose_prompts_pairs_equal_lengths():
    lm = load_model("tiny-llama", device="cpu")
    df = pd.DataFrame({"id": [f"r{i}" for i in range(8)],
                       "text": ["Thanks a lot", "Thanks for the help", "Thanks a lot", "The room is four",
                                "The meeting is on", "The room is here", "Thank you so much", "A b"],
                       "emotion": ["gratitude"] * 3 + ["neutral"] * 3 + ["gratitude", "neutral"],
                       "span_start": [0] * 8, "span_end": [6] * 8})
    pr = choose_prompts(lm.encoder, df, "gratitude", 2, seed=0)
    assert pr.emo_ids.shape == pr.neu_ids.shape == (2, 5) and pr.T == 5  # lengths 5 (2 + 2 rows), 6 and 4 (1 + 1)
    assert set(pr.rows["role"]) == {"emotion", "neutral"}
    assert pr.emo_span.shape == pr.emo_ids.shape and pr.emo_span.any()
    with pytest.raises(ValueError, match="emotion 'neutral' is not one of"):
        choose_prompts(lm.encoder, df, "neutral", 2)
    with pytest.raises(ValueError, match="no token length has 2 anger"):
        choose_prompts(lm.encoder, df.assign(emotion=df["emotion"].replace("gratitude", "anger")).iloc[:1], "anger", 2)


def test_hook_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown intervention mode 'drop'"):
        head_hooks([(0, 0)], "drop")
    with pytest.raises(ValueError, match="needs mean_z"):
        head_hooks([(0, 0)], "mean")
    with pytest.raises(ValueError, match="needs last_index"):
        head_hooks([(0, 0)], "zero", positions="last")
    (_, hook), = head_hooks([(0, 1)], "patch", source_z={0: torch.zeros(2, 5, 4, 3)})
    with pytest.raises(ValueError, match=r"does not fit target \(2, 6\)"):
        hook(torch.ones(2, 6, 4, 3), None)
    z = hook(torch.ones(2, 5, 4, 3), None)
    assert z[:, :, 1].abs().sum() == 0 and z[:, :, [0, 2, 3]].eq(1).all()


def test_head_set_effects_against_set_metrics():
    from lib.phases.heads import Prompts, head_set_effects
    from lib.text.generated import load_lexicon

    lm = load_model("tiny-gpt2", device="cpu")
    ids = _ids(lm)
    pr = Prompts("gratitude", ids.shape[1], pd.DataFrame(), ids, ids.flip(0), None, None)
    ro = _readout(lm)
    got = head_set_effects(lm, ro, pr, "1:0,0:2", load_lexicon(), n_gen_tokens=4).set_index("ablation")
    assert list(got.index) == ["none", "zero", "mean"] and (got["heads"] == "0:2,1:0").all()
    assert got.loc["none", "probe_prob_change"] == 0
    want = set_metrics(lm, ids, ro, [(1, 0), (0, 2)], "zero")["probs"][:, 0] - set_metrics(lm, ids, ro, [], None)["probs"][:, 0]
    assert np.isclose(got.loc["zero", "probe_prob_change"], want.mean(), atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        head_set_effects(lm, ro, pr, "5:0", load_lexicon())
