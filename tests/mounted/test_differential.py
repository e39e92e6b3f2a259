"""Differential test: random operation sequences on cctmpfs and on a real tmpfs.

Hypothesis generates sequences of file operations over a small name space
(so that names collide, directories fill and empty, links and renames hit
existing entries). Each step runs on both file systems; the results (data,
byte counts, errno) must be equal, and so must the whole tree after each
step: types, modes, sizes, link counts, contents, link targets and which
names share an inode. cctmpfs is mounted with block_size=16k and a small
buffer so that offsets cross block boundaries and blocks are sealed and
reloaded, and with dedup on: copies and "pooled" data repeat whole blocks, so
blocks are shared and then written, truncated and unlinked copy-on-write. At the end of each example the page cache is dropped and the tree
compared again, so the data really comes back from the daemon.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import stat
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.mounted

PATHS = ["a", "b", "c", "d", "d/a", "d/b", "d/e", "d/e/a", "e", "e/a"]
MODES = [0o644, 0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o000, 0o777]
BS = 16 * 1024
INTERESTING_OFFSETS = [0, 1, BS - 1, BS, BS + 1, 2 * BS - 3, 3 * BS, 4 * BS + 7, 100_000]
SLOTS = 2

paths = st.sampled_from(PATHS)
offsets = st.one_of(st.sampled_from(INTERESTING_OFFSETS), st.integers(0, 5 * BS))
lengths = st.one_of(st.sampled_from([0, 1, 4096, BS - 1, BS, BS + 1, 2 * BS]),
                    st.integers(0, 3 * BS))
data_kinds = st.sampled_from(["random", "zeros", "text", "mixed", "pooled", "pooled"])
seeds = st.integers(0, 2 ** 16)
slots = st.integers(0, SLOTS - 1)
open_flags = st.sampled_from(["creat", "trunc", "append", "plain", "rdonly", "excl"])

write_ops = st.tuples(st.just("write"), paths, offsets, lengths, data_kinds, seeds, open_flags)
read_ops = st.tuples(st.just("read"), paths, offsets, lengths)
ops = st.one_of(
    write_ops, write_ops, write_ops, read_ops, read_ops,
    st.tuples(st.just("truncate"), paths, st.one_of(offsets, st.just(0))),
    st.tuples(st.just("append"), paths, lengths, data_kinds, seeds),
    st.tuples(st.just("mkdir"), paths),
    st.tuples(st.just("rmdir"), paths),
    st.tuples(st.just("unlink"), paths),
    st.tuples(st.just("rename"), paths, paths),
    st.tuples(st.just("link"), paths, paths),
    st.tuples(st.just("copy"), paths, paths),
    st.tuples(st.just("copy"), paths, paths),
    st.tuples(st.just("symlink"), paths, paths),
    st.tuples(st.just("chmod"), paths, st.sampled_from(MODES)),
    st.tuples(st.just("stat"), paths),
    st.tuples(st.just("open"), slots, paths, open_flags),
    st.tuples(st.just("fdwrite"), slots, offsets, lengths, data_kinds, seeds),
    st.tuples(st.just("fdread"), slots, offsets, lengths),
    st.tuples(st.just("fdtruncate"), slots, offsets),
    st.tuples(st.just("fdstat"), slots),
    st.tuples(st.just("close"), slots),
)


#: Every example starts from this tree, so that operations meet existing
#: files and directories from the first step.
SETUP = [
    ("mkdir", "d"), ("mkdir", "d/e"), ("mkdir", "e"),
    ("write", "a", 0, 40_000, "mixed", 1, "creat"),
    ("write", "d/a", 5000, 20_000, "text", 2, "creat"),
    ("write", "e/a", 3 * BS, BS + 5, "random", 3, "creat"),
]


#: Whole blocks that "pooled" data repeats, so that identical blocks land in
#: several files and places and the mount really shares them (dedup).
POOL = [random.Random(f"pool-{i}").randbytes(BS // 2) * 2 for i in range(3)]


def make_data(kind: str, n: int, seed: int) -> bytes:
    if kind == "pooled":
        return b"".join(POOL[(seed + i * i) % 3] for i in range(n // BS + 1))[:n]
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(n)
    if kind == "zeros":
        return bytes(n)
    if kind == "text":
        word = b"block %d " % seed
        return (word * (n // len(word) + 1))[:n]
    # mixed: runs of zeros, text and noise
    out = bytearray()
    while len(out) < n:
        k = rng.choice(["z", "t", "r"])
        m = rng.randint(1, 9000)
        out += bytes(m) if k == "z" else (b"abc" * m)[:m] if k == "t" else rng.randbytes(m)
    return bytes(out[:n])


FLAGS = {
    "creat": os.O_WRONLY | os.O_CREAT,
    "trunc": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "append": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "plain": os.O_RDWR,
    "rdonly": os.O_RDONLY,
    "excl": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}


def describe_stat(s: os.stat_result) -> tuple:
    kind = stat.S_IFMT(s.st_mode)
    size = s.st_size
    return (kind, oct(stat.S_IMODE(s.st_mode)), s.st_nlink, size)


class Side:
    """One file system under test, with its open descriptors."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fds: list[Any] = [None] * SLOTS

    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def run(self, op: tuple) -> Any:
        try:
            return self._run(op)
        except OSError as e:
            return errno.errorcode.get(e.errno, e.errno)

    def _run(self, op: tuple) -> Any:
        name = op[0]
        if name == "write":
            _, path, off, n, kind, seed, flags = op
            fd = os.open(self.p(path), FLAGS[flags], 0o644)
            try:
                data = make_data(kind, n, seed)
                if flags == "append":
                    return os.write(fd, data)
                return os.pwrite(fd, data, off)
            finally:
                os.close(fd)
        if name == "read":
            _, path, off, n = op
            fd = os.open(self.p(path), os.O_RDONLY)
            try:
                return hashlib.sha1(os.pread(fd, n, off)).hexdigest(), len(os.pread(fd, n, off))
            finally:
                os.close(fd)
        if name == "truncate":
            return os.truncate(self.p(op[1]), op[2])
        if name == "append":
            _, path, n, kind, seed = op
            with open(self.p(path), "ab") as f:
                return f.write(make_data(kind, n, seed))
        if name == "mkdir":
            return os.mkdir(self.p(op[1]), 0o755)
        if name == "rmdir":
            return os.rmdir(self.p(op[1]))
        if name == "unlink":
            return os.unlink(self.p(op[1]))
        if name == "rename":
            return os.rename(self.p(op[1]), self.p(op[2]))
        if name == "link":
            return os.link(self.p(op[1]), self.p(op[2]), follow_symlinks=False)
        if name == "symlink":
            return os.symlink(op[1], self.p(op[2]))
        if name == "copy":
            shutil.copyfile(self.p(op[1]), self.p(op[2]))   # as cp: whole blocks, same content
            return "copied"
        if name == "chmod":
            return os.chmod(self.p(op[1]), op[2], follow_symlinks=False) \
                if not os.path.islink(self.p(op[1])) else "skip-symlink"
        if name == "stat":
            return describe_stat(os.lstat(self.p(op[1])))
        if name == "open":
            _, slot, path, flags = op
            if self.fds[slot] is not None:
                os.close(self.fds[slot])
                self.fds[slot] = None
            self.fds[slot] = os.open(self.p(path), FLAGS[flags], 0o600)
            return "opened"
        fd = self.fds[op[1]]
        if fd is None:
            return "no-fd"
        if name == "fdwrite":
            _, _slot, off, n, kind, seed = op
            return os.pwrite(fd, make_data(kind, n, seed), off)
        if name == "fdread":
            _, _slot, off, n = op
            data = os.pread(fd, n, off)
            return hashlib.sha1(data).hexdigest(), len(data)
        if name == "fdtruncate":
            return os.ftruncate(fd, op[2])
        if name == "fdstat":
            return describe_stat(os.fstat(fd))
        if name == "close":
            os.close(fd)
            self.fds[op[1]] = None
            return "closed"
        raise AssertionError(op)

    def snapshot(self) -> dict[str, tuple]:
        """Everything comparable about the tree, with inode identity as link groups."""
        out: dict[str, tuple] = {}
        inos: dict[str, int] = {}
        for dirpath, dirs, files in os.walk(self.root):
            for name in dirs + files:
                p = os.path.join(dirpath, name)
                rel = os.path.relpath(p, self.root)
                s = os.lstat(p)
                inos[rel] = s.st_ino
                d = describe_stat(s)
                if stat.S_ISREG(s.st_mode):
                    with open(p, "rb") as f:
                        d += (hashlib.sha1(f.read()).hexdigest(),)
                elif stat.S_ISLNK(s.st_mode):
                    d += (os.readlink(p),)
                out[rel] = d
        # Which names share an inode: each name's group is its inode's first name.
        first: dict[int, str] = {}
        for rel in sorted(inos):
            first.setdefault(inos[rel], rel)
        for rel in inos:
            out[rel] += ("same inode as " + first[inos[rel]],)
        out["."] = describe_stat(os.lstat(self.root))
        return out

    def reset(self) -> None:
        for i, fd in enumerate(self.fds):
            if fd is not None:
                os.close(fd)
                self.fds[i] = None
        for name in os.listdir(self.root):
            p = self.p(name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)


def _drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@pytest.fixture
def sides(mount_cct, tmpfs_mount):
    mp = mount_cct("size=64m,block_size=16k,buffer=64k")
    cct = Side(mp)
    ref = Side(tmpfs_mount("size=64m"))
    yield cct, ref
    cct.reset()
    ref.reset()
    stats = mp.stats(settle=True)
    assert stats["counters"]["shared"] > 0, "dedup never shared a block: the workload is too weak"
    assert stats["stored_bytes"] == 0 and stats["dedup"]["index_entries"] == 0


#: CCTMPFS_DIFF_EXAMPLES raises it for a longer hunt.
EXAMPLES = int(os.environ.get("CCTMPFS_DIFF_EXAMPLES", "400"))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(program=st.lists(ops, min_size=10, max_size=60))
def test_cctmpfs_matches_tmpfs(sides, program):
    cct, ref = sides
    event(f"program length {len(program) // 10 * 10}+")
    failures = 0
    try:
        for op in SETUP:
            assert cct.run(op) == ref.run(op), op
        for i, op in enumerate(program):
            expected = ref.run(op)
            got = cct.run(op)
            failures += isinstance(expected, str) and expected.startswith("E")
            note(f"step {i}: {op!r} -> {expected!r}")
            assert got == expected, f"step {i} {op!r}: cctmpfs {got!r}, tmpfs {expected!r}"
            snap_ref, snap_cct = ref.snapshot(), cct.snapshot()
            assert snap_cct == snap_ref, f"tree differs after step {i} {op!r}:\n" + _diff(snap_cct, snap_ref)
        event(f"failed steps {failures * 100 // len(program) // 20 * 20}%+")
        # Data must also come back from the daemon, not the page cache.
        _drop_caches()
        snap_ref, snap_cct = ref.snapshot(), cct.snapshot()
        assert snap_cct == snap_ref, "tree differs after drop_caches:\n" + _diff(snap_cct, snap_ref)
    finally:
        cct.reset()
        ref.reset()


def _diff(got: dict, expected: dict) -> str:
    keys = sorted(set(got) | set(expected))
    return "\n".join(f"  {k}: cctmpfs={got.get(k)!r} tmpfs={expected.get(k)!r}"
                     for k in keys if got.get(k) != expected.get(k))
