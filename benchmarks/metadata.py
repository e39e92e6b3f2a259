#!/usr/bin/env python3
"""metadata.py - bytes of RAM per inode and per block, measured: the figures
issue 15 asks to publish and drive down (docs/memory.md).

    .venv/bin/python benchmarks/metadata.py [-n 100000] [--name metadata]

No mount: each case builds N items in the core (namespace.Filesystem, one
process per case and per method, so that nothing else shares the heap) and
measures what they added, two ways:

  traced  tracemalloc: the bytes Python allocated and still holds, as asked
          (what sys.getsizeof and the stats estimate count); the payloads are
          in the arena's mmap segments, which it does not see;
  RSS     the growth of the process's resident memory (without tracemalloc,
          whose own tables would count): what the allocators really took,
          with pymalloc's 16-byte classes and pools, dict tables and
          fragmentation; malloc_trim(0) runs first, as the daemon's trimmer can.

and prints the stats estimate (stats.memory) beside them. Cases:

  empty-file     an empty regular file (created, closed), 1,000 per directory
  empty-dir      an empty directory, 1,000 per directory
  symlink        a symlink with a 10-byte target, 1,000 per directory
  small-file     a file of 3 KiB of text, one block, sealed (lz4), as cp -a
                 leaves it (utimens); its payload's bytes are not counted
  stored-block   a distinct sealed block of a big file (16 KiB blocks, lz4),
                 payload bytes not counted: the Slot, its map entry, the
                 StoredBlock, its fingerprint and index entry, its payload header
  shared-block   one more reference to a stored block (a second file with the
                 same content: dedup), payload and record shared

Writes results/NAME.json and results/NAME.md.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CASES = ("empty-file", "empty-dir", "symlink", "small-file", "stored-block", "shared-block")
PER_DIR = 1000
BS = 16384


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def user():  # type: ignore[no-untyped-def]
    from cctmpfs.namespace import Caller
    # As the daemon: llfuse makes new int objects for each request's uid and gid.
    return Caller(uid=int("1000"), gid=int("1000"))


def text(n: int, seed: int) -> bytes:
    line = b"    return self.value_%08d + other  # comment\n" % seed
    return (line * (n // len(line) + 1))[:n]


def run_case(case: str, n: int, method: str) -> dict:
    from cctmpfs import stats
    from cctmpfs.codec import Codec
    from cctmpfs.namespace import ROOT_INO, Filesystem
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    fs = Filesystem(block_size=BS, codec=Codec("lz4"), buffer_bytes=1 << 32)
    big = None
    if case == "shared-block":   # the blocks to share, made before the window
        big = fs.create(ROOT_INO, b"original", 0o644, user()).ino
        for i in range(n):
            fs.write(big, i * BS, text(BS - 8, 0) + i.to_bytes(8, "little"))
        fs.release(big)
        fs.engine.seal_everything()
    first = fs.mkdir(ROOT_INO, b"d0", 0o755, user()).ino
    fs.forget(first, 1)
    est0 = stats.collect(fs)["memory"]
    gc.collect()
    if method == "traced":
        import tracemalloc
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    else:
        libc.malloc_trim(0)
        base = rss()
    t0 = time.perf_counter()
    d = first
    if case in ("stored-block", "shared-block"):
        ino = fs.create(d, b"big", 0o644, user()).ino
        for i in range(n):
            fs.write(ino, i * BS, text(BS - 8, 0) + i.to_bytes(8, "little"))
        fs.release(ino)
        fs.engine.seal_everything()
    else:
        for i in range(n):
            if i and i % PER_DIR == 0:
                d = fs.mkdir(ROOT_INO, b"d%d" % (i // PER_DIR), 0o755, user()).ino
                fs.forget(d, 1)
            name = b"name%06d" % i
            if case == "empty-file":
                node = fs.create(d, name, 0o644, user())
                fs.release(node.ino)
            elif case == "empty-dir":
                node = fs.mkdir(d, name, 0o755, user())
            elif case == "symlink":
                node = fs.symlink(d, name, b"target%04d" % (i % 10000), user())
            else:   # small-file, as cp -a: create, write, utimens, close
                node = fs.create(d, name, 0o644, user())
                fs.write(node.ino, 0, text(3072, i))
                fs.setattr(node.ino, atime_ns=time.time_ns(), mtime_ns=time.time_ns())
                fs.release(node.ino)
            fs.forget(node.ino, 1)
        fs.engine.seal_everything()
    fs.engine.buffer.slots.clear()   # the LRU dict keeps its peak: not the items' cost
    elapsed = time.perf_counter() - t0
    gc.collect()
    est1 = stats.collect(fs)["memory"]
    payload = est1["payload_bytes"] - est0["payload_bytes"]
    if method == "traced":
        # The payloads live in the arena's mmap segments (arena.py), which
        # tracemalloc does not see: there is nothing of them to take off.
        grown = tracemalloc.get_traced_memory()[0] - base + payload
        tracemalloc.stop()
    else:
        libc.malloc_trim(0)
        grown = rss() - base
    def meta(e: dict) -> int:
        return (e["accounted_bytes"] - e["payload_bytes"] - e["hot_buffer_bytes"]
                - e.get("codec_context_bytes", 0))
    metadata_est = meta(est1) - meta(est0)
    return {"case": case, "n": n, "method": method, "bytes": grown - payload,
            "payload_bytes": payload, "per_item": (grown - payload) / n,
            "estimate_per_item": metadata_est / n, "seconds": round(elapsed, 2)}


def report(results: dict) -> str:
    meta = results["meta"]
    by = {(r["case"], r["method"]): r for r in results["records"]}
    lines = ["# Bytes of RAM per inode and per block", "",
             "`benchmarks/metadata.py -n %d`, %s, commit %s, Python %s. No mount: each case "
             "builds %d items in the core, in a process of its own, and measures what they "
             "added: `traced` with tracemalloc (what Python allocated and holds), `RSS` as the "
             "growth of the resident memory without tracemalloc, after malloc_trim(0). Payload "
             "bytes are not counted (their headers are). `estimate` is what `cctmpfs stats` "
             "estimates (`memory`, all but payloads and the hot buffer)."
             % (meta["n"], meta["date"], meta["git"], meta["python"], meta["n"]), "",
             "| item | traced (bytes) | RSS (bytes) | stats estimate (bytes) |",
             "|---|---:|---:|---:|"]
    labels = {
        "empty-file": "empty file (inode, name, entry, map)",
        "empty-dir": "empty directory",
        "symlink": "symlink, 10-byte target",
        "small-file": "3 KiB file, one sealed block, as cp -a leaves it",
        "stored-block": "stored block of a big file (slot, record, index)",
        "shared-block": "one more reference to a stored block (dedup)",
    }
    for case in meta["cases"]:
        t, r = by.get((case, "traced")), by.get((case, "rss"))
        if t is None or r is None:
            continue
        lines.append("| %s | %.0f | %.0f | %.0f |" % (labels[case], t["per_item"], r["per_item"],
                                                      t["estimate_per_item"]))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--name", default="metadata")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_case(a.one[0], a.n, a.one[1])))
        return 0
    cases = a.cases.split(",")
    records = []
    for case in cases:
        for method in ("traced", "rss"):
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "-n", str(a.n),
                                "--one", case, method], capture_output=True, text=True, check=True)
            rec = json.loads(p.stdout.splitlines()[-1])
            records.append(rec)
            print("%-13s %-6s %7.0f bytes per item (estimate %.0f), %.1f s" % (
                case, method, rec["per_item"], rec["estimate_per_item"], rec["seconds"]), flush=True)
    git = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    results = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "git": git, "n": a.n,
                        "python": sys.version.split()[0], "cases": cases}, "records": records}
    out = os.path.join(HERE, "results", a.name)
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    md = report(results)
    with open(out + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
