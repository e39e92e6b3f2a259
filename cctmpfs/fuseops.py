"""The llfuse adapter: FUSE requests in, core calls, attributes or errnos out.

This is the only module (with daemon.py) that speaks llfuse. Errors are
mapped here, once: FsError becomes FUSEError(errno); anything else is a bug,
logged with its traceback, counted in `internal_errors`, and answered EIO.
No exception other than FUSEError ever reaches llfuse, because llfuse ends
its main loop (and /tmp with it) on one.

Threading: llfuse calls every handler with `llfuse.lock` held; that lock is
the core's global lock. Handlers that read or write file data may release it
inside the core (see cctmpfs/locking.py).
"""

from __future__ import annotations

import collections
import errno
import functools
import json
import logging
from typing import Any, Callable, Iterator, Optional, TypeVar

import llfuse
from llfuse import FUSEError

from . import check as check_mod
from . import stats as stats_mod
from .errors import FsError
from .namespace import Caller, Filesystem, Inode

log = logging.getLogger(__name__)

#: Kernel caches of entries and attributes. Every change goes through this
#: kernel, which updates or invalidates its cache itself, so the long llfuse
#: default (300 s) is safe and saves a GETATTR per stat.
CACHE_TIMEOUT = 300.0

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
#: The kernel asks for this before every write(2) once getxattr exists.
SECURITY_CAPABILITY = b"security.capability"

F = TypeVar("F", bound=Callable[..., Any])


def boundary(fn: F) -> F:
    """Map FsError to FUSEError and any other exception to a logged EIO."""

    # Requests are counted by handler name; "_getxattr" counts as getxattr
    # (its public handler answers the commonest request before calling it).
    name = fn.__name__.removeprefix("_")

    @functools.wraps(fn)
    def wrapper(self: "Operations", *args: Any) -> Any:
        self.requests[name] += 1
        try:
            return fn(self, *args)
        except FUSEError:
            raise
        except FsError as e:
            raise FUSEError(e.errno) from None
        except Exception:
            self.internal_errors += 1
            log.exception("internal error in %s%r", fn.__name__, _short(args))
            raise FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _short(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(f"<{len(a)} bytes>" if isinstance(a, (bytes, bytearray)) and len(a) > 64 else a
                 for a in args)


def _caller(ctx: Any) -> Caller:
    return Caller(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid)


class Operations(llfuse.Operations):
    def __init__(self, fs: Filesystem) -> None:
        super().__init__()
        self.fs = fs
        self.block_size = fs.block_size
        # Both protected by the global lock: handlers run holding it, and the
        # sealer calls count_internal_error() holding it.
        self.internal_errors = 0   # handler exceptions other than FsError, answered EIO
        self.requests: collections.Counter[str] = collections.Counter()  # FUSE requests by handler
        self.extra_stats: Callable[[], dict[str, Any]] = dict
        #: The daemon's RSS once mounted, before any file (stats' memory
        #: breakdown); the daemon sets it.
        self.runtime_rss: Optional[int] = None
        #: The answer to a LOOKUP of a missing name: inode 0 is a negative
        #: entry, which the kernel keeps for entry_timeout, where ENOENT
        #: would be asked again on every stat() or open() of that name. Every
        #: create, mknod, link and rename goes through this kernel, which
        #: replaces the negative dentry itself, as it updates positive ones.
        self._negative_entry = llfuse.EntryAttributes()
        self._negative_entry.st_ino = 0
        self._negative_entry.entry_timeout = CACHE_TIMEOUT

    def count_internal_error(self) -> None:
        self.internal_errors += 1

    def _entry(self, node: Inode) -> llfuse.EntryAttributes:
        e = llfuse.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.entry_timeout = CACHE_TIMEOUT
        e.attr_timeout = CACHE_TIMEOUT
        e.st_mode = node.mode
        e.st_nlink = node.nlink
        e.st_uid = node.uid
        e.st_gid = node.gid
        e.st_rdev = node.rdev
        data = node.data
        if data is not None:
            # Inode.size and .blocks_512, without two property calls: this
            # runs for every LOOKUP, CREATE, GETATTR and SETATTR.
            e.st_size = data.size
            e.st_blocks = data.alloc_bytes // 512
        else:
            e.st_size = node.size
            e.st_blocks = 0
        # cp and friends size their buffers from st_blksize: report the block.
        e.st_blksize = self.block_size
        e.st_atime_ns = node.atime_ns
        e.st_mtime_ns = node.mtime_ns
        e.st_ctime_ns = node.ctime_ns
        return e

    def stats(self, settle: bool = False) -> dict[str, Any]:
        """Releases the global lock when settle is set."""
        if settle:
            self.fs.engine.seal_everything()
        return stats_mod.collect(self.fs, self.runtime_rss,
                                 internal_errors=self.internal_errors,
                                 requests=dict(sorted(self.requests.items())),
                                 **self.extra_stats())

    def check(self) -> dict[str, Any]:
        """The invariant checker's report: its version, the number of
        violations and the first CHECK_REPORT_LIMIT of them. Never releases the lock."""
        violations = check_mod.check_all(self.fs)
        return {"version": check_mod.CHECK_VERSION, "count": len(violations),
                "violations": violations[:CHECK_REPORT_LIMIT]}

    # ---- namespace -----------------------------------------------------
    @boundary
    def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> llfuse.EntryAttributes:
        node = self.fs.find(parent_inode, name)
        if node is None:
            return self._negative_entry
        return self._entry(node)

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        # llfuse requires forget never to raise.
        self.requests["forget"] += 1
        for ino, n in inode_list:
            try:
                self.fs.forget(ino, n)
            except Exception:
                self.internal_errors += 1
                log.exception("internal error in forget(%d, %d)", ino, n)

    @boundary
    def getattr(self, inode: int, ctx: Any = None) -> llfuse.EntryAttributes:
        return self._entry(self.fs.getattr(inode))

    @boundary
    def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> llfuse.EntryAttributes:
        node = self.fs.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self._entry(node)

    @boundary
    def readlink(self, inode: int, ctx: Any) -> bytes:
        return self.fs.readlink(inode)

    @boundary
    def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> llfuse.EntryAttributes:
        return self._entry(self.fs.mknod(parent_inode, name, mode, rdev, _caller(ctx)))

    @boundary
    def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> llfuse.EntryAttributes:
        return self._entry(self.fs.mkdir(parent_inode, name, mode, _caller(ctx)))

    @boundary
    def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> llfuse.EntryAttributes:
        return self._entry(self.fs.symlink(parent_inode, name, target, _caller(ctx)))

    @boundary
    def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> tuple[int, llfuse.EntryAttributes]:
        node = self.fs.create(parent_inode, name, mode, _caller(ctx))
        return node.ino, self._entry(node)

    @boundary
    def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> llfuse.EntryAttributes:
        return self._entry(self.fs.link(inode, new_parent_inode, new_name))

    @boundary
    def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.fs.unlink(parent_inode, name)

    @boundary
    def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.fs.rmdir(parent_inode, name)

    @boundary
    def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
               name_new: bytes, ctx: Any) -> None:
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new)

    # ---- file I/O --------------------------------------------------------
    @boundary
    def open(self, inode: int, flags: int, ctx: Any) -> int:
        return self.fs.open(inode)

    @boundary
    def read(self, fh: int, off: int, size: int) -> bytes:
        return self.fs.read(fh, off, size)

    @boundary
    def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.fs.write(fh, off, buf)

    @boundary
    def flush(self, fh: int) -> None:
        pass

    @boundary
    def release(self, fh: int) -> None:
        self.fs.release(fh)

    @boundary
    def fsync(self, fh: int, datasync: bool) -> None:
        pass  # volatile by design, as tmpfs: there is nothing to make durable

    # ---- directories ---------------------------------------------------
    @boundary
    def opendir(self, inode: int, ctx: Any) -> int:
        return self.fs.opendir(inode)

    def readdir(self, fh: int, off: int) -> Iterator[tuple[bytes, llfuse.EntryAttributes, int]]:
        # A generator: llfuse pulls entries until its reply buffer is full.
        self.requests["readdir"] += 1
        try:
            for name, node, next_off in self.fs.readdir(fh, off):
                # libfuse 2 has no READDIRPLUS: the kernel uses only the
                # inode number and the type, so fill nothing else.
                e = llfuse.EntryAttributes()
                e.st_ino = node.ino
                e.st_mode = node.mode
                yield name, e, next_off
        except FsError as e:
            raise FUSEError(e.errno) from None
        except Exception:
            self.internal_errors += 1
            log.exception("internal error in readdir(%d, %d)", fh, off)
            raise FUSEError(errno.EIO) from None

    @boundary
    def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @boundary
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass

    @boundary
    def statfs(self, ctx: Any) -> llfuse.StatvfsData:
        s = llfuse.StatvfsData()
        for k, v in self.fs.statfs().items():
            setattr(s, k, v)
        return s

    @boundary
    def access(self, inode: int, mode: int, ctx: Any) -> bool:
        self.fs.get(inode)
        return True  # not called under default_permissions; the kernel decides

    # ---- extended attributes -----------------------------------------------
    def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        # ctx defaults to None: llfuse 1.5 calls getxattr(inode, name) without
        # it to implement XATTR_CREATE / XATTR_REPLACE.
        if name == SECURITY_CAPABILITY:
            # Asked before every write(2): answered here, outside the error
            # boundary, whose extra frame and re-raise double the cost of this
            # request (0.57 against 1.0 us in a loop). Nothing here can raise
            # but the FUSEError: a dict lookup and an attribute read.
            node = self.fs.inodes.get(inode)
            if node is not None and node.xattrs is None:
                self.requests["getxattr"] += 1
                raise FUSEError(errno.ENODATA)
        return self._getxattr(inode, name)

    @boundary
    def _getxattr(self, inode: int, name: bytes) -> bytes:
        if name == XATTR_BLOCKS:
            node = self.fs.get(inode)
            if node.data is None:
                raise FUSEError(errno.ENODATA)
            return json.dumps(self.fs.engine.describe(node.data)[:2000]).encode()
        if inode == llfuse.ROOT_INODE and name in CONTROL_XATTRS:
            if name == XATTR_CHECK:
                return json.dumps(self.check()).encode()
            return json.dumps(self.stats(settle=name == XATTR_STATS_SETTLED)).encode()
        return self.fs.getxattr(inode, name)

    @boundary
    def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if (inode == llfuse.ROOT_INODE and name in CONTROL_XATTRS) or name == XATTR_BLOCKS:
            raise FUSEError(errno.EPERM)
        self.fs.setxattr(inode, name, value)

    @boundary
    def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return self.fs.listxattr(inode)

    @boundary
    def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        if inode == llfuse.ROOT_INODE and name in CONTROL_XATTRS:
            raise FUSEError(errno.EPERM)
        self.fs.removexattr(inode, name)
