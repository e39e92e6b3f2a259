"""The native transport's request loop through a real mount: adaptive
polling (spin=) leaves an idle mount at no CPU, and what stats says of it.

Correctness with spinning on is the whole mounted suite's: under
transport=native every mount there runs with the default spin=."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
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


# ---- READDIRPLUS ---------------------------------------------------------------

def listing(d: str) -> dict[str, tuple[int, int, int]]:
    """name -> (mode, size, nlink) of every entry, as `ls -l` sees them."""
    out = {}
    for e in os.scandir(d):
        st = e.stat(follow_symlinks=False)
        out[e.name] = (st.st_mode, st.st_size, st.st_nlink)
    return out


def populate(d: str, n: int) -> None:
    os.makedirs(d)
    for i in range(n):
        p = os.path.join(d, f"entry-{i:05d}" + "x" * (i % 40))
        if i % 10 == 0:
            os.mkdir(p)
        elif i % 10 == 1:
            os.symlink("target-" * (1 + i % 7), p)
        else:
            with open(p, "wb") as f:
                f.write(b"y" * (i % 300))


@pytest.mark.parametrize("transport", ["native"])
def test_ls_l_of_a_big_directory_is_tmpfs_s(mount_cct, tmpfs_mount, transport, drop_caches):
    mp = mount_cct("size=64m")
    ref = tmpfs_mount()
    for base in (mp, ref):
        populate(os.path.join(base, "big"), 3000)
    drop_caches()   # cold: the kernel knows none of the entries
    got, want = listing(os.path.join(mp, "big")), listing(os.path.join(ref, "big"))
    assert got == want
    s = mp.stats()
    assert "DO_READDIRPLUS" in s["transport"]["flags"]
    assert "READDIRPLUS_AUTO" in s["transport"]["flags"]
    assert s["requests"].get("readdirplus", 0) >= 1
    # And `ls -l` itself, names and types, as on tmpfs.
    ls = [subprocess.run(["ls", "-ln", "--time-style=+", os.path.join(b, "big")],
                         capture_output=True, text=True, check=True).stdout for b in (mp, ref)]
    strip = [[" ".join(line.split()[:1] + line.split()[4:]) for line in x.splitlines()[1:]]
             for x in ls]
    assert strip[0] == strip[1]


@pytest.mark.parametrize("transport", ["native"])
def test_listing_while_entries_come_and_go(mount_cct, transport, drop_caches):
    """Listings with attributes (READDIRPLUS) race unlinks and creates: every
    name listed that exists throughout is seen once, no error but ENOENT for
    a name that went, and the kernel's references all come back."""
    mp = mount_cct("size=64m")
    d = os.path.join(mp, "race")
    os.mkdir(d)
    stable = {f"keep-{i}" for i in range(300)}
    for n in stable:
        open(os.path.join(d, n), "w").close()
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        i = 0
        try:
            while not stop.is_set():
                p = os.path.join(d, f"tmp-{i % 200}")
                if i % 400 < 200:
                    open(p, "w").close()
                else:
                    os.unlink(p)
                i += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(30):
            drop_caches()
            names = []
            for e in os.scandir(d):
                names.append(e.name)
                try:
                    e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    assert e.name.startswith("tmp-")
            assert len(names) == len(set(names))
            assert stable <= set(names)
    finally:
        stop.set()
        t.join()
    assert not errors


@pytest.mark.parametrize("transport", ["native"])
def test_readdirplus_references_all_come_back(mount_cct, transport, drop_caches):
    """Every lookup reference READDIRPLUS gave the kernel comes back by
    FORGET: once the kernel drops its caches, a tree listed with `ls -lR`
    and then removed leaves no inode behind (an inode with a reference left
    would stay, unlinked, until unmount)."""
    mp = mount_cct("size=64m")
    populate(os.path.join(mp, "t", "a"), 500)
    populate(os.path.join(mp, "t", "b"), 700)
    base = mp.stats()["inodes"] - 1200 - 3   # root and whatever else is there
    drop_caches()
    for _ in range(2):
        subprocess.run(["ls", "-lRa", os.path.join(mp, "t")], capture_output=True, check=True)
        subprocess.run(["du", "-s", os.path.join(mp, "t")], capture_output=True, check=True)
    assert mp.stats()["requests"].get("readdirplus", 0) >= 2
    shutil.rmtree(os.path.join(mp, "t"))
    drop_caches()
    deadline = time.monotonic() + 30
    while mp.stats()["inodes"] > base and time.monotonic() < deadline:
        time.sleep(0.2)
        drop_caches()
    assert mp.stats()["inodes"] == base
