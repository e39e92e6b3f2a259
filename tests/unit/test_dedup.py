"""Deduplication: the content index of the block store, sharing at sealing,
copy-on-write, collisions, leaks, concurrency and the RAM cost per block."""

from __future__ import annotations

import random
import threading
import tracemalloc

import pytest

from cctmpfs import stats
from cctmpfs.blockstore import BlockStore, StoreCounters, fingerprint
from cctmpfs.check import check_data
from cctmpfs.codec import Codec, CodecId
from cctmpfs.namespace import ROOT_INO, Filesystem

from .conftest import run_alongside, sealer_passes
from .test_filemap import BS, ME, POOL, Harness, make_data, random_ops, text_data


def new_fs(**kw) -> Filesystem:  # type: ignore[no-untyped-def]
    args = dict(block_size=BS, codec=Codec("zstd", 3), buffer_bytes=64 * BS)
    args.update(kw)
    return Filesystem(**args)


def write_file(fs: Filesystem, name: bytes, data: bytes) -> int:
    ino = fs.create(ROOT_INO, name, 0o644, ME).ino
    for off in range(0, len(data), BS):
        fs.write(ino, off, data[off:off + BS])
    fs.release(ino)
    return ino


def read_file(fs: Filesystem, ino: int) -> bytes:
    return fs.read(ino, 0, fs.inodes[ino].data.size + 1)


def delete(fs: Filesystem, name: bytes, ino: int) -> None:
    fs.unlink(ROOT_INO, name)
    fs.forget(ino, 1)


# ---- the store on its own ------------------------------------------------------------

ZSTD = Codec("zstd", 3)
LZ4 = Codec("lz4")


def test_publish_shares_identical_content_and_frees_at_last_reference() -> None:
    store = BlockStore()
    raw = text_data(BS)
    fp = fingerprint(raw)
    cid, payload = ZSTD.compress(raw)
    a = store.publish(cid, payload, fp)
    b = store.publish(cid, bytes(payload), fp)          # equal bytes, another object
    assert a is b and a.refs == 2 and a.raw_len == BS
    c = store.counters
    assert (c.blocks, c.refs, c.stored_bytes, c.raw_bytes, c.referenced_raw_bytes) == \
        (1, 2, len(payload), BS, 2 * BS)
    assert store.dedup_counters.shared == 1
    store.unref(a)
    assert store.index == {fp: a} and c.blocks == 1
    store.unref(a)
    assert store.index == {} and c == StoreCounters()


def test_same_fingerprint_other_encoding_is_stored_apart_and_unindexed() -> None:
    store = BlockStore()
    one, two = text_data(BS, seed=1), text_data(BS, seed=2)
    a = store.publish(*ZSTD.compress(one), 7)
    b = store.publish(*ZSTD.compress(two), 7)           # a collision
    lz = store.publish(*LZ4.compress(one), 7)           # same content, other codec
    assert len({id(a), id(b), id(lz)}) == 3
    assert store.index == {7: a} and store.counters.unindexed_blocks == 2
    store.unref(a)                                      # the indexed one goes first
    assert store.index == {} and store.counters.unindexed_blocks == 2
    store.unref(b)
    store.unref(lz)
    assert store.counters == StoreCounters()


def test_dedup_off_never_shares() -> None:
    store = BlockStore(dedup=False)
    a = store.publish(CodecId.RAW, b"p")
    b = store.publish(CodecId.RAW, b"p")
    assert a is not b and store.index == {} and a.fingerprint is None


def test_reference_to_a_freed_block_is_refused() -> None:
    store = BlockStore()
    a = store.publish(CodecId.RAW, b"x", 1)
    store.unref(a)
    with pytest.raises(AssertionError):
        store.ref(a)


# ---- sharing through the filesystem ------------------------------------------------------

def test_copies_share_blocks_and_a_write_to_one_is_copy_on_write() -> None:
    fs = new_fs()
    data = text_data(5 * BS + 1000, seed=3)
    inos = [write_file(fs, b"f%d" % i, data) for i in range(4)]
    fs.engine.seal_everything()
    c = fs.store.counters
    assert c.blocks == 6 and c.refs == 24
    one_copy = c.stored_bytes
    assert fs.store.dedup_counters.shared == 18
    assert fs.engine.counters.compressions_skipped >= 17   # one racing seal may compress twice

    fs.write(inos[1], 2 * BS + 10, b"CHANGED")          # copy-on-write of one block
    fs.setattr(inos[2], size=BS + 5)                   # truncate another copy
    fs.engine.seal_everything()
    assert read_file(fs, inos[0]) == data and read_file(fs, inos[3]) == data
    changed = bytearray(data)
    changed[2 * BS + 10:2 * BS + 17] = b"CHANGED"
    assert read_file(fs, inos[1]) == changed
    assert read_file(fs, inos[2]) == data[:BS + 5]
    assert c.blocks == 8                               # + the changed block, + the cut one
    assert c.stored_bytes < one_copy * 1.5
    assert check_data(fs) == []

    for i, ino in enumerate(inos):
        delete(fs, b"f%d" % i, ino)
    assert c == StoreCounters() and fs.store.index == {}


def test_identical_blocks_inside_one_file_are_stored_once() -> None:
    fs = new_fs()
    ino = write_file(fs, b"f", POOL[0] * 8 + POOL[1] * 8)
    fs.engine.seal_everything()
    assert fs.store.counters.blocks == 2 and fs.store.counters.refs == 16
    assert read_file(fs, ino) == POOL[0] * 8 + POOL[1] * 8


def test_sharing_survives_read_back_and_reseal() -> None:
    """A cached copy of a shared block is clean: dropping it loses nothing."""
    fs = new_fs()
    a = write_file(fs, b"a", POOL[2] * 3)
    b = write_file(fs, b"b", POOL[2] * 3)
    fs.engine.seal_everything()
    assert read_file(fs, a) == POOL[2] * 3
    fs.engine.make_room()
    assert read_file(fs, b) == POOL[2] * 3
    assert fs.store.counters.blocks == 1 and check_data(fs) == []


def test_zero_blocks_stay_holes_with_dedup() -> None:
    fs = new_fs()
    ino = write_file(fs, b"z", bytes(3 * BS) + b"x" + bytes(100))
    fs.write(ino, 4 * BS, bytes(5000))               # a short all-zero tail block
    fs.engine.seal_everything()
    f = fs.inodes[ino].data
    assert sorted(f.blocks) == [3]
    assert fs.engine.counters.zero_blocks == 4
    assert fs.store.counters.blocks == 1
    assert read_file(fs, ino) == bytes(3 * BS) + b"x" + bytes(BS - 1 + 5000)


def test_a_fingerprint_collision_never_returns_wrong_data() -> None:
    """Every block gets the same fingerprint: only the byte check tells them apart."""
    fs = new_fs()
    fs.store.fingerprint = lambda raw: 42
    rng = random.Random(5)
    contents = [make_data(rng, BS, kind=rng.choice([1, 2, 3])) for _ in range(6)]
    inos = [write_file(fs, b"f%d" % i, contents[i % 6]) for i in range(12)]
    fs.engine.seal_everything()
    for i, ino in enumerate(inos):
        assert read_file(fs, ino) == contents[i % 6]
    c = fs.store.counters
    assert fs.store.dedup_counters.verify_mismatches > 0
    assert len(fs.store.index) == 1 and c.unindexed_blocks == c.blocks - 1
    assert check_data(fs) == []
    for i, ino in enumerate(inos):
        delete(fs, b"f%d" % i, ino)
    assert c == StoreCounters() and fs.store.index == {}


def test_dedup_off_stores_every_copy() -> None:
    fs = new_fs(dedup=False)
    data = text_data(3 * BS)
    for i in range(3):
        write_file(fs, b"f%d" % i, data)
    fs.engine.seal_everything()
    assert fs.store.counters.blocks == 9 and fs.store.index == {}
    s = stats.collect(fs)
    assert s["dedup"]["enabled"] is False and s["dedup_ratio"] == 1.0


def test_stats_of_dedup() -> None:
    fs = new_fs()
    data = text_data(4 * BS, seed=9)
    for i in range(10):
        write_file(fs, b"f%d" % i, data)
    write_file(fs, b"zeros", bytes(2 * BS))
    fs.engine.seal_everything()
    s = stats.collect(fs)
    c = fs.store.counters
    assert s["logical_bytes"] == 40 * BS
    assert s["sealed_logical_bytes"] == 40 * BS
    assert s["stored_logical_bytes"] == 4 * BS
    assert s["stored_bytes"] == c.stored_bytes
    assert s["dedup_ratio"] == 10.0
    assert s["compression_ratio"] == round(4 * BS / c.stored_bytes, 3)
    assert s["total_ratio"] == round(40 * BS / c.stored_bytes, 3)
    assert s["dedup"]["saved_blocks"] == 36 and s["dedup"]["saved_bytes"] == 36 * BS
    assert s["dedup"]["index_entries"] == 4 and s["dedup"]["enabled"] is True
    assert s["zero_blocks"] == 2
    assert s["dedup"]["index_bytes"] == fs.store.index_bytes() > 0
    assert s["blocks"]["stored"] == 40


# ---- no leaks ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_randomized_copies_overwrites_truncates_and_unlinks_leak_nothing(seed: int) -> None:
    """The shared random model (copies and pooled blocks included) ends with
    every file deleted; check_empty() then asserts an empty store and index."""
    rng = random.Random(f"dedup-{seed}")
    h = Harness("zstd", buffer_blocks=rng.choice([2, 4]))
    random_ops(h, rng, 1500)
    assert h.fs.store.dedup_counters.shared > 20, "too little sharing: test too weak"
    assert h.fs.store.index == {}


# ---- concurrency -------------------------------------------------------------------------

def test_concurrent_writers_of_identical_content_end_with_one_copy() -> None:
    """Eight threads write the same content to their own files and seal under
    pressure, while a sealer thread runs its passes: one stored copy remains."""
    lock = threading.Lock()
    fs = new_fs(lock=lock, buffer_bytes=4 * BS)
    data = b"".join(POOL) + text_data(3 * BS + 777, seed=1)
    distinct = 7   # three pooled blocks, three text blocks, one short tail
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for rep in range(6):
                name = b"t%d-%d" % (t, rep)
                with lock:
                    ino = fs.create(ROOT_INO, name, 0o644, ME).ino
                for off in range(0, len(data), BS):
                    with lock:
                        fs.write(ino, off, data[off:off + BS])
                with lock:
                    fs.release(ino)
                    assert read_file(fs, ino) == data
                    if rep % 2:
                        delete(fs, name, ino)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    run_alongside([threading.Thread(target=writer, args=(t,)) for t in range(8)], sealer_passes(fs, lock))
    assert errors == []
    with lock:
        fs.engine.seal_everything()
        c = fs.store.counters
        assert c.blocks == distinct
        assert c.refs == 8 * 3 * distinct
        assert check_data(fs) == []
        for node in list(fs.inodes.values()):
            if node.data is not None:
                assert read_file(fs, node.ino) == data


# ---- RAM per block -----------------------------------------------------------------------

@pytest.mark.parametrize("n", [
    512 * 1024,       # a 64 GiB /tmp of 128 KiB blocks
    2 ** 20 // 3 + 1,  # just after the index dict doubled: the most per block
])
def test_ram_per_stored_block_is_under_200_bytes_and_matches_the_estimate(n: int) -> None:
    """n distinct stored blocks.

    Measured with tracemalloc: the fingerprint, the payload's arena handle
    and owner-list slot, the record and the index entry, all made inside the
    window as sealing makes them. The payload bytes themselves are in the
    arena's mmap segments, which tracemalloc does not see."""
    store = BlockStore()
    keep = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            # The record's size does not depend on the payload's, nor on the
            # block's length (the payload knows it), so small RAW payloads do.
            payload = i.to_bytes(8, "little")
            keep.append(store.publish(CodecId.RAW, payload, fingerprint(payload)))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    measured = (after - before - keep.__sizeof__()) / n
    print(f"{n} blocks: {measured:.1f} bytes per block measured, "
          f"{store.index_bytes() / n:.1f} estimated")
    estimate = store.index_bytes() / n
    assert measured < 200, f"{measured:.0f} bytes per stored block"
    assert abs(estimate - measured) / measured < 0.1, (estimate, measured)
