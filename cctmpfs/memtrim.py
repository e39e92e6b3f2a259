"""Give freed heap memory back to the kernel, so RSS follows what is stored.

Payloads live in the payload arena (arena.py), whose emptied segments are
unmapped directly. What is left in glibc's heaps: request buffers, blocks
in the hot buffer, codec output, decoded blocks, and the Python objects
bigger than pymalloc's 512 bytes (all of them under allocator=malloc,
options.ALLOCATORS). glibc keeps freed chunks in
its heaps, and returns only the top of each: after a big `rm -rf` the freed
pages in the middle stay resident. malloc_trim(0) gives back every whole free
page anywhere in the heaps (madvise), so the sealer thread calls it when the
heaps hold at least TRIM_FREE_BYTES of free chunks (mallinfo2) and either RSS
or those free chunks grew by that much since the last trim left them. The
free chunks matter after a delete: RSS then falls (the payload arena unmaps
its segments) while the freed metadata stays resident in the heaps, so RSS
alone never grew again (stop 21: rm -rf of the stdlib with site-packages
left 52.8 MiB above the fresh daemon's).

Threading: maybe_trim() runs on the sealer thread without the global lock
(ctypes drops the GIL for the calls, so handlers keep running).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from typing import Optional

log = logging.getLogger(__name__)

#: Trim when the malloc heaps hold this much free memory and RSS is this much
#: above what the last trim left. This is the heap part of the slack bound
#: (docs/arenas.md): a trim of a 100 MiB heap takes ~1 ms here, and every
#: trimmed page costs a fresh-page fault (~2.5 us) when reused, so a few MiB
#: of free heap is cheaper kept than returned.
TRIM_FREE_BYTES = 8 * 1024 * 1024
#: Once the mount's data has been quiet for a while (DataEngine.idle), the
#: same rules with this threshold: nothing is refaulted while idle, and what
#: stays below 8 MiB of free heap was most of the slack of a small tree
#: (/usr/include: 8.8 MiB of slack for 12.0 MiB of payloads, capacity-s24).
IDLE_TRIM_FREE_BYTES = 1024 * 1024
#: At most one check per interval: mallinfo2() walks the free lists of every
#: heap, which takes ~1 ms for 100k free chunks.
TRIM_INTERVAL_SECONDS = 2.0
#: mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Fixed thresholds instead of glibc's sliding ones. Chunks up to 32 MiB
#: come from the heaps (glibc's sliding threshold ends there too, but starts
#: at 128 KiB and mmaps every 1 MiB request buffer until a free moves it),
#: and free() shrinks a heap only past 64 MiB free at its top, where the
#: default (128 KiB, twice the sliding threshold) gave pages back and
#: faulted them in again for each block. maybe_trim() gives memory back
#: instead. The core's 1 MiB write path with sealing (64 blocks of fio-like
#: data, 1 GiB, medians of 8 alternated runs): 0.853 s of CPU against 0.956
#: under PYTHONMALLOC=malloc, 0.859 against 0.910 under pymalloc.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
HEAP_TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024


class _Mallinfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (2.33 and later), every field a size_t."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena",      # bytes of non-mmapped space the heaps took from the system
        "ordblks",    # free chunks
        "smblks",     # free fastbin chunks
        "hblks",      # mmapped regions
        "hblkhd",     # bytes in mmapped regions
        "usmblks",    # unused (0)
        "fsmblks",    # bytes in free fastbin chunks
        "uordblks",   # bytes in use
        "fordblks",   # bytes free in the heaps (trimmed pages included)
        "keepcost",   # bytes free at the top of the main heap
    )]


try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _malloc_trim = _libc.malloc_trim
    _mallopt = _libc.mallopt
except (OSError, AttributeError):  # not glibc: nothing to trim with
    _malloc_trim = None
    _mallopt = None
try:
    _mallinfo2 = _libc.mallinfo2
    _mallinfo2.restype = _Mallinfo2
    _mallinfo2.argtypes = []
except (NameError, AttributeError):  # glibc before 2.33
    _mallinfo2 = None

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def heap_free_bytes() -> Optional[int]:
    """Free bytes in the malloc heaps (mallinfo2's fordblks), or None where
    glibc cannot say."""
    if _mallinfo2 is None:
        return None
    return int(_mallinfo2().fordblks)


#: glibc arenas (M_ARENA_MAX): one, shared by every thread. malloc_trim(0)
#: gives back the whole free pages inside the free chunks of every arena,
#: but shrinks the top chunk of the main arena only (systrim); a thread
#: arena's top shrinks only from a free() once it passes
#: HEAP_TRIM_THRESHOLD_BYTES. With two arenas the sealer's (arena 1)
#: kept its transient buffers' top resident: on /usr/include, settled, arena
#: 1 held 5.1 MB of system memory, 3.4 MB resident, for 0.5 MB in use, and
#: malloc_trim(0) gave none of it back (memprofile.py). One arena: the heap
#: slack of the capacity run fell from 4.2-6.1 to 0.3 MiB on /usr/include
#: (RSS / accounted 1.23-1.31 -> 1.01) and from 12.4-14.4 to 8.0 MiB on the
#: stdlib with site-packages (results/s29-arena1-pack128k against
#: s29-arenas2-pack128k); no slower (s29-arena-untar). The threads that allocate
#: here are few and mostly take turns on the GIL.
MALLOC_ARENAS = 1


def tune_malloc(arenas: int = MALLOC_ARENAS) -> None:
    """One arena (MALLOC_ARENAS), and fixed thresholds (MMAP_THRESHOLD_BYTES).
    Call once, at start."""
    if _mallopt is not None:
        _mallopt(M_ARENA_MAX, arenas)
        _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        _mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD_BYTES)


class Trimmer:
    """Decides when to call malloc_trim; counts what it did.

    Its fields are owned by the one thread that calls maybe_trim() (the
    sealer), which writes them without the global lock; the stats read them
    under it, a snapshot that may miss a trim in progress."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.last = 0.0          # clock() of the last check
        self.floor = 0           # RSS the last trim left, or the lowest seen since
        self.free_floor = -1     # heap free bytes the last trim left, or the lowest seen since
        self.trims = 0           # malloc_trim calls made
        self.freed_bytes = 0     # RSS drop measured across those calls

    def maybe_trim(self, idle: bool = False) -> bool:
        """Trim if the heaps hold enough freed memory (TRIM_FREE_BYTES, or
        IDLE_TRIM_FREE_BYTES when idle) that is new since the last trim."""
        if _malloc_trim is None:
            return False
        now = self.clock()
        if now - self.last < TRIM_INTERVAL_SECONDS:
            return False
        self.last = now   # also rate-limits the /proc read and mallinfo2 below
        rss = rss_bytes()
        if not self.floor or rss < self.floor:
            self.floor = rss
        threshold = IDLE_TRIM_FREE_BYTES if idle else TRIM_FREE_BYTES
        free = heap_free_bytes()
        if free is not None:
            # Trimmed pages stay counted as free: this grows only with new frees.
            if self.free_floor < 0 or free < self.free_floor:
                self.free_floor = free
            if free < threshold:
                return False
            freed_since = free >= self.free_floor + threshold
        else:
            freed_since = False
        if rss < self.floor + threshold and not freed_since:
            return False
        _malloc_trim(0)
        after = rss_bytes()
        self.floor = after
        if free is not None:
            self.free_floor = heap_free_bytes()  # type: ignore[assignment]
        self.trims += 1
        self.freed_bytes += max(0, rss - after)
        log.debug("malloc_trim: RSS %d -> %d (heap free %s)", rss, after, free)
        return True
