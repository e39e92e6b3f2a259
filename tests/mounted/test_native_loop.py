"""The native transport's request loop through a real mount: adaptive
polling (spin=) leaves an idle mount at no CPU, and what stats says of it.

Correctness with spinning on is the whole mounted suite's: under
transport=native every mount there runs with the default spin=."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.mounted

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, all its threads, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # fields 14 and 15 of proc(5)


def burst(mp: str, n: int = 1500) -> None:
    d = Path(mp, "burst")
    d.mkdir()
    for i in range(n):
        (d / f"f{i}").write_bytes(b"x")
    for i in range(n):
        os.stat(d / f"f{i}")


@pytest.mark.parametrize("transport", ["native"])
@pytest.mark.parametrize("spin", [0, 200])
def test_an_idle_mount_uses_no_cpu(mount_cct, transport, spin):
    """After a burst of requests, the reader spins at most one window and
    then sleeps: over the next seconds the daemon (every thread) uses almost
    no CPU. A reader that kept spinning would use a whole core: 100 ticks a
    second. recompress=off: idle recompression is CPU the idle mount spends
    on purpose."""
    mp = mount_cct(f"size=64m,recompress=off,spin={spin}")
    burst(mp)
    time.sleep(1.0)               # the sealer's last pass, the kernel's last FORGETs
    before = cpu_ticks(mp.proc.pid)
    time.sleep(3.0)
    used = cpu_ticks(mp.proc.pid) - before
    # 3 s of a spinning core is 300 ticks; allow 5% of one core for a busy machine's noise.
    assert used <= 3 * CLK_TCK // 20, f"{used} ticks in 3 s while idle"
    spin_stats = mp.stats()["transport"]["spin"]
    assert spin_stats["window_us"] == spin


@pytest.mark.parametrize("transport", ["native"])
def test_stats_report_spinning(mount_cct, transport):
    mp = mount_cct("size=64m,spin=100")
    burst(mp, 500)
    s = mp.stats()["transport"]["spin"]
    assert s["window_us"] == 100
    # Every request after the first was read one of three ways.
    assert s["queued"] + s["hits"] + s["waits"] >= 1000
    assert s["spins"] >= s["hits"] + s["sleeps"]
    assert s["spin_ns"] >= 0
    if s["spins"]:
        assert 0 <= s["hit_rate"] <= 1
