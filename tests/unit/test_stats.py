"""stats.collect(): a versioned dict of named figures that match the store."""

from __future__ import annotations

import json
import os
import random

import pytest

from cctmpfs import stats
from cctmpfs.codec import Codec
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem

BS = 16384
ME = Caller(uid=1000, gid=1000)

TOP_FIELDS = {
    "version", "codec", "block_size", "files_bytes", "logical_bytes", "stored_logical_bytes",
    "stored_bytes", "buffer_bytes", "buffer_dirty_bytes", "buffer_clean_bytes", "ram_used_bytes",
    "compression_ratio", "ratio", "blocks", "incompressible_blocks", "limits", "inodes",
    "counters", "rss_bytes", "memory", "arena",
}
ARENA_FIELDS = {
    "segment_bytes", "segments", "spare_segments", "mapped_bytes", "live_bytes", "free_bytes",
    "fragmented_bytes", "reclaimable_bytes", "compaction_target_bytes", "limit_bytes", "full",
    "compactions", "bytes_moved", "moves_dropped", "segments_mapped", "segments_released",
    "grow_failures",
}


def text(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [b"alpha ", b"beta ", b"gamma\n", b"delta ", b"epsilon "]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words)
    return bytes(out[:n])


def new_fs(**kw) -> Filesystem:  # type: ignore[no-untyped-def]
    args = dict(block_size=BS, codec=Codec("zstd", 3), buffer_bytes=64 * BS,
                size_limit=64 << 20, nr_inodes=1000, ram_budget=32 << 20)
    args.update(kw)
    return Filesystem(**args)


def test_empty_mount() -> None:
    fs = new_fs()
    s = stats.collect(fs)
    assert TOP_FIELDS <= set(s)
    assert s["version"] == stats.STATS_VERSION and isinstance(s["version"], int)
    assert s["codec"] == "zstd:3"
    assert s["block_size"] == BS
    for key in ("files_bytes", "logical_bytes", "stored_logical_bytes", "stored_bytes",
                "buffer_bytes", "buffer_dirty_bytes", "buffer_clean_bytes", "ram_used_bytes",
                "incompressible_blocks"):
        assert s[key] == 0, key
    assert s["compression_ratio"] is None and s["ratio"] is None
    assert s["blocks"] == {"dirty": 0, "sealing": 0, "cached": 0, "stored": 0}
    assert s["limits"] == {"size_bytes": 64 << 20, "ram_bytes": 32 << 20,
                           "buffer_bytes": 64 * BS, "nr_inodes": 1000}
    assert s["inodes"] == 1
    assert s["counters"]["inodes_created"] == 1
    assert s["counters"]["seals"] == 0
    json.dumps(s)


@pytest.mark.parametrize("name,spec", [("zstd", "zstd:3"), ("lz4", "lz4"), ("none", "none")])
def test_codec_names(name: str, spec: str) -> None:
    assert stats.collect(new_fs(codec=Codec(name, 3)))["codec"] == spec
    assert stats.collect(new_fs(codec=Codec("zstd", 9)))["codec"] == "zstd:9"


def test_figures_match_the_store_after_known_writes() -> None:
    fs = new_fs()
    eng, store = fs.engine, fs.store.counters
    a = fs.create(ROOT_INO, b"a", 0o644, ME).ino
    b = fs.create(ROOT_INO, b"b", 0o644, ME).ino
    fs.mkdir(ROOT_INO, b"d", 0o755, ME)
    compressible = text(3 * BS)
    incompressible = random.Random(1).randbytes(BS)
    fs.write(a, 0, compressible)                 # blocks 0-2, compressible
    fs.write(a, 3 * BS, bytes(BS))               # block 3: zeros, becomes a hole
    fs.write(a, 4 * BS, incompressible)          # block 4: stored raw
    fs.write(b, 100, b"tail")                    # one short block, extent 104

    s = stats.collect(fs)
    assert s["files_bytes"] == 5 * BS + 104
    assert s["logical_bytes"] == eng.alloc_bytes == 5 * BS + 4096
    assert s["buffer_dirty_bytes"] == 5 * BS + 104
    assert s["buffer_clean_bytes"] == 0
    assert s["blocks"]["dirty"] == 6 and s["blocks"]["stored"] == 0
    assert s["stored_bytes"] == 0 and s["compression_ratio"] is None
    assert s["inodes"] == 4

    eng.seal_everything()
    s = stats.collect(fs)
    assert s["counters"]["zero_blocks"] == 1
    assert s["counters"]["seals"] == 5
    assert s["logical_bytes"] == eng.alloc_bytes == 4 * BS + 4096
    assert s["files_bytes"] == 5 * BS + 104      # the hole still counts in st_size
    assert s["stored_logical_bytes"] == store.raw_bytes == 4 * BS + 104
    assert s["stored_bytes"] == store.stored_bytes
    assert s["incompressible_blocks"] == store.incompressible_blocks == 1
    assert BS + 1 < store.stored_bytes < 2 * BS   # the raw block plus small payloads
    assert s["blocks"] == {"dirty": 0, "sealing": 0, "cached": 0, "stored": 5}
    assert s["buffer_bytes"] == 0
    assert s["ram_used_bytes"] == store.stored_bytes
    assert s["compression_ratio"] == round((4 * BS + 104) / store.stored_bytes, 3)
    assert s["ratio"] == round((4 * BS + 4096) / store.stored_bytes, 3)
    assert s["compression_ratio"] > 2
    ar = s["arena"]
    assert set(ar) == ARENA_FIELDS
    assert ar["live_bytes"] == store.stored_bytes
    assert ar["mapped_bytes"] == (ar["segments"] + ar["spare_segments"]) * ar["segment_bytes"]
    assert ar["free_bytes"] == ar["mapped_bytes"] - ar["live_bytes"]
    assert ar["fragmented_bytes"] == 0 and ar["compactions"] == 0 and ar["full"] is False
    assert ar["segments"] == 1 and ar["limit_bytes"] > 32 << 20   # ram= plus the slack

    fs.read(a, 10, 100)                          # a clean cached copy of block 0
    s = stats.collect(fs)
    assert s["blocks"]["cached"] == 1 and s["blocks"]["stored"] == 4
    assert s["buffer_clean_bytes"] == BS
    assert s["ram_used_bytes"] == store.stored_bytes + BS
    assert s["counters"]["loads"] >= 1

    fs.write(b, 0, b"x")                         # b's block becomes dirty again
    s = stats.collect(fs)
    assert s["blocks"]["dirty"] == 1 and s["blocks"]["stored"] == 3
    assert s["buffer_dirty_bytes"] == 104
    # Its payload died inside the arena's filled part: fragmented, not live.
    assert 0 < s["arena"]["fragmented_bytes"] < 100
    assert s["arena"]["live_bytes"] == s["stored_bytes"]
    json.dumps(s)


def test_extra_fields_and_counters() -> None:
    fs = new_fs(size_limit=BS)
    f = fs.create(ROOT_INO, b"f", 0o644, ME).ino
    fs.write(f, 0, b"x" * BS)
    with pytest.raises(Exception):
        fs.write(f, BS, b"y")
    s = stats.collect(fs, internal_errors=3)
    assert s["internal_errors"] == 3
    assert s["counters"]["enospc"] == 1
    fs.unlink(ROOT_INO, b"f")
    fs.forget(f, 1)
    fs.release(f)
    s = stats.collect(fs)
    assert s["counters"]["inodes_freed"] == 1
    assert s["inodes"] == 1
    assert s["files_bytes"] == s["logical_bytes"] == s["stored_bytes"] == s["buffer_bytes"] == 0


def test_rss_is_this_process() -> None:
    rss = stats.collect(new_fs())["rss_bytes"]
    with open("/proc/self/statm") as fh:
        resident_pages = int(fh.read().split()[1])
    page = os.sysconf("SC_PAGE_SIZE")
    assert rss > 0
    assert abs(rss - resident_pages * page) < 64 << 20


def test_the_table_shows_rss_and_the_breakdown_and_tolerates_older_daemons() -> None:
    from cctmpfs.cli import format_table
    s = stats.collect(new_fs(), 1 << 20, internal_errors=0)
    old = {k: v for k, v in s.items() if k != "memory"}   # a daemon from before the breakdown
    header, new_row, old_row = (line.split() for line in
                                format_table([("/new", s), ("/old", old)]).splitlines())
    new_cells, old_cells = dict(zip(header, new_row)), dict(zip(header, old_row))
    assert {"RSS", "META", "SLACK"} <= set(header)
    assert new_cells["META"] != "-" and new_cells["SLACK"] != "-"
    assert old_cells["RSS"] == new_cells["RSS"] != "-"
    assert old_cells["META"] == old_cells["SLACK"] == "-"
