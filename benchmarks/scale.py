#!/usr/bin/env python3
"""scale.py - time per entry with 1k, 10k and 100k empty files in ONE
directory, on cctmpfs and tmpfs in the same run: create, stat (warm and
cold), readdir, read and unlink should stay flat as the directory grows.

    benchmarks/scale.py [--counts 1000,10000,100000] [--cctmpfs PATH] [-o results/scale.json]

Runs ../shared/bench/meta.py (--dirs 1 --size 0 --drop-caches) on a fresh
tmpfs and a fresh cctmpfs mount per count; root only; unmounts on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ("tmpfs", "pyfuse", "cct")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="1000,10000,100000")
    ap.add_argument("--cctmpfs", default=os.path.join(HERE, "..", ".venv", "bin", "cctmpfs"))
    ap.add_argument("--bench-dir", default=os.environ.get("CCTMPFS_BENCH_DIR",
                                                        os.path.join(HERE, "..", "..", "shared", "bench")))
    ap.add_argument("-o", "--output", default=os.path.join(HERE, "results", "scale.json"))
    ap.add_argument("--python", default=os.path.join(HERE, "..", ".venv", "bin", "python"),
                    help="a Python with llfuse, for pyfuse_mem.py")
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    ap.add_argument("--tree", type=int, default=0, metavar="N",
                    help="instead: N empty files in N/1000 directories on cctmpfs; report time "
                         "per create and unlink, and the daemon's RSS per inode")
    a = ap.parse_args()
    if a.tree:
        return tree(a)
    if a.report_only:
        with open(a.output) as f:
            results = json.load(f)["results"]
        return write_report(results, [int(c) for c in results], a.output)
    meta = os.path.join(a.bench_dir, "meta.py")
    if not os.path.exists(meta):
        raise SystemExit(f"scale.py: {meta} not found (set CCTMPFS_BENCH_DIR)")
    counts = [int(c) for c in a.counts.split(",")]
    results: dict = {}
    for n in counts:
        for target in TARGETS:
            mp = tempfile.mkdtemp(prefix=f"scale-{target}.", dir="/var/tmp")
            proc = None
            if target == "tmpfs":
                subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", mp], check=True)
            elif target == "pyfuse":
                proc = subprocess.Popen([a.python, os.path.join(a.bench_dir, "pyfuse_mem.py"), mp,
                                         "--stats", mp + ".stats.json"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for _ in range(100):
                    if os.path.ismount(mp):
                        break
                    time.sleep(0.1)
            else:
                subprocess.run([a.cctmpfs, "cctmpfs", mp, "-o", "size=2g"], check=True)
            try:
                p = subprocess.run([sys.executable, meta, mp, "--files", str(n), "--dirs", "1",
                                    "--size", "0", "--drop-caches"], capture_output=True, text=True,
                                   check=True, timeout=3600)
                results.setdefault(str(n), {})[target] = json.loads(p.stdout)
                print(n, target, {k: v["us_per_op"] for k, v in results[str(n)][target].items()},
                      flush=True)
            finally:
                for _ in range(20):
                    if subprocess.run(["umount", mp], capture_output=True).returncode == 0:
                        break
                    time.sleep(0.5)
                if proc is not None:
                    proc.wait(timeout=30)
                    if os.path.exists(mp + ".stats.json"):
                        os.unlink(mp + ".stats.json")
                os.rmdir(mp)
    with open(a.output, "w") as f:
        json.dump({"argv": sys.argv, "results": results}, f, indent=1)
    return write_report(results, counts, a.output)


def tree(a: argparse.Namespace) -> int:
    """N inodes across a tree, through a real mount."""
    mp = tempfile.mkdtemp(prefix="scale-tree.", dir="/var/tmp")
    subprocess.run([a.cctmpfs, "cctmpfs", mp, "-o", f"size=2g,nr_inodes={2 * a.tree}"], check=True)
    out: dict = {"inodes": a.tree}
    try:
        pid = subprocess.run(["pgrep", "-f", f"[p]ython.*cctmpfs cctmpfs {mp}"],
                             capture_output=True, text=True).stdout.split()[0]

        def rss() -> int:
            with open(f"/proc/{pid}/status") as f:
                return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS"))

        base = rss()
        t0 = time.perf_counter()
        for d in range(a.tree // 1000):
            dp = os.path.join(mp, f"d{d:04d}")
            os.mkdir(dp)
            for i in range(999):
                os.close(os.open(os.path.join(dp, f"f{i:03d}"), os.O_CREAT | os.O_WRONLY, 0o644))
        out["create_us_per_inode"] = (time.perf_counter() - t0) / a.tree * 1e6
        out["rss_per_inode_bytes"] = (rss() - base) / a.tree
        st = os.statvfs(mp)
        out["statvfs_files_used"] = st.f_files - st.f_ffree
        t0 = time.perf_counter()
        for name in os.listdir(mp):
            subprocess.run(["rm", "-rf", os.path.join(mp, name)], check=True)
        out["rm_rf_us_per_inode"] = (time.perf_counter() - t0) / a.tree * 1e6
        st = os.statvfs(mp)
        out["statvfs_files_used_after"] = st.f_files - st.f_ffree
    finally:
        subprocess.run(["umount", mp])
        os.rmdir(mp)
    path = os.path.join(os.path.dirname(a.output), "scale-tree.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
    return 0


def write_report(results: dict, counts: list[int], output: str) -> int:
    phases = ["create", "stat", "stat-cold", "readdir", "read", "unlink"]
    targets = [t for t in TARGETS if all(t in results[str(n)] for n in counts)]

    def per_entry(target: str, n: int, ph: str) -> float | None:
        r = results[str(n)][target].get(ph)
        if not r:
            return None
        return r["us_per_op"] / n if ph == "readdir" else r["us_per_op"]

    lines = ["# Time per entry in one directory", "",
             f"`benchmarks/scale.py`, {time.strftime('%Y-%m-%d %H:%M')}: empty files, one "
             "directory, ../shared/bench/meta.py, one run per count, targets side by side. "
             "Microseconds per entry (readdir: the listing of the whole directory divided by "
             "its entries); then cct's time as a ratio to tmpfs's and pyfuse's (lower is better).",
             "", "| phase | " + " | ".join(f"{t} {n}" for t in targets for n in counts) + " |",
             "|---|" + "---:|" * (len(targets) * len(counts))]
    for ph in phases:
        cells = []
        for t in targets:
            for n in counts:
                v = per_entry(t, n, ph)
                cells.append("-" if v is None else "%.2f" % v)
        lines.append(f"| {ph} | " + " | ".join(cells) + " |")
    for ref in [t for t in targets if t != "cct"]:
        lines += ["", f"cct / {ref}:", "", "| phase | " + " | ".join(str(n) for n in counts) + " |",
                  "|---|" + "---:|" * len(counts)]
        for ph in phases:
            cells = []
            for n in counts:
                c, r = per_entry("cct", n, ph), per_entry(ref, n, ph)
                cells.append("-" if not c or not r else "%.1f" % (c / r))
            lines.append(f"| {ph} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    with open(os.path.splitext(output)[0] + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
