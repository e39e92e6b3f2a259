"""The native binding's request loop, without a mount: the test plays the
kernel on a SOCK_SEQPACKET socket pair (one message per request and per
answer, as /dev/fuse has them) and checks the wire answers, the error
rules of the loop, and that the core keeps no view of the request buffer."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import struct
import threading
from typing import Iterator, Optional

import pytest

from cctmpfs import faults
from cctmpfs.codec import Codec
from cctmpfs.namespace import ROOT_INO, Filesystem
from cctmpfs.options import DEFAULT_FUSE_FLAGS, INIT_SWITCHES, parse_options
from cctmpfs.transport import directwrite, native
from cctmpfs.transport import wire as w
from cctmpfs.transport.frontend import CACHE_TIMEOUT, Frontend

BS = 16384
FLAGS_OFFERED = w.ASYNC_READ | w.BIG_WRITES | w.INIT_FLAGS["WRITEBACK_CACHE"] | w.INIT_EXT


class Kernel:
    """The kernel's side of a FUSE connection: sends requests, reads answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unique = 100

    def send(self, opcode: int, nodeid: int = ROOT_INO, body: bytes = b"", *,
             uid: int = 0, gid: int = 0, pid: int = 1, length: Optional[int] = None) -> int:
        self.unique += 2
        total = w.IN_HEADER.size + len(body)
        hdr = w.IN_HEADER.pack(total if length is None else length, opcode, self.unique, nodeid,
                               uid, gid, pid, 0, 0)
        self.sock.send(hdr + body)
        return self.unique

    def answer(self) -> tuple[int, int, bytes]:
        """(unique, errno, payload) of the next answer."""
        msg = self.sock.recv(1 << 20)
        length, error, unique = w.OUT_HEADER.unpack_from(msg)
        assert length == len(msg), (length, len(msg))
        return unique, -error, msg[w.OUT_HEADER.size:]

    def call(self, opcode: int, nodeid: int = ROOT_INO, body: bytes = b"", **kw) -> bytes:  # type: ignore[no-untyped-def]
        """Send a request; its payload, or OSError with the errno answered."""
        unique = self.send(opcode, nodeid, body, **kw)
        got, err, payload = self.answer()
        assert got == unique
        if err:
            raise OSError(err, os.strerror(err))
        return payload

    def errno_of(self, opcode: int, nodeid: int = ROOT_INO, body: bytes = b"", **kw) -> int:  # type: ignore[no-untyped-def]
        try:
            self.call(opcode, nodeid, body, **kw)
        except OSError as e:
            return e.errno
        return 0

    def init(self, major: int = 7, minor: int = 45, flags: int = FLAGS_OFFERED) -> bytes:
        body = w.INIT_IN.pack(major, minor, 131072, flags & 0xFFFFFFFF) + struct.pack("<I", flags >> 32)
        return self.call(w.INIT, 0, body + bytes(64 - len(body)))


def entry(payload: bytes) -> dict[str, int]:
    f = w.ENTRY_OUT.unpack(payload[:w.ENTRY_OUT.size])
    return {"nodeid": f[0], "entry_valid": f[2], "attr_valid": f[3], "ino": f[6], "size": f[7],
            "mtime_ns": f[10] * 10 ** 9 + f[13], "mode": f[15], "nlink": f[16], "uid": f[17],
            "gid": f[18], "blksize": f[20]}


def attr_out(payload: bytes) -> dict[str, int]:
    f = w.ATTR_OUT.unpack(payload)
    return {"ino": f[3], "size": f[4], "atime_ns": f[6] * 10 ** 9 + f[9],
            "mtime_ns": f[7] * 10 ** 9 + f[10], "mode": f[12], "uid": f[14], "gid": f[15]}


def name(text: bytes) -> bytes:
    return text + b"\0"


class Served:
    def __init__(self, kernel: Kernel, server: native.Server, fs: Filesystem, clock) -> None:  # type: ignore[no-untyped-def]
        self.k, self.server, self.fs, self.clock = kernel, server, fs, clock

    def create(self, parent: int, filename: bytes, mode: int = 0o644, uid: int = 1000) -> int:
        out = self.k.call(w.CREATE, parent, w.CREATE_IN.pack(os.O_RDWR, stat.S_IFREG | mode, 0o022, 0)
                          + name(filename), uid=uid, gid=uid)
        e = entry(out)
        fh, open_flags, _ = w.OPEN_OUT.unpack(out[w.ENTRY_OUT.size:])
        assert fh == e["ino"] and open_flags == w.FOPEN_KEEP_CACHE
        return e["ino"]

    def write(self, fh: int, off: int, data: bytes) -> int:
        out = self.k.call(w.WRITE, fh, w.WRITE_IN.pack(fh, off, len(data), 0, 0, 0, 0) + data)
        return w.WRITE_OUT.unpack(out)[0]

    def read(self, fh: int, off: int, size: int) -> bytes:
        return self.k.call(w.READ, fh, w.READ_IN.pack(fh, off, size, 0, 0, 0, 0))


def start(fs: Filesystem, switches: frozenset[str] = DEFAULT_FUSE_FLAGS, spin_us: int = 0,
          wronly_direct: bool = True,   # wronly=direct here (the mount's default is cached)
          ) -> tuple[Kernel, native.Server, threading.Thread, list[socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.settimeout(10)
    server = native.Server(ours.fileno(), Frontend(fs), threading.Lock(), switches,
                           spin_us=spin_us, wronly_direct=wronly_direct)
    server.frontend.transport_info = server.info
    server.frontend.request_counts = server.request_counts
    t = threading.Thread(target=server.run, name="native-test-reader")
    t.start()
    return Kernel(theirs), server, t, [ours, theirs]


def stop(t: threading.Thread, socks: list[socket.socket]) -> None:
    """End a loop start() began: end of file on the kernel's side returns it."""
    socks[1].close()
    t.join(10)
    assert not t.is_alive()
    socks[0].close()


@pytest.fixture
def served(clock) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    fs = Filesystem(block_size=BS, codec=Codec("zstd", 3), buffer_bytes=64 * BS,
                    size_limit=64 << 20, nr_inodes=1000, clock_ns=clock.ns)
    k, server, t, socks = start(fs)
    try:
        k.init()
        yield Served(k, server, fs, clock)
    finally:
        stop(t, socks)


# ---- INIT --------------------------------------------------------------------------

ALL_SWITCHES = sum(w.switch_bit(n) for n in INIT_SWITCHES)


@pytest.mark.parametrize("offered", [FLAGS_OFFERED | ALL_SWITCHES, w.ASYNC_READ])
def test_init_asks_for_the_switched_on_flags_the_kernel_offers(clock, offered):
    fs = Filesystem(block_size=BS, clock_ns=clock.ns)
    k, server, t, socks = start(fs)
    try:
        out = k.init(flags=offered)
        major, minor, max_ra, flags, _bg, _ct, max_write, gran, max_pages, _ma, flags2 = \
            w.INIT_OUT.unpack(out)
        assert (major, minor) == (7, 38)
        # wronly=direct (start()'s) asks DIRECT_IO_ALLOW_MMAP too (directwrite.py).
        asked = w.BIG_WRITES | sum(w.switch_bit(n) for n in DEFAULT_FUSE_FLAGS) \
            | w.DIRECT_IO_ALLOW_MMAP | w.INIT_EXT
        assert flags | flags2 << 32 == asked & offered
        assert not flags & w.WRITEBACK_CACHE          # off by default (issue 18)
        if offered & w.MAX_PAGES:
            assert (max_write, max_pages) == (1 << 20, 256)
        else:
            # An older kernel: 128 KiB requests.
            assert (max_write, max_pages) == (native.MAX_WRITE, 0) == (128 * 1024, 0)
        assert flags & (w.DO_READDIRPLUS | w.READDIRPLUS_AUTO) == \
            offered & (w.DO_READDIRPLUS | w.READDIRPLUS_AUTO)   # on by default
        assert max_ra == 131072 and gran == 1
        info = server.info()
        assert info["kernel_protocol"] == "7.45" and info["protocol"] == "7.38"
        assert info["flags"] == w.flag_names(flags)
        assert info["asked_flags"] == w.flag_names(asked)
        assert info["kernel_flags"] == w.flag_names(offered)
        assert (info["max_write"], info["max_pages"]) == (max_write, max_pages)
    finally:
        stop(t, socks)


@pytest.mark.parametrize("off", ["max_pages", "handle_killpriv_v2:atomic_o_trunc"])
def test_fuse_off_removes_flags_from_what_is_asked(clock, off):
    opts = parse_options([f"transport=native,fuse_off={off},fuse_on=writeback_cache"])
    fs = Filesystem(block_size=BS, clock_ns=clock.ns)
    k, server, t, socks = start(fs, opts.fuse_flags)
    try:
        flags = w.INIT_OUT.unpack(k.init(flags=FLAGS_OFFERED | ALL_SWITCHES))[3]
        for name in off.split(":"):
            assert not flags & w.switch_bit(name)
        assert flags & w.WRITEBACK_CACHE
        assert flags & w.ASYNC_READ
        assert len(server.buf) == server.max_write + native.BUFFER_SLACK
        if off == "max_pages":
            assert server.max_write == native.MAX_WRITE
    finally:
        stop(t, socks)


@pytest.mark.parametrize("major,minor,expect", [
    (7, 31, ("ok", 64, 31)),       # an older kernel: its minor, the full reply
    (7, 22, ("ok", 24, 22)),       # before 7.23: the 24-byte reply
    (8, 0, ("ok", 8, 38)),         # a newer major: ours alone, and wait for another INIT
    (7, 11, ("err", errno.EPROTO, None)),
    (6, 40, ("err", errno.EPROTO, None)),
])
def test_init_follows_the_kernels_version(clock, major, minor, expect):
    fs = Filesystem(block_size=BS, clock_ns=clock.ns)
    k, server, t, socks = start(fs)
    try:
        body = w.INIT_IN.pack(major, minor, 65536, w.ASYNC_READ | w.BIG_WRITES)
        unique = k.send(w.INIT, 0, body)
        got, err, payload = k.answer()
        assert got == unique
        if expect[0] == "err":
            assert err == expect[1]
        else:
            assert err == 0 and len(payload) == expect[1]
            assert struct.unpack_from("<II", payload) == (7, expect[2])
    finally:
        stop(t, socks)


# ---- requests ----------------------------------------------------------------------

def test_files_directories_and_links_round_trip(served):
    k = served.k
    d = entry(k.call(w.MKDIR, ROOT_INO, w.MKDIR_IN.pack(0o755, 0o022) + name(b"d"), uid=7, gid=8))
    assert stat.S_ISDIR(d["mode"]) and d["uid"] == 7 and d["gid"] == 8 and d["nlink"] == 2
    assert d["entry_valid"] == d["attr_valid"] == CACHE_TIMEOUT
    fh = served.create(d["ino"], b"f")
    assert served.write(fh, 0, b"hello world") == 11
    assert served.read(fh, 6, 100) == b"world"
    got = attr_out(k.call(w.GETATTR, fh, w.GETATTR_IN.pack(0, 0, 0)))
    assert got["size"] == 11 and stat.S_ISREG(got["mode"]) and got["uid"] == 1000
    assert entry(k.call(w.LOOKUP, d["ino"], name(b"f")))["ino"] == fh
    ln = entry(k.call(w.LINK, d["ino"], w.LINK_IN.pack(fh) + name(b"g")))
    assert ln["ino"] == fh and ln["nlink"] == 2
    sl = entry(k.call(w.SYMLINK, d["ino"], name(b"s") + name(b"f")))
    assert stat.S_ISLNK(sl["mode"]) and k.call(w.READLINK, sl["ino"]) == b"f"
    nod = entry(k.call(w.MKNOD, d["ino"], w.MKNOD_IN.pack(stat.S_IFIFO | 0o600, 0, 0o022, 0)
                       + name(b"p")))
    assert stat.S_ISFIFO(nod["mode"])
    k.call(w.RENAME, d["ino"], w.RENAME_IN.pack(ROOT_INO) + name(b"g") + name(b"moved"))
    assert entry(k.call(w.LOOKUP, ROOT_INO, name(b"moved")))["ino"] == fh
    k.call(w.RENAME2, ROOT_INO, w.RENAME2_IN.pack(d["ino"], 0, 0) + name(b"moved") + name(b"back"))
    assert served.fs.find(d["ino"], b"back").ino == fh
    assert k.errno_of(w.RENAME2, d["ino"], w.RENAME2_IN.pack(d["ino"], 1, 0)
                      + name(b"back") + name(b"f")) == errno.EEXIST   # RENAME_NOREPLACE
    k.call(w.UNLINK, d["ino"], name(b"back"))
    # Nothing to do, so "not implemented": the kernel stops asking (frontend.NOT_NEEDED).
    assert k.errno_of(w.FLUSH, fh, w.FLUSH_IN.pack(fh, 0, 0, 0)) == errno.ENOSYS
    assert k.errno_of(w.FSYNC, fh, w.FSYNC_IN.pack(fh, 0, 0)) == errno.ENOSYS
    assert k.errno_of(w.FSYNCDIR, ROOT_INO, w.FSYNC_IN.pack(0, 0, 0)) == errno.ENOSYS
    k.call(w.RELEASE, fh, w.RELEASE_IN.pack(fh, 0, 0, 0))
    assert k.errno_of(w.RMDIR, ROOT_INO, name(b"d")) == errno.ENOTEMPTY
    assert k.errno_of(w.UNLINK, ROOT_INO, name(b"nothing")) == errno.ENOENT
    k.call(w.ACCESS, fh, w.ACCESS_IN.pack(4, 0))
    st = w.KSTATFS.unpack(k.call(w.STATFS))
    assert st[5] == 4096 and st[6] == 255 and st[0] == (64 << 20) // 4096


def test_a_missing_name_is_a_cached_negative_entry(served):
    e = entry(served.k.call(w.LOOKUP, ROOT_INO, name(b"missing")))
    assert e["nodeid"] == 0 and e["entry_valid"] == CACHE_TIMEOUT


def test_open_of_a_directory_and_readdir_of_a_file_fail_as_the_core_says(served):
    k = served.k
    d = entry(k.call(w.MKDIR, ROOT_INO, w.MKDIR_IN.pack(0o755, 0) + name(b"d")))["ino"]
    assert k.errno_of(w.OPEN, d, w.OPEN_IN.pack(os.O_RDONLY, 0)) == errno.EISDIR
    fh = served.create(ROOT_INO, b"f")
    assert k.errno_of(w.OPENDIR, fh, w.OPEN_IN.pack(0, 0)) == errno.ENOTDIR
    assert k.errno_of(w.READDIR, ROOT_INO, w.READ_IN.pack(999, 0, 4096, 0, 0, 0, 0)) == errno.EBADF


def test_the_core_copies_write_payloads_out_of_the_request_buffer(served):
    """WRITE hands the core a memoryview over the one request buffer; the
    next request overwrites that buffer. Small writes, whole blocks and
    writes across blocks must all read back what was written."""
    a = served.create(ROOT_INO, b"a")
    b = served.create(ROOT_INO, b"b")
    cases = [(0, b"x" * 100), (BS, b"y" * BS), (BS // 2, b"z" * BS), (3 * BS, b"w" * (2 * BS + 7))]
    for off, data in cases:
        served.write(a, off, data)
        served.write(b, 0, bytes([0x55]) * (4 * BS))   # overwrites the request buffer
    model = bytearray()
    for off, data in cases:
        model[len(model):off] = bytes(max(0, off - len(model)))
        model[off:off + len(data)] = data
    assert served.read(a, 0, len(model) + 100) == bytes(model)
    served.fs.engine.seal_everything()
    assert served.read(a, 0, len(model)) == bytes(model)


def test_lseek_data_and_hole_and_rename_flags(served):
    """LSEEK (SEEK_DATA 3, SEEK_HOLE 4) and RENAME2's flags reach the core."""
    k = served.k
    f = served.create(ROOT_INO, b"sparse")
    served.write(f, 5 * 4096, b"d" * 10)
    seek = lambda off, whence: w.LSEEK_OUT.unpack(  # noqa: E731
        k.call(w.LSEEK, f, w.LSEEK_IN.pack(f, off, whence, 0)))[0]
    assert (seek(0, 3), seek(0, 4), seek(5 * 4096 + 3, 4)) == (5 * 4096, 0, 5 * 4096 + 10)
    assert k.errno_of(w.LSEEK, f, w.LSEEK_IN.pack(f, 5 * 4096 + 10, 3, 0)) == errno.ENXIO
    g = served.create(ROOT_INO, b"other")
    k.call(w.RENAME2, ROOT_INO, w.RENAME2_IN.pack(ROOT_INO, 2, 0) + name(b"sparse") + name(b"other"))
    assert served.fs.find(ROOT_INO, b"other").ino == f and served.fs.find(ROOT_INO, b"sparse").ino == g
    k.call(w.RENAME2, ROOT_INO, w.RENAME2_IN.pack(ROOT_INO, 4, 0) + name(b"other") + name(b"moved"),
           uid=1000, gid=1000)
    wh = served.fs.find(ROOT_INO, b"other")
    assert stat.S_ISCHR(wh.mode) and (wh.uid, wh.gid, wh.rdev) == (1000, 1000, 0)


def test_readdir_packs_whole_entries_up_to_the_size_asked(served):
    k = served.k
    names = {b"file-%03d" % i for i in range(60)} | {b"x" * 255}
    for n in names:
        served.create(ROOT_INO, n)
    dh = w.OPEN_OUT.unpack(k.call(w.OPENDIR, ROOT_INO, w.OPEN_IN.pack(0, 0)))[0]
    seen: list[bytes] = []
    off = 0
    while True:
        out = k.call(w.READDIR, ROOT_INO, w.READ_IN.pack(dh, off, 600, 0, 0, 0, 0))
        assert len(out) <= 600
        if not out:
            break
        pos = 0
        while pos < len(out):
            ino, off, namelen, typ = w.DIRENT.unpack_from(out, pos)
            entry_name = out[pos + w.DIRENT.size:pos + w.DIRENT.size + namelen]
            assert typ == (stat.S_IFDIR if entry_name in (b".", b"..") else stat.S_IFREG) >> 12
            seen.append(entry_name)
            pos += (w.DIRENT.size + namelen + 7) & ~7
        assert pos == len(out)
    assert sorted(seen) == sorted(names | {b".", b".."})
    k.call(w.RELEASEDIR, ROOT_INO, w.RELEASE_IN.pack(dh, 0, 0, 0))
    assert served.fs.dir_handles == {}


def readdir(k: Kernel, dh: int, off: int, size: int) -> list[tuple[int, int, bytes]]:
    """[(ino, next offset, name)] of one READDIR answer."""
    out = k.call(w.READDIR, ROOT_INO, w.READ_IN.pack(dh, off, size, 0, 0, 0, 0))
    assert len(out) <= size
    records, pos = [], 0
    while pos < len(out):
        ino, next_off, namelen, _typ = w.DIRENT.unpack_from(out, pos)
        records.append((ino, next_off, out[pos + w.DIRENT.size:pos + w.DIRENT.size + namelen]))
        pos += (w.DIRENT.size + namelen + 7) & ~7
    assert pos == len(out)
    return records


def test_a_listing_longer_than_a_packed_chunk_comes_whole(clock):
    """An unchanged listing is packed LISTING_CHUNK records at a time
    (Server._packed_listing): answers stop at a chunk's end and go on from
    there, each record once, offsets in order."""
    count = native.LISTING_CHUNK + 500
    fs = Filesystem(block_size=BS, nr_inodes=count + 10, clock_ns=clock.ns)
    for i in range(count):
        fs.create(ROOT_INO, b"n%05d" % i, 0o644, native.Caller())
    k, server, t, socks = start(fs)
    try:
        k.init()
        dh = w.OPEN_OUT.unpack(k.call(w.OPENDIR, ROOT_INO, w.OPEN_IN.pack(0, 0)))[0]
        got, off = [], 0
        while batch := readdir(k, dh, off, 4096):
            got += batch
            off = batch[-1][1]
            assert dh in server._listings           # packed, not walked
        assert [o for _, o, _ in got] == list(range(1, count + 3))
        assert [n for _, _, n in got] == [b".", b".."] + [b"n%05d" % i for i in range(count)]
        assert all(fs.find(ROOT_INO, n).ino == ino for ino, _, n in got[2:])
        readdir(k, dh, 0, 4096)                     # a new listing of the handle
        k.call(w.RELEASEDIR, ROOT_INO, w.RELEASE_IN.pack(dh, 0, 0, 0))
        assert server._listings == {} and fs.dir_handles == {}
    finally:
        stop(t, socks)


@pytest.mark.parametrize("seed", range(6))
def test_readdir_is_stable_while_entries_change(served, seed):
    """As the core's readdir (test_namespace), through READDIR answers of
    random sizes, packed at once until the first change since the snapshot,
    walked entry by entry after it: entries present throughout appear
    exactly once, nothing that never existed shows up."""
    import random
    rng, k = random.Random(seed), served.k
    live = set()
    for i in range(rng.randrange(0, 200)):
        served.create(ROOT_INO, b"e%03d" % i)
        live.add(b"e%03d" % i)
    initial, touched, serial = set(live), set(), 0
    dh = w.OPEN_OUT.unpack(k.call(w.OPENDIR, ROOT_INO, w.OPEN_IN.pack(0, 0)))[0]
    seen, off = [], 0
    while batch := readdir(k, dh, off, rng.randrange(280, 2000)):
        assert batch[0][1] > off
        seen += [n for _, _, n in batch]
        off = batch[-1][1]
        if rng.random() < 0.5:
            continue                        # unchanged: the next answer comes packed
        r = rng.random()
        serial += 1
        if r < 0.4 or not live:
            served.create(ROOT_INO, b"new%d" % serial)
            live.add(b"new%d" % serial)
            touched.add(b"new%d" % serial)
        elif r < 0.8:
            gone = rng.choice(sorted(live))
            k.call(w.UNLINK, ROOT_INO, name(gone))
            live.discard(gone)
            touched.add(gone)
        else:
            old, new = rng.choice(sorted(live)), b"ren%d" % serial
            k.call(w.RENAME2, ROOT_INO, w.RENAME2_IN.pack(ROOT_INO, 0, 0) + name(old) + name(new))
            live.discard(old)
            live.add(new)
            touched.update((old, new))
    k.call(w.RELEASEDIR, ROOT_INO, w.RELEASE_IN.pack(dh, 0, 0, 0))
    assert seen[:2] == [b".", b".."]
    entries = seen[2:]
    assert len(entries) == len(set(entries)), "an entry was listed twice"
    assert initial - touched <= set(entries)
    assert set(entries) <= initial | touched


def test_forget_batch_forget_and_interrupt_get_no_answer(served):
    k = served.k
    ino = served.create(ROOT_INO, b"f")
    k.call(w.RELEASE, ino, w.RELEASE_IN.pack(ino, 0, 0, 0))
    k.call(w.UNLINK, ROOT_INO, name(b"f"))
    k.send(w.INTERRUPT, 0, w.INTERRUPT_IN.pack(12345))
    k.send(w.FORGET, ino, w.FORGET_IN.pack(1))
    other = served.create(ROOT_INO, b"g")          # one lookup reference
    k.call(w.RELEASE, other, w.RELEASE_IN.pack(other, 0, 0, 0))
    k.call(w.UNLINK, ROOT_INO, name(b"g"))
    k.send(w.BATCH_FORGET, 0, w.BATCH_FORGET_IN.pack(2, 0) + w.FORGET_ONE.pack(other, 1)
           + w.FORGET_ONE.pack(999, 1))
    unique = k.send(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))
    assert k.answer()[0] == unique                  # the first answer after them
    assert ino not in served.fs.inodes and other not in served.fs.inodes
    counts = served.server.request_counts()
    assert counts["interrupt"] == 1 and counts["forget"] == 1 and counts["batch_forget"] == 1


def test_xattrs_with_size_probes_flags_and_control_names(served):
    k = served.k
    f = served.create(ROOT_INO, b"f")

    def setx(xname: bytes, value: bytes, flags: int = 0) -> int:
        return k.errno_of(w.SETXATTR, f, w.SETXATTR_IN.pack(len(value), flags) + name(xname) + value)

    def getx(xname: bytes, size: int, ino: int = f) -> bytes:
        return k.call(w.GETXATTR, ino, w.GETXATTR_IN.pack(size, 0) + name(xname))

    assert setx(b"user.a", b"12345") == 0
    assert w.GETXATTR_OUT.unpack(getx(b"user.a", 0))[0] == 5
    assert getx(b"user.a", 5) == b"12345" and getx(b"user.a", 100) == b"12345"
    with pytest.raises(OSError) as e:
        getx(b"user.a", 4)
    assert e.value.errno == errno.ERANGE
    with pytest.raises(OSError) as e:
        getx(b"security.capability", 100)
    assert e.value.errno == errno.ENODATA
    assert setx(b"user.a", b"x", 1) == errno.EEXIST           # XATTR_CREATE
    assert setx(b"user.new", b"x", 2) == errno.ENODATA        # XATTR_REPLACE
    assert setx(b"user.a", b"", 2) == 0 and getx(b"user.a", 10) == b""
    assert setx(b"user.b", b"\0\1binary\0") == 0 and getx(b"user.b", 64) == b"\0\1binary\0"
    listing = k.call(w.LISTXATTR, f, w.GETXATTR_IN.pack(0, 0))
    assert w.GETXATTR_OUT.unpack(listing)[0] == len(b"user.a\0user.b\0")
    assert k.call(w.LISTXATTR, f, w.GETXATTR_IN.pack(64, 0)) == b"user.a\0user.b\0"
    assert k.errno_of(w.LISTXATTR, f, w.GETXATTR_IN.pack(3, 0)) == errno.ERANGE
    k.call(w.REMOVEXATTR, f, name(b"user.a"))
    assert k.errno_of(w.REMOVEXATTR, f, name(b"user.a")) == errno.ENODATA
    stats = json.loads(getx(b"trusted.cctmpfs.stats", 65536, ROOT_INO))
    assert stats["transport"]["name"] == "native" and stats["requests"]["setxattr"] >= 5
    assert json.loads(getx(b"trusted.cctmpfs.check", 65536, ROOT_INO))["count"] == 0
    assert k.errno_of(w.SETXATTR, ROOT_INO, w.SETXATTR_IN.pack(1, 0)
                      + name(b"trusted.cctmpfs.stats") + b"x") == errno.EPERM
    assert k.errno_of(w.REMOVEXATTR, ROOT_INO, name(b"trusted.cctmpfs.check")) == errno.EPERM


def test_setattr_now_is_the_cores_clock(served):
    k, clock = served.k, served.clock
    f = served.create(ROOT_INO, b"f")
    valid = w.FATTR_ATIME | w.FATTR_MTIME | w.FATTR_ATIME_NOW | w.FATTR_MTIME_NOW

    def setattr(valid: int, atime: int = 0, mtime: int = 0, size: int = 0, mode: int = 0) -> dict:
        body = w.SETATTR_IN.pack(valid, 0, 0, size, 0, atime, mtime, 0, 0, 0, 0, mode, 0, 0, 0, 0)
        return attr_out(k.call(w.SETATTR, f, body))

    before = clock.now_ns
    got = setattr(valid)                  # the kernel's "now" fields are 0 here: not used
    assert got["atime_ns"] > before and got["mtime_ns"] > before and got["atime_ns"] <= clock.now_ns
    got = setattr(w.FATTR_ATIME | w.FATTR_MTIME, atime=-5, mtime=1000)   # explicit times, as given
    assert got["atime_ns"] == -5 * 10 ** 9 and got["mtime_ns"] == 1000 * 10 ** 9
    got = setattr(w.FATTR_SIZE | w.FATTR_MODE, size=12345, mode=0o4751)
    assert got["size"] == 12345 and got["mode"] == stat.S_IFREG | 0o4751


def test_killpriv_v2_flags_clear_setid_bits_and_capability(served):
    """WRITE_KILL_SUIDGID, FATTR_KILL_SUIDGID and OPEN_KILL_SUIDGID with
    O_TRUNC clear suid, sgid only with group-exec, and security.capability;
    a WRITE without the flag (a writer with CAP_FSETID) keeps them."""
    k, fs = served.k, served.fs

    def fresh(filename: bytes, mode: int) -> int:
        f = served.create(ROOT_INO, filename)
        fs.setattr(f, mode=mode)
        fs.setxattr(f, b"security.capability", b"cap")
        fs.setxattr(f, b"user.keep", b"v")
        return f

    def mode_and_xattrs(f: int) -> tuple[int, list[bytes]]:
        return stat.S_IMODE(fs.get(f).mode), sorted(fs.listxattr(f))

    f = fresh(b"plain-write", 0o6755)
    served.write(f, 0, b"x")
    assert mode_and_xattrs(f) == (0o6755, [b"security.capability", b"user.keep"])
    for mode, left in ((0o6755, 0o755), (0o6745, 0o2745), (0o2711, 0o711)):
        f = fresh(b"w%o" % mode, mode)
        k.call(w.WRITE, f, w.WRITE_IN.pack(f, 0, 1, w.WRITE_KILL_SUIDGID, 0, 0, 0) + b"x")
        assert mode_and_xattrs(f) == (left, [b"user.keep"])
        f = fresh(b"s%o" % mode, mode)
        body = w.SETATTR_IN.pack(w.FATTR_SIZE | w.FATTR_KILL_SUIDGID, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                 0, 0, 0, 0, 0)
        assert attr_out(k.call(w.SETATTR, f, body))["mode"] == stat.S_IFREG | left
        f = fresh(b"o%o" % mode, mode)
        served.write(f, 0, b"data")
        fh = w.OPEN_OUT.unpack(k.call(w.OPEN, f, w.OPEN_IN.pack(os.O_WRONLY | os.O_TRUNC,
                                                              w.OPEN_KILL_SUIDGID)))[0]
        assert mode_and_xattrs(f) == (left, [b"user.keep"]) and fs.get(f).size == 0
        k.call(w.RELEASE, f, w.RELEASE_IN.pack(fh, 0, 0, 0))
    # O_TRUNC without the kill flag (CAP_FSETID): truncates, keeps the bits.
    f = fresh(b"root-trunc", 0o4755)
    served.write(f, 0, b"data")
    k.call(w.OPEN, f, w.OPEN_IN.pack(os.O_RDWR | os.O_TRUNC, 0))
    assert fs.get(f).size == 0 and stat.S_IMODE(fs.get(f).mode) == 0o4755


def test_setattr_takes_the_kernels_ctime(served):
    """WRITEBACK_CACHE: the kernel owns ctime and sends it (FATTR_CTIME)."""
    k, clock = served.k, served.clock
    f = served.create(ROOT_INO, b"f")
    t = clock.now_ns - 5 * 10 ** 9
    body = w.SETATTR_IN.pack(w.FATTR_MTIME | w.FATTR_CTIME, 0, 0, 0, 0, 0, t // 10 ** 9,
                             t // 10 ** 9, 0, t % 10 ** 9, t % 10 ** 9, 0, 0, 0, 0, 0)
    k.call(w.SETATTR, f, body)
    node = served.fs.get(f)
    assert node.ctime_ns == node.mtime_ns == t


# ---- the rules of the loop ------------------------------------------------------------

def test_garbled_requests_get_eio_and_the_loop_goes_on(served):
    k = served.k
    unique = k.send(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0), length=500)   # wrong length
    assert k.answer()[:2] == (unique, errno.EIO)
    assert k.errno_of(w.LOOKUP, ROOT_INO, b"no-nul") == errno.EIO
    assert k.errno_of(w.WRITE, ROOT_INO, w.WRITE_IN.pack(1, 0, 4096, 0, 0, 0, 0) + b"short") == errno.EIO
    assert k.errno_of(w.SETATTR, ROOT_INO, b"\0" * 10) == errno.EIO                 # too short
    k.unique += 2
    k.sock.send(w.IN_HEADER.pack(30, w.GETATTR, k.unique, 1, 0, 0, 0, 0, 0)[:30])   # a 30-byte request
    assert k.answer()[:2] == (k.unique, errno.EIO)
    k.sock.send(b"\1\2\3")                                                          # no unique at all
    assert stat.S_ISDIR(attr_out(k.call(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0)))["mode"])
    assert served.server.bad_requests == 6
    assert served.server.frontend.internal_errors == 0


def test_unknown_opcodes_get_enosys(served):
    k = served.k
    # SETUPMAPPING, SYNCFS, STATX, and nonsense.
    for opcode in (48, 50, 52, 63, 64, 4096, 2 ** 32 - 1):
        assert k.errno_of(opcode, ROOT_INO, bytes(64)) == errno.ENOSYS
    assert served.server.info()["unknown_requests"] == 7
    k.call(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))


def test_a_handler_bug_is_eio_counted_and_logged(served, monkeypatch, caplog):
    k = served.k

    def broken(ino: int):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.fs, "getattr", broken)
    assert k.errno_of(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0)) == errno.EIO
    assert served.server.frontend.internal_errors == 1
    assert "internal error in getattr" in caplog.text and "a bug" in caplog.text
    monkeypatch.undo()
    k.call(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))
    assert not served.server.lock.locked()


def readdirplus(k: Kernel, dh: int, off: int, size: int) -> list[tuple[int, int, bytes, int]]:
    """[(nodeid, next offset, name, ino)] of one READDIRPLUS answer."""
    out = k.call(w.READDIRPLUS, ROOT_INO, w.READ_IN.pack(dh, off, size, 0, 0, 0, 0))
    assert len(out) <= size
    records, pos = [], 0
    while pos < len(out):
        e = entry(out[pos:pos + w.ENTRY_OUT.size])
        ino, next_off, namelen, typ = w.DIRENT.unpack_from(out, pos + w.ENTRY_OUT.size)
        start = pos + w.DIRENTPLUS_NAME_OFFSET
        records.append((e["nodeid"], next_off, out[start:start + namelen], ino))
        if e["nodeid"]:
            assert (e["ino"], e["mode"] >> 12) == (ino, typ)
        pos += (w.DIRENTPLUS_NAME_OFFSET + namelen + 7) & ~7
    assert pos == len(out)
    return records


def test_readdirplus_gives_a_reference_per_entry_sent_and_none_for_dots(served):
    k, fs = served.k, served.fs
    names = {b"f%03d" % i for i in range(40)} | {b"y" * 255}
    for n in names:
        served.create(ROOT_INO, n)
    k.call(w.MKDIR, ROOT_INO, w.MKDIR_IN.pack(0o40755, 0) + name(b"sub"))
    names.add(b"sub")
    before = {n.ino: n.nlookup for n in fs.inodes.values()}
    dh = w.OPEN_OUT.unpack(k.call(w.OPENDIR, ROOT_INO, w.OPEN_IN.pack(0, 0)))[0]
    seen: list[tuple[int, int, bytes, int]] = []
    off = 0
    while True:
        # 700 bytes: 3-4 records an answer; a record that does not fit waits for the next.
        records = readdirplus(k, dh, off, 700)
        if not records:
            break
        seen += records
        off = records[-1][1]
    assert sorted(r[2] for r in seen) == sorted(names | {b".", b".."})
    for nodeid, _off, entry_name, ino in seen:
        if entry_name in (b".", b".."):
            assert nodeid == 0 and ino == ROOT_INO
        else:
            assert nodeid == ino
    # One reference for every record sent, none for the dots (root's stays 1).
    after = {n.ino: n.nlookup for n in fs.inodes.values()}
    assert after[ROOT_INO] == before[ROOT_INO] == 1
    assert all(after[ino] == before[ino] + 1 for ino in after if ino != ROOT_INO)
    # FORGET gives them all back (CREATE's and MKDIR's too) and RELEASE
    # closes what CREATE opened: unlinked, every file is freed.
    for ino in after:
        if ino != ROOT_INO and fs.opens(ino):
            k.call(w.RELEASE, ino, w.RELEASE_IN.pack(ino, 0, 0, 0))
    forgets = [(ino, after[ino]) for ino in after if ino != ROOT_INO]
    k.send(w.BATCH_FORGET, 0, w.BATCH_FORGET_IN.pack(len(forgets), 0)
           + b"".join(w.FORGET_ONE.pack(*f) for f in forgets))
    for n in names - {b"sub"}:
        k.call(w.UNLINK, ROOT_INO, name(n))
    k.call(w.RMDIR, ROOT_INO, name(b"sub"))
    k.call(w.RELEASEDIR, ROOT_INO, w.RELEASE_IN.pack(dh, 0, 0, 0))
    assert list(fs.inodes) == [ROOT_INO]


def test_readdirplus_answers_are_capped(served):
    k = served.k
    for i in range(400):
        served.create(ROOT_INO, b"g%04d" % i)
    dh = w.OPEN_OUT.unpack(k.call(w.OPENDIR, ROOT_INO, w.OPEN_IN.pack(0, 0)))[0]
    records = readdirplus(k, dh, 0, 128 * 1024)
    size = sum((w.DIRENTPLUS_NAME_OFFSET + len(r[2]) + 7) & ~7 for r in records)
    assert native.READDIRPLUS_MAX - 168 < size <= native.READDIRPLUS_MAX
    # The rest follows from the last offset, each entry once.
    rest = readdirplus(k, dh, records[-1][1], 128 * 1024)
    rest += readdirplus(k, dh, rest[-1][1], 128 * 1024)
    assert len({r[2] for r in records + rest}) == len(records + rest) == 402
    k.call(w.RELEASEDIR, ROOT_INO, w.RELEASE_IN.pack(dh, 0, 0, 0))


def test_readdirplus_skips_what_was_unlinked_since_the_listing_began(served):
    k, fs = served.k, served.fs
    for i in range(10):
        served.create(ROOT_INO, b"f%d" % i)
    dh = w.OPEN_OUT.unpack(k.call(w.OPENDIR, ROOT_INO, w.OPEN_IN.pack(0, 0)))[0]
    first = readdirplus(k, dh, 0, 3 * 168)     # ".", "..", f0
    k.call(w.UNLINK, ROOT_INO, name(b"f5"))
    k.call(w.UNLINK, ROOT_INO, name(first[-1][2]))
    rest = readdirplus(k, dh, first[-1][1], 1 << 16)
    got = [r[2] for r in rest]
    assert b"f5" not in got and len(got) == 8
    k.call(w.RELEASEDIR, ROOT_INO, w.RELEASE_IN.pack(dh, 0, 0, 0))
    # The entry listed before its unlink holds its references (CREATE's and
    # READDIRPLUS's) until FORGET.
    gone = fs.inodes[first[-1][0]]
    assert gone.nlink == 0 and gone.nlookup == 2


def test_an_interrupted_readdirplus_takes_its_references_back(clock, monkeypatch):
    real = os.writev
    drop = []

    def writev(fd, bufs):  # type: ignore[no-untyped-def]
        if drop and len(bufs[1]) > 2 * w.DIRENTPLUS_NAME_OFFSET:
            drop.pop()
            raise OSError(errno.ENOENT, "interrupted")
        return real(fd, bufs)

    monkeypatch.setattr(native.os, "writev", writev)
    fs = Filesystem(block_size=BS, clock_ns=clock.ns)
    k, server, t, socks = start(fs)
    try:
        k.init()
        for i in range(5):
            k.call(w.MKNOD, ROOT_INO, w.MKNOD_IN.pack(stat.S_IFREG | 0o644, 0, 0, 0) + name(b"n%d" % i))
        counts = {n.ino: n.nlookup for n in fs.inodes.values()}
        dh = w.OPEN_OUT.unpack(k.call(w.OPENDIR, ROOT_INO, w.OPEN_IN.pack(0, 0)))[0]
        drop.append(1)
        k.send(w.READDIRPLUS, ROOT_INO, w.READ_IN.pack(dh, 0, 4096, 0, 0, 0, 0))
        k.call(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))
        assert server.info()["dropped_replies"] == 1
        assert {n.ino: n.nlookup for n in fs.inodes.values()} == counts
    finally:
        stop(t, socks)


def test_an_answer_to_an_interrupted_request_is_dropped(clock, monkeypatch):
    real = os.writev
    refusals = [errno.ENOENT, errno.EINVAL]
    #: Answer sizes to drop as if interrupted: CREATE, OPEN, OPENDIR, LOOKUP.
    interrupted: list[int] = []

    def writev(fd, bufs):  # type: ignore[no-untyped-def]
        if interrupted and len(bufs[1]) == interrupted[0]:
            interrupted.pop(0)
            raise OSError(errno.ENOENT, "interrupted")
        if refusals and w.OUT_HEADER.unpack_from(bufs[0])[1] == 0 and len(bufs[1]) == w.ATTR_OUT.size:
            raise OSError(refusals.pop(0), "refused")
        return real(fd, bufs)

    monkeypatch.setattr(native.os, "writev", writev)
    fs = Filesystem(block_size=BS, clock_ns=clock.ns)
    k, server, t, socks = start(fs)
    try:
        k.init()
        k.send(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))      # ENOENT: dropped, no answer
        unique = k.send(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))
        assert k.answer()[:2] == (unique, errno.EIO)                  # EINVAL: a bug, EIO instead
        k.call(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))
        info = server.info()
        assert info["dropped_replies"] == 1 and info["reply_errors"] == 1
        assert server.frontend.internal_errors == 1
        # Interrupted opens and lookups: the references their answers carried
        # are taken back, so an unlinked file is still freed.
        interrupted[:] = [w.ENTRY_OUT.size + w.OPEN_OUT.size]
        k.send(w.CREATE, ROOT_INO, w.CREATE_IN.pack(os.O_RDWR, stat.S_IFREG | 0o644, 0, 0) + name(b"f"))
        ino = entry(k.call(w.LOOKUP, ROOT_INO, name(b"f")))["ino"]
        node = fs.inodes[ino]
        assert (node.nlookup, fs.opens(ino)) == (1, 0)
        interrupted[:] = [w.OPEN_OUT.size, w.ENTRY_OUT.size]
        k.send(w.OPEN, ino, w.OPEN_IN.pack(os.O_RDONLY, 0))
        k.send(w.LOOKUP, ROOT_INO, name(b"f"))
        dh = w.OPEN_OUT.unpack(k.call(w.OPENDIR, ROOT_INO, w.OPEN_IN.pack(0, 0)))[0]
        assert (node.nlookup, fs.opens(ino)) == (1, 0) and list(fs.dir_handles) == [dh]
        interrupted[:] = [w.OPEN_OUT.size]
        k.send(w.OPENDIR, ROOT_INO, w.OPEN_IN.pack(0, 0))
        k.call(w.UNLINK, ROOT_INO, name(b"f"))
        k.send(w.FORGET, ino, w.FORGET_IN.pack(1))
        k.call(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))
        assert ino not in fs.inodes and list(fs.dir_handles) == [dh]
        assert server.info()["dropped_replies"] == 5 and server.frontend.internal_errors == 1
    finally:
        stop(t, socks)


def test_a_stop_signal_leaves_only_a_blocking_read():
    server = native.Server(-1, Frontend(Filesystem(block_size=BS)), threading.Lock())
    server.on_stop_signal(15, None)        # inside a request: finish it, then stop
    assert server.stopping
    server._waiting = True
    with pytest.raises(native._Stop):
        server.on_stop_signal(15, None)
    server.run()                           # stopping: returns without reading


# ---- the writeback guard (writeback.py) ------------------------------------------------

def test_failed_writebacks_send_one_inval_inode_per_inode_from_another_thread():
    from cctmpfs.transport.writeback import WritebackGuard
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.settimeout(10)
    free = [100 << 20]
    guard = WritebackGuard(ours.fileno(), lambda: free[0], 64 << 20)
    assert guard.reserve == 16 << 20            # a quarter of size=, at most 32 MiB
    try:
        guard.start(None)                       # no bdi to bound: logged, reserve kept
        assert not guard.near_full() and guard.direct_opens == 0
        free[0] = 16 << 20
        assert guard.near_full() and guard.direct_opens == 1
        # The reader is not blocked by the notification: queued, sent by the thread.
        guard.writeback_failed(7, errno.ENOSPC)
        msg = theirs.recv(1 << 16)
        length, code, unique = w.OUT_HEADER.unpack_from(msg)
        assert (length, code, unique) == (len(msg), w.NOTIFY_INVAL_INODE, 0) and length == 40
        assert w.NOTIFY_INVAL_INODE_OUT.unpack_from(msg, w.OUT_HEADER.size) == (7, 0, 0)
        assert guard.info()["failed_writebacks"] == 1 and guard.info()["inval_notifications"] == 1
    finally:
        guard.stop()
        ours.close()
        theirs.close()


def test_reaching_the_reserve_invalidates_cached_writers_before_it_returns():
    """Rule 4: the attribute-only notifications are written by the reader
    itself, so the kernel has them before it gets the WRITE's answer (queued
    for the notifier thread, they came late under load and a cached writer
    overran the reserve)."""
    from cctmpfs.transport.writeback import WritebackGuard
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    free = [100 << 20]
    guard = WritebackGuard(ours.fileno(), lambda: free[0], 64 << 20)
    try:
        guard.cached_writer_opened(9)
        guard.cached_writer_opened(9)
        guard.cached_writer_opened(12)
        assert not guard.check_space()
        free[0] = (16 << 20) - 1
        assert guard.check_space() and guard.check_space()    # told once, not per WRITE
        theirs.setblocking(False)       # no thread started: already written, or never
        got = sorted(w.NOTIFY_INVAL_INODE_OUT.unpack_from(theirs.recv(1 << 16), w.OUT_HEADER.size)
                     for _ in range(2))
        assert got == [(9, -1, 0), (12, -1, 0)]
        with pytest.raises(BlockingIOError):
            theirs.recv(1 << 16)
        assert guard.info()["reserve_reached"] == 1 and guard.info()["inval_notifications"] == 2
    finally:
        ours.close()
        theirs.close()


def test_a_failed_writeback_write_is_answered_with_its_errno(clock):
    fs = Filesystem(block_size=BS, size_limit=BS, clock_ns=clock.ns)
    k, server, t, socks = start(fs, DEFAULT_FUSE_FLAGS | {"writeback_cache"})
    try:
        k.init(flags=FLAGS_OFFERED | ALL_SWITCHES)
        assert server.guard is not None
        server.guard.start(None)
        out = k.call(w.CREATE, ROOT_INO, w.CREATE_IN.pack(os.O_RDWR, stat.S_IFREG | 0o644, 0, 0)
                     + name(b"f"))
        f = entry(out)["ino"]
        # The whole 16 KiB mount is within the 1 MiB reserve: opened uncached.
        assert w.OPEN_OUT.unpack(out[w.ENTRY_OUT.size:])[1] == w.FOPEN_DIRECT_IO
        body = w.WRITE_IN.pack(f, 0, 2 * BS, w.WRITE_CACHE, 0, 0, 0) + os.urandom(2 * BS)
        unique = k.send(w.WRITE, f, body)
        # The answer, and the notification (unique 0) from the notifier
        # thread, in either order.
        got = sorted(k.answer()[:2] for _ in range(2))
        assert got == [(0, -w.NOTIFY_INVAL_INODE), (unique, errno.ENOSPC)]
        assert server.guard.failed_writebacks == 1
    finally:
        if server.guard is not None:
            server.guard.stop()
        stop(t, socks)


def test_reads_across_blocks_are_sent_as_pieces_and_match_the_file(served):
    """A READ of many blocks (1 MiB READs span 8 blocks of 128 KiB) is sent
    as the blocks' own pieces behind one header (DataEngine.read_pieces,
    no join): stored, buffered, hole and short-tail blocks, at any offset,
    read back byte for byte, and every piece is immutable (bytes, or a view
    of bytes), so nothing a writer changes after the lock is released can
    reach the kernel half-changed."""
    import random
    rng = random.Random(5)
    fh = served.create(ROOT_INO, b"big")
    model = bytearray()
    for i in range(10):
        chunk = bytes(rng.getrandbits(8) for _ in range(BS // 4)) * 4 if i != 4 else bytes(BS)
        if i == 6:
            model.extend(bytes(BS))          # a hole: written past, never written
            continue
        served.write(fh, i * BS, chunk)
        if len(model) < i * BS:
            model.extend(bytes(i * BS - len(model)))
        model[i * BS:i * BS + BS] = chunk
    served.write(fh, 10 * BS, b"tail")
    model.extend(b"tail")
    served.fs.engine.seal_everything()       # stored blocks ...
    served.write(fh, 2 * BS + 5, b"dirty")   # ... and one buffered again
    model[2 * BS + 5:2 * BS + 10] = b"dirty"
    for off, size in [(0, len(model)), (0, 8 * BS), (BS // 2, 5 * BS), (3 * BS + 1, 7 * BS),
                      (9 * BS, 4 * BS), (len(model) - 2, 100)]:
        assert served.read(fh, off, size) == bytes(model[off:off + size]), (off, size)
        pieces = served.fs.read_pieces(fh, off, size)
        assert b"".join(pieces) == bytes(model[off:off + size])
        for p in pieces:
            assert isinstance(p, bytes) or (isinstance(p, memoryview) and isinstance(p.obj, bytes))


# ---- allow_root ----------------------------------------------------------------------

def test_allow_root_answers_other_users_eacces_but_serves_what_they_hold(served):
    """As libfuse: the kernel lets everyone in (allow_other), the daemon only
    the mounter and root; requests on what an allowed user opened (READ,
    WRITE, RELEASE...) are served whoever sends them."""
    k, server = served.k, served.server
    fh = served.create(ROOT_INO, b"f", 0o666, uid=1000)
    server.allow_only({0, 1000})
    assert server.info()["allow_root"] is True
    assert k.errno_of(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0), uid=2000) == errno.EACCES
    assert k.errno_of(w.LOOKUP, ROOT_INO, name(b"f"), uid=2000) == errno.EACCES
    assert entry(k.call(w.LOOKUP, ROOT_INO, name(b"f"), uid=0))["ino"] == fh
    assert entry(k.call(w.LOOKUP, ROOT_INO, name(b"f"), uid=1000))["ino"] == fh
    out = k.call(w.WRITE, fh, w.WRITE_IN.pack(fh, 0, 2, 0, 0, 0, 0) + b"hi", uid=2000)
    assert w.WRITE_OUT.unpack(out)[0] == 2


# ---- space held by unlinked open files ------------------------------------------------

@pytest.mark.parametrize("spin_us", [0, 200])
def test_a_write_waits_for_the_release_that_frees_its_space(clock, monkeypatch, spin_us):
    """tmpfs frees an unlinked file at its last close; the kernel may send
    our RELEASE and FORGET after the UNLINK and the next WRITE (ASYNC_READ),
    so a WRITE that finds no space while such a file is about waits for them
    (SPACE_WAIT_NS), and is answered ENOSPC if none frees it in time."""
    monkeypatch.setattr(native, "SPACE_WAIT_NS", 300_000_000)
    fs = Filesystem(block_size=BS, size_limit=256 * 1024, nr_inodes=100, clock_ns=clock.ns)
    k, server, t, socks = start(fs, spin_us=spin_us)
    try:
        k.init()
        s = Served(k, server, fs, clock)
        held = s.create(ROOT_INO, b"held")
        assert s.write(held, 0, os.urandom(160 * 1024)) == 160 * 1024
        k.call(w.UNLINK, ROOT_INO, name(b"held"))       # still open: its space stays
        new = s.create(ROOT_INO, b"new")
        chunk = os.urandom(128 * 1024)
        unique = k.send(w.WRITE, new, w.WRITE_IN.pack(new, 0, len(chunk), 0, 0, 0, 0) + chunk)
        # Not answered yet: served requests overtake it.
        k.call(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))
        assert server.info()["space_waits"] == 1
        k.call(w.RELEASE, held, w.RELEASE_IN.pack(held, 0, 0, 0))  # the last close
        # The data stays until FORGET (the kernel may still open it by
        # number); a STATFS meanwhile waits for that FORGET too.
        statfs = k.send(w.STATFS, ROOT_INO)
        k.call(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))  # answered first
        k.send(w.FORGET, held, w.FORGET_IN.pack(fs.inodes[held].nlookup))
        got, err, payload = k.answer()          # the WRITE, retried first
        assert (got, err) == (unique, 0) and w.WRITE_OUT.unpack(payload)[0] == len(chunk)
        got, err, payload = k.answer()          # then the STATFS: held's space is back
        blocks, bfree = w.KSTATFS.unpack(payload)[:2]
        assert (got, err) == (statfs, 0) and blocks - bfree == len(chunk) // 4096
        assert s.read(new, 0, len(chunk)) == chunk
        # Held by a file that stays open: ENOSPC once the wait is over.
        again = s.create(ROOT_INO, b"again")
        assert s.write(again, 0, os.urandom(128 * 1024)) == 128 * 1024   # full now
        k.call(w.UNLINK, ROOT_INO, name(b"again"))
        unique = k.send(w.WRITE, new, w.WRITE_IN.pack(new, len(chunk), len(chunk), 0, 0, 0, 0) + chunk)
        assert k.answer()[:2] == (unique, errno.ENOSPC)
        info = server.info()
        assert (info["space_waits"], info["space_waits_won"]) == (3, 2)   # the STATFS waited too
        # No file without a name about: ENOSPC at once, no wait.
        k.call(w.RELEASE, again, w.RELEASE_IN.pack(again, 0, 0, 0))
        k.send(w.FORGET, again, w.FORGET_IN.pack(fs.inodes[again].nlookup))
        assert s.write(new, len(chunk), chunk) == len(chunk)             # full again
        assert k.errno_of(w.WRITE, new, w.WRITE_IN.pack(new, 2 * len(chunk), len(chunk), 0, 0, 0, 0)
                          + chunk) == errno.ENOSPC
        assert server.info()["space_waits"] == 3
    finally:
        stop(t, socks)


def test_a_create_at_nr_inodes_waits_for_the_forget_that_frees_an_inode(clock, monkeypatch):
    monkeypatch.setattr(native, "SPACE_WAIT_NS", 300_000_000)
    fs = Filesystem(block_size=BS, nr_inodes=3, clock_ns=clock.ns)
    k, server, t, socks = start(fs)
    try:
        k.init()
        for n in (b"a", b"b"):
            k.call(w.MKNOD, ROOT_INO, w.MKNOD_IN.pack(stat.S_IFREG | 0o644, 0, 0, 0) + name(n))
        assert k.errno_of(w.MKNOD, ROOT_INO, w.MKNOD_IN.pack(stat.S_IFREG | 0o644, 0, 0, 0)
                          + name(b"c")) == errno.ENOSPC          # nothing owed: at once
        b = fs.find(ROOT_INO, b"b").ino
        k.call(w.UNLINK, ROOT_INO, name(b"b"))                   # awaits its FORGET
        unique = k.send(w.MKNOD, ROOT_INO, w.MKNOD_IN.pack(stat.S_IFREG | 0o644, 0, 0, 0) + name(b"c"))
        k.call(w.GETATTR, ROOT_INO, w.GETATTR_IN.pack(0, 0, 0))  # answered first
        k.send(w.FORGET, b, w.FORGET_IN.pack(fs.inodes[b].nlookup))
        got, err, payload = k.answer()
        assert (got, err) == (unique, 0) and entry(payload)["ino"] == fs.find(ROOT_INO, b"c").ino
        assert server.info()["space_waits_won"] == 1
    finally:
        stop(t, socks)


# ---- write-only opens (wronly=direct, directwrite.py) --------------------------------

def _create_wronly(k: Kernel, filename: bytes, mode: int = 0o644) -> tuple[int, int, int]:
    """CREATE with O_WRONLY: (ino, fh, open flags)."""
    out = k.call(w.CREATE, ROOT_INO, w.CREATE_IN.pack(os.O_WRONLY, stat.S_IFREG | mode, 0o022, 0)
                 + name(filename), uid=1000, gid=1000)
    fh, open_flags, _ = w.OPEN_OUT.unpack(out[w.ENTRY_OUT.size:])
    return entry(out)["ino"], fh, open_flags


def _write(k: Kernel, ino: int, fh: int, off: int, data: bytes) -> int:
    return w.WRITE_OUT.unpack(k.call(w.WRITE, ino, w.WRITE_IN.pack(fh, off, len(data), 0, 0, 0, 0)
                                     + data))[0]


#: Stores in 64 KiB pieces here: a socket message cannot carry 1 MiB.
CHUNK = 64 << 10


@pytest.fixture
def small_chunks(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(directwrite, "STORE_CHUNK", CHUNK)


def _release_collecting_stores(k: Kernel, nodeid: int, fh: int) -> list[tuple[int, int, bytes]]:
    """RELEASE fh; the NOTIFY_STOREs written before its answer, as
    (ino, offset, data)."""
    unique = k.send(w.RELEASE, nodeid, w.RELEASE_IN.pack(fh, 0, 0, 0))
    stores = []
    while True:
        got, err, payload = k.answer()
        if got == unique:
            assert err == 0
            return stores
        assert (got, err) == (0, -w.NOTIFY_STORE)    # a notification: unique 0, its code
        ino, off, size, _pad = w.NOTIFY_STORE_OUT.unpack_from(payload)
        data = payload[w.NOTIFY_STORE_OUT.size:]
        assert len(data) == size
        stores.append((ino, off, data))


def test_a_write_only_open_bypasses_the_page_cache_and_its_last_close_fills_it(
        served, small_chunks):
    """An O_WRONLY open is FOPEN_DIRECT_IO (keeping what the page cache has);
    the last close of the file, here a reader's, stores what it holds into
    the page cache: the pieces with data, not the hole between them."""
    k, server = served.k, served.server
    ino, fh, open_flags = _create_wronly(k, b"w")
    assert open_flags == w.FOPEN_DIRECT_IO | w.FOPEN_KEEP_CACHE and fh != ino
    head, tail_off = os.urandom(40_000), 3 * CHUNK + 10
    assert _write(k, ino, fh, 0, head) == len(head)
    assert _write(k, ino, fh, tail_off, b"tail") == 4
    rfh, r_flags, _ = w.OPEN_OUT.unpack(k.call(w.OPEN, ino, w.OPEN_IN.pack(os.O_RDONLY, 0)))
    assert (rfh, r_flags) == (ino, w.FOPEN_KEEP_CACHE)
    assert _release_collecting_stores(k, ino, fh) == []      # the reader still has it open
    stores = _release_collecting_stores(k, ino, rfh)
    assert stores == [(ino, 0, head + bytes(CHUNK - len(head))),
                      (ino, 3 * CHUNK, bytes(10) + b"tail")]
    assert server.info()["direct_writers"] == {
        "opens": 1, "stores": 1, "stored_bytes": CHUNK + 14, "skipped_bytes": 0, "refused": 0}
    # A reader alone stores nothing: the page cache has what it read.
    rfh = w.OPEN_OUT.unpack(k.call(w.OPEN, ino, w.OPEN_IN.pack(os.O_RDONLY, 0)))[0]
    assert _release_collecting_stores(k, ino, rfh) == []


def test_a_store_keeps_to_its_budget_and_skips_unnamed_files(served, small_chunks, monkeypatch):
    k, server = served.k, served.server
    monkeypatch.setattr(directwrite, "STORE_MAX", CHUNK)
    ino, fh, _ = _create_wronly(k, b"big")
    _write(k, ino, fh, 0, b"a" * CHUNK)
    _write(k, ino, fh, CHUNK, b"b" * 5000)
    stores = _release_collecting_stores(k, ino, fh)
    assert [(i, off, len(data)) for i, off, data in stores] == [(ino, 0, CHUNK)]
    assert server.info()["direct_writers"]["skipped_bytes"] == 5000
    # Unlinked while open: nothing can open it again, so nothing to store.
    ino, fh, _ = _create_wronly(k, b"gone")
    _write(k, ino, fh, 0, b"data")
    k.call(w.UNLINK, ROOT_INO, name(b"gone"))
    assert _release_collecting_stores(k, ino, fh) == []
    assert served.fs.opens(ino) == 0


def test_only_the_span_written_directly_is_stored(served, small_chunks):
    """An appender's close stores the pages it wrote, not the whole file; a
    copy into a write-only handle (COPY_FILE_RANGE, no WRITE) stores
    nothing, as the page cache held nothing of it before either."""
    k, server = served.k, served.server
    log = served.create(ROOT_INO, b"log")                       # written through the cache
    served.write(log, 0, b"x" * (3 * CHUNK))
    k.call(w.RELEASE, log, w.RELEASE_IN.pack(log, 0, 0, 0))
    fh = w.OPEN_OUT.unpack(k.call(w.OPEN, log, w.OPEN_IN.pack(os.O_WRONLY | os.O_APPEND, 0)))[0]
    _write(k, log, fh, 3 * CHUNK, b"line\n")
    end = 3 * CHUNK + 5
    assert _release_collecting_stores(k, log, fh) == [(log, 3 * CHUNK, b"line\n")]
    fh = w.OPEN_OUT.unpack(k.call(w.OPEN, log, w.OPEN_IN.pack(os.O_WRONLY, 0)))[0]
    _write(k, log, fh, end - 3, b"!!")                          # inside the last page
    assert _release_collecting_stores(k, log, fh) == [(log, 3 * CHUNK, b"li!!\n")]
    assert served.fs.read(log, 0, 1 << 20) == b"x" * (3 * CHUNK) + b"li!!\n"
    copy, cfh, _ = _create_wronly(k, b"copy")
    out = k.call(w.COPY_FILE_RANGE, log, w.COPY_FILE_RANGE_IN.pack(log, 0, copy, cfh, 0, end, 0))
    assert w.WRITE_OUT.unpack(out)[0] == end
    assert _release_collecting_stores(k, copy, cfh) == []
    assert server.info()["direct_writers"]["stored_bytes"] == 5 + 5


def test_wronly_cached_keeps_write_only_opens_in_the_page_cache(clock):
    fs = Filesystem(block_size=BS, clock_ns=clock.ns)
    k, server, t, socks = start(fs, wronly_direct=False)
    try:
        k.init()
        ino, fh, open_flags = _create_wronly(k, b"w")
        assert (fh, open_flags) == (ino, w.FOPEN_KEEP_CACHE)
        k.call(w.WRITE, ino, w.WRITE_IN.pack(fh, 0, 4, 0, 0, 0, 0) + b"data")
        assert _release_collecting_stores(k, ino, fh) == []
        assert server.info()["direct_writers"] is None
    finally:
        stop(t, socks)


def test_a_direct_write_drops_the_file_capability_even_for_root(served):
    """On tmpfs any write(2) drops security.capability; the kernel does it
    for page-cache writes, not for direct ones, so the daemon does. setuid
    stays for a writer with CAP_FSETID (no WRITE_KILL_SUIDGID)."""
    k, fs = served.k, served.fs
    ino, fh, _ = _create_wronly(k, b"cap", 0o4755)
    fs.setxattr(ino, b"security.capability", b"v")
    fs.setxattr(ino, b"user.keep", b"v")
    _write(k, ino, fh, 0, b"x")
    assert fs.listxattr(ino) == [b"user.keep"]
    assert stat.S_IMODE(fs.get(ino).mode) == 0o4755
    # Through a cached handle the kernel drops it itself (GETXATTR, REMOVEXATTR).
    other = served.create(ROOT_INO, b"cached")
    fs.setxattr(other, b"security.capability", b"v")
    served.write(other, 0, b"x")
    assert fs.listxattr(other) == [b"security.capability"]


def test_a_store_that_fails_loses_nothing_and_the_loop_goes_on(served, small_chunks):
    """A decode that fails in the store (an injected bug) is the RELEASE's
    error, which the kernel ignores: the file was closed first, keeps its
    data, and is not stored again."""
    k, server, fs = served.k, served.server, served.fs
    data = os.urandom(1000) * 60
    ino, fh, _ = _create_wronly(k, b"f")
    _write(k, ino, fh, 0, data)
    fs.engine.make_room()                   # sealed, no clean copy left: the store decodes
    faults.arm("read.decode:1")
    try:
        assert k.errno_of(w.RELEASE, ino, w.RELEASE_IN.pack(fh, 0, 0, 0)) == errno.EIO
    finally:
        faults.disarm()
    assert server.frontend.internal_errors == 1
    assert fs.opens(ino) == 0 and ino not in server.direct.written
    assert fs.read(ino, 0, 1 << 20) == data
    assert server.info()["direct_writers"]["stores"] == 0


def test_refused_stores_are_counted_and_logged_once(served, small_chunks, monkeypatch, caplog):
    """The kernel refusing a store (ENOMEM under memory pressure) costs
    nothing but the store: the close is answered, the refusal counted, and
    logged once per errno, not per file."""
    k, server = served.k, served.server
    monkeypatch.setattr(directwrite.w, "notify_store", lambda *a: errno.ENOMEM)
    for name_ in (b"a", b"b", b"c"):
        ino, fh, _ = _create_wronly(k, name_)
        _write(k, ino, fh, 0, b"data")
        assert _release_collecting_stores(k, ino, fh) == []
    info = server.info()["direct_writers"]
    assert (info["refused"], info["stores"]) == (3, 0)
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "page cache" in r.message]
    assert len(warnings) == 1 and "ENOMEM" in warnings[0].message
