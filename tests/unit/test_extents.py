"""lseek SEEK_DATA / SEEK_HOLE (cctmpfs/extents.py) against a page model of
tmpfs: a page ever written (and not truncated away) is data."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings, strategies as st

from cctmpfs.errors import FsError
from cctmpfs.extents import SEEK_DATA, SEEK_HOLE, seek
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem

BS = 16384
PAGE = 4096


def model_seek(pages: set[int], size: int, off: int, whence: int) -> int | str:
    if off >= size:
        return "ENXIO"
    last = (size - 1) // PAGE
    for p in range(off // PAGE, last + 1):
        if (p in pages) == (whence == SEEK_DATA):
            return max(off, p * PAGE) if whence == SEEK_DATA else min(size, max(off, p * PAGE))
    return "ENXIO" if whence == SEEK_DATA else size


def answer(fn) -> int | str:
    try:
        return fn()
    except FsError as e:
        return errno.errorcode[e.errno]


ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 12 * BS), st.integers(1, 2 * BS)),
    st.tuples(st.just("truncate"), st.integers(0, 12 * BS), st.just(0))), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(ops, st.lists(st.integers(0, 14 * BS), min_size=1, max_size=20))
def test_seek_matches_the_page_model(steps, offsets) -> None:
    fs = Filesystem(block_size=BS, buffer_bytes=1 << 24)
    f = fs.create(ROOT_INO, b"f", 0o644, Caller())
    pages: set[int] = set()
    size = 0
    for op, a, n in steps:
        if op == "write":
            fs.write(f.ino, a, b"x" * n)
            pages |= set(range(a // PAGE, (a + n - 1) // PAGE + 1))
            size = max(size, a + n)
        else:
            fs.setattr(f.ino, size=a)
            if a < size:
                pages = {p for p in pages if p * PAGE < a}
            size = a
    assert f.data.size == size
    for off in offsets:
        for whence in (SEEK_DATA, SEEK_HOLE):
            assert answer(lambda: seek(f.data, BS, off, whence)) == model_seek(pages, size, off, whence), \
                (off, whence)


def test_seek_examples() -> None:
    fs = Filesystem(block_size=BS, buffer_bytes=1 << 24)
    f = fs.create(ROOT_INO, b"f", 0o644, Caller())
    fs.write(f.ino, 5 * BS + 100, b"y" * 10)   # one page of data in block 5
    fs.setattr(f.ino, size=10 * BS)
    d = f.data
    assert seek(d, BS, 0, SEEK_DATA) == 5 * BS
    assert seek(d, BS, 0, SEEK_HOLE) == 0
    assert seek(d, BS, 5 * BS + 7, SEEK_HOLE) == 5 * BS + PAGE
    assert seek(d, BS, 5 * BS + 7, SEEK_DATA) == 5 * BS + 7
    with pytest.raises(FsError) as e:
        seek(d, BS, 5 * BS + PAGE, SEEK_DATA)
    assert e.value.errno == errno.ENXIO
    with pytest.raises(FsError):
        seek(d, BS, 10 * BS, SEEK_HOLE)
