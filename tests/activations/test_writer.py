"""Raw chunk writes against zarr's own writes, file for file."""
from __future__ import annotations

import numpy as np
import pytest

from lib.activations.writer import ChunkEncoder


@pytest.mark.parametrize("checksum", [True, False])
def test_chunk_encoder_writes_the_files_zarr_writes(tmp_path, checksum):
    """Our direct chunk writes equal zarr's own, file for file, incl. partial edge chunks, with zarr's
    CRC32C checksum (as stores are written) and without it."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    rng = np.random.default_rng(0)
    data = rng.standard_normal((5, 3, 7, 4)).astype(np.float16)  # 5 rows of a 4-row chunk grid: edge chunk
    comp = [BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")] + ([Crc32cCodec()] if checksum else [])
    for root in ("zarr", "ours"):
        group = zarr.open_group(str(tmp_path / root), mode="w")
        group.create_array("t/x", shape=(8, 3, 9, 4), chunks=(4, 1, 4, 4), dtype=np.float16, compressors=comp,
                           fill_value=0)
    zgroup = zarr.open_group(str(tmp_path / "zarr"), mode="a")
    full = np.zeros((8, 3, 9, 4), np.float16)
    full[:5, :, :7] = data
    zgroup["t/x"][:] = full  # zarr writes every chunk, all-zero ones included only if not empty
    ours = ChunkEncoder(tmp_path / "ours", "t/x", zarr.open_group(str(tmp_path / "ours"))["t/x"])
    ours.write((0,), np.pad(data, ((0, 0), (0, 0), (0, 1), (0, 0))))  # 8 positions: 2 full position chunks
    zfiles = {p.relative_to(tmp_path / "zarr"): p.read_bytes() for p in (tmp_path / "zarr").rglob("c/**/*") if p.is_file()}
    ofiles = {p.relative_to(tmp_path / "ours"): p.read_bytes() for p in (tmp_path / "ours").rglob("c/**/*") if p.is_file()}
    assert zfiles and set(ofiles) <= set(zfiles)
    for key, blob in ofiles.items():
        assert blob == zfiles[key], key
    back = np.asarray(zarr.open_group(str(tmp_path / "ours"), mode="r")["t/x"][:])
    assert np.array_equal(back, full)
