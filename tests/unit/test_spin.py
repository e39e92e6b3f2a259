"""The adaptive polling policy (transport/spin.py) as a pure object, driven by
a made-up clock, and the native loop with spinning on, over a socket pair."""

from __future__ import annotations

import pytest

from cctmpfs.codec import Codec
from cctmpfs.namespace import Filesystem
from cctmpfs.transport import wire as w
from cctmpfs.transport.spin import (CREDIT_WINDOWS, HIT_FREE_NS, WAKE_ALLOWANCE_NS, CpuCrowding,
                                    SpinPolicy)

US = 1000


class Reader:
    """Plays the reader's calls on a policy, on a clock in nanoseconds."""

    def __init__(self, window_us: int = 100, **kw: float) -> None:
        self.p = SpinPolicy(window_us, **kw)  # type: ignore[arg-type]
        self.now = 1_000_000_000

    def serve(self, busy_us: float) -> None:
        self.now += int(busy_us * US)
        self.p.served(int(busy_us * US))

    def next_request(self, gap_us: float) -> str:
        """The next request comes gap_us after the answer: what the reader did."""
        if gap_us == 0:
            self.p.queued()
            return "queued"
        deadline = self.p.begin(self.now)
        arrival = self.now + int(gap_us * US)
        if deadline and arrival <= deadline:
            self.now = arrival
            self.p.caught(self.now)
            return "caught"
        if deadline:
            self.p.missed(deadline)
        self.now = arrival
        self.p.woke(self.now)
        return "slept after a spin" if deadline else "slept"


def test_a_burst_spins_and_catches_its_requests() -> None:
    r = Reader(100)
    r.serve(30)
    # The first request of a burst after idle: no spin (nothing says a
    # burst began); the next one came soon after the wait, so spinning starts.
    assert r.next_request(5000) == "slept"
    r.serve(30)
    assert r.next_request(80) == "slept"      # 80 us: within window + wake-up allowance
    for _ in range(100):
        r.serve(30)
        assert r.next_request(10) == "caught"
    c = r.p.counters
    assert (c.spins, c.hits, c.sleeps) == (100, 100, 0)
    assert c.spin_ns == 100 * 10 * US
    assert r.p.info()["hit_rate"] == 1.0


def test_idle_stops_spinning_after_one_window() -> None:
    r = Reader(100)
    r.serve(30)
    r.next_request(0)
    r.serve(30)
    before = r.p.counters.spin_ns
    # The burst ends: one spin times out, and then the reader blocks for good.
    assert r.next_request(10_000_000) == "slept after a spin"
    assert r.p.counters.spin_ns - before <= 100 * US
    r.serve(30)
    for _ in range(10):   # requests now and then, far apart: never a spin
        assert r.next_request(500_000) == "slept"
        r.serve(30)
    assert r.p.counters.sleeps == 1
    assert r.p.counters.skipped_far == 10


def test_a_request_just_past_the_window_keeps_spinning_on() -> None:
    r = Reader(100, budget_fraction=10)   # credit enough: only closeness decides here
    r.serve(30)
    r.next_request(0)
    r.serve(30)
    assert r.next_request(150) == "slept after a spin"   # missed by 50 us: still close
    r.serve(30)
    assert r.next_request(20) == "caught"
    r.serve(30)
    assert r.next_request(100 + WAKE_ALLOWANCE_NS // US + 50) == "slept after a spin"
    r.serve(30)
    assert r.next_request(20) == "slept"                 # that one was far: no spin


@pytest.mark.parametrize("gap_us", [60, 90, 150, 199])
def test_spinning_costs_at_most_its_budget_of_the_serving_time(gap_us: int) -> None:
    # Requests 60-199 us apart with a 100 us window and cheap handlers: the
    # worst case, where spins last long and catch little. What is charged
    # (misses in full, hits beyond the wake-up they saved) stays within the
    # budget; spins stop when it is spent.
    r = Reader(100, budget_fraction=0.5)
    busy = 0.0
    r.serve(10)
    busy += 10
    charged = 0
    for _ in range(2000):
        before = r.p.counters.spin_ns
        what = r.next_request(gap_us)
        spent = r.p.counters.spin_ns - before
        charged += max(0, spent - HIT_FREE_NS) if what == "caught" else spent
        r.serve(10)
        busy += 10
    assert charged / US <= 0.5 * busy + CREDIT_WINDOWS * 100
    assert r.p.counters.skipped_budget > 0


def test_hits_within_the_wake_up_they_save_are_free() -> None:
    # A client that turns around in 40 us, 10 us handlers: every spin
    # catches its request sooner than a wake-up would have come, so the
    # budget never stops one (charged in full, the credit of 5 us a request
    # would stop most of them).
    r = Reader(200, budget_fraction=0.5)
    r.serve(200)
    r.next_request(0)
    for _ in range(2000):
        r.serve(10)
        assert r.next_request(HIT_FREE_NS // US - 20) == "caught"
    c = r.p.counters
    assert c.skipped_budget == 0 and c.hits == 2000
    assert c.spin_ns == 2000 * (HIT_FREE_NS - 20 * US)


def test_a_spin_never_outlasts_its_credit() -> None:
    r = Reader(100)
    r.serve(60)                   # 30 us of credit
    r.next_request(0)
    deadline = r.p.begin(r.now)
    assert deadline - r.now == 30 * US
    r.p.missed(deadline)
    assert r.p.credit_ns == 0
    r.now = deadline + 20 * US
    r.p.woke(r.now)
    r.serve(40)                   # 20 us: less than a quarter window
    assert r.p.begin(r.now) == 0
    assert r.p.counters.skipped_budget == 1


def test_credit_is_capped() -> None:
    r = Reader(50)
    r.serve(1_000_000)            # one long request: a second of serving
    assert r.p.credit_ns == CREDIT_WINDOWS * 50 * US


def test_no_spin_while_the_sealer_works_or_the_cpus_are_taken() -> None:
    busy, crowded = [False], [False]
    r = Reader(100, busy=lambda: busy[0], crowded=lambda now: crowded[0])  # type: ignore[arg-type]
    r.serve(400)
    r.next_request(0)
    r.serve(30)
    assert r.next_request(10) == "caught"
    busy[0] = True
    r.serve(30)
    assert r.next_request(10) == "slept"
    busy[0], crowded[0] = False, True
    r.serve(30)
    assert r.next_request(10) == "slept"
    crowded[0] = False
    r.serve(30)
    assert r.next_request(10) == "caught"
    c = r.p.counters
    assert (c.skipped_busy, c.skipped_crowded, c.hits) == (1, 1, 2)


def test_crowding_is_more_runnable_tasks_than_cpus_sampled_now_and_then() -> None:
    lines = [b"3.1 2.0 1.0 3/160 999\n", b"0.1 0.2 0.3 2/160 999\n", b"1 1 1 1/1 1\n"]
    reads = []

    def read() -> bytes:
        reads.append(1)
        return lines[len(reads) - 1]

    c = CpuCrowding(read, cpus=2)
    t = 10 ** 12
    assert c(t) is True                            # 3 running on 2 CPUs
    assert c(t + CpuCrowding.SAMPLE_NS - 1) is True and len(reads) == 1   # not sampled again
    assert c(t + CpuCrowding.SAMPLE_NS) is False   # 2 running: the reader and one more
    assert len(reads) == 2
    bad = CpuCrowding(lambda: b"garbage", cpus=2)
    assert bad(t) is False
    real = CpuCrowding()                           # this machine's /proc/loadavg parses
    assert real(t) in (True, False) and real.cpus >= 1


def test_stats_fields() -> None:
    info = SpinPolicy(200).info()
    assert info["window_us"] == 200 and info["hit_rate"] is None
    assert {"spin_ns", "spins", "hits", "sleeps", "queued", "waits", "skipped_far",
            "skipped_budget", "skipped_busy", "skipped_crowded"} <= set(info)


# ---- the loop, spinning ------------------------------------------------------------

def test_the_loop_serves_with_spinning_on(clock) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.test_native import Kernel, name, start, stop

    fs = Filesystem(block_size=16384, codec=Codec("zstd", 3), size_limit=64 << 20,
                    nr_inodes=1000, clock_ns=clock.ns)
    k, server, t, socks = start(fs, spin_us=200)
    try:
        k.init()
        for i in range(200):
            k.call(w.MKDIR, 1, w.MKDIR_IN.pack(0o40755, 0) + name(b"d%d" % i))
        for i in range(200):
            k.call(w.LOOKUP, 1, name(b"d%d" % i))
    finally:
        stop(t, socks)
    assert sum(1 for n in fs.inodes.values() if n.ino != 1) == 200
    spin = server.info()["spin"]
    assert spin["window_us"] == 200
    # Every read found its request one way: queued, caught by a spin, or
    # after a blocking wait (401 requests, and the end of file).
    assert spin["queued"] + spin["hits"] + spin["waits"] == 402
    assert spin["spins"] == spin["hits"] + spin["sleeps"]


def test_a_stop_signal_ends_a_spinning_loop(clock) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.test_native import start

    fs = Filesystem(block_size=16384, clock_ns=clock.ns)
    k, server, t, socks = start(fs, spin_us=10_000)
    try:
        k.init()
        server.stopping = True    # as on_stop_signal sets it, while spinning or not
        k.send(w.GETATTR, 1, w.GETATTR_IN.pack(0, 0, 0))   # wakes a blocked poll
        t.join(10)
        assert not t.is_alive()
    finally:
        for s in socks:
            s.close()
