#!/usr/bin/env python3
"""Idle recompression (issue 15 item 5): stored bytes of a tree copied into a
mount, once sealed and after the idle sealer's recompression settles, and the
CPU seconds the daemon spent on each part (utime+stime, /proc/PID/stat).

    benchmarks/recompress.py [--opts recompress=15] [TREE ...]

Default tree: /usr/lib/python3.11. Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from rss_rmrf import stats, wait_mounted  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="*", default=["/usr/lib/python3.11"])
    ap.add_argument("--opts", default="")
    ap.add_argument("--deadline", type=float, default=600.0)
    ap.add_argument("--cctmpfs", default=os.path.join(os.path.dirname(__file__), "..", ".venv/bin/cctmpfs"))
    a = ap.parse_args()
    mp = tempfile.mkdtemp(prefix="recompress-")
    cmd = [a.cctmpfs, "recompress-bench", mp, "-f"] + (["-o", a.opts] if a.opts else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_mounted(mp, proc)
        c0 = cpu_seconds(proc.pid)
        for t in a.trees:
            subprocess.run(["cp", "-a", t, os.path.join(mp, os.path.basename(t.rstrip("/")))], check=True)
        s1 = stats(mp, settle=True)
        c1 = cpu_seconds(proc.pid)
        # Settled: the recompression counters unchanged for 3 s.
        end = time.monotonic() + a.deadline
        last, since = None, time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.5)
            s = stats(mp)
            rc = s["recompress"]
            key = (rc["recompressed"], rc["no_gain"], rc["discarded"])
            if key != last:
                last, since = key, time.monotonic()
            elif rc["level"] is None and time.monotonic() - since >= 3.0:
                break
            elif sum(key) + rc["errors"] >= s["dedup"]["index_entries"] and \
                    time.monotonic() - since >= 3.0:
                break   # every stored block looked at (SCHED_IDLE may stall when the CPU is busy)
        c2 = cpu_seconds(proc.pid)
        s2 = stats(mp)
        out = {
            "trees": a.trees, "opts": a.opts, "files_bytes": s1["files_bytes"],
            "stored_sealed": s1["stored_bytes"], "stored_recompressed": s2["stored_bytes"],
            "saved_pct": round(100 * (1 - s2["stored_bytes"] / s1["stored_bytes"]), 2),
            "ratio_sealed": s1["compression_ratio"], "ratio_recompressed": s2["compression_ratio"],
            "cpu_copy_s": round(c1 - c0, 2),
            # includes the quiet wait's idle polls (~0.5% of a core)
            "cpu_recompress_s": round(c2 - c1, 2),
            "recompress": s2["recompress"], "rss_bytes": s2["rss_bytes"],
        }
        print(json.dumps(out))
    finally:
        subprocess.run(["umount", mp], check=False)
        proc.wait(timeout=30)
        os.rmdir(mp)


if __name__ == "__main__":
    main()
