"""Head importance against independent computations on every tiny architecture: mean ablation against one
plain Hugging Face forward per row and head with a hand-written pre-hook on the output projection; Michel et
al.'s gradient score against autograd on each row alone and against central finite differences."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.head_strength.importance import (ImportanceInputError, ablation_importance, gradient_importance,
                                          layer_normalised, reference_mean_z)
from lib.models.tiny import TINY_NAMES, build_tiny_model
from tests.interventions.helpers import HAND_OUT_PROJ

N_LAYERS, N_HEADS, D_HEAD = 2, 4, 16  # every tiny model


def random_rows(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 512, (T,), generator=g).tolist() for T in lengths]


PROMPTS = random_rows([5, 10, 5, 3, 10, 12, 4], 0)  # mixed lengths; > 8 crosses the tiny sliding windows
TARGETS = torch.randint(2, 512, (7,), generator=torch.Generator().manual_seed(1)).tolist()
TARGETS[2] = TARGETS[0]  # a repeated target
REFERENCE = random_rows([6, 9, 3, 11, 7], 2)


@pytest.fixture(scope="module", params=TINY_NAMES)
def model(request):
    return request.param, build_tiny_model(request.param)


def _hand_logprobs(hf, name, ids, edits=()):
    """log p(next token) [vocab] at the last position of one unpadded row; ``edits``: (layer, head, value
    [d_head]) put into the head's slice of the output projection's input at the last position."""
    handles = []
    for layer in sorted({e[0] for e in edits}):
        def pre(module, args, layer=layer):
            x = args[0].clone()
            for lay, head, value in edits:
                if lay == layer:
                    x[:, -1, head * D_HEAD:(head + 1) * D_HEAD] = value
            return (x,)
        handles.append(HAND_OUT_PROJ[name](hf, layer).register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].double()
    finally:
        for h in handles:
            h.remove()
    return torch.log_softmax(logits, -1)


def _hand_loss(hf, name, ids, target, edits=()):
    """-log p(target) at the last position of one unpadded row (``_hand_logprobs``)."""
    return float(-_hand_logprobs(hf, name, ids, edits)[target])


def _hand_last_mean(hf, name, prompts):
    """[L, H, d_head]: each head's z at the last position, averaged over prompts run one by one."""
    total = torch.zeros(N_LAYERS, N_HEADS, D_HEAD, dtype=torch.float64)
    for ids in prompts:
        seen = {}
        handles = [HAND_OUT_PROJ[name](hf, L).register_forward_pre_hook(
            lambda m, a, L=L: seen.__setitem__(L, a[0][0, -1].reshape(N_HEADS, D_HEAD).double()))
            for L in range(N_LAYERS)]
        with torch.no_grad():
            hf(torch.tensor([ids]))
        for h in handles:
            h.remove()
        total += torch.stack([seen[L] for L in range(N_LAYERS)])
    return total / len(prompts)


def test_reference_mean_is_the_mean_at_last_positions(model):
    name, hf = model
    got = reference_mean_z(hf, REFERENCE, batch_size=2)
    want = _hand_last_mean(hf, name, REFERENCE)
    for L in range(N_LAYERS):
        torch.testing.assert_close(got[L].double(), want[L], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_rows", [256, 4])  # 4: one prompt per clean state
def test_ablation_equals_one_hand_forward_per_row_and_head(model, batch_rows):
    name, hf = model
    seen = []
    res = ablation_importance(hf, PROMPTS, TARGETS, reference_prompts=REFERENCE, batch_rows=batch_rows,
                              progress=seen.append)
    assert sum(seen) == len(PROMPTS)
    mean = _hand_last_mean(hf, name, REFERENCE).float()
    clean = np.array([_hand_loss(hf, name, p, t) for p, t in zip(PROMPTS, TARGETS)])
    np.testing.assert_allclose(res["clean_loss"], clean, atol=1e-5, rtol=1e-5)
    want = np.array([[[_hand_loss(hf, name, p, t, [(L, h, mean[L, h])]) - c for p, t, c in zip(PROMPTS, TARGETS, clean)]
                      for h in range(N_HEADS)] for L in range(N_LAYERS)])
    assert res["delta"].shape == (N_LAYERS, N_HEADS, len(PROMPTS))
    np.testing.assert_allclose(res["delta"], want, atol=2e-5, rtol=1e-4)
    assert np.abs(want).max() > 1e-3  # ablations change the loss, so a wrong head or position would show


def test_ablation_at_all_positions_uses_position_matched_means(model):
    name, hf = model
    prompts, ref = random_rows([6, 6, 6], 3), random_rows([6, 6], 4)
    targets = [7, 9, 7]
    res = ablation_importance(hf, prompts, targets, reference_prompts=ref, positions="all")
    seen = {}
    handles = [HAND_OUT_PROJ[name](hf, L).register_forward_pre_hook(lambda m, a, L=L: seen.__setitem__(L, a[0].mean(0)))
               for L in range(N_LAYERS)]
    with torch.no_grad():
        hf(torch.tensor(ref))
    for handle in handles:
        handle.remove()
    for L in range(N_LAYERS):  # the hand mean at each position [T, H * dh] is reference_mean_z's
        torch.testing.assert_close(reference_mean_z(hf, ref, positions="all")[L].flatten(-2), seen[L])
    for L, h in [(0, 1), (1, 3)]:
        def pre(module, args, L=L, h=h):
            x = args[0].clone()
            x[..., h * D_HEAD:(h + 1) * D_HEAD] = seen[L][:, h * D_HEAD:(h + 1) * D_HEAD]  # position p gets mean p
            return (x,)
        handle = HAND_OUT_PROJ[name](hf, L).register_forward_pre_hook(pre)
        try:
            with torch.no_grad():
                lp = torch.log_softmax(hf(torch.tensor(prompts)).logits[:, -1].double(), -1)
        finally:
            handle.remove()
        want = -lp[torch.arange(3), torch.tensor(targets)].numpy() - res["clean_loss"]
        np.testing.assert_allclose(res["delta"][L, h], want, atol=2e-5, rtol=1e-4)
    last = ablation_importance(hf, prompts, targets, reference_prompts=ref)
    assert np.abs(last["delta"] - res["delta"]).max() > 1e-4  # all positions is not the last one


def test_ablation_inputs_are_checked_and_dropout_is_off():
    hf = build_tiny_model("tiny-gpt2")  # GPT-2 has dropout
    base = ablation_importance(hf, PROMPTS, TARGETS, reference_prompts=REFERENCE)
    hf.train()
    again = ablation_importance(hf, PROMPTS, TARGETS, reference_prompts=REFERENCE)
    assert hf.training
    np.testing.assert_array_equal(again["delta"], base["delta"])
    hf.eval()
    with pytest.raises(ImportanceInputError, match="positions='all' needs prompts of one token length"):
        ablation_importance(hf, PROMPTS, TARGETS, reference_prompts=REFERENCE, positions="all")
    with pytest.raises(ImportanceInputError, match="reference prompts of one token length"):
        ablation_importance(hf, PROMPTS[:1], TARGETS[:1], reference_prompts=REFERENCE, positions="all")
    with pytest.raises(ImportanceInputError, match="7 prompts but 6 targets"):
        ablation_importance(hf, PROMPTS, TARGETS[:6], reference_prompts=REFERENCE)
    with pytest.raises(ImportanceInputError, match=r"targets\[1\] = 512 is outside the model's vocabulary 0..511"):
        ablation_importance(hf, PROMPTS[:2], [3, 512], reference_prompts=REFERENCE)
    with pytest.raises(ImportanceInputError, match=r"prompts\[1\] has 1 tokens; at least 2"):
        ablation_importance(hf, [[3, 4], [5]], [3, 4], reference_prompts=REFERENCE)
    with pytest.raises(ImportanceInputError, match="reference_prompts is empty"):
        ablation_importance(hf, PROMPTS, TARGETS, reference_prompts=[])
    with pytest.raises(ImportanceInputError, match="positions='first'; valid: 'last'"):
        ablation_importance(hf, PROMPTS, TARGETS, reference_prompts=REFERENCE, positions="first")


def _row_gate_grads(hf, name, ids, target):
    """[L, H] dL/dxi for one unpadded row: gates on the heads' slices through a hand-written pre-hook."""
    gates = [torch.ones(N_HEADS, dtype=hf.dtype, requires_grad=True) for _ in range(N_LAYERS)]
    handles = [HAND_OUT_PROJ[name](hf, L).register_forward_pre_hook(
        lambda m, a, L=L: ((a[0].unflatten(-1, (N_HEADS, D_HEAD)) * gates[L][:, None]).flatten(-2),))
        for L in range(N_LAYERS)]
    try:
        loss = -torch.log_softmax(hf(torch.tensor([ids])).logits[0, -1], -1)[target]
        grads = torch.autograd.grad(loss, gates)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(grads).double().numpy()


def test_gradient_score_equals_autograd_on_each_row_alone(model):
    name, hf = model
    res = gradient_importance(hf, PROMPTS, TARGETS, batch_size=3)  # padded batches of mixed lengths
    want = np.stack([np.abs(_row_gate_grads(hf, name, p, t)) for p, t in zip(PROMPTS, TARGETS)], -1)
    np.testing.assert_allclose(res["per_row"], want, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(res["importance"], want.mean(-1), atol=1e-5, rtol=1e-4)
    assert want.min() < 0.5 * want.max() and (want.std(-1) > 1e-4).all()  # heads and rows differ


def test_gradient_score_equals_finite_differences_in_float64(model):
    """Central differences of the loss in one head's gate, Richardson-extrapolated (error O(eps^4)). Some models
    keep float32 steps in float64 (RMSNorm and softmax upcasts cast to float32), so the loss carries ~1e-8
    noise and eps cannot be tiny; measured agreement is within 3.2e-5 relative on every architecture."""
    name, _ = model
    hf = build_tiny_model(name, dtype=torch.float64)
    res = gradient_importance(hf, PROMPTS[:2], TARGETS[:2])
    for row, (L, h) in [(0, (1, 2)), (1, (0, 1))]:
        def loss_at(g):
            def pre(module, args):
                x = args[0].clone()
                x[..., h * D_HEAD:(h + 1) * D_HEAD] *= g
                return (x,)
            handle = HAND_OUT_PROJ[name](hf, L).register_forward_pre_hook(pre)
            try:
                with torch.no_grad():
                    logits = hf(torch.tensor([PROMPTS[row]])).logits[0, -1]
            finally:
                handle.remove()
            return float(-torch.log_softmax(logits, -1)[TARGETS[row]])

        def central(eps):
            return (loss_at(1 + eps) - loss_at(1 - eps)) / (2 * eps)
        fd = (4 * central(0.02) - central(0.04)) / 3
        assert abs(fd) > 1e-4
        assert res["per_row"][L, h, row] == pytest.approx(abs(fd), rel=1e-4)


def test_gradient_score_runs_in_eval_mode_under_inference_mode_and_normalises_layers():
    hf = build_tiny_model("tiny-gpt2")  # GPT-2 has dropout: training mode would change the gradients
    base = gradient_importance(hf, PROMPTS, TARGETS)
    hf.train()
    res = gradient_importance(hf, PROMPTS, TARGETS, normalise_layers=True)
    assert hf.training  # left as it was
    np.testing.assert_allclose(res["per_row"], base["per_row"], rtol=1e-6)
    mean = base["per_row"].mean(-1)
    want = mean / np.sqrt((mean ** 2).sum(1, keepdims=True))
    np.testing.assert_allclose(res["importance"], want, rtol=1e-12)
    np.testing.assert_allclose(layer_normalised(np.zeros((2, 3))), np.zeros((2, 3)))
    hf.eval()
    with torch.inference_mode():  # a caller's inference mode does not stop the backward
        inside = gradient_importance(hf, PROMPTS, TARGETS)
    np.testing.assert_array_equal(inside["per_row"], base["per_row"])
    assert all(p.grad is None for p in hf.parameters())  # gradients for the gates only
