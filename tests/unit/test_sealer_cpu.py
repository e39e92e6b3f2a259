"""The sealer's CPU class (cpuprio.py): it compresses at SCHED_IDLE while the
hot buffer has room, at normal priority past IDLE_DIRTY_FRACTION of it, and
nobody else's compression changes class."""

from __future__ import annotations

import os
import threading
import time

import pytest

from cctmpfs import cpuprio
from cctmpfs.codec import Codec, CodecId
from cctmpfs.filemap import SEAL_BATCH
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem
from cctmpfs.sealer import IDLE_DIRTY_FRACTION, Sealer

needs_root = pytest.mark.skipif(not cpuprio.available(),
                                reason="leaving SCHED_IDLE needs root (cpuprio.available)")

BS = 16 * 1024
BUFFER_BLOCKS = 64
ME = Caller(uid=0, gid=0, pid=1)


class RecordingCodec(Codec):
    """zstd, recording the calling thread and its scheduling policy at every compression."""

    def __init__(self) -> None:
        super().__init__("zstd", 1)
        self.calls: list[tuple[int, int]] = []

    def compress(self, raw: bytes | bytearray) -> tuple[CodecId, bytes]:
        self.calls.append((threading.get_ident(), os.sched_getscheduler(0)))
        return super().compress(raw)


def block(i: int) -> bytes:
    """A compressible block unlike any other (identical blocks would be deduplicated, not compressed)."""
    return (b"block %08d " % i * (BS // 15 + 1))[:BS]


def wait_until(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    lock = threading.Lock()
    codec = RecordingCodec()
    fs = Filesystem(block_size=BS, codec=codec, buffer_bytes=BUFFER_BLOCKS * BS, lock=lock)
    errors: list[BaseException] = []
    sealers: list[Sealer] = []

    def make(idle: bool = True) -> Sealer:
        s = Sealer(fs.engine, lock, on_error=errors.append, idle_priority=idle)
        s.start()
        sealers.append(s)
        return s

    yield lock, codec, fs, make
    for s in sealers:
        s.stop()
    assert not errors


def write_blocks(lock: threading.Lock, fs: Filesystem, name: bytes, first: int, n: int) -> None:
    """Write n full blocks sequentially (each is queued for the sealer), holding
    the lock throughout so that the sealer sees them all at once."""
    with lock:
        ino = fs.create(ROOT_INO, name, 0o644, ME).ino
        for i in range(n):
            fs.write(ino, i * BS, block(first + i))
        fs.release(ino)


@needs_root
def test_idle_cpu_changes_the_calling_thread_only_and_restores_it() -> None:
    main_tid = threading.get_native_id()
    seen: dict[str, object] = {}

    def body() -> None:
        with cpuprio.idle_cpu() as entered:
            seen["entered"] = entered
            seen["inside"] = cpuprio.current_policy()
            seen["main"] = os.sched_getscheduler(main_tid)
        seen["after"] = cpuprio.current_policy()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"entered": True, "inside": os.SCHED_IDLE, "main": os.SCHED_OTHER,
                    "after": os.SCHED_OTHER}


@needs_root
def test_idle_cpu_restores_the_class_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError):
        with cpuprio.idle_cpu():
            assert cpuprio.current_policy() == os.SCHED_IDLE
            raise RuntimeError("boom")
    assert cpuprio.current_policy() == os.SCHED_OTHER


@needs_root
def test_sealer_compresses_idle_while_the_buffer_has_room(setup) -> None:  # type: ignore[no-untyped-def]
    lock, codec, fs, make = setup
    sealer = make()
    write_blocks(lock, fs, b"f", 0, SEAL_BATCH)     # 16 blocks: a quarter of the buffer
    wait_until(lambda: fs.engine.buffer.dirty_bytes == 0)
    mine = [pol for tid, pol in codec.calls if tid == sealer._thread.ident]
    assert len(mine) == SEAL_BATCH
    assert set(mine) == {os.SCHED_IDLE}
    assert sealer.idle_batches >= 1 and sealer.normal_batches == 0
    assert os.sched_getscheduler(sealer._thread.native_id) == os.SCHED_OTHER   # restored


@needs_root
def test_sealer_compresses_at_normal_priority_while_the_buffer_fills(setup) -> None:  # type: ignore[no-untyped-def]
    lock, codec, fs, make = setup
    sealer = make()
    n = int(BUFFER_BLOCKS * IDLE_DIRTY_FRACTION) + SEAL_BATCH      # 48 of 64 blocks dirty
    write_blocks(lock, fs, b"f", 0, n)
    wait_until(lambda: fs.engine.buffer.dirty_bytes == 0)
    mine = [pol for tid, pol in codec.calls if tid == sealer._thread.ident]
    assert len(mine) == n
    # 48 dirty: the first batch at normal priority; after it 32 (not under
    # half): normal again; then 16: idle.
    assert mine[:2 * SEAL_BATCH] == [os.SCHED_OTHER] * (2 * SEAL_BATCH)
    assert mine[2 * SEAL_BATCH:] == [os.SCHED_IDLE] * SEAL_BATCH
    assert sealer.normal_batches == 2 and sealer.idle_batches >= 1


def test_other_threads_compress_at_their_own_priority(setup) -> None:  # type: ignore[no-untyped-def]
    lock, codec, fs, make = setup
    sealer = make()
    with lock:
        ino = fs.create(ROOT_INO, b"f", 0o644, ME).ino
        for i in range(4):                   # not full blocks: nothing is queued
            fs.write(ino, i * BS, block(i)[:BS - 1])
        fs.engine.make_room()                # this thread seals them itself
    assert [tid for tid, _ in codec.calls] == [threading.get_ident()] * 4
    assert {pol for _, pol in codec.calls} == {os.SCHED_OTHER}
    assert sealer.idle_batches == sealer.normal_batches == 0


def test_seal_priority_normal_never_idles(setup) -> None:  # type: ignore[no-untyped-def]
    lock, codec, fs, make = setup
    sealer = make(idle=False)
    write_blocks(lock, fs, b"f", 0, SEAL_BATCH)
    wait_until(lambda: fs.engine.buffer.dirty_bytes == 0)
    assert {pol for _, pol in codec.calls} == {os.SCHED_OTHER}
    assert sealer.idle_batches == 0 and sealer.normal_batches >= 1


class FailingPoolTrimmer:
    """A pool trimmer with a bug: every call raises."""

    def __init__(self) -> None:
        self.calls = 0

    def maybe_trim(self) -> int:
        self.calls += 1
        raise RuntimeError("trim bug")


def test_a_failing_memory_give_back_does_not_stop_the_sealer() -> None:
    """The idle work without the lock (heap trim, dropping compressors, the
    pool trim) is guarded like the sealing pass: an exception there is
    counted and logged, and the sealer goes on sealing."""
    lock = threading.Lock()
    fs = Filesystem(block_size=BS, codec=Codec("zstd", 1), buffer_bytes=BUFFER_BLOCKS * BS, lock=lock)
    fs.engine.idle = lambda: True            # type: ignore[method-assign]
    errors: list[BaseException] = []
    trimmer = FailingPoolTrimmer()
    s = Sealer(fs.engine, lock, on_error=errors.append, pool_trimmer=trimmer)  # type: ignore[arg-type]
    s.start()
    try:
        wait_until(lambda: trimmer.calls >= 2)
        assert all(isinstance(e, RuntimeError) for e in errors) and len(errors) >= 2
        with lock:
            ino = fs.create(ROOT_INO, b"f", 0o644, ME).ino
            fs.write(ino, 0, block(1))
        wait_until(lambda: fs.store.counters.blocks == 1)   # sealed by the same thread
    finally:
        s.stop()
