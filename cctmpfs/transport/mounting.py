"""Mounting without libfuse: /dev/fuse, mount(2), fusermount and the
unmount, as libfuse does them (lib/mount.c: fuse_mount_sys,
fuse_mount_fusermount, fuse_kern_unmount).

Two ways, chosen as libfuse chooses (`use_fusermount`):
* root, without auto_unmount: /dev/fuse is opened here and mounted with
  mount(2). The kernel options are `fd=N,rootmode=M,user_id=U,group_id=G`
  plus `allow_other` and `default_permissions` when asked; the
  mount(8)-style flags become MS_* flags, with libfuse's defaults nosuid and
  nodev. The libfuse-only options (big_writes, nonempty) mean nothing to the
  kernel and are dropped; mounting over a non-empty directory is allowed by
  mount(2).
* a user, or auto_unmount: the setuid `fusermount` opens /dev/fuse, mounts,
  and hands the descriptor back over a socket (the _FUSE_COMMFD protocol:
  a socketpair, one end's number in that environment variable, the fd sent
  back with SCM_RIGHTS). fusermount checks what a user may do (the mount
  point writable by them, allow_other only with user_allow_other in
  /etc/fuse.conf, suid/dev ignored) and records the mount as the user's,
  so that `fusermount -u` by that user works. With auto_unmount it does not
  exit: it waits until its end of the socket closes, which happens when the
  daemon exits in any way, SIGKILL included, and then unmounts lazily if the
  mount is still there.

allow_root: the kernel gets allow_other, and the daemon refuses requests of
other users than the mounter and root itself (as libfuse does; native.py).

Threading: used by the main thread only, before and after serving.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import tempfile
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
#: libfuse options that mean nothing to the kernel.
LIBFUSE_ONLY = ("big_writes", "nonempty")
#: allow_root: the kernel lets everyone in (allow_other), the daemon only
#: the mounter and root (native.py, Server.allow_only).
ALLOW_ROOT = "allow_root"
#: Only fusermount does this (it stays as a helper); with it even root
#: mounts through fusermount, as libfuse does.
AUTO_UNMOUNT = "auto_unmount"

DEV_FUSE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"
#: The environment variable that tells fusermount which descriptor is its
#: end of the socket (libfuse: FUSE_COMMFD_ENV).
COMMFD_ENV = "_FUSE_COMMFD"
#: Where fusermount is looked for when PATH does not have it: mount(8) runs
#: its helpers with a bare PATH, or none.
FUSERMOUNT_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
#: Options whose values are names, which may hold a comma: libfuse 2.9
#: (fuse_opt.c) and fusermount (do_mount) read a backslash in them as "the
#: next character is literal" (escape_name_option).
NAME_KEYS = ("fsname", "subtype")
#: How mounted_by (stats) names the two ways.
BY_MOUNT = "mount(2)"
BY_FUSERMOUNT = "fusermount"


class MountError(Exception):
    """The mount could not be made; the message is shown to the user."""


class MountNotPermitted(MountError):
    """mount(2) said EPERM: root without CAP_SYS_ADMIN here (a container).
    libfuse then tries fusermount; so does NativeSession."""


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
        elif opt in KERNEL_FLAGS or opt == ALLOW_ROOT:
            kernel = "allow_other" if opt == ALLOW_ROOT else opt
            if kernel not in data:
                data.append(kernel)
        elif opt in LIBFUSE_ONLY:
            continue
        elif opt == AUTO_UNMOUNT:
            raise MountError(f"{opt}: only fusermount does it (use_fusermount())")
        else:
            raise MountError(f"{opt}: not supported with transport=native")
    return source, f"fuse.{subtype}", flags, ",".join(data)


def escape_name_option(opt: str) -> str:
    """fsname=/subtype= as one option of a -o string for libfuse 2.9 or
    fusermount: a comma in the name would end the option there (`a,b`
    became fsname=a plus an unknown option b), so it and the backslash
    are escaped with a backslash, which both unescape. Other options pass
    unchanged (fusermount takes escapes only in these two)."""
    key, eq, value = opt.partition("=")
    if key not in NAME_KEYS or not eq:
        return opt
    return key + "=" + value.replace("\\", "\\\\").replace(",", "\\,")


def use_fusermount(fuse_options: tuple[str, ...]) -> bool:
    """Whether this mount goes through fusermount: as libfuse decides, for a
    user (mount(2) of FUSE needs CAP_SYS_ADMIN) and for auto_unmount (only
    fusermount stays behind to unmount)."""
    return os.geteuid() != 0 or AUTO_UNMOUNT in fuse_options


def fusermount_options(fuse_options: tuple[str, ...]) -> str:
    """The -o string fusermount gets for the passed-on options: what libfuse
    2.9 hands it (mount flags, kernel options, fsname=, subtype=, nonempty,
    auto_unmount), with allow_root as allow_other (fusermount 2.9 would pass
    allow_root on to the kernel, which refuses it)."""
    out: list[str] = []
    for opt in fuse_options:
        key = opt.partition("=")[0]
        if opt in LIBFUSE_ONLY and opt != "nonempty":
            continue
        if opt == ALLOW_ROOT:
            opt = "allow_other"
        if key in NAME_KEYS:
            opt = escape_name_option(opt)
        elif not (opt in MOUNT_FLAGS or opt in KERNEL_FLAGS or opt in ("nonempty", AUTO_UNMOUNT)):
            raise MountError(f"{opt}: not supported with transport=native")
        if opt not in out:
            out.append(opt)
    return ",".join(out)


def find_fusermount() -> str:
    """fusermount's path (fusermount3's if only it is there). Raises MountError."""
    search = os.pathsep.join(filter(None, [os.environ.get("PATH"), *FUSERMOUNT_DIRS]))
    for name in ("fusermount", "fusermount3"):
        path = shutil.which(name, path=search)
        if path:
            return path
    raise MountError("fusermount was not found (package fuse): a user mount, and auto_unmount, "
                     "need it; root can mount without it, unless auto_unmount is asked")


def user_allow_other(path: str = FUSE_CONF) -> bool:
    """Whether fuse.conf lets users ask for allow_other and allow_root."""
    try:
        with open(path) as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def check_user_allow_other(fuse_options: tuple[str, ...]) -> None:
    """A user's allow_other or allow_root needs user_allow_other in
    fuse.conf. fusermount would refuse too, but its reason reaches nobody
    under llfuse (libfuse prints it to the daemon's stderr): say it here."""
    if os.geteuid() == 0 or user_allow_other():
        return
    for asked in ("allow_other", ALLOW_ROOT):
        if asked in fuse_options:
            raise MountError(f"{asked} for a user mount needs 'user_allow_other' in {FUSE_CONF} "
                             f"(root must add it), or mount without {asked}")


class FusermountMount:
    """What mount_with_fusermount() gives: the /dev/fuse descriptor, and,
    with auto_unmount, the socket whose closing tells the fusermount helper
    (`helper`, our child) to unmount. Closing it on purpose is release()."""

    def __init__(self, fd: int, sock: Optional[socket.socket],
                 helper: Optional[subprocess.Popen]) -> None:
        self.fd = fd
        self.sock = sock
        self.helper = helper

    def release(self, timeout: float = 10.0) -> None:
        """After the unmount: close the socket, so the helper finds the
        mount gone and exits, and reap it (it must not be left behind)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.helper is not None:
            helper, self.helper = self.helper, None
            try:
                helper.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()


def _fusermount_failure(text: str, mountpoint: str, options: str) -> MountError:
    """fusermount's complaint (its stderr), with the cause named where we know it."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    said = "; ".join(ln.split(": ", 1)[-1] if ln.startswith("fusermount") else ln
                     for ln in lines) or "no reason given"
    if "user_allow_other" in said:
        return MountError(f"mounting {mountpoint} with allow_other (or allow_root) as a user needs "
                          f"'user_allow_other' in {FUSE_CONF}; fusermount said: {said}")
    if f"open {DEV_FUSE}" in said:
        return MountError(f"mounting {mountpoint}: this user may not open {DEV_FUSE} (fusermount "
                          f"opens it as the user; distributions make it mode 0666); "
                          f"fusermount said: {said}")
    if "device not found" in said:
        return MountError(f"mounting {mountpoint}: the kernel has no FUSE device "
                          f"({DEV_FUSE}; modprobe fuse); fusermount said: {said}")
    if "Permission denied" in said or "Operation not permitted" in said or "access" in said:
        return MountError(f"mounting {mountpoint} is not permitted: fusermount said: {said}")
    return MountError(f"mounting {mountpoint} through fusermount failed: {said}")


def mount_with_fusermount(mountpoint: str, fuse_options: tuple[str, ...]) -> FusermountMount:
    """Mount through fusermount (libfuse's fuse_mount_fusermount): exec it
    with one end of a socketpair named in _FUSE_COMMFD, and receive the
    /dev/fuse descriptor of the new mount on the other (SCM_RIGHTS).
    Raises MountError naming the cause; then nothing is mounted."""
    check_user_allow_other(fuse_options)
    fm = find_fusermount()
    opts = fusermount_options(fuse_options)
    auto_unmount = AUTO_UNMOUNT in fuse_options
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # fusermount's complaints go to a file: with auto_unmount it keeps its
    # stderr open for the life of the mount, so a pipe would never end.
    err = tempfile.TemporaryFile()
    try:
        env = dict(os.environ, **{COMMFD_ENV: str(theirs.fileno())})
        try:
            proc = subprocess.Popen([fm, "-o", opts, "--", mountpoint], env=env,
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, close_fds=True)
        except OSError as e:
            raise MountError(f"cannot run {fm}: {e.strerror}") from None
        theirs.close()
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
        except OSError:
            fds = []
        if not fds:
            # fusermount failed (it closed its end): its stderr says why.
            proc.wait()
            err.seek(0)
            raise _fusermount_failure(err.read().decode(errors="replace"), mountpoint, opts)
        fd = fds[0]
        for extra in fds[1:]:
            os.close(extra)
        os.set_inheritable(fd, False)
        if not auto_unmount:
            ours.close()
            proc.wait()
            return FusermountMount(fd, None, None)
        # The helper waits on its end until ours closes: at our exit, clean
        # or not. Ours is not inherited by anything we start (CLOEXEC).
        return FusermountMount(fd, ours, proc)
    except BaseException:
        ours.close()
        theirs.close()
        raise
    finally:
        err.close()


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
        raise MountNotPermitted(f"mounting {mountpoint} with mount(2) is not permitted "
                                "(no CAP_SYS_ADMIN here)")
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
    (umount -l) leaves its mount point to whatever is mounted there next.
    Root detaches it with umount2(2); a user through `fusermount -u -z`,
    which checks that the mount is theirs."""
    p = select.poll()
    p.register(fd, 0)
    gone = any(ev & select.POLLERR for _fd, ev in p.poll(0))
    os.close(fd)
    if gone or device is None or mounted_device(mountpoint) != device:
        return
    if _libc().umount2(mountpoint.encode(), MNT_DETACH) == 0 or os.geteuid() == 0:
        return
    try:
        subprocess.run([find_fusermount(), "-u", "-q", "-z", "--", mountpoint],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (MountError, OSError, subprocess.TimeoutExpired):
        pass    # the daemon exits anyway; the mount answers ENOTCONN until removed
