"""File data: per-file maps of fixed-size logical blocks, and the engine
that reads, writes, truncates and seals them.

Two background parts of the engine's job live in their own modules, and
the engine owns one of each: moving cold stored blocks to the backing device
and keeping its segments clean (eviction.py), and idle recompression
(recompress.py). The hot buffer's accounting is hotbuffer.py's.

A file is a map {block index: Slot} (blockmap.py: FileData, Slot, and the
three forms the map takes). A missing index is a hole and costs nothing. A
slot holds its block uncompressed (`raw`, in the hot buffer),
compressed (`stored`, in the block store), or both (a clean cached copy):

    state    raw        stored       meaning
    DIRTY    set        None         written since the last seal; only copy
    SEALING  set        None         DIRTY, being compressed outside the lock
                                     (in HotBuffer.sealing)
    CACHED   set        set          clean uncompressed copy of a stored block
    STORED   None       set          compressed only
    UNWRITTEN None      None         no content (all zeros): pages only allocated
                                     by fallocate (ranges.py), extent 0

Pages past a slot's extent may be allocated too (fallocate): their content
is zeros, and they count in st_blocks and against size= as on tmpfs.

A block is sealed (compressed, then dropped from the buffer) when a
sequential writer fills it, when its file is released, when it has not been
touched for DIRTY_COLD_SECONDS, and when the buffer is over its budget.
Random 4 KiB writes therefore land in an uncompressed buffer and never
recompress a whole block per write.

Threading: every function here runs with the global lock held. The ones
that release it (marked "Releases the global lock") do so only around
codec calls, and re-validate slots afterwards: a result is published only if
the slot is still attached to its file (`slot.file` set and mapped) and its
`generation` is unchanged. A SEALING slot's raw buffer is frozen: a writer
copies it first, so the compressor never reads a buffer being changed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional

import attrs

from . import faults, tables
from .arena import COMPACT_IDLE_FRACTION, COMPACT_IDLE_MIN_FREE_SEGMENTS, LEN_MASK, ArenaFull
from .blockmap import PAGE, BlockState, FileData, MapCensus, Slot, page_span, pages
from .blockstore import BlockStore, Payload, StoredBlock
from .codec import Codec, CodecId
from .coldstore import ColdReadError, ColdStore, Tally
from .devlog import Location
from .errors import FsError
from .eviction import Evictor
from .hotbuffer import HotBuffer
from .locking import GlobalLock, released
from .quiet import QuietWatch
from .recompress import Recompressor
from .sharedints import SharedInts

if TYPE_CHECKING:
    from .packing import Packer

log = logging.getLogger(__name__)

#: tmpfs's MAX_LFS_FILESIZE; past it, writes and truncates get EFBIG.
MAX_FILE_SIZE = 2 ** 63 - 1
#: Files whose sequential-access ends the engine keeps (DataEngine.write_ends,
#: read_ends): more than are open at once on a busy /tmp.
ACCESS_ENDS_MAX = 4096
#: A dirty block untouched this long is sealed by the background sealer.
DIRTY_COLD_SECONDS = 2.0
#: A clean cached copy untouched this long is dropped (the kernel page cache
#: keeps its own copy of recently read data anyway).
CLEAN_COLD_SECONDS = 10.0
#: With a backing device, the evictor starts when RAM in use (stored
#: payloads plus dirty blocks) passes EVICT_HIGH of ram= and stops at
#: EVICT_LOW: the gap lets writes proceed without waiting for device I/O.
EVICT_HIGH = 0.90
EVICT_LOW = 0.80
#: Blocks compressed per lock release. 16 x 128 KiB is ~3-8 ms of zstd work:
#: long enough to amortise the lock hand-off, short enough to keep latency low.
SEAL_BATCH = 16
#: Payload bytes the sealer's pass may move to compact the arena (arena.py),
#: in slices of 256 KiB with the lock released: 8 MiB every POLL_SECONDS
#: (0.5 s) is at most ~0.5% of a CPU of memcpy here, and empties eight
#: segments a pass when they are nearly empty, as after a partial `rm -rf`.
COMPACT_BYTES_PER_PASS = 8 << 20
#: The mount is quiet this long (no block sealed, loaded or promoted, no
#: sealing work) before the idle pass compacts the arena to
#: arena.COMPACT_IDLE_FRACTION: as idle recompression waits.
COMPACT_QUIET_SECONDS = 5.0

_ZEROS = bytes(1 << 20)
_ZEROS_MV = memoryview(_ZEROS)


def joined(pieces: list[bytes | memoryview]) -> bytes:
    """The bytes of read_pieces()'s answer (one piece of bytes: itself)."""
    if len(pieces) == 1 and isinstance(pieces[0], bytes):
        return pieces[0]
    return b"".join(pieces)


@attrs.define(slots=True)
class EngineCounters:
    """Cumulative data-path counters (since mount), one comment each.
    Protected by the global lock."""

    seals: int = 0             # blocks compressed and published
    seals_discarded: int = 0   # compressions thrown away: the block changed meanwhile
    compressions_skipped: int = 0  # seals that reused a verified identical stored payload
    zero_blocks: int = 0       # blocks found all-zero at sealing and turned into holes
    loads: int = 0             # blocks decompressed, for a read (streamed or into the buffer) or a write
    clean_drops: int = 0       # clean cached copies dropped from the buffer
    pressure_seals: int = 0    # blocks sealed in a handler because the buffer was full
    enospc: int = 0            # writes refused for size= or ram=
    promotions: int = 0        # evicted blocks read hot and brought back to RAM
    seal_errors: int = 0       # blocks whose compression raised; left dirty, sealed later
    seals_arena_full: int = 0  # blocks compressed but not stored: the arena could not grow; left dirty
    device_full: int = 0       # evictions that found no free segment on the device
    copy_shared_blocks: int = 0   # blocks copy_range shared (a reference, no data copied)
    copy_copied_bytes: int = 0    # bytes copy_range copied through read and write (the edges)
    table_bytes_freed: int = 0    # bytes of emptied dicts and sets the idle pass gave back (tables.py)


@attrs.frozen
class Encoded:
    """The sealed form of one block, made unlocked and published under the lock."""

    codec: CodecId
    payload: Payload             # decodes to the block's content
    fingerprint: Optional[int]   # of the content; None when dedup is off
    reused: bool = False         # payload is an indexed block's, verified byte for byte
    collided: bool = False       # an indexed block had this fingerprint but other bytes
    verified: Optional[StoredBlock] = None   # the block found equal (shared if still indexed)


#: seal()'s result for a block whose encoding raised (it stays dirty).
SEAL_FAILED = object()


class DataEngine:
    """Reads, writes, truncates and seals file data against one block store."""

    def __init__(self, *, block_size: int, codec: Codec, store: BlockStore,
                 buffer: HotBuffer, lock: GlobalLock, size_limit: int = 0,
                 ram_budget: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.bs = block_size
        self.codec = codec
        self.store = store
        self.arena = store.arena
        self.buffer = buffer
        self.lock = lock
        self.size_limit = size_limit   # 0: unlimited
        self.ram_budget = ram_budget   # 0: unlimited
        if ram_budget:
            store.arena.limit = store.arena.limit_for(ram_budget)
        self.clock = clock
        self.alloc_bytes = 0           # sum of FileData.alloc_bytes over live files
        #: The files whose block map is a dict (blockmap.py), for stats.
        self.maps = MapCensus()
        #: One object per frequent int (a full block's page mask, a common
        #: file size) for the slots and file records.
        self.ints = SharedInts()
        #: End offset of the last write and of the last read of each file
        #: that has them, to recognise sequential writers and readers; kept
        #: here, not in every FileData, and dropped when the file is closed
        #: (release) or freed. Past ACCESS_ENDS_MAX files, the oldest entry
        #: goes: a file that loses its entry is only taken for a random
        #: accessor once.
        self.write_ends: dict[FileData, int] = {}
        self.read_ends: dict[FileData, int] = {}
        #: Slots in the files' maps with neither raw nor stored: UNWRITTEN
        #: (fallocated pages), for the memory estimate (stats.py).
        self.unwritten_slots = 0
        self.counters = EngineCounters()
        #: Idle recompression of cold stored blocks (recompress.py).
        self.recompressor = Recompressor(self)
        self.compact_watch = QuietWatch(COMPACT_QUIET_SECONDS)
        #: Tables of the engine and of its owners (Filesystem adds its own)
        #: that the idle pass rebuilds once they have emptied (tables.py).
        self.idle_tables: list[tables.Table] = [
            self.write_ends, self.read_ends, self.buffer.slots, self.buffer.sealing]
        #: Shared-int tables (the engine's, and its owners') that the idle
        #: pass forgets (SharedInts.forget).
        self.idle_shared_ints: list[SharedInts] = [self.ints]
        #: Run in each background pass, under the lock, with whether the
        #: mount is idle: the namespace's freezing of cold inodes
        #: (inodetable.InodeTable.freeze_pass).
        self.pass_hooks: list[Callable[[bool], object]] = []
        self.recompress_counters = self.recompressor.counters
        #: `with self._unlocked:` releases the global lock for the body
        #: (one stateless instance, entered by any thread).
        self._unlocked = released(lock)
        #: Slots to seal soon (filled by sequential writers, released files).
        self.seal_queue: list[Slot] = []
        #: thread id -> seal() calls of that thread now compressing unlocked
        self.sealing_threads: dict[int, int] = {}
        #: Called (under the lock, must not block) when seal_queue gains work.
        self.wake_sealer: Callable[[], None] = lambda: None
        #: Called under the lock by seal(); returns the context its unlocked
        #: compression runs in. The sealer sets it (Sealer.compress_cpu,
        #: cpuprio.py) to compress at SCHED_IDLE while the buffer has room.
        self.compress_cpu: Callable[[], contextlib.AbstractContextManager[object]] = \
            contextlib.nullcontext
        #: The backing device's cold store, if there is one (attach_cold).
        self.cold: Optional[ColdStore] = None
        #: Eviction to it, cleaning and discards (eviction.py).
        self.evictor = Evictor(self)
        #: Small-file packing (packing.py); set by packing.Packer itself.
        self.packer: Optional["Packer"] = None
        #: Fingerprint of an all-zero full block: such a block becomes a hole
        #: after a 2 us hash and a scan, without being compressed.
        self._zero_fingerprint = store.fingerprint(_ZEROS_MV[:block_size]) if store.dedup else None

    def attach_cold(self, cold: ColdStore) -> None:
        """Use a backing device: blocks can now be evicted to it."""
        self.cold = cold
        self.store.ram_order = {}
        self.store.on_device_free = cold.free

    def describe(self, f: FileData) -> list[list[object]]:
        """Where each block of f is: [index, state, segment, offset in the
        segment, record length]; segment and after are None unless the
        block is on the backing device. Never releases the lock."""
        out: list[list[object]] = []
        for idx in f.indexes():
            s = f.slot(idx)
            assert s is not None
            st_ = s.stored
            loc = st_.payload if st_ is not None and not st_.in_ram and not st_.packed else None
            where = "device" if loc is not None and s.raw is None else \
                "packed" if st_ is not None and st_.packed and s.raw is None else \
                self.buffer.state(s).value
            out.append([idx, where, *(([loc.segment, loc.offset, loc.length]) if loc  # type: ignore[union-attr]
                                      else [None, None, None])])
        return out

    # ---- reading -------------------------------------------------------
    def raw_for(self, f: FileData, idx: int, hot: bool = True,
                mutable: bool = False) -> bytes | bytearray | None:
        """The uncompressed content of block idx, or None for a hole.

        mutable: the block is loaded to be written; decode it into a
        bytearray, which the write then patches in place (Codec.decompress).

        hot: the access counts for recency (not a sequential stream, which
        reads each block once): an evicted block read hot returns to RAM if
        there is room under the high watermark. Releases the global lock (to
        read the device and decompress). Raises FsError(EIO) if an evicted
        block cannot be read back; nothing is changed then.
        """
        while True:
            slot = f.slot(idx)
            if slot is None:
                return None
            if slot.raw is not None:
                self.buffer.touch(slot, self.clock())
                return slot.raw
            stored = slot.stored
            if stored is None:
                return None   # UNWRITTEN: fallocated pages, zeros
            if stored.packed:   # a slice of a shared pack (packing.py)
                raw = self.packer.member_raw(stored, mutable)  # type: ignore[union-attr]
                if f.slot(idx) is slot and slot.raw is None and slot.stored is stored:
                    slot.raw = raw
                    self.buffer.charge(slot, self.clock())
                    self.counters.loads += 1
                    return raw
                continue
            payload = stored.payload
            raw_len = stored.raw_len
            codec: int = stored.codec
            data = None   # an evicted payload, read back
            # In RAM: decode straight from the arena, its segment pinned.
            view = self.arena.pin(payload) if type(payload) is int else None
            # What reading an evicted record counts, unlocked: applied with the lock.
            tally = Tally() if view is None else None
            try:
                with released(self.lock):
                    faults.hit("read.decode")
                    if view is None:
                        codec, data = self._read_evicted(payload, tally)  # type: ignore[arg-type]
                        raw = self.codec.decompress(codec, data, raw_len, mutable)
                    else:
                        raw = self.codec.decompress(codec, view, raw_len, mutable)
            except FsError:
                if f.slot(idx) is slot and slot.stored is stored and stored.payload is payload:
                    raise
                continue   # the block was moved or freed meanwhile: look again
            finally:
                if view is not None:
                    self.arena.unpin(view)
                else:
                    self.cold.apply(tally)  # type: ignore[union-attr, arg-type]
            if f.slot(idx) is slot and slot.raw is None and slot.stored is stored:
                slot.raw = raw
                self.buffer.charge(slot, self.clock())
                self.counters.loads += 1
                if hot:
                    self._promote_or_touch(stored, data)
                return raw

    def _read_evicted(self, loc: Location, tally: Tally) -> tuple[int, bytes]:
        """An evicted payload, read back and checked. Runs UNLOCKED; counts
        into tally, which the caller applies once it holds the lock."""
        assert self.cold is not None
        try:
            return self.cold.read(loc, tally)
        except ColdReadError as e:
            log.error("reading an evicted block failed: %s", e)
            raise FsError(errno.EIO, str(e)) from None

    def _promote_or_touch(self, block: StoredBlock, data: Optional[bytes]) -> None:
        """A hot block was read: mark it recently used, and if it lives on
        the device (data: its payload, read back) and RAM stays under the
        high watermark with it, bring it back (the evictor then moves colder
        blocks out, not this one)."""
        if block.in_ram:
            self.store.touch(block)
            return
        if (data is not None and self.cold is not None and self.ram_budget and block.refs > 0
                and self.ram_in_use(len(data)) <= EVICT_HIGH * self.ram_budget):
            try:
                loc = self.store.promoted(block, data)
            except ArenaFull:
                return   # no room in the arena: it stays on the device
            self.cold.free(loc)
            self.counters.promotions += 1

    def read(self, f: FileData, off: int, size: int) -> bytes:
        """Read up to size bytes at off, as one bytes. Releases the global lock."""
        return joined(self.read_pieces(f, off, size))

    def in_ram(self, f: FileData, first: int, last: int) -> bool:
        """Whether blocks first to last of f read without the backing device:
        each is a hole, buffered, or stored in the arena. What the native
        transport puts into the page cache unasked (transport/directwrite.py)
        must not cost device reads. Never releases the lock."""
        for idx in range(first, last + 1):
            slot = f.slot(idx)
            if slot is not None and slot.raw is None and slot.stored is not None \
                    and not slot.stored.in_ram:
                return False
        return True

    def read_pieces(self, f: FileData, off: int, size: int) -> list[bytes | memoryview]:
        """Read up to size bytes at off, as pieces to send with one writev(2)
        (the native transport: joining the 8 blocks of a 1 MiB READ cost a
        copy of the whole answer). Each piece is immutable: bytes, or a view
        of bytes (a block's raw copy, the zero page run), never of a buffer
        a writer may change. Releases the global lock.

        Blocks are decompressed here, in the worker, not ahead of the reader
        by the background thread: measured on a cold 1 GiB read, decoding
        inline gave 2.3-2.4 GB/s and a prefetching thread 1.7-2.0 GB/s, because
        every hand-off of the global lock between threads costs a cross-CPU
        wake-up (~50-100 us on this machine), more than decoding a block. The
        kernel's asynchronous readahead keeps requests in flight meanwhile.
        """
        if off >= f.size or size <= 0:
            return [b""]
        end = min(off + size, f.size)
        bs = self.bs
        ends = self.read_ends
        sequential = off == 0 or off == ends.get(f)
        ends[f] = end   # _set_end(), inline on this path
        if len(ends) > ACCESS_ENDS_MAX:
            del ends[next(iter(ends))]
        # The fast paths of a read inside one block: a slice of a buffered
        # block, or a whole stored block for a stream. They return None when
        # they do not apply; the general path below handles every case.
        idx = off // bs
        boff = off - idx * bs
        if boff + end - off <= bs:
            m = f.map   # f.slot(idx), inline on this path
            slot = m if type(m) is Slot and m.index == idx else m.get(idx) if type(m) is dict else None
            if slot is not None:
                if slot.raw is not None:
                    out = self._slice_buffered(slot, boff, end - off, sequential)
                elif sequential and end - off == bs and slot.stored is not None:
                    out = self._stream_block(f, idx, slot)
                else:
                    out = None
                if out is not None:
                    return [out]
        pieces: list[bytes | memoryview] = []
        pos = off
        while pos < end:
            idx, boff = divmod(pos, bs)
            n = min(bs - boff, end - pos)
            slot = f.slot(idx) if sequential and n == bs else None
            if slot is not None and slot.raw is None and slot.stored is not None:
                # A whole stored block of a stream (1 MiB READs span 8): as
                # the one-block fast path, decoded without entering the buffer.
                out = self._stream_block(f, idx, slot)
                if out is not None:
                    pieces.append(out)
                    pos += n
                    continue
            raw = self.raw_for(f, idx, hot=not sequential)
            if raw is None:
                pieces.append(_ZEROS_MV[:n])
            else:
                if isinstance(raw, bytes):
                    piece = memoryview(raw)[boff:boff + n] if (boff or n < len(raw)) else raw
                else:
                    # A bytearray may be resized by a writer while the lock is
                    # released for the next block: copy, never hold a view.
                    piece = bytes(raw[boff:boff + n])
                pieces.append(piece)
                if len(piece) < n:
                    pieces.append(_ZEROS_MV[:n - len(piece)])
                if sequential and boff + n == bs:
                    # A stream is done with this block, and the page cache now
                    # holds it: drop our clean copy instead of aging it out.
                    slot = f.slot(idx)
                    if slot is not None and slot.raw is raw and not slot.dirty:
                        self._drop_clean(slot)
            pos += n
        self._shed_clean()
        return pieces

    def _slice_buffered(self, slot: Slot, boff: int, n: int, sequential: bool) -> Optional[bytes]:
        """n bytes at boff of a buffered block (random 4 KiB reads of hot
        data), or None if the read passes the block's extent (the general
        path pads the zeros). Never releases the lock."""
        raw = slot.raw
        assert raw is not None
        if boff + n > len(raw):
            return None
        self.buffer.touch(slot, self.clock())
        piece = raw if n == len(raw) and type(raw) is bytes else bytes(raw[boff:boff + n])
        if sequential and boff + n == self.bs and slot.stored is not None:
            self._drop_clean(slot)   # as read() does: a stream is done with a clean copy
        return piece

    def _stream_block(self, f: FileData, idx: int, slot: Slot) -> Optional[bytes]:
        """Block idx (its slot, stored and not buffered) read whole by a
        sequential reader, decoded and returned without entering the hot
        buffer, or None if this does not apply (the block is evicted, shorter
        than a block, or changed while it was decoded); read() then takes the
        general path.

        The general path charges the decoded block to the buffer and drops it
        again at once, because a stream reads each block once and the page
        cache keeps it: 700 bytecodes per 128 KiB READ, against 52 for
        pyfuse_mem.py's slice. Releases the global lock.
        """
        if slot.extent != self.bs:
            return None
        stored = slot.stored
        assert stored is not None
        payload = stored.payload
        if type(payload) is not int:
            return None   # on the device: raw_for reads it back
        arena = self.arena
        view = arena.pin(payload)   # its segment stays mapped while decoding from it
        try:
            with self._unlocked:
                faults.hit("read.decode")
                raw = self.codec.decompress(stored.codec, view, self.bs)
        finally:
            arena.unpin(view)
        if slot.stored is not stored or f.slot(idx) is not slot:
            return None   # written or cut meanwhile: read what is there now
        self.counters.loads += 1
        return raw  # type: ignore[return-value]

    # ---- writing -------------------------------------------------------
    def _partial_indexes(self, off: int, end: int) -> list[int]:
        """Blocks that a write of [off, end) covers only in part."""
        bs = self.bs
        first, last = off // bs, (end - 1) // bs
        out = []
        if off % bs or (first == last and end % bs):
            out.append(first)
        if last != first and end % bs:
            out.append(last)
        return out

    def _load_partials(self, f: FileData, off: int, end: int, idxs: Iterable[int]) -> None:
        """Load the old content of the partly written blocks idxs that keep some
        of it (a write from a block's start past its extent keeps nothing).

        Releases the global lock.
        """
        bs = self.bs
        while True:
            missing = []
            for i in idxs:
                s = f.slot(i)
                if s is None or s.raw is not None or s.stored is None:
                    continue   # a hole, loaded, or UNWRITTEN: nothing to load
                start = i * bs
                if off <= start and min(end, start + bs) - start >= s.extent:
                    continue
                missing.append(i)
            if not missing:
                return
            for i in missing:
                self.raw_for(f, i, mutable=True)

    def _growth(self, f: FileData, off: int, end: int) -> tuple[int, int]:
        """(allocation growth in bytes, RAM growth in bytes) of writing [off, end).

        RAM growth is the raw bytes that become dirty, minus the stored
        payloads that the write frees (an overwrite of stored data needs no
        more RAM than the data it replaces, if that compressed as badly).
        """
        bs = self.bs
        alloc = ram = 0
        for idx in range(off // bs, (end - 1) // bs + 1):
            start = idx * bs
            boff = max(off, start) - start
            bend = min(end, start + bs) - start
            slot = f.slot(idx)
            if slot is None:
                alloc += PAGE * page_span(boff, bend).bit_count()
                ram += bend
                continue
            alloc += PAGE * (page_span(boff, bend) & ~slot.page_mask).bit_count()
            new_extent = max(slot.extent, bend)
            if slot.dirty:
                ram += new_extent - self.buffer.charged(slot)
            else:
                ram += new_extent
                st_ = slot.stored
                if st_ is not None and st_.refs == 1 and st_.in_ram:
                    ram -= st_.payload & LEN_MASK  # type: ignore[operator]
        return alloc, ram

    def write(self, f: FileData, off: int, data: bytes) -> int:
        """Write data at off; returns len(data). Releases the global lock.

        Raises FsError(EFBIG) past the maximum file size and FsError(ENOSPC)
        when size= or the RAM budget would be exceeded, or when the write
        needs more RAM and the payload arena cannot grow (after make_room()
        compacted it and sealed what it could); nothing is changed then.
        """
        if self._write_in_place(f, off, data):
            return len(data)
        n = len(data)
        if n == 0:
            return 0
        end = off + n
        if off < 0 or end > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, "write past the maximum file size")
        partial = self._partial_indexes(off, end)
        for attempt in range(2):
            self._load_partials(f, off, end, partial)
            alloc, ram = self._growth(f, off, end)
            if self.size_limit and self.alloc_bytes + alloc > self.size_limit:
                fit = self._bytes_that_fit(f, off, end)
                if fit:
                    # As tmpfs: write what fits and return a short count.
                    return self.write(f, off, data[:fit])
                self.counters.enospc += 1
                raise FsError(errno.ENOSPC, "size= limit reached")
            arena_full = ram > 0 and self.arena.full
            if not arena_full and (not self.ram_budget or ram <= 0
                                   or self.ram_in_use(ram) <= self.ram_budget):
                break
            if attempt == 0:
                self.make_room()   # releases the lock: re-check everything
        else:
            self.counters.enospc += 1
            raise FsError(errno.ENOSPC, "the payload arena cannot grow" if arena_full
                          else "ram= budget reached")
        faults.hit("write.apply")
        self._apply_write(f, off, data)
        self._shed(allow_seal=True)
        return n

    def _write_in_place(self, f: FileData, off: int, data: bytes) -> bool:
        """The fast path of small writes inside one block: an overwrite or an
        append without a gap in a dirty block, or the first write of a new
        block from its start. Returns False if it does not apply; the
        general path then does the same write (and refuses or shortens it
        at a limit).

        These are most writes: random 4 KiB overwrites, tar's 10 KiB
        records (the first one of each file, then appends), and sequential
        128 KiB requests, one new block each. The general path walks six
        functions per write; in the daemon, where every request runs after
        a context switch with cold caches, each call costs several times
        what it costs in a loop (docs/profiling.md, "The untar"). This one
        touches the slot, the buffer and the counters only. It runs first,
        before write()'s own checks: a slot exists only inside the maximum
        file size, and a new block is checked here.
        """
        bs = self.bs
        idx = off // bs
        boff = off - idx * bs
        end = boff + len(data)
        if end > bs or end == boff:
            return False       # across blocks, or empty
        m = f.map   # f.slot(idx), inline on this path
        slot = m if type(m) is Slot and m.index == idx else m.get(idx) if type(m) is dict else None
        buf = self.buffer
        if slot is None:
            if boff or off < 0 or off + end > MAX_FILE_SIZE:
                return False   # a sparse start (the general path pads the block), or EFBIG
            extent = mask = 0
        elif slot.stored is not None or slot.raw is None or boff > len(slot.raw) \
                or slot in buf.sealing:
            return False       # not dirty, a gap before the write, or being compressed
        else:
            extent, mask = len(slot.raw), slot.page_mask
        new_pages = page_span(boff, end) & ~mask
        if new_pages:
            grown = PAGE * new_pages.bit_count()
            if self.size_limit and self.alloc_bytes + grown > self.size_limit:
                return False
        growth = end - extent
        if growth > 0 and (self.arena.full or self.ram_budget and
                           self.store.counters.stored_bytes + buf.dirty_bytes + growth > self.ram_budget):
            return False   # no room in the arena, or over ram= (ram_in_use(), inline)
        now = self.clock()
        if slot is None:
            # A whole llfuse request is kept as is, without a copy.
            slot = Slot(file=f, index=idx,
                        page_mask=new_pages if new_pages <= 256 else self.ints.share(new_pages),
                        raw=data if type(data) is bytes else bytes(data), generation=1)
            f.put(slot, self.maps)
            buf.add_dirty(slot, now)
        else:
            raw = slot.raw
            if type(raw) is not bytearray:
                raw = slot.raw = bytearray(raw)   # a kept request (bytes): copy once
            raw[boff:end] = data
            slot.generation += 1
            if growth > 0:
                buf.grow_dirty(slot, now)    # recharged at its new length
            else:
                buf.touch(slot, now)
            if new_pages:
                mask |= new_pages
                slot.page_mask = mask if mask <= 256 else self.ints.share(mask)
        if new_pages:   # _account_pages(), inline on this path
            f.alloc_pages += new_pages.bit_count()
            self.alloc_bytes += grown
        ends = self.write_ends
        if end == bs and off == ends.get(f, 0):
            self.seal_queue.append(slot)   # a sequential writer filled it
            self._maybe_wake_sealer()
        end += off - boff   # now the file offset
        ends[f] = end   # _set_end(), inline on this path
        if len(ends) > ACCESS_ENDS_MAX:
            del ends[next(iter(ends))]
        if end > f.size:
            f.size = end
        if buf.dirty_bytes + buf.clean_bytes + buf.pack_cache_bytes > buf.budget:
            self._shed(allow_seal=True)
        return True

    def _bytes_that_fit(self, f: FileData, off: int, end: int) -> int:
        """How many bytes from off can be written without passing size=."""
        room = self.size_limit - self.alloc_bytes
        pos = off
        while pos < end:
            idx, boff = divmod(pos, self.bs)
            page_end = min(end, pos - pos % PAGE + PAGE)
            slot = f.slot(idx)
            if slot is None or not slot.page_mask & page_span(boff, boff + 1):
                room -= PAGE
                if room < 0:
                    break
            pos = page_end
        return pos - off

    def ram_in_use(self, extra_dirty: int = 0) -> int:
        """RAM that cannot be dropped at will: stored payloads plus dirty blocks."""
        return self.store.counters.stored_bytes + self.buffer.dirty_bytes + extra_dirty

    def _apply_write(self, f: FileData, off: int, data: bytes) -> None:
        """Copy data into the block map. Holds the lock throughout; never releases it."""
        bs = self.bs
        now = self.clock()
        mv = memoryview(data)
        n = len(data)
        sequential = off == self.write_ends.get(f, 0)
        pos = 0
        while pos < n:
            idx, boff = divmod(off + pos, bs)
            k = min(bs - boff, n - pos)
            chunk = mv[pos:pos + k]
            slot = f.slot(idx)
            if slot is None:
                slot = Slot(file=f, index=idx)
                f.put(slot, self.maps)
                self.unwritten_slots += 1   # until _set_dirty below, like any empty slot
            old_extent = slot.extent
            if boff == 0 and k >= old_extent:
                # The write replaces all old content: no need for the old bytes,
                # and a whole llfuse request is kept as is, without a copy.
                raw: bytes | bytearray = data if (k == n and type(data) is bytes) else bytes(chunk)
            else:
                assert old_extent == 0 or slot.raw is not None, "partial write to an unloaded block"
                raw = slot.raw if slot.raw is not None else bytearray()
                if isinstance(raw, bytes) or slot in self.buffer.sealing:
                    raw = bytearray(raw)
                if boff > len(raw):
                    raw.extend(_ZEROS_MV[:boff - len(raw)])
                raw[boff:boff + k] = chunk
            self._set_dirty(slot, raw, now)
            new_pages = page_span(boff, boff + k) & ~slot.page_mask
            if new_pages:
                slot.page_mask = self._share(slot.page_mask | new_pages)
                self._account_pages(f, new_pages.bit_count())
            if sequential and boff + k == bs:
                self.seal_queue.append(slot)
            pos += k
        self._set_end(self.write_ends, f, off + n)
        if off + n > f.size:
            f.size = off + n
        self._maybe_wake_sealer()

    def _account_pages(self, f: FileData, n: int) -> None:
        """Add n allocated pages (negative: freed) to the file and the total."""
        f.alloc_pages += n
        self.alloc_bytes += PAGE * n

    def _share(self, mask: int) -> int:
        """A page mask, as the shared object for its value past the small
        ints: a full 128 KiB block's is 2**32 - 1, 32 bytes of its own in
        every slot otherwise."""
        return mask if mask <= 256 else self.ints.share(mask)

    @staticmethod
    def _set_end(ends: dict[FileData, int], f: FileData, end: int) -> None:
        """Record f's last write or read end, keeping at most ACCESS_ENDS_MAX
        files (the oldest entry goes)."""
        ends[f] = end
        if len(ends) > ACCESS_ENDS_MAX:
            del ends[next(iter(ends))]

    def _set_dirty(self, slot: Slot, raw: bytes | bytearray, now: float) -> None:
        if slot.raw is None and slot.stored is None:
            self.unwritten_slots -= 1   # an UNWRITTEN (or new) slot gets content
        if slot.stored is not None:
            self.store.unref(slot.stored)
            self.buffer.discharge(slot)   # its charge was clean; recharged as dirty below
            slot.stored = None
        slot.raw = raw
        slot.generation += 1
        self.buffer.charge(slot, now)

    # ---- truncating and freeing -----------------------------------------
    def truncate(self, f: FileData, new_size: int) -> None:
        """Set the file size; growing makes a hole. A size at or below the
        current one also frees the pages allocated past it (fallocate with
        KEEP_SIZE), as tmpfs does. Releases the global lock."""
        if new_size < 0 or new_size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, "size past the maximum file size")
        keep_idx, keep = divmod(new_size, self.bs)
        while keep and new_size < f.size:
            # The block the new end falls in must be loaded before it is cut.
            s = f.slot(keep_idx)
            if s is None or s.extent <= keep or s.raw is not None:
                break
            self.raw_for(f, keep_idx)
        faults.hit("truncate.cut")
        if new_size <= f.size:
            for s in f.slots():
                if s.index > keep_idx or (s.index == keep_idx and not keep):
                    self._detach(f, s)
            slot = f.slot(keep_idx) if keep else None
            if slot is not None:
                if slot.extent > keep:
                    assert slot.raw is not None
                    self._set_dirty(slot, bytes(slot.raw[:keep]), self.clock())
                lost = slot.page_mask & ~page_span(0, keep)
                if lost:
                    slot.page_mask = self._share(slot.page_mask & ~lost)
                    self._account_pages(f, -lost.bit_count())
                    if not slot.page_mask and not slot.extent:
                        self._detach(f, slot)   # UNWRITTEN, nothing left allocated
        f.size = new_size
        if self.write_ends.get(f, 0) > new_size:
            self.write_ends[f] = new_size

    def make_unwritten(self, slot: Slot) -> None:
        """Drop slot's content (it reads as zeros) and keep its allocated
        pages: the UNWRITTEN state. Never releases the lock."""
        if slot.raw is not None or slot.stored is not None:
            self.unwritten_slots += 1
        self.buffer.discharge(slot)
        if slot.stored is not None:
            self.store.unref(slot.stored)
            slot.stored = None
        slot.raw = None
        slot.generation += 1

    def _detach(self, f: FileData, slot: Slot) -> None:
        """Remove slot from its file and release what it holds. Never releases the lock."""
        f.remove(slot, self.maps)
        if slot.raw is None and slot.stored is None:
            self.unwritten_slots -= 1
        self._account_pages(f, -slot.page_mask.bit_count())
        self.buffer.discharge(slot)
        if slot.stored is not None:
            self.store.unref(slot.stored)
            slot.stored = None
        slot.raw = None
        slot.file = None
        slot.generation += 1

    def free(self, f: FileData) -> None:
        """Release all data of a file being deleted. Never releases the lock."""
        for slot in f.slots():
            self._detach(f, slot)
        f.size = 0
        self.write_ends.pop(f, None)
        self.read_ends.pop(f, None)

    def release(self, f: FileData) -> None:
        """The last handle of f was closed: queue its dirty blocks for
        sealing, forget its access ends, and share its size's int."""
        m = f.map
        if m is not None:
            queue = self.seal_queue
            sealing = self.buffer.sealing
            for s in m.values() if type(m) is dict else (m,):   # type: ignore[union-attr]
                if s.stored is None and s.raw is not None and s not in sealing:   # dirty
                    queue.append(s)
        self.write_ends.pop(f, None)
        self.read_ends.pop(f, None)
        if f.size > 256:
            # Copies of a tree (and files of one record size) repeat sizes.
            f.size = self.ints.share(f.size)
        self._maybe_wake_sealer()

    def _maybe_wake_sealer(self) -> None:
        """Wake the sealer once a batch is queued; smaller queues wait for its
        periodic pass. Each wake-up hands the global lock to another thread,
        a cross-CPU wake-up (~50-100 us here): waking it for every released
        file of an untar (7,700 files) cost more than compressing them."""
        if len(self.seal_queue) >= SEAL_BATCH:
            self.wake_sealer()

    # ---- sealing -------------------------------------------------------
    def _encode(self, raw: bytes | bytearray,
                batch: dict[int, tuple[bytes | bytearray, Encoded]],
                tally: Optional[Tally]) -> Optional[Encoded]:
        """Fingerprint and compress raw, or reuse the identical block stored
        or earlier in this batch; None if raw is all zeros. Runs unlocked.

        batch maps fingerprint -> (raw, encoding) of the blocks encoded so far
        in this batch, which are not published yet: copies of one file
        sealed together compress once. tally (None without a backing device)
        counts the evicted records read back to verify a match; the caller
        applies it once it holds the lock.
        """
        faults.hit("seal.encode")
        store = self.store
        n = len(raw)
        fp = None
        collided = False
        if store.dedup:
            fp = store.fingerprint(raw)
            if fp == self._zero_fingerprint and n == self.bs and raw.count(0) == n:
                return None
            earlier = batch.get(fp)
            if earlier is not None:
                if earlier[0] == raw:
                    return attrs.evolve(earlier[1], reused=True, collided=False)
                collided = True
            have = store.peek(fp)
            if have is not None and have.raw_len == n:
                # Verify byte for byte: decoding costs ~25 us, compressing
                # (which this skips) 80-400 us at 128 KiB. The payload is
                # copied out of the arena (unlocked: None if the block died or
                # moved meanwhile); an evicted one is read back from the device.
                codec: int = have.codec
                where = have.payload
                payload: Optional[Payload]
                if have.packed:
                    # A member of a pack (packing.py): compare its content.
                    content = self.packer.peek_member(have)  # type: ignore[union-attr]
                    if content is not None:
                        if content == raw:
                            return Encoded(CodecId.RAW, content, fp, reused=True, verified=have)
                        collided = True
                    payload = None
                elif type(where) is Location:
                    assert tally is not None
                    try:
                        codec, payload = self.cold.read(where, tally)  # type: ignore[union-attr]
                    except ColdReadError:
                        payload = None
                else:
                    payload = store.peek_payload(have)
                if payload is not None:
                    if self.codec.decompress(codec, payload, n) == raw:
                        return Encoded(CodecId(codec), payload, fp, reused=True, verified=have)
                    collided = True
        cid, payload = self.codec.compress(raw)
        # Zeros compress to almost nothing, so only tiny payloads (or the
        # "none" codec, which never shrinks anything) are worth a full scan.
        # 128 KiB of zeros: 18 bytes with zstd, 524 with lz4 (1/250).
        if (cid == CodecId.RAW and self.codec.name == "none") or len(payload) * 64 < n:
            if raw.count(0) == n:
                return None
        enc = Encoded(cid, payload, fp, collided=collided)
        if fp is not None:
            batch.setdefault(fp, (raw, enc))
        return enc

    def seal(self, slots: Iterable[Slot]) -> int:
        """Compress dirty slots and publish them. Releases the global lock.

        Returns the number of slots published.
        """
        jobs = []
        raw_bytes = 0
        sealing = self.buffer.sealing
        for s in slots:
            if s.file is None or not s.dirty or s in sealing:
                continue
            sealing.add(s)
            jobs.append((s, s.generation, s.raw))
            raw_bytes += len(s.raw)  # type: ignore[arg-type]
        if not jobs:
            return 0
        results: list[object] = []   # Encoded, None (all zeros) or SEAL_FAILED
        tally = Tally() if self.cold is not None else None
        me = threading.get_ident()
        self.sealing_threads[me] = self.sealing_threads.get(me, 0) + 1
        arena = self.arena
        # Segments the payloads may need, mapped unlocked: mapping and zeroing
        # one costs ~340 us a MiB, which publishing would otherwise pay under
        # the lock (arena.py). The payloads are at most raw_bytes.
        spares_wanted = arena.spares_wanted(raw_bytes)
        spares = []
        try:
            cpu = self.compress_cpu()   # decided under the lock, entered without it
            with released(self.lock), cpu:
                batch: dict[int, tuple[bytes | bytearray, Encoded]] = {}
                for _s, _gen, raw in jobs:
                    try:
                        results.append(self._encode(raw, batch, tally))
                    except Exception as e:  # noqa: BLE001 - the block stays dirty, sealed later
                        log.error("sealing a block failed (it stays in the buffer): %r", e)
                        results.append(SEAL_FAILED)
                if spares_wanted:
                    spares = arena.map_spares(spares_wanted)
        finally:
            if spares:
                arena.add_spares(spares)
            for s, _gen, _raw in jobs:
                sealing.discard(s)
            self.sealing_threads[me] -= 1
            if not self.sealing_threads[me]:
                del self.sealing_threads[me]
            if tally is not None:
                self.cold.apply(tally)  # type: ignore[union-attr]
        published = 0
        for (s, gen, raw), res in zip(jobs, results):
            f = s.file
            if res is SEAL_FAILED:
                self.counters.seal_errors += 1
                continue
            if f is None or s.generation != gen or not s.dirty or f.slot(s.index) is not s:
                self.counters.seals_discarded += 1
                continue
            if res is None:
                if s.page_mask >> ((s.extent + PAGE - 1) // PAGE):
                    # Pages past the extent were fallocated: keep the
                    # allocation, drop the content (UNWRITTEN).
                    self.make_unwritten(s)
                else:
                    self._detach(f, s)
                self.counters.zero_blocks += 1
            else:
                try:
                    stored = self.store.publish(res.codec, res.payload, res.fingerprint, res.verified)
                except ArenaFull:
                    self.counters.seals_arena_full += 1   # stays dirty: nothing is lost
                    continue
                if res.collided:
                    self.store.dedup_counters.verify_mismatches += 1
                if res.reused:
                    self.counters.compressions_skipped += 1
                self.buffer.discharge(s)
                s.stored = stored
                s.raw = None
                self.counters.seals += 1
            published += 1
        return published

    def _shed_clean(self) -> None:
        """Drop clean cached copies, oldest first, while the buffer is over budget."""
        buf = self.buffer
        if buf.total_bytes <= buf.budget:
            return
        self._shed_packs()
        for s in list(buf.slots):
            if buf.total_bytes <= buf.budget:
                break
            if not s.dirty:
                self._drop_clean(s)

    def _shed_packs(self) -> None:
        """Over budget, decoded packs (packing.py's cache) go first: each is
        a whole block that one cold read of a member can decode again."""
        buf = self.buffer
        if buf.pack_cache_bytes and buf.total_bytes > buf.budget:
            self.packer.shed_cache(buf.total_bytes - buf.budget)  # type: ignore[union-attr]

    def _drop_clean(self, s: Slot) -> None:
        self.buffer.discharge(s)
        s.raw = None
        self.counters.clean_drops += 1

    def _shed(self, allow_seal: bool) -> None:
        """Bring the buffer under budget. Releases the global lock when it seals."""
        buf = self.buffer
        sealing = buf.sealing
        self._shed_packs()
        for _ in range(4):
            excess = buf.total_bytes - buf.budget
            if excess <= 0:
                return
            victims: list[Slot] = []
            freed = 0
            for s, e in buf.slots.items():   # oldest first
                if freed >= excess:
                    break
                if s in sealing:
                    continue
                victims.append(s)
                freed += e.charged
            dirty = []
            for s in victims:
                if s.dirty:
                    dirty.append(s)
                else:
                    self._drop_clean(s)
            if not dirty or not allow_seal:
                return
            self.counters.pressure_seals += self.seal(dirty)

    def make_room(self) -> None:
        """Compact the payload arena if it holds much free space, seal every
        dirty block and drop every clean copy; with a backing device, evict
        down to the low watermark. Releases the global lock."""
        self.store.compact(self.lock, COMPACT_BYTES_PER_PASS)
        self.arena.probe(self.lock)   # a mapping failed: try again
        dirty = [s for s in self.buffer.slots if s.dirty]
        for i in range(0, len(dirty), SEAL_BATCH):
            self.counters.pressure_seals += self.seal(dirty[i:i + SEAL_BATCH])
        for s in [s for s in self.buffer.slots if not s.dirty and s not in self.buffer.sealing]:
            self._drop_clean(s)
        if self.cold is not None and self.ram_budget:
            self.evict(int(EVICT_LOW * self.ram_budget))

    # ---- eviction to the backing device -----------------------------------------
    def evict(self, target: int) -> int:
        """Move the least recently used stored blocks to the backing device
        until RAM in use is at most target (Evictor.evict). Releases the
        global lock. Returns the blocks evicted."""
        return self.evictor.evict(target)

    def maintain_device(self) -> None:
        """Discard emptied segments, and clean while free segments run low
        (Evictor.maintain). Releases the global lock."""
        self.evictor.maintain()

    def discard_device(self) -> int:
        """At unmount: discard the backing device's whole used area
        (Evictor.discard_device). Call it last, once no other thread uses
        the filesystem. Releases the global lock. Returns the bytes
        discarded."""
        return self.evictor.discard_device()

    def queued_pass(self) -> int:
        """Seal the blocks queued for sealing. Releases the global lock.

        Returns the number of blocks sealed.
        """
        done = 0
        while self.seal_queue:
            batch, self.seal_queue = self.seal_queue[:SEAL_BATCH], self.seal_queue[SEAL_BATCH:]
            done += self.seal(batch)
        return done

    def background_pass(self) -> int:
        """The queued work, then the aging scan: seal dirty blocks older than
        DIRTY_COLD_SECONDS, drop clean copies older than CLEAN_COLD_SECONDS,
        and bring the buffer under budget. Releases the global lock.

        Returns the number of blocks sealed.
        """
        done = self.queued_pass()
        now = self.clock()
        cold_dirty = []
        for s, touched in list(self.buffer.aged()):
            age = now - touched
            if age < DIRTY_COLD_SECONDS:
                break
            if s.dirty:
                cold_dirty.append(s)
            elif age >= CLEAN_COLD_SECONDS and s not in self.buffer.sealing:
                self._drop_clean(s)
        for i in range(0, len(cold_dirty), SEAL_BATCH):
            done += self.seal(cold_dirty[i:i + SEAL_BATCH])
        self._shed(allow_seal=True)
        self.store.compact(self.lock, COMPACT_BYTES_PER_PASS)
        self.arena.maintain(self.lock)
        if self.cold is not None:
            if self.ram_budget and self.ram_in_use() > EVICT_HIGH * self.ram_budget:
                self.evict(int(EVICT_LOW * self.ram_budget))
            self.maintain_device()
        quiet = self.idle()
        for hook in self.pass_hooks:
            hook(quiet)
        if self.packer is not None and not done:
            self.packer.background_pass()
        if not done:
            self.recompress_pass()
            self.idle_compact()
        return done

    def idle(self) -> bool:
        """Whether the mount's data has been quiet for COMPACT_QUIET_SECONDS:
        nothing sealed, loaded or promoted, and no sealing work."""
        return self.compact_watch.quiet(self, self.clock())

    def idle_compact(self) -> int:
        """Compact the arena to COMPACT_IDLE_FRACTION (and from
        COMPACT_IDLE_MIN_FREE_SEGMENTS) once the mount is quiet (packing
        and recompression leave dead payloads behind), at most
        COMPACT_BYTES_PER_PASS a pass, and first rebuild the tables
        that emptied (idle_tables, tables.py), forget the shared ints and
        what packing remembers of released segments. Releases the global
        lock. Returns the bytes moved."""
        if not self.idle():
            return 0
        for table in self.idle_tables:
            self.counters.table_bytes_freed += tables.shrink(table)
        for ints in self.idle_shared_ints:
            ints.forget()
        if self.packer is not None:
            self.packer.forget_released()
        return self.store.compact(self.lock, COMPACT_BYTES_PER_PASS, COMPACT_IDLE_FRACTION,
                                  COMPACT_IDLE_MIN_FREE_SEGMENTS)

    # ---- idle recompression ------------------------------------------------------
    def recompress_pass(self) -> int:
        """Recompress cold blocks while the mount is idle
        (Recompressor.idle_pass). Releases the global lock. Returns the
        blocks recompressed."""
        return self.recompressor.idle_pass()

    def seal_everything(self) -> None:
        """Seal all dirty blocks now (tests, and stats that want settled
        numbers), and wait for those another thread is sealing. Releases the
        global lock. Blocks that the payload arena has no room for stay
        dirty."""
        self.seal_queue.clear()
        while True:
            dirty = [s for s in self.buffer.slots if s.dirty and s not in self.buffer.sealing]
            if not dirty:
                if not set(self.sealing_threads) - {threading.get_ident()}:
                    return   # nothing in flight, or only in this thread's own outer frame
                # Another thread (the sealer) compresses some, unlocked: let it publish.
                with released(self.lock):
                    time.sleep(0.001)
                continue
            full_before = self.counters.seals_arena_full
            for i in range(0, len(dirty), SEAL_BATCH):
                self.seal(dirty[i:i + SEAL_BATCH])
            if self.counters.seals_arena_full != full_before and self.arena.full:
                self.store.compact(self.lock, COMPACT_BYTES_PER_PASS)
                if self.arena.full:
                    return   # no room: what is left stays dirty
