"""Test-only fault injection: raise an exception at a chosen point of the
core, every Nth time it is reached.

Disarmed (the normal case) a point costs one test of an empty dict. Tests arm
points with arm("read.decode:3,seal.encode:5"); a daemon arms them from its
CCTMPFS_FAULTS environment variable (tests/mounted sets it; nothing else
should). Each point sits where the operation has not changed any state yet,
or where the code around it turns the failure into an unchanged state, so
that an injected fault must end as an errno (or a counted, retried seal) and
a checker that still passes.

Threading: hit() may run with or without the global lock; the counters are
approximate under concurrency, which a test that counts "at least one"
tolerates.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

#: The points, and where each one is.
POINTS = {
    "read.decode": "filemap.DataEngine.raw_for, unlocked, before decoding a stored block",
    "write.apply": "filemap.DataEngine.write, after the space checks, before changing anything",
    "truncate.cut": "filemap.DataEngine.truncate, before cutting blocks",
    "seal.encode": "filemap.DataEngine._encode, unlocked (seal() counts it and retries later)",
    "recompress.encode": "recompress.Recompressor._batch, unlocked (the block keeps its payload)",
    "pack.encode": "packing.Packer._pack_batch, unlocked (the blocks stay as they are)",
    "device.write": "coldstore.ColdStore.write_batch, unlocked (the batch fails, blocks stay)",
    "arena.grow": "arena._map, mapping a payload segment (as ENOMEM: the seal is not published, "
                  "the block stays dirty, a write that needs RAM gets ENOSPC)",
    "unlink": "namespace.Filesystem.unlink, after the lookups, before changing anything",
}
ENV = "CCTMPFS_FAULTS"

_armed: dict[str, list[int]] = {}   # point -> [every, calls so far]


class InjectedFault(Exception):
    """Raised by an armed fault point."""


def arm(spec: str) -> None:
    """Arm points from "point:N,point:N" (N: fail every Nth call). Raises
    ValueError for an unknown point or a bad N."""
    _armed.clear()
    for part in filter(None, spec.split(",")):
        point, _, every = part.partition(":")
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r} (known: {', '.join(POINTS)})")
        n = int(every or "1")
        if n < 1:
            raise ValueError(f"{part}: N must be at least 1")
        _armed[point] = [n, 0]


def disarm() -> None:
    _armed.clear()


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """No point fires inside (a test's own checks); counts are kept."""
    global _armed
    saved, _armed = _armed, {}
    try:
        yield
    finally:
        _armed = saved


def arm_from_environment() -> None:
    spec = os.environ.get(ENV)
    if spec:
        arm(spec)


def hit(point: str) -> None:
    """Raise InjectedFault if point is armed and this is its Nth call."""
    if not _armed:
        return
    entry = _armed.get(point)
    if entry is None:
        return
    entry[1] += 1
    if entry[1] % entry[0] == 0:
        raise InjectedFault(f"injected fault at {point} (call {entry[1]})")
