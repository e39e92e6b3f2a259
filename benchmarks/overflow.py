#!/usr/bin/env python3
"""overflow.py - working sets of 0.5x, 2x and 4x a RAM budget: cctmpfs with a
backing device against zram+ext4 held to the same budget, in one run.

    benchmarks/overflow.py [--budget 256m] [--rounds 2] [--runtime 10] \\
        [--cctmpfs PATH] [-o benchmarks/results/overflow.json]

Run as root; stdlib only, needs fio, losetup, mkfs.ext4 and a free zram0.
For each round, each working-set size and each target (order rotated per
round), it mounts the target fresh, then:

  write     fio sequential 1 MiB writes of the working set, 60% compressible,
            end_fsync; then the mount settles (cctmpfs --settle; sync)
  seqread   drop caches, fio sequential 1 MiB read of it all
  randread  drop caches, fio 4 KiB O_DIRECT random reads for --runtime s

Targets:
  cct        cctmpfs -o ram=BUDGET,backing=<loop device on a sparse file>
  cct-plain  the same with backing_encrypt=off (what encryption costs)
  zram       zram0, lz4, mem_limit=BUDGET, ext4: the kernel's compressed RAM
             disk held to the same RAM; past what fits, its writes fail
  tmpfs      a tmpfs with no RAM limit (speed reference; it holds everything)
  pyfuse     ../shared/bench/pyfuse_mem.py, the plain Python FUSE memory fs
             with no RAM limit: the speed limit of a Python FUSE filesystem
Everything mounted is unmounted, loop devices detached and zram0 reset on
exit, error or Ctrl-C. Writes <json> and <json minus .json>.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
RATIOS = (0.5, 2.0, 4.0)
NAMES = ["cct", "cct-plain", "zram", "tmpfs", "pyfuse"]


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, **kw)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def fio(directory: str, name: str, rw: str, bs: str, size: int, runtime: int = 0,
        direct: bool = False) -> dict:
    args = ["fio", f"--name={name}", f"--directory={directory}", "--filename=ws.dat",
            f"--rw={rw}", f"--bs={bs}", f"--size={size}", "--ioengine=psync",
            "--fallocate=none", "--output-format=json"]
    if rw == "write":
        args += ["--end_fsync=1", "--refill_buffers=1", "--buffer_compress_percentage=60",
                 "--randseed=7"]
    if runtime:
        args += ["--time_based=1", f"--runtime={runtime}"]
    if direct:
        args += ["--direct=1"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    txt = p.stdout
    try:
        job = json.loads(txt[txt.find("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError):
        return {"ok": False, "error": p.stderr[-300:]}
    side = job["write" if rw == "write" else "read"]
    return {"ok": p.returncode == 0 and not job.get("error"), "mib_s": side["bw_bytes"] / MiB,
            "iops": side["iops"], "io_mib": side["io_bytes"] / MiB,
            "error": (p.stderr.strip() or str(job.get("error")))[-300:]}


class Target:
    def __init__(self, name: str, a: argparse.Namespace, work: str) -> None:
        self.name, self.a, self.work = name, a, work
        self.mp = os.path.join(work, "mnt-" + name)
        os.makedirs(self.mp, exist_ok=True)
        self.loop: str | None = None
        self.backing: str | None = None
        self.proc: subprocess.Popen | None = None

    def up(self, ws: int) -> None:
        budget = self.a.budget_bytes
        if self.name == "tmpfs":
            sh("mount", "-t", "tmpfs", "-o", f"size={8 * ws}", "tmpfs", self.mp)
        elif self.name == "pyfuse":
            self.proc = subprocess.Popen(
                [self.a.python, os.path.join(self.a.bench_dir, "pyfuse_mem.py"), self.mp,
                 "--stats", os.path.join(self.work, "pyfuse.stats.json")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                if os.path.ismount(self.mp):
                    break
                time.sleep(0.1)
            else:
                raise SystemExit("pyfuse_mem.py did not mount")
        elif self.name.startswith("cct"):
            self.backing = os.path.join("/var/tmp", f"overflow-{self.name}.img")
            with open(self.backing, "wb") as f:
                f.truncate(max(2 * ws, 64 * MiB) + budget)
            self.loop = sh("losetup", "--find", "--show", self.backing).stdout.strip()
            opts = f"size={8 * ws},ram={budget},backing={self.loop}"
            if self.name == "cct-plain":
                opts += ",backing_encrypt=off"
            sh(self.a.cctmpfs, "cctmpfs", self.mp, "-o", opts)
        else:
            z = "/sys/block/zram0"
            if open(f"{z}/disksize").read().strip() != "0":
                raise SystemExit("zram0 is in use (disksize != 0)")
            open(f"{z}/comp_algorithm", "w").write("lz4")
            open(f"{z}/mem_limit", "w").write(str(budget))
            open(f"{z}/disksize", "w").write(str(8 * ws))
            sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
               "/dev/zram0")
            sh("mount", "-o", "discard", "/dev/zram0", self.mp)

    def settle(self) -> dict:
        if self.name in ("tmpfs", "pyfuse"):
            os.sync()
            return {}
        if self.name.startswith("cct"):
            p = sh(self.a.cctmpfs, "stats", "--json", "--settle", self.mp, check=False)
            return json.loads(p.stdout) if p.returncode == 0 else {}
        os.sync()
        with open("/sys/block/zram0/mm_stat") as f:
            orig, compr, used = (int(x) for x in f.read().split()[:3])
        return {"orig_bytes": orig, "compr_bytes": compr, "mem_used_bytes": used}

    def down(self) -> None:
        if os.path.ismount(self.mp):
            for _ in range(20):
                if sh("umount", self.mp, check=False).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                sh("umount", "-l", self.mp, check=False)
        if self.name == "tmpfs":
            return
        if self.name == "pyfuse":
            if self.proc is not None:
                self.proc.wait(timeout=30)
                self.proc = None
            return
        if self.name.startswith("cct"):
            time.sleep(0.5)
            if self.loop:
                sh("losetup", "-d", self.loop, check=False)
            if self.backing and os.path.exists(self.backing):
                os.unlink(self.backing)
            self.loop = self.backing = None
        else:
            with open("/sys/block/zram0/reset", "w") as f:
                f.write("1\n")


def run(a: argparse.Namespace) -> list[dict]:
    work = tempfile.mkdtemp(prefix="overflow.", dir="/var/tmp")
    targets = [Target(n, a, work) for n in NAMES]
    records: list[dict] = []
    try:
        for rnd in range(a.rounds):
            for ratio in RATIOS:
                ws = int(a.budget_bytes * ratio)
                k = (rnd + RATIOS.index(ratio)) % len(targets)
                for t in targets[k:] + targets[:k]:
                    t.up(ws)
                    try:
                        rec = {"round": rnd, "ratio": ratio, "target": t.name, "ws_mib": ws // MiB}
                        t0 = time.perf_counter()
                        w = fio(t.mp, "write", "write", "1m", ws)
                        st = t.settle()
                        rec["write"] = w
                        rec["write_settled_mib_s"] = (w.get("io_mib", 0)
                                                      / (time.perf_counter() - t0)) if w["ok"] else None
                        rec["stats"] = st
                        if w["ok"]:
                            drop_caches()
                            rec["seqread"] = fio(t.mp, "seqread", "read", "1m", ws)
                            drop_caches()
                            rec["randread"] = fio(t.mp, "randread", "randread", "4k", ws,
                                                  runtime=a.runtime, direct=True)
                        records.append(rec)
                        print(json.dumps({k2: v for k2, v in rec.items() if k2 != "stats"}), flush=True)
                    finally:
                        t.down()
    finally:
        for t in targets:
            t.down() if os.path.ismount(t.mp) else None
        shutil.rmtree(work, ignore_errors=True)
    return records


def report(records: list[dict], a: argparse.Namespace) -> str:
    names = NAMES

    def med(ratio: float, name: str, fn) -> str:  # type: ignore[no-untyped-def]
        vals = [fn(r) for r in records if r["ratio"] == ratio and r["target"] == name]
        vals = [v for v in vals if v is not None]
        if not vals:
            return "failed"
        return "%.0f" % statistics.median(vals)

    def ok_or_fail(r: dict, key: str, field: str):  # type: ignore[no-untyped-def]
        x = r.get(key)
        return x[field] if x and x.get("ok") else None

    lines = ["# Overflow benchmark", "",
             "Ratios below each table: target / tmpfs and target / pyfuse (higher is better; "
             "tmpfs and pyfuse have no RAM limit, so they hold every working set in RAM).", "",
             f"`benchmarks/overflow.py`, {time.strftime('%Y-%m-%d %H:%M')}, RAM budget "
             f"{a.budget_bytes // MiB} MiB, {a.rounds} rounds (medians), 60%-compressible fio data. "
             "cct: cctmpfs with `ram=` the budget and a loop device as `backing=`; cct-plain: the "
             "same with `backing_encrypt=off`; zram: zram0 (lz4) with `mem_limit=` the budget, "
             "under ext4. *failed*: the target could not hold the working set.", ""]
    for ratio in RATIOS:
        lines += [f"## Working set {ratio}x the budget ({int(a.budget_bytes * ratio) // MiB} MiB)", "",
                  "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        metrics = (("write (MiB/s)", lambda r: ok_or_fail(r, "write", "mib_s")),
                   ("write, settled (MiB/s)", lambda r: r.get("write_settled_mib_s")),
                   ("cold seq read (MiB/s)", lambda r: ok_or_fail(r, "seqread", "mib_s")),
                   ("cold 4 KiB random read (IOPS)", lambda r: ok_or_fail(r, "randread", "iops")))
        for label, fn in metrics:
            lines.append(f"| {label} | " + " | ".join(med(ratio, n, fn) for n in names) + " |")
        for ref in ("tmpfs", "pyfuse"):
            for label, fn in metrics:
                base = med(ratio, ref, fn)
                cells = []
                for n in names:
                    v = med(ratio, n, fn)
                    cells.append("-" if "failed" in (v, base) or float(base) == 0
                                 else "%.2f" % (float(v) / float(base)))
                lines.append(f"| {label.split(' (')[0]} / {ref} | " + " | ".join(cells) + " |")
        for r in records:
            if r["ratio"] == ratio and r["target"] == "cct" and r.get("stats", {}).get("device"):
                d = r["stats"]["device"]
                lines += ["", f"cct, round {r['round'] + 1}: {d['evictions']} blocks evicted, "
                          f"{d['live_bytes'] // MiB} MiB live on the device, write amplification "
                          f"{d['write_amplification']}, RAM used {r['stats']['ram_used_bytes'] // MiB} MiB, "
                          f"RSS {r['stats']['rss_bytes'] // MiB} MiB."]
                break
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", default="256m")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--cctmpfs", default=os.path.join(HERE, "..", ".venv", "bin", "cctmpfs"))
    ap.add_argument("-o", "--output", default=os.path.join(HERE, "results", "overflow.json"))
    ap.add_argument("--bench-dir", default=os.environ.get("CCTMPFS_BENCH_DIR",
                                                        os.path.join(HERE, "..", "..", "shared", "bench")))
    ap.add_argument("--python", default=os.path.join(HERE, "..", ".venv", "bin", "python"),
                    help="a Python with llfuse, for pyfuse_mem.py")
    a = ap.parse_args()
    units = {"k": 1 << 10, "m": MiB, "g": 1 << 30}
    b = a.budget.lower()
    a.budget_bytes = int(b[:-1]) * units[b[-1]] if b[-1] in units else int(b)
    if os.geteuid() != 0:
        raise SystemExit("overflow.py: run as root")
    records = run(a)
    with open(a.output, "w") as f:
        json.dump({"argv": sys.argv, "records": records}, f, indent=1)
    md = report(records, a)
    with open(os.path.splitext(a.output)[0] + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
