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

Threading: all state here is protected by the global lock, and nothing in
this module releases it. The one exception is `peek()`: a lookup in the
index without the lock, made by the sealer while it fingerprints blocks
unlocked. CPython's GIL makes a dict read atomic against writers; the block
it returns is only a hint, verified byte for byte unlocked (its payload is
immutable bytes) and re-checked under the lock by `publish()`.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, ClassVar, Optional

import attrs
import xxhash

from .codec import CodecId, decoded_length
from .devlog import Location

log = logging.getLogger(__name__)

Fingerprint = Callable[[bytes | bytearray], int]


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
    #: The compressed bytes in RAM (never mutated; they know their decoded
    #: length), or, once evicted, the devlog.Location of its record on the
    #: backing device. Only the cold store's publish phases switch it.
    payload: "bytes | Location"
    #: fingerprint of the decoded content; None when dedup is off. A block is
    #: in the index iff index[fingerprint] is this block (a colliding block
    #: keeps its fingerprint but is not indexed).
    fingerprint: Optional[int] = None
    refs: int = 1    # file slots pointing here; protected by the global lock

    @property
    def raw_len(self) -> int:
        """Length of the decoded block, <= block_size."""
        p = self.payload
        return p.raw_len if type(p) is Location else decoded_length(self.codec, p)

    @property
    def in_ram(self) -> bool:
        return type(self.payload) is bytes

    def __repr__(self) -> str:
        where = f"{len(self.payload)}" if self.in_ram else f"device@{self.payload.segment}"  # type: ignore[union-attr]
        return f"<StoredBlock {self.codec.name} {where}/{self.raw_len} refs={self.refs}>"


def _block_type(cid: CodecId) -> type[StoredBlock]:
    return type(f"{cid.name.title()}Block", (StoredBlock,), {"__slots__": (), "codec": cid})


BLOCK_TYPES: dict[CodecId, type[StoredBlock]] = {cid: _block_type(cid) for cid in CodecId}


def new_block(codec: CodecId, payload: bytes, fingerprint: Optional[int] = None) -> StoredBlock:
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


@attrs.define(slots=True)
class DedupCounters:
    """Cumulative dedup counters (since mount), one comment each.
    Protected by the global lock."""

    shared: int = 0              # seals that took a reference instead of storing a copy
    verify_mismatches: int = 0   # fingerprint matched, bytes differed (a collision)


def _record_bytes() -> int:
    """RAM of the records of one stored block, beyond its payload bytes:
    the StoredBlock (plus its GC header), the payload's bytes header and the
    fingerprint int. The index's dict entry is measured separately, from the
    dict itself. tests/unit/test_dedup.py checks this against tracemalloc."""
    sample = new_block(CodecId.RAW, b"x", fingerprint(b"x"))
    return sys.getsizeof(sample) + sys.getsizeof(b"") + sys.getsizeof(2 ** 60 - 1)


RECORD_BYTES = _record_bytes()


class BlockStore:
    """Holds every sealed block, the content index, and the RAM they use."""

    def __init__(self, *, dedup: bool = True, fingerprint: Fingerprint = fingerprint) -> None:
        self.counters = StoreCounters()
        self.dedup_counters = DedupCounters()
        self.dedup = dedup
        self.fingerprint = fingerprint
        #: fingerprint -> the one stored block indexed under it
        self.index: dict[int, StoredBlock] = {}
        #: With a backing device: blocks in RAM, least recently used first
        #: (a dict keeps insertion order; touch() re-inserts). None without
        #: one, so a RAM-only mount pays nothing for it.
        self.ram_order: Optional[dict[StoredBlock, None]] = None
        #: Called (lock held) with the Location of a freed evicted block.
        self.on_device_free: Callable[[Location], None] = lambda loc: None

    def peek(self, fp: int) -> Optional[StoredBlock]:
        """The block indexed under fp, if any. May be called WITHOUT the lock
        (see the module docstring): the answer is a hint to verify."""
        return self.index.get(fp)

    def publish(self, codec: CodecId, payload: bytes, fp: Optional[int] = None,
                verified: Optional[StoredBlock] = None) -> StoredBlock:
        """Store a sealed block, or share the identical one already stored.
        Returns the block, with one new reference for the caller. Caller
        holds the lock.

        (codec, payload) must decode to the block's content. With fp, an
        indexed block is shared only if its encoding is the same bytes: both
        decode to one content, so no decoding is needed under the lock. Every
        codec here is deterministic, so two sealers that raced on the same
        content produce the same payload and end with one copy.

        verified is a block whose content the caller compared byte for byte
        with this one (unlocked): an evicted block, whose payload is not in
        RAM to compare. It is shared if it is still the indexed, live block.
        """
        if fp is not None and self.dedup:
            have = self.index.get(fp)
            if have is not None and have is verified and have.refs > 0:
                self.ref(have)
                self.dedup_counters.shared += 1
                return have
            if have is not None and have.codec == codec and (
                    have.payload is payload or have.payload == payload):
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

    def _add(self, codec: CodecId, payload: bytes, fp: Optional[int]) -> StoredBlock:
        raw_len = decoded_length(codec, payload)
        c = self.counters
        c.blocks += 1
        c.stored_bytes += len(payload)
        c.raw_bytes += raw_len
        c.refs += 1
        c.referenced_raw_bytes += raw_len
        if codec == CodecId.RAW:
            c.incompressible_blocks += 1
        block = new_block(codec, payload, fp)
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
        c.blocks -= 1
        payload = block.payload
        if type(payload) is Location:
            c.device_blocks -= 1
            c.device_bytes -= payload.length
            self.on_device_free(payload)
        else:
            c.stored_bytes -= len(payload)
            if self.ram_order is not None:
                del self.ram_order[block]
        c.raw_bytes -= raw_len
        if block.codec == CodecId.RAW:
            c.incompressible_blocks -= 1
        fp = block.fingerprint
        if fp is not None:
            if self.index.get(fp) is block:
                del self.index[fp]
            else:
                c.unindexed_blocks -= 1

    def touch(self, block: StoredBlock) -> None:
        """block was used: it becomes the most recently used in RAM."""
        order = self.ram_order
        if order is not None and block in order:
            del order[block]
            order[block] = None

    def evicted(self, block: StoredBlock, payload_len: int) -> None:
        """block's payload (payload_len bytes) moved to the device. Lock held."""
        c = self.counters
        c.stored_bytes -= payload_len
        c.device_blocks += 1
        c.device_bytes += block.payload.length  # type: ignore[union-attr]
        if self.ram_order is not None:
            self.ram_order.pop(block, None)

    def promoted(self, block: StoredBlock, payload: bytes) -> Location:
        """An evicted block's payload is back in RAM; returns where its
        record was (for the cold store to free). Lock held."""
        loc = block.payload
        assert type(loc) is Location
        block.payload = payload
        c = self.counters
        c.stored_bytes += len(payload)
        c.device_blocks -= 1
        c.device_bytes -= loc.length
        if self.ram_order is not None:
            self.ram_order[block] = None
        return loc

    def index_bytes(self) -> int:
        """RAM of the content index plus the block records, payloads excluded."""
        return sys.getsizeof(self.index) + self.counters.blocks * RECORD_BYTES
