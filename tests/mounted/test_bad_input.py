"""Bad and extreme input through the kernel, on cctmpfs and on a real tmpfs
side by side: names of every byte, invalid UTF-8, 255 and 256 bytes; xattr
names and values at and past their limits; offsets and sizes near 2**63.
Every answer must be tmpfs's, and the daemon must count no internal error
(the mount fixture checks that and the invariant checker at teardown)."""

from __future__ import annotations

import errno
import json
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


def test_injected_faults_become_eio_and_the_mount_stays_consistent(mount_cct, monkeypatch, tmp_path):
    """The daemon with faults armed (faults.py): reads and writes fail with
    EIO now and then, and sealing and device writes fail and are retried.
    The mount keeps serving, every successful write reads back, the
    invariant checker passes at teardown."""
    import random
    import subprocess

    backing = tmp_path / "backing.img"
    monkeypatch.setenv("CCTMPFS_FAULTS", "read.decode:7,write.apply:11,seal.encode:5,"
                                         "device.write:3,unlink:4")
    mp = mount_cct(f"size=256m,ram=16m,backing={backing},backing_size=256m")
    mp.allow_internal_errors = True
    rng = random.Random(6)
    model: dict[str, bytes] = {}
    eio = 0
    for i in range(60):
        p = os.path.join(mp, f"f{i % 20}")
        data = rng.randbytes(rng.randrange(1, 600_000))
        try:
            with open(p, "wb") as f:
                f.write(data)
            model[p] = data
        except OSError as e:
            assert e.errno == errno.EIO, e
            eio += 1
            model.pop(p, None)        # truncated by open(); content now unknown
        if i % 7 == 3 and model:
            victim = rng.choice(sorted(model))
            try:
                os.unlink(victim)
                del model[victim]
            except OSError as e:
                assert e.errno == errno.EIO, e
                eio += 1
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    for p, data in model.items():
        for _ in range(20):               # a read fault is transient: try again
            try:
                with open(p, "rb") as f:
                    got = f.read()
                break
            except OSError as e:
                assert e.errno == errno.EIO, e
                eio += 1
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
        assert got == data, p
    s = mp.stats(settle=True)
    assert eio > 0 and s["internal_errors"] > 0
    assert s["counters"]["seal_errors"] > 0
    assert json.loads(os.getxattr(mp, "trusted.cctmpfs.check"))["count"] == 0
