"""The engine's side of the backing device: evicting the least recently used
stored blocks to it, cleaning its segments, and discarding emptied ones
(docs/eviction.md).

Pure Python, no llfuse. The data engine (filemap.DataEngine) owns one
Evictor and calls it when RAM in use passes the high watermark (evict), from
the sealer's pass (maintain) and at unmount (discard_device). The segments
themselves, their records and their cleaning are coldstore.py's.

Threading follows docs/locking.md: everything here runs with the global lock
held, and releases it only around device I/O (the cold store's unlocked
phases). One thread at a time builds segments (turn()): a segment read for
cleaning must not be discarded and reused by another thread before it is
planned.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Iterator

from .blockstore import StoredBlock
from .coldstore import Tally
from .devlog import NoSpace
from .locking import released

if TYPE_CHECKING:
    from .filemap import DataEngine

#: The cleaner runs while fewer segments than this fraction are free (and
#: always keeps at least 2: one to evict into, one to clean into).
CLEAN_FREE_FRACTION = 1 / 16
#: Cleaning passes one eviction may run when the device has no free segment
#: before it gives up (ENOSPC for the write that needed the room).
MAX_CLEANINGS_PER_EVICT = 8


class Evictor:
    """Moves one engine's stored blocks to its backing device and keeps the
    device's segments clean. Protected by the global lock."""

    def __init__(self, engine: DataEngine) -> None:
        self.eng = engine
        self._busy = False   # a thread is building segments (turn)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """One thread at a time builds segments (the sealer's evictions and
        cleaning, a writer's make_room): a segment read for cleaning must not
        be discarded and reused by another thread before it is planned.
        Releases the global lock while another thread has the turn."""
        while self._busy:
            with released(self.eng.lock):
                time.sleep(0.001)
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    def evict(self, target: int) -> int:
        """Move the least recently used stored blocks to the backing device
        until RAM in use is at most target, one segment per lock release.
        Each batch fills a whole segment when RAM holds enough stored blocks,
        even past target: a segment written a quarter full would cost the
        cleaner three quarters later. When the device has no free segment,
        a batch cleans the emptiest segments first and fills up with
        evictions. Releases the global lock. Returns the blocks evicted."""
        eng = self.eng
        cold = eng.cold
        if cold is None:
            return 0
        order = eng.store.ram_order
        assert order is not None
        done = 0
        with self.turn():
            clean: list[int] = []
            cleanings = 0   # bounded: on a device full of live data, cleaning only shuffles
            while order and eng.ram_in_use() > target:
                cands, got = [], 0
                read = eng.store.payload_bytes
                for b in order:   # least recently used first
                    # A copy, made under the lock (~60 us for a 2 MiB
                    # segment's worth): the segment is written unlocked,
                    # while compaction may move the payload in the arena.
                    payload = read(b)
                    cands.append((b, b.codec, payload))
                    got += len(payload)
                    if got >= cold.log.segment_size:
                        break
                try:
                    n, planned = self._batch(cands, clean)
                except NoSpace:
                    if cold.to_discard:
                        self._discard_emptied()   # emptied segments become free
                        continue
                    if not clean and cleanings < MAX_CLEANINGS_PER_EVICT:
                        clean = cold.pick_segments_to_clean(limit=4)
                        cleanings += 1
                        if clean:
                            continue
                    eng.counters.device_full += 1   # cleaning did not make room either
                    break
                done += n
                if not planned or (not n and not clean):
                    break   # a write error, or every block changed: try again later
                clean = []
        return done

    def maintain(self) -> None:
        """Discard emptied segments, and clean while free segments run low.
        Releases the global lock."""
        cold = self.eng.cold
        if cold is None:
            return
        with self.turn():
            self._discard_emptied()
            log_ = cold.log
            if log_.free_segments < max(2, int(log_.nsegments * CLEAN_FREE_FRACTION)):
                victims = cold.pick_segments_to_clean(limit=4)
                if victims:
                    try:
                        self._batch([], victims)
                    except NoSpace:
                        self.eng.counters.device_full += 1

    def _batch(self, cands: list[tuple[StoredBlock, int, bytes]],
               clean: list[int]) -> tuple[int, bool]:
        """Build, write and publish one segment: live records of the clean
        segments, then the eviction candidates. Releases the global lock.
        Returns (blocks evicted, whether anything was planned)."""
        eng = self.eng
        cold = eng.cold
        assert cold is not None
        cleaning = []
        if clean:
            tally = Tally()
            with released(eng.lock):
                for seg in clean:
                    data = cold.read_segment(seg, tally)
                    if data is not None:
                        cleaning.append((seg, data))
            cold.apply(tally)
        batch = cold.plan(cands, cleaning)
        if batch is None:
            return 0, False
        with released(eng.lock):
            cold.write_batch(batch)
        evicted = cold.publish(batch)
        for p in evicted:
            eng.store.evicted(p.owner, p.held)
        if cleaning:
            cold.note_cleaned([seg for seg, _ in cleaning])
        self._discard_emptied()
        return len(evicted), True

    def _discard_emptied(self) -> None:
        """Discard segments with nothing live, then let the log reuse them.
        Releases the global lock."""
        cold = self.eng.cold
        assert cold is not None
        segs = cold.take_discards()
        if segs:
            tally = Tally()
            with released(self.eng.lock):
                cold.discard(segs, tally)
            cold.apply(tally)
            cold.finish_discards(segs)

    def discard_device(self) -> int:
        """At unmount: discard the backing device's whole used area
        (ColdStore.discard_used_area). Call it last, once no other thread
        uses the filesystem: evicted blocks cannot be read back after it.
        Releases the global lock. Returns the bytes discarded."""
        cold = self.eng.cold
        if cold is None:
            return 0
        with self.turn():
            tally = Tally()
            with released(self.eng.lock):
                done = cold.discard_used_area(tally)
            cold.apply(tally)
        return done
