"""The invariant checker: it passes a random namespace workload after every
step, and it names each kind of damage done to the state on purpose."""

from __future__ import annotations

import random

import pytest

from cctmpfs.check import check_all, check_data, check_namespace
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem

from .workload import random_step

ME = Caller(uid=1000, gid=1000)


def new_fs() -> Filesystem:
    return Filesystem(block_size=16384, buffer_bytes=1 << 20, nr_inodes=200)


def tree(fs: Filesystem) -> dict[str, int]:
    d = fs.mkdir(ROOT_INO, b"d", 0o755, ME).ino
    e = fs.mkdir(d, b"e", 0o755, ME).ino
    f = fs.create(d, b"f", 0o644, ME).ino
    fs.write(f, 0, b"x" * 40000)
    fs.release(f)
    fs.link(f, e, b"g")
    return {"d": d, "e": e, "f": f}


@pytest.mark.parametrize("seed", range(8))
def test_a_random_namespace_workload_stays_consistent(seed: int) -> None:
    rng = random.Random(seed)
    fs = new_fs()
    dirs = [ROOT_INO]
    for step in range(400):
        random_step(fs, rng, dirs)
        assert check_all(fs) == [], (seed, step)


def test_each_kind_of_damage_is_named() -> None:
    cases = [
        (lambda fs, t: setattr(fs.inodes[t["f"]], "nlink", 3), "nlink 3, 2 directory entries"),
        (lambda fs, t: setattr(fs.inodes[t["d"]], "nlink", 5), "directory"),
        (lambda fs, t: fs.inodes[t["e"]].entries.__setitem__(b"ghost", 9999), "missing inode 9999"),
        (lambda fs, t: setattr(fs, "extra_links", 0), "extra_links 0"),
        (lambda fs, t: setattr(fs.inodes[t["e"]], "parent", ROOT_INO), "parent"),
        (lambda fs, t: fs.inodes[t["d"]].entries.pop(b"e"), "not reachable"),
        (lambda fs, t: fs.inodes[t["e"]].entries.__setitem__(b"bad/name", t["f"]), "invalid name"),
    ]
    for damage, words in cases:
        fs = new_fs()
        t = tree(fs)
        assert check_all(fs) == []
        damage(fs, t)
        report = check_namespace(fs)
        assert any(words in line for line in report), (words, report)


def test_data_damage_is_named() -> None:
    fs = new_fs()
    t = tree(fs)
    fs.engine.seal_everything()
    slot = fs.inodes[t["f"]].data.blocks[0]
    slot.stored.refs += 1
    assert any("refs" in line for line in check_data(fs))
    slot.stored.refs -= 1
    fs.store.counters.stored_bytes += 1
    assert any("stored_bytes" in line for line in check_data(fs))
    fs.store.counters.stored_bytes -= 1
    fs.inodes[t["f"]].data.alloc_bytes += 4096
    assert any("alloc_bytes" in line for line in check_data(fs))
