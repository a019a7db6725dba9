"""Metrics of generated continuations, against hand computations, a plain per-pair loop over the tiny
Hugging Face models' logits, and torch.nn.functional.kl_div."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.steering.metrics import anti_steerable, continuation_nll, distinct_n, next_token_kl, perplexity_ratio
from tests.steering.shared import PROMPTS, tiny_hf

CONTINUATIONS = [" it was kind", " I did not mean it, truly I did not", "!"]


@pytest.fixture(scope="module")
def tokenizer(tokenizer):
    for name in ("tiny-llama", "tiny-gpt2"):  # built here, outside the timed test calls
        tiny_hf(name)(torch.tensor([[5, 6]]))
    return tokenizer


def test_distinct_n_by_hand():
    texts = ["the cat the cat", "a cat", ""]
    # unigrams: the cat the cat a cat -> 3 distinct of 6; bigrams: (the cat) (cat the) (the cat) (a cat) -> 3 of 4
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == pytest.approx(2 / 2)  # (the cat the) (cat the cat); none across texts
    assert distinct_n(texts, 5) == 0.0 and distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="n=0"):
        distinct_n(texts, 0)


def _loop_nll(model, tokenizer, prompts, continuations):
    out = []
    for p, c in zip(prompts, continuations):
        p_ids = tokenizer(p)["input_ids"]
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            logits = model(ids).logits[0].double()
        loss = F.cross_entropy(logits[len(p_ids) - 1:-1], torch.tensor(c_ids), reduction="mean")
        out.append(float(loss))
    return np.array(out)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_continuation_nll_matches_plain_loop(tokenizer, name, side):
    model = tiny_hf(name)
    tokenizer.padding_side = side
    want = _loop_nll(model, tokenizer, PROMPTS, CONTINUATIONS)
    got = continuation_nll(model, tokenizer, PROMPTS, CONTINUATIONS, batch_size=2)  # rows of unequal length
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got.shape == (3,) and np.all(got > 0)
    one = continuation_nll(model, tokenizer, PROMPTS, CONTINUATIONS, batch_size=1)
    np.testing.assert_allclose(got, one, rtol=1e-4, atol=1e-5)


def test_continuation_nll_depends_on_prompt(tokenizer):
    model = tiny_hf("tiny-llama")
    a = continuation_nll(model, tokenizer, ["Thank you"], [" so much"])
    b = continuation_nll(model, tokenizer, ["Why does this"], [" so much"])
    assert not np.isclose(a[0], b[0])
    with pytest.raises(ValueError, match="continuation ''"):
        continuation_nll(model, tokenizer, ["Hi"], [""])


def test_perplexity_ratio_by_hand():
    s, u = [1.0, 2.0, 4.0], [0.5, 1.5]
    assert perplexity_ratio(s, u) == pytest.approx(math.exp(7 / 3) / math.exp(1.0))
    assert perplexity_ratio(u, u) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="nll_steered"):
        perplexity_ratio([float("nan")], u)


def test_next_token_kl_against_kl_div():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    real = mask.bool()
    # kl_div(input=log q, target=log p, log_target=True) = sum p (log p - log q)
    per_pos = F.kl_div(F.log_softmax(q[real].double(), -1), F.log_softmax(p[real].double(), -1),
                       reduction="none", log_target=True).sum(-1)
    assert next_token_kl(p, q, mask) == pytest.approx(float(per_pos.mean()), rel=1e-10)
    assert next_token_kl(p, q, mask) != pytest.approx(next_token_kl(q, p, mask))  # not symmetric
    assert next_token_kl(p, p.clone(), mask) == pytest.approx(0.0, abs=1e-12)
    assert next_token_kl(p, p + 3.0, mask) == pytest.approx(0.0, abs=1e-12)  # softmax is shift invariant
    with pytest.raises(ValueError, match="mask shape"):
        next_token_kl(p, q, mask[:, :3])


def test_anti_steerable_on_planted_changes():
    before = np.zeros(10)
    after = np.array([-1.0, -0.5, -0.2, 0.1, 0.3, 0.5, 0.7, 1.0, 2.0, 0.0])  # 3 negative, one unchanged
    r = anti_steerable(before + 1.0, after + 1.0, n_boot=1000, seed=0)
    assert r["fraction_negative"] == pytest.approx(0.3) and r["n_negative"] == 3 and r["n"] == 10
    assert r["ci_low"] < 0.3 < r["ci_high"] and 0.0 <= r["ci_low"] and r["ci_high"] <= 1.0
    assert r["mean_change"] == pytest.approx(after.mean())
    assert r["quantiles"][0.5] == pytest.approx(np.median(after))
    assert anti_steerable(before, after, seed=0) == anti_steerable(before, after, seed=0)
    assert anti_steerable(before, np.ones(10))["fraction_negative"] == 0.0
    with pytest.raises(ValueError, match="pair one to one"):
        anti_steerable(before, after[:5])
