"""The data engine (filemap.py) through namespace.Filesystem, against a bytearray model.

Every test drives the public Filesystem calls the FUSE adapter makes (create,
write, read, setattr(size=), release, unlink, forget) plus the engine's sealing
entry points, and checks the result byte for byte and the bookkeeping
(allocation, st_blocks, hot-buffer and block-store counters) against values
recomputed from the block maps.
"""

from __future__ import annotations

import errno
import random
import sys
import threading
import time
from typing import Callable, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cctmpfs.blockstore import StoreCounters
from cctmpfs.check import check_data
from cctmpfs.codec import Codec, CodecId
from cctmpfs.coldstore import Tally
from cctmpfs.errors import FsError
from cctmpfs.filemap import (CLEAN_COLD_SECONDS, DIRTY_COLD_SECONDS, MAX_FILE_SIZE, PAGE, SEAL_BATCH,
                              BlockState, pages)
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem
from cctmpfs.sealer import Sealer

from .conftest import FakeClock

BS = 16384
ME = Caller(uid=1000, gid=1000)
CODECS = ["zstd", "lz4", "none"]


# ---- data -------------------------------------------------------------------------

#: Block-sized contents that random writes reuse, so that identical blocks
#: appear in several files and places and dedup really shares them.
POOL = [random.Random(f"pool-{i}").randbytes(BS // 4) * 4 for i in range(3)]


def make_data(rng: random.Random, n: int, kind: Optional[int] = None) -> bytes:
    kind = rng.randrange(6) if kind is None else kind
    if kind == 5:
        return b"".join(rng.choice(POOL) for _ in range(n // BS + 1))[:n]
    if kind == 0:
        return bytes(n)
    if kind == 1:
        return rng.randbytes(n)
    if kind == 2:
        unit = rng.randbytes(rng.randrange(1, 40)) + b"\n"
        return (unit * (n // len(unit) + 1))[:n]
    if kind == 3:
        return bytes([rng.randrange(1, 256)]) * n
    out = bytearray(n)
    for _ in range(rng.randrange(1, 5)):
        out[rng.randrange(n)] = rng.randrange(1, 256)
    return bytes(out)


def text_data(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [b"alpha ", b"beta ", b"gamma\n", b"delta ", b"epsilon "]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words)
    return bytes(out[:n])


# ---- the harness ------------------------------------------------------------------

class Harness:
    """A Filesystem plus one bytearray model per regular file."""

    def __init__(self, codec: str = "zstd", bs: int = BS, buffer_blocks: int = 4,
                 size_limit: int = 0, ram_budget: int = 0, lock: object = None,
                 dedup: bool = True, pack_bytes: int = 0) -> None:
        self.clock = FakeClock()
        self.codec_name = codec
        self.fs = Filesystem(block_size=bs, codec=Codec(codec, 1), buffer_bytes=buffer_blocks * bs,
                             size_limit=size_limit, ram_budget=ram_budget, dedup=dedup,
                             pack_bytes=pack_bytes, clock_ns=self.clock.ns,
                             lock=lock)  # type: ignore[arg-type]
        self.fs.engine.clock = self.clock.seconds
        self.eng = self.fs.engine
        self.bs = bs
        self.models: dict[int, bytearray] = {}     # ino -> content
        self.names: dict[int, bytes] = {}          # ino -> name in the root
        self.serial = 0

    @classmethod
    def around(cls, fs: Filesystem, codec: str) -> "Harness":
        """A harness for a filesystem built elsewhere (models filled in by the caller)."""
        h = cls.__new__(cls)
        h.clock = FakeClock()
        h.codec_name = codec
        h.fs, h.eng, h.bs = fs, fs.engine, fs.block_size
        h.models, h.names, h.serial = {}, {}, 0
        return h

    # -- operations --
    def create(self) -> int:
        self.serial += 1
        name = b"file%d" % self.serial
        node = self.fs.create(ROOT_INO, name, 0o644, ME)
        self.models[node.ino] = bytearray()
        self.names[node.ino] = name
        return node.ino

    def growth(self, ino: int, off: int, n: int) -> int:
        """Allocation growth of writing [off, off+n), from the block map alone."""
        f = self.fs.inodes[ino].data
        end = off + n
        grow = 0
        for idx in range(off // self.bs, (end - 1) // self.bs + 1):
            start = idx * self.bs
            slot = f.blocks.get(idx)
            old = slot.page_mask if slot is not None else 0
            first = (max(off, start) - start) // PAGE
            last = (min(end, start + self.bs) - start - 1) // PAGE
            span = ((1 << (last - first + 1)) - 1) << first
            grow += PAGE * (span & ~old).bit_count()
        return grow

    def fitting_prefix(self, ino: int, off: int, n: int) -> int:
        """Bytes of a write at off that fit in size=, page by page, as tmpfs
        writes what fits and returns a short count."""
        limit = self.eng.size_limit
        if not limit or self.eng.alloc_bytes + self.growth(ino, off, n) <= limit:
            return n
        fit = 0
        while fit < n:
            step = min(n, (off + fit) // PAGE * PAGE + PAGE - off) - fit
            if self.eng.alloc_bytes + self.growth(ino, off, fit + step) > limit:
                break
            fit += step
        return fit

    def write(self, ino: int, off: int, data: bytes) -> bool:
        """Write; returns False if the write was refused with ENOSPC (checked).
        A write that fits only in part writes that part (a short count)."""
        fit = self.fitting_prefix(ino, off, len(data))
        fits = fit == len(data)
        before = bytes(self.models[ino])
        buffered_before = self.eng.buffer.total_bytes
        try:
            n = self.fs.write(ino, off, data)
        except FsError as e:
            assert e.errno == errno.ENOSPC, e
            assert fit == 0 or self.eng.ram_budget, "ENOSPC although part of the write fits in size="
            self.check()
            assert self.read_all(ino) == before
            return False
        assert n == fit, f"wrote {n} bytes, {fit} fit in size="
        data = data[:n]
        m = self.models[ino]
        if len(m) < off:
            m.extend(bytes(off - len(m)))
        m[off:off + len(data)] = data
        buf = self.eng.buffer
        # Within budget, or (after the test lowered the budget) no fuller than before.
        assert buf.total_bytes <= max(buf.budget, buffered_before), \
            "a write left the hot buffer over budget"
        return True

    def copy(self, src: int, dst: int) -> None:
        """Replace dst's content by src's, in block-sized writes, as cp does."""
        data = bytes(self.models[src])
        self.truncate(dst, 0)
        for off in range(0, len(data), self.bs):
            if not self.write(dst, off, data[off:off + self.bs]):
                return

    def read(self, ino: int, off: int, size: int) -> None:
        got = self.fs.read(ino, off, size)
        want = bytes(self.models[ino][off:off + size])
        assert len(got) == len(want), (off, size, len(got), len(want))
        assert got == want, f"read({off}, {size}) differs at {first_diff(got, want)}"

    def stream(self, ino: int, chunk: int, rng: random.Random) -> None:
        """Read the file from the start in chunks, as a sequential reader
        (cat, cp) does; the background pass runs meanwhile."""
        off = 0
        while off < len(self.models[ino]):
            self.read(ino, off, chunk)
            if rng.random() < 0.5:
                self.eng.background_pass()
                self.check()
            off += chunk

    def read_all(self, ino: int) -> bytes:
        return self.fs.read(ino, 0, self.fs.inodes[ino].data.size + 1)

    def truncate(self, ino: int, size: int) -> None:
        self.fs.setattr(ino, size=size)
        m = self.models[ino]
        if size < len(m):
            del m[size:]
        else:
            m.extend(bytes(size - len(m)))

    def reopen(self, ino: int) -> None:
        self.fs.release(ino)
        assert ino in self.fs.inodes
        assert self.fs.open(ino) == ino

    def delete(self, ino: int, order: tuple[str, ...] = ("unlink", "forget", "release")) -> None:
        steps: dict[str, Callable[[], None]] = {
            "unlink": lambda: self.fs.unlink(ROOT_INO, self.names[ino]),
            "forget": lambda: self.fs.forget(ino, 1),
            "release": lambda: self.fs.release(ino),
        }
        for step in order:
            assert ino in self.fs.inodes, f"inode freed before {step}"
            steps[step]()
        assert ino not in self.fs.inodes
        del self.models[ino]
        del self.names[ino]

    def delete_all(self) -> None:
        for ino in list(self.models):
            self.delete(ino)

    # -- checks --
    def content(self, slot) -> bytes:  # type: ignore[no-untyped-def]
        if slot.raw is not None:
            return bytes(slot.raw)
        return self.stored_content(slot.stored)

    def stored_content(self, st_) -> bytes:  # type: ignore[no-untyped-def]
        if st_.packed:   # a member of a pack (packing.py): its slice of the pack
            ref = st_.payload
            return self.stored_content(ref.pack)[ref.offset:ref.offset + ref.raw_len]
        if st_.in_ram:
            return self.eng.codec.decompress(st_.codec, self.fs.store.payload_bytes(st_), st_.raw_len)
        codec, payload = self.eng.cold.read(st_.payload, Tally())   # counts nothing shared
        return self.eng.codec.decompress(codec, payload, st_.raw_len)

    def check(self, sealing_allowed: bool = False) -> None:
        """Recompute every figure from the block maps and compare with the model."""
        fs, eng, bs = self.fs, self.eng, self.bs
        total_alloc = 0
        with_raw = set()
        stored: dict[int, tuple[object, int]] = {}
        data_inodes = {ino for ino, n in fs.inodes.items() if n.data is not None}
        assert data_inodes == set(self.models)
        for ino, model in self.models.items():
            node = fs.inodes[ino]
            f = node.data
            assert f.size == len(model) == node.size
            alloc = 0
            for idx, slot in f.blocks.items():
                start = idx * bs
                assert slot.file is f and slot.index == idx
                assert 0 < slot.extent <= bs
                assert start + slot.extent <= f.size, "allocation past end of file"
                assert slot.raw is not None or slot.stored is not None
                if slot.raw is not None:
                    assert len(slot.raw) == slot.extent
                    with_raw.add(id(slot))
                if slot.stored is not None:
                    assert slot.stored.raw_len == slot.extent
                    ent = stored.setdefault(id(slot.stored), (slot.stored, 0))
                    stored[id(slot.stored)] = (slot.stored, ent[1] + 1)
                if slot.raw is not None and slot.stored is not None:
                    assert self.stored_content(slot.stored) == bytes(slot.raw), \
                        "cached copy differs from its stored block"
                if not sealing_allowed:
                    assert slot not in eng.buffer.sealing
                assert self.content(slot) == bytes(model[start:start + slot.extent]), \
                    f"ino {ino} block {idx} content differs"
                tail = model[start + slot.extent:start + bs]
                assert tail.count(0) == len(tail), f"ino {ino} block {idx}: data beyond extent"
                assert slot.page_mask >> ((slot.extent + PAGE - 1) // PAGE) == 0, \
                    "allocated page past the block's extent"
                alloc += PAGE * slot.page_mask.bit_count()
            for idx in range(0, (len(model) + bs - 1) // bs):
                if idx not in f.blocks:
                    hole = model[idx * bs:(idx + 1) * bs]
                    assert hole.count(0) == len(hole), f"ino {ino}: data lost in hole {idx}"
            assert f.alloc_bytes == alloc
            assert node.blocks_512 * 512 == alloc
            total_alloc += alloc
        assert eng.alloc_bytes == total_alloc
        if eng.size_limit:
            assert eng.alloc_bytes <= eng.size_limit
        # hot buffer
        buf = eng.buffer
        assert {id(s) for s in buf.slots} == with_raw
        for s in buf.slots:
            assert buf.charged(s) == len(s.raw)
        assert buf.dirty_bytes == sum(buf.charged(s) for s in buf.slots if s.dirty)
        assert buf.clean_bytes == sum(buf.charged(s) for s in buf.slots if not s.dirty)
        # block store
        c = self.fs.store.counters
        # Blocks with a payload of their own: plain ones, and the packs of members.
        blocks = [b for b, _ in stored.values() if not b.packed]
        blocks += list({id(b.payload.pack): b.payload.pack for b, _ in stored.values() if b.packed}.values())
        assert c.blocks == len(blocks)
        assert c.stored_bytes == sum(b.payload_len for b in blocks if b.in_ram)
        assert c.raw_bytes == sum(b.raw_len for b in blocks)
        assert c.incompressible_blocks == sum(1 for b in blocks if b.codec == CodecId.RAW)
        for b, refs in stored.values():
            assert b.refs == refs
            assert not b.in_ram or b.payload_len <= b.raw_len
        if not sealing_allowed:   # quiescent: no reader is pinned, nothing waits for one
            assert (self.fs.store.arena.readers, self.fs.store.arena.deferred) == (0, [])
        assert check_data(fs) == []

    def check_zero_holes(self) -> None:
        """After sealing everything, no full all-zero block is allocated."""
        for ino in self.models:
            for idx, slot in self.fs.inodes[ino].data.blocks.items():
                if slot.extent == self.bs:
                    assert self.content(slot).count(0) != self.bs, f"zero block {idx} kept"

    def check_empty(self) -> None:
        assert len(self.fs.inodes) == 1
        assert self.fs.store.counters == StoreCounters()
        buf = self.eng.buffer
        assert (buf.dirty_bytes, buf.clean_bytes, len(buf.slots)) == (0, 0, 0)
        assert self.eng.alloc_bytes == 0
        self.eng.background_pass()
        assert self.eng.seal_queue == []
        assert self.fs.store.counters == StoreCounters()


def first_diff(a: bytes, b: bytes) -> Optional[int]:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ---- the random model test -----------------------------------------------------------

MAX_LEN = 12 * BS


def pick_offset(rng: random.Random, size: int) -> int:
    c = rng.randrange(6)
    if c == 0:
        off = size                                               # append
    elif c == 1:
        off = rng.randrange(0, size + 1)                         # inside
    elif c == 2:
        off = max(0, rng.randrange(0, 10) * BS + rng.randrange(-3, 4))   # near a boundary
    elif c == 3:
        off = size + rng.randrange(1, 3 * BS)                    # leave a sparse gap
    elif c == 4:
        off = rng.randrange(0, 10 * BS)
    else:
        off = size // BS * BS                                    # start of the last block
    return min(off, MAX_LEN - 1)


def pick_length(rng: random.Random, off: int) -> int:
    c = rng.randrange(5)
    if c == 0:
        n = rng.randrange(1, 64)
    elif c == 1:
        n = BS - off % BS                                        # to the end of the block
    elif c == 2:
        n = rng.randrange(1, 3 * BS)
    elif c == 3:
        n = BS * rng.randrange(1, 3)
    else:
        n = BS - off % BS + rng.randrange(1, 200)                # crossing a boundary
    return max(1, min(n, MAX_LEN - off))


def random_ops(h: Harness, rng: random.Random, n_ops: int) -> None:
    for _ in range(n_ops):
        if not h.models or (len(h.models) < 4 and rng.random() < 0.04):
            h.create()
        ino = rng.choice(sorted(h.models))
        size = len(h.models[ino])
        r = rng.random()
        if r < 0.41:
            off = pick_offset(rng, size)
            h.write(ino, off, make_data(rng, pick_length(rng, off)))
        elif r < 0.45:
            h.copy(rng.choice(sorted(h.models)), h.create() if len(h.models) < 6 else ino)
        elif r < 0.60:
            off = pick_offset(rng, size)
            h.read(ino, off, pick_length(rng, off))
        elif r < 0.70:
            choice = rng.randrange(4)
            new = [0, rng.randrange(0, size + 1), size + rng.randrange(1, 2 * BS),
                   max(0, rng.randrange(0, 10) * BS + rng.randrange(-2, 3))][choice]
            h.truncate(ino, min(new, MAX_LEN))
        elif r < 0.74:
            h.eng.seal_everything()
            h.check()
            if h.codec_name != "lz4":
                h.check_zero_holes()
        elif r < 0.82:
            h.clock.advance(rng.choice([0.1, 1.0, DIRTY_COLD_SECONDS, 5.0, CLEAN_COLD_SECONDS + 1]))
            h.eng.background_pass()
        elif r < 0.85:
            h.eng.make_room()
            assert h.eng.buffer.dirty_bytes == 0 and h.eng.buffer.clean_bytes == 0
        elif r < 0.89:
            h.reopen(ino)
        elif r < 0.92:
            h.delete(ino, tuple(rng.sample(["unlink", "forget", "release"], 3)))
        elif r < 0.95:
            h.eng.buffer.budget = rng.randrange(2, 9) * BS
        elif r < 0.97:
            h.stream(ino, rng.choice([4096, 8192, BS, 3 * BS // 2]), rng)
        else:
            assert h.read_all(ino) == bytes(h.models[ino])
        h.check()
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])
    h.eng.seal_everything()
    h.check()
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])
    h.delete_all()
    h.check_empty()


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("seed", range(6))
def test_random_model(codec: str, seed: int) -> None:
    rng = random.Random(f"{codec}-{seed}")
    h = Harness(codec, buffer_blocks=rng.choice([2, 3, 6]))
    random_ops(h, rng, 1000)


@pytest.mark.parametrize("seed", range(3))
def test_random_model_with_size_limit(seed: int) -> None:
    rng = random.Random(f"limit-{seed}")
    h = Harness("zstd", buffer_blocks=3, size_limit=rng.choice([5, 9, 14]) * BS + 3 * 4096)
    random_ops(h, rng, 1000)
    assert h.eng.counters.enospc > 0, "the limit was never reached: test too weak"


@pytest.mark.parametrize("seed", range(3))
def test_random_model_with_ram_budget(seed: int) -> None:
    """ENOSPC for ram= may come at any write; it must leave everything intact."""
    rng = random.Random(f"ram-{seed}")
    h = Harness(rng.choice(CODECS), buffer_blocks=2, ram_budget=rng.choice([4, 5, 6]) * BS)
    random_ops(h, rng, 1000)
    assert h.eng.counters.enospc > 0, "the budget was never reached: test too weak"


# ---- the same with hypothesis (shrinks to a minimal failing sequence) ---------------------

_files = st.integers(0, 2)
_offsets = st.one_of(st.integers(0, 9 * BS),
                     st.builds(lambda b, d: max(0, b * BS + d), st.integers(0, 8), st.integers(-3, 3)))
_lengths = st.one_of(st.integers(1, 100), st.integers(1, 3 * BS),
                     st.sampled_from([BS, BS - 1, BS + 1, 2 * BS]))
_ops = st.one_of(
    st.tuples(st.just("write"), _files, _offsets, _lengths, st.integers(0, 4), st.integers(0, 99)),
    st.tuples(st.just("truncate"), _files, _offsets),
    st.tuples(st.just("read"), _files, _offsets, _lengths),
    st.tuples(st.just("seal")),
    st.tuples(st.just("background"), st.sampled_from([0.5, DIRTY_COLD_SECONDS, CLEAN_COLD_SECONDS])),
    st.tuples(st.just("make_room")),
    st.tuples(st.just("reopen"), _files),
    st.tuples(st.just("delete"), _files),
    st.tuples(st.just("budget"), st.integers(2, 8)),
)


@pytest.mark.parametrize("codec", CODECS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_ops, max_size=60))
def test_hypothesis_model(codec: str, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    h = Harness(codec, buffer_blocks=3)
    slots: list[Optional[int]] = [None, None, None]

    def file(i: int) -> int:
        if slots[i] is None:
            slots[i] = h.create()
        return slots[i]  # type: ignore[return-value]

    for op in ops:
        kind = op[0]
        if kind == "write":
            _, i, off, n, data_kind, seed = op
            h.write(file(i), off, make_data(random.Random(seed), n, data_kind))
        elif kind == "truncate":
            h.truncate(file(op[1]), op[2])
        elif kind == "read":
            h.read(file(op[1]), op[2], op[3])
        elif kind == "seal":
            h.eng.seal_everything()
            if codec != "lz4":
                h.check()
                h.check_zero_holes()
        elif kind == "background":
            h.clock.advance(op[1])
            h.eng.background_pass()
        elif kind == "make_room":
            h.eng.make_room()
        elif kind == "reopen":
            h.reopen(file(op[1]))
        elif kind == "delete":
            if slots[op[1]] is not None:
                h.delete(slots[op[1]])  # type: ignore[arg-type]
                slots[op[1]] = None
        elif kind == "budget":
            h.eng.buffer.budget = op[1] * BS
        h.check()
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])
    h.delete_all()
    h.check_empty()


# ---- sealing --------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
def test_zero_blocks_become_holes_when_sealed(codec: str) -> None:
    h = Harness(codec, buffer_blocks=8)
    ino = h.create()
    h.write(ino, 0, text_data(BS))
    h.write(ino, BS, bytes(BS))               # an explicitly written zero block
    h.write(ino, 2 * BS, text_data(BS, 1))
    h.write(ino, 3 * BS, bytes(BS))           # a zero block at the end of the file
    f = h.fs.inodes[ino].data
    assert h.fs.inodes[ino].blocks_512 == 4 * BS // 512
    h.eng.seal_everything()
    h.check()
    assert h.eng.counters.zero_blocks == 2
    assert sorted(f.blocks) == [0, 2]
    assert h.fs.inodes[ino].blocks_512 == 2 * BS // 512
    assert f.size == 4 * BS
    assert h.read_all(ino) == bytes(h.models[ino])


def test_sequential_writer_queues_full_blocks_and_release_queues_the_rest() -> None:
    h = Harness("zstd", buffer_blocks=16)
    woken = []
    h.eng.wake_sealer = lambda: woken.append(1)
    ino = h.create()
    data = text_data(3 * BS + 100)
    for off in range(0, len(data), 4096):     # sequential 4 KiB writes
        h.write(ino, off, data[off:off + 4096])
    queued = {s.index for s in h.eng.seal_queue}
    assert queued == {0, 1, 2}
    assert not woken                          # fewer than a batch: the periodic pass takes them
    assert h.eng.background_pass() == 3
    f = h.fs.inodes[ino].data
    states = {i: s.state for i, s in f.blocks.items()}
    assert states == {0: BlockState.STORED, 1: BlockState.STORED, 2: BlockState.STORED,
                      3: BlockState.DIRTY}
    woken.clear()
    h.reopen(ino)                             # last close: the partial tail is queued
    assert [s.index for s in h.eng.seal_queue] == [3]
    h.eng.background_pass()
    assert f.blocks[3].state == BlockState.STORED
    h.check()
    assert h.read_all(ino) == data
    # A whole batch queued wakes the sealer at once.
    big = h.create()
    h.write(big, 0, text_data(SEAL_BATCH * BS))
    assert len(h.eng.seal_queue) == SEAL_BATCH
    assert woken


def test_random_writes_are_not_queued() -> None:
    h = Harness("zstd", buffer_blocks=16)
    ino = h.create()
    h.write(ino, 0, text_data(4 * BS))        # sequential: queues 4 blocks
    h.eng.background_pass()
    for off in (3 * BS + 5, BS + 7, 2 * BS):
        h.write(ino, off, b"x" * 100)
    assert h.eng.seal_queue == []
    h.check()


def test_background_pass_seals_cold_dirty_blocks_and_drops_cold_clean_copies() -> None:
    h = Harness("zstd", buffer_blocks=16)
    ino = h.create()
    h.write(ino, 5, text_data(BS - 5))        # not sequential from 0 at a block end: not queued
    h.write(ino, BS + 3, text_data(10, 1))
    f = h.fs.inodes[ino].data
    h.clock.advance(DIRTY_COLD_SECONDS / 2)
    assert h.eng.background_pass() == 0
    assert {s.state for s in f.blocks.values()} == {BlockState.DIRTY}
    h.clock.advance(DIRTY_COLD_SECONDS)
    assert h.eng.background_pass() == 2
    assert {s.state for s in f.blocks.values()} == {BlockState.STORED}
    assert h.eng.counters.seals == 2
    h.read(ino, 50, 100)                      # loads a clean copy of block 0
    assert f.blocks[0].state == BlockState.CACHED
    assert h.eng.counters.loads == 1
    h.clock.advance(DIRTY_COLD_SECONDS + 1)
    h.eng.background_pass()
    assert f.blocks[0].state == BlockState.CACHED   # not yet CLEAN_COLD_SECONDS old
    h.clock.advance(CLEAN_COLD_SECONDS)
    h.eng.background_pass()
    assert f.blocks[0].state == BlockState.STORED
    assert h.eng.counters.clean_drops == 1
    h.check()


def test_pressure_sealing_keeps_the_buffer_within_budget() -> None:
    h = Harness("zstd", buffer_blocks=2)
    ino = h.create()
    for i in range(10):                       # random order: nothing queued, all by pressure
        off = ((i * 7) % 10) * BS + 1
        h.write(ino, off, text_data(BS - 1, i))
        assert h.eng.buffer.total_bytes <= 2 * BS
    assert h.eng.counters.pressure_seals >= 8
    h.check()
    for i in range(10):                       # reads load clean copies, also within budget
        h.read(ino, i * BS, BS)
        assert h.eng.buffer.total_bytes <= 2 * BS
    h.check()


def test_make_room_seals_and_drops_everything() -> None:
    h = Harness("zstd", buffer_blocks=8)
    ino = h.create()
    h.write(ino, 1, text_data(3 * BS))
    h.eng.seal_everything()
    h.read(ino, 10, 100)                      # a clean copy
    h.write(ino, 5 * BS + 1, b"dirty")        # a dirty block
    assert h.eng.buffer.clean_bytes and h.eng.buffer.dirty_bytes
    h.eng.make_room()
    assert h.eng.buffer.total_bytes == 0
    assert not h.eng.buffer.slots
    h.check()
    assert h.read_all(ino) == bytes(h.models[ino])


def test_incompressible_blocks_are_stored_raw() -> None:
    h = Harness("zstd", buffer_blocks=8)
    ino = h.create()
    rng = random.Random(5)
    h.write(ino, 0, rng.randbytes(2 * BS) + text_data(BS))
    h.eng.seal_everything()
    c = h.fs.store.counters
    assert c.blocks == 3
    assert c.incompressible_blocks == 2
    h.check()
    assert h.read_all(ino) == bytes(h.models[ino])


def test_partial_overwrite_of_a_stored_block_keeps_the_rest() -> None:
    h = Harness("zstd", buffer_blocks=4)
    ino = h.create()
    h.write(ino, 0, text_data(3 * BS))
    h.eng.make_room()
    h.write(ino, BS + 100, b"X" * 50)         # modify the middle of a stored block
    h.write(ino, 2 * BS - 10, b"Y" * 20)      # straddle two stored blocks
    h.check()
    h.eng.make_room()
    h.check()
    assert h.read_all(ino) == bytes(h.models[ino])


def test_truncate_cuts_a_stored_block_and_regrowth_reads_zeros() -> None:
    h = Harness("zstd", buffer_blocks=4)
    ino = h.create()
    h.write(ino, 0, b"\xff" * (3 * BS))
    h.eng.make_room()
    h.truncate(ino, BS + 10)                  # cuts inside stored block 1
    h.check()
    h.truncate(ino, 3 * BS)                   # grows: a hole, not old bytes
    h.check()
    data = h.read_all(ino)
    assert data == b"\xff" * (BS + 10) + bytes(2 * BS - 10)
    assert h.fs.inodes[ino].blocks_512 == (BS + pages(10)) // 512
    h.truncate(ino, 0)
    assert h.fs.inodes[ino].blocks_512 == 0
    assert h.fs.store.counters == StoreCounters()
    h.check()


def test_truncate_to_same_size_keeps_the_block_map() -> None:
    h = Harness("zstd")
    ino = h.create()
    h.write(ino, 0, text_data(BS + 5))
    h.eng.seal_everything()
    f = h.fs.inodes[ino].data
    before = {i: (s.state, s.generation) for i, s in f.blocks.items()}
    h.truncate(ino, BS + 5)
    assert {i: (s.state, s.generation) for i, s in f.blocks.items()} == before


def test_st_blocks_counts_pages_written() -> None:
    h = Harness("zstd")
    ino = h.create()
    node = h.fs.inodes[ino]
    h.write(ino, 0, b"a")
    assert node.blocks_512 == 8               # one 4 KiB page
    h.write(ino, 4096, b"b")
    assert node.blocks_512 == 16
    h.write(ino, 5 * BS, b"c")                # a far block: one more page, no more
    assert node.blocks_512 == 24
    h.truncate(ino, 10 * BS)
    assert node.blocks_512 == 24
    h.check()


# ---- large files, limits ------------------------------------------------------------------

def test_sparse_file_beyond_4gib_allocates_only_what_is_written() -> None:
    h = Harness("zstd")
    ino = h.create()
    off = 5 * 1024 ** 3 + 3 * BS              # block-aligned: see the next test for mid-block
    assert h.fs.write(ino, off, b"hello") == 5
    node = h.fs.inodes[ino]
    assert node.size == off + 5
    assert node.blocks_512 == 8
    assert h.eng.alloc_bytes == 4096
    assert h.fs.read(ino, off - 3, 10) == b"\0\0\0hello"
    assert h.fs.read(ino, 2 ** 32 - 10, 20) == bytes(20)
    assert h.fs.read(ino, 0, 1 << 20) == bytes(1 << 20)
    h.eng.seal_everything()
    assert h.fs.read(ino, off, 100) == b"hello"
    assert h.fs.store.counters.blocks == 1
    h.fs.setattr(ino, size=off + 2)           # cut inside the sealed block
    assert h.fs.read(ino, off - 1, 10) == b"\0he"
    h.models[ino] = bytearray()               # too big for a model: delete it directly
    h.fs.setattr(ino, size=0)
    h.delete_all()
    h.check_empty()


@pytest.mark.parametrize("boff", [4096, 2 * 4096, BS - 4096])
def test_sparse_write_inside_a_block_allocates_only_its_pages(boff: int) -> None:
    """tmpfs allocates the pages written, not the unwritten start of a block:
    st_blocks and the size= accounting must not charge the hole before boff."""
    h = Harness("zstd")
    ino = h.create()
    h.write(ino, 7 * BS + boff, b"x" * 100)   # one page, in the middle of an empty block
    node = h.fs.inodes[ino]
    assert node.blocks_512 == 4096 // 512
    assert h.eng.alloc_bytes == 4096


def test_truncate_to_a_petabyte_allocates_nothing() -> None:
    h = Harness("zstd")
    ino = h.create()
    h.fs.write(ino, 0, b"start")
    pb = 2 ** 50
    h.fs.setattr(ino, size=pb)
    node = h.fs.inodes[ino]
    assert node.size == pb
    assert node.blocks_512 == 8
    assert h.eng.alloc_bytes == 4096
    assert h.fs.read(ino, pb - 10, 100) == bytes(10)
    assert h.fs.read(ino, pb, 100) == b""
    assert h.fs.read(ino, 0, 8) == b"start\0\0\0"
    h.fs.setattr(ino, size=5)
    h.models[ino] = bytearray(b"start")
    h.check()
    h.delete_all()
    h.check_empty()


def test_efbig_past_the_maximum_file_size() -> None:
    h = Harness("zstd")
    ino = h.create()
    assert MAX_FILE_SIZE == 2 ** 63 - 1
    h.fs.write(ino, 0, b"keep")
    with pytest.raises(FsError) as e:
        h.fs.write(ino, MAX_FILE_SIZE, b"x")
    assert e.value.errno == errno.EFBIG
    with pytest.raises(FsError) as e:
        h.fs.write(ino, MAX_FILE_SIZE - 1, b"xy")
    assert e.value.errno == errno.EFBIG
    with pytest.raises(FsError) as e:
        h.fs.setattr(ino, size=MAX_FILE_SIZE + 1)
    assert e.value.errno == errno.EFBIG
    node = h.fs.inodes[ino]
    assert node.size == 4 and h.eng.alloc_bytes == 4096
    # The last byte a file can have is at MAX_FILE_SIZE - 1.
    assert h.fs.write(ino, MAX_FILE_SIZE - 1, b"z") == 1
    assert node.size == MAX_FILE_SIZE
    assert h.fs.read(ino, MAX_FILE_SIZE - 2, 10) == b"\0z"
    assert h.fs.read(ino, 0, 4) == b"keep"
    assert sorted(node.data.blocks) == [0, (MAX_FILE_SIZE - 1) // BS]
    h.fs.setattr(ino, size=4)
    h.models[ino] = bytearray(b"keep")
    h.check()
    h.fs.setattr(ino, size=MAX_FILE_SIZE)     # truncate up to the maximum is fine
    assert node.size == MAX_FILE_SIZE
    h.fs.setattr(ino, size=4)
    h.check()


def test_enospc_at_size_limit_leaves_data_intact() -> None:
    h = Harness("zstd", size_limit=4 * BS)
    a, b = h.create(), h.create()
    rng = random.Random(1)
    assert h.write(a, 0, make_data(rng, 3 * BS, 1))
    assert h.write(b, 0, make_data(rng, BS - 100, 2))     # exactly the limit, in pages
    assert h.eng.alloc_bytes == 4 * BS
    snapshot = {i: bytes(m) for i, m in h.models.items()}
    for ino, off, n in ((b, BS, 1), (a, 3 * BS, 1), (b, 10 * BS, 1), (a, 3 * BS + 5, BS)):
        assert not h.write(ino, off, b"\x01" * n)
    assert h.eng.counters.enospc == 4
    assert {i: h.read_all(i) for i in h.models} == snapshot
    # A write from allocated pages into unallocated ones stops at the limit,
    # with a short count, as on tmpfs (Harness.write checks the count).
    assert h.write(a, 3 * BS - 5, b"\x01" * 10)
    assert h.read_all(a) == snapshot[a][:3 * BS - 5] + b"\x01" * 5
    assert h.write(a, 3 * BS - 5, snapshot[a][3 * BS - 5:])
    # Overwrites within allocated pages still work, as does filling the last page.
    assert h.write(a, 100, b"over")
    assert h.write(b, BS - 100, b"\x02" * 100)
    # Sealing turns zero blocks into holes and frees their pages for others.
    h.write(a, BS, bytes(BS))
    h.eng.seal_everything()
    assert h.eng.alloc_bytes == 3 * BS
    assert h.write(b, 10 * BS, b"now it fits")
    h.delete(a)
    assert h.write(b, 20 * BS, b"\x03" * BS)
    h.check()
    h.delete_all()
    h.check_empty()


def test_enospc_at_ram_budget_leaves_data_intact() -> None:
    ram = 6 * BS
    h = Harness("zstd", buffer_blocks=2, ram_budget=ram)
    rng = random.Random(2)
    a = h.create()
    written = 0
    refused = 0
    for i in range(20):                       # incompressible: each block costs its size
        try:
            n = h.fs.write(a, i * BS, rng.randbytes(BS))
        except FsError as e:
            assert e.errno == errno.ENOSPC
            refused += 1
            break
        assert n == BS
        written += 1
    assert refused == 1 and 1 <= written < 20
    h.models[a] = bytearray(h.read_all(a))
    assert len(h.models[a]) == written * BS
    assert h.eng.ram_in_use() <= ram
    snapshot = bytes(h.models[a])
    for off in (written * BS, 50 * BS):
        try:
            h.fs.write(a, off, rng.randbytes(BS))
        except FsError as e:
            assert e.errno == errno.ENOSPC
        else:
            pytest.fail("write past the RAM budget accepted")
    assert h.read_all(a) == snapshot
    assert h.fs.inodes[a].size == written * BS
    assert h.eng.counters.enospc == 3
    h.check()
    # Compressible data still fits: the budget is RAM, not logical bytes.
    b = h.create()
    h.truncate(a, 0)
    for i in range(40):
        assert h.write(b, i * BS, b"\x07" * BS)
    h.check()
    assert h.read_all(b) == bytes(h.models[b])
    h.delete_all()
    h.check_empty()


def test_overwrite_in_place_at_the_ram_budget_needs_no_more_ram() -> None:
    """tmpfs never refuses an overwrite of allocated data. At the RAM budget,
    replacing a stored incompressible block with new incompressible data of the
    same size frees exactly the RAM it takes, so it must not get ENOSPC."""
    ram = 6 * BS
    h = Harness("zstd", buffer_blocks=2, ram_budget=ram)
    rng = random.Random(3)
    a = h.create()
    for i in range(6):
        assert h.write(a, i * BS, rng.randbytes(BS))
    h.eng.make_room()
    assert h.eng.ram_in_use() == ram          # stored raw: full
    assert h.write(a, 0, rng.randbytes(BS))   # whole-block overwrite
    h.eng.make_room()
    assert h.eng.ram_in_use() == ram
    h.check()


def test_small_appends_and_overwrites_take_the_in_place_path(monkeypatch) -> None:
    """tar writes 10 KiB records: the first write of a block (from its
    start) and the appends and overwrites inside it after that take the
    in-place path (_write_in_place), with the same content, sizes, page
    counts and buffer charges as the general path; a write across blocks
    takes the general path, and at the size= limit the general path takes
    over and writes what fits."""
    h = Harness("zstd", buffer_blocks=8, size_limit=2 * BS + BS // 2)
    general: list[int] = []
    apply = h.eng._apply_write
    monkeypatch.setattr(h.eng, "_apply_write",
                        lambda f, off, data: (general.append(off), apply(f, off, data))[1])
    rng = random.Random(7)
    a = h.create()
    piece = 5000                                   # not a multiple of a page
    off = 0
    while off + piece <= 2 * BS:
        assert h.write(a, off, make_data(rng, piece, 1))
        off += piece
    # The one general write: the one that crosses into block 1.
    assert general == [BS // piece * piece]
    assert h.eng.buffer.dirty_bytes == sum(s.extent for s in h.fs.inodes[a].data.blocks.values())
    h.check()
    general.clear()
    assert h.write(a, 100, b"over")                # overwrite
    assert h.write(a, BS + 7, b"x" * 3000)         # overwrite across a page boundary
    assert general == []
    # At the size= limit the in-place path steps aside, and the general
    # path writes the pages that fit (Harness.write checks the short count).
    b = h.create()
    assert h.write(b, 0, b"\x05" * PAGE)
    assert h.write(b, PAGE, b"\x06" * (BS // 2))
    assert h.eng.alloc_bytes == h.eng.size_limit
    # A new block's first write past the limit: refused whole, nothing stored.
    c = h.create()
    general.clear()
    with pytest.raises(FsError) as e:
        h.eng.write(h.fs.inodes[c].data, 0, b"\x07" * PAGE)
    assert e.value.errno == errno.ENOSPC and general == []
    assert h.fs.inodes[c].data.blocks == {} and h.eng.alloc_bytes == h.eng.size_limit
    assert h.read_all(a) == bytes(h.models[a]) and h.read_all(b) == bytes(h.models[b])
    h.eng.seal_everything()
    h.check()
    h.delete_all()
    h.check_empty()


# ---- lock released mid-operation: deterministic interleavings ----------------------------

class InterleavingLock:
    """A global lock whose release() runs the next queued callback, as another
    thread would run while the core has the lock released."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []
        self.releases = 0

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        self.releases += 1
        if self.hooks:
            self.hooks.pop(0)()


def two_stored_blocks() -> tuple[InterleavingLock, Harness, int]:
    """A file of two blocks of text, sealed and out of the buffer, under an
    InterleavingLock: the next read or write of a block releases the lock."""
    lock = InterleavingLock()
    h = Harness("zstd", lock=lock)
    ino = h.create()
    h.write(ino, 0, text_data(2 * BS))
    h.eng.make_room()
    return lock, h, ino


def test_write_during_sealing_discards_the_stale_result() -> None:
    lock = InterleavingLock()
    h = Harness("zstd", lock=lock)
    ino = h.create()
    h.write(ino, 0, text_data(BS))
    lock.hooks.append(lambda: h.write(ino, 100, b"NEW"))
    h.eng.seal_everything()
    assert not lock.hooks
    assert h.eng.counters.seals_discarded == 1
    # seal_everything goes round again and seals the new content.
    h.check()
    assert h.fs.inodes[ino].data.blocks[0].state == BlockState.STORED
    assert h.read_all(ino) == bytes(h.models[ino])
    assert h.read_all(ino)[100:103] == b"NEW"


def test_truncate_during_sealing_discards_and_leaks_nothing() -> None:
    lock = InterleavingLock()
    h = Harness("zstd", lock=lock)
    ino = h.create()
    h.write(ino, 0, text_data(2 * BS))
    lock.hooks.append(lambda: h.truncate(ino, 10))
    h.eng.seal_everything()
    assert h.eng.counters.seals_discarded >= 1
    h.check()
    h.eng.seal_everything()
    h.check()
    assert h.read_all(ino) == text_data(10)
    h.delete_all()
    h.check_empty()


def test_delete_during_sealing_leaks_nothing() -> None:
    lock = InterleavingLock()
    h = Harness("zstd", lock=lock)
    ino = h.create()
    h.write(ino, 0, text_data(3 * BS))
    lock.hooks.append(lambda: h.delete(ino))
    h.eng.seal_everything()
    assert h.eng.counters.seals_discarded == 3
    h.check_empty()


def test_write_to_the_same_block_while_another_write_loads_it() -> None:
    lock, h, ino = two_stored_blocks()
    lock.hooks.append(lambda: h.write(ino, 5000, b"SECOND"))
    h.write(ino, 100, b"FIRST")               # loads block 0: the hook runs meanwhile
    h.check()
    data = h.read_all(ino)
    assert data[100:105] == b"FIRST" and data[5000:5006] == b"SECOND"
    assert data == bytes(h.models[ino])


def test_overwrite_while_a_read_decompresses() -> None:
    lock = InterleavingLock()
    h = Harness("zstd", lock=lock)
    ino = h.create()
    old = text_data(BS)
    h.write(ino, 0, old)
    h.eng.make_room()
    new = text_data(BS, 9)
    lock.hooks.append(lambda: h.write(ino, 0, new))
    got = h.fs.read(ino, 0, BS)
    assert got in (old, new)
    h.check()
    assert h.read_all(ino) == new


def test_a_stream_reads_stored_blocks_without_buffering_them() -> None:
    """A sequential reader of whole blocks gets each stored block decoded
    and returned (read._stream_block), never charged to the hot buffer; a
    random read still caches its block for the reads that follow."""
    h = Harness("zstd")
    ino = h.create()
    h.write(ino, 0, text_data(3 * BS))
    h.eng.make_room()
    assert h.eng.buffer.total_bytes == 0
    assert h.fs.read(ino, 0, BS) == bytes(h.models[ino][:BS])
    assert h.fs.read(ino, BS, BS) == bytes(h.models[ino][BS:2 * BS])
    assert h.eng.counters.loads == 2 and h.eng.counters.clean_drops == 0
    assert h.eng.buffer.total_bytes == 0
    f = h.fs.inodes[ino].data
    assert {s.state for s in f.blocks.values()} == {BlockState.STORED}
    assert h.fs.read(ino, 2 * BS + 100, 50) == bytes(h.models[ino][2 * BS + 100:2 * BS + 150])
    assert f.blocks[2].state == BlockState.CACHED and h.eng.counters.loads == 3
    h.check()


def test_reads_inside_a_buffered_block_are_slices_of_it() -> None:
    """A read inside one buffered block (dirty, or a clean cached copy) is a
    slice of it, with zeros past its extent, and loads nothing."""
    h = Harness("zstd")
    ino = h.create()
    h.write(ino, 0, text_data(BS))            # block 0: the request kept as bytes
    h.write(ino, BS, text_data(100, 1))
    h.write(ino, BS + 100, text_data(50, 2))  # block 1: a bytearray, extent 150
    h.truncate(ino, BS + 5000)                # zeros after block 1's extent
    model = bytes(h.models[ino])
    assert h.fs.read(ino, 10, 4096) == model[10:4106]
    assert h.fs.read(ino, 0, BS) == model[:BS]
    assert h.fs.read(ino, BS + 20, 100) == model[BS + 20:BS + 120]
    assert h.fs.read(ino, BS + 50, 4096) == model[BS + 50:BS + 4146]   # past the extent
    h.eng.make_room()
    assert h.fs.read(ino, 100, 10) == model[100:110]     # loads a clean copy of block 0
    assert h.fs.read(ino, 3 * PAGE, PAGE) == model[3 * PAGE:4 * PAGE]
    assert h.eng.counters.loads == 1
    assert h.fs.inodes[ino].data.blocks[0].state == BlockState.CACHED
    h.check()


def test_a_stream_read_sees_a_write_made_while_it_decodes() -> None:
    lock, h, ino = two_stored_blocks()
    assert h.fs.read(ino, 0, BS) == bytes(h.models[ino][:BS])
    new = text_data(BS, 9)
    lock.hooks.append(lambda: h.write(ino, BS, new))   # runs while block 1 is decoded
    assert h.fs.read(ino, BS, BS) == new      # the decoded old block is not returned
    assert lock.hooks == []
    h.check()


def test_truncate_while_it_loads_the_cut_block() -> None:
    lock, h, ino = two_stored_blocks()
    lock.hooks.append(lambda: h.write(ino, BS + 20, b"late"))
    h.truncate(ino, BS + 100)                 # loads block 1; a write lands meanwhile
    h.check()
    assert h.read_all(ino) == bytes(h.models[ino])


def test_a_block_being_sealed_is_not_sealed_twice() -> None:
    lock = InterleavingLock()
    h = Harness("zstd", lock=lock)
    calls: list[int] = []
    real = h.eng.codec.compress
    h.eng.codec.compress = lambda raw: (calls.append(len(raw)), real(raw))[1]  # type: ignore[method-assign]
    ino = h.create()
    h.write(ino, 0, text_data(2 * BS))
    # Another thread seals (pressure, background, settle) while the first compresses.
    lock.hooks.append(lambda: (h.eng.make_room(), h.eng.background_pass(), h.eng.seal_everything()))
    h.eng.seal_everything()
    assert calls == [BS, BS]
    assert h.eng.counters.seals == 2 and h.eng.counters.seals_discarded == 0
    h.check()


def test_write_growing_a_block_while_a_read_spans_it() -> None:
    """A read keeps no view of a block's buffer across a lock release, so a
    writer may resize it meanwhile."""
    lock = InterleavingLock()
    h = Harness("zstd", lock=lock)
    ino = h.create()
    h.write(ino, BS, text_data(100))          # block 1
    h.eng.make_room()                         # block 1 stored: reading it releases the lock
    h.write(ino, 0, b"a" * 100)
    h.write(ino, 50, b"b" * 10)               # block 0: a bytearray, extent 100
    assert isinstance(h.fs.inodes[ino].data.blocks[0].raw, bytearray)
    before = bytes(h.models[ino])
    lock.hooks.append(lambda: h.write(ino, 100, b"c" * 50))   # grows block 0 in place
    got = h.fs.read(ino, 0, BS + 100)
    assert got in (before, bytes(h.models[ino]))
    h.check()
    assert h.read_all(ino) == bytes(h.models[ino])


def test_make_room_in_a_write_lets_others_run() -> None:
    lock = InterleavingLock()
    ram = 6 * BS
    h = Harness("zstd", buffer_blocks=6, ram_budget=ram, lock=lock)
    a, b = h.create(), h.create()
    h.write(a, 0, text_data(5 * BS))          # dirty, compressible: make_room frees it
    # The next write does not fit uncompressed: make_room seals, releasing the lock.
    lock.hooks.append(lambda: h.write(b, 0, b"other"))
    assert h.write(a, 5 * BS, text_data(2 * BS, 3))
    assert h.eng.counters.pressure_seals >= 5
    h.check()
    assert h.read_all(b) == b"other"


# ---- real threads, a real lock, the real sealer -----------------------------------------

class LockedCalls:
    """Calls into the core with the global lock held, as llfuse's handlers are."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __call__(self, fn: Callable, *args, **kw):  # type: ignore[no-untyped-def,type-arg]
        with self.lock:
            return fn(*args, **kw)


THREAD_ITERATIONS = 1500


@pytest.mark.parametrize("codec", CODECS)
def test_threads_with_the_sealer(codec: str) -> None:
    lock = threading.Lock()
    fs = Filesystem(block_size=BS, codec=Codec(codec, 1), buffer_bytes=4 * BS, lock=lock)
    call = LockedCalls(lock)
    errors: list[BaseException] = []
    sealer = Sealer(fs.engine, lock, on_error=errors.append)

    private_n, shared_n, iterations = 3, 3, THREAD_ITERATIONS
    stripe = 700                               # shared file: thread t owns stripes t, t+3, ...
    shared_len = 8 * BS

    with lock:
        shared = fs.create(ROOT_INO, b"shared", 0o644, ME).ino
        static = fs.create(ROOT_INO, b"static", 0o644, ME).ino
        privates = [fs.create(ROOT_INO, b"p%d" % i, 0o644, ME).ino for i in range(private_n)]
    static_data = text_data(5 * BS, 42) + random.Random(1).randbytes(BS)
    call(fs.write, static, 0, static_data)
    call(fs.engine.make_room)                  # stored: readers decompress
    models: dict[int, bytearray] = {}
    shared_models: list[bytearray] = [bytearray(shared_len) for _ in range(shared_n)]

    def private_writer(t: int) -> None:
        rng = random.Random(f"{codec}-private-{t}")
        ino = privates[t]
        model = bytearray()
        for _ in range(iterations):
            r = rng.random()
            size = len(model)
            if r < 0.6:
                off = min(pick_offset(rng, size), 8 * BS)
                data = make_data(rng, min(pick_length(rng, off), 8 * BS + 1000 - off))
                call(fs.write, ino, off, data)
                if len(model) < off:
                    model.extend(bytes(off - len(model)))
                model[off:off + len(data)] = data
            elif r < 0.7:
                new = rng.choice([0, rng.randrange(size + 1), size + rng.randrange(1, BS)])
                call(fs.setattr, ino, size=new)
                if new < len(model):
                    del model[new:]
                else:
                    model.extend(bytes(new - len(model)))
            elif r < 0.75:
                call(fs.release, ino)
                call(fs.open, ino)
            elif r < 0.78:
                call(fs.engine.make_room)
            else:
                off = rng.randrange(size + 1)
                n = rng.randrange(1, 3 * BS)
                got = call(fs.read, ino, off, n)
                if got != bytes(model[off:off + n]):
                    raise AssertionError(f"private file {t}: read({off}, {n}) mismatch")
        models[ino] = model

    def shared_writer(t: int) -> None:
        rng = random.Random(f"{codec}-shared-{t}")
        model = shared_models[t]
        mine = [s for s in range(shared_len // stripe) if s % shared_n == t]
        for _ in range(iterations):
            s = rng.choice(mine)
            a = s * stripe + rng.randrange(stripe)
            b = min(s * stripe + stripe, a + rng.randrange(1, stripe), shared_len)
            if rng.random() < 0.8:
                data = make_data(rng, b - a)
                call(fs.write, shared, a, data)
                model[a:b] = data
            else:
                got = call(fs.read, shared, a, b - a)
                want = bytes(model[a:b])
                # Bytes past the current end of file read as short; never as wrong data.
                if got != want[:len(got)]:
                    raise AssertionError(f"shared writer {t}: read({a}, {b - a}) mismatch")

    def reader(k: int) -> None:
        rng = random.Random(f"{codec}-reader-{k}")
        for _ in range(iterations // 10):
            if k == 0:                         # random reads
                for _ in range(10):
                    off = rng.randrange(len(static_data))
                    n = rng.randrange(1, 2 * BS)
                    if call(fs.read, static, off, n) != static_data[off:off + n]:
                        raise AssertionError(f"static file: read({off}, {n}) mismatch")
            else:                              # sequential scans
                chunk = rng.choice([4096, 8192, BS])
                got = b"".join(call(fs.read, static, off, chunk)
                               for off in range(0, len(static_data), chunk))
                if got != static_data:
                    raise AssertionError(f"static file: scan in {chunk}-byte reads mismatch")

    def guarded(fn: Callable, *args) -> Callable[[], None]:  # type: ignore[type-arg]
        def run() -> None:
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
        return run

    threads = ([threading.Thread(target=guarded(private_writer, t)) for t in range(private_n)]
               + [threading.Thread(target=guarded(shared_writer, t)) for t in range(shared_n)]
               + [threading.Thread(target=guarded(reader, k)) for k in range(2)])
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    sealer.start()
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert not any(th.is_alive() for th in threads), "a thread hung (deadlock?)"
    finally:
        sys.setswitchinterval(old_interval)
        sealer.stop()
    assert not errors, errors
    c = fs.engine.counters
    assert c.seals > 0 and c.loads > 0 and c.pressure_seals > 0

    # The shared file: the union of every writer's stripes.
    expected = bytearray(shared_len)
    for s in range(shared_len // stripe + 1):
        lo, hi = s * stripe, min(shared_len, s * stripe + stripe)
        expected[lo:hi] = shared_models[s % shared_n][lo:hi]
    h = Harness.around(fs, codec)              # reuse the checks on this filesystem
    with lock:
        h.models = {**models, static: bytearray(static_data)}
        got_shared = fs.read(shared, 0, shared_len + 1)
        h.models[shared] = bytearray(got_shared)
        assert got_shared == bytes(expected[:len(got_shared)])
        assert expected[len(got_shared):].count(0) == len(expected) - len(got_shared)
        for ino, model in h.models.items():
            assert fs.read(ino, 0, len(model) + 1) == bytes(model), f"ino {ino} differs"
        h.check()
        fs.engine.seal_everything()
        h.check()
        for ino, model in h.models.items():
            assert fs.read(ino, 0, len(model) + 1) == bytes(model), f"ino {ino} differs after sealing"
        h.names = {ino: name for name, ino in fs.inodes[ROOT_INO].entries.items()}
        h.delete_all()
        h.check_empty()


def wait_for(cond: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll cond (a generous limit: this asserts an outcome, not a duration)."""
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


def test_sealer_seals_on_wake_and_survives_errors() -> None:
    lock = threading.Lock()
    fs = Filesystem(block_size=BS, codec=Codec("zstd", 1), buffer_bytes=64 * BS, lock=lock)
    errors: list[BaseException] = []
    sealer = Sealer(fs.engine, lock, on_error=errors.append)
    real_pass = fs.engine.background_pass
    calls = {"n": 0}

    def flaky_pass() -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real_pass()

    fs.engine.background_pass = flaky_pass  # type: ignore[method-assign]
    sealer.start()
    try:
        with lock:
            ino = fs.create(ROOT_INO, b"f", 0o644, ME).ino
            fs.write(ino, 0, text_data(3 * BS))      # sequential: queues 3 full blocks, wakes
        wait_for(lambda: errors, "the first pass failing")
        assert isinstance(errors[0], RuntimeError)
        with lock:
            fs.write(ino, 3 * BS, text_data(10))
            fs.release(ino)                           # last close: queues the tail, wakes
        wait_for(lambda: fs.engine.counters.seals == 4, "all four blocks sealed")
        with lock:
            assert {s.state for s in fs.inodes[ino].data.blocks.values()} == {BlockState.STORED}
            assert fs.engine.buffer.dirty_bytes == 0
            fs.open(ino)
            assert fs.read(ino, 0, 4 * BS) == text_data(3 * BS) + text_data(10)
    finally:
        sealer.stop()
    assert len(errors) == 1
    assert not sealer._thread.is_alive()


def test_seal_everything_waits_for_blocks_another_thread_is_sealing() -> None:
    """Settled stats must not show a block that the sealer thread is still
    compressing: seal_everything() waits for it (with the lock released)."""
    lock = threading.Lock()
    h = Harness("zstd", lock=lock)
    started, go = threading.Event(), threading.Event()
    real = h.eng.codec.compress

    def slow(raw):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "other-sealer":
            started.set()
            go.wait(10)
        return real(raw)

    h.eng.codec.compress = slow  # type: ignore[method-assign]
    with lock:
        ino = h.create()
        h.write(ino, 0, text_data(BS))

    def other() -> None:
        with lock:
            h.eng.seal_everything()

    t = threading.Thread(target=other, name="other-sealer")
    t.start()
    assert started.wait(10)
    timer = threading.Timer(0.2, go.set)
    timer.start()
    with lock:
        assert [h.eng.buffer.state(s) for s in h.eng.buffer.slots] == [BlockState.SEALING]
        h.eng.seal_everything()
        assert list(h.eng.buffer.slots) == [] and h.fs.store.counters.blocks == 1
        assert h.eng.sealing_threads == {}
    t.join(10)
    timer.join()
    with lock:
        h.check()
