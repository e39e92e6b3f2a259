"""The payload arena: compressed payloads in large anonymous memory segments,
not one Python `bytes` per block in the malloc heap.

Why. Measured here (issue 15) on `/usr/lib/python3.11` + `/usr/include` (167 MB
of files, 9.7k stored blocks, 32 MiB of payloads), with one `bytes` per payload:

- the daemon's RSS grew 88-126 MiB, nearly all of it in glibc's heaps, and
  malloc_trim(0) gave back 3 MiB: the heap was not free, it was in use;
- `ZstdCompressor.compress()` allocates ZSTD_compressBound(n) bytes and only
  shrinks the object's size field: tracemalloc counts 131,626 bytes held per
  7,315-byte payload of a 128 KiB block. malloc_stats() of the daemon after
  the copy: 122.7 MB in use in the workers' arena;
- payloads, short-lived request buffers and long-lived small objects share
  the heap, so even freed payloads leave holes that stay resident.

Here a payload is copied once into a segment and the codec's buffer is freed
at once; a segment whose payloads all die is unmapped, so RSS follows live
data after `rm -rf`.

Design: an append log with compaction, not zsmalloc's size classes.
On the payloads of that tree (zstd:3, 128 KiB blocks): 9,669 payloads, median
1,741 bytes, p10 528, p90 10,800, max 103,049. zsmalloc-style classes (16-byte
steps to 4 KiB, then 1/16-1/32 steps) waste only 1.8% inside the classes, but
the tree uses 325 distinct classes, each with its own partly filled pages, and
a class allocator fragments under deletes too: zsmalloc has a compactor for
that. An append log wastes nothing at allocation (a bump of `fill`), keeps the
blocks of one file together (they are sealed together, and usually die
together, so their segment empties whole and is unmapped without any copy),
and needs one mechanism, compaction, for all the free space. Copying is
cheap here: 31 us per MiB into resident memory, against 25-100 us to decode
one 128 KiB block.

The handle: a stored block refers to its payload by one int (layout below),
36 bytes, about the 33 of the `bytes` header it replaces, and it carries the
block's decoded length, so `raw_len` needs no read of the payload.

Segments are `mmap` objects of `segment_bytes` (1 MiB, or 4 blocks when
blocks are bigger), MADV_NOHUGEPAGE (transparent huge pages are "always"
here: a 2 MiB page would make RSS jump and stay in 2 MiB steps). A new
segment is mapped with MAP_POPULATE: filling 1 MiB of fresh mapping took
970 us (a page fault and a zeroed page every 4 KiB), populating it then
filling it 387 us, filling resident memory 31 us. So emptied segments are
kept as `spares` (resident; their stale bytes do not matter), and a seal maps
the segments its payloads may need before it publishes them, unlocked
(`map_spares`), so that no writer waits on the zeroing under the global
lock. An idle arena unmaps its spares and empty heads (`maintain`).

Two append points ("heads"): NEW for payloads just sealed or read back from
the backing device, MOVED for payloads moved by compaction, which outlived a
segment's worth of others and tend to live on (F2FS and LFS separate hot and
cold data for the same reason). Heads are never compacted or released.

Threading: all state is protected by the global lock, except as noted:
- `pin()` / `unpin()` bracket an unlocked decode straight from a segment
  through a memoryview. While any reader is pinned, no segment is unmapped
  or rewound: those that empty meanwhile wait in `deferred` until the last
  reader unpins. So a view always reads the bytes it was cut from (an
  exported view would also make mmap.close() raise). One count for all
  segments, not one per segment: a READ of a stored block pays ~40
  bytecodes for it, against ~80 for per-segment pins (benchmarks/
  bytecodes.py), and readers hold pins for one decode (~30-100 us). Both
  calls hold the lock; the pin is dropped after re-acquiring it.
- `read_unlocked()` copies a payload WITHOUT the lock, for the sealer's dedup
  check of an index hint: the copy is kept only if the block is still live at
  the same handle afterwards (the handle of a live block always names bytes
  that nobody changes).
- `compact()` and `maintain()` release the lock: compaction reserves
  room under the lock, copies unlocked as a pinned reader, and
  publishes each move under the lock only if the block still holds the
  handle it had (freed or evicted meanwhile: the copy is dead space).
"""

from __future__ import annotations

import logging
import mmap
from typing import Any, Optional

import attrs

from . import faults
from .locking import GlobalLock, released

log = logging.getLogger(__name__)

# ---- the handle ---------------------------------------------------------------------
#: A payload handle is one non-negative int:
#:
#:   bits  0-22   length    payload bytes (< 8 MiB)
#:   bits 23-45   offset    of the payload in its segment (segments < 8 MiB)
#:   bits 46-65   segment   the segment's id (ids are reused, so they stay small)
#:   bits 66-86   raw_len   decoded length of the block (<= 1 MiB, the largest block)
#:
#: Under 2**90, so CPython stores it in 36 bytes. Handles are never mutated: a
#: moved payload gets a new int, so `block.payload is h` says the block has not
#: moved since h was read. There is no sentinel: a block in RAM has a handle,
#: an evicted one a devlog.Location.
LEN_BITS = 23
OFF_SHIFT = LEN_BITS
OFF_BITS = 23
SEG_SHIFT = OFF_SHIFT + OFF_BITS
SEG_BITS = 20
RAW_SHIFT = SEG_SHIFT + SEG_BITS
LEN_MASK = (1 << LEN_BITS) - 1
OFF_MASK = (1 << OFF_BITS) - 1
SEG_MASK = (1 << SEG_BITS) - 1
MAX_SEGMENT_BYTES = 1 << OFF_BITS
assert RAW_SHIFT + 21 <= 90   # raw_len <= 2**20 fits in 21 bits: 36-byte ints


def handle(segment: int, offset: int, length: int, raw_len: int) -> int:
    return raw_len << RAW_SHIFT | segment << SEG_SHIFT | offset << OFF_SHIFT | length


def handle_length(h: int) -> int:
    return h & LEN_MASK


def handle_raw_len(h: int) -> int:
    return h >> RAW_SHIFT


def handle_segment(h: int) -> int:
    return h >> SEG_SHIFT & SEG_MASK


def handle_offset(h: int) -> int:
    return h >> OFF_SHIFT & OFF_MASK


# ---- sizes and policy ---------------------------------------------------------------
PAGE = mmap.PAGESIZE
#: Segment size for blocks up to 256 KiB: the brief's 1-4 MiB range, at its
#: low end so that a partly deleted tree frees memory in small steps. Bigger
#: blocks get 4 blocks a segment (segment_bytes_for).
SEGMENT_BYTES = 1 << 20
NEW, MOVED = 0, 1   # the two heads (module docstring)
#: Compaction starts when the segments that are not heads hold more free
#: space (dead payloads, a retired head's unfilled end) than
#: COMPACT_MIN_FREE_SEGMENTS segments and COMPACT_FREE_FRACTION of the live
#: payloads, and stops below three quarters of that. The heads and the spares
#: add up to 2 + MAX_SPARES segments more. So the arena maps at most
#: live + max(4 segments, live / 8) + 4 segments, plus what the last pass has
#: not moved yet (docs/arenas.md).
COMPACT_MIN_FREE_SEGMENTS = 4
COMPACT_FREE_FRACTION = 1 / 8
#: Once the mount is quiet (quiet.QuietWatch, COMPACT_QUIET_SECONDS in
#: filemap.py), the idle sealer compacts down to this fraction of the live
#: payloads instead: nothing competes for the lock then, and copying costs
#: 31 us per MiB. On the stdlib with site-packages, settled, the busy bound
#: left 22.4 MiB of free space for 208.6 MiB of payloads (0.029 bytes of
#: RSS per byte of files), which packing and recompression had freed.
COMPACT_IDLE_FRACTION = 1 / 64
#: ... and from this many segments of free space, not
#: COMPACT_MIN_FREE_SEGMENTS: on a small tree that floor was the bound.
#: /usr/include (12.0 MiB of payloads) kept 4.1 MiB free in the arena once
#: settled, 16% of the daemon's RSS growth (results/s27-include).
COMPACT_IDLE_MIN_FREE_SEGMENTS = 1
#: Bytes one compaction slice moves per lock release: 256 KiB is about 8 us of
#: memcpy here, so the worker waits on the lock hand-off, not on the copy.
COMPACT_SLICE_BYTES = 256 * 1024
#: A segment's owner list (dead owners included) is pruned past this many
#: entries per live block, so dead block records do not pile up in it.
PRUNE_FACTOR = 2
#: Resident mappings kept unused, ready to become segments: emptied segments,
#: or fresh ones mapped unlocked by a seal for the payloads it is about to
#: publish (a seal of 16 incompressible 128 KiB blocks needs 2).
MAX_SPARES = 2


def segment_bytes_for(block_size: int) -> int:
    """The segment size for a block size: SEGMENT_BYTES, or 4 blocks."""
    return min(MAX_SEGMENT_BYTES, max(SEGMENT_BYTES, 4 * block_size))


class ArenaFull(Exception):
    """A payload could not be stored: mapping a segment failed (ENOMEM), or
    the arena reached its limit. Nothing was changed."""


@attrs.define(slots=True, eq=False, repr=False, weakref_slot=False)
class Segment:
    """One mapping of the arena. Protected by the global lock.

    Invariants (check.py verifies them): the live payloads are disjoint
    ranges inside [0, fill); their bytes and count are live_bytes and
    live_blocks; each live owner whose handle names this segment is in
    `owners`; a segment with no live payload is a head, or waits in
    Arena.deferred for readers to unpin. Bytes in [0, fill) not live are
    dead: free space that only compaction or the release of the whole
    segment returns.
    """

    id: int
    mm: mmap.mmap
    view: memoryview             # of mm, to cut payload views from; released before mm closes
    fill: int = 0                # bytes appended; the next payload goes here
    live_bytes: int = 0          # bytes of the live payloads here
    live_blocks: int = 0         # live payloads here
    #: Owners appended here, in order, dead or moved ones included until a
    #: prune or a release (a list slot is 8 bytes a block; a dict by offset
    #: would be about 70). Compaction finds the live ones by their handle.
    owners: list[Any] = attrs.field(factory=list)
    head: int = -1               # NEW or MOVED while an append point, else -1

    def __repr__(self) -> str:
        return (f"<Segment {self.id} fill={self.fill} live={self.live_bytes}/{self.live_blocks} "
                f"head={self.head}>")


@attrs.define(slots=True)
class ArenaCounters:
    """Cumulative counters of the arena (since mount), one comment each."""

    payloads_stored: int = 0     # payloads copied in (sealed, or read back from the device)
    segments_mapped: int = 0     # mappings created (spares included)
    segments_released: int = 0   # segments emptied, then unmapped or kept as a spare
    idle_unmapped: int = 0       # spares and empty heads unmapped because the arena was idle
    heads_reset: int = 0         # emptied heads rewound and reused in place
    compactions: int = 0         # segments emptied by compaction
    bytes_moved: int = 0         # payload bytes compaction moved
    moves_dropped: int = 0       # moves thrown away: the block was freed or evicted meanwhile
    grow_failures: int = 0       # segments that could not be mapped (ENOMEM or the limit)


def _map(size: int) -> mmap.mmap:
    """A populated anonymous mapping without huge pages. Raises OSError
    (or faults.InjectedFault at the test point "arena.grow")."""
    faults.hit("arena.grow")
    mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    try:
        mm.madvise(mmap.MADV_NOHUGEPAGE)
    except (OSError, AttributeError):
        pass   # huge pages off, or not Linux: nothing to turn off
    return mm


class Arena:
    """Payload segments, their heads, the spares, and compaction."""

    def __init__(self, segment_bytes: int = SEGMENT_BYTES, limit: int = 0) -> None:
        if not PAGE <= segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment size {segment_bytes} out of range")
        self.segment_bytes = segment_bytes
        #: Most bytes the segments may map for new payloads (0: no limit);
        #: compaction may pass it by the segment it moves into.
        self.limit = limit
        self.segments: dict[int, Segment] = {}   # id -> segment
        self.free_ids: list[int] = []            # released ids, reused first
        self.next_id = 0
        self.heads: list[Optional[Segment]] = [None, None]   # NEW, MOVED
        #: Resident mappings not in use, the next segments (MAX_SPARES):
        #: emptied segments, or ones a seal mapped unlocked (map_spares).
        self.spares: list[mmap.mmap] = []
        self.live_bytes = 0     # sum of live_bytes over segments
        self.live_blocks = 0    # sum of live_blocks over segments
        self.used_bytes = 0     # sum of fill over segments
        #: The last segment wanted could not be mapped, and nothing was freed
        #: since: a write that needs RAM gets ENOSPC (DataEngine.write).
        self.full = False
        self.compacting = False   # a compact() is running (it releases the lock)
        #: Readers decoding from a view unlocked (pin/unpin), and compaction
        #: while it copies. While non-zero nothing is unmapped or rewound.
        self.readers = 0
        #: Segments that emptied while readers > 0: released (or, for a
        #: head, rewound) when the last reader unpins.
        self.deferred: list[Segment] = []
        self.counters = ArenaCounters()
        self._stored_seen = 0     # counters.payloads_stored at the last maintain()

    # ---- figures ------------------------------------------------------------------
    @property
    def mapped_bytes(self) -> int:
        """Bytes of all mappings, the spares included: the arena's RSS, since
        segments are populated when mapped."""
        return (len(self.segments) + len(self.spares)) * self.segment_bytes

    @property
    def free_bytes(self) -> int:
        """Mapped bytes not holding a live payload: dead payloads, the unfilled
        parts of the heads, the spares."""
        return self.mapped_bytes - self.live_bytes

    @property
    def reclaimable_bytes(self) -> int:
        """Free space in the segments that are not heads: what compaction
        can give back."""
        seg = self.segment_bytes
        heads = sum(seg - h.live_bytes for h in self.heads if h is not None)
        return self.free_bytes - len(self.spares) * seg - heads

    def limit_for(self, ram_budget: int) -> int:
        """The mapping limit for a ram= budget: the budget, the free space
        compaction lets the arena keep at that size, and the heads and
        spares. Past it new payloads are refused (ArenaFull: the writer
        gets ENOSPC)."""
        seg = self.segment_bytes
        return ram_budget + max(COMPACT_MIN_FREE_SEGMENTS * seg, int(ram_budget * COMPACT_FREE_FRACTION)) \
            + (2 + MAX_SPARES) * seg

    def compaction_target(self, fraction: float = COMPACT_FREE_FRACTION,
                          min_segments: Optional[int] = None) -> int:
        """reclaimable_bytes above which compaction starts: fraction of the
        live payloads (COMPACT_FREE_FRACTION, or idle COMPACT_IDLE_FRACTION),
        and at least min_segments segments (COMPACT_MIN_FREE_SEGMENTS, or
        idle COMPACT_IDLE_MIN_FREE_SEGMENTS)."""
        if min_segments is None:
            min_segments = COMPACT_MIN_FREE_SEGMENTS
        return max(min_segments * self.segment_bytes, int(self.live_bytes * fraction))

    # ---- storing and freeing ------------------------------------------------------
    def alloc(self, owner: Any, data: Any, raw_len: int, role: int = NEW) -> int:
        """Copy data (a bytes-like payload) into the arena for owner; returns
        its handle. Raises ArenaFull with nothing changed. Lock held."""
        n = len(data)
        seg = self.heads[role]
        if seg is None or seg.fill + n > self.segment_bytes:
            seg = self._new_head(role, n)
        off = seg.fill
        seg.mm[off:off + n] = data
        seg.fill = off + n
        seg.live_bytes += n
        seg.live_blocks += 1
        seg.owners.append(owner)
        self.live_bytes += n
        self.live_blocks += 1
        self.used_bytes += n
        self.counters.payloads_stored += 1
        return raw_len << RAW_SHIFT | seg.id << SEG_SHIFT | off << OFF_SHIFT | n

    def _reserve(self, role: int, n: int) -> tuple[Segment, int]:
        """Room for n bytes at a head, not live yet (compaction fills it
        unlocked). Raises ArenaFull. Lock held."""
        seg = self.heads[role]
        if seg is None or seg.fill + n > self.segment_bytes:
            seg = self._new_head(role, n)
        off = seg.fill
        seg.fill = off + n
        self.used_bytes += n
        return seg, off

    def _new_head(self, role: int, n: int) -> Segment:
        """Retire the head of role and give it a new segment with room for n.
        Raises ArenaFull. Lock held."""
        if n > self.segment_bytes:
            raise ValueError(f"payload of {n} bytes in segments of {self.segment_bytes}")
        old = self.heads[role]
        if old is not None:
            if not old.live_blocks and not self.readers:
                self._rewind(old)   # empty: reuse it in place, no mapping needed
                return old
            old.head = -1
            self.heads[role] = None
            if not old.live_blocks:
                self._emptied(old)   # a reader is pinned: deferred
        if self.spares:
            mm = self.spares.pop()
        else:
            if role == NEW and self.limit and self.mapped_bytes + self.segment_bytes > self.limit:
                self._grow_failed(f"the arena limit ({self.limit} bytes) is reached")
            try:
                mm = _map(self.segment_bytes)
            except (OSError, faults.InjectedFault) as e:
                self._grow_failed(f"mapping a segment failed: {e}")
            self.counters.segments_mapped += 1
        self.full = False
        sid = self.free_ids.pop() if self.free_ids else self._next_id()
        seg = Segment(sid, mm, memoryview(mm), head=role)  # type: ignore[arg-type]
        self.segments[sid] = seg
        self.heads[role] = seg
        return seg

    def _next_id(self) -> int:
        sid = self.next_id
        if sid > SEG_MASK:
            self._grow_failed("out of segment ids")
        self.next_id += 1
        return sid

    def _grow_failed(self, why: str) -> None:
        self.counters.grow_failures += 1
        if not self.full:
            log.warning("payload arena cannot grow: %s", why)
        self.full = True
        raise ArenaFull(why)

    def _rewind(self, seg: Segment) -> None:
        """An empty, unpinned head starts again at offset 0. Lock held."""
        self.used_bytes -= seg.fill
        seg.fill = 0
        seg.owners = []
        self.counters.heads_reset += 1

    def free(self, h: int) -> None:
        """The payload at h is dead. Lock held."""
        seg = self.segments[h >> SEG_SHIFT & SEG_MASK]
        n = h & LEN_MASK
        seg.live_bytes -= n
        seg.live_blocks -= 1
        self.live_bytes -= n
        self.live_blocks -= 1
        self.full = False   # room may be found again: the next seal retries
        if not seg.live_blocks:
            self._emptied(seg)
        elif len(seg.owners) > PRUNE_FACTOR * seg.live_blocks + 16:
            seg.owners = [o for o in seg.owners if _live_in(o, seg.id)]

    def _emptied(self, seg: Segment) -> None:
        """seg holds no live payload: rewind it if it is a head, release it
        otherwise; later if a reader is pinned. Lock held."""
        if self.readers:
            self.deferred.append(seg)
        elif seg.head >= 0:
            self._rewind(seg)
        else:
            self._maybe_release(seg)

    def _maybe_release(self, seg: Segment) -> None:
        """Unmap an empty segment that is not a head (no reader may be
        pinned); keep it as a spare if there are fewer than MAX_SPARES.
        Lock held."""
        if seg.live_blocks or seg.head >= 0 or self.segments.get(seg.id) is not seg:
            return   # in use, or released already
        del self.segments[seg.id]
        self.free_ids.append(seg.id)
        self.used_bytes -= seg.fill
        seg.owners = []
        seg.view.release()
        if len(self.spares) < MAX_SPARES:
            self.spares.append(seg.mm)
        else:
            seg.mm.close()
        self.counters.segments_released += 1
        self.full = False

    # ---- reading ------------------------------------------------------------------
    def read(self, h: int) -> bytes:
        """A copy of the payload at h. Lock held."""
        off = h >> OFF_SHIFT & OFF_MASK
        return self.segments[h >> SEG_SHIFT & SEG_MASK].mm[off:off + (h & LEN_MASK)]

    def equals(self, h: int, data: Any) -> bool:
        """The payload at h is data, byte for byte. Lock held. (A copy and a
        bytes compare: 0.5 us for 7 KiB, against 23 us comparing memoryviews.)"""
        return len(data) == h & LEN_MASK and self.read(h) == data

    def pin(self, h: int) -> memoryview:
        """A view of the payload at h, valid until unpin(view), to decode
        unlocked. Lock held."""
        self.readers += 1
        off = h >> OFF_SHIFT & OFF_MASK
        return self.segments[h >> SEG_SHIFT & SEG_MASK].view[off:off + (h & LEN_MASK)]

    def unpin(self, view: memoryview) -> None:
        """Release a view from pin(). Lock held (again)."""
        view.release()
        self.readers -= 1
        if not self.readers and self.deferred:
            self._settle_deferred()

    def _settle_deferred(self) -> None:
        """The last reader unpinned: rewind or release the segments that
        emptied meanwhile (if they are still empty). Lock held."""
        todo, self.deferred = self.deferred, []
        for seg in todo:
            if not seg.live_blocks and self.segments.get(seg.id) is seg:
                self._emptied(seg)

    def read_unlocked(self, owner: Any) -> Optional[bytes]:
        """A copy of owner's payload, or None if it has none in the arena or
        it changed during the copy. Runs WITHOUT the lock (the module
        docstring): any error of a racing release means None."""
        h = owner.payload
        if type(h) is not int:
            return None
        try:
            seg = self.segments.get(h >> SEG_SHIFT & SEG_MASK)
            off = h >> OFF_SHIFT & OFF_MASK
            data = seg.mm[off:off + (h & LEN_MASK)]  # type: ignore[union-attr]
        except (AttributeError, ValueError, IndexError, TypeError):
            return None
        # Still live at h: then the segment was not released nor rewound
        # during the copy, and live bytes are never overwritten.
        return data if owner.refs > 0 and owner.payload is h else None

    # ---- spares -------------------------------------------------------------------
    def spares_wanted(self, nbytes: int) -> int:
        """How many fresh mappings to make, unlocked, so that nbytes of new
        payloads fit without mapping under the lock. Lock held."""
        if self.full:
            return 0
        head = self.heads[NEW]
        room = self.segment_bytes - head.fill if head is not None else 0
        need = -(-(nbytes - room) // self.segment_bytes) - len(self.spares)
        if need <= 0:
            return 0
        if self.limit:
            need = min(need, (self.limit - self.mapped_bytes) // self.segment_bytes)
        return max(0, min(need, MAX_SPARES - len(self.spares)))

    def map_spares(self, k: int) -> list[mmap.mmap]:
        """Up to k fresh mappings (fewer if mapping fails). Reads only the
        segment size, which never changes: runs WITHOUT the lock, for the
        ~340 us a MiB of zeroing."""
        out = []
        for _ in range(k):
            try:
                out.append(_map(self.segment_bytes))
            except (OSError, faults.InjectedFault):
                break
        return out

    def add_spares(self, mms: list[mmap.mmap]) -> None:
        """Keep mappings from map_spares() (those past MAX_SPARES are
        unmapped: another thread made some meanwhile). Lock held."""
        for mm in mms:
            if len(self.spares) < MAX_SPARES:
                self.spares.append(mm)
                self.counters.segments_mapped += 1
            else:
                mm.close()

    def maintain(self, lock: GlobalLock) -> None:
        """The sealer's periodic care. If payloads were stored since the last
        call, make sure one spare is ready (mapped with the lock released).
        If none were, the arena is idle: unmap the spares and the heads that
        hold nothing, so that after an `rm -rf` the arena maps only what
        still lives (a new head and spare are made again unlocked by the
        next seal, ~340 us a MiB). Releases the global lock."""
        stored = self.counters.payloads_stored
        active = stored != self._stored_seen
        self._stored_seen = stored
        if self.full:
            self.probe(lock)
            return
        if not active:
            self._unmap_idle()
            return
        if self.spares or self.full or \
                (self.limit and self.mapped_bytes + self.segment_bytes > self.limit):
            return
        with released(lock):
            mms = self.map_spares(1)
        self.add_spares(mms)

    def probe(self, lock: GlobalLock) -> None:
        """After a mapping failed: try to map a spare again, with the lock
        released; if it works, the arena is no longer full. Without this, a
        mount whose dirty blocks were all deleted while mapping failed would
        never try again (only a free or a seal clears `full`). A full
        arena at its limit waits for frees instead. Releases the global
        lock."""
        if not self.full or (self.limit and self.mapped_bytes + self.segment_bytes > self.limit):
            return
        with released(lock):
            mms = self.map_spares(1)
        if mms:
            self.add_spares(mms)
            self.full = False

    def _unmap_idle(self) -> None:
        """Unmap the spares and the empty, unpinned heads. Lock held."""
        for mm in self.spares:
            mm.close()
            self.counters.idle_unmapped += 1
        self.spares = []
        if self.readers:
            return
        for role, seg in enumerate(self.heads):
            if seg is not None and not seg.live_blocks:
                self.heads[role] = None
                seg.head = -1
                self._maybe_release(seg)   # into spares (now empty): unmap it too
                for mm in self.spares:
                    mm.close()
                    self.counters.idle_unmapped += 1
                self.spares = []

    # ---- compaction ---------------------------------------------------------------
    def needs_compaction(self, fraction: float = COMPACT_FREE_FRACTION,
                         min_segments: Optional[int] = None) -> bool:
        return self.reclaimable_bytes > self.compaction_target(fraction, min_segments)

    def compact(self, lock: GlobalLock, max_bytes: int,
                fraction: float = COMPACT_FREE_FRACTION, min_segments: Optional[int] = None) -> int:
        """Move live payloads out of the emptiest segments until
        reclaimable_bytes is under 3/4 of the target (compaction_target of
        fraction and min_segments), at most max_bytes in all. Releases the
        global lock. Returns the bytes moved."""
        if self.compacting or not self.needs_compaction(fraction, min_segments):
            return 0
        self.compacting = True
        moved = 0
        try:
            stop = self.compaction_target(fraction, min_segments) * 3 // 4
            for seg in self._victims():
                if moved >= max_bytes or self.reclaimable_bytes <= stop:
                    break
                if self.segments.get(seg.id) is not seg or seg.head >= 0:
                    continue   # released or made a head meanwhile
                n = 0
                while moved < max_bytes:
                    n = self._move_slice(seg, lock)
                    if n <= 0:
                        break
                    moved += n
                if self.segments.get(seg.id) is not seg:
                    self.counters.compactions += 1
                if n < 0:
                    break   # no room to move into
        finally:
            self.compacting = False
        return moved

    def _victims(self) -> list[Segment]:
        """Segments to empty, emptiest first: those that are not heads and
        whose free space the compaction gains. Lock held."""
        segs = [s for s in self.segments.values() if s.head < 0 and s.live_bytes < self.segment_bytes
                - self.segment_bytes // 16]
        segs.sort(key=lambda s: s.live_bytes)
        return segs

    def _move_slice(self, seg: Segment, lock: GlobalLock) -> int:
        """Move up to COMPACT_SLICE_BYTES of seg's live payloads to the MOVED
        head: reserve under the lock, copy unlocked, publish what did not
        change. Releases the global lock. Returns the bytes planned (0:
        nothing left in seg; -1: no room).

        From the first reservation to the copy's end it counts as a pinned
        reader: neither seg nor the reserved room may be unmapped or rewound
        meanwhile. Reserved room is not live, so a head holding only that
        would otherwise count as empty, and be rewound or released under
        the copy."""
        moves: list[tuple[Any, int, Segment, int]] = []   # owner, old handle, dest, offset
        seen: set[int] = set()
        total = 0
        self.readers += 1
        try:
            for owner in seg.owners:
                h = owner.payload
                if type(h) is not int or owner.refs <= 0 or h >> SEG_SHIFT & SEG_MASK != seg.id \
                        or id(owner) in seen:
                    continue
                seen.add(id(owner))
                n = h & LEN_MASK
                try:
                    dest, off = self._reserve(MOVED, n)
                except ArenaFull:
                    break
                moves.append((owner, h, dest, off))
                total += n
                if total >= COMPACT_SLICE_BYTES:
                    break
            if moves:
                with released(lock):
                    src = seg.view
                    for _owner, h, dest, off in moves:
                        o = h >> OFF_SHIFT & OFF_MASK
                        n = h & LEN_MASK
                        dest.mm[off:off + n] = src[o:o + n]
        finally:
            self.readers -= 1
        if not moves:
            if not self.readers:
                self._settle_deferred()
            return -1 if seg.live_blocks else 0
        for owner, h, dest, off in moves:
            n = h & LEN_MASK
            if owner.refs > 0 and owner.payload is h:
                owner.payload = h >> RAW_SHIFT << RAW_SHIFT | dest.id << SEG_SHIFT | off << OFF_SHIFT | n
                dest.live_bytes += n
                dest.live_blocks += 1
                dest.owners.append(owner)
                self.live_bytes += n
                self.live_blocks += 1
                self.counters.bytes_moved += n
                self.free(h)
            else:
                self.counters.moves_dropped += 1   # its reserved room is dead space
        if not self.readers:
            self._settle_deferred()
            for _owner, _h, dest, _off in moves:
                if not dest.live_blocks and dest.head < 0:
                    self._maybe_release(dest)   # every move into it was dropped
        return total


def _live_in(owner: Any, sid: int) -> bool:
    h = owner.payload
    return type(h) is int and owner.refs > 0 and h >> SEG_SHIFT & SEG_MASK == sid
