"""lib.synthetic.models: shapes of every encoder and decoder, the hand-written attention against torch's
scaled_dot_product_attention, seeded determinism, overfitting 8 fixed samples, LoRA through peft, the matched-rank
bottleneck."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lib.synthetic.losses import grid_accuracy, task_loss
from lib.synthetic.models import (Attention, Encoder, GridModel, GridOutput, GRUEncoder, ModelConfig,
                                  TransformerEncoder, add_lora, check_grids, one_hot_grids)

SMALL = dict(n_primitives=5, d_model=16, n_layers=2, n_heads=2, d_bottleneck=12)


def _grids(b=4, c=6, seed=0):
    return torch.randint(c, (b, 8, 8), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("encoder", ["transformer", "gru"])
@pytest.mark.parametrize("decoder", ["deconv", "mlp"])
@pytest.mark.parametrize("patch", [1, 2, 4])
def test_shapes_for_every_encoder_decoder_and_patch(encoder, decoder, patch):
    config = ModelConfig(encoder=encoder, decoder=decoder, patch=patch, **SMALL)
    model = GridModel(config)
    x = _grids(3)
    out = model(x)
    assert isinstance(out, GridOutput)
    assert tuple(out.logits.shape) == (3, 6, 8, 8) and tuple(out.h.shape) == (3, 12)
    assert tuple(out.primitive_logits.shape) == (3, 5) and out["h"] is out.h
    assert isinstance(model.encoder, Encoder)
    assert isinstance(model.encoder, TransformerEncoder if encoder == "transformer" else GRUEncoder)
    tokens = model.embed(one_hot_grids(x, 6))
    assert tuple(tokens.shape) == (3, (8 // patch) ** 2, 16) == (3, config.tokens, 16)
    layers = model.encoder.layers(tokens)
    assert len(layers) == 2 and torch.equal(layers[-1], model.encoder(tokens))
    pooled = [t.mean(dim=1) for t in layers]
    assert all(torch.equal(a, b) for a, b in zip(pooled, model.encode_layers(x)))
    # h is the Linear bottleneck of the last layer's tokens, flattened (the default pool); the head reads h
    torch.testing.assert_close(out.h, model.bottleneck(layers[-1].flatten(1)))
    mean = GridModel(ModelConfig(encoder=encoder, decoder=decoder, patch=patch, pool="mean", **SMALL))
    torch.testing.assert_close(mean(x).h, mean.bottleneck(mean.encoder(mean.embed(one_hot_grids(x, 6))).mean(dim=1)))
    torch.testing.assert_close(out.primitive_logits, out.h @ model.primitive_head.weight.T + model.primitive_head.bias)


def test_patch_embedding_is_a_strided_convolution_of_the_one_hot_grid_in_raster_order():
    model = GridModel(ModelConfig(**SMALL))
    x = _grids(2)
    oh = one_hot_grids(x, 6)
    assert torch.equal(oh.argmax(dim=1), x) and torch.equal(oh.sum(dim=1), torch.ones(2, 8, 8))
    conv = model.embed.conv
    # token (row r, column c) of the 4 x 4 patch grid = W . one-hot patch + b + position r * 4 + c
    r, c = 1, 3
    patch = oh[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2]
    by_hand = torch.einsum("ocij,bcij->bo", conv.weight, patch) + conv.bias + model.embed.positions[r * 4 + c]
    torch.testing.assert_close(model.embed(oh)[:, r * 4 + c], by_hand)


def test_hand_attention_equals_scaled_dot_product_attention():
    torch.manual_seed(0)  # only for this module's init; the comparison is on the same projections
    attn = Attention(d_model=16, n_heads=4)
    x = torch.randn(3, 10, 16, generator=torch.Generator().manual_seed(1))
    q, k, v = attn.heads(x)
    assert tuple(q.shape) == (3, 4, 10, 4)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=False)  # [B, H, T, d_head]
    expected = attn.o_proj(ref.transpose(1, 2).reshape(3, 10, 16))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)
    # a causal mask would change the answer: the comparison can tell
    causal = attn.o_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(3, 10, 16))
    assert not torch.allclose(attn(x), causal, atol=1e-4)


def test_same_seed_same_model_other_seed_other_model_global_rng_untouched():
    config = ModelConfig(encoder="gru", **SMALL)
    state = torch.get_rng_state()
    a, b, c = GridModel(config, seed=7), GridModel(config, seed=7), GridModel(config, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    x = _grids(5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(a(x).logits, b(x).logits)
    assert not torch.allclose(a(x).logits, c(x).logits)


@pytest.mark.parametrize("encoder,decoder", [("transformer", "deconv"), ("gru", "mlp")])
def test_a_tiny_model_overfits_eight_fixed_samples(encoder, decoder):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, (8, 8, 8), generator=g)
    y = x.flip(-1)  # a left-right flip: the decoder must rebuild the grid from h alone
    config = ModelConfig(n_primitives=3, encoder=encoder, decoder=decoder, d_model=32, n_layers=1, n_heads=2,
                         d_bottleneck=32, n_colours=4)
    model = GridModel(config, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(task_loss(model(x).logits, y))
    for _ in range(250):
        loss = task_loss(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model(x)
    assert float(task_loss(out.logits, y)) < 0.02 * first
    assert grid_accuracy(out.logits, y) == 1.0


def test_lora_trains_only_adapters_and_starts_from_the_base_output():
    base = GridModel(ModelConfig(**SMALL), seed=1)
    x = _grids(6)
    reference = base(x)
    state = torch.get_rng_state()
    model = add_lora(copy.deepcopy(base), rank=2, targets=["bottleneck", "decoder.expand",
                                                            "encoder.blocks.0.attn.q_proj"], seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable} == {
        "bottleneck", "decoder.expand", "encoder.blocks.0.attn.q_proj"}
    out = model(x)
    torch.testing.assert_close(out.logits, reference.logits)  # B = 0 at init: the base output
    torch.testing.assert_close(out.h, reference.h)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss = task_loss(model(x).logits, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert not torch.allclose(model(x).logits, reference.logits)  # the adapters did move the output
    targets = ["bottleneck", "decoder.expand", "encoder.blocks.0.attn.q_proj"]
    lora_a = lambda m: [p for n, p in m.named_parameters() if "lora_A" in n]  # noqa: E731
    again, other = (add_lora(copy.deepcopy(base), rank=2, targets=targets, seed=s) for s in (3, 4))
    assert all(torch.equal(a, b) for a, b in zip(lora_a(again), lora_a(add_lora(copy.deepcopy(base), 2, targets,
                                                                                  seed=3))))
    assert not any(torch.equal(a, b) for a, b in zip(lora_a(again), lora_a(other)))


def test_lora_names_bad_targets_and_the_valid_ones():
    with pytest.raises(ValueError, match="valid: .*'bottleneck'"):
        add_lora(GridModel(ModelConfig(**SMALL)), rank=2, targets=["decoder.up"])  # a ConvTranspose2d
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        add_lora(GridModel(ModelConfig(**SMALL)), rank=0)


def test_matched_rank_bottleneck_limits_h_to_a_fixed_r_dimensional_subspace():
    x = _grids(40, seed=2)
    free = GridModel(ModelConfig(**SMALL), seed=0)
    limited = GridModel(ModelConfig(bottleneck_rank=3, **SMALL), seed=0)
    assert torch.linalg.matrix_rank(free(x).h) == 12
    h = limited(x).h
    assert torch.linalg.matrix_rank(h) == 3
    basis = limited.rank_basis
    assert "rank_basis" in dict(limited.named_buffers()) and "rank_basis" not in dict(limited.named_parameters())
    torch.testing.assert_close(basis.T @ basis, torch.eye(3))
    torch.testing.assert_close(h, free(x).h @ basis @ basis.T)  # same weights, h projected on the fixed basis
    other = GridModel(ModelConfig(bottleneck_rank=3, seed=1, **SMALL), seed=0).rank_basis
    assert not torch.allclose(basis, other)


def test_config_and_inputs_name_what_is_wrong():
    with pytest.raises(ValueError, match="encoder must be one of"):
        ModelConfig(encoder="lstm", **SMALL)
    with pytest.raises(ValueError, match="decoder must be one of"):
        ModelConfig(decoder="conv", **SMALL)
    with pytest.raises(ValueError, match="patch must divide"):
        ModelConfig(patch=3, **SMALL)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        ModelConfig(n_primitives=2, d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="bottleneck_rank"):
        ModelConfig(bottleneck_rank=12, **SMALL)
    with pytest.raises(ValueError, match=r"shape \[B, 8, 8\]"):
        check_grids(torch.zeros(2, 8, 7, dtype=torch.long), 6)
    with pytest.raises(ValueError, match="torch.long"):
        check_grids(torch.zeros(2, 8, 8), 6)
    with pytest.raises(ValueError, match=r"colours must lie in 0..5; got values in 6..6"):
        GridModel(ModelConfig(**SMALL))(torch.full((1, 8, 8), 6))


@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_the_program_is_read_and_h_comes_from_the_grid_tokens(encoder):
    config = ModelConfig(encoder=encoder, **SMALL)
    model = GridModel(config)
    x = _grids(3)
    prog = torch.tensor([[0, 1, 5], [2, 5, 5], [4, 3, 1]])
    p_tok = model.program_embed(prog)
    g_tok = model.embed(one_hot_grids(x, 6))
    seq = model.encoder(torch.cat([g_tok, p_tok] if encoder == "transformer" else [p_tok, g_tok], dim=1))
    grid_out = seq[:, :config.tokens] if encoder == "transformer" else seq[:, -config.tokens:]
    torch.testing.assert_close(model(x, prog).h, model.bottleneck(grid_out.flatten(1)))
    other = torch.tensor([[1, 0, 5], [2, 5, 5], [4, 3, 1]])  # the first program reordered
    h1, h2 = model(x, prog).h, model(x, other).h
    assert not torch.allclose(h1[0], h2[0]) and torch.equal(h1[1:], h2[1:])  # order matters, rows independent
    assert torch.equal(model.program_embed.ids.weight[5], torch.zeros(16))  # the PAD row stays zero
    with pytest.raises(ValueError, match="program ids must lie in 0..5"):
        model(x, torch.full((3, 3), 6))
    with pytest.raises(ValueError, match="shape"):
        model(x, prog[:, :2])


@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_encode_with_layers_is_encode_and_encode_layers_in_one_pass(encoder):
    model = GridModel(ModelConfig(encoder=encoder, bottleneck_rank=3, **SMALL))
    x, prog = _grids(3), torch.tensor([[0, 1, 5], [2, 5, 5], [4, 3, 1]])
    h, layers = model.encode_with_layers(x, prog)
    assert torch.equal(h, model.encode(x, prog))
    assert all(torch.equal(a, b) for a, b in zip(layers, model.encode_layers(x, prog)))
