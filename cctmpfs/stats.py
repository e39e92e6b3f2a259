"""Named, versioned statistics of one mount (`cctmpfs stats --json`).

STATS_VERSION changes whenever a field is renamed, removed or changes
meaning; adding a field does not change it. Byte figures are plain integers.

Threading: collect() reads shared state and must run with the global lock held.
"""

from __future__ import annotations

from typing import Any

import attrs

from .filemap import BlockState
from .memtrim import rss_bytes
from .namespace import Filesystem

STATS_VERSION = 1


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 3) if den else None


def _device(fs: Filesystem) -> dict[str, Any] | None:
    """The backing device's figures, or None without one."""
    cold = fs.engine.cold
    if cold is None:
        return None
    c, dev, lg, st = cold.counters, cold.device.counters, cold.log, fs.store.counters
    return {
        "path": cold.device.path,
        "size_bytes": cold.device.size,
        "encrypted": cold.cipher is not None,
        "segment_bytes": lg.segment_size,
        "segments": lg.nsegments,
        "free_segments": lg.free_segments,
        # Space: segments in use, bytes of live records in them, blocks evicted.
        "used_bytes": (lg.nsegments - lg.free_segments) * lg.segment_size,
        "live_bytes": lg.live_bytes,
        "blocks": st.device_blocks,
        "evictions": c.evictions,
        "promotions": fs.engine.counters.promotions,
        "reads": c.cold_reads,
        "writes": dev.writes,
        "bytes_written": dev.bytes_written,
        "bytes_evicted": c.bytes_evicted,
        # Device bytes written per payload byte evicted (segments, headers, cleaning).
        "write_amplification": _ratio(dev.bytes_written, c.bytes_evicted),
        "segments_cleaned": c.segments_cleaned,
        "records_moved": c.records_moved,
        "discards": dev.discards,
        "checksum_errors": c.checksum_errors,
        "io_errors": c.io_errors + dev.io_errors,
        "full": fs.engine.counters.device_full,
    }


def _arena(fs: Filesystem) -> dict[str, Any]:
    """The payload arena's figures (arena.py, docs/arenas.md)."""
    a = fs.store.arena
    c = a.counters
    return {
        "segment_bytes": a.segment_bytes,
        "segments": len(a.segments),
        "spare_segments": len(a.spares),
        # Bytes mapped (segments and spares; populated, so this is the
        # arena's RSS), the live payloads in them (= stored_bytes), and the
        # rest: free_bytes = fragmented (dead payloads inside the filled
        # parts) + the unfilled room of the segments + the spares.
        "mapped_bytes": a.mapped_bytes,
        "live_bytes": a.live_bytes,
        "free_bytes": a.free_bytes,
        "fragmented_bytes": a.used_bytes - a.live_bytes,
        # Free space outside the heads and spares: what compaction can give
        # back; it starts past compaction_target_bytes.
        "reclaimable_bytes": a.reclaimable_bytes,
        "compaction_target_bytes": a.compaction_target(),
        "limit_bytes": a.limit,
        "full": a.full,
        # Since mount: segments emptied by compaction, payload bytes it
        # moved, moves dropped because the block died meanwhile.
        "compactions": c.compactions,
        "bytes_moved": c.bytes_moved,
        "moves_dropped": c.moves_dropped,
        "segments_mapped": c.segments_mapped,
        "segments_released": c.segments_released,
        "grow_failures": c.grow_failures,
    }


def collect(fs: Filesystem, **extra: Any) -> dict[str, Any]:
    """Every figure of the mount as one JSON-ready dict. Caller holds the lock."""
    eng = fs.engine
    store = fs.store.counters
    buf = eng.buffer
    states = {s.value: 0 for s in BlockState}
    for slot in buf.slots:
        states[slot.state.value] += 1
    # Slots, not distinct blocks: every reference is a slot that is either
    # cached (also in the buffer) or stored only.
    states["stored"] = store.refs - states["cached"]
    files_bytes = sum(n.data.size for n in fs.inodes.values() if n.data is not None)
    ram_used = store.stored_bytes + buf.total_bytes
    index_bytes = fs.store.index_bytes()
    out: dict[str, Any] = {
        "version": STATS_VERSION,
        "codec": eng.codec.name if eng.codec.name != "zstd" else f"zstd:{eng.codec.level}",
        "block_size": eng.bs,
        # Sizes: apparent (st_size), allocated (du), stored (compressed payloads).
        "files_bytes": files_bytes,
        "logical_bytes": eng.alloc_bytes,
        "stored_logical_bytes": store.raw_bytes,
        "stored_bytes": store.stored_bytes,
        "buffer_bytes": buf.total_bytes,
        "buffer_dirty_bytes": buf.dirty_bytes,
        "buffer_clean_bytes": buf.clean_bytes,
        "ram_used_bytes": ram_used,
        # Sealed data as the files see it (shared blocks counted per reference).
        "sealed_logical_bytes": store.referenced_raw_bytes,
        # Ratios of sealed blocks: dedup (references / distinct), compression
        # (distinct decoded / payload) and their product, total; then ratio,
        # the whole mount's: allocated / RAM used.
        "dedup_ratio": _ratio(store.referenced_raw_bytes, store.raw_bytes),
        "compression_ratio": _ratio(store.raw_bytes, store.stored_bytes),
        "total_ratio": _ratio(store.referenced_raw_bytes, store.stored_bytes),
        "ratio": _ratio(eng.alloc_bytes, ram_used),
        "dedup": {
            "enabled": fs.store.dedup,
            "saved_blocks": store.refs - store.blocks,   # references beyond each block's first
            "saved_bytes": store.referenced_raw_bytes - store.raw_bytes,
            "index_entries": len(fs.store.index),
            "unindexed_blocks": store.unindexed_blocks,
            # RAM of the index and the block records, payloads excluded.
            "index_bytes": index_bytes,
            "ram_per_block_bytes": round(index_bytes / store.blocks, 1) if store.blocks else None,
        },
        "zero_blocks": eng.counters.zero_blocks,
        "device": _device(fs),
        "arena": _arena(fs),
        "blocks": states,
        "incompressible_blocks": store.incompressible_blocks,
        "limits": {"size_bytes": eng.size_limit, "ram_bytes": eng.ram_budget,
                   "buffer_bytes": buf.budget, "nr_inodes": fs.nr_inodes},
        "inodes": len(fs.inodes),
        "counters": {**attrs.asdict(eng.counters), **attrs.asdict(fs.counters),
                     **attrs.asdict(fs.store.dedup_counters)},
        "rss_bytes": rss_bytes(),
    }
    out.update(extra)
    return out
