"""The data engine with a backing device (a real file): eviction past the RAM
budget, reads back, promotion, dedup of evicted blocks, frees, cleaning,
corruption and a full device. No FUSE mount."""

from __future__ import annotations

import errno
import os
import random

import pytest

from cctmpfs.blockstore import StoreCounters
from cctmpfs.check import check_data
from cctmpfs.cipher import RecordCipher
from cctmpfs.coldstore import ColdStore
from cctmpfs.device import Device
from cctmpfs.devlog import SegmentLog
from cctmpfs.errors import FsError
from cctmpfs.filemap import EVICT_LOW

from .conftest import OwnedLock, guard_counters, run_alongside
from .test_filemap import BS, POOL, Harness, make_data, random_ops, text_data

SEG = 64 * 1024


def with_device(h: Harness, path: str, device_segments: int = 64, encrypt: bool = True,
                seg: int = SEG) -> ColdStore:
    dev = Device.open(path, create_size=device_segments * seg)
    cold = ColdStore(dev, SegmentLog(dev.size, seg), RecordCipher() if encrypt else None,
                     clock=h.clock.seconds)
    h.eng.attach_cold(cold)
    return cold


def fill(h: Harness, n_files: int, blocks: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    inos = []
    for _ in range(n_files):
        ino = h.create()
        for b in range(blocks):
            assert h.write(ino, b * BS, make_data(rng, BS, kind=rng.choice([1, 2, 4]))), "ENOSPC"

        inos.append(ino)
    return inos


def shared_counters(h: Harness, cold: ColdStore) -> list[tuple[object, str]]:
    """Every counters record of the engine, the store and the backing device."""
    return [(cold, "counters"), (cold.device, "counters"), (cold.log, "counters"),
            (h.fs.store, "counters"), (h.fs.store, "dedup_counters"), (h.eng, "counters"),
            (h.fs, "counters")]


@pytest.mark.parametrize("encrypt", [True, False])
def test_four_times_the_ram_budget_fits_and_reads_back(tmp_path, encrypt: bool) -> None:
    budget = 16 * BS
    h = Harness("zstd", buffer_blocks=2, ram_budget=budget)
    cold = with_device(h, str(tmp_path / "back"), encrypt=encrypt)
    inos = fill(h, 8, 8)                                 # 64 blocks: 4x the budget
    h.eng.seal_everything()
    h.eng.background_pass()
    assert h.eng.ram_in_use() <= budget
    c = h.fs.store.counters
    assert c.device_blocks > 0 and cold.counters.evictions == c.device_blocks
    h.check()
    for ino in inos:
        assert h.read_all(ino) == bytes(h.models[ino])
    assert cold.counters.cold_reads > 0
    h.check()
    h.delete_all()
    h.eng.background_pass()
    assert h.fs.store.counters == StoreCounters()
    assert cold.log.live_bytes == 0 and cold.segment_records == {}
    assert all(u.state in ("free", "open") for u in cold.log.usage)
    assert h.fs.store.ram_order == {}


@pytest.mark.parametrize("seed", range(4))
def test_random_model_with_a_backing_device(tmp_path, seed: int) -> None:
    """The shared random workload (copies, pooled blocks, truncates, reads)
    with a RAM budget of 6 blocks and a device: the model and the checker
    hold after every step."""
    rng = random.Random(f"evict-{seed}")
    h = Harness(rng.choice(["zstd", "lz4", "none"]), buffer_blocks=2, ram_budget=6 * BS)
    cold = with_device(h, str(tmp_path / "back"), device_segments=256)
    random_ops(h, rng, 800)
    assert cold.counters.evictions > 0, "nothing was ever evicted: test too weak"
    assert cold.counters.cold_reads > 0
    assert h.fs.store.counters == StoreCounters()


def test_a_hot_evicted_block_returns_to_ram(tmp_path) -> None:
    h = Harness("zstd", buffer_blocks=2, ram_budget=16 * BS)
    with_device(h, str(tmp_path / "back"))
    (ino,) = fill(h, 1, 4)
    h.eng.seal_everything()
    h.eng.evict(0)                                     # everything out
    assert h.fs.store.counters.stored_bytes == 0
    h.eng.make_room()                                  # no cached copies left
    h.read(ino, BS + 10, 100)                          # a random (non-sequential) read
    assert h.eng.counters.promotions == 1
    block = h.fs.inodes[ino].data.blocks[1].stored
    assert block.in_ram
    h.check()


def test_in_ram_tells_which_blocks_need_the_device(tmp_path) -> None:
    """What the native transport may store into the page cache unasked
    (transport/directwrite.py): holes, buffered and arena blocks, not
    evicted ones."""
    h = Harness("zstd", buffer_blocks=2, ram_budget=16 * BS)
    with_device(h, str(tmp_path / "back"))
    (ino,) = fill(h, 1, 4)
    f = h.fs.inodes[ino].data
    assert h.eng.in_ram(f, 0, 10)                      # buffered, sealed, holes past the end
    h.eng.seal_everything()
    h.eng.evict(0)
    h.eng.make_room()
    assert not h.eng.in_ram(f, 0, 3) and not h.eng.in_ram(f, 2, 2)
    assert h.eng.in_ram(f, 4, 10)
    h.read(ino, BS + 10, 100)                          # block 1 comes back (a promotion)
    assert h.eng.in_ram(f, 1, 1) and not h.eng.in_ram(f, 0, 1)


def test_a_sequential_stream_does_not_promote(tmp_path) -> None:
    h = Harness("zstd", buffer_blocks=2, ram_budget=16 * BS)
    with_device(h, str(tmp_path / "back"))
    (ino,) = fill(h, 1, 6)
    h.eng.seal_everything()
    h.eng.evict(0)
    h.eng.make_room()
    for off in range(0, 6 * BS, BS):
        h.read(ino, off, BS)
    assert h.eng.counters.promotions == 0


def test_evicted_blocks_are_still_shared(tmp_path) -> None:
    h = Harness("zstd", buffer_blocks=2, ram_budget=16 * BS)
    cold = with_device(h, str(tmp_path / "back"))
    a = h.create()
    for i in range(4):
        h.write(a, i * BS, POOL[i % 3])

    h.eng.seal_everything()
    h.eng.evict(0)
    assert h.fs.store.counters.device_blocks == 3
    b = h.create()
    h.copy(a, b)

    h.eng.seal_everything()
    c = h.fs.store.counters
    assert c.blocks == 3 and c.refs == 8, "a copy of evicted blocks stored them again"
    assert cold.counters.cold_reads >= 3               # verified against the device
    h.check()


def test_corruption_gives_eio_on_the_affected_file_only(tmp_path) -> None:
    h = Harness("zstd", buffer_blocks=2, ram_budget=16 * BS)
    cold = with_device(h, str(tmp_path / "back"))
    inos = fill(h, 3, 2)
    h.eng.seal_everything()
    h.eng.evict(0)
    h.eng.make_room()
    victim = h.fs.inodes[inos[1]].data.blocks[0].stored.payload
    with open(tmp_path / "back", "r+b") as f:
        f.seek(victim.segment * SEG + victim.offset + 60)
        f.write(b"\x00\xff" * 4)
    with pytest.raises(FsError) as info:
        h.fs.read(inos[1], 0, BS)
    assert info.value.errno == errno.EIO
    assert cold.counters.checksum_errors == 1
    for ino in (inos[0], inos[2]):
        assert h.read_all(ino) == bytes(h.models[ino])
    assert h.fs.read(inos[1], BS, BS) == bytes(h.models[inos[1]][BS:2 * BS])
    assert check_data(h.fs) == []


def test_a_full_device_gives_enospc_and_everything_else_keeps_working(tmp_path) -> None:
    budget = 8 * BS
    h = Harness("none", buffer_blocks=2, ram_budget=budget)
    cold = with_device(h, str(tmp_path / "back"), device_segments=4, encrypt=False)
    rng = random.Random(9)
    inos, refused = [], 0
    for _ in range(40):
        ino = h.create()
        inos.append(ino)
        if not h.write(ino, 0, rng.randbytes(BS)):
            refused += 1
            break

    assert refused == 1 and h.eng.counters.device_full > 0
    assert cold.log.free_segments == cold.log.reserve    # only the cleaner's reserve
    for ino in inos:
        assert h.read_all(ino) == bytes(h.models[ino])
    h.delete(inos[0])                                  # room again after frees and a clean
    h.delete(inos[1])
    h.eng.make_room()
    h.eng.background_pass()
    ino = h.create()
    assert h.write(ino, 0, text_data(BS))
    h.check()


def test_cleaning_keeps_overwrites_going_on_a_small_device(tmp_path) -> None:
    """Rewriting 3x the device's capacity over a working set of half of it
    never gives ENOSPC: the cleaner reclaims the dead space."""
    seg = 17 * BS                                       # 16 records of incompressible blocks
    h = Harness("none", buffer_blocks=2, ram_budget=8 * BS)
    cold = with_device(h, str(tmp_path / "back"), device_segments=16, encrypt=False, seg=seg)
    rng = random.Random(4)
    working = 16 * seg // 2 // BS                       # half the device, in blocks
    files = [h.create() for _ in range(4)]
    written = 0
    while written < 3 * 16 * seg:
        ino = rng.choice(files)
        idx = rng.randrange(working // 4)
        assert h.write(ino, idx * BS, rng.randbytes(BS)), "ENOSPC while the device has room"
        written += BS
        if rng.random() < 0.1:
            h.clock.advance(1.0)
            h.eng.background_pass()
    assert cold.counters.segments_cleaned > 0
    h.check()
    for ino in files:
        assert h.read_all(ino) == bytes(h.models[ino])
    assert h.eng.ram_in_use() <= 8 * BS
    amplification = cold.device.counters.bytes_written / max(1, cold.counters.bytes_evicted)
    assert amplification < 4, amplification
    assert EVICT_LOW < 1


def test_threads_writing_reading_and_evicting_with_checks_in_flight(tmp_path) -> None:
    """Writers and readers in four threads, the sealer's passes (evicting and
    cleaning) in another, and the invariant checker run under the lock while
    device batches are in flight: no violation, every file reads back, and
    no shared counter changed without the lock."""
    import threading

    lock = OwnedLock()
    h = Harness("zstd", buffer_blocks=2, ram_budget=12 * BS, lock=lock)
    with lock:
        cold = with_device(h, str(tmp_path / "back"), device_segments=64, seg=4 * SEG)
        violations = guard_counters(lock, shared_counters(h, cold))
    errors: list[BaseException] = []
    contents: dict[int, bytes] = {}

    def writer(t: int) -> None:
        rng = random.Random(t)
        try:
            for rep in range(6):
                data = b"".join(make_data(rng, BS, kind=rng.choice([1, 2, 5])) for _ in range(6))
                with lock:
                    ino = h.create()
                for off in range(0, len(data), BS):
                    with lock:
                        assert h.fs.write(ino, off, data[off:off + BS]) == BS
                with lock:
                    contents[ino] = data
                with lock:
                    got = h.fs.read(ino, 0, len(data) + 1)
                assert got == data, f"thread {t} rep {rep}"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def sealer(stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                with lock:
                    h.eng.background_pass()
                    assert check_data(h.fs) == []
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    run_alongside([threading.Thread(target=writer, args=(t,)) for t in range(4)], sealer)
    assert errors == []
    with lock:
        assert cold.counters.evictions > 0
        assert check_data(h.fs) == []
        assert violations[:5] == []
        for ino, data in contents.items():
            assert h.fs.read(ino, 0, len(data) + 1) == data


def test_a_sequential_scan_does_not_push_the_hot_set_out(tmp_path) -> None:
    """A hot file read at random stays in RAM while a big file is streamed
    through: eviction takes the least recently used, and a stream does not
    count as use."""
    h = Harness("none", buffer_blocks=2, ram_budget=24 * BS)
    with_device(h, str(tmp_path / "back"))
    rng = random.Random(8)
    hot = h.create()
    h.write(hot, 0, rng.randbytes(4 * BS))
    big = h.create()
    for i in range(16):
        h.write(big, i * BS, rng.randbytes(BS))
    h.eng.seal_everything()
    h.eng.make_room()
    for _ in range(8):                                   # the hot set is used
        h.read(hot, rng.randrange(4) * BS + 100, 1000)
        h.eng.make_room()                                # no cached copies: real loads
    for off in range(0, 16 * BS, BS):                    # one streaming pass over big
        h.read(big, off, BS)
    h.eng.evict(int(0.5 * 24 * BS))
    hot_blocks = h.fs.inodes[hot].data.blocks.values()
    assert all(s.stored.in_ram for s in hot_blocks), "the stream pushed the hot set out"
    big_blocks = h.fs.inodes[big].data.blocks.values()
    assert sum(not s.stored.in_ram for s in big_blocks) >= 8
    h.check()


def test_statfs_counts_the_device(tmp_path) -> None:
    h = Harness("none", buffer_blocks=2, ram_budget=8 * BS)
    before = h.fs.statfs()["f_blocks"]
    with_device(h, str(tmp_path / "back"), device_segments=64)
    after = h.fs.statfs()
    room = (64 - 1) * SEG            # less the cleaner's reserve
    assert after["f_blocks"] * 4096 >= before * 4096 + room * 0.99
    assert after["f_bfree"] == after["f_blocks"]


def test_the_checker_names_damage_to_the_per_segment_records(tmp_path) -> None:
    h = Harness("none", buffer_blocks=2, ram_budget=16 * BS)
    cold = with_device(h, str(tmp_path / "back"))
    fill(h, 4, 4)
    h.eng.seal_everything()
    h.eng.evict(0)
    assert len(cold.segment_records) >= 2
    assert check_data(h.fs) == []
    a, b = sorted(cold.segment_records)[:2]
    seq, owner = next(iter(cold.segment_records[a].items()))

    cold.segment_records[b][seq] = cold.segment_records[a].pop(seq)    # listed in the wrong segment
    assert any(f"segment {b}: record {seq} names" in line for line in check_data(h.fs))
    cold.segment_records[a][seq] = cold.segment_records[b].pop(seq)
    assert check_data(h.fs) == []

    del cold.segment_records[a][seq]                                   # not listed at all
    assert any("lists" in line and "evicted blocks by segment" in line for line in check_data(h.fs))
    cold.segment_records[a][seq] = owner

    cold.segment_records[999] = {}                                     # an empty table kept
    assert any("segment 999: an empty record table" in line for line in check_data(h.fs))
    del cold.segment_records[999]
    assert check_data(h.fs) == []


def test_shared_counters_change_only_under_the_global_lock(tmp_path) -> None:
    """With a real lock as the global lock, every path that does device I/O
    unlocked (segment writes, record reads, cleaning reads, discards, a
    dedup check against an evicted block, read and checksum errors) changes
    the shared counters only while holding it (issue 14: the device I/O
    methods and the cold store's unlocked phases counted unlocked)."""
    lock = OwnedLock()
    seg = 17 * BS                                       # 16 records of incompressible blocks
    h = Harness("none", buffer_blocks=2, ram_budget=8 * BS, lock=lock)
    with lock:
        cold = with_device(h, str(tmp_path / "back"), device_segments=16, encrypt=False, seg=seg)
        violations = guard_counters(lock, shared_counters(h, cold))
        rng = random.Random(4)
        files = [h.create() for _ in range(4)]
        for _ in range(3 * 16 * 17):                    # 3x the device: evicts, cleans, discards
            assert h.write(rng.choice(files), rng.randrange(8 * 16 // 4) * BS, rng.randbytes(BS))
            if rng.random() < 0.1:
                h.clock.advance(1.0)
                h.eng.background_pass()
        for ino in files:
            assert h.read_all(ino) == bytes(h.models[ino])       # records read back
        copy = h.create()
        h.copy(files[0], copy)
        h.eng.seal_everything()                         # verified against evicted records
        assert h.eng.counters.compressions_skipped > 0
        h.eng.make_room()
        evicted = [(ino, i, s.stored.payload) for ino in files
                   for i, s in h.fs.inodes[ino].data.blocks.items() if not s.stored.in_ram]
        ino, idx, loc = evicted[0]
        with open(tmp_path / "back", "r+b") as f:       # a corrupt record
            f.seek(loc.segment * seg + loc.offset + 60)
            f.write(b"\x00\xff" * 4)
        with pytest.raises(FsError):
            h.fs.read(ino, idx * BS, BS)
        ino, idx, loc = evicted[-1]
        good_fd = cold.device.fd                        # a failing read: the seam of test_devlog
        cold.device.fd = os.open("/dev/null", os.O_WRONLY)
        try:
            with pytest.raises(FsError):
                h.fs.read(ino, idx * BS, BS)
        finally:
            os.close(cold.device.fd)
            cold.device.fd = good_fd
    c, d = cold.counters, cold.device.counters
    assert c.segments_cleaned > 0 and c.records_scanned > 0 and c.evictions > 0
    assert c.cold_reads > 0 and c.checksum_errors == 1 and c.io_errors == 1
    assert d.writes > 0 and d.reads > c.cold_reads and d.discards > 0 and d.io_errors == 1
    assert violations == []


def test_discard_device_punches_out_the_whole_used_area(tmp_path) -> None:
    """What the daemon does at exit: the backing file, written by evictions,
    holds no allocated block afterwards, and the discard is counted under
    the lock."""
    lock = OwnedLock()
    h = Harness("none", buffer_blocks=2, ram_budget=8 * BS, lock=lock)
    path = tmp_path / "back"
    with lock:
        cold = with_device(h, str(path), device_segments=64, encrypt=False)
        violations = guard_counters(lock, shared_counters(h, cold))
        fill(h, 4, 8)                                   # 32 blocks: 4x the budget
        h.eng.seal_everything()
        h.eng.background_pass()
        assert cold.counters.evictions > 0
        written = path.stat().st_blocks * 512
        assert written >= 4 * SEG
        discards = cold.device.counters.discards
        assert h.eng.discard_device() == cold.log.used_area >= written
    assert path.stat().st_blocks == 0
    assert cold.device.counters.discards == discards + 1
    assert violations == []


def test_discard_device_without_a_device_does_nothing() -> None:
    h = Harness("none", buffer_blocks=2)
    assert h.eng.discard_device() == 0


def test_copy_range_shares_evicted_blocks_and_punch_frees_them(tmp_path) -> None:
    """copy_range takes references to blocks on the device without reading
    them; punching both copies frees their records."""
    h = Harness("zstd", buffer_blocks=2, ram_budget=16 * BS)
    cold = with_device(h, str(tmp_path / "back"))
    a = h.create()
    data = text_data(4 * BS, seed=4)
    h.write(a, 0, data)
    h.eng.seal_everything()
    h.eng.evict(0)
    c = h.fs.store.counters
    assert c.device_blocks == 4 and c.stored_bytes == 0
    reads = cold.counters.cold_reads
    b = h.create()
    assert h.fs.copy_range(a, 0, b, 0, 4 * BS) == 4 * BS
    assert (c.device_blocks, c.refs, c.stored_bytes) == (4, 8, 0)
    assert cold.counters.cold_reads == reads            # nothing read back
    assert h.fs.read(b, 0, 4 * BS) == data
    h.fs.fallocate(a, 3, 0, 4 * BS)    # PUNCH_HOLE | KEEP_SIZE
    assert c.device_blocks == 4 and c.refs == 4
    h.fs.fallocate(b, 3, 0, 4 * BS)
    assert c.device_blocks == 0 and c.refs == 0
    assert h.fs.read(b, 0, 4 * BS) == bytes(4 * BS)
    assert check_data(h.fs) == []
