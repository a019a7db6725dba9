"""Steering vectors read from the residual stream: contrast (CAA) vectors, their learning curve and controls,
named sets saved to disk, and export as a llama.cpp control vector.

The read site is the output hidden state of decoder block ``layer`` (``blocks.{layer}.hook_resid_post``, the
site ``lib.steering.hooks`` edits; ``output_hidden_states[layer + 1]`` of the Hugging Face model). A text t is
tokenized as ``tokenizer(texts, padding=True)`` does (special tokens as the tokenizer adds them), with real
tokens j = 1..T_t (attention mask 1) and x_j [d_model] the block's output at token j:

- ``read="last"``: r(t) = x_{T_t}, the last real token;
- ``read="mean"``: r(t) = (1 / T_t) sum_j x_j.

Padding is left or right, as the tokenizer's ``padding_side`` says; padded positions are never read and position
ids count real tokens only, so a padded row reads what the text alone would (absolute-position models such as
GPT-2 need this). Reads are float32 [n, d_model] on the CPU.

For pairs (p_i, n_i), i = 1..N (positive text, negative text):

- difference d_i = r(p_i) - r(n_i) [d_model];
- contrast vector v = (1 / N) sum_i d_i (contrastive activation addition; steering-vectors' ``mean_aggregator``,
  positive minus negative);
- learning curve: v_n = the mean of d_i over the first n of a seeded permutation of the pairs (nested subsets),
  and cos(v_n, reference), reference = v by default;
- shuffled-label control: v_s = (1 / N) sum_i s_i d_i, s_i = -1 (the pair's texts swapped) with probability 1/2,
  seeded; E[v_s] = 0, so v_s is what labels carrying no information give;
- random control: a Gaussian direction scaled to ||v||, seeded.

>>> from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
>>> hf, tok = build_tiny_model("tiny-llama"), build_tiny_tokenizer()
>>> residual_reads(hf, tok, ["Thank you!", "Sorry I missed your call."], 1, read="mean").shape
torch.Size([2, 64])
>>> v = contrast_vector(hf, tok, [("Thank you!", "Why?"), ("Thanks a lot.", "This is ridiculous.")], 1)
>>> v.shape, bool(random_like(v, seed=0).norm().isclose(v.norm()))
(torch.Size([64]), True)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from lib.activations.names import act_name, check_layers
from lib.files import write_json
from lib.models.archs import block_output, blocks_of

__all__ = ["READS", "residual_reads", "pair_differences", "contrast_vector", "curve_from_differences",
           "learning_curve", "random_like", "swap_signs", "shuffled_label_mean", "shuffled_label_vector",
           "VectorEntry", "VectorSet", "export_gguf_control_vector"]

READS = ("last", "mean")
TENSORS_FILE = "vectors.safetensors"
META_FILE = "vectors.json"
FORMAT = "lib.steering.vectors/1"


class _Stop(Exception):
    """Raised by the read hook: nothing after the read block is computed."""


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
        raise ValueError(f"texts must be a non-empty list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise ValueError(f"texts[{i}] must be a non-empty string, got {text!r}")
    return list(texts)


def _check_pairs(pairs) -> list[tuple[str, str]]:
    if isinstance(pairs, str) or not isinstance(pairs, Sequence) or len(pairs) == 0:
        raise ValueError(f"pairs must be a non-empty list of (positive_text, negative_text), got "
                         f"{type(pairs).__name__}")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(t, str) and t for t in pair):
            raise ValueError(f"pairs[{i}] must be (positive_text, negative_text), two non-empty strings, got {pair!r}")
    return [(p, n) for p, n in pairs]


def _check_vector(vector, name: str = "vector") -> torch.Tensor:
    if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or not vector.is_floating_point():
        what = f"shape {tuple(vector.shape)}, dtype {vector.dtype}" if isinstance(vector, torch.Tensor) else \
            type(vector).__name__
        raise ValueError(f"{name} must be a float tensor [d_model], got {what}")
    if not bool(torch.isfinite(vector).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    return vector


@torch.no_grad()
def residual_reads(model, tokenizer, texts: Sequence[str], layer: int, *, read: str = "last",
                   batch_size: int = 16) -> torch.Tensor:
    """float32 [n, d_model]: block ``layer``'s output read at each text's last real token (``read="last"``) or
    averaged over its real tokens (``read="mean"``); one forward per ``batch_size`` texts, stopped after the block.

    >>> from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
    >>> residual_reads(build_tiny_model("tiny-gpt2"), build_tiny_tokenizer(), ["Hi.", "Thank you!"], 0).shape
    torch.Size([2, 64])
    """
    texts = _check_texts(texts)
    blocks = blocks_of(model)
    _check_int(layer, "layer", 0)
    check_layers([layer], len(blocks), type(model).__name__)
    if read not in READS:
        raise ValueError(f"read must be one of {READS}, got {read!r}")
    _check_int(batch_size, "batch_size", 1)
    if len(texts) > 1 and batch_size > 1 and tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token, so texts cannot be batched; set tokenizer.pad_token "
                         "(e.g. to its eos token) or pass batch_size=1")
    device = model.get_input_embeddings().weight.device
    box: dict[str, torch.Tensor] = {}

    def keep(module, args, output):
        box["x"] = block_output(output)  # [batch, pos, d_model]
        raise _Stop

    reads = []
    handle = blocks[layer].register_forward_hook(keep)
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True)
            mask = enc["attention_mask"]  # [batch, pos]
            empty = (mask.sum(1) == 0).nonzero().flatten().tolist()
            if empty:
                i = start + empty[0]
                raise ValueError(f"texts[{i}] = {texts[i]!r} has no tokens; every text needs at least one")
            position_ids = (mask.cumsum(1) - 1).clamp(min=0)  # real tokens counted from 0 whatever the padding
            try:
                model(input_ids=enc["input_ids"].to(device), attention_mask=mask.to(device),
                      position_ids=position_ids.to(device), use_cache=False)
            except _Stop:
                pass
            x = box.pop("x").float()
            m = mask.to(x.device, torch.float32)
            if read == "last":
                last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # [batch]: the last position whose mask is 1
                r = x[torch.arange(x.shape[0], device=x.device), last.to(x.device)]
            else:
                r = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)
            reads.append(r.cpu())
    finally:
        handle.remove()
    return torch.cat(reads)


def pair_differences(model, tokenizer, pairs: Sequence[tuple[str, str]], layer: int, *, read: str = "last",
                     batch_size: int = 16) -> torch.Tensor:
    """float32 [N, d_model]: d_i = r(positive_i) - r(negative_i) for each pair (module docstring)."""
    pairs = _check_pairs(pairs)
    reads = residual_reads(model, tokenizer, [p for p, _ in pairs] + [n for _, n in pairs], layer, read=read,
                           batch_size=batch_size)
    return reads[:len(pairs)] - reads[len(pairs):]


def contrast_vector(model, tokenizer, pairs: Sequence[tuple[str, str]], layer: int, *, read: str = "last",
                    batch_size: int = 16) -> torch.Tensor:
    """float32 [d_model]: the mean over pairs of r(positive) - r(negative) at block ``layer``'s output."""
    return pair_differences(model, tokenizer, pairs, layer, read=read, batch_size=batch_size).mean(0)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) in float64; NaN when either is zero."""
    a, b = a.double(), b.double()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else math.nan


def curve_from_differences(differences: torch.Tensor, sizes: Sequence[int], *, seed: int = 0,
                           reference: torch.Tensor | None = None) -> list[dict]:
    """For each n in ``sizes``: the mean of ``differences`` [N, d_model] over the first n rows of one permutation
    drawn with a generator seeded by ``seed`` (so subsets are nested), and its cosine with ``reference``
    [d_model] (default: the mean of all rows). Rows: {"n", "cosine", "norm", "vector"}.

    >>> d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> [round(r["cosine"], 6) for r in curve_from_differences(d, [3])]
    [1.0]
    """
    if not isinstance(differences, torch.Tensor) or differences.ndim != 2 or len(differences) == 0:
        raise ValueError(f"differences must be a tensor [N >= 1, d_model], got "
                         f"{tuple(differences.shape) if isinstance(differences, torch.Tensor) else differences!r}")
    n_pairs = len(differences)
    sizes = list(sizes)
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= n_pairs:
            raise ValueError(f"sizes must be ints in 1..{n_pairs} (the number of pairs), got {n!r}")
    if reference is None:
        reference = differences.mean(0)
    _check_vector(reference, "reference")
    if reference.shape[0] != differences.shape[1]:
        raise ValueError(f"reference has {reference.shape[0]} entries but the vectors have d_model "
                         f"{differences.shape[1]}")
    _check_int(seed, "seed", 0)
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))
    rows = []
    for n in sizes:
        vector = differences[order[:n].to(differences.device)].mean(0)
        rows.append({"n": n, "cosine": _cosine(vector, reference.to(vector.device)), "norm": float(vector.norm()),
                     "vector": vector})
    return rows


def learning_curve(model, tokenizer, pairs: Sequence[tuple[str, str]], layer: int, sizes: Sequence[int], *,
                   seed: int = 0, reference: torch.Tensor | None = None, read: str = "last",
                   batch_size: int = 16) -> list[dict]:
    """``curve_from_differences`` of the pairs' differences (each text read once): for each n in ``sizes``, the
    contrast vector of n pairs drawn with a seeded generator and its cosine with ``reference`` (default: the
    vector from all pairs). Rows: {"n", "cosine", "norm", "vector"}."""
    diffs = pair_differences(model, tokenizer, pairs, layer, read=read, batch_size=batch_size)
    return curve_from_differences(diffs, sizes, seed=seed, reference=reference)


def random_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A direction drawn uniformly on the sphere (a seeded Gaussian, normalised), scaled to ``vector``'s norm;
    same shape, dtype and device as ``vector`` [d_model].

    >>> v = torch.tensor([3.0, 4.0])
    >>> float(random_like(v, seed=1).norm()), torch.equal(random_like(v, 1), random_like(v, 1))
    (5.0, True)
    """
    _check_vector(vector)
    _check_int(seed, "seed", 0)
    z = torch.randn(vector.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z / z.norm() * vector.double().norm()).to(dtype=vector.dtype, device=vector.device)


def swap_signs(n: int, seed: int) -> torch.Tensor:
    """float32 [n] of +1 (pair kept) and -1 (pair's texts swapped), each with probability 1/2, seeded.

    >>> sorted(set(swap_signs(50, seed=0).tolist()))
    [-1.0, 1.0]
    """
    _check_int(n, "n", 1)
    _check_int(seed, "seed", 0)
    flips = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    return 1.0 - 2.0 * flips.float()


def shuffled_label_mean(differences: torch.Tensor, seed: int) -> torch.Tensor:
    """[d_model]: (1 / N) sum_i s_i d_i for ``differences`` [N, d_model] and s = ``swap_signs(N, seed)``: the
    contrast vector of the same pairs with each pair's labels swapped with probability 1/2 (expectation 0)."""
    if not isinstance(differences, torch.Tensor) or differences.ndim != 2 or len(differences) == 0:
        raise ValueError("differences must be a tensor [N >= 1, d_model]")
    signs = swap_signs(len(differences), seed).to(device=differences.device, dtype=differences.dtype)
    return (signs[:, None] * differences).mean(0)


def shuffled_label_vector(model, tokenizer, pairs: Sequence[tuple[str, str]], layer: int, seed: int, *,
                          read: str = "last", batch_size: int = 16) -> torch.Tensor:
    """float32 [d_model]: the contrast vector after swapping each pair's two texts with probability 1/2 (seeded):
    a vector from labels that carry no information, the control beside ``contrast_vector``."""
    diffs = pair_differences(model, tokenizer, pairs, layer, read=read, batch_size=batch_size)
    return shuffled_label_mean(diffs, seed)


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
