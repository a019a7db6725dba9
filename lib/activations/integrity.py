"""Store integrity: what a finished store's manifest records about its files, and the checks against it.

Every chunk ends with a CRC32C checksum (zarr's own ``crc32c`` codec: zarr checks it on every read).
What a checksum cannot see is recorded in the manifest when the store is finished:

- the chunk files of each array (count and a digest of their names): a deleted chunk would
  otherwise read as the fill value, zeros, and a half-copied store would look finished;
- ``labels.jsonl`` (sha256): rows swapped, edited or cut off;
- the arrays' metadata, every ``zarr.json`` (sha256): shapes, chunking, codecs, attributes.

``check_files`` (names, labels, metadata; a fraction of a second) runs whenever a store is opened;
``verify`` also reads every chunk and checks its checksum (``python -m lib.activations verify STORE``),
and runs before a phase trusts a store another run wrote.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from lib.errors import UserError
from lib.paths import relative
from lib.models.weights import sha256_file

__all__ = ["StoreError", "CHECKSUM", "crc32c_codec", "add_checksum", "strip_checksum", "chunk_files",
           "integrity_record", "check_files", "verify"]

# Files beside the arrays that are not chunks.
_SIDE_FILES = {"zarr.json", "labels.jsonl", "progress.json", "manifest.json"}
CHECKSUM = "crc32c"


class StoreError(UserError, ValueError):
    """A store that is damaged, unfinished, mismatched, or asked for something it does not hold;
    the message names the store and the part at fault."""


def crc32c_codec():
    """zarr's CRC32C codec, the last codec of every array of a store (4 bytes appended to each chunk)."""
    from zarr.codecs import Crc32cCodec

    return Crc32cCodec()


class _Spec:
    """The one thing zarr's byte-to-byte codecs read from an array spec: the buffer prototype."""

    def __init__(self):
        from zarr.core.buffer import default_buffer_prototype

        self.prototype = default_buffer_prototype()


_SPEC = None


def _spec() -> _Spec:
    global _SPEC
    if _SPEC is None:
        _SPEC = _Spec()
    return _SPEC


def add_checksum(codec, blob: bytes) -> bytes:
    """``blob`` with ``codec``'s checksum appended, exactly as zarr writes it."""
    spec = _spec()
    return codec._encode_sync(spec.prototype.buffer.from_bytes(blob), spec).to_bytes()


def strip_checksum(codec, blob: bytes) -> bytes:
    """``blob`` without its checksum; a ValueError if the checksum does not match (zarr's own check)."""
    spec = _spec()
    return codec._decode_sync(spec.prototype.buffer.from_bytes(blob), spec).to_bytes()


def _arrays(root: Path) -> list[str]:
    """Names of the arrays of the store at ``root`` (folders whose zarr.json describes an array)."""
    import json

    names = []
    for meta in sorted(root.rglob("zarr.json")):
        if meta.parent == root:
            continue
        try:
            node = json.loads(meta.read_text()).get("node_type")
        except ValueError as err:
            raise StoreError(f"{relative(meta)} is not valid JSON ({err}); the store's metadata is damaged: "
                             f"extract it again") from err
        if node == "array":
            names.append(meta.parent.relative_to(root).as_posix())
    return names


def chunk_files(root: Path, array: str) -> list[str]:
    """The chunk files of ``array`` (paths relative to the array's folder, sorted)."""
    base = Path(root) / array / "c"
    out = []
    for folder, _, files in os.walk(base):
        rel = Path(folder).relative_to(base.parent)
        out += [(rel / f).as_posix() for f in files if not f.endswith((".partial", ".tmp"))]
    return sorted(out)


def _metadata_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for meta in sorted(root.rglob("zarr.json")):
        h.update(meta.relative_to(root).as_posix().encode() + b"\0" + meta.read_bytes() + b"\0")
    return h.hexdigest()


def _names_sha256(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def integrity_record(root: Path, checksum: bool = True) -> dict:
    """What the manifest records about a finished store's files (see the module docstring); ``checksum``:
    whether its chunks carry checksums (only benchmarks turn them off)."""
    root = Path(root)
    chunks = {}
    for array in _arrays(root):
        names = chunk_files(root, array)
        chunks[array] = {"n": len(names), "names_sha256": _names_sha256(names)}
    return {"checksum": CHECKSUM if checksum else None, "labels_sha256": sha256_file(root / "labels.jsonl"),
            "metadata_sha256": _metadata_sha256(root), "chunks": chunks}


def check_files(root: Path, record: dict) -> None:
    """A StoreError naming the damaged part unless labels, metadata and the chunk files match ``record``."""
    root = Path(root)
    where = relative(root)
    fix = "extract it again (or copy it again from a complete copy)"
    labels = root / "labels.jsonl"
    if not labels.exists() or sha256_file(labels) != record["labels_sha256"]:
        raise StoreError(f"{where}: labels.jsonl is missing or differs from the one the store was written with "
                         f"(rows edited, reordered or cut off); {fix}")
    if _metadata_sha256(root) != record["metadata_sha256"]:
        raise StoreError(f"{where}: array metadata (zarr.json) differs from what was written; {fix}")
    arrays = set(_arrays(root))
    if arrays != set(record["chunks"]):
        lost = sorted(set(record["chunks"]) - arrays)
        raise StoreError(f"{where}: arrays missing or added: {lost or sorted(arrays - set(record['chunks']))}; {fix}")
    for array, want in record["chunks"].items():
        names = chunk_files(root, array)
        if len(names) != want["n"] or _names_sha256(names) != want["names_sha256"]:
            raise StoreError(f"{where}: array {array} has {len(names)} chunk files, {want['n']} were written "
                             f"(a chunk was deleted, added or the store was copied half-way); {fix}")


def verify(root: Path, record: dict, progress=None) -> dict:
    """Check ``record`` (``check_files``) and every chunk's checksum; a StoreError names the first damaged
    chunk. Returns counts: chunks, bytes, seconds."""
    root = Path(root)
    t0 = time.perf_counter()
    check_files(root, record)
    codec = crc32c_codec() if record["checksum"] == CHECKSUM else None
    n = size = 0
    for array in record["chunks"]:
        for name in chunk_files(root, array):
            path = root / array / name
            blob = path.read_bytes()
            try:
                if codec is not None:
                    strip_checksum(codec, blob)
            except ValueError as err:
                raise StoreError(f"{relative(path)}: checksum mismatch (the chunk was changed after it was written: "
                                 f"a bad copy or a failing disk); extract the store again") from err
            n += 1
            size += len(blob)
            if progress is not None:
                progress(len(blob))
    return {"chunks": n, "bytes": size, "seconds": round(time.perf_counter() - t0, 3)}
