#!/usr/bin/env python3
"""memprofile.py - where the daemon's RSS goes, seen from inside the daemon.

    .venv/bin/python benchmarks/memprofile.py [--tracemalloc] [--census] [--copy-payloads]
        [-o OPTS] [--copies N] [--json OUT] SRC...

This process is a benchmark-mode cctmpfs daemon: it mounts with
daemon.serve() (the real request path of the transport -o chooses,
the real sealer), and a driver thread copies each SRC into the mount with
`cp -a` (--copies times), settles (seals everything, waits), and then looks
at the heap from inside:

- RSS by mapping: the brk heap (glibc's main arena, used by the main thread,
  which serves the requests), the 64 MiB-aligned heaps of thread arenas
  (the sealer's), other anonymous memory (pymalloc's arenas, thread
  stacks, mmapped chunks), and file-backed code and data;
- glibc: system and in-use bytes per arena (malloc_stats) and mallinfo2;
- pymalloc: sys._debugmallocstats() totals;
- the structures, walked under the global lock: payloads (their length,
  and for those malloc serves, the chunk malloc_usable_size reports), block
  records, slots, inodes and their names, with sys.getsizeof;
- `cctmpfs stats`'s memory breakdown (stats.collect), to compare its
  estimate with the walk;
- with --tracemalloc, the live Python allocations by line, and after the
  first measurement those that grew since the empty mount (tracemalloc
  slows every request several times: never in a real daemon).
- with --census, after the delete: what still lives in each pymalloc arena
  and who holds it (arena_census), to find what keeps arenas resident.

Then it removes the tree, settles, and measures again, and once more after
malloc_trim(0). --copy-payloads replaces each zstd payload with an
exact-size copy (docs/memory.md: python-zstandard's compress() keeps the
whole ZSTD_compressBound() allocation behind a short bytes object), to
measure what that costs. Root only (mount). Prints a report; --json writes
every figure.
"""
from __future__ import annotations

import argparse
import bisect
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

MiB = 1 << 20
#: glibc's HEAP_MAX_SIZE on 64-bit: every thread-arena heap is mmapped at an
#: address aligned to it.
ARENA_HEAP_ALIGN = 64 * MiB
#: pymalloc serves requests up to this size; larger objects come from malloc.
PYMALLOC_MAX = 512

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc_usable_size.restype = ctypes.c_size_t
libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]


class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


libc.mallinfo2.restype = Mallinfo2


def log(msg: str) -> None:
    print(msg, file=sys.__stdout__, flush=True)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def capture_stderr(fn) -> str:  # type: ignore[no-untyped-def]
    """What fn writes to file descriptor 2 (C code's stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


def smaps() -> dict[str, int]:
    """RSS by kind of mapping."""
    out = {"brk_heap": 0, "arena_heaps": 0, "other_anon": 0, "file": 0, "stack": 0}
    kind = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                start = int(head[0].split("-")[0], 16)
                name = head[5] if len(head) > 5 else ""
                if name == "[heap]":
                    kind = "brk_heap"
                elif name == "[stack]":
                    kind = "stack"
                elif name.startswith("/"):
                    kind = "file"
                elif name:
                    kind = "other_anon"   # [vdso], [vvar]...
                elif start % ARENA_HEAP_ALIGN == 0 and head[1] == "rw-p":
                    kind = "arena_heaps"
                else:
                    kind = "other_anon"
            elif line.startswith("Rss:") and kind:
                out[kind] += int(line.split()[1]) * 1024
    return out


def glibc_arenas() -> list[dict[str, int]]:
    """[{system, in_use}] per arena, from malloc_stats()."""
    text = capture_stderr(libc.malloc_stats)
    arenas: list[dict[str, int]] = []
    for line in text.splitlines():
        if line.startswith("Arena "):
            arenas.append({})
        elif arenas and "=" in line and "Total" not in line and len(arenas[-1]) < 2:
            k, v = line.split("=")
            arenas[-1]["system" if "system" in k else "in_use"] = int(v)
    return arenas


def pymalloc() -> dict[str, int]:
    """The arena totals of sys._debugmallocstats(): pymalloc serves every
    object up to 512 bytes from 1 MiB arenas of 16 KiB pools, and gives an
    arena back to the system only once all its pools are empty."""
    text = capture_stderr(sys._debugmallocstats)
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        value = value.replace(",", "").strip()
        if not value.isdigit():
            continue
        n = int(value)
        if key.startswith("# arenas allocated current"):
            out["arenas"] = n
        elif " arenas * " in key:
            out["arena_bytes"] = n
        elif key.startswith("# bytes in allocated blocks"):
            out["allocated_blocks"] = n
        elif key.startswith("# bytes in available blocks"):
            out["available_blocks"] = n
        elif " unused pools * " in key:
            out["unused_pools"] = n
    return out


#: pymalloc's arena size since CPython 3.10: each arena is one anonymous
#: mmap of exactly this many bytes, given back only when all its pools are empty.
PYMALLOC_ARENA = 1 * MiB
#: The census lists the objects of arenas holding at most this many.
SPARSE_ARENA_OBJECTS = 100
#: --tracemalloc: the snapshot of the empty mount, to diff the others with.
FIRST_SNAPSHOT: list = []


def payload_segments(fs) -> set[int]:  # type: ignore[no-untyped-def]
    """The start addresses of the payload arena's mappings (its segments and
    spares, cctmpfs/arena.py): 1 MiB anonymous mappings like pymalloc's."""
    import ctypes
    arena = fs.engine.arena
    out = set()
    for mm in [*(seg.mm for seg in arena.segments.values()), *arena.spares]:
        c = ctypes.c_char.from_buffer(mm)
        out.add(ctypes.addressof(c))
        del c   # the export ends, so the segment may be unmapped later
    return out


def arena_census(tracemalloc_on: bool, not_arenas: set[int] = frozenset()) -> dict:  # type: ignore[assignment]
    """What keeps each pymalloc arena alive: every object reachable from the
    gc-tracked ones, and the buffer behind a list, dict, set, bytearray or
    array (pymalloc serves those up to 512 bytes too), bucketed by the 1 MiB
    anonymous mapping its address falls in. A mapping of several MiB is
    taken as arenas side by side; the 1 MiB units starting at not_arenas
    (the payload arena's segments: payload_segments) are left out. Other
    anonymous mappings of whole MiB (glibc's mmapped chunks, thread stacks)
    still count, with no object found: on /usr/include after the delete, 34
    units against the 16 arenas pymalloc reports, 24 of them empty. Not
    seen: what only C code holds. With tracemalloc, each object's
    allocating line."""
    import gc
    arenas = []
    with open("/proc/self/maps") as f:
        for line in f:
            head = line.split()
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            # Arenas mmapped next to each other show as one mapping.
            if ((hi - lo) % PYMALLOC_ARENA == 0 and len(head) == 5 and head[1] == "rw-p"
                    and lo % ARENA_HEAP_ALIGN):
                arenas.extend(a for a in range(lo, hi, PYMALLOC_ARENA) if a not in not_arenas)
    arenas.sort()
    found: dict[int, dict[str, int]] = {a: {} for a in arenas}
    samples: dict[str, list[str]] = {}
    objs: dict[int, list] = {}   # arena -> its objects found
    if tracemalloc_on:
        import tracemalloc

    def found_in(a: int, o: object, key: str) -> None:
        if tracemalloc_on:
            tb = tracemalloc.get_object_traceback(o)
            if tb is not None:
                key += " @ %s:%d" % (tb[0].filename.replace(os.path.dirname(HERE) + "/", ""),
                                     tb[0].lineno)
        found[a][key] = found[a].get(key, 0) + 1
        if len(samples.setdefault(key, [])) < 3:
            samples[key].append(repr(o)[:70])
        objs.setdefault(a, []).append(o)

    # Everything reachable from the gc-tracked objects: ints and strings sit in
    # tuples and dicts the collector does not track, two steps or more away.
    todo = gc.get_objects()
    reached: set[int] = set()
    while todo:
        c = todo.pop()
        for o in (c, *gc.get_referents(c)):
            i = id(o)
            if i in reached:
                continue
            reached.add(i)
            if o is not c:
                todo.append(o)
            # The object, and the buffer behind it where pymalloc may serve that.
            kind = type(o).__name__
            for addr, key in ((i, kind), (_buffer_of(o, i), kind + " buffer")):
                k = bisect.bisect_right(arenas, addr) - 1
                if addr and k >= 0 and addr < arenas[k] + PYMALLOC_ARENA:
                    found_in(arenas[k], o, key)
    del todo, reached

    # What pins an arena is what lives in the sparse ones.
    totals: dict[str, int] = {}
    for kinds in found.values():
        if sum(kinds.values()) <= SPARSE_ARENA_OBJECTS:
            for k, n in kinds.items():
                totals[k] = totals.get(k, 0) + n
    # Who holds the objects of the sparse arenas: the referrer the collector
    # sees (none for an int in an untracked dict or tuple, or held by C).
    holders: dict[str, int] = {}
    skip = {id(objs), id(found), id(samples)} | {id(v) for v in objs.values()}
    for a, os_ in objs.items():
        if len(os_) > SPARSE_ARENA_OBJECTS:
            continue
        for o in os_:
            refs = [r for r in gc.get_referrers(o) if id(r) not in skip
                    and not isinstance(r, type(sys._getframe()))]
            k = "%s <- %s" % (type(o).__name__, _holder_name(refs[0]) if refs else "?")
            holders[k] = holders.get(k, 0) + 1
    objs.clear()
    return {"holders": sorted(holders.items(), key=lambda kv: -kv[1])[:30],
            "arenas": len(arenas), "empty_handed": sum(1 for k in found.values() if not k),
            "per_arena": [sum(k.values()) for k in found.values()],
            "top": sorted(totals.items(), key=lambda kv: -kv[1])[:40], "samples": samples}


#: Where CPython 3.11 keeps the pointer to an object's separately allocated
#: buffer, as an offset from id(obj): list ob_item, dict ma_keys, set table,
#: bytearray ob_bytes, array.array ob_item.
_BUFFER_OFFSETS = {list: 24, dict: 32, set: 40, frozenset: 40, bytearray: 32}


def _buffer_of(o: object, i: int) -> int:
    import array
    off = 24 if isinstance(o, array.array) else _BUFFER_OFFSETS.get(type(o))
    return ctypes.c_void_p.from_address(i + off).value or 0 if off else 0


def _holder_name(r: object) -> str:
    """A referrer, named by what owns it where that is cheap to find."""
    import gc
    if isinstance(r, dict):
        for x in gc.get_referrers(r):
            if getattr(x, "__dict__", None) is r:
                return "%s.__dict__" % (x.__name__ if isinstance(x, type(sys)) else type(x).__name__)
        return "dict(%d)" % len(r)
    if isinstance(r, (list, tuple, set)):
        return "%s(%d)" % (type(r).__name__, len(r))
    return type(r).__name__


def heap_pages(payloads: list[tuple[int, int, int]]) -> dict[str, int]:
    """The resident pages of glibc's heaps (the brk heap and the thread-arena
    heaps), read from /proc/self/pagemap, split by what lies in them: pages
    that hold payload bytes, pages that lie only inside payload chunks past
    their bytes (allocated, never used), and the rest (other objects, free
    chunks). In bytes."""
    page = os.sysconf("SC_PAGE_SIZE")
    heaps = []
    with open("/proc/self/maps") as f:
        for line in f:
            head = line.split()
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            name = head[5] if len(head) > 5 else ""
            if name == "[heap]" or (not name and head[1] == "rw-p" and lo % ARENA_HEAP_ALIGN == 0):
                heaps.append((lo, hi))
    resident: set[int] = set()
    with open("/proc/self/pagemap", "rb") as f:
        for lo, hi in heaps:
            f.seek(lo // page * 8)
            raw = f.read((hi - lo) // page * 8)
            for i in range(len(raw) // 8):
                if raw[i * 8 + 7] & 0x80:   # bit 63: present
                    resident.add(lo // page + i)
    data: set[int] = set()
    chunk_only: set[int] = set()
    for addr, size, usable in payloads:
        data.update(range(addr // page, (addr + size - 1) // page + 1))
        chunk_only.update(range(addr // page, (addr + usable - 1) // page + 1))
    chunk_only -= data
    return {"resident": len(resident) * page,
            "payload_data": len(resident & data) * page,
            "payload_chunk_unused": len(resident & chunk_only) * page,
            "other": len(resident - data - chunk_only) * page,
            "unused_chunk_pages_not_resident": len(chunk_only - resident) * page}


def chunk(obj: object) -> int:
    """Bytes obj takes where it is allocated: for a bytes object that malloc
    serves (one allocation, the object's address is the chunk's), malloc's
    usable size plus the chunk header; otherwise getsizeof, rounded to
    pymalloc's 16-byte size classes when pymalloc serves it."""
    n = sys.getsizeof(obj)
    if n > PYMALLOC_MAX:
        if type(obj) is bytes:
            return libc.malloc_usable_size(id(obj)) + 8
        return n
    return (n + 15) // 16 * 16


def int_bytes(v: object) -> int:
    """An int field costs its object unless CPython caches it (-5..256)."""
    return 0 if type(v) is not int or -5 <= v <= 256 else chunk(v)


def walk(fs, ranges: list[tuple[int, int, int]]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The structures, object by object (caller holds the global lock).
    Payloads live in the arena's segments (arena.py), so ranges, the heap
    chunks of payloads malloc once served, stays empty."""
    w = dict.fromkeys((
        "inodes", "inode_records", "inode_ints", "file_data", "dir_entries_dicts",
        "names", "file_maps", "slots", "slot_ints", "blocks", "block_records",
        "fingerprints", "payload_len", "payload_handles", "pack_refs", "raw_len",
        "raw_chunks"), 0)
    # The table's dict of hot records and its columns (cctmpfs/inodetable.py).
    w["inode_table"] = fs.inodes.nbytes()
    w["frozen_inodes"] = len(fs.inodes) - fs.inodes.hot
    w["index"] = sys.getsizeof(fs.store.index)
    seen_blocks: set[int] = set()
    seen_ints: set[int] = set()
    for ino, node in fs.inodes.items():
        w["inodes"] += 1
        # A frozen inode's record is transient, made for this walk: it has
        # its row in the columns and its ino int, held by its name.
        fields = (node.ino, node.atime_ns, node.mtime_ns, node.ctime_ns, node.nlink,
                  node.uid, node.gid, node.mode, node.parent)
        if fs.inodes.is_hot(ino):
            w["inode_records"] += chunk(node)
        else:
            fields = (ino,)
        for v in fields:
            if id(v) not in seen_ints:   # times set together share one int
                seen_ints.add(id(v))
                w["inode_ints"] += int_bytes(v)
        if node.entries is not None:
            w["dir_entries_dicts"] += chunk(node.entries)
            for name in node.entries:
                w["names"] += chunk(name)
        if node.target is not None:
            w["names"] += chunk(node.target)
        f = node.data
        if f is None:
            continue
        w["file_data"] += chunk(f)
        if type(f.map) is dict:   # no block or one: no map of its own (blockmap.py)
            w["file_maps"] += chunk(f.map)
        for v in (f.size, f.alloc_pages):
            if id(v) not in seen_ints:
                seen_ints.add(id(v))
                w["inode_ints"] += int_bytes(v)
        for slot in f.slots():
            w["slots"] += chunk(slot)
            for v in (slot.index, slot.page_mask, slot.generation):
                if id(v) not in seen_ints:
                    seen_ints.add(id(v))
                    w["slot_ints"] += int_bytes(v)
            if slot.raw is not None:
                w["raw_len"] += len(slot.raw)
                w["raw_chunks"] += chunk(slot.raw)
            b = slot.stored
            if b is None or id(b) in seen_blocks:
                continue
            seen_blocks.add(id(b))
            w["blocks"] += 1
            w["block_records"] += chunk(b)
            if b.fingerprint is not None:
                w["fingerprints"] += chunk(b.fingerprint)
            p = b.payload
            if b.in_ram:
                # An arena handle (arena.py): the bytes are in the arena's
                # segments, outside the heaps; only the int is an object.
                w["payload_len"] += b.payload_len
                if id(p) not in seen_ints:
                    seen_ints.add(id(p))
                    w["payload_handles"] += int_bytes(p)
            elif b.packed:
                w["pack_refs"] += chunk(p) + int_bytes(p.offset)
    return w


def measure(label: str, fs, lock, tracemalloc_on: bool,  # type: ignore[no-untyped-def]
            runtime: int | None = None, census: bool = False) -> dict:
    from cctmpfs import stats
    # The figures first, the walk last: the walk's own sets of ids take a few
    # MB that would show up in RSS.
    lock.acquire()
    try:
        st = stats.collect(fs, runtime)
    finally:
        lock.release()
    mi = libc.mallinfo2()
    out = {
        "label": label,
        "rss": rss(),
        "smaps": smaps(),
        "glibc_arenas": glibc_arenas(),
        "mallinfo2": {"arena": mi.arena, "in_use": mi.uordblks, "free": mi.fordblks,
                      "top": mi.keepcost, "mmapped": mi.hblkhd},
        "pymalloc": pymalloc(),
        "stats": st,
    }
    ranges: list[tuple[int, int, int]] = []
    lock.acquire()
    try:
        out["structures"] = walk(fs, ranges)
    finally:
        lock.release()
    out["heap_pages"] = heap_pages(ranges)
    if census:
        lock.acquire()
        try:
            segments = payload_segments(fs)
        finally:
            lock.release()
        out["census"] = arena_census(tracemalloc_on, segments)
    if tracemalloc_on:
        import tracemalloc
        snap = tracemalloc.take_snapshot().filter_traces([
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__)])   # the walk's own lists and sets
        if FIRST_SNAPSHOT:
            # What lives now and did not on the empty mount, by line: the
            # hidden buffers too.
            grew = [d for d in snap.compare_to(FIRST_SNAPSHOT[0], "lineno") if d.count_diff > 0]
            out["tracemalloc_growth"] = [
                {"where": "%s:%d" % (d.traceback[0].filename.replace(os.path.dirname(HERE) + "/", ""),
                                     d.traceback[0].lineno),
                 "size_diff": d.size_diff, "count_diff": d.count_diff}
                for d in sorted(grew, key=lambda d: -d.count_diff)[:25]]
        else:
            FIRST_SNAPSHOT.append(snap)
        top = snap.statistics("lineno")
        out["tracemalloc_total"] = sum(s.size for s in top)
        out["tracemalloc_top"] = [
            {"where": "%s:%d" % (s.traceback[0].filename.split("/site-packages/")[-1]
                                 .replace(os.path.dirname(HERE) + "/", ""), s.traceback[0].lineno),
             "size": s.size, "count": s.count} for s in top[:20]]
    return out


def show(m: dict, files_bytes: int) -> None:
    mb = lambda n: "%.1f MB" % (n / 1e6)  # noqa: E731
    s, w, p = m["smaps"], m["structures"], m["pymalloc"]
    log("\n== %s: RSS %s" % (m["label"], mb(m["rss"])))
    log("   RSS by mapping: " + ", ".join("%s %s" % (k, mb(v)) for k, v in s.items()))
    log("   glibc: " + "; ".join("arena %d system %s, in use %s" % (i, mb(a["system"]), mb(a["in_use"]))
                                  for i, a in enumerate(m["glibc_arenas"])) +
        "; mmapped chunks %s" % mb(m["mallinfo2"]["mmapped"]))
    log("   pymalloc: %d arenas (%s): allocated blocks %s, free blocks %s, unused pools %s" % (
        p.get("arenas", 0), mb(p.get("arena_bytes", 0)), mb(p.get("allocated_blocks", 0)),
        mb(p.get("available_blocks", 0)), mb(p.get("unused_pools", 0))))
    if w["inodes"] > 1:
        log("   walk: %d inodes, %d distinct blocks; payloads %s in the arena" % (
            w["inodes"], w["blocks"], mb(w["payload_len"])))
        log("   walk: " + ", ".join("%s %s" % (k, mb(w[k])) for k in (
            "inode_records", "inode_ints", "inode_table", "file_data", "dir_entries_dicts",
            "names", "file_maps", "slots", "slot_ints", "block_records", "fingerprints", "index",
            "payload_handles", "pack_refs", "raw_chunks")))
    hp = m.get("heap_pages")
    if hp:
        log("   glibc heaps' resident pages: " + ", ".join("%s %s" % (k, mb(v)) for k, v in hp.items()))
    mem = m["stats"].get("memory")
    if mem:
        log("   stats memory: " + ", ".join(
            "%s %s" % (k.removesuffix("_bytes"), mb(mem[k])) for k in (
                "runtime_bytes", "payload_bytes", "hot_buffer_bytes", "inode_bytes",
                "file_map_bytes", "block_record_bytes", "dedup_index_bytes", "accounted_bytes",
                "heap_slack_bytes") if mem.get(k) is not None))
    if files_bytes and w["inodes"] > 1:
        log("   RSS per byte of files: %.3f" % (m["rss"] / files_bytes))
    for t in m.get("tracemalloc_top", [])[:12]:
        log("   tracemalloc %10s  %s in %d" % (mb(t["size"]), t["where"], t["count"]))
    c = m.get("census")
    if c:
        log("   census: %d pymalloc arenas, %d with no object found; objects found per arena: %s"
            % (c["arenas"], c["empty_handed"], c["per_arena"]))
        for k, n in c["top"][:25]:
            log("   census %7d  %s  e.g. %s" % (n, k, " | ".join(c["samples"][k])))
        for k, n in c["holders"]:
            log("   held %5d  %s" % (n, k))
        log("   census: listed are the objects of arenas holding at most %d" % SPARSE_ARENA_OBJECTS)
    for t in m.get("tracemalloc_growth", []):
        log("   new since empty %+7d blocks %+10d B  %s" % (t["count_diff"], t["size_diff"], t["where"]))
    if "tracemalloc_total" in m:
        log("   tracemalloc total %s" % mb(m["tracemalloc_total"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+")
    ap.add_argument("-o", dest="options", default="", help="mount options")
    ap.add_argument("--copies", type=int, default=1, help="cp -a every SRC this many times")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--census", action="store_true",
                    help="after the delete: what lives in each pymalloc arena left")
    ap.add_argument("--copy-payloads", action="store_true",
                    help="store exact-size copies of zstd payloads (what a fix would save)")
    ap.add_argument("--wait", type=float, default=5.0, help="seconds to wait after settling")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.tracemalloc:
        import tracemalloc
        tracemalloc.start(1)
    from cctmpfs import daemon
    from cctmpfs.codec import Codec, CodecId
    from cctmpfs.options import parse_options

    if a.copy_payloads:
        orig = Codec.compress

        def compress(self, raw):  # type: ignore[no-untyped-def]
            cid, payload = orig(self, raw)
            return cid, (bytes(memoryview(payload)) if cid == CodecId.ZSTD else payload)
        Codec.compress = compress  # type: ignore[method-assign]

    held: dict = {}
    build = daemon.build

    def capture(opts, lock):  # type: ignore[no-untyped-def]
        held["fs"], held["lock"] = build(opts, lock), lock
        return held["fs"]
    daemon.build = capture  # type: ignore[assignment]
    mp = tempfile.mkdtemp(prefix="memprofile.", dir="/tmp")
    results: dict = {"argv": sys.argv, "measurements": []}

    def settle(fs) -> None:  # type: ignore[no-untyped-def]
        held["lock"].acquire()
        try:
            fs.engine.seal_everything()
        finally:
            held["lock"].release()
        time.sleep(a.wait)

    def drive() -> None:
        try:
            fs = held["fs"]
            time.sleep(0.5)
            results["measurements"].append(measure("mounted, empty", fs, held["lock"], a.tracemalloc))
            runtime = results["measurements"][0]["rss"]
            peak = {"rss": 0, "dirty": 0, "buffer": 0}
            copying = True

            def sample() -> None:
                # Unlocked reads of two ints: good enough for a peak.
                while copying:
                    buf = fs.engine.buffer
                    peak["rss"] = max(peak["rss"], rss())
                    peak["dirty"] = max(peak["dirty"], buf.dirty_bytes)
                    peak["buffer"] = max(peak["buffer"], buf.dirty_bytes + buf.clean_bytes)
                    time.sleep(0.02)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.monotonic()
            for i in range(a.copies):
                for j, src in enumerate(a.sources):
                    dst = os.path.join(mp, "c%d-%d" % (i, j))
                    os.mkdir(dst)
                    subprocess.run(["cp", "-a", src, dst], check=True)
            results["copy_seconds"] = time.monotonic() - t0
            copying = False
            sampler.join()
            results["peak_while_copying"] = peak
            st = results["measurements"][0]["stats"]
            settle(fs)
            m = measure("copied, settled", fs, held["lock"], a.tracemalloc, runtime)
            files = m["stats"]["files_bytes"] - st["files_bytes"]
            results["files_bytes"] = files
            results["measurements"].append(m)
            libc.malloc_trim(0)
            results["measurements"].append(measure("copied, malloc_trim(0)", fs, held["lock"],
                                                   a.tracemalloc, runtime))
            for name in os.listdir(mp):
                subprocess.run(["rm", "-rf", os.path.join(mp, name)], check=True)
            settle(fs)
            results["measurements"].append(measure("removed, settled", fs, held["lock"], a.tracemalloc,
                                                   runtime, a.census))
            libc.malloc_trim(0)
            results["measurements"].append(measure("removed, malloc_trim(0)", fs, held["lock"],
                                                   a.tracemalloc, runtime))
        except BaseException:  # noqa: BLE001
            results["error"] = traceback.format_exc()
        finally:
            subprocess.run(["fusermount", "-u", mp])

    def ready(msg: str) -> None:
        if msg != "ok":
            raise SystemExit("memprofile: " + msg)
        threading.Thread(target=drive, name="memprofile-driver", daemon=True).start()

    opts = parse_options([a.options] if a.options else [], source="memprofile")
    try:
        daemon.serve("memprofile", mp, opts, ready)
    finally:
        os.rmdir(mp)
    if "error" in results:
        log(results["error"])
        return 1
    log("copied %.1f MB of files in %.1f s; peak while copying: RSS %.1f MB, hot buffer %.1f MB "
        "(dirty %.1f MB)" % (results["files_bytes"] / 1e6, results["copy_seconds"],
                             results["peak_while_copying"]["rss"] / 1e6,
                             results["peak_while_copying"]["buffer"] / 1e6,
                             results["peak_while_copying"]["dirty"] / 1e6))
    for i, m in enumerate(results["measurements"]):
        show(m, results["files_bytes"] if i else 0)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
