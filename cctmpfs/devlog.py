"""The log on the backing device: how evicted blocks are laid out as records
in fixed-size segments, and the segment usage table the cleaner works from.

Pure Python, no llfuse and no I/O (device.py does the I/O). Threading: a
SegmentLog is protected by the global lock; `encode_record` and
`decode_record` are pure functions that run with the lock released, as the
codec does.

The device is cut into segments of SEGMENT_SIZE bytes. A segment is filled
in RAM and written in one sequential write (device.Device.write), so the
device sees few, large, aligned writes. Records never span segments.

Nothing on the device is meant to survive the mount (it is /tmp), so there
is no superblock and no recovery: the daemon's RAM holds the only map from
blocks to records. The record header carries what the cleaner and the reader
need to check a record on their own: its block's identity and a checksum.
"""

from __future__ import annotations

import logging
import struct
from typing import Optional

import attrs
import xxhash

log = logging.getLogger(__name__)

#: 2 MiB: large enough that a segment write is one sequential transfer
#: (anchors.md: flash erase blocks and RAID stripes are 1-4 MiB), small
#: enough that the open segment buffer and a cleaning pass stay cheap.
SEGMENT_SIZE = 2 << 20

# ---- the record format (one definition) ------------------------------------------
#
#   offset size field
#   0      4    magic         b"CCR1": a record starts here (format version 1)
#   4      1    codec         codec.CodecId of the payload
#   5      1    flags         RECORD_ENCRYPTED: payload is AES-GCM ciphertext + 16-byte tag
#   6      2    reserved      zero
#   8      4    payload_len   bytes of payload following the header
#   12     4    reserved      zero
#   16     8    block_id      the evicted block's identity (unique per mount)
#   24     8    seq           record serial number, unique per mount; the
#                             AES-GCM nonce is seq as 8 bytes + 4 zero bytes
#   32     8    checksum      xxh3-64 of bytes 0..31 and the payload
#   40          payload
#
# Records start at 8-byte aligned offsets inside their segment.
RECORD_MAGIC = b"CCR1"
RECORD_HEADER = struct.Struct("<4sBBHIIQQQ")
RECORD_ENCRYPTED = 0x01
RECORD_ALIGN = 8
assert RECORD_HEADER.size == 40


class RecordError(Exception):
    """A record failed its checks: wrong magic, length, identity or checksum."""


def record_size(payload_len: int) -> int:
    """Bytes a record with this payload takes in a segment, alignment included."""
    n = RECORD_HEADER.size + payload_len
    return (n + RECORD_ALIGN - 1) // RECORD_ALIGN * RECORD_ALIGN


def encode_record(codec: int, flags: int, block_id: int, seq: int, payload: bytes) -> bytes:
    """Header plus payload, as written to the device. Pure; runs unlocked."""
    head = RECORD_HEADER.pack(RECORD_MAGIC, codec, flags, 0, len(payload), 0, block_id, seq, 0)
    h = xxhash.xxh3_64()
    h.update(head[:32])
    h.update(payload)
    return head[:32] + struct.pack("<Q", h.intdigest()) + payload


@attrs.frozen
class Record:
    """A record read back and checked."""

    codec: int
    flags: int
    block_id: int
    seq: int
    payload: bytes


def decode_record(data: bytes, *, block_id: Optional[int] = None) -> Record:
    """Check and split a record read from the device. Pure; runs unlocked.

    Raises RecordError if the magic, the length, the checksum or (when
    given) the block identity is wrong.
    """
    if len(data) < RECORD_HEADER.size:
        raise RecordError(f"record of {len(data)} bytes is shorter than its header")
    magic, codec, flags, _r0, plen, _r1, bid, seq, checksum = RECORD_HEADER.unpack_from(data)
    if magic != RECORD_MAGIC:
        raise RecordError(f"bad record magic {magic!r}")
    if RECORD_HEADER.size + plen > len(data):
        raise RecordError(f"record payload of {plen} bytes runs past the {len(data)} read")
    payload = data[RECORD_HEADER.size:RECORD_HEADER.size + plen]
    h = xxhash.xxh3_64()
    h.update(data[:32])
    h.update(payload)
    if h.intdigest() != checksum:
        raise RecordError("record checksum mismatch")
    if block_id is not None and bid != block_id:
        raise RecordError(f"record holds block {bid}, expected {block_id}")
    return Record(codec, flags, bid, seq, bytes(payload))


# ---- where a record is -----------------------------------------------------------

@attrs.frozen(slots=True)
class Location:
    """Where one record lives on the device, and which record it is."""

    segment: int   # segment number
    offset: int    # byte offset of the record inside the segment
    length: int    # record_size(payload_len): bytes it occupies
    seq: int = 0   # the record's serial number (its identity and GCM nonce)
    raw_len: int = 0   # decoded length of the block the record holds

    def device_offset(self, segment_size: int = SEGMENT_SIZE) -> int:
        return self.segment * segment_size + self.offset


# ---- the segment usage table ------------------------------------------------------

@attrs.define(slots=True)
class SegmentUsage:
    """What the cleaner knows about one segment."""

    live_bytes: int = 0     # bytes of records still referenced
    written_at: float = 0.0   # when it was written (its records' age)
    #: "free"; "open" (being filled in RAM); "full" (on the device); or
    #: "emptied": no live record, waiting for its discard. It becomes free
    #: only after discarded(), so a discard never hits a reused segment.
    state: str = "free"


@attrs.define(slots=True)
class LogCounters:
    """Cumulative log counters (since mount), one comment each.
    Protected by the global lock, as the whole SegmentLog."""

    records_appended: int = 0   # records placed in segments
    bytes_appended: int = 0     # their bytes, headers and alignment included
    segments_sealed: int = 0    # open segments closed for writing
    segments_freed: int = 0     # segments that went back to free (emptied or cleaned)


class SegmentLog:
    """Space management of the log: the open segment, free segments, and live
    bytes per segment. Protected by the global lock; does no I/O itself."""

    def __init__(self, device_size: int, segment_size: int = SEGMENT_SIZE) -> None:
        if segment_size % 4096:
            raise ValueError(f"segment size {segment_size} is not a multiple of 4096 (O_DIRECT)")
        self.segment_size = segment_size
        self.nsegments = device_size // segment_size
        if self.nsegments < 4:
            raise ValueError(f"a backing device needs at least 4 segments "
                             f"({4 * segment_size} bytes), got {device_size}")
        self.usage = [SegmentUsage() for _ in range(self.nsegments)]
        #: Free segments, lowest first, so writes move forward over the device.
        self.free: list[int] = list(range(self.nsegments - 1, -1, -1))
        #: Free segments new records may not take: the cleaner needs one to
        #: move live records into, or a full device could never be cleaned.
        self.reserve = 1
        self.open_segment: Optional[int] = None
        self.open_fill = 0            # bytes placed in the open segment
        #: Segments [0, high_water) have been opened at least once; the
        #: device past them was never written. Free segments are taken lowest
        #: first, so this is the used area the unmount discards.
        self.high_water = 0
        self.next_seq = 1
        self.counters = LogCounters()

    @property
    def live_bytes(self) -> int:
        return sum(u.live_bytes for u in self.usage)

    @property
    def free_segments(self) -> int:
        return len(self.free)

    @property
    def used_area(self) -> int:
        """Bytes from the start of the device that records were ever placed in."""
        return self.high_water * self.segment_size

    def place(self, payload_len: int) -> tuple[Location, int]:
        """Reserve room for one record: (its location, its serial number,
        which the location also carries).

        Returns a location in the open segment, opening a new one when the
        record does not fit. Raises NoSpace when no segment is free.
        """
        size = record_size(payload_len)
        if size > self.segment_size:
            raise ValueError(f"a record of {size} bytes does not fit a segment")
        if self.open_segment is None or self.open_fill + size > self.segment_size:
            self._open_next()
        assert self.open_segment is not None
        seq = self.next_seq
        self.next_seq += 1
        loc = Location(self.open_segment, self.open_fill, size, seq)
        self.open_fill += size
        self.usage[loc.segment].live_bytes += size
        self.counters.records_appended += 1
        self.counters.bytes_appended += size
        return loc, seq

    def _open_next(self, for_cleaning: bool = False) -> None:
        if self.open_segment is not None:
            self.seal_open()
        if len(self.free) <= (0 if for_cleaning else self.reserve):
            raise NoSpace("no free segment on the backing device")
        seg = self.free.pop()
        self.high_water = max(self.high_water, seg + 1)
        self.usage[seg].state = "open"
        self.open_segment = seg
        self.open_fill = 0

    def seal_open(self) -> Optional[int]:
        """Close the open segment for writing; returns its number (to write out)."""
        seg = self.open_segment
        if seg is None:
            return None
        self.usage[seg].state = "full"
        self.open_segment = None
        self.open_fill = 0
        self.counters.segments_sealed += 1
        return seg

    def mark_written(self, segment: int, now: float) -> bool:
        """A full segment is on the device. Returns True if it holds nothing
        live any more (emptied: the caller discards it)."""
        self.usage[segment].written_at = now
        if self.usage[segment].live_bytes == 0:
            self.usage[segment].state = "emptied"
            return True
        return False

    def mark_dead(self, loc: Location) -> bool:
        """A record is no longer referenced. Returns True if its segment is
        now emptied (the caller discards it, then calls discarded())."""
        u = self.usage[loc.segment]
        u.live_bytes -= loc.length
        if u.live_bytes < 0:
            raise AssertionError(f"segment {loc.segment}: live bytes below zero")
        if u.live_bytes == 0 and u.state == "full":
            u.state = "emptied"
            return True
        return False

    def discarded(self, segments: list[int]) -> None:
        """Emptied segments were discarded: free them for reuse."""
        for seg in segments:
            u = self.usage[seg]
            if u.state != "emptied":
                raise AssertionError(f"segment {seg} discarded in state {u.state}")
            u.state, u.written_at = "free", 0.0
            self.free.append(seg)
            self.counters.segments_freed += 1
        self.free.sort(reverse=True)

    def fits_open(self, payload_len: int) -> bool:
        """Whether a record fits in the open segment without opening another."""
        return (self.open_segment is not None
                and self.open_fill + record_size(payload_len) <= self.segment_size)

    def relocate(self, old: Location) -> Location:
        """Place a moved record (the cleaner's) in the open segment, keeping
        its serial number. The old place stays live until the move is
        written; the caller then marks it dead."""
        if not self.fits_open(old.length - RECORD_HEADER.size):
            self._open_next(for_cleaning=True)
        assert self.open_segment is not None
        loc = Location(self.open_segment, self.open_fill, old.length, old.seq)
        self.open_fill += old.length
        self.usage[loc.segment].live_bytes += old.length
        return loc

    def cleaning_candidates(self, now: float, limit: int) -> list[int]:
        """Full segments worth cleaning, best first, by LFS cost-benefit:
        (1 - u) * age / (1 + u), with u the live fraction. Cleaning a
        segment reads it (1) and writes its live part back (u) to gain
        (1 - u) free space; old data is likely to stay put."""
        scored = []
        for seg, u in enumerate(self.usage):
            if u.state != "full":
                continue
            frac = u.live_bytes / self.segment_size
            if frac >= 1.0:
                continue
            age = max(0.0, now - u.written_at)
            scored.append(((1 - frac) * (age + 1e-3) / (1 + frac), seg))
        scored.sort(reverse=True)
        return [seg for _score, seg in scored[:limit]]


class NoSpace(Exception):
    """The backing device has no free segment."""
