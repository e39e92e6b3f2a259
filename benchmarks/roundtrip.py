#!/usr/bin/env python3
"""roundtrip.py DIR [DIR...]: the cost of one request, as a program sees it, on each mount.

    python3 benchmarks/roundtrip.py /tmp/bench-pyfuse /tmp/bench-cct [--calls 30000] [--rounds 3]

For each directory (interleaved, --rounds times) it times, in microseconds per
call, from one thread:

  getxattr   os.getxattr of a missing user xattr: exactly one FUSE request
             (GETXATTR) with an instant answer, i.e. the bare round trip
  pwrite-4k  a 4 KiB pwrite into a 1 MiB file: WRITE, plus the GETXATTR of
             security.capability that the kernel sends first on a
             filesystem with xattrs
  pread-4k   a 4 KiB pread with O_DIRECT: one READ

Run it under `taskset -c 0` with the daemon's threads on CPU 0 too to see
the handler and kernel cost (BASELINE.md: 10-16 us per round trip), or
unpinned to see what cross-vCPU wake-ups add (~100 us each on this VM).
docs/profiling.md uses it. stdlib only.
"""
from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time

KiB = 1024


def bench(d: str, calls: int) -> dict[str, float]:
    path = os.path.join(d, "roundtrip.dat")
    with open(path, "wb") as f:
        f.write(os.urandom(1024 * KiB))
    out = {}
    fd = os.open(path, os.O_RDWR)
    try:
        buf = os.urandom(4 * KiB)
        t0 = time.perf_counter()
        for _ in range(calls):
            try:
                os.getxattr(fd, "user.roundtrip-missing")
            except OSError:
                pass
        out["getxattr"] = (time.perf_counter() - t0) / calls * 1e6
        t0 = time.perf_counter()
        for i in range(calls):
            os.pwrite(fd, buf, (i * 61 % 256) * 4 * KiB)
        out["pwrite-4k"] = (time.perf_counter() - t0) / calls * 1e6
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        aligned = mmap.mmap(-1, 4 * KiB)       # O_DIRECT wants an aligned buffer
        t0 = time.perf_counter()
        for i in range(calls):
            os.preadv(fd, [aligned], (i * 61 % 256) * 4 * KiB)
        out["pread-4k"] = (time.perf_counter() - t0) / calls * 1e6
    finally:
        os.close(fd)
        os.unlink(path)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--calls", type=int, default=30000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    res: dict[str, dict[str, list[float]]] = {d: {} for d in a.dirs}
    for _ in range(a.rounds):
        for d in a.dirs:
            for k, v in bench(d, a.calls).items():
                res[d].setdefault(k, []).append(v)
    print("%-28s %10s %10s %10s   (us per call, median of %d rounds)" % (
        "directory", "getxattr", "pwrite-4k", "pread-4k", a.rounds))
    for d in a.dirs:
        print("%-28s %10.1f %10.1f %10.1f" % (d, *(statistics.median(res[d][k]) for k in
                                                    ("getxattr", "pwrite-4k", "pread-4k"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
