"""Named steering-vector sets on disk and llama.cpp control vectors.

``VectorSet.save(folder)`` writes ``vectors.safetensors`` (name -> float vector [d_model]) and ``vectors.json``
(the format, the safetensors file's sha256, and per vector its layer, hook name, method, norm, model name, d_model
and dtype), each written aside and renamed, the JSON last; ``VectorSet.load`` refuses any damage or mismatch in
one line naming the folder. ``export_gguf_control_vector`` writes what llama.cpp's ``--control-vector`` reads.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lib.activations.names import act_name
from lib.files import write_json
from lib.steering.vectors import _check_int, _check_vector

__all__ = ["VectorEntry", "VectorSet", "export_gguf_control_vector", "TENSORS_FILE", "META_FILE"]

TENSORS_FILE = "vectors.safetensors"
META_FILE = "vectors.json"
FORMAT = "lib.steering.vectors/1"


@dataclass(frozen=True, kw_only=True, eq=False)
class VectorEntry:
    """One named vector of a ``VectorSet``: ``vector`` [d_model] read (or to be added) at block ``layer``'s
    output of model ``model_name``, made by ``method`` (e.g. ``"caa-last"``, ``"shuffled-label"``)."""

    vector: torch.Tensor  # [d_model]
    layer: int
    model_name: str
    method: str

    def __post_init__(self):
        _check_vector(self.vector, "VectorEntry.vector")
        _check_int(self.layer, "VectorEntry.layer", 0)
        for name in ("model_name", "method"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"VectorEntry.{name} must be a non-empty string, got {value!r}")

    @property
    def hook_name(self) -> str:
        """The site in the project's activation namespace."""
        return act_name("resid_post", self.layer)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fail(folder: Path, what: str) -> ValueError:
    return ValueError(f"VectorSet at {folder}: {what}".replace("\n", " "))


@dataclass
class VectorSet:
    """Named steering vectors, each with its layer, model name and method; saved as ``vectors.safetensors``
    (name -> tensor [d_model]) beside ``vectors.json`` (per vector: layer, hook name, method, model name, norm,
    d_model, dtype; and the sha256 of the safetensors file), each written aside then renamed.

    >>> import tempfile
    >>> vs = VectorSet()
    >>> _ = vs.add("thanks", torch.ones(4), layer=1, model_name="tiny-llama", method="caa-last")
    >>> back = VectorSet.load(vs.save(tempfile.mkdtemp()))
    >>> back["thanks"].layer, back["thanks"].vector.tolist()
    (1, [1.0, 1.0, 1.0, 1.0])
    """

    entries: dict[str, VectorEntry] = field(default_factory=dict)

    def add(self, name: str, vector: torch.Tensor, *, layer: int, model_name: str, method: str) -> VectorEntry:
        """Add a new vector called ``name`` (an error if the name is taken)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a vector name must be a non-empty string, got {name!r}")
        if name in self.entries:
            raise ValueError(f"the set already holds a vector called {name!r}; names: {sorted(self.entries)}")
        entry = VectorEntry(vector=vector, layer=layer, model_name=model_name, method=method)
        self.entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> VectorEntry:
        if name not in self.entries:
            raise KeyError(f"no vector called {name!r}; names: {sorted(self.entries)}")
        return self.entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def save(self, folder) -> Path:
        """Write the set into ``folder`` (created if needed); returns the folder."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, entry in self.entries.items():
            if not isinstance(name, str) or not name or not isinstance(entry, VectorEntry):
                raise ValueError(f"VectorSet.entries must map non-empty names to VectorEntry, got {name!r}: "
                                 f"{type(entry).__name__}")
        tensors = {name: e.vector.detach().to("cpu").clone().contiguous() for name, e in self.entries.items()}
        blob = save(tensors)
        meta = {"format": FORMAT, "safetensors": TENSORS_FILE, "sha256": _sha256(blob),
                "vectors": {name: {"layer": e.layer, "hook_name": e.hook_name, "method": e.method,
                                   "model_name": e.model_name, "norm": float(tensors[name].double().norm()),
                                   "d_model": int(tensors[name].shape[0]),
                                   "dtype": str(tensors[name].dtype).removeprefix("torch.")}
                            for name, e in self.entries.items()}}
        tmp = folder / (TENSORS_FILE + ".tmp")
        tmp.write_bytes(blob)
        tmp.replace(folder / TENSORS_FILE)
        write_json(folder / META_FILE, meta)  # last: a json whose sha256 matches marks a complete save
        return folder

    @classmethod
    def load(cls, folder) -> "VectorSet":
        """The set saved in ``folder``; a missing, damaged or mismatched file is a one-line ValueError."""
        from safetensors.torch import load

        folder = Path(folder)
        meta_path, tensors_path = folder / META_FILE, folder / TENSORS_FILE
        for path in (meta_path, tensors_path):
            if not path.is_file():
                raise _fail(folder, f"{path.name} is missing; a saved set holds {TENSORS_FILE} and {META_FILE}")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _fail(folder, f"{META_FILE} is not valid JSON ({err})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("sha256"), str) \
                or not isinstance(meta.get("vectors"), dict):
            raise _fail(folder, f"{META_FILE} must be an object with format {FORMAT!r}, a sha256 string and a "
                                f"vectors object")
        blob = tensors_path.read_bytes()
        if _sha256(blob) != meta["sha256"]:
            raise _fail(folder, f"{TENSORS_FILE} has sha256 {_sha256(blob)[:16]}..., but {META_FILE} records "
                                f"{meta['sha256'][:16]}...; the file is damaged or not the one saved")
        try:
            tensors = load(blob)
        except Exception as err:  # the sha256 matched a file that is not safetensors
            raise _fail(folder, f"{TENSORS_FILE} cannot be read as safetensors ({type(err).__name__})") from None
        missing = sorted(set(meta["vectors"]) - set(tensors))
        extra = sorted(set(tensors) - set(meta["vectors"]))
        if missing or extra:
            raise _fail(folder, f"{TENSORS_FILE} and {META_FILE} name different vectors: missing from "
                                f"{TENSORS_FILE} {missing}, missing from {META_FILE} {extra}")
        out = cls()
        for name, info in meta["vectors"].items():
            out.entries[name] = _entry(folder, name, info, tensors[name])
        return out


_FIELDS = {"layer": int, "method": str, "model_name": str, "norm": (int, float), "d_model": int, "dtype": str}


def _entry(folder: Path, name: str, info, tensor: torch.Tensor) -> VectorEntry:
    """The ``VectorEntry`` of one loaded vector, after checking its metadata against its tensor."""
    if not isinstance(info, dict):
        raise _fail(folder, f"{META_FILE} entry {name!r} must be an object with keys {sorted(_FIELDS)}")
    for key, kind in _FIELDS.items():
        if key not in info or isinstance(info[key], bool) or not isinstance(info[key], kind):
            raise _fail(folder, f"{META_FILE} entry {name!r} lacks a valid {key!r}; needs {sorted(_FIELDS)}")
    if tuple(tensor.shape) != (info["d_model"],):
        raise _fail(folder, f"vector {name!r} has shape {tuple(tensor.shape)}, but {META_FILE} records "
                            f"[{info['d_model']}]")
    if str(tensor.dtype).removeprefix("torch.") != info["dtype"]:
        raise _fail(folder, f"vector {name!r} has dtype {tensor.dtype}, but {META_FILE} records {info['dtype']}")
    norm = float(tensor.double().norm())
    if not math.isclose(norm, info["norm"], rel_tol=1e-6, abs_tol=1e-9):
        raise _fail(folder, f"vector {name!r} has norm {norm:.6g}, but {META_FILE} records {info['norm']:.6g}")
    try:
        return VectorEntry(vector=tensor, layer=info["layer"], model_name=info["model_name"], method=info["method"])
    except ValueError as err:
        raise _fail(folder, f"vector {name!r}: {err}") from None


def export_gguf_control_vector(vectors: dict[int, torch.Tensor], path, *, model_hint: str) -> Path:
    """Write ``vectors`` (layer -> [d_model]) as a llama.cpp control vector (``--control-vector``): a GGUF file of
    architecture ``controlvector`` with ``controlvector.model_hint`` (str), ``controlvector.layer_count`` (int32:
    the number of directions, as repeng writes it; llama.cpp's loader does not read it) and one float32 tensor
    ``direction.{L}`` [d_model] per layer; written aside then renamed. Returns ``path``.

    Layer numbering: ``vectors[L]`` is for this project's layer L (block L's output, ``hidden_states[L + 1]``)
    and is written as ``direction.{L}``, unshifted. llama.cpp's loader puts ``direction.{i}`` in slot i
    (``llama_control_vector_load_one``, then ``llama_adapter_cvec::apply``), and the graph adds slot i to the
    output of its layer i counted from 0 (``build_cvec(cur, il)`` right after block il): the same site as
    ``blocks_of(model)[i]``'s output here. repeng agrees: it reads ``hidden_states[i + 1]``, adds to
    ``layers[i]``'s output and exports ``direction.{i}``. llama.cpp keeps no slot for layer 0 and refuses a
    file holding ``direction.0``, so L = 0 is an error. (llama.cpp's cvector-generator names the difference it
    reads at layer i - 1 ``direction.{i}``: its files steer one layer after their read; that shift belongs to
    that writer, not to the format.)

    >>> import tempfile, gguf
    >>> p = export_gguf_control_vector({1: torch.ones(4)}, tempfile.mkdtemp() + "/v.gguf", model_hint="llama")
    >>> [t.name for t in gguf.GGUFReader(p).tensors]
    ['direction.1']
    """
    import gguf

    if not isinstance(vectors, dict) or not vectors:
        raise ValueError(f"vectors must be a non-empty dict layer -> tensor [d_model], got {type(vectors).__name__}")
    if not isinstance(model_hint, str) or not model_hint:
        raise ValueError(f"model_hint must be a non-empty string (e.g. the model's architecture), got "
                         f"{model_hint!r}")
    widths = set()
    for layer, vector in vectors.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
            raise ValueError(f"vectors' layers must be ints >= 1, got {layer!r}: llama.cpp has no control-vector "
                             f"slot for layer 0's output and refuses a direction.0 tensor")
        widths.add(_check_vector(vector, f"vectors[{layer}]").shape[0])
    if len(widths) != 1:
        raise ValueError(f"vectors must all have one d_model, got widths {sorted(widths)}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, "controlvector")
    try:
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_int32("controlvector.layer_count", len(vectors))
        for layer in sorted(vectors):
            array = vectors[layer].detach().to("cpu", torch.float32).contiguous().numpy()
            writer.add_tensor(f"direction.{layer}", array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, path)
    return path
