"""Capture hooks against plain PyTorch reductions, and the stop after the last block asked for."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.activations.capture import Capture, StopForward, stop_forward_hook
from lib.activations.codec import decode_f16
from lib.activations.names import act_name
from lib.activations.plan import ExtractConfig


def _batch(scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 2, 4])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    span = torch.zeros(3, 5, dtype=torch.bool)
    span[0, 1:3] = True
    span[2, 3] = True  # row 1 has no span
    acts = [torch.randn(3, 5, 2, 4, generator=g) * scale for _ in range(2)]  # two layers of [b, pos, heads, d]
    return lengths, mask, span, acts


def _run(config, scale=1.0, measure=False):
    lengths, mask, span, acts = _batch(scale)
    cap = Capture({"attn.hook_z": [0, 3]}, config)
    cap.begin(mask, lengths - 1, span, measure)
    for li, act in enumerate(acts):
        assert cap.hook(act, None, site="attn.hook_z", li=li) is None
    return cap, cap.finish()["attn.hook_z"], (lengths, mask, span, acts)


def test_reductions_and_tokens_equal_plain_torch():
    cap, got, (lengths, mask, span, acts) = _run(ExtractConfig(dtype="float32", token_sites=("*",)))
    assert got["exp"] is None and got["tokens"].shape == (3, 2, 5, 2, 4)
    for li, act in enumerate(acts):
        for i, n in enumerate(lengths.tolist()):
            red = {k: got["reductions"][k][i, li] for k in ("sentence_end", "mean", "span")}
            assert np.allclose(red["sentence_end"], act[i, n - 1], atol=1e-6)
            assert np.allclose(red["mean"], act[i, :n].mean(0), atol=1e-6)
            if span[i].any():
                assert np.allclose(red["span"], act[i, span[i]].mean(0), atol=1e-6)
            else:
                assert np.isnan(red["span"]).all()
            assert np.array_equal(got["tokens"][i, li, :n], act[i, :n].numpy())
            assert not got["tokens"][i, li, n:].view(np.uint32).any()  # padding: +0 bit patterns


def test_float16_rows_beyond_range_are_scaled_alone():
    config = ExtractConfig(token_sites=("*",))
    cap, got, (lengths, mask, span, acts) = _run(config, scale=1e5, measure=True)
    _, small, _ = _run(config, scale=1.0)
    assert got["exp"].dtype == np.int8 and (got["exp"] > 0).all() and (small["exp"] == 0).all()
    back = decode_f16(got["tokens"], torch.from_numpy(got["exp"]))  # [b, layers, pos, heads, d]
    exact = torch.stack(acts, 1) * mask[:, None, :, None, None]
    num, den = (back - exact).flatten(3).norm(dim=-1), exact.flatten(3).norm(dim=-1)  # [b, layers, pos]
    real = mask[:, None].expand_as(num)
    assert torch.isfinite(back).all() and (num[real] / den[real]).max() < 1e-3 and not back[~real].any()
    assert 0 < cap.worst_relative_error() < 1e-3


def test_stop_forward_hook_ends_the_forward_at_its_block(tiny):
    seen = []
    hooks = [(act_name("resid_post", layer), lambda act, hook, layer=layer: seen.append(layer)) for layer in range(2)]
    ids = tiny.encode(["Thank you."]).input_ids
    with pytest.raises(StopForward), torch.inference_mode(), tiny.bridge.hooks(
            fwd_hooks=[hooks[0], (act_name("resid_post", 0), stop_forward_hook), hooks[1]]):
        tiny.bridge(ids)
    assert seen == [0]  # the hook at block 1 never ran
