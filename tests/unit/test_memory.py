"""The memory breakdown of stats (stats.memory): its figures add up, grow
with the structures they estimate, and agree with what tracemalloc measures;
the namespace census it multiplies stays exact."""

from __future__ import annotations

import random
import sys
import time
import tracemalloc

from cctmpfs import stats
from cctmpfs.check import check_all
from cctmpfs.codec import Codec
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem
from cctmpfs.stats import MEMORY_PARTS

BS = 16384
PARTS = MEMORY_PARTS


def new_fs(**kw) -> Filesystem:  # type: ignore[no-untyped-def]
    args = dict(block_size=BS, codec=Codec("lz4"), buffer_bytes=1 << 30)
    args.update(kw)
    return Filesystem(**args)


def user() -> Caller:
    """A caller as the daemon makes one per request: llfuse gives each
    request its own int objects for uid and gid (past the small-int cache)."""
    return Caller(uid=int("1000"), gid=int("1000"))


def text(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"def ", b"return ", b"self", b".value", b" = ", b"(x)\n", b"    ", b"import os\n"]
    out = bytearray(b"# file %d\n" % seed)
    while len(out) < n:
        out += rng.choice(words)
    return bytes(out[:n])


def copy_like_cp(fs: Filesystem, parent: int, name: bytes, data: bytes) -> int:
    """create, write, utimens, close: what cp -a does to each file."""
    ino = fs.create(parent, name, 0o644, user()).ino
    for off in range(0, len(data), BS):
        fs.write(ino, off, data[off:off + BS])
    fs.setattr(ino, atime_ns=time.time_ns(), mtime_ns=time.time_ns())
    fs.release(ino)
    fs.forget(ino, 1)
    return ino


def mem(fs: Filesystem, runtime: int | None = None) -> dict:
    return stats.collect(fs, runtime)["memory"]


def test_the_figures_add_up() -> None:
    fs = new_fs()
    d = fs.mkdir(ROOT_INO, b"d", 0o755, user()).ino
    for i in range(50):
        copy_like_cp(fs, d, b"f%d" % i, text(3 * BS + 100, i))
    fs.symlink(d, b"link", b"f0", user())
    s = stats.collect(fs, 1 << 20)
    m = s["memory"]
    assert m["accounted_bytes"] == sum(m[k] for k in PARTS)
    assert m["runtime_bytes"] == 1 << 20
    assert m["heap_slack_bytes"] == s["rss_bytes"] - (1 << 20) - m["accounted_bytes"]
    assert m["payload_bytes"] == s["stored_bytes"] == 0        # nothing sealed yet
    assert m["hot_buffer_bytes"] >= s["buffer_bytes"] == 50 * (3 * BS + 100)
    assert (m["files"], m["dirs"], m["other_inodes"], m["entries"]) == (50, 2, 1, 52)
    assert m["name_bytes"] == len(b"d") + sum(len(b"f%d" % i) for i in range(50)) + 4 + 2
    assert m["slots"] == 200
    fs.engine.seal_everything()
    s = stats.collect(fs)
    m = s["memory"]
    assert m["payload_bytes"] == s["stored_bytes"] > 0
    assert m["slots"] == 200
    # No raw block left: only the LRU dict, which keeps the size of its peak.
    assert m["hot_buffer_bytes"] == sys.getsizeof(fs.engine.buffer.slots) > 0
    assert m["block_record_bytes"] == 200 * m["per_block_record_bytes"]
    assert m["runtime_bytes"] is None and m["heap_slack_bytes"] is None   # no daemon here
    assert all(m[k] >= 0 for k in PARTS)


def test_more_inodes_raise_the_inode_figure_by_the_per_inode_figure() -> None:
    fs = new_fs()
    before = mem(fs)
    n = 1000
    names = 0
    for i in range(10):
        d = fs.mkdir(ROOT_INO, b"dir%d" % i, 0o755, user()).ino
        fs.forget(d, 1)
        names += len(b"dir%d" % i)
        for j in range(n // 10 - 1):
            node = fs.create(d, b"file%04d" % j, 0o644, user())
            fs.release(node.ino)
            fs.forget(node.ino, 1)
            names += len(b"file%04d" % j)
    after = mem(fs)
    assert (after["files"], after["dirs"], after["entries"]) == (990, 11, 1000)
    assert after["name_bytes"] == names
    # Each new inode adds its record and its directory entry; the inode table
    # (its dict and columns, which grow in steps) and the directories' dicts
    # add the rest.
    assert after["hot_inodes"] == 1001 and after["frozen_inodes"] == 0
    per_file = after["per_file_inode_bytes"] + after["per_entry_bytes"]
    per_dir = after["per_dir_inode_bytes"] + after["per_entry_bytes"]
    records = 990 * per_file + 10 * per_dir + names
    grown = after["inode_bytes"] - before["inode_bytes"] \
        - (after["inode_table_bytes"] - before["inode_table_bytes"])
    assert records < grown < records * 1.25, (grown, records)   # measured: 1.16
    # A thousand more, in the same directories: the same again, to a few %.
    for i in range(10):
        d = fs.lookup(ROOT_INO, b"dir%d" % i).ino
        for j in range(n // 10):
            node = fs.create(d, b"more%04d" % j, 0o644, user())
            fs.release(node.ino)
            fs.forget(node.ino, 1)
        fs.forget(d, 1)
    again = mem(fs)
    grown2 = again["inode_bytes"] - after["inode_bytes"] \
        - (again["inode_table_bytes"] - after["inode_table_bytes"])
    records2 = n * per_file + again["name_bytes"] - names
    assert records2 < grown2 < records2 * 1.25, (grown2, records2)   # measured: 1.16
    assert again["file_map_bytes"] == 0   # empty files: no map (it was an empty dict each)


def test_blocks_raise_the_map_and_record_figures() -> None:
    fs = new_fs()
    ino = copy_like_cp(fs, ROOT_INO, b"big", b"".join(text(BS, i) for i in range(400)))
    fs.engine.seal_everything()
    one = mem(fs)
    assert one["slots"] == 400
    assert one["block_record_bytes"] == 400 * one["per_block_record_bytes"]
    # A copy shares every block (dedup): 400 more slots, no more records.
    data = fs.read(ino, 0, 400 * BS)
    copy_like_cp(fs, ROOT_INO, b"copy", data)
    fs.engine.seal_everything()
    two = mem(fs)
    assert two["slots"] == 800
    assert two["block_record_bytes"] == one["block_record_bytes"]
    assert two["payload_bytes"] == one["payload_bytes"]
    grown = two["file_map_bytes"] - one["file_map_bytes"]
    assert 400 * two["per_slot_bytes"] <= grown < 400 * (two["per_slot_bytes"] + 80), grown
    # Deleting both files gives every per-item figure back.
    for name in (b"big", b"copy"):
        fs.unlink(ROOT_INO, name)
    gone = mem(fs)
    assert gone["slots"] == gone["files"] == gone["entries"] == 0
    assert gone["file_map_bytes"] == gone["block_record_bytes"] == gone["payload_bytes"] == 0
    assert check_all(fs) == []


def test_the_estimate_matches_tracemalloc_on_a_copied_tree() -> None:
    """3,000 small files in 30 directories, copied as cp -a does, sealed (lz4:
    its payloads are allocated at their size). tracemalloc counts every
    live allocation the tree made. The estimate of everything but the
    payloads' bytes (which are counted, not estimated) must be within 10%:
    it was 4.86 MB against 4.77 MB measured, 1.6 KB per file."""
    fs = new_fs()
    files = [text(random.Random(i).randrange(200, 3 * BS), i) for i in range(3000)]
    first = mem(fs)
    before, mem_before_free = first["accounted_bytes"], first["arena_free_bytes"]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i, data in enumerate(files):
            if i % 100 == 0:
                d = fs.mkdir(ROOT_INO, b"package%02d" % (i // 100), 0o755, user()).ino
                fs.forget(d, 1)
            copy_like_cp(fs, d, b"module_%04d.py" % i, data)
        fs.engine.seal_everything()
        fs.engine.buffer.slots.clear()   # the LRU dict keeps its peak size: not the tree's
        traced = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    m = mem(fs)
    blocks = {id(s.stored): s.stored for n in fs.inodes.values() if n.data is not None
              for s in n.data.blocks.values()}
    assert m["payload_bytes"] == sum(b.payload_len for b in blocks.values())
    # The payloads live in the arena's mmap segments, which tracemalloc
    # does not see: what it traced is the metadata.
    metadata = traced
    estimate = (m["accounted_bytes"] - before - m["payload_bytes"]
                - m["arena_free_bytes"] + mem_before_free)
    assert abs(estimate - metadata) < 0.10 * metadata, (estimate, metadata)


def test_the_census_follows_links_renames_symlinks_and_frees() -> None:
    fs = new_fs()
    a = fs.create(ROOT_INO, b"a", 0o644, user()).ino
    fs.release(a)
    fs.link(a, ROOT_INO, b"hard")
    fs.symlink(ROOT_INO, b"sym", b"a-rather-long-target", user())
    fs.mkdir(ROOT_INO, b"dir", 0o755, user())
    c = fs.census
    assert (c.files, c.dirs, c.empty_dirs, c.entries) == (1, 2, 1, 4)
    sub = fs.lookup(ROOT_INO, b"dir").ino
    inner = fs.mkdir(sub, b"inner", 0o755, user()).ino
    assert c.empty_dirs == 1                       # dir has an entry; inner is empty
    fs.rename(sub, b"inner", ROOT_INO, b"inner")   # dir is empty again, root was not
    assert c.empty_dirs == 2
    fs.rmdir(ROOT_INO, b"inner")
    fs.forget(inner, 1)                            # freed: an empty directory less
    assert (c.dirs, c.empty_dirs) == (2, 1)
    fs.forget(sub, 1)
    assert c.name_bytes == 1 + 4 + 3 + len(b"a-rather-long-target") + 3
    fs.rename(ROOT_INO, b"hard", ROOT_INO, b"renamed-link")
    assert c.name_bytes == 1 + 12 + 3 + 20 + 3 and c.entries == 4
    fs.rename(ROOT_INO, b"renamed-link", ROOT_INO, b"a")   # the same inode: nothing changes
    fs.rename(ROOT_INO, b"sym", ROOT_INO, b"a")            # replaces a link to the file
    assert (c.files, c.entries) == (1, 3)
    assert c.name_bytes == 1 + 12 + 20 + 3
    fs.unlink(ROOT_INO, b"a")           # the symlink, now named a: freed at its forget
    assert c.name_bytes == 12 + 20 + 3
    fs.forget(fs.lookup(ROOT_INO, b"dir").ino, 2)
    fs.forget(a, 2)
    sym = [n for n in fs.inodes.values() if n.target is not None][0]
    fs.forget(sym.ino, sym.nlookup)
    assert c.name_bytes == 12 + 3
    fs.unlink(ROOT_INO, b"renamed-link")
    fs.rmdir(ROOT_INO, b"dir")
    assert (c.files, c.dirs, c.empty_dirs, c.entries, c.name_bytes) == (0, 1, 1, 0, 0)
    assert check_all(fs) == []
    fs.census.entries += 1
    assert any("census entries" in line for line in check_all(fs))


def test_codec_contexts_are_accounted_once_made_by_each_thread() -> None:
    """codec_context_bytes is zero until zstd compresses, then zstd's own
    count of every context made, whichever thread made it."""
    import threading

    import zstandard

    fs = new_fs(codec=Codec("zstd", 3, recompress_level=9))
    assert mem(fs)["codec_context_bytes"] == 0
    copy_like_cp(fs, ROOT_INO, b"f", text(4 * BS, 1))
    fs.engine.seal_everything()
    one = mem(fs)["codec_context_bytes"]
    level3 = zstandard.ZstdCompressor(level=3)
    level3.compress(text(BS, 2))
    assert one >= level3.memory_size() > 100_000   # one compressor at least, sized at use
    # Another thread that compresses and decompresses makes contexts of its own.
    t = threading.Thread(target=lambda: fs.engine.codec.decompress(
        *fs.engine.codec.compress(text(BS, 3)), BS))
    t.start()
    t.join()
    two = mem(fs)
    # That thread ended: its contexts are dropped, not counted (nor kept).
    assert two["codec_context_bytes"] == one
    assert two["accounted_bytes"] == sum(two[k] for k in PARTS)
    # A thread that lives on is counted.
    go, done = threading.Event(), threading.Event()

    def worker() -> None:
        fs.engine.codec.decompress(*fs.engine.codec.compress(text(BS, 4)), BS)
        done.set()
        go.wait()
    t = threading.Thread(target=worker)
    t.start()
    done.wait()
    try:
        assert mem(fs)["codec_context_bytes"] > one
    finally:
        go.set()
        t.join()
