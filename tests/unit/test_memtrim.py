"""memtrim.Trimmer: a trim when the malloc heaps hold freed memory, none when
they do not. Real allocations in this process; no timing is asserted."""

from __future__ import annotations

import pytest

from cctmpfs import memtrim

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        self.t += memtrim.TRIM_INTERVAL_SECONDS
        return self.t


def resident_pinned(n: int) -> tuple[list[bytearray], list[bytes]]:
    """n resident 64 KiB buffers (under glibc's mmap threshold: in the heap),
    each followed by a long-lived 600-byte object (over pymalloc's 512:
    malloc), so that freeing the buffers leaves holes the heap top cannot
    return. Returns (buffers, pins)."""
    big, pins = [], []
    for _ in range(n):
        b = bytearray(64 * 1024)
        b[::4096] = b"x" * len(b[::4096])   # touch every page: resident
        big.append(b)
        pins.append(bytes(600))
    return big, pins


@pytest.mark.skipif(memtrim.heap_free_bytes() is None, reason="needs glibc's mallinfo2")
def test_freed_heap_in_the_middle_of_the_heap_is_given_back() -> None:
    memtrim._malloc_trim(0)              # what earlier tests freed is given back first
    t = memtrim.Trimmer(clock=Clock())
    t.maybe_trim()                       # sets the floor
    big, pins = resident_pinned(768)     # 48 MiB
    rss_full = memtrim.rss_bytes()
    del big
    assert memtrim.heap_free_bytes() >= 32 * MiB
    assert t.maybe_trim() is True
    assert t.trims == 1 and t.freed_bytes >= 24 * MiB, (rss_full, t.freed_bytes)
    assert t.maybe_trim() is False       # nothing new freed since: no second trim
    assert pins


def test_no_trim_without_free_heap() -> None:
    t = memtrim.Trimmer(clock=Clock())
    t.maybe_trim()
    assert t.maybe_trim() is False and t.trims == 0


@pytest.mark.skipif(memtrim.heap_free_bytes() is None, reason="needs glibc's mallinfo2")
def test_memory_freed_without_rss_growth_is_given_back() -> None:
    """After a delete RSS does not grow (the payload arena even shrinks it)
    while freed heap stays resident: the trim follows the heap's free bytes."""
    memtrim._malloc_trim(0)
    t = memtrim.Trimmer(clock=Clock())
    big, pins = resident_pinned(768)     # 48 MiB
    t.maybe_trim()                       # the floor at the peak, as a trim there leaves it
    t.floor = memtrim.rss_bytes()
    del big
    assert memtrim.rss_bytes() >= t.floor - 8 * MiB   # freed, still resident
    assert t.maybe_trim() is True
    assert t.freed_bytes >= 24 * MiB
    assert t.maybe_trim() is False
    assert pins


@pytest.mark.skipif(memtrim.heap_free_bytes() is None, reason="needs glibc's mallinfo2")
def test_an_idle_mount_gives_back_less_than_the_busy_threshold() -> None:
    """4 MiB freed: under the busy threshold (8 MiB) it stays, and once the
    mount is idle it goes back, once."""
    memtrim._malloc_trim(0)
    t = memtrim.Trimmer(clock=Clock())
    t.maybe_trim()
    big, pins = resident_pinned(64)      # 4 MiB
    t.maybe_trim()
    t.floor = memtrim.rss_bytes()
    del big
    assert t.maybe_trim() is False and t.trims == 0
    assert t.maybe_trim(idle=True) is True
    assert t.freed_bytes >= 2 * MiB
    assert t.maybe_trim(idle=True) is False
    assert pins
