"""What every transport shares: the error boundary, attributes, control
xattrs and request counters, over one core (namespace.Filesystem).

A binding (llfuse_ops.py, native.py) only decodes requests, calls the core
or this class, and encodes answers. Everything here is independent of how
requests arrive, so the two bindings answer alike by construction:

* **The error boundary** (`errno_for`): FsError becomes its errno, once;
  any other exception is a bug, logged with its traceback, counted in
  `internal_errors` and answered EIO. A binding never lets an exception end
  its loop.
* **Attributes** (`attributes`): the stat fields of an Inode, in one order.
* **Control xattrs**: trusted.cctmpfs.stats, stats-settled and check on the
  root, trusted.cctmpfs.blocks on any regular file; read-only, never listed.
* **Request counters** by request name (`requests`), and the stats report
  with what the binding says about itself (`transport_info`).

Threading: every method runs with the global lock held, as the core's do.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
from typing import Any, Callable, Optional

from .. import check as check_mod
from .. import stats as stats_mod
from ..errors import FsError
from ..namespace import ROOT_INO, SECURITY_CAPABILITY, Filesystem, Inode

log = logging.getLogger(__name__)

#: Kernel caches of entries and attributes. Every change goes through this
#: kernel, which updates or invalidates its cache itself, so a long timeout
#: (llfuse's default, 300 s) is safe and saves a GETATTR per stat.
CACHE_TIMEOUT = 300

#: The answer to FLUSH (every close(2)), FSYNC and FSYNCDIR: the protocol's
#: "not implemented". There is nothing to do (volatile, as tmpfs), and on
#: ENOSYS the kernel never sends that opcode again on the connection
#: (fc->no_flush, no_fsync, no_fsyncdir): close(2) and fsync(2) then return 0
#: without a round trip. The kernel still writes a file's cached pages back
#: first and reports their errors there (writeback.py, rule 3). An
#: open-read-close of a small file took 45.9 us against 72.3 with FLUSH
#: answered (native, medians of 7 interleaved rounds of 20,000).
NOT_NEEDED = errno.ENOSYS

#: Read-only control names on the root directory, visible to root only (the
#: kernel allows trusted.* to CAP_SYS_ADMIN alone) and never listed.
XATTR_STATS = b"trusted.cctmpfs.stats"            # stats JSON
XATTR_STATS_SETTLED = b"trusted.cctmpfs.stats-settled"  # seal all dirty blocks, then stats
XATTR_CHECK = b"trusted.cctmpfs.check"            # invariant checker report JSON (check.py)
CONTROL_XATTRS = (XATTR_STATS, XATTR_STATS_SETTLED, XATTR_CHECK)
#: On any regular file: where its blocks are (for diagnosis and the device
#: fault tests), JSON [[index, state, segment or null, offset, length], ...].
XATTR_BLOCKS = b"trusted.cctmpfs.blocks"
#: Violations listed in one check report; an xattr value is at most 64 KiB.
CHECK_REPORT_LIMIT = 100
#: The kernel asks for security.capability (namespace.SECURITY_CAPABILITY)
#: before every write(2) once getxattr exists (without HANDLE_KILLPRIV_V2):
#: answered on the cheapest path there is.
#: setxattr(2) flags (linux/xattr.h).
XATTR_CREATE = 1
XATTR_REPLACE = 2


def short_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Request arguments for a log line: long buffers as their length."""
    return tuple(f"<{len(a)} bytes>" if isinstance(a, (bytes, bytearray, memoryview)) and len(a) > 64
                 else a for a in args)


class Frontend:
    """The binding-independent half of every request. Protected by the global lock."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        self.block_size = fs.block_size
        self.clock = fs.clock
        # Both protected by the global lock: handlers run holding it, and the
        # sealer calls count_internal_error() holding it.
        self.internal_errors = 0   # handler exceptions other than FsError, answered EIO
        #: The daemon's RSS once mounted, before any file (stats' memory
        #: breakdown); the daemon sets it.
        self.runtime_rss: Optional[int] = None
        #: Requests by name ("lookup", "write", ...), counted by the binding.
        self.requests: collections.Counter[str] = collections.Counter()
        #: More request counts, by name, that the binding keeps its own way.
        self.request_counts: Callable[[], dict[str, int]] = dict
        #: What the binding says about itself in stats: {"name": ..., ...}.
        self.transport_info: Callable[[], dict[str, Any]] = dict
        #: True while a background thread of the daemon (the sealer in a
        #: pass) has CPU work: the native reader does not spin then, since a
        #: spinning reader would take the CPU and the GIL it needs
        #: (transport/spin.py). The daemon sets it; read without the lock.
        self.background_busy: Callable[[], bool] = lambda: False
        #: Figures of other parts of the daemon (the sealer's), merged into stats.
        self.extra_stats: Callable[[], dict[str, Any]] = dict
        #: pymalloc's room without objects since the mount (the daemon sets
        #: pools.PoolTrimmer.free_room): memory.pymalloc_free_bytes.
        self.pymalloc_free: Callable[[], int] = int

    # ---- the error boundary ----------------------------------------------
    def errno_for(self, exc: BaseException, where: str, args: tuple[Any, ...] = ()) -> int:
        """The errno that answers a request that raised exc. FsError is an
        answer; anything else is a bug: logged, counted, answered EIO."""
        if isinstance(exc, FsError):
            return exc.errno
        self.internal_errors += 1
        log.error("internal error in %s%r", where, short_args(args), exc_info=exc)
        return errno.EIO

    def count_internal_error(self) -> None:
        self.internal_errors += 1

    # ---- attributes ------------------------------------------------------
    def attributes(self, node: Inode) -> tuple[int, int, int, int, int, int, int, int, int, int, int, int]:
        """(ino, size, blocks in 512-byte units, atime_ns, mtime_ns, ctime_ns,
        mode, nlink, uid, gid, rdev, blksize): every stat field a binding
        sends. Runs for every LOOKUP, CREATE, GETATTR and SETATTR."""
        data = node.data
        if data is not None:
            # Inode.size and .blocks_512, without two property calls.
            size = data.size
            blocks = data.alloc_bytes // 512
        else:
            size = node.size
            blocks = 0
        # The kernel may show these times to stat() callers: a change in the
        # same tick gets a fine stamp (clock.py, multigrain).
        if self.clock.fine:
            self.clock.shown(node.ino, node.ctime_ns)
        # cp and friends size their buffers from st_blksize: report the block.
        return (node.ino, size, blocks, node.atime_ns, node.mtime_ns, node.ctime_ns,
                node.mode, node.nlink, node.uid, node.gid, node.rdev, self.block_size)

    # ---- stats and check -------------------------------------------------
    def stats(self, settle: bool = False) -> dict[str, Any]:
        """Releases the global lock when settle is set."""
        if settle:
            self.fs.engine.seal_everything()
        requests = collections.Counter(self.requests)
        requests.update(self.request_counts())
        return stats_mod.collect(self.fs, self.runtime_rss, self.pymalloc_free(),
                                 internal_errors=self.internal_errors,
                                 requests=dict(sorted(requests.items())),
                                 transport=self._transport(), **self.extra_stats())

    def _transport(self) -> dict[str, Any]:
        """What the binding says about itself, and which timestamps the core
        gives under it (clock.py: fine ones where the daemon stamps every
        "now" itself)."""
        return {**self.transport_info(),
                "timestamps": "multigrain" if self.clock.fine else "coarse"}

    def check(self) -> dict[str, Any]:
        """The invariant checker's report: its version, the number of
        violations and the first CHECK_REPORT_LIMIT of them. Never releases the lock."""
        violations = check_mod.check_all(self.fs)
        return {"version": check_mod.CHECK_VERSION, "count": len(violations),
                "violations": violations[:CHECK_REPORT_LIMIT]}

    # ---- extended attributes, with the control names ------------------------
    def capability_absent(self, ino: int, name: bytes) -> bool:
        """True if name is security.capability and ino has no xattrs at all:
        the question the kernel asks before every write(2), answered ENODATA
        with two dict lookups, before anything else."""
        if name != SECURITY_CAPABILITY:
            return False
        return ino not in self.fs.xattrs and ino in self.fs.inodes

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """Releases the global lock for stats-settled."""
        if name == XATTR_BLOCKS:
            node = self.fs.get(ino)
            if node.data is None:
                raise FsError(errno.ENODATA)
            return json.dumps(self.fs.engine.describe(node.data)[:2000]).encode()
        if ino == ROOT_INO and name in CONTROL_XATTRS:
            if name == XATTR_CHECK:
                return json.dumps(self.check()).encode()
            return json.dumps(self.stats(settle=name == XATTR_STATS_SETTLED)).encode()
        return self.fs.getxattr(ino, name)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        """flags: XATTR_CREATE (EEXIST if it exists) or XATTR_REPLACE
        (ENODATA if it does not), checked as llfuse checks them, by a lookup."""
        if (ino == ROOT_INO and name in CONTROL_XATTRS) or name == XATTR_BLOCKS:
            raise FsError(errno.EPERM, "control xattrs are read-only")
        if flags & XATTR_CREATE:
            try:
                self.fs.getxattr(ino, name)
            except FsError as e:
                if e.errno != errno.ENODATA:
                    raise
            else:
                raise FsError(errno.EEXIST)
        elif flags & XATTR_REPLACE:
            self.fs.getxattr(ino, name)
        self.fs.setxattr(ino, name, value)

    def listxattr(self, ino: int) -> list[bytes]:
        return self.fs.listxattr(ino)

    def removexattr(self, ino: int, name: bytes) -> None:
        if ino == ROOT_INO and name in CONTROL_XATTRS:
            raise FsError(errno.EPERM, "control xattrs are read-only")
        self.fs.removexattr(ino, name)
