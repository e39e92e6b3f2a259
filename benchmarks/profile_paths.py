#!/usr/bin/env python3
"""profile_paths.py: where the time of one request goes in cctmpfs's own code.

    .venv/bin/python benchmarks/profile_paths.py [--data fio|src] [--cprofile PATH]

Drives the llfuse adapter (transport/llfuse_ops.Operations) and the core directly, with
no mount, so that the figures are the handler's own cost, without the kernel
round trip (10-16 us pinned, ~100 us across vCPUs here: ../shared/bench/
BASELINE.md). docs/profiling.md puts them next to py-spy profiles of real
mounts. Each path is timed over many calls and reported in microseconds per
call (median of 5 runs):

  getxattr-cap      GETXATTR(security.capability), asked before every write(2)
  write-4k-hot      4 KiB overwrite inside a block already in the hot buffer
  write-4k-cold     4 KiB write into a compressed block: decode it, then patch
  write-128k        a 128 KiB sequential write, kept as the request's bytes
  seal-128k         the sealer's work for one full block: xxh3 fingerprint,
                    index lookup, compression, publish (of which: compress-128k)
  read-128k-cold    a 128 KiB read of a compressed block (decode + reply)

--data picks the block contents: fio's 60%-compressible buffers (what the fio
jobs write) or 128 KiB slices of the Python stdlib (real files; 2-4x slower
to compress). --cprofile writes a cProfile of the 4 KiB random write loop.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import random
import statistics
import sysconfig
import time
from typing import Callable

import llfuse

from cctmpfs.codec import Codec
from cctmpfs.namespace import Filesystem
from cctmpfs.transport.frontend import Frontend
from cctmpfs.transport.llfuse_ops import Operations

KiB = 1024
BS = 128 * KiB


class Ctx:
    uid, gid, pid, umask = 0, 0, os.getpid(), 0o022


def fio_like_blocks(n: int, seed: int = 1) -> list[bytes]:
    """Blocks like fio's buffer_compress_percentage=60, chunk 4k: per 4 KiB,
    40% random bytes and 60% a repeated byte."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(b"".join(rng.randbytes(1638) + bytes([rng.randrange(256)]) * 2458
                            for _ in range(BS // 4096)))
    return out


def source_blocks(n: int) -> list[bytes]:
    """128 KiB slices of the concatenated .py files of the stdlib."""
    buf = bytearray()
    for root, _, names in os.walk(sysconfig.get_paths()["stdlib"]):
        for name in sorted(names):
            if name.endswith(".py") and "site-packages" not in root:
                with open(os.path.join(root, name), "rb") as f:
                    buf += f.read()
            if len(buf) >= n * BS:
                return [bytes(buf[i * BS:(i + 1) * BS]) for i in range(n)]
    return [bytes(buf[i * BS:(i + 1) * BS]) for i in range(len(buf) // BS)]


def per_call(fn: Callable[[int], None], calls: int, rounds: int = 5,
             setup: Callable[[], None] | None = None) -> float:
    """Median over rounds of the microseconds per call of fn(i)."""
    results = []
    for _ in range(rounds):
        if setup:
            setup()
        t0 = time.perf_counter()
        for i in range(calls):
            fn(i)
        results.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(results)


class Bench:
    def __init__(self, blocks: list[bytes]) -> None:
        self.blocks = blocks
        self.fs = Filesystem(buffer_bytes=1 << 30, codec=Codec("zstd", 3))
        self.ops = Operations(Frontend(self.fs))
        self.fh, attr = self.ops.create(llfuse.ROOT_INODE, b"f", 0o100644, os.O_RDWR, Ctx())
        self.ino = attr.st_ino
        self.engine = self.fs.engine
        self.file = self.fs.inodes[self.ino].data
        self.small = os.urandom(4096)
        rng = random.Random(2)
        self.offsets = [rng.randrange(len(blocks) * BS // 4096) * 4096 for _ in range(100_000)]

    def fill(self, seal: bool) -> None:
        """Write every block; seal them all if seal (the state after a sequential writer)."""
        self.fs.setattr(self.ino, size=0)
        for i, b in enumerate(self.blocks):
            self.ops.write(self.fh, i * BS, b)
        if seal:
            self.engine.seal_everything()

    def getxattr_cap(self, i: int) -> None:
        try:
            self.ops.getxattr(self.ino, b"security.capability", Ctx)
        except llfuse.FUSEError:
            pass

    def write_4k(self, i: int) -> None:
        self.ops.write(self.fh, self.offsets[i % len(self.offsets)], self.small)

    def write_4k_cold(self, i: int) -> None:
        # One write per block, each into a block that is compressed.
        self.ops.write(self.fh, i * BS + 4096, self.small)

    def write_128k(self, i: int) -> None:
        self.ops.write(self.fh, i * BS, self.blocks[i])

    def read_128k(self, i: int) -> None:
        self.ops.read(self.fh, i * BS, BS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=("fio", "src"), default="fio")
    ap.add_argument("--blocks", type=int, default=512, help="blocks in the test file (128 KiB each)")
    ap.add_argument("--cprofile", default=None, help="write a cProfile of the 4 KiB write loop here")
    a = ap.parse_args()
    blocks = fio_like_blocks(a.blocks) if a.data == "fio" else source_blocks(a.blocks)
    b = Bench(blocks)
    n = len(blocks)
    codec = Codec("zstd", 3)
    res = {}
    res["getxattr-cap"] = per_call(b.getxattr_cap, 100_000)
    b.fill(seal=False)
    res["write-4k-hot"] = per_call(b.write_4k, 100_000)
    res["write-4k-cold"] = per_call(b.write_4k_cold, n, setup=lambda: b.fill(seal=True))
    res["write-128k"] = per_call(b.write_128k, n, setup=lambda: b.fill(seal=False))
    b.fill(seal=False)
    t0 = time.perf_counter()
    b.engine.seal_everything()
    res["seal-128k"] = (time.perf_counter() - t0) / n * 1e6
    res["compress-128k"] = per_call(lambda i: codec.compress(blocks[i]), n)
    b.fill(seal=True)

    def drop_cached() -> None:
        b.engine.seal_everything()
        for s in b.file.slots():
            if s.raw is not None and not s.dirty:
                b.engine._drop_clean(s)
    res["read-128k-cold"] = per_call(b.read_128k, n, setup=drop_cached)
    print("data: %s, %d blocks of 128 KiB, zstd level 3; microseconds per call:" % (a.data, n))
    for k, v in res.items():
        print("  %-16s %8.1f" % (k, v))
    if a.cprofile:
        b.fill(seal=False)
        cProfile.runctx("for i in range(100000): b.write_4k(i)", globals(), {"b": b}, a.cprofile)
        print("cProfile of 100k 4 KiB writes: %s (python -m pstats %s)" % (a.cprofile, a.cprofile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
