#!/usr/bin/env python3
"""readback.py - files written write-only and read back at once, as a build
does (the compiler writes an object, the linker reads it): on tmpfs,
cctmpfs with its defaults (wronly=cached), `wronly=direct` (write-only opens
bypass the page cache, and the span written is stored into it at the last
close) and llfuse, interleaved in one run.

    benchmarks/readback.py [--files 3000] [--file-size 16k] [--big 256m]
                           [--rounds 3] [--variant NAME=OPTS]... [--name readback]

Root only. Each round, for every target in turn, in a fresh directory:

  small-write  FILES files of FILE-SIZE, each open(O_WRONLY|O_CREAT|O_TRUNC),
               one write(2), close
  small-read   each read back whole (open, read, close), right after
  big-write    one BIG file written O_WRONLY in 1 MiB write(2)s, close
  big-read     read back whole in 1 MiB reads, right after

Nothing is dropped from the caches between a write and its read: what is
measured is what the page cache still holds after the close. The data is
half random, half zeros (compressible). Reports medians in seconds and
each target's ratio to tmpfs, writes results/NAME.json and results/NAME.md.
Timing is reported, never asserted. stdlib only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import MiB, add_own_mount_options, parse_size, write_report  # noqa: E402
from listing import mount, unmount  # noqa: E402

WORKLOADS = ("small-write", "small-read", "big-write", "big-read")
CHUNK = MiB


def one_round(root: str, files: int, file_size: int, big: int) -> dict[str, float]:
    """The four workloads in root; seconds each."""
    half = file_size // 2
    small = os.urandom(half) + bytes(file_size - half)
    chunk = os.urandom(CHUNK // 2) + bytes(CHUNK // 2)
    d = os.path.join(root, "small")
    os.mkdir(d)
    out = {}
    t0 = time.perf_counter()
    for i in range(files):
        fd = os.open(os.path.join(d, str(i)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, small)
        os.close(fd)
    out["small-write"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(files):
        fd = os.open(os.path.join(d, str(i)), os.O_RDONLY)
        if os.read(fd, file_size + 1) != small:
            raise SystemExit(f"{d}/{i}: read back differs")
        os.close(fd)
    out["small-read"] = time.perf_counter() - t0
    path = os.path.join(root, "big")
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(big // CHUNK):
        os.write(fd, chunk)
    os.close(fd)
    out["big-write"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    n = 0
    while piece := os.read(fd, CHUNK):
        n += len(piece)
    os.close(fd)
    out["big-read"] = time.perf_counter() - t0
    if n != big // CHUNK * CHUNK:
        raise SystemExit(f"{path}: read {n} bytes back")
    shutil.rmtree(d)
    os.unlink(path)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--file-size", default="16k")
    ap.add_argument("--big", default="256m")
    ap.add_argument("--rounds", type=int, default=3)
    add_own_mount_options(ap, "readback")
    a = ap.parse_args()
    file_size, big = parse_size(a.file_size), parse_size(a.big)
    # (name, kind, -o options)
    targets = [("tmpfs", "tmpfs", ""), ("cct", "cct", ""), ("cct-direct", "cct", "wronly=direct"),
               ("cct-llfuse", "cct", "transport=llfuse")]
    targets += [(n, "cct", o) for n, _, o in (v.partition("=") for v in a.variant)]
    secs: dict[str, dict[str, list[float]]] = {t[0]: {w: [] for w in WORKLOADS} for t in targets}
    mps: dict[str, str] = {}
    try:
        for name, kind, opts in targets:
            mp = tempfile.mkdtemp(prefix=f"readback-{name}.", dir="/var/tmp")
            mount(kind, opts, a.cctmpfs, mp)
            mps[name] = mp
        for rnd in range(a.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for name, _kind, _opts in order:
                for w, s in one_round(mps[name], a.files, file_size, big).items():
                    secs[name][w].append(s)
            print(f"round {rnd + 1}: " + "; ".join(
                f"{n} " + " ".join(f"{w} {secs[n][w][-1]:.3f}" for w in WORKLOADS)
                for n, *_ in targets), flush=True)
    finally:
        for mp in mps.values():
            unmount(mp)
    med = {n: {w: statistics.median(v) for w, v in t.items()} for n, t in secs.items()}
    lines = ["# Files read back right after they were written", "",
             f"`benchmarks/readback.py --files {a.files} --file-size {a.file_size} --big {a.big} "
             f"--rounds {a.rounds}`, {time.strftime('%Y-%m-%d %H:%M')}: {a.files} files of "
             f"{a.file_size} and one of {a.big}, written O_WRONLY and read back at once, nothing "
             "dropped from the caches; targets interleaved. Medians in seconds, and in brackets "
             "the time over tmpfs's.", "",
             "| target | " + " | ".join(WORKLOADS) + " |",
             "|---|" + "---:|" * len(WORKLOADS)]
    for n, _k, _o in targets:
        lines.append(f"| {n} | " + " | ".join(
            f"{med[n][w]:.3f} ({med[n][w] / med['tmpfs'][w]:.1f}x)" for w in WORKLOADS) + " |")
    for n, _k, o in targets:
        lines.append(f"\n- `{n}`: " + ("the kernel's tmpfs" if n == "tmpfs" else
                                      f"`-o {o}`" if o else "cctmpfs with its defaults"))
    lines.append("\nRounds: " + "; ".join(
        f"{n} {w} " + ", ".join(f"{s:.3f}" for s in secs[n][w])
        for n, *_ in targets for w in WORKLOADS))
    write_report(a.results, a.name,
                 {"argv": sys.argv, "files": a.files, "file_size": file_size, "big": big,
                  "rounds": a.rounds,
                  "targets": [{"name": n, "kind": k, "opts": o} for n, k, o in targets],
                  "seconds": secs, "median_s": med}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
