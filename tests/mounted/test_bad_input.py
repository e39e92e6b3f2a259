"""Bad and extreme input through the kernel, on cctmpfs and on a real tmpfs
side by side: names of every byte, invalid UTF-8, 255 and 256 bytes; xattr
names and values at and past their limits; offsets and sizes near 2**63.
Every answer must be tmpfs's, and the daemon must count no internal error
(the mount fixture checks that and the invariant checker at teardown)."""

from __future__ import annotations

import errno
import os

import pytest

pytestmark = pytest.mark.mounted

MAX_LFS = 2 ** 63 - 1


def attempt(fn, *args):  # type: ignore[no-untyped-def]
    try:
        r = fn(*args)
        return ("ok", r if isinstance(r, (int, bytes, str, list, tuple)) or r is None else "value")
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def names_workload(root: str) -> dict:
    r = os.fsencode(root)
    out: dict = {}
    every = bytes(b for b in range(1, 256) if b != ord("/"))        # 254 bytes
    names = [bytes([b]) for b in range(1, 256) if b not in (ord("/"), ord("."))]
    names += [every, b"\xff\xfe\xfd invalid utf-8", b"\xc3\x28", b".hidden", b"...", b" ",
              b"x" * 255, b"tab\there", b"new\nline"]
    for n in names:
        p = r + b"/" + n
        out[n.hex()] = (attempt(lambda: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))),
                        attempt(lambda: os.stat(p).st_size))
    out["listed"] = sorted(n.hex() for n in os.listdir(r))
    out["256"] = attempt(lambda: os.open(r + b"/" + b"y" * 256, os.O_CREAT | os.O_WRONLY, 0o644))
    out["mkdir-256"] = attempt(os.mkdir, r + b"/" + b"z" * 256)
    out["rename-to-256"] = attempt(os.rename, r + b"/" + b"x" * 255, r + b"/" + b"w" * 256)
    out["symlink-4095"] = attempt(os.symlink, b"t" * 4095, r + b"/sl1")
    out["symlink-4096"] = attempt(os.symlink, b"t" * 4096, r + b"/sl2")
    out["dot"] = attempt(os.mkdir, r + b"/.")
    out["dotdot-unlink"] = attempt(os.unlink, r + b"/..")
    for n in names:
        out["unlink-" + n.hex()] = attempt(os.unlink, r + b"/" + n)
    out["left"] = sorted(n.hex() for n in os.listdir(r))
    return out


def xattr_workload(root: str) -> dict:
    p = os.path.join(root, "f")
    open(p, "wb").close()
    out: dict = {}
    for n in (1, 250, 251, 300):
        name = "user." + "n" * n                   # 255 bytes is the last that fits
        out[f"name-{len(name)}"] = attempt(os.setxattr, p, name, b"v")
    for size in (0, 1, 4096, 65535, 65536, 65537, 1 << 20):
        out[f"value-{size}"] = attempt(os.setxattr, p, "user.big", b"\xab" * size)
        got = attempt(os.getxattr, p, "user.big")
        out[f"value-{size}-read"] = (got[0], len(got[1]) if got[0] == "ok" else got[1])
    out["empty-name"] = attempt(os.setxattr, p, "user.", b"v")
    out["unknown-prefix"] = attempt(os.setxattr, p, "bogus.x", b"v")
    out["list"] = attempt(lambda: sorted(os.listxattr(p)))
    out["remove-missing"] = attempt(os.removexattr, p, "user.missing")
    return out


def offsets_workload(root: str) -> dict:
    p = os.path.join(root, "sparse")
    out: dict = {}
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for off, n in ((MAX_LFS - 10, 100), (MAX_LFS - 100, 100), (MAX_LFS, 1), (2 ** 62, 4096),
                       (2 ** 40 + 123, 5000)):
            out[f"pwrite-{off}-{n}"] = attempt(os.pwrite, fd, b"q" * n, off)
        st = os.fstat(fd)
        out["size"] = st.st_size
        out["blocks"] = st.st_blocks
        out["pread-past-eof"] = attempt(os.pread, fd, 100, min(st.st_size + 10, MAX_LFS))
        out["pread-at-end"] = attempt(lambda: len(os.pread(fd, 100, st.st_size - 50)))
        out["pread-2^62"] = attempt(lambda: os.pread(fd, 10, 2 ** 62)[:4])
        out["truncate-max"] = attempt(os.ftruncate, fd, MAX_LFS)
        out["size-after"] = os.fstat(fd).st_size
        out["truncate-neg"] = attempt(os.ftruncate, fd, -1)
        out["lseek-end"] = attempt(os.lseek, fd, 0, os.SEEK_END)
        out["lseek-neg"] = attempt(os.lseek, fd, -1, os.SEEK_SET)
        out["truncate-0"] = attempt(os.ftruncate, fd, 0)
        out["blocks-after"] = os.fstat(fd).st_blocks
    finally:
        os.close(fd)
    return out


@pytest.mark.parametrize("workload", [names_workload, xattr_workload, offsets_workload],
                         ids=["names", "xattrs", "offsets"])
def test_extreme_input_gets_the_answers_tmpfs_gives(mount_cct, tmpfs_mount, workload):
    ref = workload(tmpfs_mount("size=64m"))
    mp = mount_cct("size=64m")
    got = workload(mp)
    diff = {k: (got.get(k), ref.get(k)) for k in set(ref) | set(got) if got.get(k) != ref.get(k)}
    assert diff == {}, diff
    assert mp.stats()["internal_errors"] == 0
