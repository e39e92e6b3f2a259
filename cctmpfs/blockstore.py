"""Sealed blocks: compressed payloads held in RAM, with reference counts, and
the content index that stores every distinct block once.

Deduplication. A sealed block is indexed by a fingerprint of its uncompressed
content. A slot whose content is already stored takes a reference to that
block instead of storing a copy; the block is freed when its last
reference goes. Blocks are immutable, so sharing is copy-on-write by
construction: a write to a slot drops its reference and gives the slot a
private uncompressed copy.

The fingerprint is xxh3-64, with a byte-for-byte check before any sharing
(measured here on a 128 KiB block, see docs/dedup.md):

    xxh3-64      2 us     (the check on a hit: decode 25 us + compare 2 us)
    sha256      73 us
    zstd -3     80-400 us (compressing the block, which a hit skips)

A strong hash would cost more than the whole check, on every block, hit or
not; and xxh3 collisions can be built on purpose, which on a shared /tmp a
user could try. With the check a collision costs one extra copy, never
wrong data: a block whose fingerprint is taken by different content is
stored unindexed.

Payloads live in the payload arena (arena.py): a block in RAM holds a handle
to its bytes there, and the codec's own buffer is freed once the payload is
copied in.

Threading: all state here is protected by the global lock, and nothing in
this module releases it except `compact()` (arena.py). The one read without
the lock is `peek()` with `peek_payload()`: the sealer looks a fingerprint up
in the index while it fingerprints blocks unlocked. CPython's GIL makes a
dict read atomic against writers; the block it returns is only a hint, whose
payload is copied unlocked and kept only if the block was live at the same
handle throughout (Arena.read_unlocked), verified byte for byte, and
re-checked under the lock by `publish()`.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Callable, ClassVar, Optional

import attrs
import xxhash

from .arena import COMPACT_FREE_FRACTION, LEN_MASK, RAW_SHIFT, SEGMENT_BYTES, Arena
from .codec import CodecId, decoded_length
from .devlog import Location

if TYPE_CHECKING:
    from .locking import GlobalLock

log = logging.getLogger(__name__)

Fingerprint = Callable[[bytes | bytearray], int]
#: A payload as the codecs make it: bytes, or the raw buffer itself (RAW).
Payload = bytes | bytearray | memoryview


def fingerprint(raw: bytes | bytearray) -> int:
    """Content fingerprint of a block: the top 60 bits of xxh3-64, as an int.

    60 bits, because CPython stores an int below 2**60 in 32 bytes and a
    64-bit one in 36 (a 16-byte digest as bytes takes 49). With the byte
    check a collision only costs a copy, and among 512k blocks one is
    expected about once in 2**23 mounts (2**37 pairs in 2**60 values).
    """
    return xxhash.xxh3_64_intdigest(raw) >> 4


@attrs.define(slots=True, eq=False, repr=False, weakref_slot=False)
class StoredBlock:
    """One sealed block. Immutable once created, except `refs`.

    `refs` counts the file slots pointing here; the block is freed at zero.
    Make one with new_block().

    The record is kept small, because it is paid per stored block (512k of
    them in a 64 GiB /tmp) and the brief caps it with its index entry at
    200 bytes (tests/unit/test_dedup.py measures it):
    - the codec is the block's class (one subclass per codec), not a field;
    - the decoded length is read from the payload (codec.decoded_length),
      not kept: a field costs 8 bytes, and an int for a file's short tail
      block 28 more.
    """

    codec: ClassVar[CodecId]   # codec that produced payload (RAW: payload is the raw bytes)
    #: The idle sealer recompressed the payload at the stronger level
    #: (DataEngine.recompress_pass). Both flags are the block's class, as
    #: the codec is, so they cost no byte per block.
    recompressed: ClassVar[bool] = False
    #: The idle sealer is done with this block: recompressed, or tried and
    #: it did not pay. It is not tried again.
    settled: ClassVar[bool] = False
    #: A member of a pack (packing.py): payload is a packing.PackRef, a
    #: slice of a shared pack block, not a payload of its own. The class
    #: again (PACKED_TYPE), so it costs no byte per block.
    packed: ClassVar[bool] = False
    #: In RAM: the arena handle of the payload (an int, arena.py: segment,
    #: offset, length and the decoded length; the bytes there never change,
    #: a move gives a new handle). Once evicted: the devlog.Location of its
    #: record on the backing device. Switched only by the arena's compaction
    #: and the cold store's publish phases, under the lock.
    payload: "int | Location"
    #: fingerprint of the decoded content; None when dedup is off. A block is
    #: in the index iff index[fingerprint] is this block (a colliding block
    #: keeps its fingerprint but is not indexed).
    fingerprint: Optional[int] = None
    refs: int = 1    # file slots pointing here; protected by the global lock

    @property
    def raw_len(self) -> int:
        """Length of the decoded block, <= block_size."""
        p = self.payload
        return p >> RAW_SHIFT if type(p) is int else p.raw_len

    @property
    def in_ram(self) -> bool:
        return type(self.payload) is int

    @property
    def payload_len(self) -> int:
        """Bytes of the payload in RAM (0 once evicted)."""
        p = self.payload
        return p & LEN_MASK if type(p) is int else 0

    def __repr__(self) -> str:
        p = self.payload
        where = f"{p & LEN_MASK}" if type(p) is int else f"device@{p.segment}"
        return f"<StoredBlock {self.codec.name} {where}/{self.raw_len} refs={self.refs}>"


def _block_type(cid: CodecId) -> type[StoredBlock]:
    return type(f"{cid.name.title()}Block", (StoredBlock,), {"__slots__": (), "codec": cid})


BLOCK_TYPES: dict[CodecId, type[StoredBlock]] = {cid: _block_type(cid) for cid in CodecId}
#: The class a block takes when its payload is recompressed (always zstd),
#: and the ones it takes when recompressing it did not pay: the same slots,
#: so assigning __class__ keeps the record's size.
RECOMPRESSED_TYPE: type[StoredBlock] = type(
    "RecompressedZstdBlock", (StoredBlock,),
    {"__slots__": (), "codec": CodecId.ZSTD, "recompressed": True, "settled": True})
SETTLED_TYPES: dict[CodecId, type[StoredBlock]] = {
    cid: type(f"Settled{cid.name.title()}Block", (StoredBlock,),
              {"__slots__": (), "codec": cid, "settled": True})
    for cid in CodecId}


def _packed_repr(self: StoredBlock) -> str:
    p = self.payload
    return f"<PackedBlock {p.raw_len}@{p.offset} of {p.pack!r} refs={self.refs}>"  # type: ignore[union-attr]


#: The class a block takes when it becomes a member of a pack
#: (BlockStore.make_member): its payload is a packing.PackRef. Same slots as
#: every block class, so assigning __class__ keeps the record and every
#: slot that refers to it. Its codec is never used (the pack has its own);
#: settled, so recompression leaves it alone (it recompresses the pack).
PACKED_TYPE: type[StoredBlock] = type(
    "PackedBlock", (StoredBlock,),
    {"__slots__": (), "codec": CodecId.ZSTD, "packed": True, "settled": True,
     "__repr__": _packed_repr})


def new_block(codec: CodecId, payload: "int | Location", fingerprint: Optional[int] = None) -> StoredBlock:
    """A stored block with one reference."""
    return BLOCK_TYPES[codec](payload, fingerprint)


@attrs.define(slots=True)
class StoreCounters:
    """Live totals of the store (not cumulative), one comment each.
    Protected by the global lock."""

    blocks: int = 0              # distinct stored blocks
    stored_bytes: int = 0        # payload bytes held in RAM
    raw_bytes: int = 0           # decoded bytes of the distinct blocks
    incompressible_blocks: int = 0  # blocks stored as CodecId.RAW
    refs: int = 0                # references: slots pointing at stored blocks
    referenced_raw_bytes: int = 0   # decoded bytes the references see (raw_bytes x sharing)
    unindexed_blocks: int = 0    # blocks left out of the index by a fingerprint collision
    device_blocks: int = 0       # distinct blocks evicted to the backing device
    device_bytes: int = 0        # bytes their records take there
    recompressed_blocks: int = 0  # blocks whose payload the idle sealer recompressed (in RAM or evicted)


@attrs.define(slots=True)
class DedupCounters:
    """Cumulative dedup counters (since mount), one comment each.
    Protected by the global lock."""

    shared: int = 0              # seals that took a reference instead of storing a copy
    verify_mismatches: int = 0   # fingerprint matched, bytes differed (a collision)


def _record_bytes() -> int:
    """RAM of the records of one stored block, beyond its payload bytes:
    the StoredBlock (plus its GC header), its arena handle, the fingerprint
    int and its slot in its segment's owner list (8 bytes, 9 with the list's
    growth). The index's dict entry is measured separately, from the dict
    itself. tests/unit/test_dedup.py checks this against tracemalloc."""
    sample = new_block(CodecId.RAW, 0, fingerprint(b"x"))
    return sys.getsizeof(sample) + sys.getsizeof((1 << 20) << RAW_SHIFT) + \
        sys.getsizeof(2 ** 60 - 1) + 9


RECORD_BYTES = _record_bytes()


class BlockStore:
    """Holds every sealed block, the content index, and the RAM they use."""

    def __init__(self, *, dedup: bool = True, fingerprint: Fingerprint = fingerprint,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.counters = StoreCounters()
        self.dedup_counters = DedupCounters()
        self.dedup = dedup
        self.fingerprint = fingerprint
        #: the payloads of the blocks in RAM (arena.py)
        self.arena = Arena(segment_bytes)
        #: fingerprint -> the one stored block indexed under it
        self.index: dict[int, StoredBlock] = {}
        #: With a backing device: blocks in RAM, least recently used first
        #: (a dict keeps insertion order; touch() re-inserts). None without
        #: one, so a RAM-only mount pays nothing for it.
        self.ram_order: Optional[dict[StoredBlock, None]] = None
        #: Called (lock held) with the Location of a freed evicted block.
        self.on_device_free: Callable[[Location], None] = lambda loc: None
        #: Called (lock held) with a pack member whose last reference went
        #: (packing.Packer.member_freed); it releases the member's pack.
        self.on_member_free: Callable[[StoredBlock], None] = lambda block: None

    def peek(self, fp: int) -> Optional[StoredBlock]:
        """The block indexed under fp, if any. May be called WITHOUT the lock
        (see the module docstring): the answer is a hint to verify."""
        return self.index.get(fp)

    def peek_payload(self, block: StoredBlock) -> Optional[bytes]:
        """A copy of block's payload if it is in RAM and stayed live while it
        was copied, else None. May be called WITHOUT the lock (peek())."""
        return self.arena.read_unlocked(block)

    def payload_bytes(self, block: StoredBlock) -> bytes:
        """A copy of the payload of a block in RAM. Caller holds the lock."""
        return self.arena.read(block.payload)  # type: ignore[arg-type]

    def publish(self, codec: CodecId, payload: Payload, fp: Optional[int] = None,
                verified: Optional[StoredBlock] = None) -> StoredBlock:
        """Store a sealed block, or share the identical one already stored.
        Returns the block, with one new reference for the caller. Caller
        holds the lock. Raises arena.ArenaFull, with nothing changed, when a
        new payload cannot be stored.

        (codec, payload) must decode to the block's content. With fp, an
        indexed block is shared only if its encoding is the same bytes: both
        decode to one content, so no decoding is needed under the lock. Every
        codec here is deterministic, so two sealers that raced on the same
        content produce the same payload and end with one copy.

        verified is a block whose content the caller compared byte for byte
        with this one (unlocked): an evicted block, whose payload is not in
        RAM to compare, or one whose payload was copied to compare. It is
        shared if it is still the indexed, live block.
        """
        if fp is not None and self.dedup:
            have = self.index.get(fp)
            if have is not None and have is verified and have.refs > 0:
                self.ref(have)
                self.dedup_counters.shared += 1
                return have
            if have is not None and have.codec == codec and type(have.payload) is int and \
                    self.arena.equals(have.payload, payload):
                self.ref(have)
                self.dedup_counters.shared += 1
                return have
            block = self._add(codec, payload, fp)
            if have is None:
                self.index[fp] = block
            else:
                self.counters.unindexed_blocks += 1
            return block
        return self._add(codec, payload, None)

    def _add(self, codec: CodecId, payload: Payload, fp: Optional[int]) -> StoredBlock:
        raw_len = decoded_length(codec, payload)
        block = new_block(codec, 0, fp)
        block.payload = self.arena.alloc(block, payload, raw_len)   # raises ArenaFull first
        n = len(payload)
        c = self.counters
        c.blocks += 1
        c.stored_bytes += n
        c.raw_bytes += raw_len
        c.refs += 1
        c.referenced_raw_bytes += raw_len
        if codec == CodecId.RAW:
            c.incompressible_blocks += 1
        if self.ram_order is not None:
            self.ram_order[block] = None
        return block

    def ref(self, block: StoredBlock) -> None:
        """Add one reference to a live block. Caller holds the lock."""
        if block.refs <= 0:
            raise AssertionError(f"{block!r}: reference to a freed block")
        block.refs += 1
        self.counters.refs += 1
        self.counters.referenced_raw_bytes += block.raw_len

    def unref(self, block: StoredBlock) -> None:
        """Drop one reference; free the block at zero. Caller holds the lock."""
        c = self.counters
        raw_len = block.raw_len
        block.refs -= 1
        c.refs -= 1
        c.referenced_raw_bytes -= raw_len
        if block.refs > 0:
            return
        if block.refs < 0:
            raise AssertionError(f"{block!r}: reference count below zero")
        self.free_block(block)

    def free_block(self, block: StoredBlock) -> None:
        """Free a block with no reference left: its payload, its index entry;
        a pack member is handed to on_member_free (packing.py). Lock held."""
        c = self.counters
        raw_len = block.raw_len
        self._unindex(block)
        if block.packed:
            self.on_member_free(block)
            return
        c.blocks -= 1
        payload = block.payload
        if type(payload) is Location:
            c.device_blocks -= 1
            c.device_bytes -= payload.length
            self.on_device_free(payload)
        else:
            c.stored_bytes -= payload & LEN_MASK
            self.arena.free(payload)
            if self.ram_order is not None:
                del self.ram_order[block]
        c.raw_bytes -= raw_len
        if block.codec == CodecId.RAW:
            c.incompressible_blocks -= 1
        if block.recompressed:
            c.recompressed_blocks -= 1

    def _unindex(self, block: StoredBlock) -> None:
        """A freed block leaves the index (or the count of unindexed ones)."""
        fp = block.fingerprint
        if fp is not None:
            if self.index.get(fp) is block:
                del self.index[fp]
            else:
                self.counters.unindexed_blocks -= 1

    def touch(self, block: StoredBlock) -> None:
        """block was used: it becomes the most recently used in RAM."""
        order = self.ram_order
        if order is not None and block in order:
            del order[block]
            order[block] = None

    def evicted(self, block: StoredBlock, held: int) -> None:
        """block's payload, at arena handle held, moved to the device (its
        payload is now a Location): free its room in RAM. Lock held."""
        c = self.counters
        c.stored_bytes -= held & LEN_MASK
        self.arena.free(held)
        c.device_blocks += 1
        c.device_bytes += block.payload.length  # type: ignore[union-attr]
        if self.ram_order is not None:
            self.ram_order.pop(block, None)

    def promoted(self, block: StoredBlock, payload: bytes) -> Location:
        """An evicted block's payload is back in RAM; returns where its
        record was (for the cold store to free). Lock held. Raises
        arena.ArenaFull, with nothing changed, when there is no room."""
        loc = block.payload
        assert type(loc) is Location
        block.payload = self.arena.alloc(block, payload, loc.raw_len)
        c = self.counters
        c.stored_bytes += len(payload)
        c.device_blocks -= 1
        c.device_bytes -= loc.length
        if self.ram_order is not None:
            self.ram_order[block] = None
        return loc

    def recompressed(self, block: StoredBlock, held: int, payload: bytes) -> int:
        """Replace the payload of block, at arena handle held, by payload: its
        content at the stronger zstd level (DataEngine.recompress_pass). The
        caller checked that block is live at held and that payload is
        smaller. The fingerprint and index are unchanged (same content).
        Returns the bytes saved. Lock held. Raises arena.ArenaFull, with
        nothing changed, when there is no room for the new payload."""
        new = self.arena.alloc(block, payload, held >> RAW_SHIFT)
        self.arena.free(held)
        block.payload = new
        block.__class__ = RECOMPRESSED_TYPE
        self.counters.recompressed_blocks += 1
        saved = (held & LEN_MASK) - len(payload)
        self.counters.stored_bytes -= saved
        return saved

    # ---- packs (packing.py) -----------------------------------------------------
    def add_pack(self, codec: CodecId, payload: Payload, recompressed: bool = False) -> StoredBlock:
        """Store the payload of a pack: a block like any other (in the arena,
        evicted and compacted as any), but unindexed, and its refs count its
        members, not file slots, so it adds nothing to the counters of
        references. recompressed: the payload is already at the recompress
        level (Codec.compress_cold), so idle recompression leaves it alone.
        Lock held. Raises arena.ArenaFull with nothing changed. The caller
        sets refs to its number of members."""
        block = self._add(codec, payload, None)
        self.counters.refs -= 1
        self.counters.referenced_raw_bytes -= block.raw_len
        if recompressed:
            block.__class__ = RECOMPRESSED_TYPE
            self.counters.recompressed_blocks += 1
        return block

    def make_member(self, block: StoredBlock, ref: object) -> None:
        """block, live in RAM, now reads its content from ref (a
        packing.PackRef into a pack holding the same bytes): its own payload
        is freed. Its references, fingerprint and index entry stay, so every
        slot that shares it follows. Lock held."""
        held = block.payload
        assert type(held) is int and block.refs > 0 and not block.packed
        c = self.counters
        c.blocks -= 1
        c.stored_bytes -= held & LEN_MASK
        c.raw_bytes -= held >> RAW_SHIFT
        if block.codec == CodecId.RAW:
            c.incompressible_blocks -= 1
        if block.recompressed:
            c.recompressed_blocks -= 1
        self.arena.free(held)
        if self.ram_order is not None:
            self.ram_order.pop(block, None)
        block.payload = ref  # type: ignore[assignment]
        block.__class__ = PACKED_TYPE

    def settle(self, block: StoredBlock) -> None:
        """Recompressing block did not pay: never try it again. Lock held."""
        if not block.settled:
            block.__class__ = SETTLED_TYPES[block.codec]

    def compact(self, lock: "GlobalLock", max_bytes: int, fraction: float = COMPACT_FREE_FRACTION,
                min_segments: Optional[int] = None) -> int:
        """Compact the payload arena if it holds more free space than
        fraction of its live payloads and min_segments allow
        (arena.compaction_target). Releases the global lock. Returns the
        bytes moved."""
        return self.arena.compact(lock, max_bytes, fraction, min_segments)

    def index_bytes(self) -> int:
        """RAM of the content index plus the block records, payloads excluded."""
        return sys.getsizeof(self.index) + self.counters.blocks * RECORD_BYTES
