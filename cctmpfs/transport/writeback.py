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
   gets `max_bytes` = the reserve and `strict_limit` on, so the kernel
   never holds more unwritten bytes for this mount than the reserve
   (a writer past it waits in balance_dirty_pages until WRITEs are
   answered).
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

What this does not give (why writeback_cache is off by default): a writer
that opened its file while space was plentiful keeps the cache, so past
full its write(2)s still succeed and it learns of ENOSPC only at fsync or
close. tmpfs fails the write(2) itself; a `cat /dev/zero > f` would run on
here (tests/mounted/test_semantics.py, test_enospc_at_size_keeps_existing_files,
fails with fuse_on=writeback_cache for that reason).

Threading: `near_full()` and `writeback_failed()` run in the reader with
the global lock held; the notifier thread never takes the lock and only
writes notifications to /dev/fuse (one writev(2) each, atomic as the
reader's answers are).
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
        self.failed_writebacks = 0      # WRITE_CACHE requests answered with an error
        self.notifications = 0          # NOTIFY_INVAL_INODE queued
        # Written by the notifier thread only; read by stats (an int: atomic).
        self.notify_errors = 0
        self._queue: queue.SimpleQueue[Optional[int]] = queue.SimpleQueue()
        #: Inodes queued and not yet sent: added by the reader, removed by the
        #: notifier just before it sends (set.add/discard are atomic under
        #: the GIL). A full mount fails a WRITE per dirty MiB; this keeps it
        #: to one notification per inode at a time.
        self._pending: set[int] = set()
        self._thread: Optional[threading.Thread] = None

    def start(self, device: Optional[str]) -> None:
        self.bdi_max_bytes = bdi.set_dirty_limit(device, self.reserve)
        # The kernel may take a little more than asked (its ratio's rounding).
        self.reserve = max(self.reserve, self.bdi_max_bytes)
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
        if self.free_bytes() > self.reserve:
            return False
        self.direct_opens += 1
        return True

    def writeback_failed(self, ino: int, err: int) -> None:
        """A WRITE of cached pages failed: the kernel reports it at fsync and
        close; drop its pages of the file so reads show what is stored."""
        self.failed_writebacks += 1
        if err == errno.ENOSPC:
            log.warning("writeback of inode %d failed: no space (reported at fsync/close)", ino)
        if ino in self._pending:
            return      # one queued notification covers every failure until it is sent
        self._pending.add(ino)
        self.notifications += 1
        self._queue.put(ino)

    def info(self) -> dict[str, Any]:
        return {"reserve_bytes": self.reserve, "bdi_max_bytes": self.bdi_max_bytes,
                "direct_io_opens": self.direct_opens,
                "failed_writebacks": self.failed_writebacks,
                "inval_notifications": self.notifications,
                "notify_errors": self.notify_errors}

    # ---- the notifier thread ------------------------------------------------------
    def _notifier(self) -> None:
        body_len = w.OUT_HEADER.size + w.NOTIFY_INVAL_INODE_OUT.size
        while True:
            ino = self._queue.get()
            if ino is None:
                return
            self._pending.discard(ino)
            # offset 0, length 0: the attributes and every cached page.
            msg = w.OUT_HEADER.pack(body_len, w.NOTIFY_INVAL_INODE, 0) + \
                w.NOTIFY_INVAL_INODE_OUT.pack(ino, 0, 0)
            try:
                os.write(self.fd, msg)
            except OSError as e:
                # ENOENT: the kernel no longer knows the inode; ENODEV: unmounted.
                if e.errno not in (errno.ENOENT, errno.ENODEV):
                    self.notify_errors += 1
                    log.error("NOTIFY_INVAL_INODE of %d refused: %s", ino, e.strerror)
