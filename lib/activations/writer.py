"""Writing a store's arrays: their layout, raw chunk writes, and the background writer thread."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from lib.activations.integrity import add_checksum, crc32c_codec
from lib.activations.plan import keeps_tokens
from lib.activations.store import quiet_zarr
from lib.files import write_json

__all__ = ["create_arrays", "ChunkEncoder", "Writer"]

_POS_CHUNK = 16  # positions per chunk of per-token arrays: short batches do not write the padding of long ones


def create_arrays(group, sites, shapes, n_rows, width, config) -> None:
    """Create the empty arrays of a store in ``group``: lengths, and per site its scales (float16),
    reductions and, for token sites, every token; one batch of rows is one chunk."""
    from zarr.codecs import BloscCodec

    comp = [BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")]  # fastest measured here; padding zeros still vanish
    if config.checksum:
        comp.append(crc32c_codec())  # 4 bytes per chunk; zarr checks it on every read
    np_dtype = np.float16 if config.dtype == "float16" else np.float32
    b = config.batch_size
    group.create_array("lengths", shape=(n_rows,), chunks=(b,), dtype=np.int32, compressors=comp, fill_value=0)
    for site, layers in sites.items():
        shape, n = shapes[site], len(layers)
        if config.dtype == "float16":
            group.create_array(f"scale/{site}", shape=(n_rows, n), chunks=(b, n), dtype=np.int8,
                               compressors=comp, fill_value=0)
        for red in config.reductions:
            group.create_array(f"{red}/{site}", shape=(n_rows, n, *shape), chunks=(b, n, *shape),
                               dtype=np_dtype, compressors=comp, fill_value=0)
        if keeps_tokens(site, config):
            group.create_array(f"tokens/{site}", shape=(n_rows, n, width, *shape),
                               chunks=(b, 1, min(width, _POS_CHUNK), *shape), dtype=np_dtype, compressors=comp,
                               fill_value=0)


class ChunkEncoder:
    """Writes whole chunks of one zarr array straight to its files, the way zarr itself encodes them.

    zarr's own write path costs about five times the compression and the file write (measured
    here), which on two cores is taken from the forward pass. Chunks are encoded with the array's
    own codecs (little-endian bytes, then Blosc, then zarr's CRC32C checksum) and written
    atomically (a temporary file renamed),
    so zarr reads them back as if it had written them; a test compares the files byte for byte.
    """

    def __init__(self, root: Path, name: str, arr):
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

        codecs = arr.metadata.codecs
        if not (len(codecs) in (2, 3) and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)
                and (len(codecs) == 2 or isinstance(codecs[2], Crc32cCodec))
                and (codecs[0].endian is None or codecs[0].endian.value == sys.byteorder)):
            raise ValueError(f"unexpected codecs for {name}: {codecs}")
        self.crc = codecs[2] if len(codecs) == 3 else None
        self.dir = root / name
        self.chunks = tuple(arr.chunks)
        self.dtype = arr.dtype
        self.fill = arr.fill_value
        self.key = arr.metadata.chunk_key_encoding.encode_chunk_key
        self.blosc = codecs[1]._blosc_codec
        self.made: set[Path] = set()  # chunk folders already created

    def write(self, start: tuple[int, ...], data: np.ndarray) -> None:
        """Write ``data`` at offset ``start``; the region must begin on chunk boundaries, and chunks it
        covers only in part are filled with the fill value (here: padding and rows past the end)."""
        start = tuple(start) + (0,) * (data.ndim - len(start))
        first = [s // c for s, c in zip(start, self.chunks)]
        counts = [-(-d // c) for d, c in zip(data.shape, self.chunks)]
        for rel in np.ndindex(*counts):
            lo = [r * c for r, c in zip(rel, self.chunks)]
            part = data[tuple(slice(a, a + c) for a, c in zip(lo, self.chunks))]
            if part.shape == self.chunks:
                chunk = np.ascontiguousarray(part, dtype=self.dtype)
            else:
                chunk = np.full(self.chunks, self.fill, dtype=self.dtype)
                chunk[tuple(slice(0, s) for s in part.shape)] = part
            self._write_chunk(tuple(f + r for f, r in zip(first, rel)), chunk)

    def _write_chunk(self, coords: tuple[int, ...], chunk: np.ndarray) -> None:
        """Encode one whole chunk and write it atomically to the file of chunk ``coords``."""
        path = self.dir / self.key(coords)
        if path.parent not in self.made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.made.add(path.parent)
        tmp = path.with_name(path.name + ".partial")
        blob = self.blosc.encode(chunk.view(np.uint8).reshape(-1))
        try:
            tmp.write_bytes(add_checksum(self.crc, blob) if self.crc is not None else blob)
        except OSError as err:  # a write that fails (disk full) names no file: name the chunk
            if err.filename is None:
                raise OSError(err.errno, err.strerror, str(tmp)) from err
            raise
        os.replace(tmp, path)


class Writer:
    """Writes batches in a background thread, in order, then records each as done (resume point).

    Compression and file writes overlap the next forward pass; at most two batches wait in memory.
    """

    def __init__(self, group, progress_path: Path, settings_sha: str, on_done):
        import queue
        import threading

        import zarr

        root = progress_path.parent
        with quiet_zarr():
            members = list(group.members(max_depth=None))
        self.encoders = {name: ChunkEncoder(root, name, arr) for name, arr in members if isinstance(arr, zarr.Array)}
        self.group, self.progress_path, self.settings_sha, self.on_done = group, progress_path, settings_sha, on_done
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue
            done, writes, state = item
            try:
                for name, start, data in writes:
                    self.encoders[name].write(start, data)
                write_json(self.progress_path, {"settings_sha256": self.settings_sha, "batches_done": done, **state})
                self.on_done()
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                self.error = err

    def put(self, done: int, writes: list, state: dict | None = None) -> None:
        """Queue batch ``done - 1``'s ``writes`` [(array name, start, data)]; ``state`` is recorded with the
        resume point once they are written (e.g. the worst float16 error so far). Re-raises a failed write."""
        if self.error is not None:
            raise self.error
        self.queue.put((done, writes, state or {}))

    def close(self) -> None:
        """Wait for every queued write; re-raises a failed one."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
