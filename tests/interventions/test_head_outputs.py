"""The one pre-hook on the attention output projection: what it reads is TransformerLens' attn.hook_z,
what it writes equals a hand-written hook on the plain Hugging Face model, and it leaves no hook behind."""
from __future__ import annotations

import pytest
import torch

from lib.activations.names import act_name
from lib.interventions.head_outputs import head_outputs
from lib.interventions.heads import run_with_hooks_cached
from lib.models.tiny import build_tiny_model
from tests.interventions.helpers import HAND_OUT_PROJ, one_length_ids


def test_reads_transformer_lens_hook_z(tiny):
    hf = tiny.bridge.original_model
    ids = one_length_ids(tiny)
    seen = {}

    def keep(z, layer):  # read only
        seen[layer] = z.clone()

    with torch.no_grad(), head_outputs(hf, range(tiny.cfg.n_layers), keep):
        hf(ids)
    _, cache = run_with_hooks_cached(tiny, ids, None, [], [act_name("z", L) for L in range(tiny.cfg.n_layers)])
    assert sorted(seen) == list(range(tiny.cfg.n_layers))
    for layer, z in seen.items():
        assert z.shape == (*ids.shape, tiny.cfg.n_heads, tiny.cfg.d_head)
        torch.testing.assert_close(z, cache[act_name("z", layer)], atol=1e-5, rtol=1e-5)


def test_edit_equals_a_hand_hook_and_is_removed(tiny):
    hf = build_tiny_model(tiny.name)
    ids = one_length_ids(tiny)
    dh, layer, head = tiny.cfg.d_head, 1, 3

    def hand(module, args):  # head 3's slice of the flat input, doubled
        z = args[0].clone()
        z[..., head * dh:(head + 1) * dh] *= 2
        return (z,)

    def double(z, layer):
        z = z.clone()
        z[:, :, head] *= 2
        return z

    with torch.no_grad():
        clean = hf(ids).logits
        handle = HAND_OUT_PROJ[tiny.name](hf, layer).register_forward_pre_hook(hand)
        want = hf(ids).logits
        handle.remove()
        with head_outputs(hf, [layer], double):
            got = hf(ids).logits
        after = hf(ids).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert (got - clean).abs().max() > 1e-4
    torch.testing.assert_close(after, clean)  # the hook is gone
    assert not HAND_OUT_PROJ[tiny.name](hf, layer)._forward_pre_hooks


def test_bad_shapes_and_errors_leave_no_hook():
    hf = build_tiny_model("tiny-gpt2")
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"returned shape \(1, 3, 64\); expected \(1, 3, 4, 16\)"):
        with head_outputs(hf, [0], lambda z, layer: z.reshape(1, 3, 64)):
            hf(ids)
    assert not hf.transformer.h[0].attn.c_proj._forward_pre_hooks
    with pytest.raises(TypeError, match="returned tuple; return None"):
        with head_outputs(hf, [1], lambda z, layer: (z,)):
            hf(ids)
    assert not hf.transformer.h[1].attn.c_proj._forward_pre_hooks
    with pytest.raises(ValueError, match="layer 2 out of range for a model with 2 layers"):
        with head_outputs(hf, [0, 2], lambda z, layer: None):
            pass
    assert not hf.transformer.h[0].attn.c_proj._forward_pre_hooks
