"""A full filesystem under the kernel's writeback cache (transport=native,
fuse_on=writeback_cache): nothing acknowledged may be lost.

With WRITEBACK_CACHE the kernel accepts write(2) into its page cache and
sends the WRITEs later. On a tmpfs a write that does not fit fails at
write(2) with ENOSPC; here the kernel would have accepted it already.
Measured on shared/bench/native_mem.py limited to 8 MiB, without any of
this: write(2) accepted 64 MiB, fsync said ENOSPC, close said 0, and stat
still said 64 MiB. Three rules keep every byte that fsync or close
acknowledged:

1. **Bounded dirty data.** The mount's bdi (/sys/class/bdi/MAJOR:MINOR)
   gets `max_bytes` = half the reserve and `strict_limit` on, so the
   kernel never holds more than that of unwritten bytes for this mount (a
   writer past it waits in balance_dirty_pages until WRITEs are answered).
   The other half is for what the kernel still takes after free space fell
   to the reserve (rule 4): the rest of each write(2) that had passed its
   attribute check, and balance_dirty_pages' overshoot. With the bound
   equal to the reserve, a cached writer's last writeback failed with
   ENOSPC in 3 of 10 runs of test_a_cached_writer_gets_enospc_at_write_near_full
   with both cores busy. A user cannot write sysfs: a user mount keeps the
   kernel's strict bound (FUSE's max_ratio 1%, 47.8 MB here) and the
   reserve grows to twice it, so a small user mount opens uncached
   (rule 2) sooner.
2. **A reserve.** While free space (statfs: size= and the RAM budget) is
   above the reserve, whatever the kernel holds still fits. When it falls
   to the reserve, OPEN and CREATE are answered with FOPEN_DIRECT_IO: those
   writers bypass the cache and get ENOSPC at write(2), as on tmpfs.
   Handles opened before keep the cache; their writebacks can still fail.
3. **Failed writebacks are reported**, by the kernel, at fsync(2) and at
   close(2) (it records the WRITE's error on the file's mapping), and the
   kernel's cached pages of that file are dropped (NOTIFY_INVAL_INODE), so
   a read shows what the daemon stored. The notification is written by a
   thread of its own: the kernel may write back dirty pages of the inode
   (WRITE requests) before it returns from the notification's write(2),
   and only the reader answers them; sent from the reader, that would
   deadlock. The kernel's size is not corrected:
   under the writeback cache 6.18 keeps its own i_size of a cached regular
   file whatever the daemon answers (fuse_change_attributes), until it
   forgets the inode; then stat shows the stored size.

4. **Cached writers stop at the reserve.** A writer that opened its file
   while space was plentiful keeps the cache. When free space falls to the
   reserve (seen after a WRITE, FALLOCATE, COPY_FILE_RANGE or at an open),
   the attributes of every file such a writer holds are invalidated
   (NOTIFY_INVAL_INODE, attributes only), at once, by the reader itself:
   an invalidation of attributes only touches no page, so the kernel sends
   nothing before it returns, and queued for the notifier thread it came
   late under load (the writer went on filling the reserve meanwhile).
   Its next write(2) then asks GETATTR with its handle first
   (fuse_cache_write_iter), and while free space is still at the reserve
   that GETATTR is answered ENOSPC: the write(2) fails, as on tmpfs, and
   everything it wrote before fits in the reserve. Native handles carry
   FH_CACHED_WRITER for this. A GETATTR without the handle (a stat) is
   answered valid for no time, so that the writer asks again.

What this does not give (why writeback_cache is off by default):
- a cached writer gets ENOSPC up to the reserve (32 MiB, or a quarter of a
  small size=) before the mount is full, where tmpfs fills it to the byte
  (tests/mounted/test_semantics.py, test_enospc_at_size_keeps_existing_files,
  counts the bytes and fails with fuse_on=writeback_cache for that reason);
  fstat(2) of such a handle then says ENOSPC too;
- writers that opened near full (rule 2) may still use the reserve itself,
  and a single write(2) longer than half the reserve may be under way when
  free space falls to it, so a cached writer's last dirty pages can then
  fail at writeback: that is reported at fsync and close (rule 3), not
  lost silently.

Threading: `near_full()`, `check_space()`, `refuse_cached_write()`, the
cached-writer counts and `writeback_failed()` run in the reader with
the global lock held; `check_space()` writes its attribute-only
notifications there. The notifier thread never takes the lock and only
writes the notifications that drop pages to /dev/fuse (one write(2) each,
atomic as the reader's answers are).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from typing import Any, Callable, Optional

from . import bdi
from . import wire as w

log = logging.getLogger(__name__)

#: The kernel's dirty bytes for the mount, and the free space held back for
#: them. The kernel's default for a FUSE bdi here is 48 MB (max_ratio 1%).
#: 32 MiB is 80 ms of the daemon's 1 MiB sequential WRITEs (~400 MB/s):
#: more buys a writer little, and it is space a full mount cannot use
#: through cached opens.
RESERVE_BYTES = 32 << 20
#: A small mount keeps at most this share of size= as the reserve.
RESERVE_SHARE = 4
#: The kernel's dirty bound is the reserve divided by this (rule 1); the
#: rest covers what it takes before a cached writer stops.
DIRTY_SHARE = 2


class WritebackGuard:
    """The reserve and the failed-writeback notifications of one mount."""

    def __init__(self, fd: int, free_bytes: Callable[[], int], size_limit: int) -> None:
        self.fd = fd
        self.free_bytes = free_bytes    # the core's free space (statfs), lock held
        self.reserve = RESERVE_BYTES if not size_limit else \
            min(RESERVE_BYTES, max(1 << 20, size_limit // RESERVE_SHARE))
        self.bdi_max_bytes = 0          # what the kernel took; 0: not set
        # Protected by the global lock (the reader's handlers):
        self.direct_opens = 0           # opens answered FOPEN_DIRECT_IO (near full)
        #: Free space was at or below the reserve when last looked at (rule 4).
        self.tight = False
        self.tight_events = 0           # times free space fell to the reserve
        #: Inode -> open handles writing through the cache (rule 4).
        self.cached_writers: dict[int, int] = {}
        self.refused_writes = 0         # cached writers' GETATTRs answered ENOSPC
        self.failed_writebacks = 0      # WRITE_CACHE requests answered with an error
        self.notifications = 0          # NOTIFY_INVAL_INODE sent or queued
        # Written by the notifier thread, and by the reader for rule 4's
        # notifications; read by stats. Both failing at once can lose one
        # increment of a count that is meant to stay 0.
        self.notify_errors = 0
        self._queue: queue.SimpleQueue[Optional[tuple[int, int]]] = queue.SimpleQueue()
        #: Inodes queued and not yet sent: added by the reader, removed by the
        #: notifier just before it sends (set.add/discard are atomic under
        #: the GIL). A full mount fails a WRITE per dirty MiB; this keeps it
        #: to one notification per inode at a time.
        self._pending: set[tuple[int, int]] = set()
        self._thread: Optional[threading.Thread] = None

    def start(self, device: Optional[str]) -> None:
        self.bdi_max_bytes = bdi.set_dirty_limit(device, self.reserve // DIRTY_SHARE)
        # The kernel may take a little more than asked (its ratio's rounding),
        # and a user mount keeps the kernel's bound (47.8 MB here): whatever
        # the kernel may hold dirty, and as much again, must fit in the
        # reserve (rule 1).
        self.reserve = max(self.reserve, self.bdi_max_bytes * DIRTY_SHARE)
        self._thread = threading.Thread(target=self._notifier, name="cctmpfs-notify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)
            self._thread = None

    # ---- in the reader, under the global lock -----------------------------------
    def near_full(self) -> bool:
        """True once free space is down to the reserve: open uncached."""
        if not self.check_space():
            return False
        self.direct_opens += 1
        return True

    def check_space(self) -> bool:
        """Whether free space is down to the reserve. When it has just come
        down to it, every file a cached writer holds has its attributes
        invalidated, so its next write(2) asks GETATTR (rule 4). 0.7 us."""
        tight = self.free_bytes() <= self.reserve
        if tight and not self.tight:
            self.tight_events += 1
            log.info("free space down to the writeback reserve (%d bytes): %d cached "
                     "writers stop", self.reserve, len(self.cached_writers))
            for ino in self.cached_writers:
                self._send_inval(ino, -1)
                self.notifications += 1
        self.tight = tight
        return tight

    def refuse_cached_write(self) -> bool:
        """A cached writer's GETATTR (its handle given): ENOSPC while free
        space is still at the reserve."""
        if not self.check_space():
            return False
        self.refused_writes += 1
        return True

    def cached_writer_opened(self, ino: int) -> None:
        self.cached_writers[ino] = self.cached_writers.get(ino, 0) + 1

    def cached_writer_closed(self, ino: int) -> None:
        left = self.cached_writers.get(ino, 0) - 1
        if left > 0:
            self.cached_writers[ino] = left
        else:
            self.cached_writers.pop(ino, None)

    def writeback_failed(self, ino: int, err: int) -> None:
        """A WRITE of cached pages failed: the kernel reports it at fsync and
        close; drop its pages of the file so reads show what is stored."""
        self.failed_writebacks += 1
        if err == errno.ENOSPC:
            log.warning("writeback of inode %d failed: no space (reported at fsync/close)", ino)
        self._queue_notification(ino, 0)

    def _queue_notification(self, ino: int, offset: int) -> None:
        """NOTIFY_INVAL_INODE of ino from offset to the end: from 0, the
        attributes and every cached page; -1: the attributes only."""
        key = (ino, offset)
        if key in self._pending:
            return      # one queued notification covers every failure until it is sent
        self._pending.add(key)
        self.notifications += 1
        self._queue.put(key)

    def info(self) -> dict[str, Any]:
        return {"reserve_bytes": self.reserve, "bdi_max_bytes": self.bdi_max_bytes,
                "direct_io_opens": self.direct_opens,
                "failed_writebacks": self.failed_writebacks,
                "reserve_reached": self.tight_events,
                "cached_writers": sum(self.cached_writers.values()),
                "refused_cached_writes": self.refused_writes,
                "inval_notifications": self.notifications,
                "notify_errors": self.notify_errors}

    # ---- the notifier thread ------------------------------------------------------
    def _notifier(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            self._pending.discard(key)
            self._send_inval(*key)

    def _send_inval(self, ino: int, offset: int) -> None:
        """Write one NOTIFY_INVAL_INODE of ino from offset to the end of the
        file (length 0). From the reader only with offset -1 (rule 4)."""
        err = w.notify_inval_inode(self.fd, ino, offset)
        if err:
            self.notify_errors += 1
            log.error("NOTIFY_INVAL_INODE of %d refused: %s", ino, os.strerror(err))
