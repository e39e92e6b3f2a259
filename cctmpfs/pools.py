"""Give the pages of pymalloc's empty pools back to the kernel, so RSS
follows the live metadata after deletes (issue 15 item 6).

pymalloc keeps an arena (1 MiB) mapped while one object in it lives, and
keeps the pages of its empty pools resident. After `rm -rf` of the stdlib
with site-packages (59k inodes), 45 arenas (47 MB) held 8.4 MB of objects
and 32 MB of empty pools: most of what the daemon kept above its fresh
RSS (docs/memory.md, "Stop 27"). The C extension `_pools` (_pools.c says
how, and why it is safe) becomes pymalloc's arena allocator to know the
arenas, and `trim()` gives back every page but the first of each empty
pool.

The sealer calls PoolTrimmer.maybe_trim() next to the heap trim
(memtrim.py), once the mount's data has been quiet (DataEngine.idle): a
pool given back costs three fresh-page faults (~2.5 us each here) when
pymalloc uses it again, so it is done when nothing is being written.

Threading: trim() holds the GIL throughout and takes no lock of ours
(pymalloc's state is the GIL's). Measured here: giving back 4,892 pools
took 11.8 ms (2.4 us each, the madvise calls), a pass over 79 arenas with
nothing to give back 0.12 ms. So a pass gives back at most POOLS_PER_PASS,
and a request waits at most ~2.5 ms for the GIL.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any, Optional

import attrs

log = logging.getLogger(__name__)

#: Empty pools given back per call of maybe_trim (~2.5 ms of GIL, above);
#: the sealer calls it every idle pass (0.5 s), so the 32 MB of empty pools
#: of the stdlib's delete go back in three passes.
POOLS_PER_PASS = 1024
#: Fewer empty pools than this wait for more: an idle daemon's own passes
#: (and each stats call) empty a pool and fill it again, and giving that one
#: back every pass only turns into three page faults at the next (seen on an
#: idle mount polled for stats: one pool a pass). 16 pools are 192 KiB.
MIN_POOLS = 16
#: pymalloc's pool (16 KiB with 3.10+'s radix tree, _pools.c) and a page.
POOL_BYTES = 16384
PAGE_BYTES = 4096

try:
    from . import _pools
except ImportError as e:   # setup.py builds it optionally
    _pools = None
    _IMPORT_ERROR: Optional[str] = str(e)
else:
    _IMPORT_ERROR = None


def allocator_name() -> str:
    """The allocator of Python's objects: "pymalloc", "malloc",
    "pymalloc_debug"... (PYTHONMALLOC; CPython's own answer)."""
    try:
        fn = ctypes.pythonapi._PyMem_GetCurrentAllocatorName
    except AttributeError:
        return "unknown"
    fn.restype = ctypes.c_char_p
    name = fn()
    return name.decode() if name else "unknown"


@attrs.define(slots=True)
class PoolTrimmer:
    """Gives back empty pools; counts what it did. Its counters are written
    by the one thread that calls maybe_trim() (the sealer) and read by the
    stats, as memtrim.Trimmer's are."""

    #: None when it works, else why not (shown by `cctmpfs stats`).
    unavailable: Optional[str] = None
    trims: int = 0          # trim() calls that gave back at least one pool
    pools: int = 0          # empty pools given back (each again when reused and emptied)
    bytes: int = 0          # their pages given back: 12 KiB a pool
    arenas: int = 0         # pymalloc arenas known at the last trim
    #: room() when the mount was up, before any file (mark_mounted()): the
    #: daemon's RSS then (stats' runtime_bytes) already holds it.
    room_at_mount: int = 0

    @classmethod
    def install(cls) -> "PoolTrimmer":
        """Become pymalloc's arena allocator (only arenas made from now on
        are known), or say why not. Call early, once per process."""
        why = cls.why_unavailable()
        if why is None:
            try:
                _pools.install()   # type: ignore[union-attr]
            except (NotImplementedError, OSError) as e:
                why = str(e)
        if why is not None:
            log.info("empty pymalloc pools stay resident: %s", why)
        return cls(unavailable=why)

    @staticmethod
    def why_unavailable() -> Optional[str]:
        if _pools is None:
            return f"cctmpfs._pools not built ({_IMPORT_ERROR})"
        if sys.implementation.name != "cpython":
            return f"not CPython ({sys.implementation.name})"
        name = allocator_name()
        if name != "pymalloc":
            return f"Python objects come from {name}, not pymalloc"
        return None

    def maybe_trim(self) -> int:
        """Give back the empty pools not given back yet. Returns how many."""
        if self.unavailable is not None:
            return 0
        pools, nbytes, _before, arenas, failed = _pools.trim(POOLS_PER_PASS, MIN_POOLS)   # type: ignore[union-attr]
        self.arenas = arenas
        if failed:
            log.warning("madvise failed on %d empty pymalloc pools", failed)
        if pools:
            self.trims += 1
            self.pools += pools
            self.bytes += nbytes
            log.debug("gave back %d empty pymalloc pools (%d bytes)", pools, nbytes)
        return pools

    def room(self) -> dict[str, int]:
        """Where the arenas known hold no object, in bytes, measured by
        walking the pool headers (_pools.room(), with the GIL: 0.05 ms
        for 74 arenas, measured): free blocks of the pools in use, empty pools
        still resident (16 KiB each), and the first page kept of each empty
        pool given back. All zero when unavailable."""
        if self.unavailable is not None:
            return {"free_block_bytes": 0, "empty_pool_bytes": 0, "given_back_header_bytes": 0,
                    "arena_bytes": 0}
        free_blocks, empty, given_back, arena_bytes = _pools.room()   # type: ignore[union-attr]
        return {"free_block_bytes": free_blocks, "empty_pool_bytes": empty * POOL_BYTES,
                "given_back_header_bytes": given_back * PAGE_BYTES, "arena_bytes": arena_bytes}

    def _room_total(self) -> int:
        r = self.room()
        return r["free_block_bytes"] + r["empty_pool_bytes"] + r["given_back_header_bytes"]

    def free_room(self) -> int:
        """The bytes room() counts, less what there was at mark_mounted():
        what pymalloc holds beyond the objects, since the mount."""
        return max(0, self._room_total() - self.room_at_mount)

    def mark_mounted(self) -> None:
        self.room_at_mount = self._room_total()

    def stats(self) -> dict[str, Any]:
        return {"enabled": self.unavailable is None, "unavailable": self.unavailable,
                "trims": self.trims, "pools": self.pools, "bytes": self.bytes,
                "arenas": self.arenas, **self.room()}
