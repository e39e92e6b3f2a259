"""Idle recompression: while the mount is idle, recompress cold stored
blocks at the codec's stronger recompress_level, as zram's `recompress`
does (recompress=, options.py; measurements in docs/memory.md).

Pure Python, no llfuse. The data engine (filemap.DataEngine) owns one
Recompressor and runs a pass from its background pass when the sealer had
nothing to seal (DataEngine.recompress_pass).

Threading follows docs/locking.md: everything here runs with the global lock
held, except the decode and recompression of a batch (_batch), which runs
with the lock released at the sealer's CPU class. A result is published only
if its block is still live at the same arena handle (not freed, evicted or
moved by compaction meanwhile) and the new payload is smaller by the margin.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import attrs

from . import faults
from .arena import RAW_SHIFT, SEG_MASK, SEG_SHIFT, ArenaFull
from .blockstore import StoredBlock
from .locking import released
from .quiet import QuietWatch

if TYPE_CHECKING:
    from .filemap import DataEngine

log = logging.getLogger(__name__)

#: Idle recompression (Recompressor.idle_pass): the mount counts as idle once no
#: block was sealed, loaded or promoted for this long; its stored blocks are
#: cold by then. 5 s: ten sealer polls, so a pause between two commands of a
#: build does not start recompressing what the next command will read.
RECOMPRESS_QUIET_SECONDS = 5.0
#: Blocks recompressed per lock release: 8 x 128 KiB at zstd -9 is ~20 ms of
#: SCHED_IDLE CPU (18.6 ms/MB measured, options.py), so a batch never holds
#: back newly queued sealing work for long.
RECOMPRESS_BATCH = 8
#: Blocks recompressed per sealer pass (every POLL_SECONDS): 64 x 128 KiB =
#: 8 MiB, ~0.15 s of idle CPU at zstd -9, about a third of one core.
RECOMPRESS_PER_PASS = 64
#: Payload handles the candidate scan looks at per pass, bounded so that a
#: mount of recompressed blocks costs the idle pass little (~1 ms).
RECOMPRESS_SCAN_PER_PASS = 8192
#: A recompressed payload is kept only if it saves at least 1/64 of the old
#: one and at least 32 bytes: below that the decode cost of a stronger level
#: is not paid back (the arena has no per-payload overhead to recover).
RECOMPRESS_MIN_SAVING_SHIFT = 6
RECOMPRESS_MIN_SAVING_BYTES = 32


@attrs.define(slots=True)
class RecompressCounters:
    """Cumulative counters of idle recompression (since mount), one comment
    each. Protected by the global lock."""

    recompressed: int = 0      # blocks whose payload was replaced by a stronger one
    bytes_saved: int = 0       # payload bytes those replacements saved
    no_gain: int = 0           # blocks recompressed but kept: the new payload was not smaller by the margin
    discarded: int = 0         # results thrown away: the block was freed, evicted or moved meanwhile
    errors: int = 0            # blocks whose decode or recompression raised; left as they were, not tried again
    arena_full: int = 0        # results not stored: the arena had no room; left as they were
    passes: int = 0            # sealer passes that recompressed at least one batch


class Recompressor:
    """The idle recompression of one engine's stored blocks. Protected by
    the global lock."""

    def __init__(self, engine: DataEngine) -> None:
        self.eng = engine
        self.counters = RecompressCounters()
        #: When the mount went quiet (quiet.py); `exhausted` once a scan went
        #: round every segment and found nothing to recompress.
        self.watch = QuietWatch(RECOMPRESS_QUIET_SECONDS)
        #: The arena segment id the candidate scan resumes after.
        self.cursor = -1

    def idle_pass(self) -> int:
        """Recompress cold blocks at the codec's recompress_level, as zram's
        `recompress` does, while the mount is idle: nothing sealed, loaded or
        promoted for RECOMPRESS_QUIET_SECONDS and no sealing work. At most
        RECOMPRESS_PER_PASS blocks, in batches of RECOMPRESS_BATCH; stops
        between batches as soon as there is sealing work. Releases the
        global lock. Returns the blocks recompressed."""
        eng = self.eng
        if not eng.codec.recompress_level:
            return 0
        if not self.watch.quiet(eng, eng.clock()):
            return 0
        cands = self._candidates(RECOMPRESS_PER_PASS)
        done = 0
        for i in range(0, len(cands), RECOMPRESS_BATCH):
            if self.watch.busy(eng):
                break   # sealing work comes first
            done += self._batch(cands[i:i + RECOMPRESS_BATCH])
        if cands:
            self.counters.passes += 1
        return done

    def _candidates(self, limit: int) -> list[tuple[StoredBlock, int]]:
        """Up to limit (block, handle) pairs of live blocks in RAM that the
        codec would recompress and that were not recompressed yet, scanning
        the arena's segments in id order from where the last scan stopped.
        Lock held; never releases it."""
        arena = self.eng.arena
        codec = self.eng.codec
        ids = sorted(arena.segments)
        if not ids:
            return []
        start = next((i for i, sid in enumerate(ids) if sid > self.cursor), 0)
        found: dict[int, tuple[StoredBlock, int]] = {}
        scanned = 0
        seen = 0
        for sid in ids[start:] + ids[:start]:
            seen += 1
            seg = arena.segments[sid]
            for b in seg.owners:   # dead and moved ones included: checked by handle
                h = b.payload
                if type(h) is int and b.refs > 0 and h >> SEG_SHIFT & SEG_MASK == sid and \
                        not b.settled and codec.recompresses(b.codec):
                    found[id(b)] = (b, h)
            scanned += len(seg.owners)
            if len(found) >= limit:
                break   # the rest of this segment is seen again next pass
            self.cursor = sid
            if scanned >= RECOMPRESS_SCAN_PER_PASS:
                break
        if not found and seen == len(ids):
            self.watch.exhausted = True
        return list(found.values())[:limit]

    def _batch(self, cands: list[tuple[StoredBlock, int]]) -> int:
        """Decode and recompress the payloads of cands unlocked (at the
        sealer's CPU class), then publish each one only if its block is
        still live at the same handle and the new payload is smaller by the
        margin. Releases the global lock. Returns the blocks published."""
        eng = self.eng
        store = eng.store
        rc = self.counters
        # Copies made under the lock (~10 us for a 100 KiB payload): the
        # arena's bytes at a handle never change, but compaction may release
        # the segment once the lock is released.
        # An earlier batch released the lock: cands found before it may
        # have changed since.
        jobs = []
        for b, h in cands:
            p = b.payload
            if b.refs <= 0 or type(p) is not int or p != h or b.settled:
                rc.discarded += 1
            else:
                jobs.append((b, h, b.codec, store.payload_bytes(b)))
        if not jobs:
            return 0
        results: list[Optional[bytes]] = []
        cpu = eng.compress_cpu()   # decided under the lock, entered without it
        with released(eng.lock), cpu:
            for _b, h, cid, old in jobs:
                try:
                    faults.hit("recompress.encode")
                    raw = eng.codec.decompress(cid, old, h >> RAW_SHIFT)
                    results.append(eng.codec.compress_strong(raw))
                except Exception as e:  # noqa: BLE001 - the block keeps its payload
                    log.error("recompressing a block failed (it keeps its payload): %r", e)
                    results.append(None)
        done = 0
        for (b, h, _cid, old), new in zip(jobs, results):
            if new is None:
                rc.errors += 1
                if b.refs > 0:
                    store.settle(b)   # not tried again: one log line per block, not one per pass
                continue
            p = b.payload
            if b.refs <= 0 or type(p) is not int or p != h or b.settled:
                rc.discarded += 1   # freed, evicted or moved by compaction meanwhile
                continue
            n = len(old)
            if len(new) > n - max(n >> RECOMPRESS_MIN_SAVING_SHIFT, RECOMPRESS_MIN_SAVING_BYTES):
                rc.no_gain += 1
                store.settle(b)
                continue
            try:
                saved = store.recompressed(b, h, new)
            except ArenaFull:
                rc.arena_full += 1
                continue
            rc.recompressed += 1
            rc.bytes_saved += saved
            done += 1
        return done
