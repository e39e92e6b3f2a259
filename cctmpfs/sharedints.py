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


class SharedInts:
    """Map an int to the one object that stands for its value."""

    __slots__ = ("table", "limit")

    def __init__(self, limit: int = SHARED_INTS_LIMIT) -> None:
        self.table: dict[int, int] = {}
        self.limit = limit

    def share(self, value: int) -> int:
        """The shared object equal to value (value itself when it is new)."""
        shared = self.table.get(value)
        if shared is not None:
            return shared
        if len(self.table) >= self.limit:
            self.table.clear()
        self.table[value] = value
        return value

    def __len__(self) -> int:
        return len(self.table)
