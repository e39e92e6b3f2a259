#!/usr/bin/env python3
"""The daemon's RSS after a copy of real trees, and after `rm -rf` of them.

Usage (as root):

    benchmarks/rss_rmrf.py [--cctmpfs .venv/bin/cctmpfs] [-o OPTS] [--rounds N]
                           [--partial] [TREE ...]   (default /usr/lib/python3.11 /usr/include)

Each round mounts a fresh cctmpfs (`-f`, so the pid is known), records the
daemon's RSS, `cp -a`s the trees in, settles (`trusted.cctmpfs.stats-settled`),
waits WAIT seconds for the sealer and the trimmer, records RSS and where it
sits (smaps: the brk heap, glibc's 64 MiB thread arenas, other anonymous
mappings, files), then `rm -rf`s everything, settles, waits again and records
RSS. With --partial it first deletes 3 of every 4 files, scattered (what a
partial cleanup of /tmp does), and records RSS and the stats in between. It prints one line per round and a JSON summary. Run it against two
checkouts (--cctmpfs) to compare them: docs/arenas.md has the results.

stdlib only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
#: Seconds waited after each settle: the sealer's trim runs at most every 2 s.
WAIT = 6.0
#: glibc reserves each thread arena as one 64 MiB-aligned HEAP_MAX mapping.
ARENA_RESERVE = 64 * MiB


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss(pid: int) -> int:
    """VmHWM: the highest RSS since the daemon started."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def smaps_breakdown(pid: int) -> dict[str, int]:
    """RSS by kind of mapping: heap (brk), thread arenas (glibc's 64 MiB
    reservations), other anonymous mappings (mmap'd buffers, our payload
    segments, thread stacks), file-backed (code and libraries)."""
    out = {"heap": 0, "thread_arenas": 0, "anon_other": 0, "files": 0}
    maps: list[tuple[int, int, str, int]] = []
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                name = head[5] if len(head) > 5 else ""
                cur = [lo, hi, name, 0]
                maps.append(cur)  # type: ignore[arg-type]
            elif head[0] == "Rss:" and cur is not None:
                cur[3] = int(head[1]) * 1024
    # A thread arena is a run of mappings inside one 64 MiB-aligned window
    # that starts at the window (rw part, then the ---p rest).
    for lo, hi, name, r in maps:
        if name == "[heap]":
            out["heap"] += r
        elif name.startswith("/") or name.startswith("[v"):
            out["files"] += r
        elif name == "" and (lo & ~(ARENA_RESERVE - 1)) == (hi - 1) & ~(ARENA_RESERVE - 1) \
                and any(l2 == lo & ~(ARENA_RESERVE - 1) for l2, _h, n2, _r in maps if n2 == ""):
            out["thread_arenas"] += r
        else:
            out["anon_other"] += r
    return out


def stats(mp: str, settle: bool = False) -> dict:
    name = "trusted.cctmpfs.stats-settled" if settle else "trusted.cctmpfs.stats"
    return json.loads(os.getxattr(mp, name))


def wait_mounted(mp: str, proc: subprocess.Popen, deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"the daemon exited with {proc.returncode}")
        try:
            stats(mp)
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("the mount did not answer")


def settled_low(pid: int, mp: str) -> int:
    """Settle, then the lowest RSS seen over WAIT seconds."""
    stats(mp, settle=True)
    low = rss(pid)
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        time.sleep(0.2)
        low = min(low, rss(pid))
    return low


def delete_most(mp: str) -> None:
    """Delete 3 of every 4 regular files, in walk order."""
    n = 0
    for d, _dirs, files in os.walk(mp):
        for f in sorted(files):
            n += 1
            if n % 4:
                os.unlink(os.path.join(d, f))


def one_round(cct: str, opts: str, trees: list[str], partial: bool = False) -> dict:
    mp = tempfile.mkdtemp(prefix="rss-rmrf-")
    cmd = [cct, "rss-rmrf", mp, "-f"] + (["-o", opts] if opts else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_mounted(mp, proc)
        pid = proc.pid
        r0 = settled_low(pid, mp)
        for t in trees:
            subprocess.run(["cp", "-a", t, os.path.join(mp, os.path.basename(t.rstrip("/")))],
                           check=True)
        r1 = settled_low(pid, mp)
        peak = peak_rss(pid)
        s1 = stats(mp)
        where = smaps_breakdown(pid)
        out: dict = {}
        if partial:
            delete_most(mp)
            out["rss_partial"] = settled_low(pid, mp)
            sp = stats(mp)
            out["stored_partial"] = sp["stored_bytes"]
            out["arena_partial"] = sp.get("arena")
        for name in os.listdir(mp):
            subprocess.run(["rm", "-rf", os.path.join(mp, name)], check=True)
        r2 = settled_low(pid, mp)
        s2 = stats(mp)
        return {**out, "rss_empty": r0, "rss_peak": peak, "rss_full": r1, "rss_after_rm": r2,
                "files_bytes": s1["files_bytes"], "stored_bytes": s1["stored_bytes"],
                "ram_used_bytes": s1["ram_used_bytes"], "inodes": s1["inodes"],
                "smaps_full": where, "arena_full": s1.get("arena"),
                "arena_after_rm": s2.get("arena"), "smaps_after_rm": smaps_breakdown(pid)}
    finally:
        subprocess.run(["fusermount", "-u", mp], capture_output=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(mp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cctmpfs", default=os.path.join(os.path.dirname(__file__), "..", ".venv/bin/cctmpfs"))
    ap.add_argument("-o", dest="opts", default="")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--partial", action="store_true", help="delete 3/4 of the files before the rm -rf")
    ap.add_argument("trees", nargs="*", default=["/usr/lib/python3.11", "/usr/include"])
    a = ap.parse_args()
    results = []
    for i in range(a.rounds):
        r = one_round(a.cctmpfs, a.opts, a.trees, a.partial)
        results.append(r)
        m = {k: round(v / MiB, 1) for k, v in r.items() if isinstance(v, int) and k != "inodes"}
        print(f"round {i + 1}: files {m['files_bytes']} MiB, stored {m['stored_bytes']} MiB, "
              f"RSS empty {m['rss_empty']}, peak {m['rss_peak']}, "
              f"full {m['rss_full']} (+{m['rss_full'] - m['rss_empty']:.1f}), "
              f"after rm -rf {m['rss_after_rm']} (+{m['rss_after_rm'] - m['rss_empty']:.1f}) MiB; "
              f"smaps full (MiB) " + ", ".join(f"{k} {v / MiB:.1f}" for k, v in r["smaps_full"].items()),
              flush=True)
        if a.partial:
            print(f"  after deleting 3/4 of the files: stored {m['stored_partial']} MiB, "
                  f"RSS {m['rss_partial']} (+{m['rss_partial'] - m['rss_empty']:.1f}) MiB", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
