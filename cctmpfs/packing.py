"""Small-file packing: sealed, cold blocks shorter than a block (small files,
the tails of bigger ones) packed together into shared compressed "packs", as
squashfs packs fragments (issue 15 item 4, docs/packing.md).

Why. A small file compressed alone compresses badly: zstd has no history to
match against. Measured on the small files of the Python stdlib (128 KiB
blocks, zstd -3), packs of 128 KiB store 23% fewer payload bytes than one
payload per file. Packs of 1 MiB (options.DEFAULT_PACK_BYTES) store 13%
fewer than packs of 128 KiB, and a cold read of one member decodes its pack
up to the member's end: ~0.5 ms on average for 1 MiB, ~0.1 ms for 128 KiB
(docs/packing.md, "Pack size").

Model. A pack is a stored block like any other (blockstore.add_pack): its
payload lives in the arena, is compacted, recompressed and evicted to the
backing device as any block; it is not in the content index, and its
`refs` counts its members. A member is the StoredBlock the files already
refer to, turned in place into a PackedBlock (blockstore.make_member) whose
payload is a PackRef (pack, offset, length) into the pack's decoded bytes.
Turning it in place keeps its references, its fingerprint and its index
entry: every slot sharing it (dedup, copy_file_range) follows, and a later
seal of the same content still finds it and shares it (dedup comes first;
a member is shared through its refcount).

    read      decode the pack (kept in a small decoded cache, charged to the
              hot buffer: reading a directory decodes each pack once) and
              slice the member out (Packer.member_raw)
    write     the member is loaded, the slot gets a private dirty copy and
              drops its reference (the ordinary copy-on-write path of
              filemap: _set_dirty unrefs the stored block)
    unlink    the last reference frees the member (member_freed): the pack's
              live bytes drop; at zero members the pack is freed, below
              REPACK_LIVE_FRACTION its survivors are packed again
    evict     the pack is evicted as any block; a member read reads it back

Packing runs on the idle sealer (background_pass), like idle
recompression: once no block was sealed, loaded or promoted for
PACK_QUIET_SECONDS. Candidates are found by scanning the arena's segments
(the payloads in seal order, so the members of a pack come from the same
directory, which compresses best).

Threading: everything here runs with the global lock held. Functions that
release it say so ("Releases the global lock"): they decode and compress
unlocked on copies taken under the lock, and publish only what is still the
same after re-acquiring (a block still live at the same arena handle, a
member still at the same PackRef). `peek_member` is the one function that
runs WITHOUT the lock (the sealer's dedup lookup); its answer is verified
byte for byte by the caller.
"""

from __future__ import annotations

import collections
import errno
import logging
import sys
from typing import TYPE_CHECKING, Optional, Union

import attrs

from . import faults
from .arena import LEN_MASK, RAW_SHIFT, SEG_MASK, SEG_SHIFT, ArenaFull
from .blockstore import Payload, StoredBlock
from .codec import CodecId
from .coldstore import ColdReadError, Tally
from .devlog import Location
from .errors import FsError
from .locking import released
from .options import MAX_PACK_BYTES
from .quiet import QuietWatch

if TYPE_CHECKING:
    from .filemap import DataEngine

log = logging.getLogger(__name__)

#: The mount counts as idle for packing once no block was sealed, loaded or
#: promoted for this long. 2 s: four sealer polls, as long as a dirty block
#: waits to be sealed (filemap.DIRTY_COLD_SECONDS).
PACK_QUIET_SECONDS = 2.0
#: A block is packed if its content is at most this part of a block. Half:
#: a pack then holds at least two members; the larger a file, the less it
#: gains from its neighbours' history, and the more a read of a neighbour
#: decodes for nothing.
MEMBER_MAX_FRACTION = 0.5
#: Decoded bytes packed per lock release (at least one pack): 512 KiB is
#: ~5-10 ms of zstd work at the sealer's idle CPU class, as a batch of
#: recompression.
BATCH_BYTES = 512 * 1024
#: Batches per sealer pass (every 0.5 s): 4 MiB of small files, or 8 packs.
BATCHES_PER_PASS = 8
#: Arena payload handles the candidate scan looks at per pass.
SCAN_PER_PASS = 16384
#: A pack whose live members hold less than this part of its decoded bytes
#: is packed again, so that deleted members do not pin RAM for long.
REPACK_LIVE_FRACTION = 0.5
#: A pack is published only if its live members fill at least this part of
#: it (the rest changed while it was built): below, it would be repacked soon.
PUBLISH_LIVE_FRACTION = 0.75
#: Blocks remembered as not worth packing (Packer._no_gain), ~100 bytes
#: each; past it the memory is cleared and they are tried once more.
NO_GAIN_MAX = 1 << 16
#: Decoded packs kept for reads: at most this many, and at most 1/16 of the
#: hot buffer's budget (but always one). Reading a directory of small files in order touches
#: one pack after another; 8 leaves room for a few readers at once.
CACHE_PACKS = 8
#: A decoded pack unused this long is dropped (filemap.CLEAN_COLD_SECONDS).
CACHE_COLD_SECONDS = 10.0


#: A member's span in its pack: one int,
#:
#:   bits  0-20   raw_len   the member's decoded length (<= half a block)
#:   bits 21-41   offset    of its first byte in the pack's decoded bytes (< 1 MiB)
#:
#: under 2**60, so CPython stores it in 32 bytes.
SPAN_LEN_BITS = 21
SPAN_LEN_MASK = (1 << SPAN_LEN_BITS) - 1


@attrs.frozen(slots=True, weakref_slot=False)
class PackRef:
    """Where a member's content is: raw_len bytes at offset of the decoded
    pack. The payload of a PackedBlock (blockstore.PACKED_TYPE); raw_len is
    named so that StoredBlock.raw_len reads it as it reads a Location's.

    Offset and length are one int (SPAN_LEN_BITS): 80 bytes a member with
    the record, against 112 with an int each (the stdlib with site-packages
    has 48.7k members). A field more on every StoredBlock instead would
    break the 200 bytes a stored block may cost with its index entry
    (tests/unit/test_dedup.py)."""

    pack: StoredBlock
    span: int

    @property
    def offset(self) -> int:
        return self.span >> SPAN_LEN_BITS

    @property
    def raw_len(self) -> int:
        return self.span & SPAN_LEN_MASK


def pack_ref(pack: StoredBlock, offset: int, raw_len: int) -> PackRef:
    return PackRef(pack, offset << SPAN_LEN_BITS | raw_len)


#: RAM of a member beyond a block record (blockstore.RECORD_BYTES, which
#: counts an arena handle): its PackRef with its span int, less the handle
#: it replaces, plus its 8-byte place in its pack's member list.
MEMBER_EXTRA_BYTES = (sys.getsizeof(pack_ref(None, (1 << 20) - 1, 1 << 16))  # type: ignore[arg-type]
                      + sys.getsizeof(((1 << 20) - 1) << SPAN_LEN_BITS) + 8
                      - sys.getsizeof((1 << 20) << RAW_SHIFT))


@attrs.define(slots=True, eq=False)
class PackInfo:
    """One live pack. Protected by the global lock."""

    raw_len: int          # decoded bytes of the pack, dead slices included
    live_bytes: int       # decoded bytes of its live members
    members: list[StoredBlock]   # the members it was built with; dead ones included until repacked


@attrs.define(slots=True)
class PackCounters:
    """Cumulative packing counters (since mount), one comment each.
    Protected by the global lock."""

    packs_made: int = 0       # packs published
    members_packed: int = 0   # blocks turned into members (repacked ones included)
    bytes_saved: int = 0      # payload bytes the packs of new members saved (old payloads - pack payload)
    repacks: int = 0          # packs whose survivors were packed again
    decodes: int = 0          # packs decoded for a read (not in the decoded cache)
    cache_hits: int = 0       # member reads served by the decoded cache
    write_loads: int = 0      # members loaded to be written: the slot gets a private copy (copy-on-write)
    members_freed: int = 0    # members whose last reference went (unlinked, overwritten, truncated)
    no_gain: int = 0          # packs built and dropped: not smaller than the payloads they replace
    discarded: int = 0        # packs built and dropped: too many members changed meanwhile
    arena_full: int = 0       # packs not stored: the arena could not grow (nothing changed)
    errors: int = 0           # batches whose decode or compression raised (nothing changed)
    passes: int = 0           # sealer passes that built at least one pack


#: A job of a batch: a block to pack, the payload object it must still have
#: at publication (its arena handle, or its PackRef when it is repacked),
#: and where its content comes from: its own payload's codec (the payload is
#: at the handle), or the decoded pack being repacked (its index in the
#: batch's list of packs).
Job = tuple[StoredBlock, Union[int, PackRef], Union[tuple[int], int]]


class Packer:
    """Builds, reads and frees packs for one data engine."""

    def __init__(self, engine: "DataEngine", enabled: bool = True, pack_bytes: int = 0) -> None:
        self.engine = engine
        self.store = engine.store
        self.enabled = enabled
        self.member_max = int(engine.bs * MEMBER_MAX_FRACTION)
        #: Decoded bytes a pack is built to (pack=SIZE, options.DEFAULT_PACK_BYTES):
        #: at least a block, at most what a handle's raw_len holds (arena.py).
        self.pack_bytes = max(engine.bs, pack_bytes)
        assert self.pack_bytes <= MAX_PACK_BYTES, self.pack_bytes
        #: Live packs -> their record. Protected by the global lock.
        self.packs: dict[StoredBlock, PackInfo] = {}
        #: Packs to pack again (their live bytes fell under REPACK_LIVE_FRACTION).
        self.repack: dict[StoredBlock, None] = {}
        #: Live members and their decoded bytes (the sums over self.packs).
        self.members = 0
        self.live_bytes = 0
        self.raw_bytes = 0
        #: Decoded packs, least recently used first: pack -> (content, last use).
        self.cache: collections.OrderedDict[StoredBlock, tuple[bytes, float]] = \
            collections.OrderedDict()
        self.cache_budget = max(self.pack_bytes, min(CACHE_PACKS * self.pack_bytes,
                                                     engine.buffer.budget // 16))
        #: The last pack peek_member decoded: (pack, its payload then, the
        #: decoded bytes, when). A copy of a packed tree probes its members
        #: in the order they were packed, and each probe decoded a whole
        #: pack. Replaced as a whole (one store), read without the lock: a
        #: stale entry costs the caller a copy, since it checks every byte.
        #: Dropped once unused for CACHE_COLD_SECONDS (background_pass). At
        #: most one pack, and not charged to the hot buffer as the cache is.
        self._peeked: Optional[tuple[StoredBlock, object, bytes, float]] = None
        self.counters = PackCounters()
        #: When the mount went quiet (quiet.py); `exhausted` once a scan went
        #: round every segment and found nothing to pack.
        self.watch = QuietWatch(PACK_QUIET_SECONDS)
        self._cursor = -1
        #: id(block) -> the arena handle at which packing it with its
        #: neighbours did not pay (incompressible data): skipped while its
        #: payload stays there. A handle is unique while its payload lives,
        #: so a reused id only costs a missed pack. Bounded by NO_GAIN_MAX;
        #: the entries of released segments go at the idle pass (forget_released).
        self._no_gain: dict[int, int] = {}
        #: The arena's segments released or rewound at the last forget_released().
        self._pruned_at = 0
        engine.packer = self
        self.store.on_member_free = self.member_freed

    def forget_released(self) -> None:
        """Drop the _no_gain entries whose segment was released or holds
        nothing live (the idle pass, DataEngine.idle_compact), once segments
        were released or rewound since the last call: their blocks went.
        Each entry is two ints allocated while packing ran, anywhere in
        pymalloc's arenas, and kept by this dict alone: after `rm -rf` of the
        stdlib with site-packages, 1,100 entries kept 2 of its 1 MiB arenas
        (memprofile.py --census), and the dict holds up to NO_GAIN_MAX.
        Lock held."""
        arena = self.engine.arena
        released = arena.counters.segments_released + arena.counters.heads_reset
        if released == self._pruned_at:
            return
        self._pruned_at = released
        if not self._no_gain:
            return
        segs = arena.segments
        live = {sid for sid, seg in segs.items() if seg.live_blocks}
        # A new dict: a dict's table never shrinks as entries go.
        self._no_gain = {k: h for k, h in self._no_gain.items() if h >> SEG_SHIFT & SEG_MASK in live}

    # ---- reading ---------------------------------------------------------------
    def member_raw(self, member: StoredBlock, mutable: bool = False) -> bytes | bytearray:
        """The content of a pack member, decoding its pack unless it is in the
        decoded cache. Releases the global lock. Raises FsError(EIO) if an
        evicted pack cannot be read back."""
        ref: PackRef = member.payload  # type: ignore[assignment]
        if mutable:
            self.counters.write_loads += 1
        end = ref.offset + ref.raw_len
        data = self._decoded(ref.pack, end)
        out = data[ref.offset:end]
        return bytearray(out) if mutable else out

    def _decoded(self, pack: StoredBlock, need: int) -> bytes:
        """At least the first need decoded bytes of pack, from the cache or
        decoded now (then cached if the pack is still live). Releases the
        global lock.

        A pack not in the cache is decoded only up to need: a small file
        read alone decodes half a pack on average, not all of it (~480
        against ~800 us for 1 MiB packs). A second read past that prefix
        decodes the whole pack: a directory read in order reads the next
        member of the same pack next."""
        eng = self.engine
        now = eng.clock()
        hit = self.cache.get(pack)
        if hit is not None and len(hit[0]) >= need:
            self.cache[pack] = (hit[0], now)
            self.cache.move_to_end(pack)
            self.counters.cache_hits += 1
            self.store.touch(pack)
            return hit[0]
        while True:
            p = pack.payload
            cid: int = pack.codec
            raw_len = pack.raw_len
            want = need if hit is None else raw_len
            if type(p) is int:
                view = eng.arena.pin(p)
                try:
                    with released(eng.lock):
                        faults.hit("read.decode")
                        data = eng.codec.decompress_prefix(cid, view, raw_len, want)
                finally:
                    eng.arena.unpin(view)
                break
            assert eng.cold is not None
            tally = Tally()
            try:
                with released(eng.lock):
                    faults.hit("read.decode")
                    try:
                        cid, payload = eng.cold.read(p, tally)  # type: ignore[arg-type]
                    except ColdReadError as e:
                        log.error("reading an evicted pack failed: %s", e)
                        raise FsError(errno.EIO, str(e)) from None
                    data = eng.codec.decompress_prefix(cid, payload, raw_len, want)
            except FsError:
                if pack.payload is p:
                    raise
                continue   # promoted or moved by the cleaner meanwhile: look again
            finally:
                eng.cold.apply(tally)
            break
        data = bytes(data)
        self.counters.decodes += 1
        had = self.cache.get(pack)   # looked up again: the lock was released
        if pack.refs > 0 and (had is None or len(had[0]) < len(data)):
            self.store.touch(pack)
            self._uncache(pack)
            self.cache[pack] = (data, eng.clock())
            buf = eng.buffer
            buf.pack_cache_bytes += len(data)
            # Only the room the hot buffer has left: its budget holds.
            self._trim_cache(min(self.cache_budget, buf.budget - buf.dirty_bytes - buf.clean_bytes))
        return data

    def _trim_cache(self, budget: int, older_than: Optional[float] = None) -> None:
        """Drop decoded packs, least recently used first, while the cache
        holds more than budget bytes (and those unused since older_than)."""
        buf = self.engine.buffer
        while self.cache:
            pack, (data, used) = next(iter(self.cache.items()))
            if buf.pack_cache_bytes <= budget and (older_than is None or used > older_than):
                return
            del self.cache[pack]
            buf.pack_cache_bytes -= len(data)

    def shed_cache(self, excess: int) -> None:
        """Drop decoded packs, least recently used first, until excess bytes
        are gone or none is left: the hot buffer is over its budget
        (filemap's shedding). Lock held."""
        self._trim_cache(max(0, self.engine.buffer.pack_cache_bytes - excess))

    def _uncache(self, pack: StoredBlock) -> None:
        hit = self.cache.pop(pack, None)
        if hit is not None:
            self.engine.buffer.pack_cache_bytes -= len(hit[0])

    def peek_member(self, member: StoredBlock) -> Optional[bytes]:
        """The content of a member, or None if it cannot be had without the
        lock (its pack evicted or moved meanwhile). Runs WITHOUT the lock:
        the sealer's dedup check (filemap._encode), which compares the
        answer byte for byte, so a stale or wrong one costs a copy only."""
        ref = member.payload
        if type(ref) is not PackRef:
            return None
        pack = ref.pack
        try:
            hit = self.cache.get(pack)
            peeked = self._peeked
            if hit is not None:
                data = hit[0]
            elif peeked is not None and peeked[0] is pack and peeked[1] is pack.payload:
                data = peeked[2]
                self._peeked = (pack, peeked[1], data, self.engine.clock())
            else:
                cid: int = pack.codec
                where = pack.payload
                payload = self.store.peek_payload(pack)
                if payload is None:
                    return None
                data = bytes(self.engine.codec.decompress(cid, payload, pack.raw_len))
                self._peeked = (pack, where, data, self.engine.clock())
        except Exception:  # noqa: BLE001 - a racing change; the caller compresses instead
            return None
        return bytes(data[ref.offset:ref.offset + ref.raw_len])

    # ---- freeing -----------------------------------------------------------------
    def member_freed(self, member: StoredBlock) -> None:
        """BlockStore.on_member_free: member's last reference went. Lock held."""
        ref: PackRef = member.payload  # type: ignore[assignment]
        self.counters.members_freed += 1
        self.members -= 1
        self._release(ref)

    def _release(self, ref: PackRef) -> None:
        """A member left the pack of ref (freed or repacked). Lock held."""
        pack = ref.pack
        info = self.packs[pack]
        info.live_bytes -= ref.raw_len
        self.live_bytes -= ref.raw_len
        pack.refs -= 1
        if pack.refs <= 0:
            assert pack.refs == 0 and info.live_bytes == 0, (pack, info)
            del self.packs[pack]
            self.repack.pop(pack, None)
            self._uncache(pack)
            self.raw_bytes -= info.raw_len
            self.store.free_block(pack)
        elif info.live_bytes < REPACK_LIVE_FRACTION * info.raw_len:
            self.repack[pack] = None
            self.watch.exhausted = False

    # ---- packing -----------------------------------------------------------------
    def background_pass(self) -> int:
        """The idle sealer's packing: drop decoded packs gone cold, and once
        the mount is quiet, pack cold small blocks and repack emptied packs,
        a batch per lock release, stopping as soon as there is sealing work.
        Releases the global lock. Returns the packs published."""
        eng = self.engine
        now = eng.clock()
        self._trim_cache(self.cache_budget, now - CACHE_COLD_SECONDS)
        peeked = self._peeked
        if peeked is not None and peeked[3] < now - CACHE_COLD_SECONDS:
            self._peeked = None
        if not self.enabled:
            return 0
        if not self.watch.quiet(eng, now):
            return 0
        done = 0
        for _ in range(BATCHES_PER_PASS):
            if self.watch.busy(eng):
                break   # sealing work comes first
            jobs, packs = self._candidates(max(BATCH_BYTES, self.pack_bytes))
            if not jobs:
                self.watch.exhausted = True
                break
            done += self._pack_batch(jobs, packs)
        if done:
            self.counters.passes += 1
        return done

    def _candidates(self, want: int) -> tuple[list[Job], list[StoredBlock]]:
        """Up to about want decoded bytes of blocks to pack: the live members
        of packs to repack (in RAM), then small blocks in RAM, scanning the
        arena's segments in id order from where the last scan stopped.
        Returns the jobs and the packs to repack they use. Lock held."""
        jobs: list[Job] = []
        packs: list[StoredBlock] = []
        got = 0
        for pack in list(self.repack):
            if got >= want:
                break
            del self.repack[pack]
            if pack.refs <= 0 or type(pack.payload) is not int:
                continue   # freed, or evicted: it costs no RAM there
            live = [m for m in self.packs[pack].members
                    if m.refs > 0 and type(m.payload) is PackRef and m.payload.pack is pack]
            self.packs[pack].members = live
            packs.append(pack)
            for m in live:
                jobs.append((m, m.payload, len(packs) - 1))  # type: ignore[arg-type]
                got += m.payload.raw_len  # type: ignore[union-attr]
        if got >= want:
            return jobs, packs
        arena = self.engine.arena
        ids = sorted(arena.segments)
        if not ids:
            return jobs, packs
        start = next((i for i, sid in enumerate(ids) if sid > self._cursor), 0)
        seen: set[int] = set()
        scanned = 0
        limit = self.member_max
        is_pack = self.packs
        no_gain = self._no_gain
        for sid in ids[start:] + ids[:start]:
            owners = arena.segments[sid].owners
            for b in owners:   # dead and moved ones too: checked by handle
                h = b.payload
                if type(h) is int and b.refs > 0 and h >> SEG_SHIFT & SEG_MASK == sid and \
                        h >> RAW_SHIFT <= limit and b not in is_pack and id(b) not in seen and \
                        no_gain.get(id(b)) != h:
                    seen.add(id(b))
                    jobs.append((b, h, (b.codec,)))
                    got += h >> RAW_SHIFT
                    if got >= want:
                        break   # the rest of this segment is scanned by the next batch
            else:
                self._cursor = sid
            scanned += len(owners)
            if got >= want or scanned >= SCAN_PER_PASS:
                break
        if len(jobs) < 2 and not packs:
            return [], []   # one block alone gains nothing from a pack
        return jobs, packs

    def _pack_batch(self, jobs: list[Job], packs: list[StoredBlock]) -> int:
        """Decode the jobs' contents and build packs of about a block each,
        unlocked (at the sealer's CPU class), then publish each pack whose
        members are still the same. Releases the global lock. Returns the
        packs published.

        The payloads are decoded straight from the arena, pinned (no copy),
        each into its place in one buffer per pack: the transient memory of
        a batch is its packs' decoded bytes and zstd's outputs, which glibc
        keeps in its heaps once freed (docs/packing.md, heap slack)."""
        eng = self.engine
        arena = eng.arena
        bs = self.pack_bytes
        codec = eng.codec
        # Groups of about a block, planned from the lengths the handles carry.
        groups: list[tuple[list[tuple[Job, int]], int]] = []
        group: list[tuple[Job, int]] = []
        size = 0
        for job in jobs:
            n = self._job_len(job)
            if size + n > bs and group:
                groups.append((group, size))
                group, size = [], 0
            group.append((job, size))
            size += n
        if group:
            groups.append((group, size))
        # A pack of new blocks needs two; a repack may keep a lone survivor.
        groups = [(g, n) for g, n in groups if len(g) >= 2 or any(type(j[2]) is int for j, _o in g)]
        if not groups:
            return 0
        built: list[tuple[list[tuple[Job, int]], int, CodecId, Payload, bool]] = []
        views = [arena.pin(p.payload) for p in packs]  # type: ignore[arg-type]
        srcs = [(p.codec, p.raw_len) for p in packs]
        members = [[(arena.pin(j[1]), j[2][0]) if type(j[1]) is int else None  # type: ignore[index]
                    for j, _o in g] for g, _n in groups]
        cpu = eng.compress_cpu()   # decided under the lock, entered without it
        try:
            with released(eng.lock), cpu:
                faults.hit("pack.encode")
                decoded = [codec.decompress(cid, v, n) for (cid, n), v in zip(srcs, views)]
                for (g, n), pinned in zip(groups, members):
                    buf = bytearray(n)
                    for ((_b, expect, src), off), pin in zip(g, pinned):
                        if pin is None:
                            ref: PackRef = expect  # type: ignore[assignment]
                            buf[off:off + ref.raw_len] = \
                                memoryview(decoded[src])[ref.offset:ref.offset + ref.raw_len]  # type: ignore[index]
                        else:
                            view, cid = pin
                            k = expect >> RAW_SHIFT  # type: ignore[operator]
                            buf[off:off + k] = codec.decompress(cid, view, k)
                    # Straight at the recompress level: packs are cold by
                    # construction, and idle recompression would decode
                    # and compress each again a few seconds later.
                    cid2, payload, strong = codec.compress_cold(buf)
                    built.append((g, n, cid2, payload, strong))
        except Exception as e:  # noqa: BLE001 - nothing is changed; the blocks stay as they are
            log.error("packing small blocks failed (they stay as they are): %r", e)
            self.counters.errors += 1
            return 0
        finally:
            for v in views:
                arena.unpin(v)
            for pinned in members:
                for pin in pinned:
                    if pin is not None:
                        arena.unpin(pin[0])
        return sum(self._publish(*b) for b in built)

    def _publish(self, group: list[tuple[Job, int]], raw_len: int, cid: CodecId,
                 payload: Payload, strong: bool = False) -> int:
        """Store one built pack and turn its still unchanged blocks into its
        members. Lock held; never releases it. Returns 1 if published."""
        c = self.counters
        live = [(job, off) for job, off in group if job[0].refs > 0 and job[0].payload is job[1]]
        live_bytes = sum(self._job_len(job) for job, _ in live)
        fresh = [job for job, _ in live if type(job[1]) is int]
        # A pack of new blocks needs two; a repack may keep a lone survivor.
        if not live or (len(fresh) == len(live) and len(live) < 2) or \
                live_bytes < PUBLISH_LIVE_FRACTION * raw_len:
            c.discarded += 1
            return 0
        # What the members' own payloads take now (repacked ones: nothing
        # of their own); the pack must take less, unless it repacks.
        old = sum(job[1] & LEN_MASK for job in fresh)  # type: ignore[operator]
        if len(fresh) == len(live) and len(payload) >= old:
            c.no_gain += 1
            if len(self._no_gain) + len(fresh) > NO_GAIN_MAX:
                self._no_gain.clear()
            for b, h, _src in fresh:
                self._no_gain[id(b)] = h   # not tried again while it keeps this payload
            return 0
        try:
            pack = self.store.add_pack(cid, payload, recompressed=strong)
        except ArenaFull:
            c.arena_full += 1   # nothing changed: the blocks keep their payloads
            return 0
        pack.refs = len(live)
        info = PackInfo(raw_len=raw_len, live_bytes=live_bytes, members=[job[0] for job, _ in live])
        self.packs[pack] = info
        self.raw_bytes += raw_len
        self.live_bytes += live_bytes
        repacked = set()
        for (b, expect, _src), off in live:
            ref = pack_ref(pack, off, self._job_len((b, expect, _src)))
            if type(expect) is int:
                self.store.make_member(b, ref)
                self.members += 1
            else:
                b.payload = ref   # type: ignore[assignment]
                repacked.add(expect.pack)
                self._release(expect)
        c.packs_made += 1
        c.members_packed += len(live)
        c.repacks += len(repacked)
        if len(fresh) == len(live):
            c.bytes_saved += old - len(payload)
        return 1

    @staticmethod
    def _job_len(job: Job) -> int:
        expect = job[1]
        return expect >> RAW_SHIFT if type(expect) is int else expect.raw_len  # type: ignore[operator, union-attr]
