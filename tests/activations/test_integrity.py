"""Store integrity under damage: every chunk checksummed by zarr's own codec, missing chunks, edited
labels and metadata, half-copied stores, and ``verify``. Each damage must be an error naming the store
and the part at fault, never data read back silently wrong."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lib.activations.extract import extract
from lib.activations.integrity import StoreError, add_checksum, crc32c_codec, strip_checksum
from lib.activations.plan import ExtractConfig
from lib.activations.store import open_store
from lib.models.loading import load_model


@pytest.fixture(scope="module")
def store_path(rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "s"
    extract(load_model("tiny-gpt2", device="cpu"), rows, path, ExtractConfig(batch_size=4), progress=False)
    return path


@pytest.fixture
def copy(store_path, tmp_path):
    """A fresh copy of the store to damage."""
    return shutil.copytree(store_path, tmp_path / "copy")


def _chunks(path, array):
    return sorted(p for p in (path / array / "c").rglob("*") if p.is_file())


def test_checksum_is_zarrs_own_crc32c():
    """Our checksum is zarr's codec: appended bytes equal google_crc32c's value, and a flipped bit fails."""
    import google_crc32c

    codec = crc32c_codec()
    blob = bytes(range(200))
    framed = add_checksum(codec, blob)
    assert framed[:-4] == blob and framed[-4:] == np.uint32(google_crc32c.value(blob)).tobytes()
    assert strip_checksum(codec, framed) == blob
    bad = bytearray(framed)
    bad[17] ^= 0x04
    with pytest.raises(ValueError, match="checksum do not match"):
        strip_checksum(codec, bytes(bad))


def test_intact_store_verifies(store_path):
    counts = open_store(store_path).verify()
    manifest = json.loads((store_path / "manifest.json").read_text())
    assert counts["chunks"] == sum(a["n"] for a in manifest["integrity"]["chunks"].values()) > 0
    assert manifest["integrity"]["checksum"] == "crc32c"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_bit_flips_are_caught_on_read_and_by_verify(copy, seed):
    rng = np.random.default_rng(seed)
    chunks = _chunks(copy, "sentence_end/hook_resid_post")
    chunk = chunks[rng.integers(len(chunks))]
    blob = bytearray(chunk.read_bytes())
    blob[rng.integers(len(blob))] ^= 1 << int(rng.integers(8))
    chunk.write_bytes(bytes(blob))
    store = open_store(copy)  # names and sizes are unchanged: opening cannot see it
    with pytest.raises(StoreError, match="checksum do not match"):
        store.get("blocks.0.hook_resid_post")
        store.get("blocks.1.hook_resid_post")
    with pytest.raises(StoreError, match=f"{chunk.name}: checksum mismatch"):
        store.verify()


def test_a_deleted_chunk_is_an_error_not_zeros(copy):
    _chunks(copy, "tokens/hook_resid_post")[3].unlink()
    with pytest.raises(StoreError, match=r"array tokens/hook_resid_post has \d+ chunk files, \d+ were written"):
        open_store(copy)


def test_a_half_copied_store_is_refused(store_path, tmp_path):
    """A copy cut short after some files (in walk order), manifest included, is not a finished store."""
    files = sorted(p for p in store_path.rglob("*") if p.is_file())
    for f in files[: len(files) // 2] + [store_path / "manifest.json"]:
        dest = tmp_path / "half" / f.relative_to(store_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    with pytest.raises(StoreError, match="half"):
        open_store(tmp_path / "half")


def test_labels_edited_or_cut_are_refused(copy):
    lines = (copy / "labels.jsonl").read_text().splitlines()
    a, b = json.loads(lines[0]), json.loads(lines[-1])
    a["emotion"], b["emotion"] = b["emotion"], a["emotion"]
    swapped = [json.dumps(a), *lines[1:-1], json.dumps(b)]
    (copy / "labels.jsonl").write_text("\n".join(swapped) + "\n")
    with pytest.raises(StoreError, match="labels.jsonl is missing or differs"):
        open_store(copy)
    (copy / "labels.jsonl").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(StoreError, match="labels.jsonl is missing or differs"):
        open_store(copy)


def test_metadata_edited_or_garbage_is_refused(copy):
    meta = copy / "mean" / "hook_resid_post" / "zarr.json"
    meta.write_text(meta.read_text().replace('"fill_value": 0', '"fill_value": 1'))
    with pytest.raises(StoreError, match=r"metadata \(zarr.json\) differs"):
        open_store(copy)
    meta.write_text("{not json")
    with pytest.raises(StoreError, match=r"metadata \(zarr.json\) differs"):
        open_store(copy)


def test_garbage_manifest_is_named(copy):
    (copy / "manifest.json").write_text("\x00\x01garbage")
    with pytest.raises(StoreError, match=r"manifest.json is damaged"):
        open_store(copy)


@pytest.mark.parametrize("array", ["scale/hook_resid_post", "lengths"])
def test_damaged_scale_or_lengths_chunk_names_the_array(copy, array):
    chunk = _chunks(copy, array)[0]
    chunk.write_bytes(chunk.read_bytes()[:-6] + b"\0\0\0\0\0\0")
    store = open_store(copy)
    with pytest.raises(StoreError, match=rf"cannot read {array} .* from .*copy"):
        store.tokens("blocks.1.hook_resid_post")


def test_an_older_format_is_refused_with_the_fix(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["integrity"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="store of format 1, this version reads format 2 .* extract it again"):
        open_store(copy)
