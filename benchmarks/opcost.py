#!/usr/bin/env python3
"""opcost.py: what one system call costs a FUSE daemon, in its own CPU time.

    opcost.py [-n 5000] NAME=MOUNTPOINT:PID ...

For each mount it runs the calls an untar makes, N at a time (create N files,
write 10 KiB to each, append 8 x 10 KiB more, fchown, fchmod, futimens,
close; then getxattr(security.capability), and 4 KiB overwrites of one hot
block), and reports per call: the wall time the program saw and the user
and system CPU time the daemon PID spent (/proc/PID/stat; 10 ms ticks, so
N=5000 resolves 2 us). The mounts are measured one after the other, twice,
interleaved; the second pass is printed.

Where profile_paths.py times cctmpfs's handlers in a loop, this measures
them in the daemon, between context switches, where the same Python runs
several times slower (docs/profiling.md, "The untar").
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from typing import Callable

TICK = os.sysconf("SC_CLK_TCK")
CHUNK = 10 * 1024      # GNU tar's record: what it writes at a time


def cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of process pid, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def measure(mount: str, pid: int, n: int) -> dict[str, tuple[float, float, float]]:
    """{call: (wall us, daemon user us, daemon sys us) per call}."""
    d = os.path.join(mount, "opcost")
    os.makedirs(d)
    data = os.urandom(CHUNK)
    small = os.urandom(4096)
    fds: list[int] = []
    out: dict[str, tuple[float, float, float]] = {}

    def timed(name: str, calls: int, fn: Callable[[], None]) -> None:
        u0, s0 = cpu(pid)
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        u1, s1 = cpu(pid)
        out[name] = (wall / calls * 1e6, (u1 - u0) / calls * 1e6, (s1 - s0) / calls * 1e6)

    def create() -> None:
        for i in range(n):
            fds.append(os.open(f"{d}/f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    def append() -> None:
        for fd in fds:
            for _ in range(8):
                os.write(fd, data)

    def getxattr() -> None:
        for fd in fds:
            try:
                os.getxattr(fd, "security.capability")
            except OSError:
                pass

    def overwrite() -> None:
        fd = os.open(f"{d}/hot", os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, bytes(32 * 4096))
        for i in range(n):
            os.pwrite(fd, small, (i % 32) * 4096)
        os.close(fd)

    def close() -> None:
        while fds:
            os.close(fds.pop())

    timed("create (LOOKUP, CREATE)", n, create)
    timed("write 10 KiB, new block", n, lambda: [os.write(fd, data) for fd in fds] and None)
    timed("write 10 KiB, append", 8 * n, append)
    timed("fchown (SETATTR)", n, lambda: [os.fchown(fd, 0, 0) for fd in fds] and None)
    timed("fchmod (SETATTR)", n, lambda: [os.fchmod(fd, 0o644) for fd in fds] and None)
    timed("futimens (SETATTR)", n, lambda: [os.utime(fd, ns=(1, 1)) for fd in fds] and None)
    timed("getxattr security.capability", n, getxattr)
    timed("close (FLUSH, RELEASE)", n, close)
    timed("pwrite 4 KiB, hot block", n, overwrite)
    shutil.rmtree(d)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=5000, help="calls per measurement")
    ap.add_argument("targets", nargs="+", metavar="NAME=MOUNTPOINT:PID")
    a = ap.parse_args()
    targets = []
    for t in a.targets:
        name, _, rest = t.partition("=")
        mount, _, pid = rest.rpartition(":")
        targets.append((name, mount, int(pid)))
    results = {}
    for _ in range(2):      # the first pass warms every daemon up
        for name, mount, pid in targets:
            results[name] = measure(mount, pid, a.n)
    calls = list(next(iter(results.values())))
    names = [t[0] for t in targets]
    print("| call | " + " | ".join(f"{n}: wall / daemon user / sys (us)" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for c in calls:
        cells = ["%.1f / %.1f / %.1f" % results[n][c] for n in names]
        print(f"| {c} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
