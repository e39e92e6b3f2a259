"""Evicted blocks on the backing device: moving payloads out (eviction),
reading them back, freeing them, and cleaning segments.

Pure Python, no llfuse. The data engine (eviction.Evictor, and
filemap.DataEngine.raw_for) hands it the coldest stored blocks, the segments
to clean, and the evicted blocks to read.

Threading follows docs/locking.md. Every operation that does I/O is split in
phases: `plan_*` and `publish_*` run with the global lock held and touch only
memory; `write_*`, `read*` and `discard` run with the lock RELEASED and touch
only the device and their own batch. A publish re-checks that each owner
still holds what was planned (`owner.payload is` the planned payload or
location); anything that changed meanwhile is dropped and its space marked
dead.

Counters: every shared counter (ColdStore.counters, Device.counters) is
protected by the global lock. The unlocked phases count into a Tally that
their caller owns (a Batch carries its own), and the caller adds it to the
shared counters with apply() once it holds the lock again; publish() applies
its batch's. So two threads reading the device at once never lose a count,
and the stats never see half an update.

An owner is any object with a mutable `payload` attribute (what holds its
bytes in RAM, or the devlog.Location of its record once evicted) and a `refs`
count: blockstore.StoredBlock, whose payload in RAM is an arena handle.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import attrs

from . import faults
from .cipher import TAG_BYTES, DecryptError, RecordCipher
from .device import ALIGN, Device, DeviceCounters, add_counts
from .devlog import RECORD_ENCRYPTED, Location, RecordError, SegmentLog, decode_record, encode_record

log = logging.getLogger(__name__)


class ColdReadError(Exception):
    """An evicted record could not be read back: an I/O error, or a checksum
    or authentication failure. The read that needed it gets EIO."""


@attrs.define(slots=True)
class ColdCounters:
    """Counters of the cold store, one comment each. ColdStore.counters is
    cumulative since mount and protected by the global lock; a Tally's
    counts one unlocked phase, owned by the thread that runs it."""

    evictions: int = 0          # payloads moved to the device
    bytes_evicted: int = 0      # their payload bytes (what write amplification divides by)
    evictions_dropped: int = 0  # planned evictions dropped: the block changed or died meanwhile
    cold_reads: int = 0         # records read back
    checksum_errors: int = 0    # records that failed their checksum, identity or GCM tag
    io_errors: int = 0          # device reads or writes that failed
    records_moved: int = 0      # live records the cleaner moved
    #: records the cleaner looked at to find its victims' live ones: the
    #: victims' records only, so it grows with the segments cleaned, not
    #: with the blocks evicted (tests/unit/test_coldstore.py)
    records_scanned: int = 0
    segments_cleaned: int = 0   # segments the cleaner emptied


@attrs.define(slots=True)
class Tally:
    """The counts of one phase that runs with the global lock released, owned
    by the thread that runs it: ColdStore.apply() adds them to the shared
    counters once that thread holds the lock again."""

    device: DeviceCounters = attrs.Factory(DeviceCounters)   # -> Device.counters
    cold: ColdCounters = attrs.Factory(ColdCounters)         # -> ColdStore.counters


@attrs.define(slots=True)
class Planned:
    """One record of a batch."""

    owner: Any             # the block it belongs to
    codec: int
    payload: bytes         # eviction: the payload in RAM; a move: the record's bytes as read
    loc: Location          # where the record goes
    old: Optional[Location] = None   # a move (cleaning): where the record was
    #: an eviction: what the owner's payload attribute held when planned (an
    #: arena handle); the eviction is published only if it still holds it
    held: Any = None


@attrs.define(slots=True)
class Batch:
    """One segment's worth of records, planned under the lock, written
    unlocked: live records moved out of segments being cleaned, then
    evicted payloads filling the rest."""

    segment: int
    entries: list[Planned]
    error: Optional[BaseException] = None
    #: what write_batch() counted; publish() applies it
    tally: Tally = attrs.Factory(Tally)


class ColdStore:
    def __init__(self, device: Device, log: SegmentLog, cipher: Optional[RecordCipher] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.log = log
        self.cipher = cipher
        self.clock = clock
        #: Cumulative since mount. Protected by the global lock: the unlocked
        #: phases count into a Tally instead (module docstring).
        self.counters = ColdCounters()
        #: segment -> {record serial: its owner}: the live records of each
        #: segment whose owner points at them (owner.payload is a Location in
        #: that segment with that serial). The cleaner visits only its victims'
        #: records, so cleaning costs what the cleaned segments hold, not a
        #: scan of every evicted block (issue 14): measured here with 512k
        #: evicted blocks (64 GiB of 128 KiB blocks), finding one segment's
        #: 40 records took 22 ms under the lock by the scan, 43 us by this
        #: table. Its dicts take 29-47 bytes per record (sys.getsizeof, 16-100
        #: records a segment), about the 40 of the flat serial -> owner table
        #: it replaces. Kept by publish (evictions,
        #: moves) and free (last reference, promotion); a segment with no
        #: live record has no entry, so an empty device costs nothing.
        #: Records planned but not published yet are not in it.
        self.segment_records: dict[int, dict[int, Any]] = {}
        #: segments emptied under the lock, to discard with it released
        self.to_discard: list[int] = []
        #: segments planned but not published yet (being written, unlocked):
        #: their usage counts records no block points at yet
        self.in_flight: set[int] = set()

    def _segment_offset(self, segment: int) -> int:
        return segment * self.log.segment_size

    def apply(self, tally: Tally) -> None:
        """Add what an unlocked phase counted to the shared counters. Holds the lock."""
        add_counts(self.device.counters, tally.device)
        add_counts(self.counters, tally.cold)

    # ---- building segments ------------------------------------------------------
    def plan(self, candidates: list[tuple[Any, int, bytes]],
             cleaning: Optional[list[tuple[int, bytes]]] = None) -> Optional[Batch]:
        """Fill one fresh segment. Holds the lock; memory only.

        First the live records of the segments being cleaned ((segment,
        its bytes read unlocked) pairs), as many as fit; then evicted
        payloads, (owner, codec, payload) in order, while they fit. A batch
        that moves records may use the segment the log reserves for the
        cleaner, and the evictions that follow fill it up: so cleaning a
        nearly empty segment on a full device makes room instead of moving
        one record into a segment of its own.

        Returns None if nothing was planned. Raises devlog.NoSpace when no
        segment is free for evictions alone.
        """
        extra = TAG_BYTES if self.cipher else 0
        self.log.seal_open()
        entries: list[Planned] = []
        room = self.log.segment_size
        for segment, data in cleaning or []:
            records = self.segment_records.get(segment, {})
            self.counters.records_scanned += len(records)
            live = sorted(records.values(), key=lambda o: o.payload.offset)
            need = sum(o.payload.length for o in live)
            if need > room:
                continue   # only segments that empty completely: half-moved ones gain nothing
            room -= need
            for owner in live:
                src: Location = owner.payload
                new = attrs.evolve(self.log.relocate(src), raw_len=src.raw_len)
                entries.append(Planned(owner, 0, data[src.offset:src.offset + src.length], new, src))
        for owner, codec, payload in candidates:
            if entries and not self.log.fits_open(len(payload) + extra):
                break
            loc, _seq = self.log.place(len(payload) + extra)
            entries.append(Planned(owner, codec, payload, attrs.evolve(loc, raw_len=owner.raw_len),
                                   held=owner.payload))
        if not entries:
            return None
        segment = self.log.seal_open()
        assert segment is not None
        self.in_flight.add(segment)
        return Batch(segment, entries)

    def write_batch(self, batch: Batch) -> None:
        """Build the segment and write it in one call. Lock RELEASED.
        Evicted payloads are sealed (encrypted) and encoded here; moved
        records are copied as they are (same serial, same nonce). Counts
        into batch.tally, which publish() applies."""
        try:
            faults.hit("device.write")
            fill = max(p.loc.offset + p.loc.length for p in batch.entries)
            buf = bytearray((fill + ALIGN - 1) // ALIGN * ALIGN)
            for p in batch.entries:
                if p.old is not None:
                    rec = p.payload
                elif self.cipher is not None:
                    rec = encode_record(p.codec, RECORD_ENCRYPTED, p.loc.seq, p.loc.seq,
                                        self.cipher.seal(p.loc.seq, p.payload))
                else:
                    rec = encode_record(p.codec, 0, p.loc.seq, p.loc.seq, p.payload)
                buf[p.loc.offset:p.loc.offset + len(rec)] = rec
            self.device.write(self._segment_offset(batch.segment), buf, batch.tally.device)
        except Exception as e:  # noqa: BLE001 - the batch fails as a whole; publish() undoes it
            log.error("backing device: writing segment %d failed: %r", batch.segment, e)
            batch.error = e

    def publish(self, batch: Batch) -> list[Planned]:
        """Point each owner that still holds what was planned at its new
        record; drop the rest. Holds the lock. Returns the evictions done
        (the caller moves their bytes out of its RAM accounting)."""
        self.apply(batch.tally)
        self.in_flight.discard(batch.segment)
        if self.log.mark_written(batch.segment, self.clock()):
            self.to_discard.append(batch.segment)
        evicted = []
        moved = 0
        for p in batch.entries:
            ok = batch.error is None and p.owner.refs > 0
            if p.old is not None:
                if ok and p.owner.payload is p.old and self._owner_at(p.old) is p.owner:
                    p.owner.payload = p.loc
                    self._forget(p.old)
                    self._remember(p.loc, p.owner)
                    self._dead(p.old)
                    moved += 1
                else:
                    self._dead(p.loc)
            elif ok and p.owner.payload is p.held:
                p.owner.payload = p.loc
                self._remember(p.loc, p.owner)
                self.counters.evictions += 1
                self.counters.bytes_evicted += len(p.payload)
                evicted.append(p)
            else:
                self._dead(p.loc)
                self.counters.evictions_dropped += 1
        self.counters.records_moved += moved
        if batch.error is not None:
            self.counters.io_errors += 1
        return evicted

    # ---- reading -----------------------------------------------------------
    def read(self, loc: Location, tally: Tally) -> tuple[int, bytes]:
        """(codec, payload) of an evicted record, checked. Lock RELEASED;
        counts into tally, which the caller applies. Raises ColdReadError
        on an I/O error or a failed check."""
        try:
            data = self.device.read(self._segment_offset(loc.segment) + loc.offset, loc.length,
                                    tally.device)
        except OSError as e:
            tally.cold.io_errors += 1
            raise ColdReadError(f"segment {loc.segment}: read failed: {e}") from None
        try:
            rec = decode_record(data, block_id=loc.seq)
            payload = rec.payload
            if rec.flags & RECORD_ENCRYPTED:
                if self.cipher is None:
                    raise RecordError("encrypted record without a key")
                payload = self.cipher.open(rec.seq, payload)
        except (RecordError, DecryptError) as e:
            tally.cold.checksum_errors += 1
            raise ColdReadError(f"segment {loc.segment} offset {loc.offset}: {e}") from None
        tally.cold.cold_reads += 1
        return rec.codec, payload

    # ---- freeing -----------------------------------------------------------
    def free(self, loc: Location) -> None:
        """An evicted block is gone (last reference) or back in RAM. Holds the lock."""
        self._forget(loc)
        self._dead(loc)

    def _remember(self, loc: Location, owner: Any) -> None:
        """owner now points at its record at loc. Holds the lock."""
        records = self.segment_records.get(loc.segment)
        if records is None:
            records = self.segment_records[loc.segment] = {}
        records[loc.seq] = owner

    def _forget(self, loc: Location) -> None:
        """Nothing points at the record at loc any more. Holds the lock."""
        records = self.segment_records.get(loc.segment)
        if records is not None:
            records.pop(loc.seq, None)
            if not records:
                del self.segment_records[loc.segment]

    def _owner_at(self, loc: Location) -> Any:
        """The owner of the live record at loc, or None. Holds the lock."""
        records = self.segment_records.get(loc.segment)
        return records.get(loc.seq) if records is not None else None

    def _dead(self, loc: Location) -> None:
        if self.log.mark_dead(loc):
            self.to_discard.append(loc.segment)

    def take_discards(self) -> list[int]:
        """Segments to discard, handed over to the caller. Holds the lock."""
        out, self.to_discard = self.to_discard, []
        return out

    def discard(self, segments: list[int], tally: Tally) -> None:
        """Lock RELEASED; counts into tally, which the caller applies. The
        segments stay out of use (state "emptied") until finish_discards()
        frees them, so none is rewritten meanwhile."""
        for seg in segments:
            self.device.discard(self._segment_offset(seg), self.log.segment_size, tally.device)

    def discard_used_area(self, tally: Tally) -> int:
        """Discard every segment ever written, at unmount: the contents are
        volatile, as a tmpfs's, so nothing on the device is needed any more,
        and a discarded SSD range, a thin volume or a backing file's holes
        give the space back (and unencrypted data is not left readable).
        Returns the bytes discarded: 0 if nothing was written or the device
        cannot discard. Lock RELEASED; counts into tally, which the caller
        applies.

        Evicted blocks read afterwards fail their checks: call it last."""
        length = self.log.used_area
        if not length or not self.device.discard(0, length, tally.device):
            return 0
        log.info("backing device %s: discarded its used area (%d MiB) at unmount",
                 self.device.path, length >> 20)
        return length

    def finish_discards(self, segments: list[int]) -> None:
        """Holds the lock."""
        self.log.discarded(segments)

    # ---- cleaning ----------------------------------------------------------
    def pick_segments_to_clean(self, limit: int) -> list[int]:
        """The best segments by cost-benefit. Holds the lock."""
        return self.log.cleaning_candidates(self.clock(), limit=limit)

    def read_segment(self, segment: int, tally: Tally) -> Optional[bytes]:
        """A whole segment, or None if reading it failed (logged). Lock
        RELEASED; counts into tally, which the caller applies."""
        try:
            return self.device.read(self._segment_offset(segment), self.log.segment_size,
                                    tally.device)
        except OSError as e:
            tally.cold.io_errors += 1
            log.error("backing device: reading segment %d to clean it failed: %s", segment, e)
            return None

    def note_cleaned(self, segments: list[int]) -> None:
        """Count the segments a published batch emptied. Holds the lock."""
        self.counters.segments_cleaned += sum(
            1 for s in segments if self.log.usage[s].state in ("emptied", "free"))
