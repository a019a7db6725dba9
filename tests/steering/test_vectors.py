"""Steering vectors, checked against independent computations: the Hugging Face model's ``output_hidden_states``
run on each text alone, the ``steering-vectors`` library, hand means over planted pairs, hashlib, safetensors and
``gguf.GGUFReader``."""
from __future__ import annotations

import hashlib
import json

import gguf
import pytest
import torch
from safetensors.torch import load_file, save_file

from lib.models.archs import arch_of, get_path
from lib.models.tiny import TINY_NAMES, build_tiny_tokenizer
from lib.steering.vector_files import VectorSet, export_gguf_control_vector
from lib.steering.vectors import (contrast_vector, curve_from_differences, learning_curve, pair_differences,
                                  random_like, residual_reads, shuffled_label_mean, shuffled_label_vector, swap_signs)
from tests.steering.shared import tiny_hf

TEXTS = ["Thank you so much for your help with the move, I really appreciate it.", "Sorry.",
         "Why does this keep happening?", "The library closes at six on weekdays"]
PAIRS = [("Thank you so much for your help.", "I am furious that the train was cancelled."),
         ("Thanks a lot, that means the world to me.", "This is ridiculous!"),
         ("We are grateful for your patience.", "Why does this keep happening?"),
         ("You saved my whole week.", "Fix it now or I will cancel my account."),
         ("Thank you!", "Nobody has answered."),
         ("I really appreciate it.", "The train was cancelled again without any notice!")]


@pytest.fixture
def tokenizer():
    return build_tiny_tokenizer()


@torch.no_grad()
def _alone(model, tokenizer, text: str) -> tuple:
    """Each hidden state [pos, d_model] of ``text`` run alone (no padding): index L + 1 is block L's output."""
    enc = tokenizer([text], return_tensors="pt")
    return tuple(h[0] for h in model(**enc, output_hidden_states=True).hidden_states)


def _hand_read(model, tokenizer, text: str, read: str) -> torch.Tensor:
    """Block 0's output for ``text`` alone: the last token's or the mean over tokens."""
    h = _alone(model, tokenizer, text)[1]
    return h[-1] if read == "last" else h.mean(0)


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("read", ["last", "mean"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", TINY_NAMES)
def test_residual_reads_equal_hidden_states_of_each_text_alone(name, side, read, tokenizer):
    model = tiny_hf(name)
    tokenizer.padding_side = side
    assert (tokenizer(TEXTS[:3], padding=True).attention_mask[1].count(0)) > 0, "the batch should be padded"
    got = residual_reads(model, tokenizer, TEXTS, 0, read=read, batch_size=3)
    want = torch.stack([_hand_read(model, tokenizer, t, read) for t in TEXTS])
    assert got.shape == (len(TEXTS), 64) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma3"])
def test_residual_reads_of_the_last_block_are_hidden_states_before_the_final_norm(name, tokenizer):
    """HF's last hidden state is the final norm of the last block's output; our read is that output itself."""
    model = tiny_hf(name)
    tokenizer.padding_side = "left"
    got = residual_reads(model, tokenizer, TEXTS, 1, batch_size=4)
    final_norm = get_path(model, arch_of(model).final_norm)
    with torch.no_grad():
        normed = final_norm(got[:, None, :])[:, 0]
    want = torch.stack([_alone(model, tokenizer, t)[2][-1] for t in TEXTS])
    torch.testing.assert_close(normed, want, atol=2e-5, rtol=1e-5)


def test_residual_reads_refuse_bad_inputs(tokenizer):
    model = tiny_hf("tiny-llama")
    for kwargs, match in [(dict(texts=TEXTS, layer=2), "out of range"), (dict(texts=TEXTS, layer=-1), "layer"),
                          (dict(texts=[], layer=0), "non-empty"), (dict(texts=["ok", ""], layer=0), r"texts\[1\]"),
                          (dict(texts="one string", layer=0), "list of strings"),
                          (dict(texts=TEXTS, layer=0, read="first"), "read must be one of"),
                          (dict(texts=TEXTS, layer=0, batch_size=0), "batch_size")]:
        with pytest.raises(ValueError, match=match) as excinfo:
            residual_reads(model, tokenizer, **kwargs)
        _one_line_error(excinfo)
    with pytest.raises(ValueError, match="pairs"):
        contrast_vector(model, tokenizer, [("only one text",)], 0)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-pythia"])
def test_contrast_vector_equals_steering_vectors_library(name, tokenizer):
    from steering_vectors import mean_aggregator, train_steering_vector

    model = tiny_hf(name)
    reference = train_steering_vector(model, tokenizer, PAIRS, layers=[1], read_token_index=-1,
                                      aggregator=mean_aggregator())  # positive minus negative, one pair at a time
    tokenizer.padding_side = "left"  # ours batched and left-padded
    got = contrast_vector(model, tokenizer, PAIRS, 1, batch_size=5)
    torch.testing.assert_close(got, reference.layer_activations[1].float(), atol=1e-5, rtol=1e-5)
    swapped = contrast_vector(model, tokenizer, [(n, p) for p, n in PAIRS], 1, batch_size=5)
    torch.testing.assert_close(swapped, -got, atol=1e-5, rtol=1e-5)


def test_mean_read_contrast_vector_is_the_hand_mean_of_differences(tokenizer):
    model = tiny_hf("tiny-gpt-neo")
    tokenizer.padding_side = "left"
    want = torch.stack([_hand_read(model, tokenizer, p, "mean") - _hand_read(model, tokenizer, n, "mean")
                        for p, n in PAIRS]).mean(0)
    torch.testing.assert_close(contrast_vector(model, tokenizer, PAIRS, 0, read="mean", batch_size=4), want,
                               atol=2e-5, rtol=1e-5)


def _hand_differences(model, tokenizer) -> torch.Tensor:
    return torch.stack([_hand_read(model, tokenizer, p, "last") - _hand_read(model, tokenizer, n, "last")
                        for p, n in PAIRS])


def test_learning_curve_is_seeded_nested_and_ends_at_cosine_one(tokenizer):
    model = tiny_hf("tiny-llama")
    diffs = _hand_differences(model, tokenizer)
    torch.testing.assert_close(pair_differences(model, tokenizer, PAIRS, 0, batch_size=4), diffs, atol=2e-5,
                               rtol=1e-5)
    full = diffs.mean(0)
    rows = learning_curve(model, tokenizer, PAIRS, 0, [1, 2, 4, len(PAIRS)], seed=3)
    assert [r["n"] for r in rows] == [1, 2, 4, len(PAIRS)]
    assert rows[-1]["cosine"] == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(rows[-1]["vector"], full, atol=2e-5, rtol=1e-5)
    # n = 1 is one pair's difference, n = 2 that pair and one more (nested draws)
    first = min(range(len(PAIRS)), key=lambda i: float((diffs[i] - rows[0]["vector"]).norm()))
    torch.testing.assert_close(rows[0]["vector"], diffs[first], atol=2e-5, rtol=1e-5)
    second = [i for i in range(len(PAIRS)) if i != first]
    assert min(float(((diffs[first] + diffs[i]) / 2 - rows[1]["vector"]).norm()) for i in second) < 1e-4
    for r in rows:
        hand_cos = float(r["vector"].double() @ full.double() / (r["vector"].double().norm() * full.double().norm()))
        assert r["cosine"] == pytest.approx(hand_cos, abs=1e-5)
        assert r["norm"] == pytest.approx(float(r["vector"].norm()), rel=1e-6)
    again = learning_curve(model, tokenizer, PAIRS, 0, [1, 2, 4, len(PAIRS)], seed=3)
    assert all(torch.equal(a["vector"], b["vector"]) for a, b in zip(rows, again))
    picks = {tuple(curve_from_differences(diffs, [1], seed=s)[0]["vector"][:3].tolist()) for s in range(8)}
    assert len(picks) > 1, "different seeds should draw different pairs"


def test_learning_curve_with_a_given_reference_and_bad_sizes():
    diffs = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    reference = torch.tensor([0.0, 1.0])
    rows = curve_from_differences(diffs, [3], reference=reference)
    assert rows[0]["cosine"] == pytest.approx(5 / 3 / ((4 / 3) ** 2 + (5 / 3) ** 2) ** 0.5)
    for sizes in ([0], [4], [1.5], [True]):
        with pytest.raises(ValueError, match="sizes must be ints in 1..3"):
            curve_from_differences(diffs, sizes)
    with pytest.raises(ValueError, match="reference has 3 entries"):
        curve_from_differences(diffs, [1], reference=torch.ones(3))


def test_random_like_keeps_norm_dtype_and_is_seeded():
    v = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    r = random_like(v, seed=5)
    assert r.dtype == torch.float64 and r.shape == v.shape
    assert float(r.norm()) == pytest.approx(float(v.norm()), rel=1e-12)
    assert torch.equal(r, random_like(v, seed=5))
    assert not torch.allclose(r, random_like(v, seed=6))
    assert abs(float(r @ v) / float(r.norm() * v.norm())) < 0.1  # 6 standard deviations at d = 4096
    # the direction is uniform: over seeds, the mean of unit draws shrinks like 1 / sqrt(seeds)
    u = torch.stack([random_like(torch.ones(16), s) / 4 for s in range(400)])
    assert float(u.mean(0).norm()) < 4 / 400 ** 0.5
    with pytest.raises(ValueError, match=r"float tensor \[d_model\]"):
        random_like(torch.ones(2, 3), seed=0)


def test_swap_signs_are_balanced_and_seeded():
    s = swap_signs(10_000, seed=1)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(s.mean())) < 0.04  # 4 standard deviations
    assert torch.equal(s, swap_signs(10_000, seed=1)) and not torch.equal(s, swap_signs(10_000, seed=2))


def test_shuffled_labels_on_planted_pairs_scale_the_known_offset_by_a_mean_sign_near_zero(tokenizer):
    """N copies of one pair: every difference is the known offset delta, so the shuffled vector is c * delta
    with c = the mean of the signs; over seeds, c averages to about 0."""
    model = tiny_hf("tiny-llama")
    pos, neg = PAIRS[0]
    delta = _hand_read(model, tokenizer, pos, "last") - _hand_read(model, tokenizer, neg, "last")
    n = 8
    planted = [(pos, neg)] * n
    torch.testing.assert_close(contrast_vector(model, tokenizer, planted, 0), delta, atol=2e-5, rtol=1e-5)
    got = shuffled_label_vector(model, tokenizer, planted, 0, seed=0)
    c = float(swap_signs(n, seed=0).mean())
    assert c != 1.0, "seed 0 should swap at least one pair"
    torch.testing.assert_close(got, c * delta, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(got, delta, atol=1e-3)
    diffs = delta.expand(n, -1)
    cs = torch.stack([shuffled_label_mean(diffs, s) @ delta / (delta @ delta) for s in range(300)])
    assert set((cs * n).round().tolist()) <= set(range(-n, n + 1, 2))  # c takes the values k / n
    assert abs(float(cs.mean())) < 4 / (300 * n) ** 0.5  # E[c] = 0; 4 standard deviations


def test_shuffled_label_vector_is_the_hand_mean_with_swapped_pairs_and_averages_to_zero(tokenizer):
    model = tiny_hf("tiny-gpt2")
    diffs = _hand_differences(model, tokenizer)
    got = shuffled_label_vector(model, tokenizer, PAIRS, 0, seed=4)
    signs = swap_signs(len(PAIRS), seed=4)
    swapped = [(n, p) if s < 0 else (p, n) for (p, n), s in zip(PAIRS, signs)]
    torch.testing.assert_close(got, contrast_vector(model, tokenizer, swapped, 0), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got, (signs[:, None] * diffs).mean(0), atol=2e-5, rtol=1e-5)
    assert not torch.allclose(got, diffs.mean(0), atol=1e-3)
    k = 400  # the mean over seeds has covariance (1 / (N^2 k)) sum_i d_i d_i^T: its norm is about this scale
    scale = float(diffs.pow(2).sum()) ** 0.5 / (len(PAIRS) * k ** 0.5)
    mean = torch.stack([shuffled_label_mean(diffs, s) for s in range(k)]).mean(0)
    assert float(mean.norm()) < 4 * scale


def _vector_set() -> VectorSet:
    vs = VectorSet()
    vs.add("gratitude", torch.randn(64, generator=torch.Generator().manual_seed(0)), layer=1,
           model_name="tiny-llama", method="caa-last")
    vs.add("random", torch.randn(64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16), layer=0,
           model_name="tiny-llama", method="random")
    rows = torch.arange(12.0).reshape(2, 6)  # two views of one storage
    vs.add("row0", rows[0], layer=3, model_name="tiny-gpt2", method="caa-mean")
    vs.add("row1", rows[1], layer=3, model_name="tiny-gpt2", method="caa-mean")
    return vs


def test_vector_set_round_trip(tmp_path):
    vs = _vector_set()
    folder = vs.save(tmp_path / "set")
    assert sorted(p.name for p in folder.iterdir()) == ["vectors.json", "vectors.safetensors"]
    meta = json.loads((folder / "vectors.json").read_text())
    assert meta["sha256"] == hashlib.sha256((folder / "vectors.safetensors").read_bytes()).hexdigest()
    assert meta["vectors"]["gratitude"]["hook_name"] == "blocks.1.hook_resid_post"
    assert meta["vectors"]["row1"]["norm"] == pytest.approx(float(torch.arange(6.0, 12.0).norm()))
    plain = load_file(folder / "vectors.safetensors")  # readable without this module
    assert sorted(plain) == sorted(vs.names)
    back = VectorSet.load(folder)
    assert back.names == vs.names
    for name in vs.names:
        a, b = vs[name], back[name]
        assert torch.equal(a.vector, b.vector) and a.vector.dtype == b.vector.dtype
        assert (a.layer, a.model_name, a.method) == (b.layer, b.model_name, b.method)
    with pytest.raises(ValueError, match="already holds"):
        vs.add("gratitude", torch.ones(64), layer=1, model_name="m", method="x")
    with pytest.raises(ValueError, match="VectorEntry.layer"):
        vs.add("bad", torch.ones(64), layer=-1, model_name="m", method="x")
    with pytest.raises(ValueError, match="finite"):
        vs.add("nan", torch.full((4,), float("nan")), layer=0, model_name="m", method="x")


def _rewrite_tensors(folder, tensors) -> None:
    """Replace the safetensors file and record its new sha256: consistent bytes, mismatched content."""
    save_file(tensors, folder / "vectors.safetensors")
    meta = json.loads((folder / "vectors.json").read_text())
    meta["sha256"] = hashlib.sha256((folder / "vectors.safetensors").read_bytes()).hexdigest()
    (folder / "vectors.json").write_text(json.dumps(meta))


def _edit_meta(folder, edit) -> None:
    meta = json.loads((folder / "vectors.json").read_text())
    edit(meta)
    (folder / "vectors.json").write_text(json.dumps(meta))


def _flip_byte(folder) -> None:
    path = folder / "vectors.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def _tensors(folder) -> dict:
    return {k: v.clone() for k, v in load_file(folder / "vectors.safetensors").items()}


DAMAGES = {
    "flipped byte": (_flip_byte, "sha256"),
    "truncated tensors": (lambda f: (f / "vectors.safetensors").write_bytes((f / "vectors.safetensors")
                                                                            .read_bytes()[:-8]), "sha256"),
    "no tensors file": (lambda f: (f / "vectors.safetensors").unlink(), "vectors.safetensors is missing"),
    "no json": (lambda f: (f / "vectors.json").unlink(), "vectors.json is missing"),
    "json not json": (lambda f: (f / "vectors.json").write_text("{\"format\": "), "not valid JSON"),
    "wrong format": (lambda f: _edit_meta(f, lambda m: m.update(format="other/2")), "format"),
    "entry lacks layer": (lambda f: _edit_meta(f, lambda m: m["vectors"]["gratitude"].pop("layer")),
                          "lacks a valid 'layer'"),
    "layer a bool": (lambda f: _edit_meta(f, lambda m: m["vectors"]["gratitude"].update(layer=True)),
                     "lacks a valid 'layer'"),
    "negative layer": (lambda f: _edit_meta(f, lambda m: m["vectors"]["gratitude"].update(layer=-2)),
                       "VectorEntry.layer"),
    "edited norm": (lambda f: _edit_meta(f, lambda m: m["vectors"]["row0"].update(norm=1.0)), "norm"),
    "missing tensor": (lambda f: _rewrite_tensors(f, {k: v for k, v in _tensors(f).items() if k != "row1"}),
                       r"missing from vectors.safetensors \['row1'\]"),
    "extra tensor": (lambda f: _rewrite_tensors(f, {**_tensors(f), "stray": torch.ones(64)}),
                     r"missing from vectors.json \['stray'\]"),
    "wrong shape": (lambda f: _rewrite_tensors(f, {**_tensors(f), "gratitude": torch.ones(65)}), "shape"),
    "two-dimensional": (lambda f: _rewrite_tensors(f, {**_tensors(f), "gratitude": torch.ones(1, 64)}), "shape"),
    "wrong dtype": (lambda f: _rewrite_tensors(f, {**_tensors(f), "random": torch.ones(64)}), "dtype"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_vector_set_refuses_every_damage(damage, tmp_path):
    folder = _vector_set().save(tmp_path / "set")
    VectorSet.load(folder)  # intact
    do, match = DAMAGES[damage]
    do(folder)
    with pytest.raises(ValueError, match=match) as excinfo:
        VectorSet.load(folder)
    assert str(folder) in _one_line_error(excinfo)


def _field(reader, key):
    return reader.fields[key].contents()


def test_gguf_control_vector_reads_back(tmp_path):
    vectors = {1: torch.randn(64, generator=torch.Generator().manual_seed(0)),
               3: torch.randn(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)}
    path = export_gguf_control_vector(vectors, tmp_path / "gratitude.gguf", model_hint="llama")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gratitude.gguf"]
    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == "controlvector"
    assert _field(reader, "controlvector.model_hint") == "llama"
    assert _field(reader, "controlvector.layer_count") == 2
    assert reader.fields["controlvector.layer_count"].types == [gguf.GGUFValueType.INT32]
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.3"]
    for t in reader.tensors:
        layer = int(t.name.split(".")[1])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [64]
        assert torch.equal(torch.from_numpy(t.data.copy()), vectors[layer].float())


@pytest.mark.parametrize("vectors, match", [({0: torch.ones(4)}, "layer 0"), ({}, "non-empty"),
                                            ({1: torch.ones(4), 2: torch.ones(5)}, "one d_model"),
                                            ({1: torch.tensor([1.0, float("inf")])}, "finite"),
                                            ({"1": torch.ones(4)}, "ints >= 1"),
                                            ({1: torch.ones(2, 4)}, r"\[d_model\]")])
def test_gguf_export_refuses_bad_vectors(vectors, match, tmp_path):
    with pytest.raises(ValueError, match=match) as excinfo:
        export_gguf_control_vector(vectors, tmp_path / "v.gguf", model_hint="llama")
    _one_line_error(excinfo)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="model_hint"):
        export_gguf_control_vector({1: torch.ones(4)}, tmp_path / "v.gguf", model_hint="")
