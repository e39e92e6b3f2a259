"""The timestamp rule (cctmpfs/clock.py): "now" is never earlier than a
timestamp already given out, whatever the source clock and the kernel do."""

from __future__ import annotations

import time

from hypothesis import given, strategies as st

from cctmpfs.clock import TimestampClock, coarse_realtime_ns
from cctmpfs.namespace import ROOT_INO, Caller, Filesystem

ME = Caller(uid=0, gid=0)


class Script:
    """A clock that returns the values it is given, in order."""

    def __init__(self, values: list[int]) -> None:
        self.values = list(values)

    def __call__(self) -> int:
        return self.values.pop(0)


def test_source_stepping_back_does_not_step_stamps_back() -> None:
    clock = TimestampClock(Script([100, 200, 150, 250]), real=lambda: 10 ** 18)
    assert [clock.now_ns() for _ in range(4)] == [100, 200, 200, 250]


def test_observed_kernel_now_ahead_of_the_source_is_never_undercut() -> None:
    # The kernel's "now" may run up to a tick ahead of CLOCK_REALTIME_COARSE
    # (the multigrain floor): a write stamped after it must not precede it.
    clock = TimestampClock(Script([1000, 1001]), real=lambda: 5000)
    assert clock.now_ns() == 1000
    clock.observe(4000)
    assert clock.now_ns() == 4000


def test_future_and_past_explicit_times_are_not_taken_in() -> None:
    clock = TimestampClock(Script([1000, 1001, 1002]), real=lambda: 5000)
    clock.now_ns()
    clock.observe(10 ** 15)      # touch -d tomorrow
    assert clock.now_ns() == 1001
    clock.observe(10)            # touch -d 1970
    assert clock.now_ns() == 1002


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10_000)), max_size=60))
def test_now_is_never_below_anything_given_out_or_observed(steps: list[tuple[bool, int]]) -> None:
    source = iter(range(0, 10 ** 9, 7))
    clock = TimestampClock(lambda: next(source) * 3 % 5000, real=lambda: 6000)
    floor = 0
    for is_observe, t in steps:
        if is_observe:
            clock.observe(t)
            if t <= 6000:
                floor = max(floor, t)
        else:
            now = clock.now_ns()
            assert now >= floor
            floor = now


def test_default_clock_is_the_kernels_coarse_clock() -> None:
    # The kernel stamps SETATTR "now" from the coarse clock; the default
    # source must be that one, not the fine clock that runs ahead of it.
    clock = TimestampClock()
    before = coarse_realtime_ns()
    t = clock.now_ns()
    assert before <= t <= time.time_ns()
    assert t <= coarse_realtime_ns()


def test_filesystem_stamps_after_a_kernel_now_do_not_go_back() -> None:
    # Create, then SETATTR with a kernel "now" ahead of the coarse clock (as
    # after a multigrain floor bump), then write, chmod and rename: every
    # mtime and ctime of the file is at least the one before.
    fs = Filesystem(block_size=16384, buffer_bytes=1 << 20)
    f = fs.create(ROOT_INO, b"f", 0o644, ME)
    stamps = [(f.mtime_ns, f.ctime_ns)]
    ahead = time.time_ns()   # the fine clock: ahead of the coarse source
    fs.setattr(f.ino, atime_ns=ahead, mtime_ns=ahead)
    stamps.append((f.mtime_ns, f.ctime_ns))
    fs.write(f.ino, 0, b"x")
    stamps.append((f.mtime_ns, f.ctime_ns))
    fs.setattr(f.ino, mode=0o600)
    stamps.append((f.mtime_ns, f.ctime_ns))
    fs.rename(ROOT_INO, b"f", ROOT_INO, b"g")
    stamps.append((f.mtime_ns, f.ctime_ns))
    for (m0, c0), (m1, c1) in zip(stamps, stamps[1:]):
        assert m1 >= m0 and c1 >= c0
    assert stamps[2][0] >= ahead and all(c >= m for m, c in stamps)


def test_touch_after_create_does_not_go_back() -> None:
    # The bug of issue 14: the kernel's UTIME_NOW is its coarse time; a
    # create stamped by the fine clock was up to a tick (4 ms) later, so
    # `touch` moved the mtime backwards.
    fs = Filesystem(block_size=16384, buffer_bytes=1 << 20)
    for i in range(50):
        f = fs.create(ROOT_INO, b"f%d" % i, 0o644, ME)
        fs.write(f.ino, 0, b"x")
        before = f.mtime_ns
        kernel_now = coarse_realtime_ns()
        fs.setattr(f.ino, atime_ns=kernel_now, mtime_ns=kernel_now)
        assert f.mtime_ns >= before


def test_multigrain_a_change_after_a_look_in_the_same_tick_gets_a_fine_stamp() -> None:
    # Coarse source stuck at 1000 (one tick); the fine clock runs on.
    fine = iter(range(1500, 10 ** 6, 10))
    clock = TimestampClock(lambda: 1000, real=lambda: next(fine))
    ino, ctime = 7, clock.stamp_ns(7, 0)
    assert ctime == 1000
    assert clock.stamp_ns(ino, ctime) == 1000      # changed again, but not looked at
    clock.shown(ino, ctime)
    assert clock.stamp_ns(8, 900) == 1000          # another inode, not looked at
    second = clock.stamp_ns(ino, ctime)
    assert second > 1000                           # looked at, changed again: fine
    # Every later stamp is at least that one, looked at or not...
    assert clock.now_ns() == second and clock.stamp_ns(9, 0) == second
    # ...and a look at an inode whose ctime is not the latest stamp counts for nothing.
    clock.shown(ino, ctime)
    assert clock.stamp_ns(ino, ctime) == second
    clock.shown(ino, second)
    assert clock.stamp_ns(ino, second) > second


@given(st.lists(st.tuples(st.sampled_from(["stamp", "show", "now", "tick", "observe"]),
                          st.integers(1, 3)), max_size=80))
def test_multigrain_stamps_never_go_back(steps: list[tuple[str, int]]) -> None:
    coarse = [1000]
    fine = iter(range(1000, 10 ** 9, 3))
    clock = TimestampClock(lambda: coarse[0], real=lambda: max(next(fine), coarse[0]))
    ctimes = {1: 0, 2: 0, 3: 0}
    floor = 0
    for op, ino in steps:
        if op == "tick":
            coarse[0] += 4000
        elif op == "show":
            clock.shown(ino, ctimes[ino])
        elif op == "observe":
            clock.observe(coarse[0])
        else:
            t = clock.stamp_ns(ino, ctimes[ino]) if op == "stamp" else clock.now_ns()
            assert t >= floor
            if op == "stamp":
                assert t >= ctimes[ino]
                ctimes[ino] = t
            floor = t
