"""The batched steering grid, checked against one ``generate_steered`` call per setting (greedy), the unhooked
model, single-row runs of the Gumbel-max sampler, and a hand-built Gumbel-max draw."""
from __future__ import annotations


import pytest
import torch

from lib.steering.grid import GumbelNoise, Setting, generate_grid
from lib.steering.hooks import generate_steered, mean_residual_norm
from tests.steering.shared import PROMPTS, tiny_hf

N_NEW = 6
ARCHS = ["tiny-llama", "tiny-gpt2", "tiny-pythia"]


def _unit(seed: int, d: int = 64) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _scale(model, tokenizer, layer: int) -> float:
    tokenizer.padding_side = "left"
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert (enc.attention_mask == 0).any(), "the prompts should be of different lengths"
    return mean_residual_norm(model, enc.input_ids, enc.attention_mask, layer)


def _settings(model, tokenizer, operator="add", positions="both") -> list[Setting]:
    out = []
    for layer in (0, 1):
        norm = _scale(model, tokenizer, layer)
        for i, k in enumerate((-4.0, 0.0, 3.0, 8.0)):
            strength = k * norm if operator == "add" else k / 4
            out.append(Setting(name=f"L{layer}-{k}", layer=layer, vector=_unit(10 * layer + i), strength=strength,
                               operator=operator, positions=positions))
    return out


def _hooks(model) -> dict:
    return {name: (list(m._forward_hooks), list(m._forward_pre_hooks)) for name, m in model.named_modules()}


@pytest.mark.parametrize("name", ARCHS)
def test_grid_equals_one_generate_steered_per_setting(name, tokenizer):
    """Mixed layers and strengths in batches of 5 rows (chunks straddle settings and layers) against separate
    runs, token for token."""
    model = tiny_hf(name)
    settings = _settings(model, tokenizer)
    df = generate_grid(model, tokenizer, PROMPTS, settings, max_new_tokens=N_NEW, batch_rows=5)
    assert len(df) == len(settings) * len(PROMPTS)
    texts = set()
    for s in settings:
        ours = df[df.setting == s.name].sort_values("prompt_index")
        assert ours.prompt.tolist() == PROMPTS
        assert ours.text.tolist() == generate_steered(model, tokenizer, PROMPTS, [s.steering()],
                                                      max_new_tokens=N_NEW)
        texts.add(tuple(ours.text))
        for p, toks in zip(ours.prompt_index, ours.token_ids):
            assert tokenizer.decode(toks, skip_special_tokens=True) == ours.text.iloc[p]
    assert len(texts) > 2, "the settings should steer differently (else the comparison says little)"


@pytest.mark.parametrize("operator", ["ablate", "clamp"])
def test_grid_other_operators_and_generated_positions(operator, tokenizer):
    model = tiny_hf("tiny-llama")
    settings = _settings(model, tokenizer, operator=operator, positions="generated")
    df = generate_grid(model, tokenizer, PROMPTS, settings, max_new_tokens=N_NEW, batch_rows=64)
    for s in settings:
        ours = df[df.setting == s.name].sort_values("prompt_index").text.tolist()
        assert ours == generate_steered(model, tokenizer, PROMPTS, [s.steering()], max_new_tokens=N_NEW)


def test_strength_zero_is_the_unsteered_generation(tokenizer):
    model = tiny_hf("tiny-gpt2")
    norm = _scale(model, tokenizer, 1)
    settings = [Setting(name="zero", layer=0, vector=_unit(1), strength=0.0),
                Setting(name="big", layer=1, vector=_unit(2), strength=10 * norm)]
    df = generate_grid(model, tokenizer, PROMPTS, settings, max_new_tokens=N_NEW)
    tokenizer.padding_side = "left"
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        clean = model.generate(**enc, max_new_tokens=N_NEW, do_sample=False, pad_token_id=1)
    clean = clean[:, enc.input_ids.shape[1]:].tolist()
    zero = df[df.setting == "zero"].token_ids.tolist()
    assert [c[:len(z)] for c, z in zip(clean, zero)] == zero
    assert all(len(z) == N_NEW or z[-1] == 0 for z in zero)  # full length or cut at end of sequence
    assert df[df.setting == "big"].token_ids.tolist() != zero


def test_sampling_does_not_depend_on_batch_neighbours(tokenizer):
    model = tiny_hf("tiny-llama")
    settings = _settings(model, tokenizer)[:4]
    big = generate_grid(model, tokenizer, PROMPTS, settings, max_new_tokens=N_NEW, do_sample=True, seed=3,
                        batch_rows=64)
    for s in settings[1:3]:
        alone = generate_grid(model, tokenizer, PROMPTS, [s], max_new_tokens=N_NEW, do_sample=True, seed=3,
                              batch_rows=1)
        assert big[big.setting == s.name].token_ids.tolist() == alone.token_ids.tolist()
    greedy = generate_grid(model, tokenizer, PROMPTS, settings, max_new_tokens=N_NEW)
    other_seed = generate_grid(model, tokenizer, PROMPTS, settings, max_new_tokens=N_NEW, do_sample=True, seed=4)
    assert big.token_ids.tolist() != greedy.token_ids.tolist()
    assert big.token_ids.tolist() != other_seed.token_ids.tolist()


def test_gumbel_noise_is_gumbel_max_sampling():
    """argmax(logits + g) follows softmax(logits): frequencies of 4000 draws against the probabilities."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    noise = GumbelNoise([11])
    draws = torch.stack([noise(None, logits).argmax(-1)[0] for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    assert torch.allclose(freq, logits[0].double().softmax(-1), atol=0.03)


def test_no_hook_remains_after_an_error(tokenizer, monkeypatch):
    model = tiny_hf("tiny-llama")
    before = _hooks(model)
    settings = _settings(model, tokenizer)[:2]
    calls = []

    def broken(*args, **kwargs):
        calls.append(_hooks(model) != before)  # the steering hooks are in place while generating
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "generate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        generate_grid(model, tokenizer, PROMPTS, settings, max_new_tokens=N_NEW)
    assert calls == [True]
    assert _hooks(model) == before


def test_bad_inputs_are_named(tokenizer):
    model = tiny_hf("tiny-llama")
    s = Setting(name="a", layer=0, vector=_unit(0), strength=1.0)
    with pytest.raises(ValueError, match="repeated"):
        generate_grid(model, tokenizer, PROMPTS, [s, s], max_new_tokens=2)
    with pytest.raises(ValueError, match="batch_rows"):
        generate_grid(model, tokenizer, PROMPTS, [s], max_new_tokens=2, batch_rows=0)
    with pytest.raises(ValueError, match="operator"):
        Setting(name="b", layer=0, vector=_unit(0), strength=1.0, operator="scale")
    with pytest.raises(ValueError, match=r"vector must be a tensor \[d_model\]"):
        Setting(name="c", layer=0, vector=torch.ones(2, 64), strength=1.0)
