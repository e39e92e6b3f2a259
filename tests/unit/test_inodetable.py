"""The inode table (inodetable.py): cold inodes frozen into columns and
thawed at their next use change nothing a caller can see, a record someone
holds is never frozen, numbers are reused only after many frees, and what
does not fit a column stays a record."""

from __future__ import annotations

import gc
import random
import stat as S
import sys
import tracemalloc
from typing import Any

import pytest

from cctmpfs import inodetable, stats
from cctmpfs.check import check_all
from cctmpfs.inodetable import UNHELD_REFS
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem

from .conftest import FakeClock
from .workload import random_step

ME = Caller(uid=1000, gid=1000, pid=42)


def new_fs(clock: FakeClock, **kw: Any) -> Filesystem:
    return Filesystem(block_size=16384, buffer_bytes=1 << 20, clock_ns=clock.ns, **kw)


def snapshot(fs: Filesystem) -> dict[int, tuple[Any, ...]]:
    """Every field of every live inode, and its kind's content."""
    out = {}
    for ino, n in fs.inodes.items():
        out[ino] = (type(n).__name__, n.ino, n.mode, n.uid, n.gid, n.nlink, n.nlookup,
                    n.atime_ns, n.mtime_ns, n.ctime_ns, n.parent, n.rdev, n.target,
                    dict(n.entries) if n.entries is not None else None,
                    (n.data.size, n.data.alloc_pages) if n.data is not None else None,
                    fs.xattrs.get(ino))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_freezing_after_every_step_changes_nothing_a_caller_sees(seed: int,
                                                                  monkeypatch: Any) -> None:
    """Two filesystems run the same random workload; one freezes every
    record nobody holds after each step (and reuses numbers after 8 frees).
    Every field of every inode stays the same as the other's."""
    monkeypatch.setattr(inodetable, "REUSE_MIN", 8)
    plain, frozen = new_fs(FakeClock()), new_fs(FakeClock())
    rng_a, rng_b = random.Random(seed), random.Random(seed)
    dirs_a, dirs_b = [ROOT_INO], [ROOT_INO]
    froze = 0
    for step in range(400):
        random_step(plain, rng_a, dirs_a)
        random_step(frozen, rng_b, dirs_b)
        froze += frozen.inodes.freeze()
        assert snapshot(frozen) == snapshot(plain), (seed, step)
        assert check_all(frozen) == [], (seed, step)
    assert froze > 300 and frozen.inodes.counters.thaws > 100
    assert frozen.inodes.counters.reused > 0, (frozen.inodes.top, frozen.inodes.free)


def test_a_record_someone_holds_is_not_frozen(clock: FakeClock) -> None:
    fs = new_fs(clock)
    a = fs.create(ROOT_INO, b"a", 0o644, ME).ino
    b = fs.create(ROOT_INO, b"b", 0o644, ME).ino
    held = fs.inodes[a]
    gc.collect()
    assert fs.inodes.freeze() == 2   # b and the root
    assert fs.inodes.is_hot(a) and not fs.inodes.is_hot(b)
    assert fs.inodes.counters.held == 1
    # The holder's changes are the inode's: its record was never replaced.
    held.nlink += 0
    held.uid = 4242
    assert fs.inodes[a] is held and fs.getattr(a).uid == 4242
    del held
    assert fs.inodes.freeze() == 1 and not fs.inodes.is_hot(a)
    assert fs.getattr(a).uid == 4242
    assert check_all(fs) == []


def test_unheld_refs_is_what_this_python_counts() -> None:
    """freeze() tells a held record by its reference count: the table's
    dict, freeze()'s local name and getrefcount's argument, measured at
    import (3 on the CPython versions _pools knows)."""
    if sys.version_info < (3, 14):
        assert UNHELD_REFS == 3
    table: dict[int, object] = {}
    table[5] = object()
    for key in table:
        node = table[key]
        assert sys.getrefcount(node) == UNHELD_REFS
        extra = node
        assert sys.getrefcount(node) == UNHELD_REFS + 1
        del extra


def test_a_file_keeps_its_data_object_and_contents_across_freezing(clock: FakeClock) -> None:
    fs = new_fs(clock)
    ino = fs.create(ROOT_INO, b"f", 0o640, ME).ino
    fs.write(ino, 0, b"hello" * 5000)
    fs.release(ino)
    data = fs.inodes[ino].data
    fs.engine.seal_everything()
    fs.inodes.freeze()
    assert not fs.inodes.is_hot(ino)
    # A READDIR's types and stats' sums do not thaw it.
    assert S.S_ISREG(fs.inodes.mode_of(ino))
    collected = stats.collect(fs)
    assert collected["inode_table"]["frozen"] == 2 and not fs.inodes.is_hot(ino)
    assert collected["files_bytes"] == 25000
    fh = fs.open(ino)
    assert fs.read(fh, 0, 1 << 20) == b"hello" * 5000
    fs.release(fh)
    assert fs.inodes[ino].data is data   # the slots' owner is the same object
    assert check_all(fs) == []


def test_every_kind_comes_back_whole(clock: FakeClock) -> None:
    fs = new_fs(clock)
    d = fs.mkdir(ROOT_INO, b"d", 0o2775, ME).ino
    sub = fs.mkdir(d, b"sub", 0o700, ME).ino
    ln = fs.symlink(d, b"l", b"../somewhere/else", ME).ino
    dev = fs.mknod(d, b"dev", S.S_IFBLK | 0o660, (8 << 8) | 3, ME).ino
    fifo = fs.mknod(d, b"p", S.S_IFIFO | 0o644, 0, ME).ino
    before = snapshot(fs)
    assert fs.inodes.freeze() == 6 and fs.inodes.hot == 0
    assert snapshot(fs) == before   # transient records, nothing thawed
    assert fs.inodes.hot == 0
    assert fs.readlink(ln) == b"../somewhere/else"
    assert fs.inodes[dev].rdev == (8 << 8) | 3 and S.S_ISFIFO(fs.inodes[fifo].mode)
    assert fs.inodes[sub].parent == d and fs.lookup(d, b"sub").ino == sub
    after = snapshot(fs)
    assert after.pop(sub)[6] == before.pop(sub)[6] + 1   # the lookup's reference
    assert after.pop(ln)[7] > before.pop(ln)[7]          # readlink's atime (relatime)
    assert after == before


def test_a_value_too_big_for_its_column_stays_a_record(clock: FakeClock) -> None:
    fs = new_fs(clock)
    ino = fs.create(ROOT_INO, b"far", 0o644, ME).ino
    fs.release(ino)
    far = (1 << 63) + 5   # past 2262 in ns: no int64 holds it
    fs.setattr(ino, mtime_ns=far)
    fs.inodes.freeze()
    assert fs.inodes.is_hot(ino) and fs.inodes.counters.too_big == 1
    assert fs.getattr(ino).mtime_ns == far
    fs.setattr(ino, mtime_ns=-far)
    fs.inodes.freeze()
    assert fs.inodes.is_hot(ino) and fs.getattr(ino).mtime_ns == -far
    fs.setattr(ino, mtime_ns=-5)
    fs.inodes.freeze()
    assert not fs.inodes.is_hot(ino) and fs.getattr(ino).mtime_ns == -5


def test_numbers_are_reused_only_after_many_frees_and_the_table_stays_bounded(
        clock: FakeClock) -> None:
    fs = new_fs(clock)
    seen: set[int] = set()
    live: list[tuple[bytes, int]] = []
    for i in range(40_000):
        name = b"f%d" % i
        ino = fs.mknod(ROOT_INO, name, S.S_IFREG | 0o644, 0, ME).ino
        fs.forget(ino, 1)
        assert ino not in {n for _name, n in live}
        if ino in seen:
            # A reused number: at least REUSE_MIN inodes were freed since.
            assert fs.inodes.counters.reused > 0
        seen.add(ino)
        live.append((name, ino))
        if len(live) > 3000:
            old, _ = live.pop(0)
            fs.unlink(ROOT_INO, old)
    # 3,000 live at most: the rows stay within 4/3 of that plus REUSE_MIN.
    assert fs.inodes.top <= 4 * 3001 // 3 + inodetable.REUSE_MIN + inodetable.GROW_ROWS
    assert fs.inodes.counters.reused > 20_000
    assert check_all(fs) == []


def test_the_idle_pass_freezes_and_stats_account_for_it(clock: FakeClock) -> None:
    from cctmpfs.filemap import COMPACT_QUIET_SECONDS
    fs = new_fs(clock)
    fs.engine.clock = clock.seconds
    n = 3 * inodetable.FREEZE_PER_PASS   # a table big enough for tables.shrink
    assert n - inodetable.HOT_KEEP > inodetable.FREEZE_PER_BUSY_PASS
    tracemalloc.start()
    # Two directories of n/2 files each (under PACK_MAX_ENTRIES: packed).
    dirs = [fs.mkdir(ROOT_INO, b"d%d" % k, 0o755, ME).ino for k in range(2)]
    for d in dirs:
        fs.forget(d, 1)
    for i in range(n):
        fs.forget(fs.mknod(dirs[i % 2], b"f%d" % i, S.S_IFREG | 0o644, 0, ME).ino, 1)
    total = n + 3
    hot = stats.memory(fs, 0, None, 0)
    full = sys.getsizeof(fs.inodes)
    traced_hot = tracemalloc.get_traced_memory()[0]
    fs.engine.background_pass()   # busy: the oldest beyond HOT_KEEP, but no directory just changed
    busy = inodetable.FREEZE_PER_BUSY_PASS
    assert fs.inodes.hot == total - (busy - 3)   # the root and both directories kept
    assert all(fs.inodes.is_hot(d) for d in [ROOT_INO, *dirs])
    clock.advance(COMPACT_QUIET_SECONDS + 1)
    passes = 0
    while fs.inodes.hot and passes < 10:
        fs.engine.background_pass()
        passes += 1
    traced_cold = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    cold = stats.memory(fs, 0, None, 0)
    assert passes == 3   # FREEZE_PER_PASS a pass
    assert (hot["hot_inodes"], cold["hot_inodes"]) == (total, 0)
    assert cold["frozen_inodes"] == total and fs.inodes.counters.thaws == 0
    # The emptied dict was rebuilt, without thawing what it no longer holds.
    assert sys.getsizeof(fs.inodes) < full // 50
    # Each frozen file no longer pays its record and its time ints, and
    # the directories' entries are packed: no name objects, ino ints or
    # dicts; and the table's dict of hot records was rebuilt small.
    saved = hot["inode_bytes"] - cold["inode_bytes"] \
        - (hot["inode_table_bytes"] - cold["inode_table_bytes"])
    record = stats.RECORD_BYTES_BY_CLASS[type(fs.getattr(5))]
    entry = stats.ENTRY_BYTES + sys.getsizeof(1 << 20) - 5 + stats.dict_bytes(n / 2) / (n / 2)
    assert n * (record + entry) * 0.9 < saved < n * (record + entry) * 1.1, (saved, record, entry)
    # And the heap gave back what the estimate says (tracemalloc), the
    # columns it grew excepted: between the estimate, whose record has three
    # time ints of its own as `cp -a` leaves a file, and the estimate for
    # these files, only created, which share one for all three.
    freed = traced_hot - traced_cold + (cold["inode_table_bytes"] - hot["inode_table_bytes"])
    shared_times = saved - n * 2 * stats._int_bytes(stats._TIME)
    assert 0.95 * shared_times < freed < 1.05 * saved, (freed, shared_times, saved)


def test_packed_entries_round_trip_every_name_and_number() -> None:
    from cctmpfs.packedentries import PACK_MAX_ENTRIES, PackedEntries, pack, unpack
    rng = random.Random(5)
    alphabet = bytes(b for b in range(1, 256) if b != ord("/"))
    entries = {bytes(rng.choice(alphabet) for _ in range(n)): rng.randrange(1 << 32)
               for n in list(range(1, 256)) * 3}
    entries[b"x" * 255] = (1 << 32) - 1
    packed = pack(entries)
    assert type(packed) is PackedEntries
    assert unpack(packed) == entries and list(unpack(packed)) == list(entries)   # order kept
    assert len(packed) == sum(len(name) + 5 for name in entries)
    assert unpack(pack({})) == {}
    with pytest.raises(OverflowError):
        pack({b"big": 1 << 32})
    with pytest.raises(OverflowError):
        pack({b"%d" % i: i for i in range(PACK_MAX_ENTRIES + 1)})


def test_a_frozen_directory_keeps_its_names_packed(clock: FakeClock) -> None:
    fs = new_fs(clock)
    d = fs.mkdir(ROOT_INO, b"d", 0o755, ME).ino
    names = [b"n%05d" % i for i in range(500)]
    inos = {name: fs.create(d, name, 0o644, ME).ino for name in names}
    for ino in inos.values():
        fs.release(ino)
    fs.unlink(d, b"n00007")
    del inos[b"n00007"]
    fs.inodes.freeze()
    from cctmpfs.packedentries import PackedEntries
    assert type(fs.inodes.obj[d]) is PackedEntries
    assert fs.inodes.obj[d] == b"".join(b"\x06" + name + inos[name].to_bytes(4, "little")
                                       for name in inos)
    assert check_all(fs) == []
    assert fs.lookup(d, b"n00400").ino == inos[b"n00400"]   # thawed: a dict again
    assert type(fs.inodes[d].entries) is dict and fs.inodes.obj[d] is None
    fs.inodes.freeze()
    dh = fs.opendir(d)
    assert [name for name, _node, _off in fs.readdir(dh, 0)] == [b".", b"..", *inos]
    fs.releasedir(dh)


def test_a_busy_pass_packs_a_quiet_directory_not_one_being_filled(clock: FakeClock,
                                                                   monkeypatch: Any) -> None:
    monkeypatch.setattr(inodetable, "HOT_KEEP", 0)
    fs = new_fs(clock)
    quiet = fs.mkdir(ROOT_INO, b"quiet", 0o755, ME).ino
    fs.forget(fs.create(quiet, b"done", 0o644, ME).ino, 1)
    clock.advance(inodetable.DIR_QUIET_NS / 1e9 + 1)
    fs_dir = fs.mkdir(ROOT_INO, b"filling", 0o755, ME).ino
    fs.forget(fs.create(fs_dir, b"first", 0o644, ME).ino, 1)
    fs.inodes.freeze_pass(idle=False)
    assert not fs.inodes.is_hot(quiet) and fs.inodes.is_hot(fs_dir)
    assert fs.inodes.is_hot(ROOT_INO)   # changed when "filling" was made
    fs.inodes.freeze_pass(idle=True)    # idle: every directory
    assert not fs.inodes.is_hot(fs_dir) and fs.inodes.hot == 0
    assert check_all(fs) == []
