"""Per-architecture module paths against the modules written by hand for each tiny model."""
from __future__ import annotations

import pytest
import torch

from lib.models.archs import arch_of, block_output, blocks_of, head_out_weight, model_dims, out_proj_of
from lib.models.tiny import build_tiny_model
from tests.interventions.helpers import HAND_OUT_PROJ


def test_paths_reach_the_hand_written_modules(tiny):
    hf = build_tiny_model(tiny.name)
    assert model_dims(hf) == (tiny.cfg.n_layers, tiny.cfg.n_heads, tiny.cfg.d_head)
    assert len(blocks_of(hf)) == tiny.cfg.n_layers
    for layer in range(tiny.cfg.n_layers):
        assert out_proj_of(hf, layer) is HAND_OUT_PROJ[tiny.name](hf, layer)
    with pytest.raises(ValueError, match=f"layer {tiny.cfg.n_layers} out of range"):
        out_proj_of(hf, tiny.cfg.n_layers)


def test_head_out_weight_is_the_heads_share_of_the_projection(tiny):
    """Summing z_h @ W_O^h over heads (plus the bias) gives the projection of the concatenated z."""
    hf = build_tiny_model(tiny.name)
    n_heads, dh = tiny.cfg.n_heads, tiny.cfg.d_head
    z = torch.randn(3, n_heads, dh, generator=torch.Generator().manual_seed(0))
    proj = HAND_OUT_PROJ[tiny.name](hf, 1)
    with torch.no_grad():
        want = proj(z.reshape(3, n_heads * dh))
        bias = proj.bias if getattr(proj, "bias", None) is not None else torch.zeros(want.shape[-1])
        got = sum(z[:, h] @ head_out_weight(hf, 1, h, dh) for h in range(n_heads)) + bias
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_unknown_architecture_names_the_supported_ones():
    class Odd(torch.nn.Module):
        config = type("Config", (), {"architectures": ["MambaForCausalLM"]})()

    with pytest.raises(ValueError, match=r"'MambaForCausalLM'; supported: \['GPT2LMHeadModel'"):
        arch_of(Odd())


def test_block_output_unwraps_tuples():
    x = torch.zeros(1)
    assert block_output((x, None)) is x and block_output(x) is x
