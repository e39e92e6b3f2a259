"""The backing device: a block device or a regular file that cold compressed
blocks are evicted to (issue 4). This module opens and checks it, and does
its I/O: whole-segment writes, record reads and discards.

Pure Python with no llfuse import. Threading: its I/O methods do blocking
I/O and are called with the global lock RELEASED (docs/locking.md). So they
never touch the shared counters (Device.counters): each counts into the
tally its caller passes, a DeviceCounters of the caller's own, which the cold
store adds to the shared counters once it holds the lock again
(coldstore.Tally). Their one other write is `discard_supported`, see there.

Why O_DIRECT: evicted data must leave RAM. Buffered writes to a block device
would keep a copy in the page cache until the kernel writes it back and
reclaims it, so the RAM budget would hold only on paper. O_DIRECT needs
aligned buffers, offsets and lengths (the logical block size; 4 KiB here),
so I/O goes through page-aligned mmap buffers. A file on a filesystem
without O_DIRECT (tmpfs) falls back to buffered I/O plus
POSIX_FADV_DONTNEED after each write.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
from typing import Any, Optional

import attrs

log = logging.getLogger(__name__)

#: I/O alignment for O_DIRECT: a multiple of every logical block size in use.
ALIGN = 4096
#: ioctl numbers from <linux/fs.h>.
BLKGETSIZE64 = 0x80081272
BLKROGET = 0x125E
BLKDISCARD = 0x1277
#: fallocate(2) modes from <linux/falloc.h>.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


class DeviceError(Exception):
    """The backing device cannot be used; the message is shown to the user."""


@attrs.define(slots=True)
class DeviceCounters:
    """Device I/O counters, one comment each.

    Two kinds of instance: Device.counters, cumulative since mount and
    protected by the global lock; and tallies, the counts of one operation
    made with the lock released, owned by the thread that makes it and added
    to Device.counters under the lock (add_counts)."""

    writes: int = 0          # segment writes
    bytes_written: int = 0   # bytes written to the device
    reads: int = 0           # record reads
    bytes_read: int = 0      # bytes read from the device (aligned ranges)
    discards: int = 0        # discards done (BLKDISCARD or hole punching): one per segment, one at unmount
    io_errors: int = 0       # reads, writes or discards that failed with OSError


def add_counts(into: Any, tally: Any) -> None:
    """Add every field of tally to into, two attrs counter records of one
    class. The caller holds the lock that protects into. A cold read's
    Tally (two records) takes 2.5 us to apply here, against 50-100 us for
    the device read it counts and 25 us for decoding the block."""
    for f in attrs.fields(type(into)):
        setattr(into, f.name, getattr(into, f.name) + getattr(tally, f.name))


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Device:
    """An opened backing device. Every offset is in bytes from its start."""

    def __init__(self, path: str, fd: int, size: int, is_block: bool, direct: bool) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.is_block = is_block
        self.direct = direct
        #: Cumulative since mount. Protected by the global lock: the I/O
        #: methods below never touch it (see the module docstring).
        self.counters = DeviceCounters()
        #: False once the device refused a discard as unsupported (logged
        #: once): later discards are skipped. Written only by discard(), which
        #: one thread at a time runs (eviction.Evictor.turn).
        self.discard_supported = True

    # ---- opening ------------------------------------------------------
    @classmethod
    def open(cls, path: str, *, create_size: int = 0, min_size: int = 0) -> "Device":
        """Open and check a backing device. Raises DeviceError naming the problem.

        A block device is opened O_EXCL, which the kernel refuses (EBUSY)
        while it is mounted, in use by another exclusive holder (a RAID or
        LVM member, swap) or open by another cctmpfs. A regular file that
        does not exist is created sparse at create_size; one that exists is
        used at its size. The device must hold min_size bytes.
        """
        try:
            st: Optional[os.stat_result] = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise DeviceError(f"backing={path}: {e.strerror}") from None
        if st is None:
            if not create_size:
                raise DeviceError(f"backing={path}: does not exist "
                                  "(give backing_size= to create a file there)")
            return cls._create_file(path, create_size, min_size)
        if stat.S_ISBLK(st.st_mode):
            return cls._open_block(path, min_size)
        if stat.S_ISREG(st.st_mode):
            return cls._open_file(path, st.st_size, min_size)
        raise DeviceError(f"backing={path}: neither a block device nor a regular file")

    @classmethod
    def _open_block(cls, path: str, min_size: int) -> "Device":
        try:
            fd = os.open(path, os.O_RDWR | os.O_EXCL | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise DeviceError(f"backing={path}: in use (mounted, swap, or held by "
                                  "another program)") from None
            raise DeviceError(f"backing={path}: cannot open for writing: {e.strerror}") from None
        ro = bytearray(4)
        fcntl.ioctl(fd, BLKROGET, ro)
        if struct.unpack("<i", ro)[0]:
            # The open succeeds for root; the writes would fail later.
            os.close(fd)
            raise DeviceError(f"backing={path}: cannot open for writing: the device is read-only")
        buf = bytearray(8)
        fcntl.ioctl(fd, BLKGETSIZE64, buf)
        size = struct.unpack("<Q", buf)[0]
        return cls._checked(path, fd, size, True, True, min_size)

    @classmethod
    def _open_file(cls, path: str, size: int, min_size: int) -> "Device":
        if _loop_backed_by(path):
            raise DeviceError(f"backing={path}: in use (attached to a loop device)")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise DeviceError(f"backing={path}: cannot open for writing: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DeviceError(f"backing={path}: in use by another cctmpfs") from None
        return cls._checked(path, fd, size, False, _try_direct(fd), min_size)

    @classmethod
    def _create_file(cls, path: str, size: int, min_size: int) -> "Device":
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise DeviceError(f"backing={path}: cannot create: {e.strerror}") from None
        try:
            os.ftruncate(fd, size)   # sparse: takes no space until written
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            raise DeviceError(f"backing={path}: cannot size to {size} bytes: {e.strerror}") from None
        return cls._checked(path, fd, size, False, _try_direct(fd), min_size)

    @classmethod
    def _checked(cls, path: str, fd: int, size: int, is_block: bool, direct: bool,
                 min_size: int) -> "Device":
        if size < min_size:
            os.close(fd)
            raise DeviceError(f"backing={path}: {size} bytes is too small "
                              f"(at least {min_size} needed)")
        dev = cls(path, fd, size, is_block, direct)
        log.info("backing device %s: %d bytes, %s, %s", path, size,
                 "block device" if is_block else "file", "O_DIRECT" if direct else "buffered")
        return dev

    def close(self) -> None:
        os.close(self.fd)

    # ---- I/O (call with the global lock released) ----------------------------
    def write(self, offset: int, data: bytes | bytearray, tally: DeviceCounters) -> None:
        """Write data at offset in one call; both must be ALIGN-aligned.
        Counts into tally, the caller's own."""
        if offset % ALIGN or len(data) % ALIGN:
            raise ValueError(f"unaligned device write at {offset}, {len(data)} bytes")
        try:
            if self.direct:
                with mmap.mmap(-1, len(data)) as buf:
                    buf[:] = data
                    n = os.pwritev(self.fd, [buf], offset)
            else:
                n = os.pwrite(self.fd, data, offset)
                os.posix_fadvise(self.fd, offset, len(data), os.POSIX_FADV_DONTNEED)
            if n != len(data):
                raise OSError(errno.EIO, f"short write: {n} of {len(data)} bytes")
        except OSError:
            tally.io_errors += 1
            raise
        tally.writes += 1
        tally.bytes_written += len(data)

    def read(self, offset: int, length: int, tally: DeviceCounters) -> bytes:
        """Read length bytes at offset (any alignment). Counts into tally,
        the caller's own."""
        start = offset - offset % ALIGN
        span = _aligned(offset + length) - start
        try:
            if self.direct:
                with mmap.mmap(-1, span) as buf:
                    n = os.preadv(self.fd, [buf], start)
                    out = bytes(buf[offset - start:offset - start + length])
            else:
                data = os.pread(self.fd, span, start)
                n = len(data)
                out = data[offset - start:offset - start + length]
            if n < offset - start + length:
                raise OSError(errno.EIO, f"short read: {n} of {span} bytes at {start}")
        except OSError:
            tally.io_errors += 1
            raise
        tally.reads += 1
        tally.bytes_read += span
        return out

    def discard(self, offset: int, length: int, tally: DeviceCounters) -> bool:
        """Tell the device a range holds nothing: BLKDISCARD on a block device,
        a punched hole in a file. Returns whether it did. Errors are counted
        into tally (the caller's own), not raised: a device that cannot
        discard still works. One that does not support discard at all
        (EOPNOTSUPP; ENOTTY from a driver without the ioctl) is logged once
        and not asked again."""
        if not self.discard_supported:
            return False
        try:
            if self.is_block:
                fcntl.ioctl(self.fd, BLKDISCARD, struct.pack("<QQ", offset, length))
            else:
                _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                self.discard_supported = False
                log.info("backing device %s does not support discard (%s): freed space "
                         "stays allocated on it", self.path, os.strerror(e.errno))
            else:
                tally.io_errors += 1
            return False
        tally.discards += 1
        return True


def _try_direct(fd: int) -> bool:
    """Switch a file's descriptor to O_DIRECT if its filesystem supports it."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        return True
    except OSError:
        return False


def _loop_backed_by(path: str) -> bool:
    """True if a loop device is attached to this file (it may be mounted)."""
    real = os.path.realpath(path)
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return False
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                if f.read().strip() == real:
                    return True
        except OSError:
            continue
    return False


_libc_fallocate = None


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode (os.posix_fallocate has none)."""
    global _libc_fallocate
    if _libc_fallocate is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        _libc_fallocate = libc.fallocate
    if _libc_fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
