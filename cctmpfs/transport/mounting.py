"""Mounting without libfuse: /dev/fuse, mount(2) and the unmount, as
libfuse 2.9 does them for root (lib/mount.c: fuse_mount_sys,
fuse_kern_unmount).

The kernel options are `fd=N,rootmode=M,user_id=U,group_id=G` plus
`allow_other` and `default_permissions` when asked; the mount(8)-style
flags become MS_* flags, with libfuse's defaults nosuid and nodev. The
libfuse-only options (big_writes, nonempty) mean nothing to the kernel and
are dropped; mounting over a non-empty directory is allowed by mount(2).

Threading: used by the main thread only, before and after serving.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import select
import stat
from typing import Optional

#: linux/mount.h
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1024
MNT_DETACH = 2

#: mount(8) flags libfuse maps to MS_* flags: (flags set, flags cleared).
MOUNT_FLAGS = {
    "rw": (0, 0), "suid": (0, MS_NOSUID), "nosuid": (MS_NOSUID, 0),
    "dev": (0, MS_NODEV), "nodev": (MS_NODEV, 0), "exec": (0, MS_NOEXEC),
    "noexec": (MS_NOEXEC, 0), "async": (0, MS_SYNCHRONOUS), "sync": (MS_SYNCHRONOUS, 0),
    "atime": (0, MS_NOATIME), "noatime": (MS_NOATIME, 0), "dirsync": (MS_DIRSYNC, 0),
}
#: Options the kernel's FUSE takes in the mount data.
KERNEL_FLAGS = ("allow_other", "default_permissions")
#: libfuse options that mean nothing here. allow_root (root and the mounting
#: user) is what the kernel does without allow_other when the mounter is root.
LIBFUSE_ONLY = ("big_writes", "nonempty", "allow_root")

DEV_FUSE = "/dev/fuse"


class MountError(Exception):
    """The mount could not be made; the message is shown to the user."""


def mount_arguments(fuse_options: tuple[str, ...], fd: int, root_mode: int, uid: int,
                    gid: int) -> tuple[str, str, int, str]:
    """(source, fstype, MS flags, data) of mount(2) for the passed-on options
    (MountOptions.fuse_options). Raises MountError for one this cannot do."""
    source = "cctmpfs"
    subtype = "cctmpfs"
    flags = MS_NOSUID | MS_NODEV
    data = [f"fd={fd}", f"rootmode={stat.S_IFMT(root_mode):o}", f"user_id={uid}",
            f"group_id={gid}"]
    for opt in fuse_options:
        key, _eq, value = opt.partition("=")
        if key == "fsname":
            source = value
        elif key == "subtype":
            subtype = value
        elif opt in MOUNT_FLAGS:
            on, off = MOUNT_FLAGS[opt]
            flags = (flags | on) & ~off
        elif opt in KERNEL_FLAGS:
            if opt not in data:
                data.append(opt)
        elif opt in LIBFUSE_ONLY:
            continue
        else:
            raise MountError(f"{opt}: not supported with transport=native")
    return source, f"fuse.{subtype}", flags, ",".join(data)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def open_device(path: str = DEV_FUSE) -> int:
    """The FUSE device, opened for one connection. Raises MountError naming the cause."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MountError(f"{path} does not exist: load the fuse module (modprobe fuse), "
                         "or give this container the device") from None
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENXIO):
            raise MountError(f"{path}: the kernel has no FUSE (modprobe fuse)") from None
        raise MountError(f"cannot open {path}: {e.strerror}") from None


def _unescape(field: str) -> str:
    """A path of /proc/self/mountinfo: space, tab, newline and backslash are \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounted_device(mountpoint: str) -> Optional[str]:
    """The device ("major:minor") of the topmost mount at mountpoint, or None."""
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == mountpoint:
                    found = fields[2]
    except OSError:
        return None
    return found


def mount(fd: int, mountpoint: str, fuse_options: tuple[str, ...]) -> Optional[str]:
    """mount(2) a FUSE file system served on fd at mountpoint; returns the
    new mount's device ("major:minor", for unmount()). Raises MountError."""
    try:
        root_mode = os.stat(mountpoint).st_mode
    except OSError as e:
        raise MountError(f"mount point {mountpoint}: {e.strerror}") from None
    source, fstype, flags, data = mount_arguments(fuse_options, fd, root_mode,
                                                  os.getuid(), os.getgid())
    libc = _libc()
    if libc.mount(source.encode(), mountpoint.encode(), fstype.encode(),
                  ctypes.c_ulong(flags), data.encode()) == 0:
        return mounted_device(mountpoint)
    e = ctypes.get_errno()
    if e == errno.EPERM:
        raise MountError(f"mounting {mountpoint} with mount(2) is not permitted: transport=native "
                         "needs root (CAP_SYS_ADMIN); transport=llfuse mounts as a user "
                         "through fusermount")
    if e == errno.ENODEV:
        raise MountError(f"mounting {mountpoint}: the kernel has no fuse file system type "
                         "(modprobe fuse)")
    raise MountError(f"mounting {mountpoint} failed: {os.strerror(e)}")


def unmount(fd: int, mountpoint: str, device: Optional[str]) -> None:
    """End the connection and remove the mount, as libfuse does: if the
    device says the connection is gone (POLLERR: unmounted, or aborted
    through fusectl), only close it; otherwise close it, which aborts the
    connection, then detach the mount, but only if the topmost mount there
    is still ours (device, from mount()): a mount detached while busy
    (umount -l) leaves its mount point to whatever is mounted there next."""
    p = select.poll()
    p.register(fd, 0)
    gone = any(ev & select.POLLERR for _fd, ev in p.poll(0))
    os.close(fd)
    if not gone and device is not None and mounted_device(mountpoint) == device:
        _libc().umount2(mountpoint.encode(), MNT_DETACH)
