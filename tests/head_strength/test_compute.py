"""The pure functions: each head's block of W_O (against hand-written module paths and the module's own forward),
||y_h|| through the Gram matrix (against the explicit norm of y_h), masked sums and last positions (by hand)."""
from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from lib.head_strength.compute import (head_gram, head_out_weights, head_result_norms, head_results,
                                       last_token_index, masked_token_sums, module_head_weights)
from lib.models.tiny import TINY_NAMES, build_tiny_model
from tests.interventions.helpers import HAND_OUT_PROJ


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", TINY_NAMES)
def test_head_out_weights_are_the_hand_sliced_projection(name):
    hf = build_tiny_model(name)
    for layer in range(2):
        mod = HAND_OUT_PROJ[name](hf, layer)
        w = head_out_weights(hf, layer)
        assert w.shape == (4, 16, 64)
        for h in range(4):
            sl = slice(16 * h, 16 * (h + 1))
            want = mod.weight[sl, :] if name == "tiny-gpt2" else mod.weight[:, sl].T  # Conv1D keeps [in, out]
            assert torch.equal(w[h], want.detach())
        assert torch.equal(module_head_weights(mod, 4), w)


@pytest.mark.parametrize("module", [torch.nn.Linear(12, 7), Conv1D(7, 12)], ids=["linear", "conv1d"])
def test_heads_plus_bias_are_the_module_output(module):
    torch.manual_seed(0)
    z = torch.randn(2, 5, 3, 4)
    w = module_head_weights(module, 3)
    with torch.no_grad():
        want = module(z.reshape(2, 5, 12))
    got = head_results(z, w).sum(2) + module.bias
    assert _rel(got, want) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_norms_equal_explicit_norms(dtype):
    torch.manual_seed(1)
    z, w = torch.randn(3, 7, 5, 16, dtype=dtype), torch.randn(5, 16, 40, dtype=dtype) / 4
    explicit = torch.linalg.vector_norm(torch.matmul(z.unsqueeze(-2), w).squeeze(-2), dim=-1)  # [3, 7, 5]
    got = head_result_norms(z, w)
    assert got.dtype == dtype and got.shape == (3, 7, 5)
    assert _rel(got, explicit) < (1e-6 if dtype == torch.float32 else 1e-12)
    assert _rel(head_result_norms(z, None, gram=head_gram(w)), explicit) < 1e-6


def test_gram_is_w_w_transposed_in_float64_and_zero_z_gives_zero():
    w = torch.randn(2, 3, 9)
    g = head_gram(w, torch.float64)
    assert g.dtype == torch.float64
    assert torch.allclose(g[1], w[1].double() @ w[1].double().T, rtol=0, atol=1e-12)
    assert torch.equal(head_result_norms(torch.zeros(1, 2, 2, 3), w), torch.zeros(1, 2, 2))


def test_half_precision_is_computed_in_float32():
    z, w = torch.randn(1, 2, 2, 4).half(), torch.randn(2, 4, 8).half()
    got = head_result_norms(z, w)
    assert got.dtype == torch.float32
    assert _rel(got, head_results(z.float(), w.float()).norm(dim=-1)) < 1e-5


def test_masked_sums_and_last_positions_by_hand():
    values = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    want = torch.stack([values[0, :3].sum(0), values[1, 1:].sum(0)]).double()
    assert torch.equal(masked_token_sums(values, mask), want)
    assert last_token_index(mask).tolist() == [2, 3]
    assert last_token_index(torch.tensor([[1, 0, 0, 0]])).tolist() == [0]
