"""Named, versioned statistics of one mount (`cctmpfs stats --json`).

STATS_VERSION changes whenever a field is renamed, removed or changes
meaning; adding a field does not change it. Byte figures are plain integers.

Threading: collect() reads shared state and must run with the global lock held.
"""

from __future__ import annotations

import collections
import functools
import sys
import time
from typing import Any, Optional

import attrs

from .blockmap import FILE_DATA_BYTES, SLOT_BYTES
from .blockstore import RECORD_BYTES
from .filemap import BlockState, FileData
from .hotbuffer import HOT_ENTRY_BYTES
from .memtrim import rss_bytes
from .namespace import DeviceInode, DirInode, FileInode, Filesystem, Inode, SymlinkInode
from .packedentries import INO_BYTES as PACKED_INO_BYTES, PackedEntries
from .packing import MEMBER_EXTRA_BYTES

STATS_VERSION = 1


# ---- the RAM of the structures ------------------------------------------------
#
# `memory` in the stats estimates the RAM of each kind of structure as the
# size of a representative record (sys.getsizeof, what tracemalloc counts)
# times a live count, so that a stats call never walks the inodes: a walk of
# a million inodes holds the global lock for 70 ms or more. The counts are
# the namespace census (namespace.NamespaceCensus), the store's counters and
# the hot buffer's slots. What the estimate leaves out, or gets wrong, shows
# up in heap_slack_bytes: docs/memory.md says what it held when measured.

def _int_bytes(*values: int) -> int:
    return sum(sys.getsizeof(v) for v in values)


#: A time stamp in nanoseconds (past 2**60 since 2006: 36 bytes, not 32).
_TIME = time.time_ns()
#: An inode number past CPython's cache of small ints (-5..256): each inode
#: keeps its own int object for it.
_BIG = 1 << 20
def _inode_bytes(cls: type[Inode]) -> int:
    """An empty inode record of one kind with its own ino and three distinct
    time stamps, as cp -a leaves them (a file only created shares one int
    for its three times, and with files created in the same clock tick: 64
    to 96 bytes less). mode, uid and gid are shared ints
    (Filesystem.share): nothing per inode."""
    return (sys.getsizeof(cls(_BIG, _BIG, _BIG, _BIG, 1, _TIME, _TIME, _TIME))
            + _int_bytes(_BIG) + 3 * _int_bytes(_TIME))


#: A hot regular file: the inode, its FileData record and its size int
#: (blockmap.FILE_DATA_BYTES; its block map is in file_map_bytes).
FILE_INODE_BYTES = _inode_bytes(FileInode) + FILE_DATA_BYTES
#: A directory: the inode (its entries dict is in the directory model below).
DIR_INODE_BYTES = _inode_bytes(DirInode)
#: A symlink, FIFO, socket or device node: the inode (the largest of those
#: kinds), and a symlink's target bytes header (the target's length is in the
#: census's name bytes).
OTHER_INODE_BYTES = _inode_bytes(SymlinkInode) + sys.getsizeof(b"")
#: What a frozen inode does not cost of those (inodetable.py): its record
#: with its time ints, by record class. Its row is in the table's bytes;
#: its ino int stays, held by its directory entry.
RECORD_BYTES_BY_CLASS = {cls: _inode_bytes(cls) - _int_bytes(_BIG)
                         for cls in (Inode, FileInode, DirInode, SymlinkInode, DeviceInode)}
#: One directory entry beyond the bytes of its name: the name's bytes object
#: header (its dict slot is in the directory model; the value is the inode's
#: own ino int).
ENTRY_BYTES = sys.getsizeof(b"")
#: One block of a file's map is blockmap.SLOT_BYTES: the Slot record (its
#: page mask is a small or shared int; its dict slot, if the map is a dict,
#: is in the file map model).
#: Past this many entries a dict's size per entry is taken as constant.
_DICT_SAMPLE_MAX = 4096


@functools.lru_cache(maxsize=256)
def _dict_bytes_at(n: int) -> int:
    d: dict[int, None] = {}
    for i in range(n):   # inserted one by one, as directories and file maps grow
        d[_BIG + i] = None
    return sys.getsizeof(d)


def dict_bytes(mean: float) -> float:
    """getsizeof of a dict holding `mean` entries (interpolated between whole
    numbers, extrapolated linearly past _DICT_SAMPLE_MAX): the model of a
    non-empty directory's entries and of a file's block map, each taken at
    the mean size of its kind. Dicts grow in steps (64 bytes empty, 224 with
    1-5 int keys, 352 with 6-10...), so a mix of empty and one-block files
    costs the interpolation between 64 and 224, as it should. Empty
    directories are counted apart: with the mean over all directories, 100k
    empty ones beside 100 of 1,000 entries were estimated 160 bytes each too
    high."""
    if mean > _DICT_SAMPLE_MAX:
        return _dict_bytes_at(_DICT_SAMPLE_MAX) * mean / _DICT_SAMPLE_MAX
    lo = int(mean)
    frac = mean - lo
    low = _dict_bytes_at(lo)
    return low if not frac else low + frac * (_dict_bytes_at(lo + 1) - low)


#: The parts of memory() that add up to accounted_bytes.
MEMORY_PARTS = ("payload_bytes", "arena_free_bytes", "hot_buffer_bytes", "inode_bytes",
                "file_map_bytes", "block_record_bytes", "dedup_index_bytes", "codec_context_bytes",
                "pymalloc_free_bytes")


def memory(fs: Filesystem, rss: int, runtime: Optional[int], unsealed: int,
           pymalloc_free: int = 0) -> dict[str, Any]:
    """Where the daemon's RAM goes, estimated from the structures without
    walking them (caller holds the lock). runtime is the RSS the daemon had
    once mounted, before any file (None in process, without a daemon);
    unsealed is the number of dirty and sealing slots; pymalloc_free the
    room pymalloc holds without objects since the mount, measured
    (pools.PoolTrimmer.free_room; 0 without a daemon or without _pools)."""
    c = fs.census
    store = fs.store
    buf = fs.engine.buffer
    others = len(fs.inodes) - c.files - c.dirs
    # Every other slot holds one reference, except UNWRITTEN ones (fallocated).
    slots = store.counters.refs + unsealed + fs.engine.unwritten_slots
    # Inodes frozen into the table's columns have no record (inodetable.py):
    # the records of each kind not hot are taken off.
    table = fs.inodes
    hot = collections.Counter(map(type, dict.values(table)))
    frozen_records = sum((n - hot[cls]) * RECORD_BYTES_BY_CLASS[cls]
                         for cls, n in ((FileInode, c.files), (DirInode, c.dirs)))
    others_hot = sum(n for cls, n in hot.items() if cls is not FileInode and cls is not DirInode)
    frozen_records += (others - others_hot) * RECORD_BYTES_BY_CLASS[SymlinkInode]
    # Hot directories hold a dict (empty ones share EMPTY_ENTRIES: none of
    # their own); frozen ones their entries packed (packedentries.py), ~5
    # bytes beside each name, without the name's bytes object and without
    # the child's ino int.
    hot_dicts = [len(n.entries) for n in dict.values(table) if n.entries]
    hot_entries = sum(hot_dicts)
    frozen_entries = c.entries - hot_entries
    packed_dirs = sum(1 for o in table.obj if type(o) is PackedEntries)
    packed = (packed_dirs * sys.getsizeof(PackedEntries()) + frozen_entries * (1 + PACKED_INO_BYTES)
              - frozen_entries * (ENTRY_BYTES + _int_bytes(_BIG)))
    inode = (table.nbytes() - frozen_records + c.files * FILE_INODE_BYTES + c.dirs * DIR_INODE_BYTES
             + others * OTHER_INODE_BYTES + c.entries * ENTRY_BYTES + c.name_bytes
             + sys.getsizeof(fs.xattrs) + sys.getsizeof(fs.open_counts)
             + len(hot_dicts) * dict_bytes(hot_entries / len(hot_dicts) if hot_dicts else 0)
             + packed)
    # A map of no block or one costs nothing beyond its slot (blockmap.py).
    # In a dict, a block index past 256 is an int of its own (the dict's key
    # and the slot's index are one object); dense maps are the usual case.
    maps = fs.engine.maps
    file_map = maps.dicts * dict_bytes(maps.dict_slots / maps.dicts if maps.dicts else 0) \
        + slots * SLOT_BYTES + max(0, maps.dict_slots - 257 * maps.dicts) * _int_bytes(_BIG)
    # Pack members keep their block record (fingerprint, index entry) and
    # point into their pack with a PackRef instead of an arena handle. The
    # store's `blocks` counts the packs, not their members.
    members = fs.packer.members
    records = (store.counters.blocks + members) * RECORD_BYTES + members * MEMBER_EXTRA_BYTES
    if store.ram_order is not None:   # with a backing device: the blocks' LRU order
        records += sys.getsizeof(store.ram_order)
    parts = {
        # Compressed payloads in RAM: their length in the arena's segments.
        "payload_bytes": store.counters.stored_bytes,
        # The rest of the arena's mapped segments: dead payloads not yet
        # compacted, the unfilled room of the heads, the spare segments.
        # Known exactly, and bounded by compaction (docs/arenas.md).
        "arena_free_bytes": store.arena.free_bytes,
        # Uncompressed hot blocks, the buffer's LRU order and its entries.
        "hot_buffer_bytes": buf.total_bytes + sys.getsizeof(buf.slots)
        + len(buf.slots) * HOT_ENTRY_BYTES,
        # Inode records, the inode table, directory entries, names and symlink
        # targets, the xattr and open count tables (not the xattrs in them).
        "inode_bytes": int(inode),
        # The block maps held as dicts, and a Slot per block.
        "file_map_bytes": int(file_map),
        # StoredBlock records with their fingerprints and payload headers.
        "block_record_bytes": records,
        # The dedup content index (fingerprint -> block).
        "dedup_index_bytes": sys.getsizeof(store.index),
        # The zstd contexts the threads made at their first block, as zstd
        # counts them (Codec.context_bytes): not in runtime_bytes, measured
        # before any file. They were most of /usr/include's slack (3.6 of
        # 4.6 MiB, results/s25-contexts-include.md).
        "codec_context_bytes": fs.engine.codec.context_bytes(),
        # What pymalloc holds without objects, measured from its pool
        # headers (pools.py): freed blocks of pools still in use (a frozen
        # inode's record leaves one, reused by objects of its size class
        # only), empty pools not given back yet, and the page each empty
        # pool keeps. The metadata's slack, as arena_free_bytes is the
        # payloads'.
        "pymalloc_free_bytes": pymalloc_free,
    }
    accounted = sum(parts.values())
    return {
        **parts,
        # The sum of the figures above: what the structures account for.
        "accounted_bytes": accounted,
        # RSS once mounted, before any file: the interpreter, its libraries,
        # llfuse's buffers. None when not measured (no daemon).
        "runtime_bytes": runtime,
        # RSS minus the runtime and the accounted bytes: freed memory the
        # allocators keep, their rounding and fragmentation, and what the
        # estimates miss (docs/memory.md). None without the runtime figure.
        "heap_slack_bytes": rss - runtime - accounted if runtime is not None else None,
        # The counts the estimate multiplies.
        "files": c.files,
        "dirs": c.dirs,
        "empty_dirs": c.empty_dirs,
        "other_inodes": others,
        "entries": c.entries,
        "name_bytes": c.name_bytes,
        "slots": slots,
        # Inodes held as records, and frozen into the table's columns
        # (inodetable.py), and the bytes of the table (its dict and columns).
        "hot_inodes": table.hot,
        "frozen_inodes": len(table) - table.hot,
        "inode_table_bytes": table.nbytes(),
        # The representative records, in bytes (see the constants in stats.py).
        "per_file_inode_bytes": FILE_INODE_BYTES,
        "per_dir_inode_bytes": DIR_INODE_BYTES,
        "per_other_inode_bytes": OTHER_INODE_BYTES,
        "per_entry_bytes": ENTRY_BYTES,
        "per_slot_bytes": SLOT_BYTES,
        "per_block_record_bytes": RECORD_BYTES,
    }


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


def _recompress(fs: Filesystem) -> dict[str, Any]:
    """Idle recompression (recompress=, recompress.Recompressor)."""
    eng = fs.engine
    rc = eng.recompress_counters
    return {
        "level": eng.codec.recompress_level or None,   # None: recompress=off
        # Live: blocks whose payload is the recompressed one now.
        "recompressed_blocks": fs.store.counters.recompressed_blocks,
        # Since mount: blocks recompressed, the payload bytes that saved,
        # blocks tried that did not gain the margin (not tried again),
        # results dropped because the block was freed, evicted or moved
        # meanwhile, failures, and results the full arena could not take.
        "recompressed": rc.recompressed,
        "bytes_saved": rc.bytes_saved,
        "no_gain": rc.no_gain,
        "discarded": rc.discarded,
        "errors": rc.errors,
        "arena_full": rc.arena_full,
        "passes": rc.passes,
    }


def _packing(fs: Filesystem) -> dict[str, Any]:
    """Small-file packing (pack=, packing.py, docs/packing.md)."""
    pk = fs.packer
    pc = pk.counters
    in_ram = [p for p in pk.packs if p.in_ram]
    return {
        "enabled": pk.enabled,
        "pack_bytes": pk.pack_bytes,   # decoded bytes a pack is built to (pack=SIZE)
        # Live: packs, their members, the decoded bytes of the members and
        # the dead slices (deleted members the packs still hold until they
        # are repacked), the packs' payload bytes in RAM, and the decoded
        # packs kept for reads (charged to the hot buffer).
        "packs": len(pk.packs),
        "members": pk.members,
        "live_bytes": pk.live_bytes,
        "dead_bytes": pk.raw_bytes - pk.live_bytes,
        "payload_bytes": sum(p.payload_len for p in in_ram),
        "packs_to_repack": len(pk.repack),
        "cache_bytes": fs.engine.buffer.pack_cache_bytes,
        # Since mount (PackCounters has one comment each).
        **attrs.asdict(pc),
    }


def collect(fs: Filesystem, runtime_rss: Optional[int] = None, pymalloc_free: int = 0,
            **extra: Any) -> dict[str, Any]:
    """Every figure of the mount as one JSON-ready dict. Caller holds the lock.

    runtime_rss: the daemon's RSS once mounted, before any file;
    pymalloc_free: pymalloc's room without objects since then (memory())."""
    eng = fs.engine
    store = fs.store.counters
    buf = eng.buffer
    # The buffer's slots and the stored ones; UNWRITTEN slots (fallocated
    # pages, no content) hold no RAM and are not listed.
    states = {s.value: 0 for s in BlockState if s is not BlockState.UNWRITTEN}
    for slot in buf.slots:
        states[buf.state(slot).value] += 1
    # Slots, not distinct blocks: every reference is a slot that is either
    # cached (also in the buffer) or stored only.
    states["stored"] = store.refs - states["cached"]
    files_bytes = sum(o.size for o in fs.inodes.kind_objects() if type(o) is FileData)
    ram_used = store.stored_bytes + buf.total_bytes
    index_bytes = fs.store.index_bytes()
    rss = rss_bytes()
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
        "recompress": _recompress(fs),
        "packing": _packing(fs),
        "limits": {"size_bytes": eng.size_limit, "ram_bytes": eng.ram_budget,
                   "buffer_bytes": buf.budget, "nr_inodes": fs.nr_inodes},
        "inodes": len(fs.inodes),
        # Inodes held as records (hot) and frozen into columns now, and
        # since mount the freezes and thaws (inodetable.InodeTableCounters
        # has one comment each).
        "inode_table": {"hot": fs.inodes.hot, "frozen": len(fs.inodes) - fs.inodes.hot,
                        **attrs.asdict(fs.inodes.counters)},
        "counters": {**attrs.asdict(eng.counters), **attrs.asdict(fs.counters),
                     **attrs.asdict(fs.store.dedup_counters)},
        "rss_bytes": rss,
        "memory": memory(fs, rss, runtime_rss, states["dirty"] + states["sealing"], pymalloc_free),
    }
    out.update(extra)
    return out
