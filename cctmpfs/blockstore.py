"""Sealed blocks: compressed payloads held in RAM, with reference counts.

Threading: all state here is protected by the global lock. Nothing in this
module releases it; payloads are produced outside the lock by the caller and
only published here.
"""

from __future__ import annotations

import logging

import attrs

from .codec import CodecId

log = logging.getLogger(__name__)


@attrs.define(slots=True, eq=False, repr=False)
class StoredBlock:
    """One sealed block. Immutable once created, except `refs`.

    A StoredBlock is referenced by file slots; `refs` counts them (one today,
    several once identical blocks are shared). It is freed at refs == 0.
    """

    codec: CodecId   # codec that produced payload (CodecId.RAW: payload is the raw bytes)
    payload: bytes   # compressed bytes, never mutated
    raw_len: int     # length of the decoded block, <= block_size
    refs: int = 1    # file slots pointing here; protected by the global lock

    def __repr__(self) -> str:
        return f"<StoredBlock {self.codec.name} {len(self.payload)}/{self.raw_len} refs={self.refs}>"


@attrs.define(slots=True)
class StoreCounters:
    """Live totals of the store (not cumulative), one comment each."""

    blocks: int = 0              # distinct stored blocks
    stored_bytes: int = 0        # payload bytes held in RAM
    raw_bytes: int = 0           # decoded bytes those payloads represent
    incompressible_blocks: int = 0  # blocks stored as CodecId.RAW


class BlockStore:
    """Holds every sealed block and accounts for the RAM they use."""

    def __init__(self) -> None:
        self.counters = StoreCounters()

    def add(self, codec: CodecId, payload: bytes, raw_len: int) -> StoredBlock:
        """Publish a freshly compressed block with one reference. Caller holds the lock."""
        c = self.counters
        c.blocks += 1
        c.stored_bytes += len(payload)
        c.raw_bytes += raw_len
        if codec == CodecId.RAW:
            c.incompressible_blocks += 1
        return StoredBlock(codec, payload, raw_len)

    def ref(self, block: StoredBlock) -> None:
        block.refs += 1

    def unref(self, block: StoredBlock) -> None:
        """Drop one reference; free the block at zero. Caller holds the lock."""
        block.refs -= 1
        if block.refs > 0:
            return
        if block.refs < 0:
            raise AssertionError(f"{block!r}: reference count below zero")
        c = self.counters
        c.blocks -= 1
        c.stored_bytes -= len(block.payload)
        c.raw_bytes -= block.raw_len
        if block.codec == CodecId.RAW:
            c.incompressible_blocks -= 1
