"""One object for each frequent int value, so records that hold equal ints
hold the same object.

CPython caches only -5..256; every other int is its own object, 28 bytes for
a mode or a uid such as 33188 or 1000, 32 for a nanosecond timestamp. A tree
of 10,000 files holds a handful of distinct modes, owners and (after cp -a or
an untar) mtimes, so sharing them saves 28-32 bytes per field per record.

Pure Python, no llfuse. Protected by the global lock, as are the records that
hold the values.
"""

from __future__ import annotations

#: Distinct values kept. A full table starts again empty: the values already
#: shared stay shared in their records, and the table follows what new files
#: use now. 4096 entries cost about 300 KiB with their ints at most.
SHARED_INTS_LIMIT = 4096


class _Table(dict):  # type: ignore[type-arg]
    """value -> the shared object for it. A hit is dict.__getitem__ alone,
    in C: no Python frame, where a method cost ~20 bytecodes a call, 3-5
    calls per created or copied file (benchmarks/bytecodes.py). A miss
    comes to __missing__."""

    __slots__ = ("limit",)

    def __missing__(self, value: int) -> int:
        if len(self) >= self.limit:
            self.clear()
        self[value] = value
        return value


class SharedInts:
    """Map an int to the one object that stands for its value:
    share(value) is the shared object equal to value (value itself when it
    is new)."""

    __slots__ = ("table", "share")

    def __init__(self, limit: int = SHARED_INTS_LIMIT) -> None:
        self.table = _Table()
        self.table.limit = limit
        self.share = self.table.__getitem__

    def __len__(self) -> int:
        return len(self.table)

    def forget(self) -> None:
        """Forget every value (the idle pass, DataEngine.idle_compact).

        The values records hold stay shared in them; the others are freed.
        Each was allocated when a file first used it, anywhere in pymalloc's
        arenas, and kept by the table alone after the files went: under
        allocator=pymalloc, after `rm -rf` of /usr/lib/python3.11 in the core
        about 1,300 such ints were all that lived among the freed records, and
        pymalloc gives an arena back only once nothing in it lives. Costs the
        next file that uses a forgotten value one int of its own."""
        self.table.clear()
