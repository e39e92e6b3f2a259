"""Idle recompression (recompress.Recompressor, through
DataEngine.recompress_pass, issue 15 item 5): cold blocks get the stronger
zstd level when the mount is idle, and a block that changes while it is
recompressed unlocked keeps its old payload."""

from __future__ import annotations

import sys

import pytest

from cctmpfs import faults
from cctmpfs.arena import RAW_SHIFT
from cctmpfs.blockstore import RECOMPRESSED_TYPE, new_block
from cctmpfs.check import check_all
from cctmpfs.codec import CodecId
from cctmpfs.recompress import RECOMPRESS_QUIET_SECONDS

from .test_arena import CallbackLock, remove
from .test_filemap import Harness


def source_text(n: int, seed: int) -> bytes:
    """n bytes of real Python source (this package's own), rotated by seed:
    what a stronger zstd level gains on, as on a /tmp of source trees."""
    import cctmpfs
    import pathlib
    text = b"".join(p.read_bytes() for p in sorted(pathlib.Path(cctmpfs.__file__).parent.glob("*.py")))
    start = seed * 7919 % (len(text) - n)
    return text[start:start + n]


def make(codec: str = "zstd", level: int = 9, files: int = 12, size: int = 40_000,
         lock: object = None, device: str = "") -> Harness:
    h = Harness(codec, buffer_blocks=8, lock=lock)
    if device:
        from .test_eviction import with_device
        with_device(h, device, device_segments=64)
    h.eng.codec.recompress_level = level
    for i in range(files):
        ino = h.create()
        assert h.write(ino, 0, source_text(size, i))
        h.fs.release(ino)
    h.eng.seal_everything()
    for s in list(h.eng.buffer.slots):   # clean copies out: blocks are stored only
        h.eng._drop_clean(s)
    return h


def go_quiet(h: Harness) -> None:
    """One pass notes the activity so far; then the mount stays quiet."""
    assert h.eng.recompress_pass() == 0
    h.clock.advance(RECOMPRESS_QUIET_SECONDS + 1)


def settle(h: Harness) -> int:
    go_quiet(h)
    done = 0
    while (n := h.eng.recompress_pass()):
        done += n
    return done


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_cold_blocks_are_recompressed_smaller_and_read_back_identically(codec: str) -> None:
    h = make(codec)
    c = h.fs.store.counters
    before = c.stored_bytes
    blocks = c.blocks
    done = settle(h)
    rc = h.eng.recompress_counters
    assert done == rc.recompressed > 0
    assert c.recompressed_blocks == rc.recompressed
    assert c.stored_bytes == before - rc.bytes_saved < before
    assert c.blocks == blocks
    assert h.fs.store.arena.live_bytes == c.stored_bytes
    assert check_all(h.fs) == []
    # Every block was looked at once: recompressed, or settled for no gain.
    assert rc.recompressed + rc.no_gain == blocks
    assert settle(h) == 0 and rc.recompressed + rc.no_gain == blocks
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])


def test_recompressed_block_record_is_the_same_size() -> None:
    plain = new_block(CodecId.ZSTD, 1 << 40, 2 ** 59)
    size = sys.getsizeof(plain)
    plain.__class__ = RECOMPRESSED_TYPE
    assert sys.getsizeof(plain) == size and plain.codec == CodecId.ZSTD and plain.recompressed


def test_nothing_is_recompressed_when_off() -> None:
    h = make(level=0)
    before = h.fs.store.counters.stored_bytes
    assert settle(h) == 0
    assert h.fs.store.counters.stored_bytes == before
    assert h.eng.recompress_counters.recompressed == 0


def test_nothing_is_recompressed_until_the_mount_is_quiet() -> None:
    h = make()
    assert h.eng.recompress_pass() == 0
    h.clock.advance(RECOMPRESS_QUIET_SECONDS / 2)
    assert h.eng.recompress_pass() == 0
    ino = h.create()                         # activity: a seal restarts the wait
    assert h.write(ino, 0, source_text(20_000, 99))
    h.fs.release(ino)
    h.eng.seal_everything()
    h.clock.advance(RECOMPRESS_QUIET_SECONDS / 2 + 0.5)
    assert h.eng.recompress_pass() == 0
    assert h.eng.recompress_counters.recompressed == 0
    # Sealing work waiting (a dirty block) also keeps it off.
    assert h.write(ino, 0, b"x")
    h.clock.advance(RECOMPRESS_QUIET_SECONDS + 1)
    assert h.eng.recompress_pass() == 0
    assert h.eng.recompress_counters.recompressed == 0


def test_no_publish_without_gain(monkeypatch) -> None:
    h = make()
    c = h.fs.store.counters
    before = c.stored_bytes
    # The "stronger" level makes the same payload as the sealer did.
    monkeypatch.setattr(h.eng.codec, "compress_strong", h.eng.codec._zstd_c().compress)
    assert settle(h) == 0
    rc = h.eng.recompress_counters
    assert rc.no_gain == c.blocks and rc.recompressed == 0
    assert c.stored_bytes == before
    assert check_all(h.fs) == []
    # Settled: not tried again.
    assert settle(h) == 0 and rc.no_gain == c.blocks


def test_a_failing_recompression_leaves_the_block_as_it_was() -> None:
    h = make()
    before = h.fs.store.counters.stored_bytes
    faults.arm("recompress.encode:1")
    try:
        assert settle(h) == 0
    finally:
        faults.disarm()
    assert h.eng.recompress_counters.errors > 0
    assert h.fs.store.counters.stored_bytes == before
    assert check_all(h.fs) == []
    assert settle(h) == 0   # settled: not tried (nor logged) again


@pytest.mark.parametrize("change", ["freed", "rewritten", "evicted", "moved"])
def test_a_block_changed_during_the_unlocked_recompression_is_not_published(
        change: str, tmp_path) -> None:
    lock = CallbackLock()
    h = make(lock=lock, files=16, device=str(tmp_path / "back") if change == "evicted" else "")
    inos = list(h.models)
    go_quiet(h)

    def meanwhile() -> None:   # runs when the batch releases the lock
        if change == "freed":
            for ino in inos:
                remove(h, ino)
        elif change == "rewritten":
            for ino in inos:
                assert h.write(ino, 0, b"#" * 40_000)
        elif change == "evicted":
            h.eng.evict(0)
        else:
            arena = h.fs.store.arena
            for b in list(h.fs.store.arena.segments[min(arena.segments)].owners):
                if b.refs > 0 and type(b.payload) is int:   # what compaction does
                    old = b.payload
                    b.payload = arena.alloc(b, arena.read(old), old >> RAW_SHIFT)
                    arena.free(old)

    lock.on_release = meanwhile
    h.eng.recompress_pass()
    rc = h.eng.recompress_counters
    assert rc.discarded > 0
    if change != "moved":
        assert rc.recompressed == 0
    assert check_all(h.fs) == []
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])


def test_blocks_sealed_after_the_scan_ran_dry_are_recompressed_too() -> None:
    h = make(files=4)
    first = settle(h)
    assert first > 0 and h.eng.recompressor.watch.exhausted
    ino = h.create()                       # new work ends the dry spell
    assert h.write(ino, 0, source_text(40_000, 77))
    h.fs.release(ino)
    h.eng.seal_everything()
    assert settle(h) > 0
    assert check_all(h.fs) == []
    assert h.read_all(ino) == bytes(h.models[ino])
