#!/usr/bin/env python3
"""Bytecodes the FUSE handlers execute per request: cctmpfs against pyfuse_mem.py.

In the daemon every request runs after two context switches, with cold
caches, and the worker's interpreter time follows the number of bytecodes
its handlers execute (docs/profiling.md, "Bytecodes per request"). Timings
on this VM swing 10-60 % between runs; this count does not, so it is the
measure for changes to the request paths.

It calls the handlers of `cctmpfs.transport.llfuse_ops.Operations` and of
`pyfuse_mem.py --xattr` directly, no mount, in the untar's request mix
(counted on a real untar of the Python stdlib: per file 1.04 LOOKUP of a
missing name, a CREATE, 5.12 GETXATTR, the first write of a block and 5.78
appends of tar's 10 KiB records, 2 GETATTR, 3 SETATTR, FLUSH and RELEASE),
one READ of a stored 128 KiB block by a sequential reader, and one random 4 KiB
READ of a block in RAM.

    .venv/bin/python benchmarks/bytecodes.py [--pyfuse PATH]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import sys
import types
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import llfuse  # noqa: E402

from cctmpfs.namespace import Filesystem  # noqa: E402
from cctmpfs.transport.frontend import Frontend  # noqa: E402
from cctmpfs.transport.llfuse_ops import Operations  # noqa: E402

RECORD = 10 * 1024          # GNU tar's write size
BLOCK = 128 * 1024
#: Requests per untarred file, from the untar's request counters.
WEIGHTS = {"lookup (missing)": 8028 / 7733, "create": 1.0, "getxattr": 39605 / 7733,
           "write (new block)": 1.0, "write (append)": (52446 - 7733) / 7733,
           "getattr": 15526 / 7733, "setattr (chown)": 1.0, "setattr (times)": 2.0,
           "flush": 1.0, "release": 1.0}


class Ctx:
    uid = gid = pid = 0
    umask = 0o022


def count(fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    """fn(*args) and the number of bytecodes it executed (FUSEError: result None)."""
    n = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal n
        if event == "call":
            frame.f_trace_opcodes = True
        elif event == "opcode":
            n += 1
        return tracer

    sys.settrace(tracer)
    try:
        result = fn(*args)
    except llfuse.FUSEError:
        result = None
    finally:
        sys.settrace(None)
    return result, n


def untar_mix(ops: Any, files: int = 20) -> dict[str, int]:
    """Median bytecodes per request type over `files` files written as tar does."""
    attr = types.SimpleNamespace(st_size=0, st_mode=0o100644, st_uid=0, st_gid=0,
                                 st_atime_ns=1, st_mtime_ns=1)
    no = dict(update_size=0, update_mode=0, update_uid=0, update_gid=0,
              update_atime=0, update_mtime=0)
    chown = types.SimpleNamespace(**{**no, "update_uid": 1, "update_gid": 1})
    times = types.SimpleNamespace(**{**no, "update_atime": 1, "update_mtime": 1})
    seen: dict[str, list[int]] = collections.defaultdict(list)
    data = os.urandom(3 * RECORD)
    for i in range(files):
        name = b"f%d" % i
        seen["lookup (missing)"].append(count(ops.lookup, 1, name, Ctx)[1])
        (fh, entry), n = count(ops.create, 1, name, 0o100644, os.O_WRONLY, Ctx)
        seen["create"].append(n)
        for off in range(0, len(data), RECORD):
            seen["getxattr"].append(count(ops.getxattr, entry.st_ino, b"security.capability", Ctx)[1])
            kind = "write (new block)" if off == 0 else "write (append)"
            seen[kind].append(count(ops.write, fh, off, data[off:off + RECORD])[1])
        seen["getattr"].append(count(ops.getattr, entry.st_ino, Ctx)[1])
        seen["setattr (chown)"].append(count(ops.setattr, entry.st_ino, attr, chown, None, Ctx)[1])
        seen["setattr (times)"].append(count(ops.setattr, entry.st_ino, attr, times, None, Ctx)[1])
        seen["flush"].append(count(ops.flush, fh)[1])
        seen["release"].append(count(ops.release, fh)[1])
    return {k: sorted(v)[len(v) // 2] for k, v in seen.items()}


def stream_read(ops: Any, seal: Callable[[], None]) -> int:
    """Bytecodes of one 128 KiB READ of a stored block, in a sequential read."""
    fh, _ = ops.create(1, b"stream", 0o100644, os.O_RDWR, Ctx)
    data = (b"cold sequential read " * (4 * BLOCK // 21 + 1))[:4 * BLOCK]
    for off in range(0, len(data), BLOCK):
        ops.write(fh, off, data[off:off + BLOCK])
    seal()
    ops.read(fh, 0, BLOCK)
    return count(ops.read, fh, BLOCK, BLOCK)[1]


def hot_read(ops: Any) -> int:
    """Bytecodes of one random 4 KiB READ of a block an earlier read brought into RAM."""
    fh, _ = ops.create(1, b"hot", 0o100644, os.O_RDWR, Ctx)
    ops.write(fh, 0, os.urandom(BLOCK))
    ops.read(fh, 40960, 4096)
    return count(ops.read, fh, 8192, 4096)[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench = os.environ.get("CCTMPFS_BENCH_DIR", os.path.join(HERE, "..", "..", "shared", "bench"))
    ap.add_argument("--pyfuse", default=os.path.join(bench, "pyfuse_mem.py"),
                    help="pyfuse_mem.py (default: $CCTMPFS_BENCH_DIR, else ../shared/bench)")
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("pyfuse_mem", a.pyfuse)
    assert spec is not None and spec.loader is not None
    pm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pm)

    def pyfuse() -> Any:
        return pm.XattrOps(types.SimpleNamespace(timeout=300.0, blksize=4096, stats=None, xattr=True))

    def cct() -> Operations:
        return Operations(Frontend(Filesystem(buffer_bytes=1 << 30)))

    mine, ref = untar_mix(cct()), untar_mix(pyfuse())
    print(f"{'request':20} {'cctmpfs':>8} {'pyfuse-xattr':>13} {'per file':>9}")
    total_mine = total_ref = 0.0
    for k, w in WEIGHTS.items():
        print(f"{k:20} {mine[k]:8d} {ref[k]:13d} {w:9.2f}")
        total_mine += mine[k] * w
        total_ref += ref[k] * w
    print(f"{'per untarred file':20} {total_mine:8.0f} {total_ref:13.0f}")
    c = cct()
    read_mine = stream_read(c, lambda: (c.fs.engine.seal_everything(), c.fs.engine.make_room()))
    print(f"{'READ 128 KiB, cold':20} {read_mine:8d} {stream_read(pyfuse(), lambda: None):13d}")
    print(f"{'READ 4 KiB, hot':20} {hot_read(cct()):8d} {hot_read(pyfuse()):13d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
