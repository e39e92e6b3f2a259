"""Adaptive polling of /dev/fuse (spin=MICROSECONDS, transport=native).

Why: on this VM an idle vCPU halts at once, and waking it costs 55-75 us
(shared/bench/BASELINE.md 5.1), more than a request costs us. A reader that
sleeps in the kernel after every answer pays that wake-up on the next
request of a burst (an untar, `find`, a build). A reader that keeps reading
without blocking for a short window after each answer catches the next
request with its vCPU still awake.

Spinning burns CPU, so it is adaptive; `SpinPolicy` decides, and is a pure
object (a clock in, decisions out) so that tests drive it without a mount:

* **Only while requests come close together.** The reader spins after an
  answer only if the previous request came within `window + WAKE_ALLOWANCE`
  of the wait before it: within the window a spin would have caught it, and
  the allowance covers the wake-up a sleeping reader pays before it sees a
  request (so that a burst that began while it slept starts spinning).
  A request that was already queued counts as close.
* **A bounded CPU budget.** Serving a request earns credit, BUDGET_FRACTION
  of the time it took (read to answer written); spinning spends it: a spin
  that misses, all it lasted; one that catches its request, only what it
  lasted beyond HIT_FREE_NS, the vCPU wake-up it saved. A spin never lasts
  longer than the credit, and with less than a quarter window left the
  reader blocks. Over any interval, what is charged costs at most
  BUDGET_FRACTION of the serving time plus the credit cap (CREDIT_WINDOWS
  windows), however requests are timed; a spin that is not charged was
  shorter than the wake-up it replaced.
* **Only when the CPU would otherwise idle.** Not while the sealer is in a
  pass (`busy`): a spinning reader holds the GIL between its reads, and on
  two vCPUs it takes the core the sealer compresses on (an untar spinning
  beside the sealer took 1.6x the time). Not while more tasks are runnable
  on the machine than it has CPUs (`CpuCrowding`): then no vCPU halts, so
  there is no wake-up to save, and the spin is CPU taken from another job.
* **Idle stops at once.** A spin that times out is followed by a blocking
  wait, and the request that ends that wait came after more than the
  window, so the reader does not spin again until requests come close
  together again: a mount that goes idle spins one window, then uses no CPU.

Threading: a policy belongs to the reader thread alone; its counters are
read by stats (under the global lock) as plain ints, torn reads harmless.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import attrs

from ..options import MAX_SPIN_US

_US = 1000
#: How much later than the window a request may come, after a blocking wait,
#: and still count as close: the wake-up of a halted vCPU, 55-75 us here
#: (BASELINE.md 5.1), with a margin.
WAKE_ALLOWANCE_NS = 100 * _US
#: What spinning is charged (HIT_FREE_NS) may cost at most this fraction of
#: the time spent serving requests (plus the credit cap). 0.5: at worst,
#: charged spinning adds half the daemon's CPU. A spin that catches its
#: request within HIT_FREE_NS is not charged: it lasts only the client's
#: turnaround, at most one per request, and replaces a wake-up.
BUDGET_FRACTION = 0.5
#: What a spin that caught its request is not charged: the wake-up of a
#: halted vCPU it saved, 55-75 us here (BASELINE.md 5.1), at its low end.
#: Charging hits in full starved the budget on a quiet machine: at a
#: client turnaround of ~30 us against ~40 us of serving, credit ran out
#: and 300k of 720k waits in fsbench's meta phase slept (stat 94 us a
#: call, against 28 us for native_mem.py spinning freely).
HIT_FREE_NS = 60 * _US
#: The credit cap, in windows: what a long handler (a 1 MiB write, a
#: compression) earns beyond this is lost, so a busy stretch cannot pay
#: for a long train of missed spins afterwards.
CREDIT_WINDOWS = 4


#: A spin shorter than window / MIN_SPIN_FRACTION is not begun (the reader
#: blocks): a few microseconds of spinning rarely catch a request, and cost
#: their syscalls all the same.
MIN_SPIN_FRACTION = 4


@attrs.define
class SpinCounters:
    """Since mount, what spinning did (stats: transport.spin)."""

    spin_ns: int = 0      # time spent reading /dev/fuse without blocking, waiting for a request
    spins: int = 0        # spins begun (a wait that began with a spin)
    hits: int = 0         # spins that caught a request before their deadline
    sleeps: int = 0       # spins that ended without one: the reader then blocked
    queued: int = 0       # requests already waiting when an answer was written (no wait at all)
    waits: int = 0        # blocking waits (after a spin that missed, or without one)
    skipped_far: int = 0  # waits that did not spin: the last request came too long after its wait
    skipped_budget: int = 0  # waits that did not spin: the credit was spent
    skipped_busy: int = 0    # waits that did not spin: the sealer was at work
    skipped_crowded: int = 0  # waits that did not spin: no CPU would have been idle


class SpinPolicy:
    """When to spin, and for how long; see the module docstring.

    The reader calls, per request: `queued()` when a non-blocking read found
    one waiting, or else `begin(now)` and then `caught(now)` (a spin got one)
    or `woke(now)` (a blocking wait ended); and `served(busy_ns)` once
    answered.
    """

    def __init__(self, window_us: int, *, budget_fraction: float = BUDGET_FRACTION,
                 credit_windows: int = CREDIT_WINDOWS,
                 wake_allowance_ns: int = WAKE_ALLOWANCE_NS,
                 busy: Callable[[], bool] = lambda: False,
                 crowded: Callable[[int], bool] = lambda now: False) -> None:
        assert 0 < window_us <= MAX_SPIN_US
        self.window_ns = window_us * _US
        self.budget_fraction = budget_fraction
        self.credit_cap_ns = credit_windows * self.window_ns
        self.close_ns = self.window_ns + wake_allowance_ns
        self.min_spin_ns = self.window_ns // MIN_SPIN_FRACTION
        self.credit_ns = 0           # spinning time that may still be spent
        self.close = False           # the last request came close after its wait began
        self.wait_start = 0          # when the current wait (spin or block) began
        self.spin_until = 0          # the current spin's deadline; 0: not spinning
        #: Another thread of the daemon needs the CPU and the GIL (the sealer).
        self.busy = busy
        #: crowded(now): every CPU has something else to run (CpuCrowding).
        self.crowded = crowded
        self.counters = SpinCounters()

    def queued(self) -> None:
        """A request was waiting already: the closest there is."""
        self.counters.queued += 1
        self.close = True

    def begin(self, now: int) -> int:
        """No request waits: the deadline to spin until, or 0 to block now."""
        self.wait_start = now
        c = self.counters
        if not self.close:
            c.skipped_far += 1
        elif self.credit_ns < self.min_spin_ns:
            c.skipped_budget += 1
        elif self.busy():
            c.skipped_busy += 1
        elif self.crowded(now):
            c.skipped_crowded += 1
        else:
            c.spins += 1
            self.spin_until = now + min(self.window_ns, self.credit_ns)
            return self.spin_until
        c.waits += 1
        return 0
    def caught(self, now: int) -> None:
        """A spin read a request at now. It is charged only what it lasted
        beyond the wake-up it saved (HIT_FREE_NS)."""
        spent = now - self.wait_start
        self.counters.spin_ns += spent
        if spent > HIT_FREE_NS:
            self.credit_ns -= spent - HIT_FREE_NS
        self.spin_until = 0
        self.counters.hits += 1
        self.close = True

    def missed(self, now: int) -> None:
        """A spin reached its deadline at now without a request; the reader blocks."""
        self._spent(now)
        self.counters.sleeps += 1
        self.counters.waits += 1

    def woke(self, now: int) -> None:
        """A blocking wait ended with a request at now."""
        self.close = now - self.wait_start <= self.close_ns

    def served(self, busy_ns: int) -> None:
        """A request took busy_ns from its read to its answer: credit earned."""
        credit = self.credit_ns + int(busy_ns * self.budget_fraction)
        self.credit_ns = credit if credit < self.credit_cap_ns else self.credit_cap_ns

    def _spent(self, now: int) -> None:
        spent = now - self.wait_start
        self.counters.spin_ns += spent
        self.credit_ns -= spent
        self.spin_until = 0

    def info(self) -> dict[str, object]:
        """What stats says (transport.spin)."""
        c = self.counters
        return {
            "window_us": self.window_ns // _US,
            **attrs.asdict(c),
            # The share of spins that caught a request.
            "hit_rate": round(c.hits / c.spins, 4) if c.spins else None,
        }


class CpuCrowding:
    """Whether spinning would take a CPU from another runnable task: more
    tasks are runnable on the machine than it has CPUs (the reader counts
    itself: it is running when it asks). Sampled from /proc/loadavg's
    running count at most every SAMPLE_NS; a read costs 3 us here.

    Why: spinning only pays when the vCPU would otherwise halt. On this
    2-vCPU machine loaded by other jobs (load 3-5), spin=50..200 without this
    check made an untar 1.15-1.6x slower and random 4 KiB writes 0.5-0.7x
    (docs/locking.md, "Spinning")."""

    #: How long one sample of the running count is trusted.
    SAMPLE_NS = 5_000_000

    def __init__(self, read: Optional[Callable[[], bytes]] = None,
                 cpus: Optional[int] = None) -> None:
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self._read = read or self._read_loadavg
        self._fd = -1
        self.sampled = -self.SAMPLE_NS - 1
        self.value = False

    def _read_loadavg(self) -> bytes:
        if self._fd < 0:
            self._fd = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(self._fd, 128, 0)

    def __call__(self, now: int) -> bool:
        if now - self.sampled >= self.SAMPLE_NS:
            self.sampled = now
            try:
                # "0.52 0.58 0.59 3/160 12345": the 4th field is running/total.
                running = int(self._read().split()[3].split(b"/")[0])
            except (OSError, ValueError, IndexError):
                running = 0          # no /proc: assume a CPU is free
            self.value = running > self.cpus
        return self.value
