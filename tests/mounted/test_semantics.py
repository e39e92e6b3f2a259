"""tmpfs semantics on a real cctmpfs mount, compared with a real tmpfs.

Most tests run one scenario on both file systems and compare what it
observed (results, errnos, modes, sizes, link counts); a few check
cctmpfs-only promises (block size, its option handling, no ACLs). Atimes
are never compared after reads: FUSE cannot see reads served from the page
cache.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import socket
import stat
import subprocess
import threading
import time
from typing import Any, Callable, Optional

import pytest

pytestmark = pytest.mark.mounted

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3


# ---- helpers -------------------------------------------------------------------

def err(fn: Callable[[], Any]) -> Any:
    """fn()'s result, or the errno name it failed with."""
    try:
        return fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)


def kind(mode: int) -> str:
    for name in ("REG", "DIR", "LNK", "FIFO", "SOCK", "CHR", "BLK"):
        if getattr(stat, f"S_IS{name}")(mode):
            return name
    return "?"


def describe(path: str) -> tuple:
    """What must match between tmpfs and cctmpfs for one path (lstat)."""
    st = os.lstat(path)
    return (kind(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_nlink, st.st_uid,
            st.st_gid, st.st_size)


def tree(root: str) -> dict[str, tuple]:
    """describe() of everything under root, plus file contents and link targets."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            d = describe(p)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    d += (hashlib.sha256(f.read()).hexdigest(),)
            elif stat.S_ISLNK(st.st_mode):
                d += (os.readlink(p),)
            out[rel] = d
    out["."] = describe(root)
    return out


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes of compressible but position-dependent data."""
    chunk = b"".join(b"%08d:%d|" % (i, seed) for i in range(n // 10 + 2))
    return chunk[:n]


@pytest.fixture
def both(mount_cct, tmpfs_mount):
    """Factory: both(cct_options, tmpfs_options) -> (cctmpfs root, tmpfs root)."""

    def make(cct_options: str = "size=256m", tmpfs_options: str = "size=256m"):
        return mount_cct(cct_options), tmpfs_mount(tmpfs_options)

    return make


def differences(got: Any, expected: Any) -> str:
    """A readable list of where cctmpfs (got) and tmpfs (expected) differ."""
    if isinstance(got, (list, tuple)) and isinstance(expected, (list, tuple)):
        lines = [f"  [{i}] cctmpfs={g!r}\n  {' ' * len(str(i))}   tmpfs={e!r}"
                 for i, (g, e) in enumerate(zip(got, expected)) if g != e]
        if len(got) != len(expected):
            lines.append(f"  lengths differ: cctmpfs {len(got)}, tmpfs {len(expected)}")
        return "\n".join(lines)
    if isinstance(got, dict) and isinstance(expected, dict):
        keys = sorted(set(got) | set(expected), key=str)
        return "\n".join(f"  {k!r}: cctmpfs={got.get(k)!r}\n  {' ' * len(repr(k))}  tmpfs={expected.get(k)!r}"
                         for k in keys if got.get(k) != expected.get(k))
    return f"  cctmpfs={got!r}\n  tmpfs={expected!r}"


def check_same(scenario: Callable[[str], Any], cct: str, ref: str) -> Any:
    """Run scenario on tmpfs (ref) then cctmpfs; assert equal observations."""
    expected = scenario(ref)
    got = scenario(cct)
    assert got == expected, "cctmpfs differs from tmpfs:\n" + differences(got, expected)
    return got


def same(both, scenario: Callable[[str], Any], cct_options: str = "size=256m",
         tmpfs_options: str = "size=256m") -> Any:
    """Run scenario on a fresh cctmpfs and a fresh tmpfs; assert equal observations."""
    cct, ref = both(cct_options, tmpfs_options)
    return check_same(scenario, cct, ref)


# ---- files, directories, links ---------------------------------------------------

def test_regular_files(both):
    def scenario(root):
        obs = []
        p = os.path.join(root, "f")
        with open(p, "wb") as f:
            f.write(b"hello world\n" * 1000)
        obs.append(describe(p))
        with open(p, "rb") as f:
            obs.append(hashlib.sha256(f.read()).hexdigest())
        with open(p, "r+b") as f:
            f.seek(5)
            f.write(b"XYZ")
            f.seek(0)
            obs.append(f.read(20))
        obs.append(err(lambda: os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)))
        obs.append(err(lambda: os.open(os.path.join(root, "nope"), os.O_RDONLY)))
        obs.append(err(lambda: os.open(os.path.join(p, "x"), os.O_RDONLY)))
        obs.append(err(lambda: os.open(root, os.O_WRONLY)))
        fd = os.open(os.path.join(root, "g"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o640)
        os.close(fd)
        obs.append(describe(os.path.join(root, "g")))
        with open(p, "wb") as f:   # O_TRUNC
            pass
        obs.append(describe(p))
        obs.append(sorted(os.listdir(root)))
        return obs

    same(both, scenario)


def test_directories(both):
    def scenario(root):
        obs = []
        d = os.path.join(root, "d")
        os.mkdir(d, 0o750)
        obs.append(describe(root))
        obs.append(describe(d))
        os.mkdir(os.path.join(d, "sub"))
        open(os.path.join(d, "file"), "w").close()
        obs.append(describe(d))          # nlink 3, size grows with entries
        obs.append(err(lambda: os.mkdir(d)))
        obs.append(err(lambda: os.rmdir(d)))
        obs.append(err(lambda: os.rmdir(os.path.join(d, "file"))))
        obs.append(err(lambda: os.unlink(os.path.join(d, "sub"))))
        obs.append(err(lambda: os.rmdir(os.path.join(d, "missing"))))
        obs.append(err(lambda: os.mkdir(os.path.join(d, "file", "x"))))
        obs.append(err(lambda: os.rmdir(os.path.join(d, "sub", "."))))
        obs.append(err(lambda: os.rmdir(os.path.join(d, "sub", ".."))))
        os.rmdir(os.path.join(d, "sub"))
        obs.append(describe(d))
        os.unlink(os.path.join(d, "file"))
        os.rmdir(d)
        obs.append(describe(root))
        obs.append(os.listdir(root))
        # A directory removed while it is the cwd of someone: nothing can be created in it.
        os.mkdir(d)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.rmdir(d)
        obs.append(err(lambda: os.open("x", os.O_CREAT | os.O_WRONLY, dir_fd=fd)))
        obs.append(os.fstat(fd).st_nlink)
        os.close(fd)
        return obs

    same(both, scenario)


def test_missing_names_then_created(both):
    """A LOOKUP of a missing name is answered as a negative entry, which the
    kernel caches; every way of creating that name afterwards must still
    find it free and make it visible, as on tmpfs."""
    def scenario(root):
        obs = []
        for how in ("open", "excl", "mkdir", "symlink", "link", "rename", "fifo"):
            p = os.path.join(root, how)
            obs.append(err(lambda: os.stat(p)))
            obs.append(err(lambda: os.stat(p)))         # the cached answer
            obs.append(err(lambda: os.listdir(p)))
            if how == "open":
                with open(p, "w") as f:
                    f.write("x")
            elif how == "excl":
                os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            elif how == "mkdir":
                os.mkdir(p)
            elif how == "symlink":
                os.symlink("target", p)
            elif how == "link":
                os.link(os.path.join(root, "open"), p)
            elif how == "rename":
                open(p + ".tmp", "w").close()
                os.rename(p + ".tmp", p)
            else:
                os.mkfifo(p)
            obs.append((how, describe(p)))
            obs.append(err(lambda: os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)))
        # Removed, then missing again, then created again.
        p = os.path.join(root, "open")
        os.unlink(p)
        obs.append(err(lambda: os.stat(p)))
        obs.append(err(lambda: os.stat(p)))
        with open(p, "w") as f:
            f.write("again")
        obs.append(open(p).read())
        obs.append(sorted(os.listdir(root)))
        return obs

    cct, ref = both()
    check_same(scenario, cct, ref)
    # The kernel asks cctmpfs once for a missing name, then answers itself.
    before = cct.stats()["requests"].get("lookup", 0)
    for _ in range(50):
        assert err(lambda: os.stat(os.path.join(cct, "never"))) == "ENOENT"
    assert cct.stats()["requests"].get("lookup", 0) - before == 1


def test_close_and_fsync_answer_as_on_tmpfs_without_a_request_each(both):
    """FLUSH and FSYNC have nothing to do: answered "not implemented" once,
    the kernel stops sending them (frontend.NOT_NEEDED), while close(2),
    fsync(2), fdatasync(2) and fsync of a directory still return 0, as on
    tmpfs, and the data is there."""
    def scenario(root: str) -> list[Any]:
        obs: list[Any] = []
        p = os.path.join(root, "f")
        for i in range(20):
            fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
            obs.append(os.write(fd, b"%d," % i))
            obs.append(err(lambda: os.fsync(fd)))
            obs.append(err(lambda: os.fdatasync(fd)))
            obs.append(err(lambda: os.close(fd)))
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        obs.append(err(lambda: os.fsync(dfd)))
        os.close(dfd)
        with open(p) as f:
            obs.append(f.read())
        return obs

    cct, ref = both()
    check_same(scenario, cct, ref)
    asked = cct.stats()["requests"]
    assert all(asked.get(op, 0) <= 1 for op in ("flush", "fsync", "fsyncdir")), asked


def test_large_directory_listing(both):
    def scenario(root):
        d = os.path.join(root, "big")
        os.mkdir(d)
        names = [f"entry-{i:05d}-" + "x" * (i % 50) for i in range(2000)]
        for n in names:
            open(os.path.join(d, n), "w").close()
        listed = sorted(os.listdir(d))
        # Remove every other entry while listing: no entry that stays may be skipped.
        seen = set()
        with os.scandir(d) as it:
            for i, e in enumerate(it):
                seen.add(e.name)
                if i % 2 == 0:
                    os.unlink(e.path)
        remaining = sorted(os.listdir(d))
        assert set(remaining) <= seen
        return listed == sorted(names), len(remaining), os.lstat(d).st_size, os.lstat(d).st_nlink

    same(both, scenario)


def test_readdir_inodes_match_stat(mount_cct):
    mp = mount_cct()
    for i in range(50):
        open(os.path.join(mp, f"f{i}"), "w").close()
        os.mkdir(os.path.join(mp, f"d{i}"))
    with os.scandir(mp) as it:
        for e in it:
            assert e.inode() == os.lstat(e.path).st_ino
            assert e.is_dir(follow_symlinks=False) == e.name.startswith("d")


def test_symlinks(both):
    def scenario(root):
        obs = []
        target = os.path.join(root, "target")
        with open(target, "w") as f:
            f.write("data")
        os.symlink("target", os.path.join(root, "rel"))
        os.symlink(target, os.path.join(root, "abs"))
        os.symlink("nowhere", os.path.join(root, "dangling"))
        for name in ("rel", "abs", "dangling"):
            p = os.path.join(root, name)
            target_len = len(os.readlink(p).replace(root, "ROOT"))
            obs.append((describe(p)[:3], os.lstat(p).st_size == len(os.readlink(p)), target_len,
                        os.readlink(p).replace(root, "ROOT")))
        with open(os.path.join(root, "rel")) as f:
            obs.append(f.read())
        obs.append(err(lambda: open(os.path.join(root, "dangling")).read()))
        obs.append(err(lambda: os.readlink(target)))
        obs.append(err(lambda: os.symlink("x", os.path.join(root, "rel"))))
        long_ok = "a/" * 2047 + "b"             # 4095 bytes: PATH_MAX - 1
        os.symlink(long_ok, os.path.join(root, "long"))
        obs.append(os.readlink(os.path.join(root, "long")) == long_ok)
        obs.append(err(lambda: os.symlink(long_ok + "c", os.path.join(root, "toolong"))))
        # Loops.
        os.symlink("loop2", os.path.join(root, "loop1"))
        os.symlink("loop1", os.path.join(root, "loop2"))
        obs.append(err(lambda: os.stat(os.path.join(root, "loop1"))))
        # Symlink times can be set (lutimes).
        os.utime(os.path.join(root, "rel"), ns=(1_000_000_123, 2_000_000_456), follow_symlinks=False)
        st = os.lstat(os.path.join(root, "rel"))
        obs.append((st.st_atime_ns, st.st_mtime_ns))
        return obs

    same(both, scenario)


def test_hard_links(both):
    def scenario(root):
        obs = []
        a, b, c = (os.path.join(root, n) for n in "abc")
        with open(a, "wb") as f:
            f.write(b"shared")
        os.link(a, b)
        obs.append((describe(a), describe(b), os.lstat(a).st_ino == os.lstat(b).st_ino))
        with open(b, "ab") as f:
            f.write(b" content")
        with open(a, "rb") as f:
            obs.append(f.read())
        os.mkdir(os.path.join(root, "d"))
        os.link(a, os.path.join(root, "d", "c"))
        obs.append(os.lstat(a).st_nlink)
        os.unlink(a)
        obs.append((os.lstat(b).st_nlink, open(b, "rb").read()))
        obs.append(err(lambda: os.link(os.path.join(root, "d"), c)))
        obs.append(err(lambda: os.link(b, os.path.join(root, "d", "c"))))
        obs.append(err(lambda: os.link(os.path.join(root, "missing"), c)))
        os.symlink("b", os.path.join(root, "sym"))
        os.link(os.path.join(root, "sym"), os.path.join(root, "symlink-hardlink"), follow_symlinks=False)
        obs.append(describe(os.path.join(root, "symlink-hardlink"))[:3])
        return obs

    same(both, scenario)


def test_fifo_with_reader_and_writer(both):
    def scenario(root):
        p = os.path.join(root, "fifo")
        os.mkfifo(p, 0o640)
        got = []

        def reader():
            with open(p, "rb") as f:
                got.append(f.read())

        t = threading.Thread(target=reader)
        t.start()
        with open(p, "wb") as f:
            f.write(b"through the pipe" * 1000)
        t.join(10)
        assert not t.is_alive()
        return describe(p), got

    same(both, scenario)


def test_unix_socket(both):
    def scenario(root):
        p = os.path.join(root, "sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            srv.bind(p)
            srv.listen(1)
            cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            cli.connect(p)
            conn, _ = srv.accept()
            cli.sendall(b"ping")
            data = conn.recv(4)
            conn.close()
            cli.close()
        finally:
            srv.close()
        obs = (describe(p)[0], data, err(lambda: socket.socket(socket.AF_UNIX).bind(p)))
        os.unlink(p)
        return obs

    same(both, scenario)


def test_device_nodes(both):
    def scenario(root):
        obs = []
        for name, mode, dev in (("null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
                                ("blk", stat.S_IFBLK | 0o600, os.makedev(7, 200)),
                                ("fifo", stat.S_IFIFO | 0o600, 0),
                                ("reg", stat.S_IFREG | 0o644, 0)):
            p = os.path.join(root, name)
            os.mknod(p, mode, dev)
            st = os.lstat(p)
            obs.append((name, describe(p),
                        (os.major(st.st_rdev), os.minor(st.st_rdev)) if dev else None))
        obs.append(err(lambda: os.mknod(os.path.join(root, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))))
        return obs

    same(both, scenario)


# ---- rename ----------------------------------------------------------------------

def test_rename(both):
    def scenario(root):
        obs = []
        j = lambda *p: os.path.join(root, *p)  # noqa: E731
        os.mkdir(j("d1"))
        os.mkdir(j("d2"))
        for name, data in (("a", b"AAA"), ("b", b"BBBB")):
            with open(j(name), "wb") as f:
                f.write(data)
        ino_a = os.lstat(j("a")).st_ino
        # Over an existing file: the target is replaced by the source inode.
        os.rename(j("a"), j("b"))
        obs.append((os.path.exists(j("a")), open(j("b"), "rb").read(), os.lstat(j("b")).st_ino == ino_a))
        # Across directories.
        os.rename(j("b"), j("d1", "b"))
        obs.append((sorted(os.listdir(root)), os.listdir(j("d1"))))
        # Directories across directories: parents' link counts follow.
        os.mkdir(j("d1", "sub"))
        os.rename(j("d1", "sub"), j("d2", "sub"))
        obs.append((os.lstat(j("d1")).st_nlink, os.lstat(j("d2")).st_nlink))
        obs.append(os.stat(j("d2", "sub", "..")).st_ino == os.stat(j("d2")).st_ino)
        # Over an empty directory.
        os.mkdir(j("empty"))
        os.rename(j("d2", "sub"), j("empty"))
        obs.append((os.path.isdir(j("empty")), os.lstat(j("d2")).st_nlink, os.lstat(root).st_nlink))
        # Errors.
        os.mkdir(j("full"))
        open(j("full", "x"), "w").close()
        os.mkdir(j("dir"))
        obs.append(err(lambda: os.rename(j("dir"), j("full"))))
        obs.append(err(lambda: os.rename(j("d1", "b"), j("dir"))))
        obs.append(err(lambda: os.rename(j("dir"), j("d1", "b"))))
        obs.append(err(lambda: os.rename(j("dir"), j("dir", "inside"))))
        os.mkdir(j("dir", "child"))
        obs.append(err(lambda: os.rename(j("dir"), j("dir", "child", "deeper"))))
        obs.append(err(lambda: os.rename(j("missing"), j("x"))))
        obs.append(err(lambda: os.rename(j("d1", "b"), j("missing-dir", "x"))))
        # Renaming one hard link over another does nothing: both names stay.
        os.link(j("d1", "b"), j("hl"))
        os.rename(j("hl"), j("d1", "b"))
        obs.append((os.path.exists(j("hl")), os.lstat(j("hl")).st_nlink))
        # Rename to itself.
        os.rename(j("dir"), j("dir"))
        obs.append(os.path.isdir(j("dir")))
        # Over a symlink: the link is replaced, not its target.
        os.symlink("d1/b", j("sl"))
        with open(j("new"), "w") as f:
            f.write("new")
        os.rename(j("new"), j("sl"))
        obs.append((kind(os.lstat(j("sl")).st_mode), open(j("d1", "b"), "rb").read()))
        obs.append(tree(root))
        return obs

    same(both, scenario)


def test_rename_over_open_file_keeps_old_content_readable(both):
    def scenario(root):
        a, b = os.path.join(root, "a"), os.path.join(root, "b")
        with open(a, "wb") as f:
            f.write(b"new content")
        with open(b, "wb") as f:
            f.write(pattern(300_000))
        fd = os.open(b, os.O_RDWR)
        os.rename(a, b)
        old = os.pread(fd, 300_000, 0)
        os.pwrite(fd, b"still writable", 1000)
        again = os.pread(fd, 20, 1000)
        nlink = os.fstat(fd).st_nlink
        os.close(fd)
        return hashlib.sha256(old).hexdigest(), again, nlink, open(b, "rb").read()

    same(both, scenario)


def llfuse_cannot(request, transport: str, why: str) -> None:
    """Mark the test an expected failure on llfuse, which binds libfuse 2.9."""
    if transport == "llfuse":
        request.applymarker(pytest.mark.xfail(strict=True, reason=why))


def test_rename_noreplace_and_exchange(both, request, transport):
    """renameat2(2) flags, which tmpfs supports (mv -n uses RENAME_NOREPLACE)."""
    llfuse_cannot(request, transport, "renameat2 flags: libfuse 2.9 has no RENAME2, so the "
                  "kernel answers EINVAL")
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD = -100
    RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2

    def renameat2(a: str, b: str, flags: int):
        if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def scenario(root):
        a, b, c = (os.path.join(root, n) for n in "abc")
        for p in (a, b):
            with open(p, "w") as f:
                f.write(os.path.basename(p))
        d = os.path.join(root, "d")
        os.mkdir(d)
        open(os.path.join(d, "inner"), "w").close()
        obs = [err(lambda: renameat2(a, b, RENAME_NOREPLACE)),
               err(lambda: renameat2(a, c, RENAME_NOREPLACE)),
               err(lambda: renameat2(b, c, RENAME_EXCHANGE)),
               err(lambda: renameat2(b, a, RENAME_EXCHANGE)),
               err(lambda: renameat2(c, d, RENAME_EXCHANGE)),   # a file and a directory
               err(lambda: renameat2(c, os.path.join(root, "none"), RENAME_EXCHANGE)),
               err(lambda: renameat2(c, b, RENAME_EXCHANGE | RENAME_NOREPLACE))]
        obs.append(tree(root))
        return obs

    same(both, scenario)


def test_o_tmpfile_as_tmpfs(both, request, transport):
    """open(dir, O_TMPFILE): a file no directory names, freed at its last
    close unless linkat(AT_EMPTY_PATH) names it; not linkable with O_EXCL."""
    llfuse_cannot(request, transport, "libfuse 2.9 has no TMPFILE: the kernel answers "
                  "EOPNOTSUPP")
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000

    def name_it(fd: int, path: str) -> None:
        if libc.linkat(fd, b"", AT_FDCWD, path.encode(), AT_EMPTY_PATH) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def scenario(root):
        j = lambda *p: os.path.join(root, *p)  # noqa: E731
        os.mkdir(j("d"))
        os.chmod(j("d"), 0o2775)                  # setgid: the file takes the group
        os.chown(j("d"), 0, 123)
        before = os.stat(j("d"))
        fd = os.open(j("d"), os.O_TMPFILE | os.O_RDWR, 0o640)
        os.write(fd, pattern(200_000))
        st = os.fstat(fd)
        obs = [(st.st_nlink, oct(st.st_mode), st.st_size, st.st_gid, st.st_blocks > 0),
               os.listdir(j("d")),
               os.stat(j("d")).st_mtime_ns == before.st_mtime_ns]
        name_it(fd, j("d", "named"))
        obs.append((os.fstat(fd).st_nlink, os.stat(j("d", "named")).st_ino == st.st_ino))
        os.pwrite(fd, b"after", 10)
        os.close(fd)
        with open(j("d", "named"), "rb") as f:
            obs.append(hashlib.sha256(f.read()).hexdigest())
        fd = os.open(j("d"), os.O_TMPFILE | os.O_WRONLY | os.O_EXCL, 0o600)
        obs.append(err(lambda: name_it(fd, j("d", "excl"))))
        os.close(fd)
        # A file never named is freed at close: its space comes back.
        free = os.statvfs(root).f_bfree
        fd = os.open(root, os.O_TMPFILE | os.O_RDWR, 0o600)
        os.write(fd, os.urandom(2 * MiB))
        obs.append(os.statvfs(root).f_bfree < free)
        os.close(fd)
        obs.append(os.statvfs(root).f_bfree == free)
        obs.append(err(lambda: os.open(j("d", "named"), os.O_TMPFILE | os.O_RDWR, 0o600)))
        obs.append(tree(root))
        return obs

    same(both, scenario)


def test_seek_data_and_hole(both, request, transport):
    """lseek SEEK_DATA / SEEK_HOLE, as tmpfs answers them at page granularity."""
    llfuse_cannot(request, transport, "libfuse 2.9 has no LSEEK: the kernel's generic "
                  "answer is one data extent up to the end")

    def scenario(root):
        p = os.path.join(root, "sparse")
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.pwrite(fd, b"x" * 5000, 3 * MiB + 100)
            os.pwrite(fd, b"y" * 10, 300 * KiB)
            os.ftruncate(fd, 8 * MiB)
            obs = []
            for off in (0, 4096, 300 * KiB + 5, 301 * KiB, 3 * MiB, 3 * MiB + 9000, 7 * MiB,
                        8 * MiB, 9 * MiB):
                obs.append((off, err(lambda: os.lseek(fd, off, os.SEEK_DATA)),
                            err(lambda: os.lseek(fd, off, os.SEEK_HOLE))))
            return obs
        finally:
            os.close(fd)

    same(both, scenario)


def _fallocate(fd: int, mode: int, off: int, length: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def test_fallocate_keep_size_and_punch_hole(both, request, transport):
    """fallocate(2) modes as tmpfs has them: allocate, KEEP_SIZE, PUNCH_HOLE."""
    llfuse_cannot(request, transport, "llfuse 1.5 has no fallocate handler: EOPNOTSUPP")
    KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE = 0x01, 0x02, 0x10

    def scenario(root):
        p = os.path.join(root, "f")
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            obs = []
            look = lambda: (os.fstat(fd).st_size, os.fstat(fd).st_blocks)  # noqa: E731
            obs.append(err(lambda: _fallocate(fd, 0, 5000, 100)))
            obs.append(look())
            obs.append(err(lambda: _fallocate(fd, KEEP_SIZE, 0, 64 * KiB)))
            obs.append(look())
            os.pwrite(fd, pattern(300 * KiB), 0)
            obs.append(err(lambda: _fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 1000, 5000)))
            obs.append(err(lambda: _fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 128 * KiB, 130 * KiB)))
            obs.append(look())
            obs.append(hashlib.sha256(os.pread(fd, 400 * KiB, 0)).hexdigest())
            obs.append(err(lambda: _fallocate(fd, PUNCH_HOLE, 0, 4096)))       # needs KEEP_SIZE
            obs.append(err(lambda: _fallocate(fd, ZERO_RANGE, 0, 4096)))
            obs.append(err(lambda: _fallocate(fd, 0, 0, 0)))
            obs.append((os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, 130 * KiB, os.SEEK_DATA)))
            return obs
        finally:
            os.close(fd)

    same(both, scenario)


def test_copy_file_range_as_tmpfs_and_shared_on_native(both, transport):
    """copy_file_range(2) copies as on tmpfs on both transports (on llfuse the
    kernel falls back to copying through the page cache). On native, whole
    stored blocks are shared: a 16 MiB copy adds no stored payload."""
    cct, ref = both()

    def scenario(root):
        src, dst = os.path.join(root, "src"), os.path.join(root, "dst")
        with open(src, "wb") as f:
            f.write(pattern(16 * MiB + 1000, seed=7))
        obs = []
        fi = os.open(src, os.O_RDONLY)
        fo = os.open(dst, os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            if root == cct:
                before = cct.stats(settle=True)["stored_bytes"]
            total = 0
            while True:
                n = os.copy_file_range(fi, fo, 64 * MiB, total, total)
                if n == 0:
                    break
                total = n + total
            obs.append(total)
            if root == cct and transport == "native":
                after = cct.stats(settle=True)
                # Every block is shared, the source's 1000-byte tail block too
                # (it ends both files); no byte is copied. Dedup alone would
                # share equal blocks only after copying and hashing them.
                c = after["counters"]
                assert (c["copy_shared_blocks"], c["copy_copied_bytes"]) == (16 * MiB // (128 * KiB) + 1, 0)
                assert after["stored_bytes"] - before < 64 * KiB, (before, after["stored_bytes"])
            obs.append(err(lambda: os.copy_file_range(fi, fo, 10, 20 * MiB, 0)))   # past the end
        finally:
            os.close(fi)
            os.close(fo)
        with open(dst, "r+b") as f:            # copy-on-write: the source keeps its bytes
            f.seek(5 * MiB)
            f.write(b"changed")
        for p in (src, dst):
            with open(p, "rb") as f:
                obs.append(hashlib.sha256(f.read()).hexdigest())
        obs.append(os.stat(dst).st_size)
        return obs

    check_same(scenario, cct, ref)


# ---- lifetimes -------------------------------------------------------------------

def test_unlinked_while_open_keeps_working(both):
    def scenario(root):
        p = os.path.join(root, "f")
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
        data = pattern(500_000)
        os.write(fd, data)
        os.unlink(p)
        obs = [os.path.exists(p), os.fstat(fd).st_nlink, os.fstat(fd).st_size]
        os.pwrite(fd, b"more", 600_000)
        os.ftruncate(fd, 700_000)
        obs.append(os.fstat(fd).st_size)
        obs.append(hashlib.sha256(os.pread(fd, 700_000, 0)).hexdigest())
        fd2 = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)   # reopen through /proc
        obs.append(os.pread(fd2, 4, 600_000))
        os.close(fd)
        obs.append(os.pread(fd2, 10, 0))
        os.close(fd2)
        # A fresh file with the same name is a different, empty file.
        open(p, "w").close()
        obs.append(os.lstat(p).st_size)
        return obs

    same(both, scenario)


def test_unlinked_open_file_is_freed_on_close(mount_cct, transport):
    mp = mount_cct()
    base = mp.stats(settle=True)
    free = os.statvfs(mp).f_bfree
    p = os.path.join(mp, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, os.urandom(2 * MiB))
    os.unlink(p)
    mid = mp.stats(settle=True)
    assert mid["inodes"] == base["inodes"] + 1
    assert mid["logical_bytes"] >= 2 * MiB
    assert os.pread(fd, 10, 2 * MiB - 10) != b""
    os.close(fd)
    # The space is back when close(2) returns, as on tmpfs. The data itself
    # stays until the kernel's FORGET, which comes a few ms later (a path
    # walk that found the name before the unlink may still open it): the
    # native transport holds the STATFS back for it; llfuse cannot, and its
    # figure is exact only once the FORGET came.
    if transport == "native":
        assert os.statvfs(mp).f_bfree == free
    deadline = time.monotonic() + 5
    while os.statvfs(mp).f_bfree != free:
        assert time.monotonic() < deadline, "the space of an unlinked file never came back"
        time.sleep(0.01)
    deadline = time.monotonic() + 5
    while True:
        s = mp.stats(settle=True)
        if s["inodes"] == base["inodes"] and s["logical_bytes"] == 0 and s["stored_bytes"] == 0:
            break
        assert time.monotonic() < deadline, f"unlinked file not freed after close: {s}"
        time.sleep(0.05)


def test_no_inode_or_space_leak(mount_cct, drop_caches):
    """Whatever was created and removed, by whatever path, nothing stays allocated."""
    mp = mount_cct("block_size=16k")
    j = lambda *p: os.path.join(mp, *p)  # noqa: E731
    for round_ in range(3):
        os.makedirs(j("a", "b", "c"))
        for i in range(200):
            with open(j("a", f"f{i}"), "wb") as f:
                f.write(pattern(20_000 + i, i))
            if i % 3 == 0:
                os.link(j("a", f"f{i}"), j("a", "b", f"h{i}"))
            if i % 5 == 0:
                os.symlink(f"f{i}", j("a", "b", "c", f"s{i}"))
            if i % 7 == 0:
                os.rename(j("a", f"f{i}"), j("a", "b", f"f{i - 7 if i >= 7 else i}"))
        fds = [os.open(j("a", "b", f"h{i}"), os.O_RDWR) for i in range(0, 200, 30)]
        os.mkfifo(j("a", "fifo"))
        os.mknod(j("a", "dev"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        drop_caches()
        subprocess.run(["rm", "-rf", j("a")], check=True)
        for fd in fds:
            os.pwrite(fd, b"still here", 0)
            os.close(fd)
        drop_caches()   # the kernel forgets the inodes it looked up
        deadline = time.monotonic() + 5
        while True:
            s = mp.stats(settle=True)
            if (s["inodes"], s["logical_bytes"], s["stored_bytes"], s["buffer_bytes"]) == (1, 0, 0, 0):
                break
            assert time.monotonic() < deadline, f"round {round_}: leaked {s}"
            time.sleep(0.05)
        assert os.listdir(mp) == []
        st = os.statvfs(mp)
        assert st.f_bfree == st.f_blocks


# ---- attributes ------------------------------------------------------------------

def test_chmod_chown_utime(both):
    def scenario(root):
        obs = []
        p = os.path.join(root, "f")
        with open(p, "w") as f:
            f.write("x")
        os.chmod(p, 0o4751)
        obs.append(describe(p))
        os.chmod(p, 0o7777)
        obs.append(describe(p))
        os.chown(p, 1234, 5678)
        obs.append(describe(p))   # chown clears set-user-ID and set-group-ID
        os.chmod(p, 0o2755)
        os.chown(p, -1, 42)
        obs.append(describe(p))
        for ns in ((1_500_000_000_123_456_789, 1_400_000_000_987_654_321),
                   (0, 1), (-1_000_000_000, -2_500_000_000), (2 ** 33 * 10 ** 9, 2 ** 34 * 10 ** 9)):
            os.utime(p, ns=ns)
            st = os.lstat(p)
            obs.append((st.st_atime_ns, st.st_mtime_ns))
        # touch -m / -a change one time and leave the other (UTIME_OMIT).
        subprocess.run(["touch", "-m", "-d", "@1000000000.5", p], check=True)
        subprocess.run(["touch", "-a", "-d", "@1200000000.25", p], check=True)
        st = os.lstat(p)
        obs.append((st.st_atime_ns, st.st_mtime_ns))
        subprocess.run(["touch", "-m", p], check=True)
        st = os.lstat(p)
        obs.append((st.st_atime_ns, st.st_mtime_ns > 1_600_000_000 * 10 ** 9))
        # ctime moves on chmod; utime(NULL) sets both to "now".
        before = os.lstat(p).st_ctime_ns
        time.sleep(0.01)
        os.chmod(p, 0o600)
        obs.append(os.lstat(p).st_ctime_ns > before)
        t0 = time.time_ns()
        os.utime(p)
        st = os.lstat(p)
        obs.append(abs(st.st_mtime_ns - t0) < 5 * 10 ** 9 and st.st_atime_ns == st.st_mtime_ns)
        # Directories and symlinks too.
        d = os.path.join(root, "d")
        os.mkdir(d)
        os.chmod(d, 0o1700)
        os.chown(d, 7, 8)
        os.symlink("f", os.path.join(root, "l"))
        os.chown(os.path.join(root, "l"), 9, 10, follow_symlinks=False)
        obs.append((describe(d), describe(os.path.join(root, "l")), describe(p)))
        return obs

    same(both, scenario)


def _ftruncate(fd: int, size: int) -> int:
    os.ftruncate(fd, size)
    return fd


def test_timestamps_follow_changes(both):
    """Which operations move mtime/ctime (values differ, the pattern must not)."""

    def scenario(root):
        obs = []
        d = os.path.join(root, "d")
        os.mkdir(d)
        p = os.path.join(d, "f")
        with open(p, "w") as f:
            f.write("x")

        def step(name, fn, path):
            os.utime(path, ns=(10 ** 9, 10 ** 9))    # reset: any change is visible
            ct = os.lstat(path).st_ctime_ns
            # More than one jiffy: tmpfs takes ctime from the coarse clock
            # (4 ms at HZ=250), so a shorter pause can leave it unchanged.
            time.sleep(0.02)
            fn()
            st = os.lstat(path)
            obs.append((name, st.st_mtime_ns != 10 ** 9, st.st_ctime_ns != ct))

        step("write", lambda: open(p, "a").write("y"), p)
        step("truncate", lambda: os.truncate(p, 100), p)
        step("truncate-same", lambda: os.truncate(p, 100), p)
        step("ftruncate-same", lambda: os.close(_ftruncate(os.open(p, os.O_RDWR), 100)), p)
        step("open-trunc", lambda: open(p, "w").close(), p)
        step("open-trunc-empty", lambda: open(p, "w").close(), p)
        step("write-empty", lambda: open(p, "a").write(""), p)
        step("chmod", lambda: os.chmod(p, 0o600), p)
        step("chown-same", lambda: os.chown(p, -1, -1), p)
        step("create-in-dir", lambda: open(os.path.join(d, "g"), "w").close(), d)
        step("unlink-in-dir", lambda: os.unlink(os.path.join(d, "g")), d)
        step("link", lambda: os.link(p, os.path.join(d, "h")), p)
        step("rename", lambda: os.rename(os.path.join(d, "h"), os.path.join(d, "i")), p)
        step("setxattr", lambda: os.setxattr(p, "user.x", b"1"), p)
        step("read", lambda: open(p).read(), p)
        return obs

    same(both, scenario)


def test_timestamps_never_go_backwards(both):
    """Issue 14: `touch` right after a write set an mtime 4 ms before the
    write's, because the kernel's "now" is its coarse clock. Back-to-back
    creates, writes, touches, renames, chmods, truncates and links, with no
    pause: on tmpfs and on cctmpfs no mtime or ctime of the file or of its
    directory ever decreases, and ctime is never before mtime."""

    def scenario(root):
        d = os.path.join(root, "d")
        os.mkdir(d)
        seen = {}      # path -> (mtime, ctime) last seen
        obs = []

        def look(op, path):
            st = os.lstat(path)
            m0, c0 = seen.get(path, (0, 0))
            obs.append((op, st.st_mtime_ns < m0, st.st_ctime_ns < c0,
                        st.st_ctime_ns < st.st_mtime_ns))
            seen[path] = (st.st_mtime_ns, st.st_ctime_ns)

        for i in range(40):
            p = os.path.join(d, "f%d" % (i % 3))
            with open(p, "a") as f:
                f.write("x" * (i + 1))
            look("write", p)
            look("dir-after-create", d)
            os.utime(p)                        # UTIME_NOW: the kernel's clock
            look("utime-now", p)
            with open(p, "a") as f:
                f.write("y")
            look("write-after-utime", p)
            subprocess.run(["touch", p], check=True) if i % 10 == 0 else os.utime(p, None)
            look("touch", p)
            os.chmod(p, 0o600 if i % 2 else 0o644)
            look("chmod", p)
            os.truncate(p, i)
            look("truncate", p)
            q = os.path.join(d, "renamed")
            os.rename(p, q)
            look("rename", q)
            look("dir-after-rename", d)
            os.link(q, p)
            look("link", p)
            os.unlink(q)
            seen.pop(q)
            look("unlink-other-name", p)
            os.setxattr(p, "user.n", b"%d" % i)
            look("setxattr", p)
            os.utime(d)
            look("dir-utime-now", d)
        return obs

    obs = same(both, scenario)
    assert not [o for o in obs if any(o[1:])]


def test_a_change_after_a_look_gets_a_newer_timestamp(both, transport):
    """Multigrain timestamps (tmpfs since Linux 6.13, clock.py): a file
    written, stat'ed and written again within one 4 ms tick gets two
    distinct mtimes; a source rewritten (truncate, stat, write) after its
    target was written is newer than the target, so make rebuilds. Back to
    back, no pause: with coarse stamps most pairs were equal."""
    if transport != "native":
        pytest.skip("llfuse: the kernel's coarse 'now' arrives as an explicit time (clock.py)")

    def rewrite(path, data):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.fstat(fd)                       # what open() in Python and most tools do
        os.write(fd, data)
        os.close(fd)

    def scenario(root):
        f, t, s = (os.path.join(root, n) for n in ("f", "target", "source"))
        same_file = target_not_older = 0
        fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
        for i in range(200):
            os.pwrite(fd, b"x", 0)
            m0 = os.fstat(fd).st_mtime_ns
            os.pwrite(fd, b"y", 0)
            same_file += os.fstat(fd).st_mtime_ns == m0
            rewrite(t, b"built")
            rewrite(s, b"edited")
            target_not_older += os.stat(t).st_mtime_ns >= os.stat(s).st_mtime_ns
        os.close(fd)
        return same_file, target_not_older

    assert same(both, scenario) == (0, 0)


def test_setgid_directories(both):
    def scenario(root):
        obs = []
        d = os.path.join(root, "shared")
        os.mkdir(d)
        os.chown(d, 0, 4321)
        os.chmod(d, 0o2775)
        open(os.path.join(d, "file"), "w").close()
        os.mkdir(os.path.join(d, "sub"), 0o755)
        os.mkfifo(os.path.join(d, "fifo"))
        os.symlink("file", os.path.join(d, "link"))
        for name in ("file", "sub", "fifo", "link"):
            obs.append((name, describe(os.path.join(d, name))))
        # Grandchildren inherit through the setgid subdirectory.
        open(os.path.join(d, "sub", "deep"), "w").close()
        obs.append(describe(os.path.join(d, "sub", "deep")))
        # Without setgid, the creator's group.
        os.chmod(d, 0o775)
        open(os.path.join(d, "plain"), "w").close()
        obs.append(describe(os.path.join(d, "plain")))
        return obs

    same(both, scenario)


def as_user(uid: int, gid: int, fn: Callable[[], Any]) -> Any:
    """Run fn in a forked child with the given uid/gid; returns its result or errno name."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            out = repr(err(fn))
        except BaseException as e:  # noqa: BLE001
            out = repr(f"child failed: {e!r}")
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return eval(text)  # noqa: S307 - our own repr of plain values


@pytest.mark.parametrize("cct_options", ["", "allow_other"], ids=["default", "allow_other"])
def test_permissions_and_sticky_root(both, cct_options):
    """Other users use the mount as they use a tmpfs (a /tmp is for everyone)."""

    def scenario(root):
        obs = [describe(root)]
        mine = os.path.join(root, "mine")
        with open(mine, "w") as f:
            f.write("secret")
        os.chown(mine, 1001, 1001)
        os.chmod(mine, 0o600)
        # Another user cannot read, remove or rename it in the sticky root...
        obs.append(as_user(1002, 1002, lambda: open(mine).read()))
        obs.append(as_user(1002, 1002, lambda: os.unlink(mine)))
        obs.append(as_user(1002, 1002, lambda: os.rename(mine, os.path.join(root, "stolen"))))
        # ...the owner can, and can create files there.
        obs.append(as_user(1001, 1001, lambda: open(mine).read()))
        obs.append(as_user(1001, 1001, lambda: open(os.path.join(root, "own"), "w").write("x")))
        obs.append(err(lambda: describe(os.path.join(root, "own"))))
        obs.append(as_user(1002, 1002, lambda: os.chmod(os.path.join(root, "own"), 0o777)))
        obs.append(as_user(1001, 1001, lambda: os.unlink(mine)))
        # A non-sticky 0755 directory refuses other users entirely.
        d = os.path.join(root, "d")
        os.mkdir(d, 0o755)
        obs.append(as_user(1002, 1002, lambda: open(os.path.join(d, "x"), "w").close()))
        # Writing to someone else's set-user-ID file drops the set-ID bits.
        suid = os.path.join(root, "suid")
        with open(suid, "w") as f:
            f.write("x")
        os.chown(suid, 1001, 1001)
        os.chmod(suid, 0o6777)
        obs.append(as_user(1002, 1002, lambda: open(suid, "a").write("more")))
        obs.append(err(lambda: describe(suid)))
        # Times: "now" needs write permission, explicit times need ownership.
        os.chmod(suid, 0o666)
        obs.append(as_user(1002, 1002, lambda: os.utime(suid)))
        obs.append(as_user(1002, 1002, lambda: os.utime(suid, (1, 1))))
        # chmod g+s by a non-member of the group drops the bit; setgid dirs strip
        # S_ISGID from files created by non-members.
        os.chown(suid, 1002, 1001)
        obs.append(as_user(1002, 1002, lambda: os.chmod(suid, 0o2755)))
        obs.append(err(lambda: describe(suid)))
        sg = os.path.join(root, "sgdir")
        os.mkdir(sg)
        os.chown(sg, 0, 4000)
        os.chmod(sg, 0o2777)
        obs.append(as_user(1002, 1002, lambda: os.close(
            os.open(os.path.join(sg, "f"), os.O_CREAT | os.O_WRONLY, 0o2755))))
        obs.append(err(lambda: describe(os.path.join(sg, "f"))))
        obs.append(as_user(1002, 1002, lambda: os.mkdir(os.path.join(sg, "sub"), 0o755)))
        obs.append(err(lambda: describe(os.path.join(sg, "sub"))))
        return obs

    same(both, scenario, cct_options, "")


def test_default_root_is_sticky_1777(both):
    def scenario(root):
        st = os.lstat(root)
        return oct(st.st_mode), st.st_uid, st.st_gid, st.st_nlink

    got = same(both, scenario, "", "")
    assert got[0] == oct(stat.S_IFDIR | 0o1777)


@pytest.mark.parametrize("opts", ["mode=0700,uid=1234,gid=5678", "mode=755", "mode=2770,gid=100",
                                  "uid=65534"])
def test_root_mode_uid_gid_options(both, opts):
    def scenario(root):
        st = os.lstat(root)
        return oct(st.st_mode), st.st_uid, st.st_gid

    same(both, scenario, opts, opts)


# ---- xattrs ----------------------------------------------------------------------

def test_xattrs(both):
    def scenario(root):
        obs = []
        p = os.path.join(root, "f")
        open(p, "w").close()
        d = os.path.join(root, "d")
        os.mkdir(d)
        for target in (p, d):
            for ns in ("user", "trusted", "security"):
                name = f"{ns}.test"
                obs.append(err(lambda: os.setxattr(target, name, b"v1")))
                obs.append(err(lambda: os.getxattr(target, name)))
                obs.append(err(lambda: os.setxattr(target, name, b"v2", os.XATTR_CREATE)))
                obs.append(err(lambda: os.setxattr(target, name, b"v3", os.XATTR_REPLACE)))
                obs.append(err(lambda: os.getxattr(target, name)))
                obs.append(err(lambda: os.setxattr(target, name + "2", b"x", os.XATTR_REPLACE)))
                obs.append(err(lambda: os.setxattr(target, name + "2", b"x", os.XATTR_CREATE)))
                obs.append(err(lambda: os.getxattr(target, name + "2")))
                obs.append(err(lambda: os.getxattr(target, name + "-missing")))
                obs.append(err(lambda: os.removexattr(target, name + "-missing")))
            obs.append(sorted(os.listxattr(target)))
            obs.append(err(lambda: os.setxattr(target, "user.empty", b"")))
            obs.append(err(lambda: os.getxattr(target, "user.empty")))
            obs.append(err(lambda: os.setxattr(target, "user.big", bytes(range(256)) * 256)))
            obs.append(hashlib.sha256(os.getxattr(target, "user.big")).hexdigest())
            obs.append(err(lambda: os.setxattr(target, "user." + "n" * 250, b"long name")))
            obs.append(err(lambda: os.setxattr(target, "user." + "n" * 251, b"too long")))
            obs.append(err(lambda: os.setxattr(target, "bogus.x", b"1")))
            obs.append(err(lambda: os.getxattr(target, "bogus.x")))
            obs.append(err(lambda: os.setxattr(target, "user.", b"1")))
            for name in sorted(os.listxattr(target)):
                os.removexattr(target, name)
            obs.append(os.listxattr(target))
        # user.* is not allowed on symlinks; trusted.* is.
        os.symlink("f", os.path.join(root, "l"))
        lnk = os.path.join(root, "l")
        obs.append(err(lambda: os.setxattr(lnk, "user.x", b"1", follow_symlinks=False)))
        obs.append(err(lambda: os.setxattr(lnk, "trusted.x", b"1", follow_symlinks=False)))
        obs.append(err(lambda: os.getxattr(lnk, "trusted.x", follow_symlinks=False)))
        # user.* is not allowed on special files either.
        os.mkfifo(os.path.join(root, "fifo"))
        os.mknod(os.path.join(root, "dev"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        for special in ("fifo", "dev"):
            sp = os.path.join(root, special)
            obs.append(err(lambda: os.setxattr(sp, "user.x", b"1")))
            obs.append(err(lambda: os.setxattr(sp, "trusted.x", b"1")))
            obs.append(err(lambda: sorted(os.listxattr(sp))))
        # Hard links share xattrs; a renamed file keeps them.
        os.setxattr(p, "user.keep", b"k")
        os.link(p, os.path.join(root, "hl"))
        os.rename(p, os.path.join(root, "moved"))
        obs.append(os.getxattr(os.path.join(root, "hl"), "user.keep"))
        return obs

    same(both, scenario)


def test_posix_acls_are_refused(mount_cct):
    mp = mount_cct()
    p = os.path.join(mp, "f")
    open(p, "w").close()
    # A minimal valid ACL (user::rw-, group::r--, other::r--) in the xattr format.
    import struct
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                           for tag, perm in ((1, 6), (4, 4), (0x20, 4)))
    cases = [("system.posix_acl_access", p), ("system.posix_acl_access", mp),
             ("system.posix_acl_default", mp)]
    for name, target in cases:
        with pytest.raises(OSError) as e:
            os.setxattr(target, name, acl)
        assert e.value.errno == errno.EOPNOTSUPP, (name, target)
        with pytest.raises(OSError) as e:
            os.getxattr(target, name)
        assert e.value.errno in (errno.EOPNOTSUPP, errno.ENODATA), (name, target)
    # chmod still works (no ACL to keep in sync).
    os.chmod(p, 0o640)
    assert stat.S_IMODE(os.lstat(p).st_mode) == 0o640
    assert os.listxattr(p) == []


# ---- statfs, names ---------------------------------------------------------------

def test_statfs_follows_size_and_nr_inodes(both):
    def scenario(root):
        obs = []
        s = os.statvfs(root)
        obs.append((s.f_blocks * s.f_frsize, s.f_files, s.f_namemax, s.f_bfree == s.f_blocks,
                    s.f_ffree == s.f_files - 1))
        for i in range(10):
            open(os.path.join(root, f"f{i}"), "w").close()
        s2 = os.statvfs(root)
        obs.append(s.f_ffree - s2.f_ffree)
        with open(os.path.join(root, "f0"), "wb") as f:
            f.write(os.urandom(MiB))
        s3 = os.statvfs(root)
        obs.append(((s2.f_bfree - s3.f_bfree) * s3.f_frsize, s3.f_bavail == s3.f_bfree))
        os.unlink(os.path.join(root, "f0"))
        return obs

    same(both, scenario, "size=100m,nr_inodes=1000", "size=100m,nr_inodes=1000")


def test_statfs_namemax_and_block_size(mount_cct):
    mp = mount_cct("size=1g,nr_inodes=5000")
    s = os.statvfs(mp)
    assert s.f_namemax == 255
    assert s.f_blocks * s.f_frsize == GiB
    assert s.f_files == 5000


def test_name_length_limits(both):
    def scenario(root):
        obs = []
        ok, bad = "n" * 255, "n" * 256
        j = lambda n: os.path.join(root, n)  # noqa: E731
        for name in (ok, bad):
            obs.append(err(lambda: os.close(os.open(j(name), os.O_CREAT | os.O_WRONLY))))
            obs.append(err(lambda: os.lstat(j(name)).st_size))
        obs.append(err(lambda: os.mkdir(j("d" * 255))))
        obs.append(err(lambda: os.mkdir(j("d" * 256))))
        obs.append(err(lambda: os.symlink("t", j("s" * 255))))
        obs.append(err(lambda: os.symlink("t", j("s" * 256))))
        obs.append(err(lambda: os.link(j(ok), j("l" * 255))))
        obs.append(err(lambda: os.link(j(ok), j("l" * 256))))
        obs.append(err(lambda: os.rename(j(ok), j("r" * 256))))
        obs.append(err(lambda: os.rename(j(ok), j("r" * 255))))
        obs.append(err(lambda: os.mkfifo(j("f" * 256))))
        obs.append(err(lambda: os.unlink(j("r" * 256))))
        # Multibyte: 85 three-byte characters = 255 bytes; one more is too long.
        obs.append(err(lambda: os.mkdir(j("\u20ac" * 85))))
        obs.append(err(lambda: os.mkdir(j("\u20ac" * 85 + "x"))))
        obs.append(sorted(len(n.encode()) for n in os.listdir(root)))
        return obs

    same(both, scenario)


# ---- file data -------------------------------------------------------------------

def test_sparse_files(both, drop_caches):
    def scenario(root):
        obs = []
        p = os.path.join(root, "sparse")
        with open(p, "wb") as f:
            f.seek(GiB)
            f.write(b"end")
        st = os.lstat(p)
        obs.append((st.st_size, st.st_blocks * 512 <= 256 * KiB))
        drop_caches()
        with open(p, "rb") as f:
            obs.append(f.read(4096) == bytes(4096))
            f.seek(GiB - 5)
            obs.append(f.read(100))
        before = os.statvfs(root)
        with open(os.path.join(root, "huge"), "wb") as f:
            f.truncate(2 ** 50)            # 1 PiB: nothing allocated
        st = os.lstat(os.path.join(root, "huge"))
        after = os.statvfs(root)
        obs.append((st.st_size, st.st_blocks, before.f_bfree - after.f_bfree))
        with open(os.path.join(root, "huge"), "rb") as f:
            f.seek(2 ** 49)
            obs.append(f.read(10))
            f.seek(2 ** 50 - 3)
            obs.append(f.read(10))
        du = subprocess.run(["du", "-sk", root], capture_output=True, text=True).stdout.split()[0]
        obs.append(int(du) < 1024)
        return obs

    same(both, scenario)


def test_sparse_blocks_count(mount_cct):
    mp = mount_cct("block_size=16k")
    p = os.path.join(mp, "s")
    with open(p, "wb") as f:
        for off in range(0, 100 * MiB, 10 * MiB):
            f.seek(off)
            f.write(b"x" * 100)
    st = os.lstat(p)
    assert st.st_blocks * 512 <= 10 * 16 * KiB
    # Zero-filled blocks cost nothing once sealed either.
    z = os.path.join(mp, "zeros")
    with open(z, "wb") as f:
        f.write(bytes(4 * MiB))
    s = mp.stats(settle=True)
    assert s["stored_bytes"] < 64 * KiB, s


def test_files_larger_than_4gib(both, drop_caches):
    def scenario(root):
        p = os.path.join(root, "big")
        data = pattern(300_000, seed=5)
        with open(p, "wb") as f:
            f.seek(5 * GiB)
            f.write(data)
            f.seek(2 ** 32 - 1000)         # straddling the 32-bit boundary
            f.write(b"boundary" * 500)
        drop_caches()
        obs = [os.lstat(p).st_size]
        with open(p, "rb") as f:
            f.seek(5 * GiB)
            obs.append(f.read() == data)
            f.seek(2 ** 32 - 1000)
            obs.append(f.read(4000) == b"boundary" * 500)
            f.seek(3 * GiB)
            obs.append(f.read(16) == bytes(16))
        os.truncate(p, 5 * GiB + 7)
        with open(p, "rb") as f:
            f.seek(5 * GiB)
            obs.append(f.read())
        return obs

    same(both, scenario, "size=8g", "size=8g")


def test_truncate_up_and_down(both, drop_caches):
    def scenario(root):
        obs = []
        p = os.path.join(root, "t")
        data = pattern(1 * MiB, seed=3)
        with open(p, "wb") as f:
            f.write(data)
        for size in (1 * MiB + 12345, 700_001, 700_001, 131072, 131071, 16384 * 3 + 1, 1,
                     0, 5, 3 * MiB, 100):
            os.truncate(p, size)
            if size % 3 == 0:
                drop_caches()
            with open(p, "rb") as f:
                content = f.read()
            obs.append((size, os.lstat(p).st_size, hashlib.sha256(content).hexdigest()))
        with open(p, "r+b") as f:
            f.truncate(50_000)
            f.seek(60_000)
            f.write(b"tail")
        with open(p, "rb") as f:
            obs.append(hashlib.sha256(f.read()).hexdigest())
        obs.append(err(lambda: os.truncate(p, -1)))
        obs.append(err(lambda: os.truncate(os.path.join(root, ""), 0)))
        return obs

    same(both, scenario)


def test_truncate_cuts_stored_blocks(mount_cct, tmpfs_mount, drop_caches):
    """Truncates that cut inside sealed (compressed) 16 KiB blocks."""
    cct, ref = mount_cct("block_size=16k,buffer=64k"), tmpfs_mount()

    def scenario(root):
        obs = []
        p = os.path.join(root, "t")
        with open(p, "wb") as f:
            f.write(pattern(400_000, seed=9))
        for size in (300_001, 200_000, 16384 * 5 + 100, 16384 * 5, 7, 250_000):
            if root == cct:
                os.getxattr(cct, "trusted.cctmpfs.stats-settled")
            os.truncate(p, size)
            drop_caches()
            with open(p, "rb") as f:
                obs.append(hashlib.sha256(f.read()).hexdigest())
        return obs

    check_same(scenario, cct, ref)


def test_o_append(both):
    def scenario(root):
        p = os.path.join(root, "log")
        with open(p, "wb") as f:
            f.write(b"start\n")
        fds = [os.open(p, os.O_WRONLY | os.O_APPEND) for _ in range(2)]
        for i in range(50):
            os.write(fds[i % 2], b"line %d from fd %d\n" % (i, i % 2))
        os.pwrite(fds[0], b"pwrite ignores the offset with O_APPEND\n", 0)
        os.lseek(fds[1], 0, os.SEEK_SET)
        os.write(fds[1], b"and so does lseek\n")
        # Someone else truncates: appends go to the new end.
        os.truncate(p, 10)
        os.write(fds[0], b"|after truncate")
        pos = os.lseek(fds[0], 0, os.SEEK_CUR)
        for fd in fds:
            os.close(fd)
        with open(p, "rb") as f:
            return f.read(), pos

    same(both, scenario)


def test_mmap_shared_writes(both, drop_caches):
    def scenario(root):
        p = os.path.join(root, "m")
        with open(p, "wb") as f:
            f.write(pattern(256 * KiB))
        with open(p, "r+b") as f:
            mm = mmap.mmap(f.fileno(), 0)
            mm[1000:1010] = b"0123456789"
            mm[200_000:200_004] = b"MMAP"
            mm.flush()
            mm.close()
        drop_caches()
        with open(p, "rb") as f:
            data = f.read()
        return data[995:1015], data[199_998:200_006], hashlib.sha256(data).hexdigest()

    same(both, scenario)


def test_blksize_is_the_block_size(mount_cct):
    for opts, bs in (("", 131072), ("block_size=16k", 16384), ("block_size=1m", 1048576)):
        mp = mount_cct(opts)
        p = os.path.join(mp, "f")
        open(p, "w").close()
        assert os.lstat(p).st_blksize == bs
        assert os.lstat(mp).st_blksize == bs


def test_inode_numbers_unique_and_stable(mount_cct, drop_caches):
    mp = mount_cct()
    inos = {}
    for i in range(100):
        d = os.path.join(mp, f"d{i % 10}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"f{i}")
        open(p, "w").close()
        inos[p] = os.lstat(p).st_ino
    for i in range(10):
        d = os.path.join(mp, f"d{i}")
        inos[d] = os.lstat(d).st_ino
    os.symlink("x", os.path.join(mp, "sym"))
    inos[os.path.join(mp, "sym")] = os.lstat(os.path.join(mp, "sym")).st_ino
    assert len(set(inos.values())) == len(inos)
    assert os.lstat(mp).st_ino not in inos.values()
    # Stable across the kernel forgetting them (drop_caches evicts the inodes).
    drop_caches()
    for p, ino in inos.items():
        assert os.lstat(p).st_ino == ino
    # Stable across rename; a hard link shares it; a new file gets a fresh one.
    a = os.path.join(mp, "d0", "f0")
    os.rename(a, os.path.join(mp, "renamed"))
    assert os.lstat(os.path.join(mp, "renamed")).st_ino == inos[a]
    os.link(os.path.join(mp, "renamed"), os.path.join(mp, "hl"))
    assert os.lstat(os.path.join(mp, "hl")).st_ino == inos[a]
    open(os.path.join(mp, "new"), "w").close()
    assert os.lstat(os.path.join(mp, "new")).st_ino not in inos.values()
    # Live inode numbers stay unique while files come and go.
    for i in range(200):
        p = os.path.join(mp, f"churn{i}")
        open(p, "w").close()
        if i % 2:
            os.unlink(p)
    live = [os.lstat(os.path.join(r, n)).st_ino for r, ds, fs in os.walk(mp) for n in ds + fs]
    hard_linked = 1
    assert len(live) - len(set(live)) == hard_linked


# ---- limits ----------------------------------------------------------------------

def fill(path: str, chunk: bytes) -> tuple[int, Optional[str]]:
    """Write chunk repeatedly until an error; returns (bytes written, errno name)."""
    written = 0
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        while True:
            try:
                n = os.write(fd, chunk)
            except OSError as e:
                return written, errno.errorcode[e.errno]
            written += n
            if n < len(chunk):
                continue
    finally:
        os.close(fd)


@pytest.mark.parametrize("data", ["random", "text"])
def test_enospc_at_size_keeps_existing_files(both, drop_caches, data):
    def scenario(root):
        keep = {}
        for i in range(5):
            p = os.path.join(root, f"keep{i}")
            content = os.urandom(100_000) if data == "random" else pattern(100_000, i)
            with open(p, "wb") as f:
                f.write(content)
            keep[p] = content
        chunk = os.urandom(64 * KiB) if data == "random" else pattern(64 * KiB, 99)
        written, e = fill(os.path.join(root, "filler"), chunk)
        obs = [e]
        s = os.statvfs(root)
        obs.append(s.f_bavail)
        # Another small write fails too; creating an empty file still works.
        # (os.write, not a buffered file: Python sizes its buffer from
        # st_blksize, 128 KiB here and 4 KiB on tmpfs, so a buffered 8 KiB
        # write would only fail at close on cctmpfs.)
        def write_more():
            fd = os.open(os.path.join(root, "more"), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                return os.write(fd, os.urandom(8192))
            finally:
                os.close(fd)
        obs.append(err(write_more))
        drop_caches()
        for p, content in keep.items():
            with open(p, "rb") as f:
                obs.append(f.read() == content)
        # The filler holds what was written.
        with open(os.path.join(root, "filler"), "rb") as f:
            got = f.read()
        obs.append(len(got) == written)
        obs.append(got == (chunk * (written // len(chunk) + 1))[:written])
        # Space comes back after removing it.
        os.unlink(os.path.join(root, "filler"))
        with open(os.path.join(root, "again"), "wb") as f:
            f.write(chunk * 8)
        obs.append(os.lstat(os.path.join(root, "again")).st_size)
        # tmpfs lets exactly size= bytes be allocated (a last short write fills it).
        obs.append(("filler bytes", written))
        return obs

    same(both, scenario, "size=2m", "size=2m")


def test_enospc_at_nr_inodes_keeps_existing_files(both, drop_caches):
    def scenario(root):
        obs = []
        made = []
        for i in range(100):
            p = os.path.join(root, f"f{i}")
            try:
                with open(p, "wb") as f:
                    f.write(b"content %d" % i)
            except OSError as e:
                obs.append((i, errno.errorcode[e.errno]))
                break
            made.append(p)
        obs.append(err(lambda: os.mkdir(os.path.join(root, "d"))))
        obs.append(err(lambda: os.symlink("x", os.path.join(root, "s"))))
        obs.append(err(lambda: os.mkfifo(os.path.join(root, "p"))))
        # tmpfs counts a hard link against nr_inodes too (each pins a dentry).
        hl = os.path.join(root, "hardlink")
        obs.append(err(lambda: os.link(made[0], hl)))
        drop_caches()
        obs.append(all(open(p, "rb").read() == b"content %d" % i for i, p in enumerate(made)))
        s = os.statvfs(root)
        obs.append((s.f_files, s.f_ffree))
        # Freeing one inode makes room for exactly one more, at once.
        os.unlink(made[-1])
        if os.path.lexists(hl):
            os.unlink(hl)
        obs.append(err(lambda: os.mkdir(os.path.join(root, "d"))))
        obs.append(err(lambda: os.mkdir(os.path.join(root, "d2"))))
        return obs

    same(both, scenario, "nr_inodes=20", "nr_inodes=20")


def test_write_error_leaves_file_unchanged_on_efbig(both):
    def scenario(root):
        p = os.path.join(root, "f")
        with open(p, "wb") as f:
            f.write(b"abc")
        fd = os.open(p, os.O_WRONLY)
        try:
            e = err(lambda: os.pwrite(fd, b"x", 2 ** 63 - 1))
            e2 = err(lambda: os.ftruncate(fd, 2 ** 63 - 1))
        finally:
            os.close(fd)
        with open(p, "rb") as f:
            return e, e2, os.lstat(p).st_size, f.read(10)

    same(both, scenario)


def test_sparse_writes_inside_blocks_allocate_pages(both):
    """tmpfs allocates (and du, st_blocks and size= count) only the pages written."""

    def scenario(root):
        obs = []
        p = os.path.join(root, "scattered")
        with open(p, "wb") as f:
            for off in (100_000, 1 * MiB + 70_000, 5 * MiB + 4096 * 30 + 17):
                f.seek(off)
                f.write(b"x")
        obs.append(os.lstat(p).st_blocks)
        s = os.statvfs(root)
        obs.append((s.f_blocks - s.f_bfree) * s.f_frsize)
        return obs

    same(both, scenario, "size=64m,block_size=128k", "size=64m")
