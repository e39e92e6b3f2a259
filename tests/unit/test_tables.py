"""tables.shrink: big dicts and sets that emptied give their room back,
in place; tables in use are left alone."""

from __future__ import annotations

import collections
import sys

from cctmpfs import tables


def test_an_emptied_dict_is_rebuilt_in_place_with_its_entries() -> None:
    d = {i: str(i) for i in range(100_000)}
    alias = d
    for i in range(100_000):
        if i % 1000:
            del d[i]
    big = sys.getsizeof(d)
    assert tables.oversized(d)
    freed = tables.shrink(d)
    assert freed > 0 and sys.getsizeof(d) == big - freed < big // 50
    assert alias is d and d == {i: str(i) for i in range(0, 100_000, 1000)}
    assert tables.shrink(d) == 0


def test_sets_and_ordered_dicts_keep_their_members_and_order() -> None:
    s = set(range(50_000))
    for i in range(1, 50_000):
        s.discard(i)
    assert tables.shrink(s) > 0 and s == {0}
    o = collections.OrderedDict((i, i) for i in range(50_000))
    for i in range(49_990):
        del o[i]
    o.move_to_end(49_990)
    order = list(o)
    assert tables.shrink(o) > 0 and list(o) == order


def test_full_or_small_tables_are_left_alone() -> None:
    full = {i: i for i in range(100_000)}
    assert not tables.oversized(full) and tables.shrink(full) == 0
    small = {i: i for i in range(1000)}
    small.clear()
    assert tables.shrink(small) == 0
