"""The INIT flags of transport=native (options.INIT_SWITCHES) through a
mount: what stats reports, and the semantics each flag moves onto the
daemon, compared with a real tmpfs. Every test runs on both transports;
under llfuse the kernel does what these flags hand to the daemon, so the
same observations must come out."""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import time
from typing import Any

import pytest

from conftest import read_stats
from test_eviction import loop_device  # noqa: F401 - a fixture
from test_semantics import as_user, both, check_same, describe, err, same  # noqa: F401 - both: a fixture

pytestmark = pytest.mark.mounted

CAP = b"security.capability"
#: A valid vfs_cap_data (revision 2, CAP_NET_BIND_SERVICE permitted): the
#: kernel checks the format before any filesystem sees it.
CAP_VALUE = struct.pack("<IIIII", 0x02000000, 1 << 10, 0, 0, 0)


def test_stats_show_offered_asked_and_negotiated_flags(mount_cct, transport):
    mp = mount_cct("size=64m,fuse_off=async_read:parallel_dirops,fuse_on=auto_inval_data")
    info = read_stats(mp)["transport"]
    assert info["name"] == transport
    if transport != "native":
        # Accepted and ignored, with a line in the log.
        assert "fuse_off=/fuse_on= apply to transport=native only: ignored" in mp.log()
        return
    for key in ("kernel_flags", "asked_flags", "flags", "max_write", "max_pages"):
        assert key in info
    assert "ASYNC_READ" not in info["asked_flags"] and "AUTO_INVAL_DATA" in info["asked_flags"]
    assert "PARALLEL_DIROPS" not in info["asked_flags"]
    assert "ASYNC_READ" in info["kernel_flags"]             # 6.18 offers everything
    assert set(info["flags"]) == set(info["asked_flags"]) & set(info["kernel_flags"])
    assert "HANDLE_KILLPRIV_V2" in info["flags"] and "WRITEBACK_CACHE" not in info["flags"]
    assert (info["max_write"], info["max_pages"]) == (1 << 20, 256)


def test_fuse_off_max_pages_keeps_128k_requests(mount_cct, transport):
    if transport != "native":
        pytest.skip("libfuse 2.9 negotiates its own request size")
    mp = mount_cct("size=64m,fuse_off=max_pages")
    info = read_stats(mp)["transport"]
    assert (info["max_write"], info["max_pages"]) == (128 * 1024, 0)
    assert "MAX_PAGES" not in info["flags"]


def test_cold_sequential_reads_are_one_mib_reads(mount_cct, transport):
    """With 1 MiB requests the mount's read-ahead is raised to 1 MiB (the
    kernel sets 128 KiB at INIT): a cold sequential read of 8 MiB is about
    8 READs, not 64."""
    if transport != "native":
        pytest.skip("libfuse 2.9 caps requests at 128 KiB")
    mp = mount_cct("size=64m")
    info = read_stats(mp)["transport"]
    assert info["read_ahead_kb"] == 1024
    with open(f"/sys/class/bdi/{os.major(os.stat(mp).st_dev)}:{os.minor(os.stat(mp).st_dev)}"
              "/read_ahead_kb") as f:
        assert int(f.read()) == 1024
    data = os.urandom(8 << 20)
    path = os.path.join(str(mp), "f")
    with open(path, "wb") as f:
        f.write(data)
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1")
    before = read_stats(mp)["requests"].get("read", 0)
    with open(path, "rb") as f:
        assert f.read() == data
    assert read_stats(mp)["requests"].get("read", 0) - before <= 12


@pytest.mark.parametrize("block_size", ["16k", "128k", "1m"])
def test_one_mib_requests_span_blocks(mount_cct, transport, block_size):
    """A 1 MiB WRITE (MAX_PAGES) covers 64, 8 or 1 blocks, unaligned too;
    the buffer is the smallest allowed, so the core evicts while it writes."""
    mp = mount_cct(f"size=256m,block_size={block_size},buffer=2m")
    data = os.urandom(5 << 20)
    p = os.path.join(mp, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        assert os.pwrite(fd, data[:4 << 20], 0) == 4 << 20
        assert os.pwrite(fd, data[3000:3000 + (1 << 20) + 5], (1 << 20) - 7) == (1 << 20) + 5
    finally:
        os.close(fd)
    expect = bytearray(data[:4 << 20])
    expect[(1 << 20) - 7:(2 << 20) - 2] = data[3000:3000 + (1 << 20) + 5]
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1")
    with open(p, "rb") as f:
        got = f.read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(expect).hexdigest()
    if transport == "native":
        s = read_stats(mp)
        assert s["requests"]["write"] <= 6   # 1 MiB each, not 128 KiB
        assert s["internal_errors"] == 0


# ---- HANDLE_KILLPRIV_V2: suid, sgid and security.capability ----------------------

MODES = [0o6755, 0o6745, 0o4755, 0o2755, 0o2745, 0o755]
OPS = ["write", "truncate", "o_trunc", "chown", "chgrp"]


def _op(path: str, op: str, uid: int, gid: int) -> Any:
    if op == "write":
        with open(path, "ab") as f:
            return f.write(b"more")
    if op == "truncate":
        return os.truncate(path, 1)
    if op == "o_trunc":
        return os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
    if op == "chown":
        return os.chown(path, uid, -1)
    return os.chown(path, -1, gid)


@pytest.mark.parametrize("cct_options", ["size=64m", "size=64m,fuse_off=handle_killpriv_v2",
                                         "size=64m,wronly=direct"],
                         ids=["killpriv_v2", "kernel_kills", "direct_writers"])
@pytest.mark.parametrize("writer", [1001, 0], ids=["user", "root"])
def test_write_truncate_chown_drop_privileges_as_tmpfs(both, cct_options, writer):
    """setuid/setgid (with and without group-exec) and file capabilities
    after write, truncate, open(O_TRUNC), chown and chgrp, by the owner
    (no CAP_FSETID) and by root."""

    def scenario(root: str) -> list[Any]:
        obs: list[Any] = []
        for mode in MODES:
            for op in OPS:
                for with_cap in (False, True):
                    p = os.path.join(root, f"{mode:o}-{op}-{int(with_cap)}")
                    with open(p, "wb") as f:
                        f.write(b"content")
                    os.chown(p, 1001, 1001)
                    os.chmod(p, mode)
                    if with_cap:
                        os.setxattr(p, CAP, CAP_VALUE)
                    obs.append((p[len(root):], as_user(writer, writer,
                                                       lambda: _op(p, op, 1001, 1001))))
                    obs.append(describe(p))
                    obs.append(err(lambda: os.getxattr(p, CAP) == CAP_VALUE))
        return obs

    same(both, scenario, cct_options, "size=64m")


@pytest.mark.parametrize("cct_options", ["size=64m", "size=64m,fuse_off=atomic_o_trunc"],
                         ids=["atomic_o_trunc", "setattr"])
def test_open_o_trunc_as_tmpfs(both, cct_options):
    """O_TRUNC (the daemon truncates under ATOMIC_O_TRUNC): size 0, mtime
    and ctime changed even for an empty file, data gone after a re-read;
    O_CREAT|O_TRUNC of a new file; O_RDONLY|O_TRUNC."""

    def scenario(root: str) -> list[Any]:
        obs: list[Any] = []
        p = os.path.join(root, "f")
        with open(p, "wb") as f:
            f.write(os.urandom(300_000))
        fd = os.open(p, os.O_RDWR | os.O_TRUNC)
        obs.append(os.fstat(fd).st_size)
        obs.append(os.pread(fd, 10, 0))
        os.write(fd, b"abc")
        os.close(fd)
        obs.append(describe(p))
        with open(p, "rb") as f:
            obs.append(f.read())
        e = os.path.join(root, "empty")
        open(e, "w").close()
        os.utime(e, ns=(10**18, 10**18))
        os.close(os.open(e, os.O_WRONLY | os.O_TRUNC))
        st = os.stat(e)
        obs.append((st.st_size, st.st_mtime_ns > 10**18, st.st_ctime_ns > 10**18))
        n = os.path.join(root, "new")
        os.close(os.open(n, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o640))
        obs.append(describe(n))
        with open(p, "wb") as f:
            f.write(b"xyz")
        obs.append(err(lambda: os.close(os.open(p, os.O_RDONLY | os.O_TRUNC))))
        obs.append(describe(p))
        os.chmod(p, 0o444)
        obs.append(as_user(1001, 1001, lambda: os.open(p, os.O_WRONLY | os.O_TRUNC)))
        obs.append(describe(p))
        return obs

    same(both, scenario, cct_options, "size=64m")


# ---- WRITEBACK_CACHE -----------------------------------------------------------------

WB = "size=256m,fuse_on=writeback_cache"


def _drop_caches() -> None:
    """Write back, then make the kernel forget pages and inodes: what it
    shows next is what the daemon stored."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def _times(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def test_writeback_cache_is_negotiated_when_switched_on(mount_cct, transport):
    if transport != "native":
        pytest.skip("transport=native only")
    info = read_stats(mount_cct(WB))["transport"]
    assert "WRITEBACK_CACHE" in info["flags"]
    # The kernel keeps a cached file's times with its own coarse clock.
    assert info["timestamps"] == "coarse"


def test_writeback_times_and_sizes_survive_the_kernel_forgetting(mount_cct, transport):
    """The kernel owns size, mtime and ctime while it caches a file, and
    sends them (SETATTR with FATTR_CTIME) on close and fsync: after it
    forgets the inode, the daemon's figures are the ones it showed, and
    they never go back."""
    mp = mount_cct(WB)
    p = os.path.join(mp, "f")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"a" * 5000)
    os.fsync(fd)
    after_fsync = _times(p)
    os.pwrite(fd, b"b" * 10, 70_000)
    os.close(fd)
    seen = _times(p)
    assert seen[0] == 70_010 and seen[1] >= after_fsync[1] and seen[2] >= after_fsync[2]
    _drop_caches()
    assert _times(p) == seen
    # An explicit time, then a write: the write's stamp is "now", not earlier.
    os.utime(p, ns=(10 ** 18, 10 ** 18))
    with open(p, "r+b") as f:
        f.write(b"c")
    t = _times(p)
    assert t[1] > 10 ** 18 - 10 ** 17 and t[1] < 2 * 10 ** 18   # a present-day stamp
    _drop_caches()
    assert _times(p) == t
    # touch after a write never sets an earlier mtime (make compares them).
    with open(p, "r+b") as f:
        f.write(b"d")
    before = os.stat(p).st_mtime_ns
    os.utime(p)
    assert os.stat(p).st_mtime_ns >= before
    with open(p, "rb") as f:
        data = f.read()
    assert data[:2] == b"da" and data[70_000:70_010] == b"b" * 10 and len(data) == 70_010


def _two_appenders(path: str, writes: int, sizes: int) -> None:
    """Two O_APPEND handles writing in turns, records of 1 to `sizes` repeats."""
    f1 = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    f2 = os.open(path, os.O_WRONLY | os.O_APPEND)
    for i in range(writes):
        os.write(f1 if i % 3 else f2, b"%d-" % i * (1 + i % sizes))
    os.close(f1)
    os.close(f2)


def test_writeback_semantics_as_tmpfs(both):
    """O_APPEND with two writers, truncate racing cached writes, a
    write-only handle whose partial-page write needs the page read, mmap
    MAP_SHARED both ways, O_DIRECT beside cached writes, fsync and close."""
    import mmap

    def scenario(root: str) -> list[Any]:
        obs: list[Any] = []
        # Two appenders, interleaved.
        a = os.path.join(root, "append")
        _two_appenders(a, 200, 7)
        with open(a, "rb") as f:
            obs.append(hashlib.sha256(f.read()).hexdigest())
        # Truncate while another handle has cached writes past the new end.
        t = os.path.join(root, "trunc")
        w = os.open(t, os.O_CREAT | os.O_RDWR, 0o644)
        os.write(w, b"\x9b" * (3 << 20))
        os.truncate(t, 1000)
        os.pwrite(w, b"after", 5000)
        obs.append(os.fstat(w).st_size)
        obs.append(os.pread(w, 10, 995))
        obs.append(os.pread(w, 4010, 996).count(b"\0"))
        os.ftruncate(w, 2 << 20)
        os.pwrite(w, b"x" * 100, (1 << 20) + 5)
        os.ftruncate(w, (1 << 20) + 50)
        os.close(w)
        with open(t, "rb") as f:
            obs.append(hashlib.sha256(f.read()).hexdigest())
        # A write-only handle, pages not cached: a partial-page write.
        o = os.path.join(root, "wronly")
        with open(o, "wb") as f:
            f.write(bytes(range(256)) * 64)
        _drop_caches()
        w = os.open(o, os.O_WRONLY)
        os.pwrite(w, b"XYZ", 5000)
        os.close(w)
        with open(o, "rb") as f:
            obs.append(hashlib.sha256(f.read()).hexdigest())
        # mmap MAP_SHARED: written through the map, read with read(2), and back.
        m = os.path.join(root, "mmap")
        with open(m, "wb") as f:
            f.truncate(3 * 4096 + 100)
        with open(m, "r+b") as f:
            mm = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED)
            mm[10:20] = b"0123456789"
            mm[3 * 4096 + 50:3 * 4096 + 60] = b"abcdefghij"
            f.seek(4096)
            f.write(b"via write")
            f.flush()
            obs.append(mm[4096:4105])
            mm.flush()
            mm.close()
        with open(m, "rb") as f:
            obs.append(hashlib.sha256(f.read()).hexdigest())
        obs.append(os.stat(m).st_size)
        # O_DIRECT beside cached writes of the same file.
        d = os.path.join(root, "direct")
        with open(d, "wb") as f:
            f.write(b"c" * 10000)
        buf = mmap.mmap(-1, 8192)
        buf.write(b"D" * 8192)
        fd = os.open(d, os.O_RDWR | os.O_DIRECT)
        os.pwrite(fd, buf, 4096)
        os.close(fd)
        with open(d, "r+b") as f:
            f.seek(9000)
            f.write(b"tail")
        with open(d, "rb") as f:
            obs.append(hashlib.sha256(f.read()).hexdigest())
        obs.append(os.stat(d).st_size)
        # fsync and close answer 0; the bytes are there after the kernel forgets.
        s = os.path.join(root, "sync")
        fd = os.open(s, os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"s" * 100_000)
        obs.append(os.fsync(fd))
        os.write(fd, b"t" * 10)
        obs.append(os.close(fd))
        _drop_caches()
        obs.append(describe(s))
        for name in ("append", "trunc", "wronly", "mmap", "direct"):
            obs.append(describe(os.path.join(root, name)))
        return obs

    same(both, scenario, WB, "size=256m")


def test_stats_sync_first_under_writeback(mount_cct, transport):
    """`cctmpfs stats` syncs the mount, so bytes the kernel still holds count."""
    from cctmpfs.cli import read_stats as cli_read_stats
    mp = mount_cct(WB)
    fd = os.open(os.path.join(mp, "f"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, os.urandom(3 << 20))
        assert cli_read_stats(mp)["files_bytes"] == 3 << 20
    finally:
        os.close(fd)


# ---- a full filesystem under the writeback cache ------------------------------------

def _chunk(name: str, k: int, size: int) -> bytes:
    """Incompressible, and different for every file and chunk."""
    seed = hashlib.sha256(b"%s/%d" % (name.encode(), k)).digest()
    return (seed * (size // 32 + 1))[:size] if size <= 64 else \
        hashlib.shake_256(seed).digest(size)


def _writer(root: str, tag: str, file_size: int, chunk: int, fsync_every: int,
            budget: int, acked: dict[str, dict[int, bytes]], errors: list[str]) -> None:
    """Write files of file_size in chunk-sized write(2)s until budget bytes
    were tried; fsync every fsync_every chunks (0: never). A chunk is
    acknowledged when the next fsync or the close returns 0 with no error in
    between; only acknowledged chunks are recorded in acked."""
    tried = 0
    i = 0
    mine_errors = len(errors)
    # Past full, each refused write may cost a pass of the device cleaner:
    # 16 refusals per writer show the behaviour.
    while tried < budget and len(errors) - mine_errors < 16:
        path = os.path.join(root, f"{tag}-{i}")
        i += 1
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
        except OSError as e:
            errors.append(f"open {errno.errorcode[e.errno]}")
            tried += file_size
            continue
        mine: dict[int, bytes] = {}
        pending: dict[int, bytes] = {}
        for k in range(file_size // chunk):
            data = _chunk(path, k, chunk)
            tried += chunk
            try:
                n = os.pwrite(fd, data, k * chunk)
                pending[k * chunk] = data[:n]
            except OSError as e:
                errors.append(f"write {errno.errorcode[e.errno]}")
                break
            if fsync_every and (k + 1) % fsync_every == 0:
                try:
                    os.fsync(fd)
                    mine.update(pending)
                except OSError as e:
                    errors.append(f"fsync {errno.errorcode[e.errno]}")
                pending = {}
        try:
            os.close(fd)
            mine.update(pending)
        except OSError as e:
            errors.append(f"close {errno.errorcode[e.errno]}")
        acked[path] = mine


def _fill_and_verify(mp: str, limit: int, fsync_every: int) -> list[str]:
    """A small writer (4 KiB writes, 64 KiB files) and a large one (1 MiB
    writes, 8 MiB files) at once, each trying twice the limit; then every
    acknowledged chunk must read back after the kernel forgot its pages."""
    import threading
    acked: dict[str, dict[int, bytes]] = {}
    errors: list[str] = []
    threads = [threading.Thread(target=_writer, args=(mp, "small", 64 << 10, 4096, fsync_every,
                                                      2 * limit, acked, errors)),
               threading.Thread(target=_writer, args=(mp, "large", 8 << 20, 1 << 20, fsync_every,
                                                      2 * limit, acked, errors))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _drop_caches()
    stored = 0
    for path, chunks in acked.items():
        with open(path, "rb") as f:
            for off, data in chunks.items():
                f.seek(off)
                assert f.read(len(data)) == data, (path, off, len(data))
                stored += len(data)
    assert errors, "the mount never filled"
    assert all(e.endswith("ENOSPC") for e in errors), sorted(set(errors))
    assert stored > limit // 4, (stored, limit)    # not a mount that refused everything
    return errors


@pytest.mark.parametrize("fsync_every", [0, 4], ids=["no_fsync", "fsync"])
def test_full_mount_under_writeback_loses_nothing_acknowledged(mount_cct, transport, fsync_every):
    mp = mount_cct("size=24m," + WB.split(",", 1)[1])
    _fill_and_verify(mp, 24 << 20, fsync_every)
    s = read_stats(mp)
    assert s["internal_errors"] == 0
    if transport == "native":
        wb = s["transport"]["writeback"]
        assert wb["reserve_bytes"] == 6 << 20 and 0 < wb["bdi_max_bytes"] <= 7 << 20
        assert wb["direct_io_opens"] > 0


@pytest.mark.parametrize("chunk", [4096, 1 << 20], ids=["4k", "1m"])
def test_a_cached_writer_gets_enospc_at_write_near_full(mount_cct, transport, chunk):
    """Writeback rule 4: a file opened while space was plentiful keeps the
    cache, yet its write(2) fails with ENOSPC once free space is down to
    the reserve (as `cat /dev/zero > f` on tmpfs stops at write(2)), and
    close then says 0: everything acknowledged fits and reads back."""
    if transport != "native":
        pytest.skip("llfuse has no writeback cache here")
    mp = mount_cct("size=64m," + WB.split(",", 1)[1])
    path = os.path.join(str(mp), "f")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    written, failure = 0, None
    pattern_block = os.urandom(chunk)
    try:
        while written < 256 << 20:
            try:
                written += os.write(fd, pattern_block)
            except OSError as e:
                failure = e.errno
                break
    finally:
        os.close(fd)                    # raises if a writeback failed: the test fails
    assert failure == errno.ENOSPC
    wb = read_stats(mp)["transport"]["writeback"]
    assert wb["reserve_reached"] >= 1 and wb["refused_cached_writes"] >= 1
    assert wb["failed_writebacks"] == 0 and wb["cached_writers"] == 0
    # It stopped at the reserve (16 MiB here), not far before it.
    assert (64 - 16 - 4 << 20) <= written <= 64 << 20, written
    _drop_caches()
    with open(path, "rb") as f:
        assert f.read() == pattern_block * (written // chunk)
    # Space freed: a cached writer writes again.
    os.truncate(path, 0)
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.write(fd, pattern_block) == chunk
    finally:
        os.close(fd)


def test_full_backing_device_under_writeback_loses_nothing_acknowledged(loop_device, mount_cct,
                                                                         transport):
    """RAM and a 32 MiB backing device fill up (incompressible data): the
    free space statfs reports, and so the reserve, include the device."""
    dev = loop_device(32 << 20)
    mp = mount_cct(f"size=1g,ram=16m,backing={dev},backing_encrypt=off," + WB.split(",", 1)[1])
    _fill_and_verify(mp, 48 << 20, 4)
    assert read_stats(mp)["internal_errors"] == 0


def test_a_file_just_written_is_read_back_from_the_page_cache(mount_cct, transport):
    """Full pages written through the kernel stay in its page cache, and a
    read of the file right after (closed, reopened) sends no READ: nothing
    changes a file behind the kernel's back here, so nothing may drop them.
    With AUTO_INVAL_DATA (`fuse_on=auto_inval_data`, off by default) the
    kernel dropped them at the first GETATTR after the writes, and the read
    cost 1 MiB READs (1.4 GB/s against 10.3)."""
    mp = mount_cct("size=64m")
    data = os.urandom(8 << 20)
    path = os.path.join(str(mp), "f")
    with open(path, "wb") as f:
        f.write(data)
    os.stat(path)                       # a GETATTR, as ls or make would do
    before = read_stats(mp)["requests"].get("read", 0)
    with open(path, "rb") as f:
        assert f.read() == data
    assert read_stats(mp)["requests"].get("read", 0) == before


def test_a_cached_listing_or_target_still_updates_the_atime_as_tmpfs(both):
    """relatime with the kernel's caches (FOPEN_CACHE_DIR, CACHE_SYMLINKS):
    after a change of a directory's or a symlink's ctime (chmod, lchown,
    utime, link, unlink of another link, rename), tmpfs updates the atime at the next listing or
    readlink, although nothing else changed. The kernel would serve both
    from its cache, so the daemon drops them (the OPENDIR answer without
    KEEP_CACHE; NOTIFY_INVAL_INODE of the symlink). Then, unchanged, the
    next read leaves the atime alone on both."""
    def scenario(root: str) -> list[Any]:
        d = os.path.join(root, "d")
        os.mkdir(d)
        open(os.path.join(d, "f"), "w").close()
        s = os.path.join(root, "s")
        os.symlink("target", s)
        obs: list[Any] = []

        # Each step a clock tick (4 ms, clock.py) after the last: the daemon's
        # stamps within one tick are equal, tmpfs's differ.
        def read_updates_atime(path: str, read: Any) -> bool:
            before = os.lstat(path).st_atime_ns
            time.sleep(0.02)
            read()
            return os.lstat(path).st_atime_ns > before

        listing = lambda: os.listdir(d)          # noqa: E731
        target = lambda: os.readlink(s)          # noqa: E731
        time.sleep(0.02)
        listing(), listing(), target(), target()    # cached from here on
        time.sleep(0.02)
        for change in (lambda: os.chmod(d, 0o700),
                       lambda: os.utime(d, ns=(1, os.stat(d).st_mtime_ns))):
            obs.append(read_updates_atime(d, listing))
            time.sleep(0.02)
            change()
            obs.append(read_updates_atime(d, listing))
        for change in (lambda: os.chown(s, 1, 1, follow_symlinks=False),
                       lambda: os.utime(s, ns=(1, os.lstat(s).st_mtime_ns), follow_symlinks=False),
                       lambda: os.link(s, os.path.join(root, "s2"), follow_symlinks=False),
                       lambda: os.unlink(os.path.join(root, "s2")),
                       lambda: (os.rename(s, os.path.join(root, "s3")),
                                os.rename(os.path.join(root, "s3"), s))):
            obs.append(read_updates_atime(s, target))
            time.sleep(0.02)
            change()
            obs.append(read_updates_atime(s, target))
        return obs

    cct, ref = both("size=64m")
    got = check_same(scenario, cct, ref)
    assert got == [False, True] * 7     # the scenario tells both cases apart


def test_a_held_open_directory_read_again_after_chmod_updates_the_atime_as_tmpfs(both):
    """A listing read again through a descriptor opened before a chmod: its
    OPENDIR answer kept the cache, so the daemon drops the kernel's copy at
    the chmod (NOTIFY_INVAL_INODE) when a read would now update the atime."""
    def scenario(root: str) -> list[Any]:
        d = os.path.join(root, "d")
        os.mkdir(d)
        for i in range(50):
            open(os.path.join(d, f"f{i}"), "w").close()
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        obs: list[Any] = []
        try:
            time.sleep(0.02)
            obs.append(len(os.listdir(fd)))        # the listing is cached from here on
            before = os.stat(d).st_atime_ns
            time.sleep(0.02)
            os.listdir(fd)
            obs.append(os.stat(d).st_atime_ns > before)     # relatime: unchanged
            time.sleep(0.02)
            os.chmod(d, 0o700)
            before = os.stat(d).st_atime_ns
            time.sleep(0.02)
            obs.append(len(os.listdir(fd)))
            obs.append(os.stat(d).st_atime_ns > before)     # ctime moved: updated
        finally:
            os.close(fd)
        return obs

    cct, ref = both("size=64m")
    assert check_same(scenario, cct, ref) == [50, False, 50, True]


@pytest.mark.parametrize("cct_options", ["size=64m", "size=64m,fuse_off=cache_symlinks"],
                         ids=["default", "no_cache_symlinks"])
def test_cached_listings_and_symlinks_follow_every_change_as_tmpfs(both, cct_options):
    """OPENDIR answers FOPEN_CACHE_DIR, and cache_symlinks lets the kernel
    keep symlink targets: listings (twice each, the second from the cache;
    through a new and a held-open directory) and targets read after every
    kind of change come out as on tmpfs. On native an unchanged directory
    or symlink is then read without a request."""
    def scenario(root: str) -> list[Any]:
        d = os.path.join(root, "d")
        os.mkdir(d)
        at = lambda *names: os.path.join(d, *names)  # noqa: E731
        held = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        obs: list[Any] = []

        def look() -> None:
            obs.extend([sorted(os.listdir(d)), sorted(os.listdir(d)), sorted(os.listdir(held))])
            obs.extend([err(lambda: os.readlink(at("s"))), err(lambda: os.readlink(at("s")))])

        steps = [
            lambda: open(at("a"), "w").close(),
            lambda: os.rename(at("a"), at("b")),
            lambda: os.link(at("b"), at("c")),
            lambda: os.unlink(at("b")),
            lambda: os.mkdir(at("sub")),
            lambda: os.rename(at("c"), at("sub", "c")),
            lambda: os.symlink("t1", at("s")),
            lambda: os.mkfifo(at("fifo")),
            lambda: os.rename(at("sub", "c"), os.path.join(root, "out")),
            lambda: os.rmdir(at("sub")),
            lambda: (os.symlink("t2", at("s2")), os.rename(at("s2"), at("s"))),
            lambda: os.rename(os.path.join(root, "out"), at("back")),
        ]
        look()
        for step in steps:
            step()
            look()
        os.close(held)
        return obs

    cct, ref = both(cct_options)
    check_same(scenario, cct, ref)
    if read_stats(cct)["transport"]["name"] != "native":
        return
    d = os.path.join(cct, "d")
    asked = lambda: read_stats(cct)["requests"]  # noqa: E731
    # A listing within the clock tick (4 ms) of the directory's last change
    # stamps an atime equal to its mtime, so relatime lets the next one
    # through too (OPENDIR_ATIME_DUE): start a tick later.
    os.listdir(d)
    time.sleep(0.02)
    os.listdir(d)
    before = asked()
    for _ in range(20):
        assert len(os.listdir(d)) == 3          # fifo, s, back
        os.readlink(os.path.join(d, "s"))
    after = asked()
    listings = sum(after.get(op, 0) - before.get(op, 0) for op in ("readdir", "readdirplus"))
    assert listings <= 2, (before, after)
    readlinks = after.get("readlink", 0) - before.get("readlink", 0)
    assert readlinks <= 1 if "cache_symlinks" not in cct_options else readlinks >= 20


# ---- write-only opens (wronly=direct: transport/directwrite.py) ----------------------

def test_write_only_handles_stay_coherent_as_tmpfs(both):
    """wronly=direct sends an O_WRONLY handle's writes past the page cache.
    What other handles see must not change: a reader's cached pages, a
    MAP_SHARED mapping (clean, and dirty before the write), two appenders,
    sendfile into the file, a hole past the end; and after the last close
    the file reads back whole."""
    import mmap

    def scenario(root: str) -> list[Any]:
        obs: list[Any] = []
        p = os.path.join(root, "f")
        with open(p, "wb") as f:
            f.write(bytes(range(256)) * 64)             # 16 KiB
        r = os.open(p, os.O_RDONLY)
        obs.append(hashlib.sha256(os.pread(r, 1 << 20, 0)).hexdigest())  # now cached
        m = os.open(p, os.O_RDWR)
        mm = mmap.mmap(m, 16384, mmap.MAP_SHARED)
        obs.append(mm[5000:5010])
        mm[9000:9004] = b"MMAP"                         # dirty, not written back yet
        wr = os.open(p, os.O_WRONLY)
        obs.append(os.pwrite(wr, b"XYZ" * 3, 4999))     # inside pages the reader holds
        obs.append(os.pwrite(wr, b"over", 9002))        # over the dirty mapped bytes
        obs.append(os.pread(r, 20, 4995))
        obs.append(mm[4995:5015])
        obs.append(mm[8998:9008])
        obs.append(os.pwrite(wr, b"!", 20000))          # past the end: a hole
        obs.append(os.fstat(r).st_size)
        obs.append(os.pread(r, 10, 16380))
        mm.close()
        os.close(m)
        # sendfile(2) into the write-only handle.
        src = os.path.join(root, "src")
        with open(src, "wb") as f:
            f.write(b"s" * 70_000)
        s = os.open(src, os.O_RDONLY)
        obs.append(os.sendfile(wr, s, None, 70_000))
        os.close(s)
        os.close(wr)
        obs.append(hashlib.sha256(os.pread(r, 1 << 20, 0)).hexdigest())
        os.close(r)
        # Two appenders, interleaved, in odd sizes.
        _two_appenders(os.path.join(root, "append"), 300, 11)
        for name in ("f", "append"):
            with open(os.path.join(root, name), "rb") as f:
                obs.append(hashlib.sha256(f.read()).hexdigest())
            obs.append(describe(os.path.join(root, name)))
        _drop_caches()
        for name in ("f", "append"):
            with open(os.path.join(root, name), "rb") as f:
                obs.append(hashlib.sha256(f.read()).hexdigest())
        return obs

    same(both, scenario, "size=256m,wronly=direct", "size=256m")


@pytest.mark.parametrize("size", [10_000, 3 << 20], ids=["10k", "3m"])
def test_a_file_written_write_only_is_read_back_from_the_page_cache(mount_cct, transport, size):
    """A write-only handle writes past the page cache (wronly=direct); at its
    last close the daemon stores the file into it (NOTIFY_STORE), so reading
    it back right after, as a build does, sends no READ. A sparse file
    stores its data, not its hole."""
    if transport != "native":
        pytest.skip("llfuse writes through the page cache")
    mp = mount_cct("size=64m,wronly=direct")
    data = os.urandom(size)
    paths = [os.path.join(str(mp), name) for name in ("plain", "sparse")]
    with open(paths[0], "wb") as f:
        f.write(data)
    with open(paths[1], "wb") as f:
        f.write(data)
        f.seek(40 << 20)
        f.write(b"end")
    stats = read_stats(mp)          # after the RELEASEs: the kernel sent them first
    info = stats["transport"]["direct_writers"]
    assert info["opens"] == 2 and info["stores"] == 2 and info["refused"] == 0
    assert info["stored_bytes"] < 2 * size + (2 << 20)      # the 40 MiB hole is not stored
    before = stats["requests"].get("read", 0)
    with open(paths[0], "rb") as f:
        assert f.read() == data
    with open(paths[1], "rb") as f:
        assert f.read(size) == data
        f.seek(40 << 20)
        assert f.read() == b"end"
    after = read_stats(mp)["requests"].get("read", 0)
    # The hole between is read from the daemon (zeros); the data is not.
    with open(paths[1], "rb") as f:
        f.seek(size)
        assert f.read((40 << 20) - size).count(0) == (40 << 20) - size
    assert after == before


@pytest.mark.parametrize("cct_options", ["size=64m", "size=64m,wronly=cached"])
def test_wronly_cached_writes_through_the_page_cache(mount_cct, transport, cct_options):
    """The default, and wronly=cached: write-only opens as any other."""
    if transport != "native":
        pytest.skip("llfuse writes through the page cache")
    mp = mount_cct(cct_options)
    with open(os.path.join(str(mp), "f"), "wb") as f:
        f.write(b"x" * 10_000)
    info = read_stats(mp)["transport"]
    assert info["direct_writers"] is None and "DIRECT_IO_ALLOW_MMAP" not in info["flags"]
