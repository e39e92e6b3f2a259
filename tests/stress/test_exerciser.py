"""Stress: seeded random I/O checked byte for byte, and fio's own verifier.

The exerciser runs several threads, each with its own files and an
in-memory model of them, doing random writes (random, zero, compressible
and pooled data, the last made of whole blocks repeated across files so that
dedup shares them, across 16 KiB block boundaries), reads, truncates and
reopens, plus a file shared by all threads in which each owns every Nth
page, so that neighbouring pages of one block are rewritten concurrently. A small hot
buffer (buffer=64k) forces blocks to be sealed and loaded again all the
time; the main thread periodically settles the mount (seal everything) and
drops the page cache so that reads really reach the daemon.

Runs CCTMPFS_STRESS_SECONDS per variant (default 20); set
CCTMPFS_SOAK_SECONDS for a long soak. Every failure message names the seed
and the thread's last operations.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

pytestmark = pytest.mark.mounted

KiB, MiB = 1024, 1024 * 1024
BS = 16 * KiB
PAGE = 4096
SECONDS = float(os.environ.get("CCTMPFS_SOAK_SECONDS") or os.environ.get("CCTMPFS_STRESS_SECONDS") or 20)
SEED = int(os.environ.get("CCTMPFS_STRESS_SEED", "20240611"))
THREADS = 4
FILES_PER_THREAD = 2
MAX_FILE = 3 * MiB
SHARED_PAGES = 256          # pages of the shared file (1 MiB)
REPO_ROOT = Path(__file__).resolve().parents[2]
FIO_JOB = REPO_ROOT / "examples" / "fio" / "verify.fio"


#: Whole blocks that pooled data repeats, so that identical blocks appear in
#: every thread's files and dedup shares them (and unshares them on writes).
POOL = [random.Random(f"pool-{i}").randbytes(BS // 4) * 4 for i in range(4)]


def make_data(rng: random.Random, n: int) -> bytes:
    kind = rng.random()
    if kind < 0.3:
        return rng.randbytes(n)
    if kind < 0.42:
        return bytes(n)
    if kind < 0.55:
        return b"".join(rng.choice(POOL) for _ in range(n // BS + 1))[:n]
    if kind < 0.85:
        word = b"%d-the quick brown fox " % rng.randint(0, 999)
        return (word * (n // len(word) + 1))[:n]
    out = bytearray()
    while len(out) < n:
        m = rng.randint(1, 5000)
        out += bytes(m) if rng.random() < 0.5 else rng.randbytes(m)
    return bytes(out[:n])


def pick_offset(rng: random.Random, limit: int) -> int:
    r = rng.random()
    if r < 0.3:   # near a block boundary
        return max(0, rng.randint(0, limit // BS) * BS + rng.randint(-3, 3))
    if r < 0.4:
        return rng.randint(0, limit // PAGE) * PAGE
    return rng.randint(0, limit)


def pick_length(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.2:
        return rng.choice([1, PAGE, BS - 1, BS, BS + 1, 2 * BS, 128 * KiB])
    if r < 0.8:
        return rng.randint(1, 3 * BS)
    return rng.randint(1, 300 * KiB)


class Failure(AssertionError):
    pass


class Worker(threading.Thread):
    """One thread: its own files and models, plus its pages of the shared file."""

    def __init__(self, root: str, tid: int, seed: int, deadline: float, shared: str) -> None:
        super().__init__(name=f"exerciser-{tid}", daemon=True)
        self.root, self.tid, self.seed, self.deadline = root, tid, seed, deadline
        self.rng = random.Random(seed)
        self.paths = [os.path.join(root, f"t{tid}-f{i}") for i in range(FILES_PER_THREAD)]
        self.models = [bytearray() for _ in self.paths]
        self.fds = [os.open(p, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644) for p in self.paths]
        self.shared_fd = os.open(shared, os.O_RDWR)
        self.shared_pages = {}   # page index -> content, for this thread's pages
        self.log: collections.deque = collections.deque(maxlen=25)
        self.ops = 0
        self.error: Optional[BaseException] = None

    def fail(self, what: str) -> None:
        raise Failure(f"thread {self.tid} (seed {self.seed}) after {self.ops} ops: {what}\n"
                      "last operations:\n  " + "\n  ".join(self.log))

    def check(self, i: int, off: int, n: int, why: str) -> None:
        got = os.pread(self.fds[i], n, off)
        want = bytes(self.models[i][off:off + n])
        if got != want:
            first = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]),
                         min(len(got), len(want)))
            self.fail(f"{why}: file {i} read({off}, {n}) differs from the model at byte "
                      f"{off + first} (got {len(got)} bytes, want {len(want)}; "
                      f"got {got[first:first + 16]!r}, want {want[first:first + 16]!r})")

    def verify_all(self, why: str) -> None:
        for i in range(len(self.paths)):
            size = os.fstat(self.fds[i]).st_size
            if size != len(self.models[i]):
                self.fail(f"{why}: file {i} st_size {size}, model {len(self.models[i])}")
            for off in range(0, size, 1 * MiB):
                self.check(i, off, 1 * MiB, why)
        for page, content in self.shared_pages.items():
            got = os.pread(self.shared_fd, PAGE, page * PAGE)
            if got != content:
                self.fail(f"{why}: shared page {page} differs")

    def step(self) -> None:
        rng = self.rng
        i = rng.randrange(len(self.paths))
        model = self.models[i]
        r = rng.random()
        if r < 0.45:
            off = pick_offset(rng, MAX_FILE)
            data = make_data(rng, pick_length(rng))
            self.log.append(f"write file {i} off={off} len={len(data)}")
            n = os.pwrite(self.fds[i], data, off)
            if n != len(data):
                self.fail(f"short write {n} of {len(data)}")
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + n] = data
        elif r < 0.70:
            off = pick_offset(rng, len(model) + BS)
            n = pick_length(rng)
            self.log.append(f"read file {i} off={off} len={n}")
            self.check(i, off, n, "read")
        elif r < 0.78:
            size = rng.choice([0, pick_offset(rng, len(model)), pick_offset(rng, MAX_FILE)])
            self.log.append(f"truncate file {i} to {size}")
            os.ftruncate(self.fds[i], size)
            if size < len(model):
                del model[size:]
            else:
                model.extend(bytes(size - len(model)))
        elif r < 0.83:
            # Drop this file's cached pages, then read: the data comes from the daemon.
            self.log.append(f"fadvise DONTNEED file {i} + read")
            os.posix_fadvise(self.fds[i], 0, 0, os.POSIX_FADV_DONTNEED)
            off = pick_offset(rng, len(model))
            self.check(i, off, 256 * KiB, "read after fadvise(DONTNEED)")
        elif r < 0.86:
            # Close and reopen (the release queues the file's dirty blocks for sealing).
            self.log.append(f"reopen file {i}")
            os.close(self.fds[i])
            self.fds[i] = os.open(self.paths[i], os.O_RDWR)
        elif r < 0.97:
            page = rng.randrange(self.tid, SHARED_PAGES, THREADS)
            if rng.random() < 0.6 or page not in self.shared_pages:
                content = make_data(rng, PAGE)
                self.log.append(f"write shared page {page}")
                os.pwrite(self.shared_fd, content, page * PAGE)
                self.shared_pages[page] = content
            else:
                self.log.append(f"read shared page {page}")
                if os.pread(self.shared_fd, PAGE, page * PAGE) != self.shared_pages[page]:
                    self.fail(f"shared page {page} differs")
        else:
            self.log.append(f"verify file {i}")
            os.posix_fadvise(self.fds[i], 0, 0, os.POSIX_FADV_DONTNEED)
            size = os.fstat(self.fds[i]).st_size
            if size != len(model):
                self.fail(f"file {i} st_size {size}, model {len(model)}")
            self.check(i, 0, size, "whole-file verify")
        self.ops += 1

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                self.step()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e

    def close(self) -> None:
        for fd in self.fds + [self.shared_fd]:
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.mark.parametrize("workers", [1, 4])
def test_random_exerciser(mount_cct, drop_caches, workers):
    mp = mount_cct(f"size=1g,block_size=16k,buffer=64k,workers={workers}")
    seed = SEED + workers
    shared = os.path.join(mp, "shared")
    with open(shared, "wb") as f:
        f.truncate(SHARED_PAGES * PAGE)
    deadline = time.monotonic() + SECONDS
    threads = [Worker(mp, t, seed * 100 + t, deadline, shared) for t in range(THREADS)]
    settles = drops = 0
    try:
        for t in threads:
            t.start()
        next_settle, next_drop = time.monotonic() + 1.0, time.monotonic() + 2.5
        while any(t.is_alive() for t in threads):
            now = time.monotonic()
            if now >= next_settle:
                os.getxattr(mp, "trusted.cctmpfs.stats-settled")   # as `cctmpfs stats --settle`
                settles += 1
                next_settle = now + 1.0
            if now >= next_drop:
                drop_caches()
                drops += 1
                next_drop = now + 2.5
            time.sleep(0.05)
        for t in threads:
            t.join()
            if t.error is not None:
                raise t.error
        # Everything settled and out of the page cache: a last full check.
        os.getxattr(mp, "trusted.cctmpfs.stats-settled")
        drop_caches()
        for t in threads:
            t.verify_all("final verify")
        stats = mp.stats(settle=True)
        total = sum(len(m) for t in threads for m in t.models) + SHARED_PAGES * PAGE
        assert stats["files_bytes"] == total
        assert stats["internal_errors"] == 0
        assert stats["counters"]["loads"] > 0, "nothing was ever reloaded: the test is too weak"
        assert stats["counters"]["shared"] > 0, "dedup never shared a block: the test is too weak"
        ops = sum(t.ops for t in threads)
        print(f"\nexerciser workers={workers}: {ops} ops, {settles} settles, {drops} drop_caches, "
              f"{stats['counters']['loads']} loads, {stats['counters']['seals']} seals")
        assert ops > 100
    finally:
        for t in threads:
            t.close()


def run_fio(directory: str, verify_only: bool, extra: list[str] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ, FSB_DIR=directory, FSB_VERIFY_ONLY="1" if verify_only else "0")
    return subprocess.run(["fio", *extra, str(FIO_JOB)], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("options", ["size=1g", "size=1g,block_size=16k,buffer=1m"],
                         ids=["default", "small-buffer"])
def test_fio_verify(mount_cct, drop_caches, options):
    if shutil.which("fio") is None:
        pytest.fail("fio is not installed (the CI installs it)")
    mp = mount_cct(options)
    r = run_fio(mp, verify_only=False)
    assert r.returncode == 0, f"fio write pass failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    os.getxattr(mp, "trusted.cctmpfs.stats-settled")
    drop_caches()
    r = run_fio(mp, verify_only=True)
    assert r.returncode == 0, f"fio verify pass failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "verify" not in r.stderr.lower(), r.stderr[-3000:]
    s = mp.stats()
    assert s["files_bytes"] == (256 + 64) * MiB
    assert s["counters"]["loads"] > 0


# ---- namespace churn -----------------------------------------------------------------

CHURN_SECONDS = min(SECONDS, 10.0) if not os.environ.get("CCTMPFS_SOAK_SECONDS") else SECONDS
CHURN_DIRS = ["d0", "d1", "d2"]
CHURN_NAMES = [f"n{i}" for i in range(8)]
#: Errnos that racing namespace operations may legitimately get.
RACE_ERRNOS = {"ENOENT", "EEXIST", "ENOTEMPTY", "EISDIR", "ENOTDIR", "EINVAL"}


def sealed_content(rng: random.Random) -> bytes:
    """Self-describing content: a header with the body's length and digest."""
    body = make_data(rng, rng.choice([0, 1, 100, 5000, BS, BS + 1, rng.randint(1, 100_000)]))
    return b"%10d %s\n" % (len(body), hashlib.sha1(body).hexdigest().encode()) + body


def content_ok(data: bytes) -> bool:
    head, _, body = data.partition(b"\n")
    try:
        n, digest = head.split()
        return int(n) == len(body) and hashlib.sha1(body).hexdigest().encode() == digest
    except ValueError:
        return False


class Churner(threading.Thread):
    """Publishes complete files by rename, and renames, links, unlinks, lists and
    reads them, racing the other churners on the same names."""

    def __init__(self, root: str, tid: int, seed: int, deadline: float) -> None:
        super().__init__(name=f"churn-{tid}", daemon=True)
        self.root, self.tid, self.deadline = root, tid, deadline
        self.rng = random.Random(seed)
        self.error: Optional[BaseException] = None
        self.ops = 0
        self.log: collections.deque = collections.deque(maxlen=25)

    def shared_path(self) -> str:
        rng = self.rng
        parts = ([rng.choice(CHURN_DIRS)] if rng.random() < 0.6 else []) + [rng.choice(CHURN_NAMES)]
        return os.path.join(self.root, *parts)

    def step(self) -> None:
        rng, r = self.rng, self.rng.random()
        try:
            if r < 0.3:
                tmp = os.path.join(self.root, f".tmp-{self.tid}")
                with open(tmp, "wb") as f:
                    f.write(sealed_content(rng))
                dst = self.shared_path()
                self.log.append(f"publish -> {dst}")
                try:
                    os.rename(tmp, dst)
                except OSError:
                    os.unlink(tmp)
                    raise
            elif r < 0.45:
                a, b = self.shared_path(), self.shared_path()
                self.log.append(f"rename {a} {b}")
                os.rename(a, b)
            elif r < 0.5:
                a, b = self.shared_path(), self.shared_path()
                self.log.append(f"link {a} {b}")
                os.link(a, b)
            elif r < 0.6:
                p = self.shared_path()
                self.log.append(f"unlink {p}")
                os.unlink(p)
            elif r < 0.65:
                d = os.path.join(self.root, rng.choice(CHURN_DIRS))
                self.log.append(f"mkdir {d}")
                os.mkdir(d)
            elif r < 0.7:
                d = os.path.join(self.root, rng.choice(CHURN_DIRS))
                self.log.append(f"rmdir {d}")
                os.rmdir(d)
            elif r < 0.85:
                p = self.shared_path()
                self.log.append(f"read {p}")
                with open(p, "rb") as f:
                    if rng.random() < 0.2:
                        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    data = f.read()
                if not content_ok(data):
                    raise Failure(f"thread {self.tid}: {p} has torn or wrong content "
                                  f"({len(data)} bytes)\n  " + "\n  ".join(self.log))
            else:
                self.log.append("list")
                for dirpath, dirs, files in os.walk(self.root):
                    for name in dirs + files:
                        try:
                            os.lstat(os.path.join(dirpath, name))
                        except FileNotFoundError:
                            pass
        except OSError as e:
            if errno.errorcode.get(e.errno) not in RACE_ERRNOS:
                raise Failure(f"thread {self.tid}: unexpected {e!r}\n  " + "\n  ".join(self.log))
        self.ops += 1

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                self.step()
        except BaseException as e:  # noqa: BLE001
            self.error = e


def test_namespace_churn(mount_cct, drop_caches):
    mp = mount_cct("size=512m,block_size=16k,buffer=256k,workers=4")
    deadline = time.monotonic() + CHURN_SECONDS
    threads = [Churner(mp, t, SEED + 1000 + t, deadline) for t in range(6)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        drop_caches()
    for t in threads:
        t.join()
        if t.error is not None:
            raise t.error
    drop_caches()
    files = 0
    for dirpath, _dirs, names in os.walk(mp):
        for name in names:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                assert content_ok(f.read()), p
            files += 1
    ops = sum(t.ops for t in threads)
    print(f"\nnamespace churn: {ops} ops, {files} files at the end")
    assert ops > 500
    subprocess.run(["rm", "-rf", *[os.path.join(mp, n) for n in os.listdir(mp)]], check=True)
    drop_caches()
    end = time.monotonic() + 5
    while True:
        s = mp.stats(settle=True)
        if (s["inodes"], s["logical_bytes"], s["stored_bytes"]) == (1, 0, 0):
            break
        assert time.monotonic() < end, f"leaked after churn: {s}"
        time.sleep(0.05)
