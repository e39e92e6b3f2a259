"""The inode table: hot inodes as records, cold ones as rows of columns.

An inode record (namespace.Inode) is a Python object: 112 bytes for a
regular file's, its dict entry in the table 44, and an int object of its
own for each field past CPython's small ints: 48 bytes for a multigrain
ctime, which every file `cp -a` copies under transport=native has. On the
stdlib with site-packages (59,428 inodes) records, their ints and the table
took 15.4 MB (benchmarks/memprofile.py), 0.06 bytes of RSS per byte of
files, as much as issue 15's target has left.

So a record lives only while it is used. The sealer's background pass
(freeze_pass(): beyond HOT_KEEP records while busy, all once idle) writes
the records nobody holds into columns indexed by inode number, about 60
bytes an inode (COLUMNS), and drops them; the first access to a frozen
inode (InodeTable[ino], `in`, get()) builds its record again (thaw). A
record keeps its identity while anything holds it: freeze() skips every
record whose reference count shows a holder besides the table (a handler
that released the global lock around codec work keeps its record in a
local variable, so it is never frozen under it). What a kind has beside
the common fields stays an object, held by the obj column: a file's
FileData (its slots point at it), a directory's entries, a symlink's
target; a directory's parent and a device's number go in the aux column.

Inode numbers are rows, so freed numbers are reused, as ext4 reuses them;
tmpfs counts up. A number is reused only after the kernel forgot the inode
(Filesystem frees an inode at its FORGET), and only once REUSE_MIN numbers
are free and a quarter of the rows, scanning on from the last reused one,
so a number waits for thousands of frees before it comes back, and the
table stays within 4/3 of the most inodes ever live at once.

Threading: every method runs with the global lock held (docs/locking.md),
freeze_pass() from the sealer's background pass. Never releases it.
"""

from __future__ import annotations

import array
import itertools
import sys
from typing import Any, Callable, Iterator, Optional

import attrs

#: The columns of a frozen inode, one definition: name -> array typecode.
#: mode, uid, gid and nlink are 32-bit, as the kernel's; times are signed
#: ns since the epoch; nlookup is the kernel's 64-bit count; aux is a
#: directory's parent or a device node's rdev. A record whose values do not
#: fit (a time past 2262) stays hot. With the obj column (a list: 8 bytes a
#: row) and the state byte: 61 bytes a row.
COLUMNS = {
    "mode": "I", "uid": "I", "gid": "I", "nlink": "I", "nlookup": "Q",
    "atime_ns": "q", "mtime_ns": "q", "ctime_ns": "q", "aux": "Q",
}
#: state[ino]: FREE (never used, or freed) or LIVE (a record in the dict:
#: hot; none: frozen in the columns).
FREE, LIVE = 0, 1
#: Rows are added this many at a time: one append per column per create
#: cost 0.45 us.
GROW_ROWS = 1024
#: Freed numbers are reused once this many are free (and a quarter of the rows).
REUSE_MIN = 4096
#: Records frozen in one idle pass at most: about 1 us each under the lock.
FREEZE_PER_PASS = 8192
#: While the mount is busy, the hot records kept, and the most frozen a pass
#: (every 0.5 s). Frozen only when idle, a `cp -a` of the stdlib had all
#: 59k records live at once, and the pymalloc pools they took stayed (their
#: freed blocks are reused, not returned): accounted metadata fell by 11 MiB
#: and RSS by 4 (results/s28-frozen). Frozen as it goes, the copy reuses the
#: room of the records it froze.
HOT_KEEP = 8192
FREEZE_PER_BUSY_PASS = 2048
#: While busy, a directory whose entries changed this recently stays hot: it
#: is being filled (cp -a, tar), and would be packed and unpacked again each
#: pass. Packed once quiet, the names and ints it frees are reused by the
#: names the copy makes next; packed only when the mount is idle, they were
#: 5.6 MiB of pymalloc free blocks after `cp -a` of the stdlib
#: (results/s28-packed).
DIR_QUIET_NS = 2 * 10 ** 9


def _unheld_refs() -> int:
    """sys.getrefcount of a value only its dict holds, asked as freeze()
    asks it: the dict's reference, the loop's local name and getrefcount's
    argument, 3 on CPython 3.10-3.13. Measured at import rather than
    assumed, so that a Python that counts otherwise (borrowed references)
    cannot make freeze() take a held record for an unheld one."""
    table = {1: object()}
    count = 0
    for key in itertools.islice(dict.__iter__(table), 1):
        value = dict.__getitem__(table, key)
        count = sys.getrefcount(value)
    return count


#: What a record nobody else holds counts (_unheld_refs).
UNHELD_REFS = _unheld_refs()


@attrs.define(slots=True)
class InodeTableCounters:
    """Named and cumulative, for stats (`inode_table` in stats --json)."""

    freezes: int = 0       # records written into the columns and dropped
    thaws: int = 0         # records built again from the columns
    held: int = 0          # freeze() skips: the record had another holder
    too_big: int = 0       # freeze() skips: a value did not fit its column, or a directory
                           # past packedentries.PACK_MAX_ENTRIES
    reused: int = 0        # inode numbers given out again


class InodeTable(dict):  # type: ignore[type-arg]
    """ino -> Inode record, for every live inode, hot or frozen.

    The dict holds the hot records: a hit is dict.__getitem__ in C. A miss
    comes to __missing__, which thaws a frozen inode. The idle pass rebuilds
    the dict once freezing emptied it (tables.py; copy(), clear() and
    update() are dict's, on the hot records). len(), `in`, get(),
    iteration and del cover frozen inodes too. values() and items() give a
    frozen inode a transient record that is not kept: read it, never
    change it (check.py, stats, tests)."""

    __slots__ = ("cols", "obj", "state", "top", "live", "free", "cursor", "make", "unmake",
                 "clock_ns", "counters")

    def __init__(self, make: Callable[[int, list[Any], Any, int], Any],
                 unmake: Callable[[Any], tuple[list[int], Any, int]],
                 clock_ns: Callable[[], int]) -> None:
        super().__init__()
        #: make(ino, fields, obj, aux) builds a record (namespace.py):
        #: fields are COLUMNS' values but aux, in their order. unmake(record)
        #: is the other way: (fields, obj, aux); it raises OverflowError for
        #: what a row cannot hold.
        self.make = make
        self.unmake = unmake
        #: now, on the clock the namespace stamps ctimes with (DIR_QUIET_NS)
        self.clock_ns = clock_ns
        self.cols = {name: array.array(code) for name, code in COLUMNS.items()}
        self.obj: list[Any] = []
        self.state = bytearray()
        self.top = 1          # the next row never used; row 0 is no inode
        self.live = 0
        self.free = 0         # FREE rows below top (row 0 excluded)
        self.cursor = 1       # where the next reuse scan starts
        self.counters = InodeTableCounters()
        self._grow()

    def _grow(self) -> None:
        for col in self.cols.values():
            col.extend(itertools.repeat(0, GROW_ROWS))
        self.obj.extend(itertools.repeat(None, GROW_ROWS))
        self.state.extend(bytes(GROW_ROWS))

    # ---- numbers -------------------------------------------------------
    def allocate(self) -> int:
        """A free inode number, counted live: the caller stores its record
        at once (table[ino] = record, dict.__setitem__)."""
        state = self.state
        if self.free >= REUSE_MIN and self.free * 4 >= self.top:
            ino = state.find(FREE, self.cursor, self.top)
            if ino < 0:
                ino = state.find(FREE, 1, self.top)
            self.cursor = ino + 1
            self.free -= 1
            self.counters.reused += 1
        else:
            ino = self.top
            if ino >= len(state):
                self._grow()
            self.top = ino + 1
        state[ino] = LIVE
        self.live += 1
        return ino

    def __delitem__(self, ino: int) -> None:
        """Free inode ino: its number may be reused."""
        if not self.__contains__(ino):
            raise KeyError(ino)
        dict.pop(self, ino, None)
        self.state[ino] = FREE
        self.obj[ino] = None
        self.live -= 1
        self.free += 1

    # ---- lookups -------------------------------------------------------
    def __missing__(self, ino: int) -> Any:
        if type(ino) is int and 0 < ino < self.top and self.state[ino]:
            node = self._record(ino)
            self.obj[ino] = None
            dict.__setitem__(self, ino, node)
            self.counters.thaws += 1
            return node
        raise KeyError(ino)

    def _record(self, ino: int) -> Any:
        c = self.cols
        return self.make(ino, [c["mode"][ino], c["uid"][ino], c["gid"][ino], c["nlink"][ino],
                               c["atime_ns"][ino], c["mtime_ns"][ino], c["ctime_ns"][ino],
                               c["nlookup"][ino]],
                         self.obj[ino], c["aux"][ino])

    def get(self, ino: int, default: Any = None) -> Any:  # type: ignore[override]
        node = dict.get(self, ino)
        if node is not None:
            return node
        try:
            return self.__missing__(ino)
        except KeyError:
            return default

    def __contains__(self, ino: object) -> bool:
        return type(ino) is int and 0 < ino < self.top and self.state[ino] == LIVE

    def __len__(self) -> int:
        return self.live

    def __iter__(self) -> Iterator[int]:
        return itertools.compress(range(self.top), self.state)

    def keys(self) -> Iterator[int]:  # type: ignore[override]
        return self.__iter__()

    def items(self) -> Iterator[tuple[int, Any]]:  # type: ignore[override]
        """Every live inode with its record; a frozen one's is transient."""
        hot = dict.get
        for ino in self.__iter__():
            node = hot(self, ino)
            yield ino, (node if node is not None else self._record(ino))

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        return (node for _ino, node in self.items())

    def mode_of(self, ino: int) -> int:
        """Inode ino's mode, without thawing it (a READDIR's types)."""
        node = dict.get(self, ino)
        if node is not None:
            return node.mode  # type: ignore[no-any-return]
        if ino in self:
            return self.cols["mode"][ino]
        raise KeyError(ino)

    def kind_objects(self) -> Iterator[Any]:
        """The kind object (FileData, entries, target) of every live inode
        that has one, without thawing any."""
        for node in dict.values(self):
            obj = node.data if node.data is not None else (
                node.entries if node.entries is not None else node.target)
            if obj is not None:
                yield obj
        yield from (o for o in self.obj if o is not None)

    def is_hot(self, ino: int) -> bool:
        return dict.__contains__(self, ino)

    @property
    def hot(self) -> int:
        return dict.__len__(self)

    def nbytes(self) -> int:
        """The table's own bytes: the dict of hot records and the columns."""
        return (sys.getsizeof(self)
                + sum(col.buffer_info()[1] * col.itemsize for col in self.cols.values())
                + sys.getsizeof(self.obj) + sys.getsizeof(self.state))

    # ---- freezing ------------------------------------------------------
    def freeze_pass(self, idle: bool) -> int:
        """The background pass's freezing: every cold record once the mount
        is idle, FREEZE_PER_PASS at a time; while busy, the oldest beyond
        HOT_KEEP, FREEZE_PER_BUSY_PASS at a time. Under the global lock."""
        excess = self.hot - (0 if idle else HOT_KEEP)
        if excess <= 0:
            return 0
        if idle:
            return self.freeze(min(excess, FREEZE_PER_PASS))
        return self.freeze(min(excess, FREEZE_PER_BUSY_PASS),
                           dirs_changed_before=self.clock_ns() - DIR_QUIET_NS)

    def freeze(self, limit: int = FREEZE_PER_PASS,
               dirs_changed_before: Optional[int] = None) -> int:
        """Write up to limit of the oldest hot records that nothing else
        holds into the columns and drop them; returns how many. A record
        held elsewhere, with a value too big for its column, or a directory
        changed after dirs_changed_before (its ctime), moves to the back and
        stays hot. The last is for busy passes: a directory being filled
        stays in the dict at its place, so it would be among the oldest,
        packed and unpacked again each pass (0.8 and 0.6 us an entry).
        Under the global lock."""
        c = self.cols
        cols = (c["mode"], c["uid"], c["gid"], c["nlink"], c["atime_ns"], c["mtime_ns"],
                c["ctime_ns"], c["nlookup"])
        aux_col, obj = c["aux"], self.obj
        getrefcount = sys.getrefcount
        unmake = self.unmake
        done: list[int] = []
        kept: list[int] = []
        node = None
        for ino in itertools.islice(dict.__iter__(self), limit):
            node = dict.__getitem__(self, ino)
            if getrefcount(node) > UNHELD_REFS:
                kept.append(ino)
                self.counters.held += 1
                continue
            if dirs_changed_before is not None and node.entries is not None \
                    and node.ctime_ns > dirs_changed_before:
                kept.append(ino)
                continue
            try:
                values, kind_obj, aux = unmake(node)
                for col, v in zip(cols, values):
                    col[ino] = v
                aux_col[ino] = aux
            except OverflowError:
                kept.append(ino)
                self.counters.too_big += 1
                continue
            obj[ino] = kind_obj
            done.append(ino)
        node = None   # not a holder of the last record past the loop
        pop = dict.pop
        for ino in done:
            pop(self, ino)
        for ino in kept:
            dict.__setitem__(self, ino, pop(self, ino))
        self.counters.freezes += len(done)
        return len(done)

