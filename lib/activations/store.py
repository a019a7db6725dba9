"""Activation stores: chunked, compressed zarr groups written while extraction runs, read lazily.

Layout of one store (one model, one dataset profile)::

    zarr.json                 group attributes: config, model identity, dataset hash, aliases
    lengths                   [rows] real-token count per row
    scale/<site>              [rows, layers] int8 power-of-two exponent (float16 stores only)
    tokens/<site>             [rows, layers, max_len, *shape] every position; padding stored as zeros
    sentence_end/<site>       [rows, layers, *shape] last real token
    mean/<site>               [rows, layers, *shape] mean over real tokens
    span/<site>               [rows, layers, *shape] mean over the emotion-span tokens (NaN: no span)

A site is the hook name inside a block (``hook_resid_post``, ``attn.hook_z``); its stored layers
are in the attribute ``sites``. Chunks are one batch of rows by one layer, so reading one layer,
one emotion or a row range touches only those chunks. Readers use full hook names.
    labels.jsonl              one row per stored row, in store order
    progress.json             batches written so far (resume point); written first
    manifest.json             written last: a store without it is unfinished; it records the
                              digests that ``lib.activations.integrity`` checks on every open

Every chunk carries a CRC32C checksum (zarr's codec), checked by zarr on every read.

float16 values are stored as ``x * 2**-k`` with one exponent ``k >= 0`` per row, hook and layer, so
activations beyond float16's range (Gemma's residual reaches 1e5) keep float16's relative
precision instead of overflowing. Reads undo the scaling (``lib.activations.codec.decode_f16``) and
return float32.

>>> REDUCTIONS
('sentence_end', 'mean', 'span')
"""
from __future__ import annotations

import json
import contextlib
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.activations.codec import decode_f16
from lib.activations.integrity import StoreError, check_files, verify as verify_chunks
from lib.files import IncompleteResultsError
from lib.paths import relative

__all__ = ["REDUCTIONS", "FORMAT_VERSION", "ActivationStore", "open_store", "store_complete", "StoreError",
           "quiet_zarr", "read_manifest"]

REDUCTIONS = ("sentence_end", "mean", "span")
FORMAT_VERSION = 2  # 2: chunk checksums and the integrity record in the manifest


def store_complete(path: Path) -> bool:
    """Whether ``path`` is a finished store (its manifest is written last)."""
    return (Path(path) / "manifest.json").exists()


@contextlib.contextmanager
def quiet_zarr():
    """Silence zarr's warning about the JSON files (labels, progress, manifest) kept beside a store's arrays."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Object at .* is not recognized as a component of a Zarr hierarchy")
        yield


def read_manifest(path: Path) -> dict:
    """The manifest of the finished store at ``path``; a StoreError if it is damaged or of another format."""
    file = Path(path) / "manifest.json"
    try:
        manifest = json.loads(file.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise StoreError(f"{relative(file)} is damaged ({err}); extract the store again") from err
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or "integrity" not in manifest:
        raise StoreError(f"{relative(Path(path))} is a store of format {version}, this version reads format "
                         f"{FORMAT_VERSION} (chunk checksums); extract it again (`make reproduce` does)")
    return manifest


class ActivationStore:
    """Lazy reader of one finished store; nothing is read until an array is asked for.

    Opening checks the store's files against its manifest (labels, metadata, every chunk file
    present; ``lib.activations.integrity.check_files``); ``verify()`` also checks every chunk's checksum.
    """

    def __init__(self, path: Path):
        import zarr

        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"no activation store at {relative(self.path)}; run `make reproduce` (phase 02)")
        if not store_complete(self.path):
            raise IncompleteResultsError(
                f"{relative(self.path)} is an unfinished activation store (no manifest.json): extraction was "
                f"interrupted. Rerun the extraction to resume it; it is never read as finished.")
        self.manifest = read_manifest(self.path)
        check_files(self.path, self.manifest["integrity"])
        with quiet_zarr():
            self._group = zarr.open_group(str(self.path), mode="r")
        self.attrs = dict(self._group.attrs)

    def verify(self, progress=None) -> dict:
        """Read every chunk and check its checksum (plus what opening checks); counts of what was read."""
        return verify_chunks(self.path, self.manifest["integrity"], progress=progress)

    def _array(self, name: str, what: str, selection) -> np.ndarray:
        """``selection`` of array ``name``; a chunk that does not decode is a StoreError naming it."""
        try:
            arr = self._group[name]
            if isinstance(selection, tuple) and any(isinstance(s, np.ndarray) for s in selection):
                return np.asarray(arr.get_orthogonal_selection(selection))
            return np.asarray(arr[selection])
        except Exception as err:  # noqa: BLE001 - a chunk that does not decode or fails its checksum
            raise StoreError(f"cannot read {name} ({what}) from {relative(self.path)}: {type(err).__name__}: {err}. "
                             f"A chunk file is corrupted or truncated; run `python -m lib.activations verify "
                             f"{relative(self.path)}` to find it, and extract the store again") from err

    @cached_property
    def labels(self) -> pd.DataFrame:
        """One row per stored row, in store order: id, text, emotion, profile, split, n_tokens, ..."""
        return pd.read_json(self.path / "labels.jsonl", lines=True, dtype={"id": str})

    @property
    def hooks(self) -> list[str]:
        """Hook names readable from this store (stored ones and their aliases)."""
        return sorted([*self.attrs["stored_hooks"], *self.attrs["aliases"]])

    def _resolve(self, hook: str) -> tuple[str, int]:
        """(site, index on the layer axis) of a hook name, following aliases."""
        hook = self.attrs["aliases"].get(hook, hook)
        if hook not in self.attrs["stored_hooks"]:
            raise StoreError(f"{hook!r} is not in the store {relative(self.path)}; it holds {self.hooks}")
        _, layer, site = hook.split(".", 2)
        return site, self.attrs["sites"][site].index(int(layer))

    def _rows(self, rows=None, emotion: str | list[str] | None = None) -> np.ndarray:
        n = int(self.attrs["n_rows"])
        if rows is None:
            idx = np.arange(n)
        elif isinstance(rows, slice):
            idx = np.arange(n)[rows]
        else:
            idx = np.asarray(rows, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise StoreError(f"row indices outside 0..{n - 1} for store {relative(self.path)}")
        if emotion is not None:
            wanted = [emotion] if isinstance(emotion, str) else list(emotion)
            known = sorted(self.labels["emotion"].unique())
            if not set(wanted) <= set(known):
                raise StoreError(f"emotion filter {wanted} not in this store's emotions {known}")
            idx = idx[np.isin(self.labels["emotion"].to_numpy()[idx], wanted)]
        return idx

    def _read(self, kind: str, hook: str, idx: np.ndarray, width: int | None = None) -> np.ndarray:
        site, li = self._resolve(hook)
        ndim = len(self.attrs["shapes"][site]) + (3 if kind == "tokens" else 2)
        tail = (slice(None),) * (ndim - 2)
        if width is not None:
            tail = (slice(0, width),) + tail[1:]
        # only the chunks that hold the asked rows and layer are read; contiguous rows read as a slice
        if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
            data = self._array(f"{kind}/{site}", hook, (slice(int(idx[0]), int(idx[0]) + idx.size), li) + tail)
        else:
            data = self._array(f"{kind}/{site}", hook, (idx, li) + tail)
        if self.attrs["dtype"] != "float16":
            return data.astype(np.float32)
        scale = self._array(f"scale/{site}", hook, (idx, li))
        return decode_f16(data, torch.from_numpy(scale)).numpy()

    def get(self, hook: str, reduction: str = "sentence_end", *, rows=None, emotion=None) -> np.ndarray:
        """float32 [rows, *shape] of one hook and reduction, e.g. sentence-end resid_post of layer 6.

        ``rows``: None (all), a slice, or indices in store order; ``emotion``: keep only those rows.
        """
        if reduction not in self.attrs["reductions"]:
            raise StoreError(f"reduction {reduction!r} not stored; stored: {self.attrs['reductions']}")
        return self._read(reduction, hook, self._rows(rows, emotion))

    def tokens(self, hook: str, *, rows=None, emotion=None) -> tuple[np.ndarray, np.ndarray]:
        """Every position of ``hook``: float32 [rows, max_len, *shape] and the bool mask [rows, max_len].

        Padding positions hold zeros and are False in the mask; trimmed to the longest asked row.
        """
        site, _ = self._resolve(hook)
        if site not in self.attrs["token_sites"]:
            raise StoreError(f"{relative(self.path)} keeps every token only for sites {self.attrs['token_sites']}, "
                             f"not {site!r}; extract with token_sites including it (or '*')")
        idx = self._rows(rows, emotion)
        lengths = self._array("lengths", "token counts", (idx,))
        width = int(lengths.max()) if idx.size else 0
        data = self._read("tokens", hook, idx, width=width)
        mask = np.arange(width)[None, :] < lengths[:, None]
        return data, mask

    def select(self, hook: str, reduction: str = "sentence_end", **filters) -> tuple[np.ndarray, pd.DataFrame]:
        """Arrays plus the matching label rows, e.g. ``select(h, emotion="anger")``."""
        idx = self._rows(filters.get("rows"), filters.get("emotion"))
        return self._read(reduction, hook, idx), self.labels.iloc[idx].reset_index(drop=True)


def open_store(path: Path, *, verify: bool = False) -> ActivationStore:
    """Open a finished store for lazy reads; an unfinished or damaged one is refused. ``verify``: also
    check every chunk's checksum first (for a store this process did not just write)."""
    store = ActivationStore(path)
    if verify:
        store.verify()
    return store
