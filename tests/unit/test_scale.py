"""Scale of the namespace without a mount: RAM per empty inode, a million
inodes across a tree, and readdir of a big directory while entries come and
go. (Time per entry through a real mount is benchmarks/scale.py's job.)"""

from __future__ import annotations

import random
import tracemalloc

from cctmpfs.check import check_namespace
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem

ME = Caller(uid=1000, gid=1000)


def new_fs() -> Filesystem:
    return Filesystem(block_size=128 * 1024, buffer_bytes=1 << 20)


def test_ram_per_empty_inode_is_under_1_kib() -> None:
    """tracemalloc over 100,000 empty files in one directory and 10,000
    empty directories: the inode, its name in the directory, and its data
    record. Measured here: about 560 and 400 bytes."""
    fs = new_fs()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            node = fs.create(ROOT_INO, b"file%06d" % i, 0o644, ME)
            fs.release(node.ino)
            fs.forget(node.ino, 1)
        per_file = (tracemalloc.get_traced_memory()[0] - before) / 100_000
        before = tracemalloc.get_traced_memory()[0]
        d = fs.mkdir(ROOT_INO, b"d", 0o755, ME).ino
        for i in range(10_000):
            fs.forget(fs.mkdir(d, b"sub%05d" % i, 0o755, ME).ino, 1)
        per_dir = (tracemalloc.get_traced_memory()[0] - before) / 10_000
    finally:
        tracemalloc.stop()
    assert per_file < 1024, per_file
    assert per_dir < 1024, per_dir


def test_a_million_inodes_across_a_tree() -> None:
    fs = new_fs()
    n = 0
    for i in range(1000):
        d = fs.mkdir(ROOT_INO, b"dir%04d" % i, 0o755, ME).ino
        fs.forget(d, 1)
        n += 1
        for j in range(999):
            node = fs.create(d, b"f%04d" % j, 0o644, ME)
            fs.release(node.ino)
            fs.forget(node.ino, 1)
            n += 1
    assert n == 999_000 + 1000 and len(fs.inodes) == n + 1
    assert check_namespace(fs) == []
    assert fs.statfs()["f_ffree"] == (fs.nr_inodes - n - 1 if fs.nr_inodes else 0)
    for i in range(0, 1000, 7):
        d = fs.lookup(ROOT_INO, b"dir%04d" % i).ino
        fs.forget(d, 1)
        for j in range(999):
            fs.unlink(d, b"f%04d" % j)
        fs.rmdir(ROOT_INO, b"dir%04d" % i)
    assert check_namespace(fs) == []


def test_readdir_of_a_big_directory_under_inserts_and_deletes() -> None:
    """Entries that exist from the opendir to the end are listed exactly
    once, while other entries are added and removed between the pages."""
    fs = new_fs()
    rng = random.Random(3)
    stable = {b"keep%05d" % i for i in range(20_000)}
    for name in stable:
        fs.forget(fs.create(ROOT_INO, name, 0o644, ME).ino, 1)
        fs.release(fs.lookup(ROOT_INO, name).ino)
        fs.forget(fs.lookup(ROOT_INO, name).ino, 1)
    churn = 0
    dh = fs.opendir(ROOT_INO)
    seen: list[bytes] = []
    off = 0
    while True:
        page = []
        for name, _node, next_off in fs.readdir(dh, off):
            page.append(name)
            off = next_off
            if len(page) == 500:
                break
        if not page:
            break
        seen += page
        for _ in range(200):                      # between pages, others come and go
            name = b"tmp%06d" % rng.randrange(50_000)
            try:
                if rng.random() < 0.6:
                    node = fs.create(ROOT_INO, name, 0o644, ME)
                    fs.release(node.ino)
                    fs.forget(node.ino, 1)
                else:
                    fs.unlink(ROOT_INO, name)
                churn += 1
            except Exception:  # noqa: BLE001 - EEXIST / ENOENT races are the point
                pass
    fs.releasedir(dh)
    listed = [n for n in seen if n.startswith(b"keep")]
    assert len(listed) == len(set(listed)), "an entry was listed twice"
    assert set(listed) == stable, "an entry that existed throughout was skipped"
    assert churn > 1000
