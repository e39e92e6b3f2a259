"""A file's block map (blockmap.py): the three forms it takes (no block, one
Slot, a dict), the moves between them under writes, truncates, hole punches
and copies, the hot fields kept by the buffer rather than by every slot, and
what a file and a block cost (issue 15, compact metadata)."""

from __future__ import annotations

import random
import sys
import time
import tracemalloc

from hypothesis import given, settings, strategies as st

from cctmpfs.blockmap import FILE_DATA_BYTES, SLOT_BYTES, FileData, MapCensus, Slot
from cctmpfs.check import check_all
from cctmpfs.codec import Codec
from cctmpfs.filemap import ACCESS_ENDS_MAX, BlockState
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem
from cctmpfs.ranges import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE

BS = 16384
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def user() -> Caller:
    return Caller(uid=int("1000"), gid=int("1000"))


def new_fs(**kw) -> Filesystem:  # type: ignore[no-untyped-def]
    args = dict(block_size=BS, codec=Codec("lz4"), buffer_bytes=64 * BS)
    args.update(kw)
    return Filesystem(**args)


def form(f: FileData) -> str:
    m = f.map
    return "none" if m is None else "slot" if type(m) is Slot else "dict"


def expected_form(n: int) -> str:
    return "none" if n == 0 else "slot" if n == 1 else "dict"


def read_all(fs: Filesystem, ino: int) -> bytes:
    return fs.read(ino, 0, fs.inodes[ino].data.size + 1)


# ---- the forms and the moves between them --------------------------------------------

def test_the_map_api_moves_between_the_forms_and_counts_dicts() -> None:
    f = FileData()
    census = MapCensus()
    a, b, c = (Slot(file=f, index=i) for i in (0, 7, 300))
    assert (form(f), f.count(), f.slots(), f.indexes(), f.slot(0)) == ("none", 0, [], [], None)
    f.put(b, census)
    assert form(f) == "slot" and f.map is b and f.slot(7) is b and f.slot(0) is None
    assert f.blocks == {7: b} and (census.dicts, census.dict_slots) == (0, 0)
    f.put(a, census)
    f.put(c, census)
    assert form(f) == "dict" and f.indexes() == [0, 7, 300] and f.count() == 3
    assert (census.dicts, census.dict_slots) == (1, 3)
    f.remove(b, census)
    assert form(f) == "dict" and (census.dicts, census.dict_slots) == (1, 2)
    f.remove(a, census)   # one left: back to the slot itself
    assert f.map is c and (census.dicts, census.dict_slots) == (0, 0)
    f.remove(c, census)
    assert f.map is None and f.count() == 0


def test_writes_truncates_and_punches_move_a_file_between_forms() -> None:
    fs = new_fs()
    ino = fs.create(ROOT_INO, b"f", 0o644, user()).ino
    f = fs.inodes[ino].data
    eng = fs.engine
    assert form(f) == "none"
    fs.write(ino, 0, b"a" * 100)
    assert form(f) == "slot" and f.map.index == 0
    fs.write(ino, 3 * BS + 5, b"b" * 10)          # a second block past a hole
    assert form(f) == "dict" and f.indexes() == [0, 3]
    assert (eng.maps.dicts, eng.maps.dict_slots) == (1, 2)
    fs.engine.seal_everything()
    fs.fallocate(ino, PUNCH, 0, BS)               # block 0 punched whole
    assert form(f) == "slot" and f.map.index == 3 and eng.maps.dicts == 0
    assert read_all(fs, ino) == bytes(3 * BS + 5) + b"b" * 10
    fs.write(ino, BS, b"c" * (2 * BS))            # blocks 1 and 2
    assert form(f) == "dict" and f.indexes() == [1, 2, 3]
    fs.setattr(ino, size=BS + 1)                  # down to block 1
    assert form(f) == "slot" and f.map.index == 1
    assert read_all(fs, ino) == bytes(BS) + b"c"
    fs.setattr(ino, size=0)
    assert form(f) == "none" and eng.maps.dicts == eng.maps.dict_slots == 0
    fs.fallocate(ino, FALLOC_FL_KEEP_SIZE, 0, 2 * BS)   # UNWRITTEN slots make a map too
    assert form(f) == "dict" and {s.state for s in f.slots()} == {BlockState.UNWRITTEN}
    assert check_all(fs) == []
    fs.release(ino)
    fs.unlink(ROOT_INO, b"f")
    fs.forget(ino, 1)
    assert eng.maps.dicts == eng.maps.dict_slots == 0
    assert check_all(fs) == []


def test_a_copy_shares_a_block_into_each_form() -> None:
    fs = new_fs()
    src = fs.create(ROOT_INO, b"src", 0o644, user()).ino
    data = bytes(random.Random(1).randbytes(2 * BS))
    fs.write(src, 0, data)
    dst = fs.create(ROOT_INO, b"dst", 0o644, user()).ino
    assert fs.copy_range(src, BS, dst, 0, BS) == BS          # into an empty map: a slot
    d = fs.inodes[dst].data
    assert form(d) == "slot" and d.map.stored is fs.inodes[src].data.slot(1).stored
    assert fs.copy_range(src, 0, dst, 4 * BS, BS) == BS      # a second block: a dict
    assert form(d) == "dict" and d.indexes() == [0, 4]
    assert fs.read(dst, 4 * BS, BS) == data[:BS] and fs.read(dst, 0, BS) == data[BS:]
    assert check_all(fs) == []


steps = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 5 * BS), st.integers(1, 2 * BS)),
    st.tuples(st.just("truncate"), st.integers(0, 6 * BS), st.just(0)),
    st.tuples(st.just("punch"), st.integers(0, 6 * BS), st.integers(1, 3 * BS)),
    st.tuples(st.just("read"), st.integers(0, 6 * BS), st.integers(1, 2 * BS)),
    st.tuples(st.just("seal"), st.just(0), st.just(0)),
), min_size=1, max_size=16)


@settings(max_examples=80, deadline=None)
@given(steps)
def test_reads_and_writes_agree_with_a_model_across_the_forms(ops) -> None:
    fs = new_fs(buffer_bytes=4 * BS)
    ino = fs.create(ROOT_INO, b"f", 0o644, user()).ino
    f = fs.inodes[ino].data
    model = bytearray()
    for i, (op, a, n) in enumerate(ops):
        if op == "write":
            buf = random.Random(i).randbytes(n)
            fs.write(ino, a, buf)
            if a > len(model):
                model.extend(bytes(a - len(model)))
            model[a:a + n] = buf
        elif op == "truncate":
            fs.setattr(ino, size=a)
            del model[a:]
            model.extend(bytes(a - len(model)))
        elif op == "punch":
            fs.fallocate(ino, PUNCH, a, n)
            e = min(a + n, len(model))
            if a < e:
                model[a:e] = bytes(e - a)
        elif op == "read":
            assert fs.read(ino, a, n) == bytes(model[a:a + n])
        else:
            fs.engine.seal_everything()
        assert form(f) == expected_form(f.count())
        assert f.size == len(model)
        assert check_all(fs) == []
    assert read_all(fs, ino) == bytes(model)


# ---- hot fields live in the buffer, access ends in the engine -----------------------

def test_a_sealed_block_carries_no_hot_fields() -> None:
    fs = new_fs()
    ino = fs.create(ROOT_INO, b"f", 0o644, user()).ino
    fs.write(ino, 0, b"x" * 3000)
    slot = fs.inodes[ino].data.map
    buf = fs.engine.buffer
    assert buf.charged(slot) == 3000 and slot.extent == 3000
    assert buf.state(slot) is BlockState.DIRTY
    fs.release(ino)
    fs.engine.seal_everything()
    assert slot not in buf.slots and buf.charged(slot) == 0
    assert slot.state is BlockState.STORED and slot.extent == 3000   # from the stored block
    assert not hasattr(slot, "__dict__")
    assert sys.getsizeof(slot) == SLOT_BYTES <= 80   # 112, plus a float and an int, before
    assert fs.read(ino, 0, 4096) == b"x" * 3000
    assert buf.state(slot) is BlockState.CACHED and buf.charged(slot) == 3000


def test_access_ends_are_dropped_at_close_and_bounded() -> None:
    fs = new_fs(buffer_bytes=1 << 30)
    eng = fs.engine
    a = fs.create(ROOT_INO, b"a", 0o644, user()).ino
    fs.write(a, 0, b"x" * 100)
    fs.read(a, 0, 50)
    fa = fs.inodes[a].data
    assert eng.write_ends[fa] == 100 and eng.read_ends[fa] == 50
    fs.release(a)
    assert fa not in eng.write_ends and fa not in eng.read_ends
    # A sequential writer is still recognised: its filled blocks queue for sealing.
    b = fs.create(ROOT_INO, b"b", 0o644, user()).ino
    for off in range(0, 2 * BS, 4096):
        fs.write(b, off, b"y" * 4096)
    fb = fs.inodes[b].data
    assert [s.index for s in eng.seal_queue if s.file is fb] == [0, 1]
    # Many files open at once: the table stays bounded, and the oldest goes.
    inos = [fs.create(ROOT_INO, b"n%d" % i, 0o644, user()).ino for i in range(ACCESS_ENDS_MAX + 10)]
    for ino in inos:
        fs.write(ino, 0, b"z")
    assert len(eng.write_ends) == ACCESS_ENDS_MAX
    assert fs.inodes[inos[-1]].data in eng.write_ends and fs.inodes[inos[0]].data not in eng.write_ends
    assert check_all(fs) == []


# ---- what a file and a block cost ---------------------------------------------------

def test_a_small_file_and_a_shared_block_cost_less_than_measured_bounds() -> None:
    """tracemalloc over small files as cp -a leaves them (one sealed block),
    everything counted: inode, name, entry, FileData, Slot, stored block
    record, index entry. benchmarks/metadata.py -n 100000 measured 1,178 bytes
    before the compact maps and 786 after; a dedup reference 252 and 164.
    Here 4,000 files: the bounds leave room for dict growth steps."""
    fs = new_fs(buffer_bytes=1 << 30)
    line = b"    return self.value + other  # comment %08d\n"
    n = 4000
    d = fs.mkdir(ROOT_INO, b"d", 0o755, user()).ino
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            ino = fs.create(d, b"name%06d" % i, 0o644, user()).ino
            fs.write(ino, 0, (line % i) * 64)
            fs.setattr(ino, atime_ns=time.time_ns(), mtime_ns=time.time_ns())
            fs.release(ino)
            fs.forget(ino, 1)
        fs.engine.seal_everything()
        fs.engine.buffer.slots.clear()   # the LRU dict keeps its peak: not the files' cost
        per_file = (tracemalloc.get_traced_memory()[0] - base) / n
        # A second copy of each block (dedup): a file's map, slot and no record.
        big = fs.create(ROOT_INO, b"big", 0o644, user()).ino
        blocks = [random.Random(i).randbytes(64) * (BS // 64) for i in range(n)]
        for i, blk in enumerate(blocks):
            fs.write(big, i * BS, blk)
        fs.release(big)
        fs.engine.seal_everything()
        fs.engine.buffer.slots.clear()
        base = tracemalloc.get_traced_memory()[0]
        copy = fs.create(ROOT_INO, b"copy", 0o644, user()).ino
        for i, blk in enumerate(blocks):
            fs.write(copy, i * BS, blk)
        fs.release(copy)
        fs.engine.seal_everything()
        fs.engine.buffer.slots.clear()
        per_ref = (tracemalloc.get_traced_memory()[0] - base) / n
    finally:
        tracemalloc.stop()
    print(f"{per_file:.0f} bytes per small file, {per_ref:.0f} per dedup reference")
    assert fs.store.counters.refs == fs.store.counters.blocks * 2 - n   # every copy shared
    assert per_file < 900, per_file
    assert per_ref < 200, per_ref
    assert FILE_DATA_BYTES <= 56 + 28   # FileData and its size int
    assert check_all(fs) == []
