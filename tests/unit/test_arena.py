"""The payload arena (arena.py): handles, segments released when they empty,
pins, compaction under the lock discipline, and an arena that cannot grow.
Through the Arena directly and through a Filesystem, with the invariant
checker after each step. No FUSE mount."""

from __future__ import annotations

import errno
import random
import threading

import pytest

from cctmpfs import arena as arena_mod
from cctmpfs import faults
from cctmpfs.arena import (MAX_SPARES, NEW, Arena, ArenaFull, handle, handle_length,
                           handle_offset, handle_raw_len, handle_segment)
from cctmpfs.check import check_all
from cctmpfs.errors import FsError

from .conftest import run_alongside
from .test_filemap import BS, ME, Harness, text_data

SEG = 64 * 1024


class Owner:
    """What the arena needs of a block: a payload attribute and refs."""

    def __init__(self) -> None:
        self.payload: object = None
        self.refs = 1


@pytest.fixture(autouse=True)
def _disarm():
    yield
    faults.disarm()


def store(a: Arena, data: bytes) -> Owner:
    o = Owner()
    o.payload = a.alloc(o, data, raw_len=len(data) * 3)
    return o


def kill(a: Arena, o: Owner) -> None:
    o.refs = 0
    a.free(o.payload)  # type: ignore[arg-type]


def test_a_handle_carries_segment_offset_length_and_decoded_length() -> None:
    h = handle(segment=(1 << 20) - 1, offset=(1 << 23) - 1, length=(1 << 23) - 1, raw_len=1 << 20)
    assert (handle_segment(h), handle_offset(h), handle_length(h), handle_raw_len(h)) == \
        ((1 << 20) - 1, (1 << 23) - 1, (1 << 23) - 1, 1 << 20)
    assert h < 2 ** 90   # a 36-byte int


def test_payloads_read_back_and_an_emptied_segment_is_released() -> None:
    a = Arena(SEG)
    rng = random.Random(1)
    owners = {}
    for i in range(100):
        data = rng.randbytes(rng.randrange(1, 5000))
        o = store(a, data)
        owners[id(o)] = (o, data)
    assert a.live_bytes == sum(len(d) for _o, d in owners.values())
    for o, data in owners.values():
        assert a.read(o.payload) == data and a.equals(o.payload, data)
        assert handle_raw_len(o.payload) == 3 * len(data)
    segs = len(a.segments)
    assert segs >= 4 and a.mapped_bytes == segs * SEG
    # Free everything outside the NEW head: those segments are released, the
    # first MAX_SPARES kept (resident) as spares, the others unmapped.
    head = a.heads[NEW]
    for o, _d in list(owners.values()):
        if handle_segment(o.payload) != head.id:
            kill(a, o)
    assert list(a.segments.values()) == [head]
    assert len(a.spares) == MAX_SPARES
    assert a.counters.segments_released == segs - 1
    assert a.mapped_bytes == (1 + MAX_SPARES) * SEG
    # The head, emptied, is rewound in place rather than released.
    for o, _d in list(owners.values()):
        if o.refs:
            kill(a, o)
    assert a.live_bytes == 0 and head.fill == 0 and a.segments == {head.id: head}
    # Released ids are reused, so handles stay small.
    o = store(a, b"x" * (SEG - 10))
    o2 = store(a, b"y" * 100)
    assert handle_segment(o2.payload) < segs


def test_a_pinned_segment_outlives_its_payloads_until_unpinned() -> None:
    a = Arena(SEG)
    first = [store(a, b"%d" % i * 1000) for i in range(20)]
    store(a, b"z" * SEG)   # the head moves on: the first segment is an ordinary one
    victim = first[0]
    h = victim.payload
    view = a.pin(h)
    seg_id = handle_segment(h)
    for o in first:
        if handle_segment(o.payload) == seg_id:
            kill(a, o)
    assert seg_id in a.segments          # pinned: still mapped
    assert bytes(view) == b"0" * 1000    # and the view still reads the payload
    a.unpin(view)
    assert seg_id not in a.segments


def test_read_unlocked_is_none_once_the_block_moved_or_died() -> None:
    a = Arena(SEG)
    o = store(a, b"payload")
    assert a.read_unlocked(o) == b"payload"
    o.payload = o.payload + 1           # a move gives a new handle object: not the one read
    assert a.read_unlocked(o) is not None  # (this one is live where it says)
    kill(a, o)
    assert a.read_unlocked(o) is None


def test_an_arena_at_its_limit_refuses_new_payloads_and_changes_nothing() -> None:
    a = Arena(SEG, limit=2 * SEG)
    kept = [store(a, b"k" * 30000) for _ in range(4)]   # 2 segments
    before = (a.live_bytes, a.used_bytes, len(a.segments))
    with pytest.raises(ArenaFull):
        store(a, b"n" * 30000)
    assert a.full and (a.live_bytes, a.used_bytes, len(a.segments)) == before
    kill(a, kept[0])
    assert not a.full   # room may be found again: a free clears it


def remove(h: Harness, ino: int) -> None:
    """Delete a file that fill_files closed already."""
    h.delete(ino, order=("unlink", "forget"))


def fill_files(h: Harness, n: int, size: int, seed: int = 0, noise: int = 0) -> list[int]:
    inos = []
    for i in range(n):
        ino = h.create()
        data = text_data(size, seed=seed * 100_000 + i) + b"%d" % i
        if noise:
            data = random.Random(i).randbytes(noise) + data
        assert h.write(ino, 0, data)
        h.fs.release(ino)
        inos.append(ino)
    return inos


@pytest.fixture
def small_segments(monkeypatch):
    """Segments of 4 blocks and compaction from 2 segments of free space, so
    a few hundred KiB of files exercise it."""
    monkeypatch.setattr(arena_mod, "SEGMENT_BYTES", 4 * BS)
    monkeypatch.setattr(arena_mod, "COMPACT_MIN_FREE_SEGMENTS", 2)


def test_compaction_empties_sparse_segments_and_keeps_every_payload(small_segments) -> None:
    h = Harness("zstd", buffer_blocks=8)
    inos = fill_files(h, 600, 2000, noise=1000)
    h.eng.seal_everything()
    a = h.fs.store.arena
    rng = random.Random(2)
    for ino in rng.sample(inos, 480):    # a partial rm -rf: 80% of the files, scattered
        remove(h, ino)
    assert check_all(h.fs) == []
    assert a.needs_compaction(), (a.reclaimable_bytes, a.compaction_target())
    free_before, segs_before = a.free_bytes, len(a.segments)
    assert a.reclaimable_bytes > a.compaction_target()
    moved = h.fs.store.compact(h.fs.lock, 1 << 30)
    assert moved > 0 and a.counters.compactions > 0
    assert a.reclaimable_bytes <= a.compaction_target() and a.free_bytes < free_before
    assert len(a.segments) < segs_before
    assert check_all(h.fs) == []
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])
    assert h.fs.store.compact(h.fs.lock, 1 << 30) == 0   # nothing left to gain


class CallbackLock:
    """A global lock stand-in whose release() runs a callback: what another
    thread would do while the lock is released."""

    def __init__(self) -> None:
        self.on_release = None

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        cb, self.on_release = self.on_release, None
        if cb is not None:
            cb()


def test_compaction_drops_the_moves_of_blocks_freed_while_it_copies(small_segments) -> None:
    lock = CallbackLock()
    h = Harness("zstd", buffer_blocks=8, lock=lock)
    inos = fill_files(h, 600, 2000, noise=1000)
    h.eng.seal_everything()
    rng = random.Random(3)
    for ino in rng.sample(inos, 400):
        remove(h, ino)
    a = h.fs.store.arena
    victim = a._victims()[0]
    in_victim = [ino for ino in h.models
                 if handle_segment(h.fs.inodes[ino].data.blocks[0].stored.payload) == victim.id]
    assert in_victim

    def meanwhile() -> None:   # while the first slice copies: its blocks die
        for ino in in_victim:
            remove(h, ino)

    lock.on_release = meanwhile
    h.fs.store.compact(lock, 1 << 30)
    assert a.counters.moves_dropped >= len(in_victim)
    assert victim.id not in a.segments or a.segments[victim.id] is not victim
    assert check_all(h.fs) == []
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])


def test_reads_decode_from_a_pinned_segment_that_compaction_empties(small_segments) -> None:
    """A reader decodes unlocked from its pinned view while compaction moves
    the block and empties the segment: the segment stays mapped until the
    reader unpins, and the read returns the right bytes."""
    lock = CallbackLock()
    h = Harness("zstd", buffer_blocks=8, lock=lock)
    inos = fill_files(h, 600, 2000, noise=1000)
    h.eng.seal_everything()
    for ino in random.Random(4).sample(inos, 400):
        remove(h, ino)
    a = h.fs.store.arena
    victim = a._victims()[0]
    ino = next(i for i in h.models
               if handle_segment(h.fs.inodes[i].data.blocks[0].stored.payload) == victim.id)

    def compact_meanwhile() -> None:
        h.fs.store.compact(lock, 1 << 30)
        assert a.segments.get(victim.id) is victim and victim.live_blocks == 0   # kept: pinned
        assert victim in a.deferred

    lock.on_release = compact_meanwhile
    assert h.fs.read(ino, 0, 1 << 20) == bytes(h.models[ino])
    assert a.segments.get(victim.id) is not victim   # released at the unpin
    assert check_all(h.fs) == []


def test_an_arena_that_cannot_grow_gives_enospc_and_loses_nothing() -> None:
    h = Harness("zstd", buffer_blocks=4)
    kept = fill_files(h, 40, 9000, seed=1)
    h.eng.seal_everything()
    a = h.fs.store.arena
    faults.arm("arena.grow:1")   # every new mapping fails, as with ENOMEM
    ino = h.create()
    rng = random.Random(6)
    written = bytearray()
    for i in range(1000):        # incompressible blocks, until the arena is full
        data = rng.randbytes(BS)
        try:
            h.fs.write(ino, len(written), data)
        except FsError as e:
            assert e.errno == errno.ENOSPC
            break
        written += data
    else:
        pytest.fail("the writer never got ENOSPC")
    h.models[ino][:] = written
    assert a.full and h.eng.counters.seals_arena_full > 0
    # The blocks the arena could not take stay dirty: over the buffer's
    # budget by what the last accepted write added, no more.
    assert h.eng.buffer.dirty_bytes <= h.eng.buffer.budget + BS
    with faults.suspended():
        assert check_all(h.fs) == []
        for i in kept + [ino]:
            assert h.read_all(i) == bytes(h.models[i])   # nothing written is lost
    with pytest.raises(FsError) as e:
        h.fs.write(ino, len(written), b"more")     # still full: refused again
    assert e.value.errno == errno.ENOSPC
    faults.disarm()
    h.eng.seal_everything()     # the dirty blocks are stored once the arena can grow
    assert not a.full and h.eng.buffer.dirty_bytes == 0
    assert h.write(ino, len(written), b"more")
    assert check_all(h.fs) == []
    for i in kept + [ino]:
        assert h.read_all(i) == bytes(h.models[i])


def test_a_full_arena_tries_again_when_nothing_is_left_to_free() -> None:
    """Mapping failed and the dirty blocks that could not be stored were
    deleted: no free will ever clear `full`, so the next write that needs RAM
    maps again, and works once mapping works."""
    h = Harness("zstd", buffer_blocks=4)
    a = h.fs.store.arena
    faults.arm("arena.grow:1")
    ino = h.create()
    rng = random.Random(7)
    with pytest.raises(FsError) as e:
        for i in range(100):
            h.fs.write(ino, i * BS, rng.randbytes(BS))
    assert e.value.errno == errno.ENOSPC and a.full and a.live_bytes == 0
    h.fs.release(ino)
    remove(h, ino)
    with pytest.raises(FsError):                  # still failing: still ENOSPC
        h.fs.write(h.create(), 0, rng.randbytes(4 * BS))
    faults.disarm()                               # mapping works again
    ino = h.create()
    assert h.write(ino, 0, rng.randbytes(4 * BS))
    h.eng.seal_everything()
    assert not a.full and a.live_bytes > 0
    assert check_all(h.fs) == []


def test_deleting_everything_returns_the_arena_to_nothing_once_idle() -> None:
    """RSS follows live data: once every file is gone, the arena maps at most
    the two heads and the spares, whatever it held before, and once idle,
    nothing."""
    h = Harness("zstd", bs=128 * 1024, buffer_blocks=8)
    rng = random.Random(5)
    for i in range(40):
        ino = h.create()
        h.write(ino, 0, rng.randbytes(100_000) + text_data(200_000, seed=i))
        h.fs.release(ino)
    h.eng.seal_everything()
    a = h.fs.store.arena
    assert a.mapped_bytes >= 4 << 20
    for ino in list(h.models):
        remove(h, ino)
    assert a.live_bytes == 0
    assert a.mapped_bytes <= (2 + MAX_SPARES) * a.segment_bytes
    h.eng.background_pass()
    h.eng.background_pass()     # a pass that finds nothing stored since the last: idle
    assert a.mapped_bytes == 0 and a.counters.idle_unmapped > 0
    assert check_all(h.fs) == []
    ino = h.create()            # and it starts again from nothing
    assert h.write(ino, 0, text_data(300_000, seed=99))
    h.eng.seal_everything()
    assert h.read_all(ino) == bytes(h.models[ino])
    assert check_all(h.fs) == []


def test_compaction_and_eviction_free_payloads_at_their_handles(tmp_path, small_segments) -> None:
    """Evicted payloads leave the arena (their room is dead space that
    compaction takes back), read-backs enter it again."""
    from .test_eviction import with_device
    h = Harness("zstd", buffer_blocks=2, ram_budget=24 * BS)
    with_device(h, str(tmp_path / "back"), device_segments=256)
    fill_files(h, 400, 2000, seed=2, noise=2000)
    h.eng.seal_everything()
    h.eng.background_pass()
    c = h.fs.store.counters
    assert c.device_blocks > 0
    assert h.fs.store.arena.live_bytes == c.stored_bytes
    assert check_all(h.fs) == []
    for ino in list(h.models)[::3]:
        h.fs.read(ino, 100, 10)         # random reads bring blocks back to RAM
    h.eng.background_pass()
    assert check_all(h.fs) == []
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])


def test_threads_writing_deleting_and_reading_while_the_sealer_compacts(small_segments,
                                                                        monkeypatch) -> None:
    monkeypatch.setattr(arena_mod, "COMPACT_MIN_FREE_SEGMENTS", 0)
    monkeypatch.setattr(arena_mod, "COMPACT_FREE_FRACTION", 0.05)
    lock = threading.Lock()
    h = Harness("zstd", buffer_blocks=8, lock=lock)
    fs = h.fs
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: dict[bytes, tuple[int, bytes]] = {}
        try:
            for step in range(300):
                with lock:
                    if mine and rng.random() < 0.4:
                        name = rng.choice(sorted(mine))
                        ino, data = mine[name]
                        if rng.random() < 0.5:
                            assert fs.read(ino, 0, 1 << 20) == data, name
                        else:
                            fs.unlink(1, name)
                            fs.forget(ino, 1)
                            del mine[name]
                    else:
                        name = b"w%d-%d" % (seed, step)
                        data = text_data(rng.randrange(100, 3 * BS), seed=seed * 1000 + step)
                        node = fs.create(1, name, 0o644, ME)
                        fs.write(node.ino, 0, data)
                        fs.release(node.ino)
                        mine[name] = (node.ino, data)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def background(stop: threading.Event) -> None:
        while not stop.is_set():
            with lock:
                fs.engine.background_pass()
                fs.store.compact(lock, 1 << 20)

    run_alongside([threading.Thread(target=worker, args=(i,)) for i in range(2)], background)
    assert errors == []
    with lock:
        assert check_all(fs) == []
        assert fs.store.arena.counters.bytes_moved > 0, "compaction never ran: the test is too weak"


def busy_compacted_after_deletes(seed: int, deleted: int) -> Harness:
    """600 sealed files, `deleted` of them removed at random, and the
    compaction the busy passes do: the state the idle pass starts from."""
    h = Harness("zstd", buffer_blocks=8)
    inos = fill_files(h, 600, 2000, noise=1000)
    h.eng.seal_everything()
    for ino in random.Random(seed).sample(inos, deleted):
        remove(h, ino)
    h.fs.store.compact(h.fs.lock, 1 << 30)
    return h


def test_a_quiet_mount_compacts_to_the_idle_bound(small_segments, monkeypatch) -> None:
    """Busy, compaction leaves up to COMPACT_FREE_FRACTION of the live
    payloads free; once the mount is quiet, the idle pass compacts down to
    COMPACT_IDLE_FRACTION, keeping every payload."""
    from cctmpfs import filemap
    from cctmpfs.filemap import COMPACT_QUIET_SECONDS
    monkeypatch.setattr(arena_mod, "COMPACT_MIN_FREE_SEGMENTS", 0)   # the fractions alone
    monkeypatch.setattr(arena_mod, "COMPACT_IDLE_MIN_FREE_SEGMENTS", 0)
    monkeypatch.setattr(filemap, "COMPACT_IDLE_MIN_FREE_SEGMENTS", 0)
    h = busy_compacted_after_deletes(seed=3, deleted=200)
    a = h.fs.store.arena
    busy_left = a.reclaimable_bytes
    idle_target = a.compaction_target(arena_mod.COMPACT_IDLE_FRACTION,
                                      arena_mod.COMPACT_IDLE_MIN_FREE_SEGMENTS)
    assert busy_left > idle_target
    assert h.eng.idle_compact() == 0                     # activity seen just now
    h.clock.advance(COMPACT_QUIET_SECONDS / 2)
    assert h.eng.idle_compact() == 0                     # not quiet long enough
    h.clock.advance(COMPACT_QUIET_SECONDS / 2 + 0.1)
    moved = 0
    while (n := h.eng.idle_compact()):
        moved += n
    assert moved > 0 and a.reclaimable_bytes <= idle_target < busy_left
    assert check_all(h.fs) == []
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])


def test_a_quiet_mount_compacts_below_the_busy_floor(small_segments) -> None:
    """On a small tree the floor of segments is the bound, not the fraction:
    busy compaction stops under COMPACT_MIN_FREE_SEGMENTS (2 here) segments
    of free space, the idle pass goes on to COMPACT_IDLE_MIN_FREE_SEGMENTS."""
    from cctmpfs.filemap import COMPACT_QUIET_SECONDS
    h = busy_compacted_after_deletes(seed=5, deleted=150)
    a = h.fs.store.arena
    busy_left = a.reclaimable_bytes
    seg = a.segment_bytes
    assert a.live_bytes // 8 < 2 * seg                    # the floor is the busy bound
    assert arena_mod.COMPACT_IDLE_MIN_FREE_SEGMENTS * seg < busy_left <= 2 * seg
    assert h.eng.idle_compact() == 0                      # notes the activity
    h.clock.advance(COMPACT_QUIET_SECONDS + 0.1)
    while h.eng.idle_compact():
        pass
    assert a.reclaimable_bytes <= arena_mod.COMPACT_IDLE_MIN_FREE_SEGMENTS * seg < busy_left
    assert check_all(h.fs) == []
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])
