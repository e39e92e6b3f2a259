"""The CPU class the sealer compresses in: SCHED_IDLE while it can wait.

Why: an untar is a chain of round trips (tar, kernel, worker, kernel, tar)
that keeps each of this machine's two vCPUs about half busy. When the sealer
compresses at normal priority, the worker and tar wake up behind it; at
SCHED_IDLE the worker preempts it at once. Stdlib untar, six interleaved
rounds unpinned: 10.4 s against 11.2 s at normal priority (pyfuse_mem.py
--xattr 9.0 s). docs/profiling.md, "The untar", has the whole story.

Why not always: a SCHED_IDLE thread gets almost no CPU while others want
it. A writer faster than the idle sealer would fill the hot buffer and then
seal blocks itself, in the request path (sequential writes were 10-15 %
slower with the whole thread at SCHED_IDLE). So the sealer compresses at
SCHED_IDLE only while the dirty part of the buffer is under half its budget
(Sealer.compress_cpu), and at normal priority past that.

What stays at normal priority: everything done under the global lock. The
body of idle_cpu() runs with the lock released (DataEngine.seal calls it
inside `released()`), so a starved idle thread never holds up a handler by
the global lock. It can hold the GIL between two codec calls; a worker that
wants it then sleeps, its vCPU falls idle, and the idle thread runs there.
If other programs keep every vCPU busy at that moment, the worker waits
until the scheduler gives the idle thread a slice (a SCHED_IDLE thread still
gets a small share of a busy CPU). That is the price of the idle class;
seal_priority=normal does not pay it.

Threads: sched_setscheduler(0, ...) changes the calling thread only (Linux
schedules threads, and pid 0 is the caller). Going back from SCHED_IDLE to
SCHED_OTHER needs CAP_SYS_NICE unless RLIMIT_NICE allows it, so only a
daemon running as root uses the idle class (available()).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether this process can enter SCHED_IDLE and come back from it."""
    return hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_setscheduler") and os.geteuid() == 0


def current_policy() -> int:
    """The calling thread's scheduling policy (os.SCHED_*)."""
    return os.sched_getscheduler(0)


@contextlib.contextmanager
def idle_cpu() -> Iterator[bool]:
    """Run the body with the calling thread at SCHED_IDLE, then restore
    SCHED_OTHER. Yields whether the idle class was entered: if the kernel
    refuses (a seccomp filter, say), the body runs at normal priority."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as e:
        log.debug("SCHED_IDLE refused (%s); compressing at normal priority", e)
        yield False
        return
    try:
        yield True
    finally:
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError:  # root can always do this; never leave the thread starved silently
            log.exception("could not leave SCHED_IDLE; the sealer stays in the idle class")
