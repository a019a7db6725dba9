"""Head sets and TransformerLens hooks on attn.hook_z against hand-written Hugging Face hooks."""
from __future__ import annotations

import pytest
import torch

from lib.activations.names import act_name
from lib.interventions.heads import format_heads, head_hooks, parse_heads, run_with_hooks_cached
from lib.models.tiny import build_tiny_model
from tests.interventions.helpers import HAND_OUT_PROJ, one_length_ids as _ids


def test_parse_heads_and_errors():
    assert parse_heads("1:0,0:1, 1:0", n_layers=2, n_heads=2) == [(0, 1), (1, 0)]
    with pytest.raises(ValueError, match=r"2:0 is out of range .*layers 0..1, heads 0..3"):
        parse_heads("2:0", n_layers=2, n_heads=4, model_name="m")
    with pytest.raises(ValueError, match="is not 'L:H'"):
        parse_heads("1-2", n_layers=2, n_heads=4)
    with pytest.raises(ValueError, match="empty head set"):
        parse_heads(" , ", n_layers=2, n_heads=4)


def test_format_heads_round_trips_parse_heads():
    heads = [(0, 3), (1, 0), (1, 2)]
    assert format_heads(heads) == "0:3,1:0,1:2"
    assert parse_heads(format_heads(heads), n_layers=2, n_heads=4) == heads


@pytest.mark.parametrize("positions", ["all", "last"])
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_equals_hand_hook_on_hugging_face_model(tiny, mode, positions):
    """lib (TransformerLens hook_z) vs a plain HF model whose head slice is edited before the output projection:
    mean ablation puts the reference mean of position p at position p (all positions) or only the last
    position's mean at the last position."""
    hf = build_tiny_model(tiny.name)
    ids = _ids(tiny)
    T, d_head = ids.shape[1], tiny.cfg.d_head
    layer, head = 1, 2
    mean = torch.randn(T, d_head, generator=torch.Generator().manual_seed(1))  # a different mean per position
    mean_z = {layer: torch.stack([mean] * tiny.cfg.n_heads, 1)}  # [T, H, dh]

    def hand(module, args):
        z = args[0].clone()
        where = slice(None) if positions == "all" else slice(T - 1, T)
        z[:, where, head * d_head:(head + 1) * d_head] = 0.0 if mode == "zero" else mean[where]
        return (z,)

    handle = HAND_OUT_PROJ[tiny.name](hf, layer).register_forward_pre_hook(hand)
    with torch.no_grad():
        want = hf(ids).logits
    handle.remove()
    with torch.no_grad():
        clean = hf(ids).logits
    hooks = head_hooks([(layer, head)], mode, positions=positions, last_index=torch.full((ids.shape[0],), T - 1),
                       mean_z=mean_z)
    got, _ = run_with_hooks_cached(tiny, ids, None, hooks, [])
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (want[:, -1] - clean[:, -1]).abs().max() > 1e-3  # the intervention does something


def test_patching_every_head_of_a_layer_copies_the_attention_output(tiny):
    ids = _ids(tiny)
    a, b = ids[:1], ids[1:]
    layer = 1
    names = [act_name("z", layer), act_name("attn_out", layer)]
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
    (_, hook), = head_hooks([(0, 1)], "mean", mean_z={0: torch.zeros(4, 3)})
    with pytest.raises(ValueError, match=r"give per layer \[pos, head, d_head\]"):
        hook(torch.ones(2, 5, 4, 3), None)
    (_, hook), = head_hooks([(0, 1)], "mean", mean_z={0: torch.zeros(6, 4, 3)})
    with pytest.raises(ValueError, match="covers 6 positions, z has 5"):
        hook(torch.ones(2, 5, 4, 3), None)
