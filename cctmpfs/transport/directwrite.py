"""Write-only opens past the page cache (transport=native, wronly=direct; off by default).

Without the writeback cache the kernel sends write(2) through the page cache
page by page, and ends a WRITE request at a page it does not hold whole
(fuse_fill_write_pages stops at a partial folio that is not up to date): tar's
10 KiB records reached the daemon as 6.8 WRITEs per file of the stdlib, and the
first write of each file asked GETXATTR(security.capability) too (the inode's
S_NOSEC is cleared by every attribute reply). A descriptor opened O_WRONLY
cannot be read or mmapped, so answering its OPEN with FOPEN_DIRECT_IO changes
only the path of its bytes: each write(2) reaches the daemon whole (up to
max_write), with no GETXATTR (the daemon clears privileges itself,
HANDLE_KILLPRIV_V2), and the kernel drops the cached pages a direct write
covers, so readers through other descriptors, and their mappings, stay
coherent (tests/mounted/test_native_flags.py checks them against tmpfs).
FOPEN_KEEP_CACHE goes with it: without it every such open would drop the
file's cached pages.

What the direct path alone loses: on tmpfs a file just written is read back
from memory (a build: the compiler writes an object, the linker reads it),
but direct writes leave nothing in the page cache. Measured in stop 25
without what follows: 3,000 16 KiB files read back in 0.54-0.72 s against
0.18-0.27 s, a 256 MiB file in 0.62-0.80 s against 0.04 s. So at the last
close of a file written this way, what was written goes into the page cache
with FUSE_NOTIFY_STORE (DirectWriters.store). Reads then come from memory,
but the kernel's filling of the pages, which cached writes do inside
write(2), lands on the path of the next reader: 0.19 s against 0.048 for a
256 MiB file read right after it was written. So this is an option, not the
default (options.DEFAULT_WRONLY; docs/profiling.md, stop 26).

Why the store is safe there: it is written by the reader thread while it
serves that RELEASE, so no other request of the mount is being served, and
only when the file has no open handle left. Every READ and WRITE carries a
handle, and the kernel sends RELEASE after a handle's last request was
answered, so no request of this file is in flight: none holds a page the
store must lock (the kernel locks each page it stores into; a page held by a
request waiting for this thread would deadlock), and no write can land
between the data read here and the pages written (stale pages). An OPEN the
kernel sends meanwhile waits in /dev/fuse until the store is done.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

from ..blockmap import PAGE
from ..errors import FsError
from . import wire as w

if TYPE_CHECKING:
    from ..namespace import Filesystem

log = logging.getLogger(__name__)

#: The handle bit of an open answered FOPEN_DIRECT_IO for a writer: its
#: WRITEs drop security.capability, which the kernel's direct path leaves
#: to the daemon (native.Server.write). Below FH_CACHED_WRITER.
FH_DIRECT_WRITER = 1 << 62

#: The store goes in aligned pieces of at most this size, one writev(2)
#: each, of whole pages (the kernel marks a page up to date only when the
#: store covers it, or ends at the end of the file). A piece spans whole
#: blocks of every block size (1 MiB at most), so one that is all hole is
#: skipped, not stored as zeros.
STORE_CHUNK = 1 << 20

#: At most this much of a file goes into the page cache at its close (the
#: first bytes written: a reader starts there, and its read-ahead fetches
#: the rest).
#: The reader thread serves nothing else while it stores: a 256 MiB file
#: took 0.09-0.12 s, most of it the kernel's, filling 65,536 pages (as long
#: with every block still uncompressed as with all of them to decode).
STORE_MAX = 256 << 20


class DirectWriters:
    """Stores what direct writers wrote into the page cache at the file's
    last close, and counts what it did for `stats` (transport.direct_writers)."""

    def __init__(self, fd: int, fs: "Filesystem") -> None:
        self.fd = fd
        self.fs = fs
        self.opens = 0              # opens answered FOPEN_DIRECT_IO
        self.stores = 0             # files stored at their last close
        self.stored_bytes = 0       # bytes written into the page cache
        self.skipped_bytes = 0      # written, not stored: on the backing device, or past STORE_MAX
        self.refused = 0            # stores the kernel refused (other than ENOENT)
        #: Files written through a direct handle since they were last stored,
        #: with the span written, [first byte, end). Only that span is stored:
        #: `echo >> log` must not put the whole log into the page cache at
        #: each close, nor `cp` (copy_file_range, no WRITE) the copy. The last
        #: close of any handle of the file stores it and drops its entry, so
        #: only open files are in it.
        self.written: dict[int, list[int]] = {}
        self._refusals_logged: set[int] = set()     # errnos of refused stores already logged

    def wrote(self, ino: int, off: int, end: int) -> None:
        """A direct handle of file ino wrote bytes off to end."""
        span = self.written.get(ino)
        if span is None:
            self.written[ino] = [off, end]
            return
        if off < span[0]:
            span[0] = off
        if end > span[1]:
            span[1] = end

    def store(self, ino: int) -> None:
        """Put the span direct handles wrote of file ino, just closed by its
        last handle, into the kernel's page cache, from RAM: whole pages (or
        up to the end of the file), in STORE_CHUNK pieces, skipping pieces
        that are holes, up to STORE_MAX. The caller checked that no handle of
        it is open (see the module's note). A file without a name is not
        stored: nothing can open it again. Releases the global lock
        (decoding)."""
        span = self.written.pop(ino)
        fs = self.fs
        node = fs.inodes.get(ino)
        if node is None or node.nlink == 0 or node.data is None:
            return
        f = node.data
        engine = fs.engine
        lo = span[0] - span[0] % PAGE
        hi = min(-(-span[1] // PAGE) * PAGE, f.size)    # a truncate may have cut it
        per_chunk = STORE_CHUNK // engine.bs
        mapped = {idx // per_chunk for idx in f.indexes()}
        budget = STORE_MAX
        stored = 0
        for chunk in range(lo // STORE_CHUNK, -(-hi // STORE_CHUNK)):
            if chunk not in mapped:
                continue    # a hole: the kernel reads zeros of it cheaply enough
            off = max(lo, chunk * STORE_CHUNK)
            size = min(hi, (chunk + 1) * STORE_CHUNK) - off
            if size > budget or not engine.in_ram(f, off // engine.bs, (off + size - 1) // engine.bs):
                self.skipped_bytes += size
                continue
            # Releases the lock while decoding; only the sealer runs then,
            # and it changes no file's contents or size (requests are served
            # by this thread alone).
            try:
                pieces = engine.read_pieces(f, off, size)
            except FsError as e:    # a block that fails to decode: readers get the error
                log.warning("storing file %d into the page cache: %s", ino, e)
                self.skipped_bytes += size
                continue
            err = w.notify_store(self.fd, ino, off, pieces, sum(map(len, pieces)))
            if err:
                if err != errno.ENOENT:     # ENOENT: the kernel forgot the inode
                    self.refused += 1
                    # Once per errno: under memory pressure every close could refuse.
                    level = logging.DEBUG if err in self._refusals_logged else logging.WARNING
                    self._refusals_logged.add(err)
                    log.log(level, "storing file %d into the page cache: %s (counted in "
                            "transport.direct_writers.refused)", ino, errno.errorcode.get(err, err))
                return
            budget -= size
            stored += size
        if stored:
            self.stores += 1
            self.stored_bytes += stored

    def info(self) -> dict[str, Any]:
        return {"opens": self.opens, "stores": self.stores, "stored_bytes": self.stored_bytes,
                "skipped_bytes": self.skipped_bytes, "refused": self.refused}
