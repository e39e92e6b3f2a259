"""Evicted blocks on the backing device: moving payloads out (eviction),
reading them back, freeing them, and cleaning segments.

Pure Python, no llfuse. Not yet wired into the data path (issue 4, step 2):
the engine will hand it the coldest stored blocks and read evicted ones
through it.

Threading follows docs/locking.md. Every operation that does I/O is split in
phases: `plan_*` and `publish_*` run with the global lock held and touch only
memory; `write_*`, `read*` and `discard` run with the lock RELEASED and touch
only the device and their own batch. A publish re-checks that each owner
still holds what was planned (`owner.payload is` the planned payload or
location); anything that changed meanwhile is dropped and its space marked
dead.

An owner is any object with a mutable `payload` attribute (bytes in RAM, or
the devlog.Location of its record once evicted) and a `refs` count:
blockstore.StoredBlock.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import attrs

from .cipher import TAG_BYTES, DecryptError, RecordCipher
from .device import ALIGN, Device
from .devlog import RECORD_ENCRYPTED, Location, RecordError, SegmentLog, decode_record, encode_record

log = logging.getLogger(__name__)


class ColdReadError(Exception):
    """An evicted record could not be read back: an I/O error, or a checksum
    or authentication failure. The read that needed it gets EIO."""


@attrs.define(slots=True)
class ColdCounters:
    """Cumulative counters of the cold store (since mount), one comment each."""

    evictions: int = 0          # payloads moved to the device
    bytes_evicted: int = 0      # their payload bytes (what write amplification divides by)
    evictions_dropped: int = 0  # planned evictions dropped: the block changed or died meanwhile
    cold_reads: int = 0         # records read back
    checksum_errors: int = 0    # records that failed their checksum, identity or GCM tag
    io_errors: int = 0          # device reads or writes that failed
    records_moved: int = 0      # live records the cleaner moved
    segments_cleaned: int = 0   # segments the cleaner emptied


@attrs.define(slots=True)
class Planned:
    owner: Any             # the block being moved
    codec: int
    payload: bytes         # what it holds in RAM now (eviction) or the record bytes (cleaning)
    loc: Location          # where its record goes


@attrs.define(slots=True)
class Batch:
    """One segment's worth of records, planned under the lock, written unlocked."""

    segment: int
    entries: list[Planned]
    old: list[Location] = attrs.Factory(list)   # cleaning: where the moved records were
    error: Optional[OSError] = None


class ColdStore:
    def __init__(self, device: Device, log: SegmentLog, cipher: Optional[RecordCipher] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.log = log
        self.cipher = cipher
        self.clock = clock
        self.counters = ColdCounters()
        #: record serial -> its owner: which records are live, for the cleaner.
        self.owners: dict[int, Any] = {}
        #: segments emptied under the lock, to discard with it released
        self.to_discard: list[int] = []

    def _segment_offset(self, segment: int) -> int:
        return segment * self.log.segment_size

    # ---- eviction ----------------------------------------------------------
    def plan_eviction(self, candidates: list[tuple[Any, int, bytes]]) -> Optional[Batch]:
        """Reserve one fresh segment for as many (owner, codec, payload) as
        fit, in order. Holds the lock. Returns None if none fit or no
        segment is free (devlog.NoSpace propagates to the caller)."""
        extra = TAG_BYTES if self.cipher else 0
        self.log.seal_open()
        entries: list[Planned] = []
        for owner, codec, payload in candidates:
            if entries and not self.log.fits_open(len(payload) + extra):
                break
            loc, _seq = self.log.place(len(payload) + extra)
            entries.append(Planned(owner, codec, payload, loc))
        if not entries:
            return None
        segment = self.log.seal_open()
        assert segment is not None
        return Batch(segment, entries)

    def write_batch(self, batch: Batch, *, moved: bool = False) -> None:
        """Build the segment and write it in one call. Lock RELEASED.
        Records of an eviction are sealed (encrypted) and encoded here;
        moved records (cleaning) are copied as they are."""
        fill = max(p.loc.offset + p.loc.length for p in batch.entries)
        buf = bytearray((fill + ALIGN - 1) // ALIGN * ALIGN)
        for p in batch.entries:
            if moved:
                rec = p.payload
            elif self.cipher is not None:
                rec = encode_record(p.codec, RECORD_ENCRYPTED, p.loc.seq, p.loc.seq,
                                    self.cipher.seal(p.loc.seq, p.payload))
            else:
                rec = encode_record(p.codec, 0, p.loc.seq, p.loc.seq, p.payload)
            buf[p.loc.offset:p.loc.offset + len(rec)] = rec
        try:
            self.device.write(self._segment_offset(batch.segment), buf)
        except OSError as e:
            log.error("backing device: writing segment %d failed: %s", batch.segment, e)
            batch.error = e

    def publish_eviction(self, batch: Batch) -> list[Any]:
        """Point each owner that still holds the planned payload at its
        record. Holds the lock. Returns the owners now evicted."""
        if self.log.mark_written(batch.segment, self.clock()):
            self.to_discard.append(batch.segment)
        done = []
        for p in batch.entries:
            if batch.error is None and p.owner.refs > 0 and p.owner.payload is p.payload:
                p.owner.payload = p.loc
                self.owners[p.loc.seq] = p.owner
                self.counters.evictions += 1
                self.counters.bytes_evicted += len(p.payload)
                done.append(p.owner)
            else:
                self._dead(p.loc)
                self.counters.evictions_dropped += 1
        if batch.error is not None:
            self.counters.io_errors += 1
        return done

    # ---- reading -----------------------------------------------------------
    def read(self, loc: Location) -> tuple[int, bytes]:
        """(codec, payload) of an evicted record, checked. Lock RELEASED.
        Raises ColdReadError on an I/O error or a failed check."""
        try:
            data = self.device.read(self._segment_offset(loc.segment) + loc.offset, loc.length)
        except OSError as e:
            self.counters.io_errors += 1
            raise ColdReadError(f"segment {loc.segment}: read failed: {e}") from None
        try:
            rec = decode_record(data, block_id=loc.seq)
            payload = rec.payload
            if rec.flags & RECORD_ENCRYPTED:
                if self.cipher is None:
                    raise RecordError("encrypted record without a key")
                payload = self.cipher.open(rec.seq, payload)
        except (RecordError, DecryptError) as e:
            self.counters.checksum_errors += 1
            raise ColdReadError(f"segment {loc.segment} offset {loc.offset}: {e}") from None
        self.counters.cold_reads += 1
        return rec.codec, payload

    # ---- freeing -----------------------------------------------------------
    def free(self, loc: Location) -> None:
        """An evicted block is gone (last reference) or back in RAM. Holds the lock."""
        self.owners.pop(loc.seq, None)
        self._dead(loc)

    def _dead(self, loc: Location) -> None:
        if self.log.mark_dead(loc):
            self.to_discard.append(loc.segment)

    def take_discards(self) -> list[int]:
        """Segments to discard, handed over to the caller. Holds the lock."""
        out, self.to_discard = self.to_discard, []
        return out

    def discard(self, segments: list[int]) -> None:
        """Lock RELEASED. The segments stay out of use (state "emptied")
        until finish_discards() frees them, so none is rewritten meanwhile."""
        for seg in segments:
            self.device.discard(self._segment_offset(seg), self.log.segment_size)

    def finish_discards(self, segments: list[int]) -> None:
        """Holds the lock."""
        self.log.discarded(segments)

    # ---- cleaning ----------------------------------------------------------
    def pick_segment_to_clean(self) -> Optional[int]:
        """The best segment by cost-benefit, or None. Holds the lock."""
        cands = self.log.cleaning_candidates(self.clock(), limit=1)
        return cands[0] if cands else None

    def read_segment(self, segment: int) -> Optional[bytes]:
        """Lock RELEASED."""
        try:
            return self.device.read(self._segment_offset(segment), self.log.segment_size)
        except OSError as e:
            self.counters.io_errors += 1
            log.error("backing device: reading segment %d to clean it failed: %s", segment, e)
            return None

    def plan_clean(self, segment: int, data: bytes) -> Optional[Batch]:
        """Plan moving the live records of segment (its bytes read unlocked)
        into a fresh one. Holds the lock."""
        live = [(seq, owner) for seq, owner in self.owners.items()
                if isinstance(owner.payload, Location) and owner.payload.segment == segment]
        if not live:
            return None
        self.log.seal_open()
        entries, old = [], []
        for _seq, owner in sorted(live, key=lambda x: x[1].payload.offset):
            src: Location = owner.payload
            new = self.log.relocate(src)
            entries.append(Planned(owner, 0, data[src.offset:src.offset + src.length], new))
            old.append(src)
        seg = self.log.seal_open()
        assert seg is not None
        return Batch(seg, entries, old)

    def publish_clean(self, batch: Batch) -> int:
        """Point moved owners at their new records. Holds the lock. Returns
        the number of records moved."""
        if self.log.mark_written(batch.segment, self.clock()):
            self.to_discard.append(batch.segment)
        moved = 0
        for p, src in zip(batch.entries, batch.old):
            if (batch.error is None and p.owner.refs > 0 and p.owner.payload is src
                    and self.owners.get(src.seq) is p.owner):
                p.owner.payload = p.loc
                self._dead(src)
                moved += 1
            else:
                self._dead(p.loc)
        self.counters.records_moved += moved
        if batch.error is None:
            self.counters.segments_cleaned += 1
        else:
            self.counters.io_errors += 1
        return moved
