"""Residual-stream steering hooks, checked against independent computations: generation without the KV
cache (the whole sequence re-run each step), single-row runs, the unhooked model, the operators' formulas
on the Hugging Face hidden states, and the ``steering-vectors`` library."""
from __future__ import annotations


import pytest
import torch

from lib.models.archs import blocks_of
from lib.models.tiny import TINY_NAMES, build_tiny_model, build_tiny_tokenizer
from lib.steering.hooks import Steering, generate_steered, mean_residual_norm, steer
from tests.steering.shared import PROMPTS, tiny_hf

N_NEW = 6


def _left_padded(tokenizer, prompts=PROMPTS):
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    assert (enc.attention_mask == 0).any(), "the batch should contain left padding"
    return enc.input_ids, enc.attention_mask


def _unit(d: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _hooks(model) -> dict:
    """Every forward (pre-)hook on every module of ``model``."""
    return {name: (list(m._forward_hooks), list(m._forward_pre_hooks)) for name, m in model.named_modules()}


def _greedy(model, ids, mask, steerings, use_cache: bool) -> torch.Tensor:
    with torch.no_grad(), steer(model, steerings, mask):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False,
                             use_cache=use_cache, pad_token_id=1)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("positions", ["both", "generated"])
@pytest.mark.parametrize("name", TINY_NAMES)
def test_kv_cache_generation_equals_uncached(name, positions, tokenizer):
    model = tiny_hf(name)
    ids, mask = _left_padded(tokenizer)
    norm = mean_residual_norm(model, ids, mask, 0)
    steering = Steering(layer=0, vector=_unit(64), strength=6 * norm, operator="add",
                        positions=positions)
    cached = _greedy(model, ids, mask, [steering], use_cache=True)
    uncached = _greedy(model, ids, mask, [steering], use_cache=False)
    clean = _greedy(model, ids, mask, [], use_cache=True)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, clean), "the steering should change the greedy continuation"
    if positions == "generated":  # the first new token is read off the (unsteered) prompt
        assert torch.equal(cached[:, 0], clean[:, 0])
    texts = generate_steered(model, tokenizer, PROMPTS, [steering], max_new_tokens=N_NEW, use_cache=False)
    assert texts == tokenizer.batch_decode(cached, skip_special_tokens=True)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_strength_zero_is_bit_identical_and_hooks_are_removed(name, tokenizer):
    model = tiny_hf(name)
    ids, mask = _left_padded(tokenizer)
    v = _unit(64)
    zeros = [Steering(layer=0, vector=v, strength=0.0, operator="add", positions="both"),
             Steering(layer=1, vector=v, strength=0.0, operator="clamp", clamp_value=3.0, positions="prompt",
                      norm_preserving=True),
             Steering(layer=1, vector=v, strength=torch.zeros(3), operator="ablate", positions="both")]
    before = _hooks(model)
    with torch.no_grad():
        clean = model(ids, attention_mask=mask).logits
        with steer(model, zeros, mask):
            assert _hooks(model) != before  # the hooks are there while the context is open
            steered = model(ids, attention_mask=mask).logits
    assert torch.equal(steered, clean)
    assert _hooks(model) == before
    with pytest.raises(RuntimeError, match="inside"):
        with steer(model, zeros, mask):
            raise RuntimeError("inside")
    assert _hooks(model) == before


@pytest.mark.parametrize("per_row_vector", [False, True])
@pytest.mark.parametrize("name", TINY_NAMES)
def test_batched_grid_equals_one_setting_at_a_time(name, per_row_vector, tokenizer):
    model = tiny_hf(name)
    enc = tokenizer([PROMPTS[0]], return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    norm = mean_residual_norm(model, ids, mask, 1)
    strengths = [0.0, 2.0, 5.0]
    vectors = [_unit(64, seed) * norm for seed in range(3)] if per_row_vector else [_unit(64) * norm] * 3
    grid = Steering(layer=1, vector=torch.stack(vectors) if per_row_vector else vectors[0],
                    strength=torch.tensor(strengths), operator="add", positions="both")
    ids3, mask3 = ids.repeat(3, 1), mask.repeat(3, 1)
    with torch.no_grad():
        with steer(model, [grid], mask3):
            logits = model(ids3, attention_mask=mask3).logits
        clean = model(ids3, attention_mask=mask3).logits
    tokens = _greedy(model, ids3, mask3, [grid], use_cache=True)
    for row, (s, v) in enumerate(zip(strengths, vectors)):
        one = Steering(layer=1, vector=v, strength=s, operator="add", positions="both")
        with torch.no_grad(), steer(model, [one], mask):
            torch.testing.assert_close(logits[row:row + 1], model(ids, attention_mask=mask).logits,
                                       atol=1e-5, rtol=1e-5)
        assert torch.equal(tokens[row:row + 1], _greedy(model, ids, mask, [one], use_cache=True))
    assert torch.equal(logits[0], clean[0])  # the strength-0 row is the clean model, bit for bit
    assert not torch.allclose(logits[2], clean[2], atol=1e-3)


def _layer0_states(model, ids, mask, prompt_mask, steerings) -> torch.Tensor:
    """Block 0's output [batch, pos, d_model] as the Hugging Face model reports it (hidden_states[1])."""
    with torch.no_grad(), steer(model, steerings, prompt_mask):
        return model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]


@pytest.mark.parametrize("name", TINY_NAMES)
def test_operators_by_hand(name, tokenizer):
    """The edits as the model reports them in ``hidden_states`` (whose recording hooks the clean forward
    installs first, so the steering hook must run before them)."""
    model = tiny_hf(name)
    prompt_ids, prompt_mask = _left_padded(tokenizer)
    extra = torch.tensor([[5, 9]] * len(PROMPTS))  # two "generated" tokens after the prompt
    ids = torch.cat([prompt_ids, extra], 1)
    mask = torch.cat([prompt_mask, torch.ones_like(extra)], 1)
    steered = torch.cat([prompt_mask.bool(), torch.zeros_like(extra, dtype=torch.bool)], 1)  # "prompt"
    x = _layer0_states(model, ids, mask, prompt_mask, [])
    u = _unit(64, seed=3)
    v, s, c = 2.0 * u, 1.5, -0.7

    def run(**kw):
        return _layer0_states(model, ids, mask, prompt_mask, [Steering(layer=0, vector=v, positions="prompt", **kw)])

    add = run(strength=s, operator="add")
    expected = torch.where(steered[..., None], x + s * v, x)
    torch.testing.assert_close(add, expected, atol=1e-5, rtol=0)
    assert torch.equal(add[~steered], x[~steered])  # padding and generated positions untouched, bit for bit

    ablate = run(strength=1.0, operator="ablate")
    torch.testing.assert_close(ablate[steered] @ u, torch.zeros(int(steered.sum())), atol=1e-5, rtol=0)
    torch.testing.assert_close(ablate[steered], x[steered] - (x[steered] @ u)[:, None] * u, atol=1e-5, rtol=0)

    clamp = run(strength=1.0, operator="clamp", clamp_value=c)
    torch.testing.assert_close(clamp[steered] @ u, torch.full((int(steered.sum()),), c), atol=1e-5, rtol=0)
    assert torch.equal(clamp[~steered], x[~steered])

    half = run(strength=0.5, operator="clamp", clamp_value=c)  # strength interpolates toward the full edit
    torch.testing.assert_close(half[steered] @ u, (x[steered] @ u + c) / 2, atol=1e-5, rtol=0)
    half = run(strength=0.5, operator="ablate")
    torch.testing.assert_close(half[steered] @ u, (x[steered] @ u) / 2, atol=1e-5, rtol=0)

    kept = run(strength=s, operator="add", norm_preserving=True)
    torch.testing.assert_close(kept.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(kept[steered], x[steered] + s * v, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos), atol=1e-5, rtol=0)  # the direction of the add


@pytest.mark.parametrize("name", TINY_NAMES)
def test_add_matches_the_steering_vectors_library(name, tokenizer):
    """``steering-vectors`` 0.12.2 as an independent implementation of ``add``.

    Its semantics, read from its source: ``layer_type="decoder_block"`` guesses the blocks from module names
    (the most frequent, then shortest, ``prefix.{num}suffix`` pattern: ``transformer.h.{num}``,
    ``gpt_neox.layers.{num}``, ``model.layers.{num}`` for the five tiny architectures, the same modules as
    ``blocks_of``) and adds ``multiplier * v`` to the block's output in a forward hook. ``min_token_index=k``
    selects positions ``k:`` of *the tensor the forward sees*: on a left-padded batch it includes padding, and
    under the KV cache a cached step's single token has index 0, so ``min_token_index=T`` (T = the prompt
    length) marks "generated" tokens only on uncached forwards; our positions are absolute (past + index)
    and never include padding. So: ours "both" equals theirs with ``min_token_index=0`` at every real token
    and with ``token_indices=prompt_mask`` at every position; ours "generated" equals theirs with
    ``min_token_index=T`` on one forward over prompt + continuation, and our cached greedy generation
    under "generated" equals theirs with ``min_token_index=T`` and the cache off (with the cache on, theirs
    would steer no generated token at all).
    """
    sv = pytest.importorskip("steering_vectors")
    from steering_vectors.layer_matching import collect_matching_layers, guess_decoder_block_matcher

    model = tiny_hf(name)
    layer = 1
    theirs_blocks = collect_matching_layers(model, guess_decoder_block_matcher(model))
    assert model.get_submodule(theirs_blocks[layer]) is blocks_of(model)[layer]
    prompt_ids, prompt_mask = _left_padded(tokenizer)
    T = prompt_ids.shape[1]
    s = 4.0 * mean_residual_norm(model, prompt_ids, prompt_mask, layer)
    v = _unit(64, seed=7)
    vector = sv.SteeringVector(layer_activations={layer: v}, layer_type="decoder_block")

    def ours(ids, mask, positions):
        with torch.no_grad(), steer(model, [Steering(layer=layer, vector=v, strength=s, operator="add",
                                                     positions=positions)], prompt_mask):
            return model(ids, attention_mask=mask).logits

    def theirs(ids, mask, **where):
        with torch.no_grad(), vector.apply(model, multiplier=s, **where):
            return model(ids, attention_mask=mask).logits

    with torch.no_grad():
        clean = model(prompt_ids, attention_mask=prompt_mask).logits
    both = ours(prompt_ids, prompt_mask, "both")
    real = prompt_mask.bool()
    assert not torch.allclose(both[real], clean[real], atol=1e-3)
    torch.testing.assert_close(both[real], theirs(prompt_ids, prompt_mask, min_token_index=0)[real],
                               atol=1e-5, rtol=1e-5)
    masked = theirs(prompt_ids, prompt_mask, min_token_index=None, token_indices=prompt_mask)
    torch.testing.assert_close(both, masked, atol=1e-5, rtol=1e-5)

    extra = torch.tensor([[5, 9, 11]] * len(PROMPTS))
    ids, mask = torch.cat([prompt_ids, extra], 1), torch.cat([prompt_mask, torch.ones_like(extra)], 1)
    generated = ours(ids, mask, "generated")
    torch.testing.assert_close(generated, theirs(ids, mask, min_token_index=T), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        clean_ext = model(ids, attention_mask=mask).logits
    assert torch.equal(generated[:, :T], clean_ext[:, :T])  # the prompt's logits are the clean model's
    assert not torch.allclose(generated[:, T:], clean_ext[:, T:], atol=1e-3)

    ours_cached = _greedy(model, prompt_ids, prompt_mask, [Steering(layer=layer, vector=v, strength=s, operator="add",
                                                                    positions="generated")], use_cache=True)
    with torch.no_grad(), vector.apply(model, multiplier=s, min_token_index=T):  # right only without the cache
        theirs_uncached = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=N_NEW,
                                         do_sample=False, use_cache=False, pad_token_id=1)[:, T:]
    assert torch.equal(ours_cached, theirs_uncached)
    assert not torch.equal(ours_cached, _greedy(model, prompt_ids, prompt_mask, [], use_cache=True))


@pytest.mark.parametrize("field, bad", [("operator", "scale"), ("positions", "last"), ("layer", -1),
                                        ("strength", float("nan")), ("vector", torch.zeros(64)),
                                        ("strength", torch.ones(2, 3))])
def test_invalid_settings_name_the_field(field, bad):
    settings = dict(layer=0, vector=torch.ones(64), strength=1.0, operator="ablate", positions="both") | {field: bad}
    with pytest.raises(ValueError, match=f"Steering.{field}"):
        Steering(**settings)


def test_wrong_batch_and_layer_are_refused(tokenizer):
    model = tiny_hf("tiny-llama")
    ids, mask = _left_padded(tokenizer)
    grid = Steering(layer=0, vector=torch.ones(64), strength=torch.ones(2), operator="add", positions="both")
    with pytest.raises(ValueError, match="2 rows but prompt_mask has 3"):
        with steer(model, [grid], mask):
            pass
    far = Steering(layer=2, vector=torch.ones(64), strength=1.0, operator="add", positions="both")
    with pytest.raises(ValueError, match=r"out of range .* 2 layers"):
        with steer(model, [far], mask):
            pass
    one = Steering(layer=0, vector=torch.ones(64), strength=1.0, operator="add", positions="both")
    with pytest.raises(ValueError, match="batch 1 under a prompt_mask of batch 3"), torch.no_grad():
        with steer(model, [one], mask):
            model(ids[:1])


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_mean_residual_norm_of_a_padded_batch_is_that_of_its_rows_alone(name):
    """Left padding must not shift absolute positions (GPT-2's learned position embeddings would read others)."""
    model, tok = build_tiny_model(name), build_tiny_tokenizer()
    texts = ["Thank you so much for your help with the move.", "Sorry."]
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True)
    both = mean_residual_norm(model, batch["input_ids"], batch["attention_mask"], 1)
    norms, counts = [], []
    for t in texts:
        one = tok([t], return_tensors="pt")
        norms.append(mean_residual_norm(model, one["input_ids"], one["attention_mask"], 1))
        counts.append(one["input_ids"].shape[1])
    expected = sum(n * c for n, c in zip(norms, counts)) / sum(counts)
    assert both == pytest.approx(expected, rel=1e-5)
