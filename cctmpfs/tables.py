"""Give back the room of big dicts and sets once they have emptied.

A dict or set never shrinks when its keys are deleted; only an insertion
that makes it grow resizes it. After `rm -rf` of the stdlib with its
site-packages (59,426 inodes) the inode table and the content index kept
2.5 MiB each for their one or no entry, in glibc's heap, for as long as the
mount lives. shrink() rebuilds such a table in place (the same object, so
every holder of it keeps it), which sizes it for what it holds.

Threading: called by the idle sealer pass with the global lock held, as the
tables it shrinks are protected by it (docs/locking.md). Never releases it.
"""

from __future__ import annotations

import sys
from typing import Any, Union

#: Tables smaller than this are left alone: an empty dict grown to 5,000
#: keys is ~300 KiB.
SHRINK_MIN_BYTES = 256 * 1024
#: A table is rebuilt when it takes this many times the bytes its entries
#: need at a generous ENTRY_BYTES each: a dict sized for its entries takes
#: 30-50 bytes an entry (2/3 of its slots usable).
SHRINK_FACTOR = 8
ENTRY_BYTES = 48

Table = Union[dict[Any, Any], set[Any]]


def oversized(table: Table) -> bool:
    size = sys.getsizeof(table)
    # The entries it holds itself: the inode table's len() counts frozen
    # inodes too (inodetable.py).
    held = dict.__len__(table) if isinstance(table, dict) else len(table)
    return size >= SHRINK_MIN_BYTES and size > SHRINK_FACTOR * ENTRY_BYTES * held


def shrink(table: Table) -> int:
    """Rebuild table in place if it is oversized; the bytes given back
    (0 if it was not). O(len(table)), which is small then."""
    if not oversized(table):
        return 0
    before = sys.getsizeof(table)
    if isinstance(table, dict):
        # dict's own methods, on the entries it holds itself: the inode
        # table's copy() would go through its keys() and __getitem__, and
        # thaw every frozen inode (inodetable.py).
        items = dict(dict.items(table))
        dict.clear(table)
        dict.update(table, items)
    else:
        kept = table.copy()
        table.clear()
        table.update(kept)
    return before - sys.getsizeof(table)
