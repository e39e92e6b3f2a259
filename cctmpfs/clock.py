"""The one clock of every timestamp the daemon sets.

Why not time.time_ns(): the kernel stamps "now" itself for utimensat(UTIME_NOW),
touch and os.utime(path), and sends that time in SETATTR. libfuse 2.9 passes
the FATTR_MTIME_NOW flag on, but llfuse 1.5 tests FUSE_SET_ATTR_MTIME first,
so the handler only ever sees the kernel's value, indistinguishable from an
explicit time. The kernel's "now" is current_time(): the coarse clock, one
tick (4 ms here, CONFIG_HZ=250) behind CLOCK_REALTIME. With time.time_ns() for
creates and writes, `touch` right after a write set an mtime 3.5-4.5 ms
*earlier* than the write's (measured: 300 of 300 tries went backwards), and
make and ninja compare exactly those.

So the daemon stamps with the kernel's own clock, CLOCK_REALTIME_COARSE, and
two rules make "now" never earlier than a timestamp already given out:
- `now_ns()` never returns less than it returned before (a wall clock stepped
  back by NTP does not make new stamps older than existing ones);
- `observe(t)` takes in a time the kernel sent as "now": since Linux 6.13 the
  kernel's coarse time is floored by the fine-grained stamps that multigrain
  filesystems (tmpfs, ext4, xfs) hand out, so it can run ahead of
  CLOCK_REALTIME_COARSE by up to a tick. A time at or before the real time is
  taken in; one in the future (`touch -d tomorrow`) is not, or every later
  stamp would be in the future too.

The cost: two changes within one tick get the same timestamp, as on ext4
before 6.13. tmpfs on 6.13+ gives them distinct ones when the first was
looked at in between; equal is never wrong for make (it compares with >).

Threading: called with the global lock held; it protects `_last`.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

#: linux/time.h; Python's time module has no name for it. Read through the
#: vDSO: 0.10 us against 0.06 us for time.time_ns().
CLOCK_REALTIME_COARSE = 5


#: The kernel's current_time() clock (without the multigrain floor). A
#: partial of the builtin, so a stamp runs no Python frame of its own (6
#: bytecodes and a call less per stamp; benchmarks/bytecodes.py).
coarse_realtime_ns: Callable[[], int] = functools.partial(time.clock_gettime_ns,
                                                          CLOCK_REALTIME_COARSE)


class TimestampClock:
    """Monotone timestamps in ns since the epoch, on the kernel's coarse clock."""

    __slots__ = ("_source", "_real", "_last")

    def __init__(self, source: Callable[[], int] = coarse_realtime_ns,
                 real: Callable[[], int] = time.time_ns) -> None:
        self._source = source   # what stamps are made from
        self._real = real       # the fine clock: the limit of what observe() takes in
        self._last = 0          # the latest stamp given out or observed

    def now_ns(self) -> int:
        """Now, never earlier than any stamp given out or observed before."""
        t = self._source()
        if t > self._last:
            self._last = t
            return t
        return self._last

    def observe(self, t: int) -> None:
        """A time the kernel set (SETATTR): later stamps must not precede it
        if it was "now". Future times are explicit ones, and are ignored."""
        if t > self._last and t <= self._real():
            self._last = t
