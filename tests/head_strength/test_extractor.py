"""ActivationExtractor on every tiny architecture, against independent computations: TransformerLens'
``attn.hook_result`` (``hook_z @ W_O`` where the bridge lacks it: GPT-Neo), a plain PyTorch pre-hook on the
Hugging Face output projection with the weight sliced by hand, the projection's own output, and the per-head
hook approach it replaces; batching, the custom hook point and the hooks' lifetime."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.head_strength import ActivationExtractor
from lib.head_strength.compute import head_out_weights, head_result_norms, head_results
from lib.head_strength.results import HeadStrengthError
from lib.interventions.head_outputs import head_outputs
from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
from tests.interventions.helpers import HAND_OUT_PROJ

MORE = ["Thanks a lot, that means the world to me.", "No.", "Please accept my apologies for the long delay; we "
        "will refund the fee today.", "Why?", "The library closes at six."]


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


def _tl_cache(tiny, enc):
    """TransformerLens per-head results [batch, pos, head, d_model] and z of every layer, from the bridge."""
    n = tiny.cfg.n_layers
    names = [f"blocks.{L}.attn.hook_z" for L in range(n)]
    if tiny.quirks["supports_attn_result"]:
        names += [f"blocks.{L}.attn.hook_result" for L in range(n)]
        tiny.bridge.set_use_attn_result(True)
    try:
        with torch.inference_mode():
            _, cache = tiny.bridge.run_with_cache(enc.input_ids, attention_mask=enc.attention_mask,
                                                  names_filter=names)
    finally:
        if tiny.quirks["supports_attn_result"]:
            tiny.bridge.set_use_attn_result(False)
    results, zs = [], []
    for L in range(n):
        z = cache[f"blocks.{L}.attn.hook_z"]
        zs.append(z)
        if tiny.quirks["supports_attn_result"]:
            results.append(cache[f"blocks.{L}.attn.hook_result"])
        else:  # GPT-Neo: the bridge cannot enable hook_result
            with torch.inference_mode():
                results.append(torch.einsum("bphd,hdm->bphm", z, tiny.bridge.blocks[L].attn.W_O.detach()))
    return results, zs


def _ours_z(hf, enc):
    """z of every layer as the extractor's mechanism (lib.interventions.head_outputs) sees it."""
    seen = {}
    with torch.inference_mode(), head_outputs(hf, range(2), lambda z, layer: seen.update({layer: z.clone()})):
        hf(enc.input_ids, attention_mask=enc.attention_mask)
    return seen


def test_head_results_equal_transformer_lens_and_plain_pytorch(tiny, texts):
    hf = build_tiny_model(tiny.name)
    enc = tiny.encode(texts + MORE)
    real = enc.attention_mask.bool()
    tl_results, _ = _tl_cache(tiny, enc)
    ours_z = _ours_z(hf, enc)
    captured, outputs = {}, {}
    handles = []
    for L in range(2):
        mod = HAND_OUT_PROJ[tiny.name](hf, L)
        handles.append(mod.register_forward_pre_hook(lambda m, a, L=L: captured.update({L: a[0].clone()})))
        handles.append(mod.register_forward_hook(lambda m, a, out, L=L: outputs.update({L: out.clone()})))
    with torch.inference_mode():
        hf(enc.input_ids, attention_mask=enc.attention_mask)
    for h in handles:
        h.remove()
    for L in range(2):
        ours = head_results(ours_z[L], head_out_weights(hf, L))  # [batch, pos, head, d_model]
        assert _rel(ours[real], tl_results[L][real]) < 1e-5
        mod, d_head = HAND_OUT_PROJ[tiny.name](hf, L), 16
        for h in range(4):  # plain PyTorch: slice head h of the projection's input and of its weight
            x = captured[L][..., h * d_head:(h + 1) * d_head]
            w = mod.weight[h * d_head:(h + 1) * d_head, :] if tiny.name == "tiny-gpt2" else \
                mod.weight[:, h * d_head:(h + 1) * d_head].T
            assert _rel(ours[:, :, h][real], torch.matmul(x, w.detach())[real]) < 1e-5
        bias = 0 if mod.bias is None else mod.bias.detach()
        assert _rel((ours.sum(2) + bias)[real], outputs[L][real]) < 1e-5  # before any post-attention norm
        norms = head_result_norms(ours_z[L], head_out_weights(hf, L))
        assert _rel(norms[real], tl_results[L].norm(dim=-1)[real]) < 1e-5


def test_gemma3_head_sum_is_what_the_post_attention_norm_gets():
    hf = build_tiny_model("tiny-gemma3")
    ids = torch.tensor([[5, 9, 31, 7, 2, 11]])
    got = {}
    norm = hf.model.layers[1].post_attention_layernorm
    handle = norm.register_forward_pre_hook(lambda m, a: got.update(norm_in=a[0].clone()))
    z = _ours_z(hf, type("E", (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}))
    handle.remove()
    assert _rel(head_results(z[1], head_out_weights(hf, 1)).sum(2), got["norm_in"]) < 1e-5


def _reference_per_sample(results, zs, mask):
    """Per-sample token means of ||y_h|| and ||z_h||, and ||y_h|| at the last real token, by a loop over rows."""
    n = mask.shape[0]
    out = {k: np.zeros((n, len(results), results[0].shape[2])) for k in ("mean", "last", "z_mean")}
    for i in range(n):
        k = int(mask[i].sum())
        for L, (y, z) in enumerate(zip(results, zs)):
            out["mean"][i, L] = y[i, :k].double().norm(dim=-1).mean(0).numpy()
            out["last"][i, L] = y[i, k - 1].double().norm(dim=-1).numpy()
            out["z_mean"][i, L] = z[i, :k].double().norm(dim=-1).mean(0).numpy()
    return out


def test_extractor_matches_transformer_lens_per_sample(tiny, texts):
    enc = tiny.encode(texts + MORE)
    results, zs = _tl_cache(tiny, enc)
    want = _reference_per_sample(results, zs, enc.attention_mask)
    with ActivationExtractor(build_tiny_model(tiny.name), tiny.name) as ex:
        ex.extract_activations([(enc.input_ids[:4], enc.attention_mask[:4]),
                                {"input_ids": enc.input_ids[4:], "attention_mask": enc.attention_mask[4:]}])
        got = ex.per_sample()
        for key in want:
            assert _rel(got[key], want[key]) < 1e-5, key
        assert got["n_tokens"].tolist() == enc.lengths.tolist()
        r_h = ex.compute_R_h()
        assert sorted(r_h) == [(L, h) for L in range(2) for h in range(4)]
        assert abs(r_h[(1, 2)] - want["mean"][:, 1, 2].mean()) < 1e-5 * r_h[(1, 2)]
        stats = {(s.layer_idx, s.head_idx): s for s in ex.get_all_stats()}
        s = stats[(0, 3)]
        assert (s.n_samples, s.n_tokens) == (len(texts + MORE), int(enc.lengths.sum()))
        assert abs(s.R_h_std - want["mean"][:, 0, 3].std(ddof=1)) < 1e-5 * s.R_h_std
        assert abs(s.R_h_last - want["last"][:, 0, 3].mean()) < 1e-5 * s.R_h_last
        assert abs(s.z_norm - want["z_mean"][:, 0, 3].mean()) < 1e-5 * s.z_norm


def _per_head_hook_reference(hf, name, enc, layers=(0, 1), n_heads=4, d_head=16):
    """The approach being replaced: one hook per head, each forming its own y_h = z_h W_O^h and its norm."""
    sums = {}
    handles = []
    mask = enc.attention_mask.double()
    for L in layers:
        mod = HAND_OUT_PROJ[name](hf, L)
        w = mod.weight.detach()
        for h in range(n_heads):
            w_h = w[h * d_head:(h + 1) * d_head] if name == "tiny-gpt2" else w[:, h * d_head:(h + 1) * d_head].T

            def hook(m, args, L=L, h=h, w_h=w_h):
                y = args[0][..., h * d_head:(h + 1) * d_head] @ w_h
                sums[(L, h)] = (y.norm(dim=-1).double() * mask).sum(1) / mask.sum(1)
            handles.append(mod.register_forward_pre_hook(hook))
    with torch.inference_mode():
        hf(enc.input_ids, attention_mask=enc.attention_mask)
    for handle in handles:
        handle.remove()
    return {k: float(v.mean()) for k, v in sums.items()}


def test_per_head_hooks_give_the_same_r_h_with_one_hook_per_layer(tiny, texts):
    hf = build_tiny_model(tiny.name)
    enc = tiny.encode(texts + MORE)
    want = _per_head_hook_reference(hf, tiny.name, enc)
    ex = ActivationExtractor(hf, tiny.name)
    ex.register_hooks()
    assert [len(HAND_OUT_PROJ[tiny.name](hf, L)._forward_pre_hooks) for L in range(2)] == [1, 1]
    ex.extract_activations([(enc.input_ids, enc.attention_mask)])
    got = ex.compute_R_h()
    assert max(abs(got[k] - want[k]) / want[k] for k in want) < 1e-5
    ex.remove_hooks()
    assert [len(HAND_OUT_PROJ[tiny.name](hf, L)._forward_pre_hooks) for L in range(2)] == [0, 0]


def test_batching_does_not_change_r_h(tiny, texts):
    hf = build_tiny_model(tiny.name)
    all_texts = texts + MORE
    runs = {}
    for size in (1, 3, len(all_texts)):
        with ActivationExtractor(hf, tiny.name) as ex:
            batches = [all_texts[i:i + size] for i in range(0, len(all_texts), size)]
            ex.extract_activations(batches, tokenizer=tiny.tokenizer)
            runs[size] = ex.per_sample()
    lengths = runs[1]["n_tokens"]
    assert lengths.min() < lengths.max()  # the larger batches are padded
    for size in (3, len(all_texts)):
        for key in ("mean", "last", "z_mean"):
            assert _rel(runs[size][key], runs[1][key]) < 1e-6, (size, key)
        assert _rel(runs[size]["mean"].mean(0), runs[1]["mean"].mean(0)) < 1e-6


def test_subsets_of_layers_and_heads_and_stopping_early_change_nothing(texts):
    hf, tok = build_tiny_model("tiny-pythia"), build_tiny_tokenizer()
    with ActivationExtractor(hf, "tiny-pythia", stop_early=False) as full:
        full.extract_activations([texts], tokenizer=tok)
    with ActivationExtractor(hf, "tiny-pythia") as part:
        part.register_hooks(layers=[0], heads=[3, 1])
        part.extract_activations([texts], tokenizer=tok)
    assert part.layers == [0] and part.heads == [1, 3]
    assert part.per_sample()["mean"].shape == (len(texts), 1, 2)
    for (layer, head), value in part.compute_R_h().items():
        assert abs(value - full.compute_R_h()[(layer, head)]) <= 1e-6 * value


def test_custom_hook_point_equals_the_table_route():
    hf, tok = build_tiny_model("tiny-gpt2"), build_tiny_tokenizer()
    texts = [dict(tok(["Thank you so much.", "I am furious that the train was cancelled."], padding=True,
                      return_tensors="pt"))]  # one padded batch, the same token ids for every route
    with ActivationExtractor(hf, "tiny-gpt2") as table:
        table.extract_activations(texts)
    with ActivationExtractor(hf, "tiny-gpt2", hook_point="transformer.h.{layer}.attn.c_proj") as custom:
        custom.extract_activations(texts)
    assert custom.identity()["hook_point"] == table.identity()["hook_point"] == "transformer.h.{layer}.attn.c_proj"
    for key in ("mean", "last", "z_mean"):
        assert _rel(custom.per_sample()[key], table.per_sample()[key]) < 1e-7

    class Wrapped(torch.nn.Module):  # an architecture outside the table, without a config
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    with pytest.raises(HeadStrengthError, match="does not know architecture"):
        ActivationExtractor(Wrapped(hf), "wrapped")
    ex = ActivationExtractor(Wrapped(hf), "wrapped", hook_point="inner.transformer.h.{layer}.attn.c_proj")
    with pytest.raises(HeadStrengthError, match=r"call set_model_structure\(num_layers, num_heads\)"):
        ex.register_hooks()
    with pytest.raises(HeadStrengthError, match="'inner.transformer.h.2.attn.c_proj'.* is not a module of wrapped"):
        ex.set_model_structure(3, 4)
    with pytest.raises(HeadStrengthError, match="not a multiple of 5 heads"):
        ex.set_model_structure(2, 5)
    assert (ex.n_layers, ex.n_heads) == (None, None)  # a refused structure is not kept
    ex.set_model_structure(2, 4)
    ex.extract_activations(texts)
    assert _rel(ex.per_sample()["mean"], table.per_sample()["mean"]) < 1e-7
    ex.remove_hooks()


def test_model_by_name_encodes_with_the_project_bos_policy(texts):
    from lib.models.encoding import load_encoder

    ex = ActivationExtractor("tiny-gpt2")
    ex.extract_activations([texts[:2], texts[2:]], max_batches=1)
    assert ex.per_sample()["n_tokens"].tolist() == load_encoder("tiny-gpt2").n_tokens(texts[:2])
    ident = ex.identity()
    assert (ident["name"], ident["kind"], ident["n_layers"], ident["n_heads"], ident["d_head"]) == \
        ("tiny-gpt2", "tiny", 2, 4, 16)
    assert ident["weight_processing"] == "raw" and len(ident["weights_sha256"]) == 64
    passed = ActivationExtractor(build_tiny_model("tiny-gpt2"), "tiny-gpt2")  # a registered name: its BOS policy
    passed.extract_activations([texts[:2]], tokenizer=build_tiny_tokenizer())
    assert passed.per_sample()["n_tokens"].tolist() == ex.per_sample()["n_tokens"].tolist()
    assert passed.compute_R_h() == ex.compute_R_h() and passed.identity()["weights_sha256"] == ident["weights_sha256"]


def test_forwards_outside_extraction_are_ignored_and_errors_name_the_counts():
    hf, tok = build_tiny_model("tiny-llama"), build_tiny_tokenizer()
    ex = ActivationExtractor(hf, "tiny-llama")
    with pytest.raises(HeadStrengthError, match=r"layer 2 out of range: tiny-llama has 2 layers \(valid: 0..1\)"):
        ex.register_hooks(layers=[0, 2])
    with pytest.raises(HeadStrengthError, match=r"head -1 out of range: tiny-llama has 4 heads \(valid: 0..3\)"):
        ex.register_hooks(heads=[-1])
    with pytest.raises(HeadStrengthError, match="name one more than once"):
        ex.register_hooks(heads=[1, 1])
    ex.register_hooks()
    with torch.inference_mode():
        hf(torch.tensor([[3, 4, 5]]))  # not from extract_activations: no sample added
    assert ex.per_sample()["n_tokens"].size == 0
    with pytest.raises(HeadStrengthError, match="need a tokenizer"):
        ex.extract_activations([["a text"]])
    with pytest.raises(HeadStrengthError, match="has no real token"):
        ex.extract_activations([{"input_ids": torch.tensor([[3, 4]]), "attention_mask": torch.tensor([[0, 0]])}])
    with pytest.raises(HeadStrengthError, match="run extract_activations on at least one batch"):
        ex.compute_R_h()
    with pytest.raises(HeadStrengthError, match="lacks '{layer}'"):
        ActivationExtractor(hf, "x", hook_point="model.layers.0.self_attn.o_proj")
    ex.remove_hooks()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_models_are_close_to_float32(dtype):
    texts = ["Thank you so much for staying late.", "Sorry.", "Why would you cancel?"]
    runs = {}
    for d in ("float32", dtype):
        ex = ActivationExtractor("tiny-llama", dtype=d, max_length=6)
        ex.extract_activations([texts])
        runs[d] = ex.per_sample()
        assert ex.identity()["dtype"] == d and runs[d]["mean"].dtype == np.float64
    assert runs[dtype]["n_tokens"].max() == 6  # cut to max_length
    assert 0 < _rel(runs[dtype]["mean"], runs["float32"]["mean"]) < 1e-2
