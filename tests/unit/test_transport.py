"""What the transports share (transport/frontend.py) and how the native one
turns mount options into mount(2) arguments (transport/mounting.py)."""

from __future__ import annotations

import errno
import json
import logging
import stat

import pytest

from cctmpfs.errors import FsError
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem
from cctmpfs.options import parse_options, split_option_strings
from cctmpfs.transport import NAMES, open_session
from cctmpfs.transport import mounting
from cctmpfs.transport.frontend import Frontend
from cctmpfs.transport.mounting import MS_NODEV, MS_NOEXEC, MS_NOSUID, MountError

BS = 16384


@pytest.fixture
def frontend(clock) -> Frontend:  # type: ignore[no-untyped-def]
    return Frontend(Filesystem(block_size=BS, clock_ns=clock.ns))


# ---- the error boundary -------------------------------------------------------------

def test_an_fs_error_is_its_errno_and_nothing_else(frontend, caplog):
    assert frontend.errno_for(FsError(errno.ENOSPC, "full"), "write") == errno.ENOSPC
    assert frontend.internal_errors == 0 and caplog.text == ""


def test_any_other_exception_is_a_logged_and_counted_eio(frontend, caplog):
    try:
        raise KeyError("a bug")
    except KeyError as e:
        assert frontend.errno_for(e, "lookup", (1, b"x" * 100)) == errno.EIO
    assert frontend.internal_errors == 1
    record = caplog.records[-1]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "internal error in lookup(1, '<100 bytes>')" in caplog.text


# ---- attributes -------------------------------------------------------------------

def test_attributes_of_each_kind(frontend):
    fs = frontend.fs
    f = fs.create(ROOT_INO, b"f", 0o640, Caller(uid=5, gid=6))
    fs.write(f.ino, 0, b"x" * 5000)
    d = fs.mkdir(ROOT_INO, b"d", 0o755, Caller())
    ln = fs.symlink(ROOT_INO, b"l", b"target", Caller())
    ino, size, blocks, atime, mtime, ctime, mode, nlink, uid, gid, rdev, blksize = \
        frontend.attributes(f)
    assert (ino, size, blocks, mode, nlink, uid, gid, rdev, blksize) == \
        (f.ino, 5000, 16, stat.S_IFREG | 0o640, 1, 5, 6, 0, BS)
    assert (atime, mtime, ctime) == (f.atime_ns, f.mtime_ns, f.ctime_ns)
    assert frontend.attributes(d)[1:3] == (d.size, 0) and frontend.attributes(d)[7] == 2
    assert frontend.attributes(ln)[1] == len(b"target")


# ---- control xattrs -------------------------------------------------------------------

def test_control_xattrs_are_read_only_and_on_the_root_only(frontend):
    fs = frontend.fs
    frontend.transport_info = lambda: {"name": "test"}
    frontend.requests["lookup"] += 3
    frontend.request_counts = lambda: {"lookup": 2, "init": 1}
    s = json.loads(frontend.getxattr(ROOT_INO, b"trusted.cctmpfs.stats"))
    # What the binding says, and the core's timestamps (coarse: no binding set fine).
    assert s["transport"] == {"name": "test", "timestamps": "coarse"}
    assert s["requests"] == {"init": 1, "lookup": 5}
    assert json.loads(frontend.getxattr(ROOT_INO, b"trusted.cctmpfs.check"))["count"] == 0
    f = fs.create(ROOT_INO, b"f", 0o644, Caller())
    fs.write(f.ino, 0, b"data")
    assert json.loads(frontend.getxattr(f.ino, b"trusted.cctmpfs.blocks"))[0][0] == 0
    with pytest.raises(FsError) as e:
        frontend.getxattr(f.ino, b"trusted.cctmpfs.stats")        # not on the root
    assert e.value.errno == errno.ENODATA
    for ino, name in ((ROOT_INO, b"trusted.cctmpfs.stats"), (ROOT_INO, b"trusted.cctmpfs.check"),
                      (f.ino, b"trusted.cctmpfs.blocks")):
        with pytest.raises(FsError) as e:
            frontend.setxattr(ino, name, b"x")
        assert e.value.errno == errno.EPERM
    with pytest.raises(FsError) as e:
        frontend.removexattr(ROOT_INO, b"trusted.cctmpfs.stats-settled")
    assert e.value.errno == errno.EPERM
    assert frontend.listxattr(ROOT_INO) == []


def test_setxattr_flags(frontend):
    fs = frontend.fs
    f = fs.create(ROOT_INO, b"f", 0o644, Caller())
    assert frontend.capability_absent(f.ino, b"security.capability")
    with pytest.raises(FsError) as e:
        frontend.setxattr(f.ino, b"user.a", b"1", 2)               # XATTR_REPLACE, missing
    assert e.value.errno == errno.ENODATA
    frontend.setxattr(f.ino, b"user.a", b"1", 1)                   # XATTR_CREATE
    with pytest.raises(FsError) as e:
        frontend.setxattr(f.ino, b"user.a", b"2", 1)
    assert e.value.errno == errno.EEXIST
    frontend.setxattr(f.ino, b"user.a", b"3", 2)
    assert frontend.getxattr(f.ino, b"user.a") == b"3"
    assert not frontend.capability_absent(f.ino, b"security.capability")
    assert not frontend.capability_absent(f.ino, b"user.a")


# ---- sessions and mount(2) arguments ------------------------------------------------

def test_sessions_by_name():
    assert NAMES == ("llfuse", "native")
    native = open_session("native")
    assert native.name == "native" and hasattr(native.lock, "acquire")
    native.close()                      # never mounted: nothing to do
    assert open_session("llfuse").name == "llfuse"
    with pytest.raises(ValueError):
        open_session("fuse3")


def test_mount_arguments_follow_libfuse(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    opts = parse_options(["size=1m,nosuid,nodev,noexec,transport=native"], source="my src")
    source, fstype, flags, data = mounting.mount_arguments(opts.fuse_options, 7, 0o40755, 0, 0)
    assert (source, fstype) == ("my src", "fuse.cctmpfs")
    assert flags == MS_NOSUID | MS_NODEV | MS_NOEXEC
    assert data.split(",") == ["fd=7", "rootmode=40000", "user_id=0", "group_id=0",
                               "allow_other", "default_permissions"]
    # libfuse's defaults are nosuid,nodev; suid and dev clear them.
    _s, _t, flags, _d = mounting.mount_arguments(("suid", "dev", "exec", "rw"), 3, 0o40000, 1, 2)
    assert flags == 0
    # allow_root: the kernel lets everyone in, the daemon only the mounter and root.
    _s, _t, _f, data = mounting.mount_arguments(("allow_root", "default_permissions"), 3,
                                                0o40000, 1, 2)
    assert data.endswith("user_id=1,group_id=2,allow_other,default_permissions")
    with pytest.raises(MountError, match="auto_unmount"):
        mounting.mount_arguments(("auto_unmount",), 3, 0o40000, 0, 0)


def test_a_missing_device_names_the_cause(tmp_path):
    with pytest.raises(MountError, match="does not exist.*modprobe fuse"):
        mounting.open_device(str(tmp_path / "fuse"))
    with pytest.raises(MountError, match="cannot open"):   # a directory: EISDIR
        mounting.open_device(str(tmp_path))


# ---- fusermount (user mounts, auto_unmount) ------------------------------------------

def test_fusermount_is_used_as_libfuse_uses_it(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert not mounting.use_fusermount(("default_permissions",))
    assert mounting.use_fusermount(("auto_unmount",))       # only fusermount stays to unmount
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert mounting.use_fusermount(("default_permissions",))


def test_fusermount_options_drop_what_only_libfuse_knows():
    opts = ("fsname=src", "subtype=cctmpfs", "default_permissions", "big_writes", "nonempty",
            "allow_root", "auto_unmount", "nosuid", "noexec")
    assert mounting.fusermount_options(opts).split(",") == [
        "fsname=src", "subtype=cctmpfs", "default_permissions", "nonempty", "allow_other",
        "auto_unmount", "nosuid", "noexec"]
    with pytest.raises(MountError, match="blkdev"):
        mounting.fusermount_options(("blkdev",))


def test_a_comma_or_backslash_in_a_name_is_escaped_for_libfuse_and_fusermount():
    """fusermount and libfuse 2.9 split -o at commas, except after a
    backslash: a source `a,b` must not become fsname=a and an option b."""
    assert mounting.escape_name_option("fsname=a,b\\c") == "fsname=a\\,b\\\\c"
    assert mounting.escape_name_option("subtype=x,y") == "subtype=x\\,y"
    assert mounting.escape_name_option("allow_other") == "allow_other"
    names = ("fsname=a,b\\c", "subtype=s,t")
    # What we escape, our own parser (libfuse's rules) reads back whole.
    assert split_option_strings([mounting.fusermount_options(names)]) == list(names)


def test_user_allow_other_is_read_from_fuse_conf(tmp_path):
    conf = tmp_path / "fuse.conf"
    assert not mounting.user_allow_other(str(conf))            # missing
    conf.write_text("# user_allow_other\nmount_max = 10\n")
    assert not mounting.user_allow_other(str(conf))
    conf.write_text("mount_max = 10\n  user_allow_other  # yes\n")
    assert mounting.user_allow_other(str(conf))


def test_a_user_asking_allow_other_without_user_allow_other_is_told_why(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setattr(mounting, "user_allow_other", lambda path=mounting.FUSE_CONF: False)
    for opt in ("allow_other", "allow_root"):
        with pytest.raises(MountError, match=f"{opt}.*user_allow_other.*/etc/fuse.conf"):
            mounting.check_user_allow_other((opt, "default_permissions"))
    mounting.check_user_allow_other(("default_permissions",))
    monkeypatch.setattr("os.geteuid", lambda: 0)
    mounting.check_user_allow_other(("allow_other",))


@pytest.mark.parametrize("said,cause", [
    ("fusermount: user has no write access to mountpoint /m", "not permitted"),
    ("fusermount: failed to open /dev/fuse: Permission denied", "may not open /dev/fuse"),
    ("fusermount: fuse device not found, try 'modprobe fuse' first", "modprobe fuse"),
    ("fusermount: option allow_other only allowed if 'user_allow_other' is set in /etc/fuse.conf",
     "user_allow_other"),
    ("", "no reason given")])
def test_fusermounts_refusals_name_the_cause(said, cause):
    e = mounting._fusermount_failure(said, "/m", "")
    assert cause in str(e) and str(e).startswith("mounting /m")


def test_a_missing_fusermount_names_the_package(monkeypatch):
    monkeypatch.setattr(mounting, "FUSERMOUNT_DIRS", ())
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MountError, match="fusermount was not found .package fuse."):
        mounting.find_fusermount()
