"""Give freed heap memory back to the kernel, so RSS follows what is stored.

glibc keeps freed chunks in its heap. After a file of 1 GiB was written,
compressed and deleted, the daemon's RSS stayed at the high-water mark (a
benchmark run measured 1.28 GiB of RSS for 77 MiB stored). malloc_trim(0)
returns free pages anywhere in the heap (madvise), so the background thread
calls it when RSS exceeds what is accounted by a margin.

Threading: maybe_trim() runs on the sealer thread without the global lock
(ctypes drops the GIL for the call, so handlers keep running).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time

log = logging.getLogger(__name__)

#: Trim when RSS exceeds the accounted bytes by this fraction plus TRIM_SLACK.
TRIM_EXCESS_FRACTION = 0.25
#: Python, the libraries and llfuse's buffers take ~40 MiB before any data.
TRIM_SLACK = 96 * 1024 * 1024
#: At most one trim per interval: a trim of a 2 GiB heap takes milliseconds,
#: and every trimmed page costs a fresh-page fault (~2.5 us) when reused.
TRIM_INTERVAL_SECONDS = 2.0
#: mallopt(M_ARENA_MAX): few threads allocate here; more arenas only fragment.
M_ARENA_MAX = -8

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _malloc_trim = _libc.malloc_trim
    _mallopt = _libc.mallopt
except (OSError, AttributeError):  # not glibc: nothing to trim with
    _malloc_trim = None
    _mallopt = None

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def limit_arenas(n: int = 2) -> None:
    if _mallopt is not None:
        _mallopt(M_ARENA_MAX, n)


class Trimmer:
    """Decides when to call malloc_trim; counts what it did.

    Its fields are owned by the one thread that calls maybe_trim() (the
    sealer), which writes them without the global lock; the stats read them
    under it, a snapshot that may miss a trim in progress."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.last = 0.0          # clock() of the last RSS check
        self.trims = 0           # malloc_trim calls made
        self.freed_bytes = 0     # RSS drop measured across those calls

    def maybe_trim(self, accounted_bytes: int) -> bool:
        if _malloc_trim is None:
            return False
        now = self.clock()
        if now - self.last < TRIM_INTERVAL_SECONDS:
            return False
        self.last = now   # also rate-limits the /proc read below
        rss = rss_bytes()
        if rss <= accounted_bytes * (1 + TRIM_EXCESS_FRACTION) + TRIM_SLACK:
            return False
        _malloc_trim(0)
        after = rss_bytes()
        self.trims += 1
        self.freed_bytes += max(0, rss - after)
        log.debug("malloc_trim: RSS %d -> %d (accounted %d)", rss, after, accounted_bytes)
        return True
