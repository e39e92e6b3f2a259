"""The llfuse binding (transport=llfuse): llfuse 1.5 on libfuse 2.9.

This is the only module that speaks llfuse. Its handlers decode llfuse's
arguments, call the core or the shared Frontend, and encode the answer;
errors are mapped by the Frontend's boundary and raised as FUSEError, the
only exception llfuse survives (any other ends its main loop, and /tmp
with it).

Threading: llfuse calls every handler with `llfuse.lock` held; that lock is
the core's global lock. Handlers that read or write file data may release it
inside the core (see cctmpfs/locking.py). `workers=` handler threads.
"""

from __future__ import annotations

import errno
import functools
import logging
from typing import Any, Callable, Iterator, TypeVar

import llfuse
from llfuse import FUSEError

from ..namespace import Caller, Inode
from ..options import DEFAULT_FUSE_FLAGS, MountOptions
from .frontend import CACHE_TIMEOUT, NOT_NEEDED, Frontend
from .mounting import (BY_FUSERMOUNT, BY_MOUNT, MountError, check_user_allow_other,
                       escape_name_option, use_fusermount)

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def boundary(fn: F) -> F:
    """Count the request; raise the Frontend's errno for any exception as FUSEError."""

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
        except Exception as e:
            raise FUSEError(self.frontend.errno_for(e, fn.__name__, args)) from None

    return wrapper  # type: ignore[return-value]


def _caller(ctx: Any) -> Caller:
    return Caller(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid)


class Operations(llfuse.Operations):
    def __init__(self, frontend: Frontend) -> None:
        super().__init__()
        self.frontend = frontend
        self.fs = frontend.fs
        self.requests = frontend.requests
        # Bound once: these run for most requests (bytecodes count here).
        self._attributes = frontend.attributes
        self._capability_absent = frontend.capability_absent
        #: The answer to a LOOKUP of a missing name: inode 0 is a negative
        #: entry, which the kernel keeps for entry_timeout, where ENOENT
        #: would be asked again on every stat() or open() of that name. Every
        #: create, mknod, link and rename goes through this kernel, which
        #: replaces the negative dentry itself, as it updates positive ones.
        self._negative_entry = llfuse.EntryAttributes()
        self._negative_entry.st_ino = 0
        self._negative_entry.entry_timeout = CACHE_TIMEOUT

    def _entry(self, node: Inode) -> llfuse.EntryAttributes:
        e = llfuse.EntryAttributes()
        (e.st_ino, e.st_size, e.st_blocks, e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns,
         e.st_mode, e.st_nlink, e.st_uid, e.st_gid, e.st_rdev,
         e.st_blksize) = self._attributes(node)
        e.generation = 0
        e.entry_timeout = CACHE_TIMEOUT
        e.attr_timeout = CACHE_TIMEOUT
        return e

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
            except Exception as e:
                self.frontend.errno_for(e, "forget", (ino, n))

    @boundary
    def getattr(self, inode: int, ctx: Any = None) -> llfuse.EntryAttributes:
        return self._entry(self.fs.getattr(inode))

    @boundary
    def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> llfuse.EntryAttributes:
        # llfuse 1.5 hides FATTR_ATIME_NOW/MTIME_NOW: "now" arrives as the
        # kernel's time, which the core's clock takes in (clock.py).
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
        raise FUSEError(NOT_NEEDED)

    @boundary
    def release(self, fh: int) -> None:
        self.fs.release(fh)

    @boundary
    def fsync(self, fh: int, datasync: bool) -> None:
        raise FUSEError(NOT_NEEDED)

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
        except Exception as e:
            raise FUSEError(self.frontend.errno_for(e, "readdir", (fh, off))) from None

    @boundary
    def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @boundary
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        raise FUSEError(NOT_NEEDED)

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
        if self._capability_absent(inode, name):
            # Asked before every write(2): answered here, outside the error
            # boundary, whose extra frame and re-raise double the cost of this
            # request (0.57 against 1.0 us in a loop). capability_absent()
            # cannot raise: a dict lookup and an attribute read.
            self.requests["getxattr"] += 1
            raise FUSEError(errno.ENODATA)
        return self._getxattr(inode, name)

    @boundary
    def _getxattr(self, inode: int, name: bytes) -> bytes:
        return self.frontend.getxattr(inode, name)

    @boundary
    def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        # llfuse checks XATTR_CREATE/XATTR_REPLACE itself, through getxattr().
        self.frontend.setxattr(inode, name, value)

    @boundary
    def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return self.frontend.listxattr(inode)

    @boundary
    def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self.frontend.removexattr(inode, name)


class LlfuseSession:
    """One mount through llfuse: mount, serve until unmounted, close."""

    name = "llfuse"
    #: The global lock: llfuse holds it while any handler runs.
    lock = llfuse.lock

    def __init__(self) -> None:
        self._mounted = False

    def mount(self, frontend: Frontend, source: str, mountpoint: str, opts: MountOptions) -> None:
        # libfuse 2.9 chooses as the native transport does: mount(2) as
        # root, fusermount for a user or auto_unmount (and, unseen here, after
        # an EPERM from mount(2)).
        by = BY_FUSERMOUNT if use_fusermount(opts.fuse_options) else BY_MOUNT
        frontend.transport_info = lambda: {"name": self.name, "libfuse": "2.9",
                                           "workers": opts.workers, "mounted_by": by,
                                           "auto_unmount": "auto_unmount" in opts.fuse_options}
        if opts.fuse_flags != DEFAULT_FUSE_FLAGS:
            # Accepted, as workers= is under native: one fstab line can switch
            # transport= alone. libfuse 2.9 negotiates its own INIT flags.
            log.info("fuse_off=/fuse_on= apply to transport=native only: ignored")
        check_user_allow_other(opts.fuse_options)
        ops = Operations(frontend)
        try:
            llfuse.init(ops, mountpoint, [escape_name_option(o) for o in opts.fuse_options])
        except Exception as e:  # noqa: BLE001 - reported to the user, nothing is mounted
            raise MountError(f"mounting {mountpoint} failed: {e}") from None
        self._mounted = True
        self._workers = opts.workers

    def serve(self) -> None:
        """Until unmounted (umount, fusermount -u) or SIGTERM/SIGINT/SIGHUP,
        which llfuse turns into the end of its main loop."""
        llfuse.main(workers=self._workers)

    def close(self) -> None:
        if self._mounted:
            self._mounted = False
            llfuse.close(unmount=True)
