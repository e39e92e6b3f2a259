#!/usr/bin/env python3
"""dedup.py - what dedup costs and saves, on every target in one interleaved run.

    dedup.py -t tmpfs=/tmp/bench-tmpfs -t zram=/tmp/bench-zram -t cct=/tmp/bench-cct \\
        [--stats-cmd NAME=CMD] [--pid NAME=PIDFILE] [--clean-cmd NAME=CMD] \\
        [--rounds 3] [--size 512m] [--copies 10] -o out.json [--md out.md]

benchmarks/run --suite dedup mounts the targets and passes these options
(the same -t/--stats-cmd/--clean-cmd/--pid as fsbench.py takes). stdlib only,
needs fio and tar.

Phases, each run on every target (order rotated per round) before the next:

  dup-write  fio writes file A, --size of 60% compressible data from a seed,
             128 KiB requests, then file B from the same seed: the same bytes
             again. For each: fio's MiB/s, and "settled" MiB/s, which also
             counts the time until everything is compressed (cctmpfs: the
             stats hook's settle; all: sync). B is the duplicate write; the
             brief wants it no slower than A.
  copies     tar -x of a real source tree (the stdlib tar of fsbench.py),
             --copies times into separate directories; the first copy is new
             data, the others duplicates. Then the stats hook, and the RAM
             each target holds for the copies: zram's mem_used_total
             (mm_stat), tmpfs's used pages (df), cctmpfs's ram_used_bytes plus
             its index and block records (and RSS, reported alongside).
             Then rm -rf.

The JSON has every raw value; --md writes the report (medians of rounds).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (MiB, Target, add_target_options, log, medians,  # noqa: E402
                    parse_size, parse_targets, ram_held, run_fio_json, tar_logical)


class Bench:
    def __init__(self, a: argparse.Namespace, targets: list[Target]) -> None:
        self.a, self.targets = a, targets
        self.records: list[dict] = []
        self.size = parse_size(a.size)

    def record(self, rnd: int, t: Target, phase: str, metric: str, value, unit: str,
               extra: dict | None = None) -> None:
        rec = {"round": rnd, "target": t.name, "phase": phase, "metric": metric,
               "value": value, "unit": unit}
        if extra:
            rec["extra"] = extra
        self.records.append(rec)
        shown = "FAILED" if value is None else ("%.4g" % value if isinstance(value, float) else value)
        log("  %-8s %-28s %12s %s" % (t.name, metric, shown, unit))

    # ---- dup-write --------------------------------------------------------------
    def fio_write(self, work: str, fname: str, seed: int) -> tuple[float | None, float]:
        """(fio MiB/s, wall seconds) of one seeded sequential write."""
        cmd = [self.a.fio, "--name=dupwrite", "--directory=" + work, "--filename=" + fname,
               "--rw=write", "--bs=128k", "--size=%d" % self.size, "--ioengine=psync",
               "--fallocate=none", "--end_fsync=1",
               # Same seed, same bytes (checked: md5 of two runs match); every
               # 128 KiB buffer refilled, 60% compressible like fsbench's seq jobs.
               "--refill_buffers=1", "--buffer_compress_percentage=60",
               "--randseed=%d" % seed]
        t0 = time.perf_counter()
        data, err = run_fio_json(cmd, timeout=self.a.step_timeout)
        wall = time.perf_counter() - t0
        if data is None:
            log("fio failed: " + err)
            return None, wall
        return data["jobs"][0]["write"]["bw_bytes"] / MiB, wall

    def phase_dup_write(self, rnd: int, t: Target, work: str) -> None:
        seed = 4242 + rnd
        for label, fname in (("unique", "a.dat"), ("duplicate", "b.dat")):
            mib_s, wall = self.fio_write(work, fname, seed)
            t0 = time.perf_counter()
            st = t.stats()                   # cctmpfs: settles (compresses everything)
            os.sync()
            settle = time.perf_counter() - t0
            self.record(rnd, t, "dup-write", "write-%s" % label, mib_s, "MiB/s")
            settled = self.size / MiB / (wall + settle) if mib_s else None
            self.record(rnd, t, "dup-write", "write-%s-settled" % label, settled, "MiB/s",
                        {"fio_wall_s": round(wall, 3), "settle_s": round(settle, 3), "stats": st})
        ram, src = ram_held(t, t.stats())
        self.record(rnd, t, "dup-write", "ram-two-copies", ram, "bytes", {"source": src})

    # ---- copies -----------------------------------------------------------------
    def load_tar(self) -> bytes:
        path = self.a.src_tar
        if not os.path.exists(path):
            src = self.a.src_dir
            log("creating %s from %s (excluding site-packages)" % (path, src))
            subprocess.run(["tar", "-cf", path, "--exclude=site-packages", "-C",
                            os.path.dirname(src), os.path.basename(src)], check=True)
        with open(path, "rb") as f:
            return f.read()

    def phase_copies(self, rnd: int, t: Target, work: str) -> None:
        data = self.tar_data
        times = []
        for i in range(self.a.copies):
            d = os.path.join(work, "copy%d" % i)
            os.mkdir(d)
            t0 = time.perf_counter()
            p = subprocess.run(["tar", "-xf", "-", "-C", d], input=data, capture_output=True,
                               timeout=self.a.step_timeout)
            dt = time.perf_counter() - t0
            if p.returncode != 0:
                self.record(rnd, t, "copies", "untar-copy", None, "s",
                            {"stderr": p.stderr.decode(errors="replace")[-500:]})
                return
            times.append(dt)
        os.sync()
        self.record(rnd, t, "copies", "untar-first", times[0], "s")
        self.record(rnd, t, "copies", "untar-others-mean", statistics.mean(times[1:]), "s",
                    {"times": [round(x, 3) for x in times]})
        st = t.stats()
        ram, src = ram_held(t, st)
        logical = self.tar_logical * self.a.copies
        self.record(rnd, t, "copies", "ram-held", ram, "bytes",
                    {"source": src, "logical_bytes": logical, "stats": st})
        if ram:
            self.record(rnd, t, "copies", "ram-per-logical-byte", ram / logical, "x")
        if "dedup" in st:
            self.record(rnd, t, "copies", "ram-per-stored-block", st["dedup"].get("ram_per_block_bytes"),
                        "bytes")
            self.record(rnd, t, "copies", "rss", st.get("rss_bytes"), "bytes")
        t0 = time.perf_counter()
        subprocess.run(["rm", "-rf", work], check=False)
        self.record(rnd, t, "copies", "rm-rf", time.perf_counter() - t0, "s")

    # ---- driver -------------------------------------------------------------------
    def run(self) -> None:
        self.tar_data = self.load_tar()
        self.tar_logical = tar_logical(self.tar_data)
        log("source tree: %.1f MiB of files, %d copies" % (self.tar_logical / MiB, self.a.copies))
        phases = [("dup-write", self.phase_dup_write), ("copies", self.phase_copies)]
        for rnd in range(self.a.rounds):
            for phase, fn in phases:
                if phase in self.a.phases:
                    self.run_phase(rnd, phase, "dedup-", fn)

    def run_phase(self, rnd: int, phase: str, prefix: str,
                  fn: Callable[[int, Target, str], None]) -> None:
        """Run one phase on every target, in an order rotated every round, each
        in its own directory TARGET/PREFIX+PHASE that is removed afterwards."""
        log("== round %d: %s" % (rnd + 1, phase))
        k = rnd % len(self.targets)
        for t in self.targets[k:] + self.targets[:k]:
            work = os.path.join(t.path, prefix + phase)
            subprocess.run(["rm", "-rf", work])
            os.mkdir(work)
            try:
                fn(rnd, t, work)
            except subprocess.TimeoutExpired as e:
                self.record(rnd, t, phase, phase + "-error", None, "-", {"error": str(e)})
            finally:
                subprocess.run(["rm", "-rf", work])
                t.clean()
                os.sync()
                time.sleep(self.a.settle)

    def medians(self) -> dict:
        return medians(self.records)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    return "%.1f MiB" % (n / MiB)


def report(bench: Bench, meta: dict) -> str:
    med = bench.medians()
    names = [t.name for t in bench.targets]
    lines = ["# Dedup benchmark", "",
             "`benchmarks/run --suite dedup`, %s, %d rounds (medians), targets interleaved. "
             "Commit %s." % (meta["date"], bench.a.rounds, meta.get("git", "?")), ""]

    def row(metric: str, label: str, fmt) -> None:
        vals = med.get(metric, {})
        if vals:
            lines.append("| %s | %s |" % (label, " | ".join(fmt(vals.get(n)) for n in names)))

    def mibs(v):
        return "-" if v is None else "%.0f" % v

    def secs(v):
        return "-" if v is None else "%.2f" % v

    def ratio(v):
        return "-" if v is None else "%.3f" % v

    if "write-unique" in med:
        lines += ["## Writing data that is already stored", "",
                  "fio, one %s file of 60%%-compressible data in 128 KiB writes, then the same "
                  "bytes again into a second file. *Settled* also counts the time until all of "
                  "it is compressed (cctmpfs's settle, then sync)." % bench.a.size, "",
                  "| MiB/s | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        row("write-unique", "unique data", mibs)
        row("write-duplicate", "duplicate data", mibs)
        row("write-unique-settled", "unique, settled", mibs)
        row("write-duplicate-settled", "duplicate, settled", mibs)
        dup = {n: (med["write-duplicate-settled"].get(n) or 0) / (med["write-unique-settled"].get(n) or 1)
               for n in names} if "write-duplicate-settled" in med else {}
        if dup:
            lines.append("| duplicate / unique, settled | " + " | ".join("%.2f" % dup[n] for n in names) + " |")
        row("ram-two-copies", "RAM held for both files", fmt_bytes)
        lines.append("")
    if "ram-held" in med:
        logical = bench.tar_logical * bench.a.copies
        lines += ["## %d copies of a source tree" % bench.a.copies, "",
                  "`tar -x` of the stdlib tar (%.0f MiB of files) into %d directories: %.0f MiB "
                  "logical. RAM held: zram's mem_used_total, tmpfs's used pages, cctmpfs's "
                  "stored payloads + buffer + index and block records." %
                  (bench.tar_logical / MiB, bench.a.copies, logical / MiB), "",
                  "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        row("untar-first", "untar, first copy (s)", secs)
        row("untar-others-mean", "untar, each later copy (s)", secs)
        row("ram-held", "RAM held", fmt_bytes)
        row("ram-per-logical-byte", "RAM per logical byte", ratio)
        per = med.get("ram-per-logical-byte", {})
        for ref in ("zram", "tmpfs"):
            if ref in per and per[ref]:
                lines.append("| RAM per byte / %s's | %s |" % (
                    ref, " | ".join(ratio(per.get(n) / per[ref]) if per.get(n) else "-" for n in names)))
        row("rm-rf", "rm -rf (s)", secs)
        lines.append("")
        blk = med.get("ram-per-stored-block", {})
        if blk:
            lines += ["Index and block records per stored block (cctmpfs stats): " +
                      ", ".join("%s %.0f bytes" % (n, v) for n, v in blk.items()) + ".", ""]
        for n in names:
            st = next((r["extra"]["stats"] for r in reversed(bench.records)
                       if r["target"] == n and r["metric"] == "ram-held" and r.get("extra")), None)
            if st and "dedup_ratio" in st:
                lines += ["%s after the copies: dedup ratio %s, compression ratio %s, total %s; "
                          "%s blocks saved by dedup; index %s; RSS %s." % (
                              n, st["dedup_ratio"], st["compression_ratio"], st["total_ratio"],
                              st["dedup"]["saved_blocks"], fmt_bytes(st["dedup"]["index_bytes"]),
                              fmt_bytes(st.get("rss_bytes"))), ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_target_options(ap)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--md", default=None, help="Markdown report (default: OUTPUT with .md)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phases", default="dup-write,copies")
    ap.add_argument("--size", default="512m", help="file size of the dup-write phase")
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--src-tar", default="/tmp/bench-src.tar")
    ap.add_argument("--src-dir", default=sysconfig.get_paths()["stdlib"])
    ap.add_argument("--settle", type=float, default=2.0, help="pause after each step (s)")
    ap.add_argument("--step-timeout", type=int, default=900)
    ap.add_argument("--fio", default="fio")
    ap.add_argument("--check-args", action="store_true", help="only check the options, then exit")
    a = ap.parse_args()
    a.phases = a.phases.split(",")
    targets = parse_targets(ap, a)
    unknown = set(a.phases) - {"dup-write", "copies"}
    if unknown:
        ap.error("--phases: unknown %s (want dup-write,copies)" % ",".join(sorted(unknown)))
    if a.check_args:
        return 0
    bench = Bench(a, targets)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "argv": sys.argv,
            "git": subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe",
                                   "--always", "--dirty"], capture_output=True, text=True).stdout.strip()}
    bench.run()
    with open(a.output, "w") as f:
        json.dump({"meta": meta, "records": bench.records, "medians": bench.medians()}, f, indent=1)
    md = report(bench, meta)
    with open(a.md or os.path.splitext(a.output)[0] + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
