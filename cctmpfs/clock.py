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

Multigrain, as tmpfs since 6.13: a change to an inode whose times were shown
to the kernel since it got its ctime, while the coarse clock has not moved
past that ctime, gets a fine-grained stamp (the real time, past every stamp
given out), and every later stamp is at least that one (`stamp_ns`). So a
file written, stat'ed and written again within one tick gets two distinct
mtimes, and a source rewritten (truncate, then write) after its target was
built in the same tick is newer than the target, as on tmpfs (measured on
tmpfs: 300 of 300 distinct; coarse stamps alone: 272 and 281 of 300 equal).
Only where the daemon stamps every "now" itself (`fine`: the native transport
gets FATTR_MTIME_NOW; llfuse, or the kernel's writeback cache, would stamp
with its coarse clock, which a fine stamp would put in the past). Shown means
an attribute reply (`shown`): the kernel may answer later stat() calls from
what it was given, which tmpfs counts as queries too.

Threading: called with the global lock held; it protects `_last` and
`_queried`.
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

    __slots__ = ("_source", "_real", "_last", "fine", "_queried")

    def __init__(self, source: Callable[[], int] = coarse_realtime_ns,
                 real: Callable[[], int] = time.time_ns) -> None:
        self._source = source   # what stamps are made from
        self._real = real       # the fine clock: observe()'s limit, and fine stamps
        self._last = 0          # the latest stamp given out or observed
        #: Multigrain stamps (module docstring): set by a transport that
        #: stamps every "now" itself.
        self.fine = False
        #: Inode numbers whose times were shown while their ctime was _last:
        #: the only ones a change may give a fine stamp. Emptied whenever
        #: _last moves, so it holds what one tick touched at most.
        self._queried: set[int] = set()

    def now_ns(self) -> int:
        """Now, never earlier than any stamp given out or observed before."""
        t = self._source()
        if t > self._last:
            self._last = t
            if self._queried:
                self._queried.clear()
            return t
        return self._last

    def stamp_ns(self, ino: int, ctime_ns: int) -> int:
        """Now, for a change to inode ino whose ctime is ctime_ns: now_ns(),
        or a fine stamp past every earlier one if ino's times were shown
        since it got ctime_ns and the coarse clock has not moved past it."""
        # now_ns() inlined: every WRITE stamps, and the call cost 83
        # bytecodes per untarred file (4917 against 4834, bytecodes.py).
        t = self._source()
        if t > self._last:
            self._last = t
            if self._queried:
                self._queried.clear()
            return t
        t = self._last
        if t <= ctime_ns and ino in self._queried:
            t = self._last = max(self._real(), t + 1)
            self._queried.clear()
        return t

    def shown(self, ino: int, ctime_ns: int) -> None:
        """Inode ino's times, ctime ctime_ns, went to the kernel. Only while
        fine is set (the caller checks, to save the call)."""
        if ctime_ns == self._last:
            self._queried.add(ino)

    def observe(self, t: int) -> None:
        """A time the kernel set (SETATTR): later stamps must not precede it
        if it was "now". Future times are explicit ones, and are ignored."""
        if t > self._last and t <= self._real():
            self._last = t
            if self._queried:
                self._queried.clear()
