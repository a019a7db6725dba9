"""Pruning curves against a naive route on every tiny architecture: one plain Hugging Face forward per row and
head set, a hand-written pre-hook on the output projection replacing every removed head at the last position
with the hand-computed reference mean; no heads removed is the clean loss exactly."""
from __future__ import annotations

import numpy as np
import pytest

from lib.head_strength.importance import ImportanceInputError, ablation_importance
from lib.head_strength.pruning import n_removed, pruning_curves, random_orders, set_losses
from lib.interventions.effects import rank_heads
from lib.models.tiny import TINY_NAMES, build_tiny_model
from tests.head_strength.test_importance import (N_HEADS, N_LAYERS, PROMPTS, REFERENCE, TARGETS,
                                                 _hand_last_mean, _hand_logprobs)

HEADS = [(L, h) for L in range(N_LAYERS) for h in range(N_HEADS)]
FRACTIONS = [0.0, 0.125, 0.25, 0.5, 1.0]  # 0, 1, 2, 4, 8 of the 8 heads


@pytest.fixture(scope="module", params=TINY_NAMES)
def model(request):
    return request.param, build_tiny_model(request.param)


def _orders():
    score = np.random.default_rng(5).normal(size=(N_LAYERS, N_HEADS))
    return {"score": rank_heads(score), "random0": random_orders(HEADS, 1, seed=3)[0]}


def test_pruning_curve_equals_one_hand_forward_per_row_and_set(model):
    name, hf = model
    orders = _orders()
    cands = sorted(set(TARGETS) | {3, 4, 5})
    df = pruning_curves(hf, PROMPTS, TARGETS, orders, FRACTIONS, reference_prompts=REFERENCE, candidates=cands,
                        batch_rows=6)  # several chunks of sets and of prompts
    assert list(df.columns) == ["order", "fraction", "n_removed", "loss", "loss_se", "accuracy"]
    assert df["n_removed"].tolist() == [0, 1, 2, 4, 8] * 2
    mean = _hand_last_mean(hf, name, REFERENCE).float()
    for row in df.itertuples():
        removed = orders[row.order][:row.n_removed]
        losses, correct = [], []
        for p, t in zip(PROMPTS, TARGETS):
            lp = _hand_logprobs(hf, name, p, [(L, h, mean[L, h]) for L, h in removed])
            losses.append(-float(lp[t]))
            correct.append(max(cands, key=lambda c: (float(lp[c]), -c)) == t)  # ties to the lowest id
        assert row.loss == pytest.approx(np.mean(losses), abs=2e-5, rel=1e-5), (row.order, row.fraction)
        assert row.loss_se == pytest.approx(np.std(losses, ddof=1) / np.sqrt(len(losses)), abs=2e-5, rel=1e-4)
        assert row.accuracy == pytest.approx(np.mean(correct))
    assert np.ptp(df["loss"]) > 1e-2  # removing heads moves the loss, so a wrong set would show


def test_no_heads_removed_is_the_clean_loss_exactly_and_one_head_is_its_ablation(model):
    _, hf = model
    orders = _orders()
    res = set_losses(hf, PROMPTS, TARGETS, [[], orders["score"][:1], []], reference_prompts=REFERENCE)
    single = ablation_importance(hf, PROMPTS, TARGETS, reference_prompts=REFERENCE)
    np.testing.assert_array_equal(res["loss"][0], single["clean_loss"])
    np.testing.assert_array_equal(res["loss"][2], single["clean_loss"])
    L, h = orders["score"][0]
    np.testing.assert_allclose(res["loss"][1], single["clean_loss"] + single["delta"][L, h], atol=1e-6)
    df = pruning_curves(hf, PROMPTS, TARGETS, orders, [0.0], reference_prompts=REFERENCE)
    assert (df["loss"] == single["clean_loss"].mean()).all()


def test_random_orders_are_seeded_permutations():
    a, b = random_orders(HEADS, 20, seed=1), random_orders(HEADS, 20, seed=1)
    assert a == b and all(sorted(o) == HEADS for o in a)
    assert len({tuple(o) for o in a}) == 20 and a != random_orders(HEADS, 20, seed=2)
    firsts = [o[0] for o in random_orders(HEADS, 800, seed=0)]  # each head first about 1/8 of the time
    counts = np.array([firsts.count(x) for x in HEADS])
    assert counts.min() > 60 and counts.max() < 140
    assert [n_removed(f, 270) for f in (0.1, 0.2, 0.4)] == [27, 54, 108]


def test_pruning_inputs_are_checked():
    hf = build_tiny_model("tiny-gpt2")
    kw = dict(reference_prompts=REFERENCE)
    with pytest.raises(ImportanceInputError, match=r"order 'short' lists 2 heads but fraction 0.5 removes 4 of"):
        pruning_curves(hf, PROMPTS, TARGETS, {"short": HEADS[:2]}, [0.5], **kw)
    with pytest.raises(ImportanceInputError, match="order 'dup' lists a head twice"):
        pruning_curves(hf, PROMPTS, TARGETS, {"dup": [(0, 0), (0, 0)] + HEADS}, [0.5], **kw)
    with pytest.raises(ImportanceInputError, match=r"fractions=\[1.5\]"):
        pruning_curves(hf, PROMPTS, TARGETS, {"a": HEADS}, [1.5], **kw)
    with pytest.raises(ImportanceInputError, match=r"head 2:0 in head set 0 is out of range"):
        pruning_curves(hf, PROMPTS, TARGETS, {"a": [(2, 0)] + HEADS}, [0.5], **kw)
    with pytest.raises(ImportanceInputError, match=r"targets\[0\] = \d+ is not among the candidates"):
        pruning_curves(hf, PROMPTS, TARGETS, {"a": HEADS}, [0.5], candidates=[3, 4], **kw)
    with pytest.raises(ImportanceInputError, match="orders is empty"):
        pruning_curves(hf, PROMPTS, TARGETS, {}, [0.5], **kw)
    with pytest.raises(ImportanceInputError, match="mean ablation needs reference_prompts"):
        set_losses(hf, PROMPTS, TARGETS, [[]])
