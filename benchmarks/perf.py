#!/usr/bin/env python3
"""perf.py - the performance suite: examples/fio jobs and real files on every target, interleaved.

    perf.py -t tmpfs=/tmp/bench-tmpfs -t zram=/tmp/bench-zram -t pyfuse=/tmp/bench-pyfuse \\
        -t cct=/tmp/bench-cct [--stats-cmd NAME=CMD] [--pid NAME=PIDFILE] [--clean-cmd NAME=CMD] \\
        [--rounds 3] [--phases a,b] [--runtime 5] -o out.json [--md out.md] [--charts DIR]

benchmarks/run --suite perf mounts the targets and passes these options. Needs
fio, tar and root (drop_caches); matplotlib for the charts (the `bench` extra).

Each phase runs on every target (the order rotates every round) before the
next phase starts, so drifts of this noisy VM hit all targets alike. A phase
works in TARGET/perf-PHASE, which is removed after it. Phases (--phases):

  seq-1m         examples/fio seq-write (1 MiB, 60% compressible, end_fsync),
                 then the RAM each target holds for it, then drop caches and a
                 cold seq-read
  seq-128k       the same in 128 KiB requests      seq-4k   in 4 KiB requests
  seq-1m-incomp  the same with incompressible data
  rand-4k        rand-write 4 KiB (buffered, time based), drop caches,
                 rand-read 4 KiB (O_DIRECT, time based)
  rand-128k, rand-1m   the same at 128 KiB and 1 MiB
  randrw         mixed random 4 KiB, 70% reads 30% writes (O_DIRECT)
  dedupe         seq-write 128 KiB with 50% duplicate blocks; RAM held
  nj2            rand-4k and seq-1m again with 2 jobs (one file each)
  stream         one 4 GiB sequential write stream, longer than any buffer
                 (benchmarks/run gives zram an 8 GiB disk for it, --zram-size;
                 a disk filesystem with less room than the stream is skipped;
                 the tmpfs target is remounted larger for it and back after)
  untar          tar -x of a real source tree from memory, sync, RAM held,
                 drop caches, du -s, read everything back (tar -c | cat), rm -rf
  cp-bin         tar -x of /usr/bin (binaries) from memory; RAM held
  cp-zip         tar -x of already compressed files (.deb .whl .jar .zip .gz)
  copies         10 copies of the source tree (dedup.py's phase); round 1 only

RAM held is measured as a difference from just before the phase wrote:
zram's mm_stat mem_used_total, tmpfs's used pages, cctmpfs's stored bytes +
buffer + index (and its daemon RSS, reported too), pyfuse_mem.py's RSS. The
JSON has every raw value; the report (--md) has medians, ratios to tmpfs and
to pyfuse, the targets of issue 6, and charts (--charts).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import perf_report  # noqa: E402
from common import (MiB, Target, add_target_options, drop_caches, log,  # noqa: E402
                    parse_size, parse_targets, ram_held, run_fio_json, tar_logical)
from dedup import Bench as DedupBench  # noqa: E402

FIO_JOBS = os.path.join(os.path.dirname(HERE), "examples", "fio")
PHASES = ["seq-1m", "seq-128k", "seq-4k", "seq-1m-incomp", "rand-4k", "rand-128k", "rand-1m",
          "randrw", "dedupe", "nj2", "stream", "untar", "cp-bin", "cp-zip", "copies"]

class Perf(DedupBench):
    def __init__(self, a: argparse.Namespace, targets: list[Target]) -> None:
        a.size = a.seq_size              # DedupBench wants it; only its copies phase is used
        super().__init__(a, targets)
        self.ram_before: dict[str, tuple[int | None, int | None]] = {}

    # ---- fio ----------------------------------------------------------------------
    def fio(self, rnd: int, t: Target, phase: str, job: str, metric: str, work: str, *,
            bs: str, size: str, nj: int = 1, compress: int = 60, runtime: int = 0) -> dict | None:
        """Run examples/fio/JOB.fio; record MiB/s (and IOPS for 4k) of each direction."""
        env = dict(os.environ, FIO_DIR=work, FIO_BS=bs, FIO_SIZE=size, FIO_NJ=str(nj),
                   FIO_COMPRESS=str(compress), FIO_RUNTIME=str(runtime or self.a.runtime))
        data, err = run_fio_json([self.a.fio, os.path.join(FIO_JOBS, job + ".fio")], env=env,
                                 timeout=self.a.step_timeout)
        if data is None:
            self.record(rnd, t, phase, metric, None, "MiB/s", {"error": err})
            return None
        job0 = data["jobs"][0]                       # group_reporting: all jobs summed
        dirs = [d for d in ("read", "write") if job0[d]["io_bytes"] > 0]
        for d in dirs:
            name = metric if len(dirs) == 1 else "%s-%s" % (metric, d)
            if bs == "4k":
                self.record(rnd, t, phase, name, job0[d]["iops"], "IOPS")
            else:
                self.record(rnd, t, phase, name, job0[d]["bw_bytes"] / MiB, "MiB/s")
        if len(dirs) == 2 and bs == "4k":
            self.record(rnd, t, phase, metric, sum(job0[d]["iops"] for d in dirs), "IOPS")
        return job0

    # ---- RAM ----------------------------------------------------------------------
    def ram_mark(self, t: Target) -> None:
        ram, _ = ram_held(t, t.stats())
        self.ram_before[t.name] = (ram, t.daemon_rss())

    def ram_record(self, rnd: int, t: Target, phase: str, logical: int) -> dict:
        """RAM held for what the phase wrote, per logical byte (after the stats hook settles)."""
        st = t.stats()
        ram, src = ram_held(t, st)
        ram0, rss0 = self.ram_before.get(t.name, (None, None))
        extra = {"source": src, "logical_bytes": logical, "stats": st}
        # pyfuse_mem.py's only figure is its RSS, and a difference of RSS
        # says nothing once earlier phases left freed heap behind (measured:
        # 0.02 per byte for 256 MiB of files it stores 1:1). It keeps
        # every byte uncompressed in a bytearray, so it is left out.
        if ram is not None and ram0 is not None and src != "daemon RSS":
            held = max(ram - ram0, 0)
            self.record(rnd, t, phase, "ram-%s" % phase, held / logical, "x", extra)
        rss = t.daemon_rss()
        if rss is not None and rss0 is not None and "ram_used_bytes" in st:
            self.record(rnd, t, phase, "rss-%s" % phase, max(rss - rss0, 0) / logical, "x")
        if "ratio" in st:
            self.record(rnd, t, phase, "ratio-%s" % phase, st["ratio"], "x")
        return st

    # ---- phases -------------------------------------------------------------------
    def phase_seq(self, rnd: int, t: Target, work: str, phase: str, bs: str,
                  compress: int = 60, nj: int = 1) -> None:
        size = self.a.seq_size_4k if bs == "4k" else self.a.seq_size
        if nj > 1:
            size = "%dm" % (parse_size(size) // nj // MiB)
        sfx = "" if nj == 1 else "-nj%d" % nj
        tag = bs + ("-incomp" if compress == 0 else "")
        self.ram_mark(t)
        if self.fio(rnd, t, phase, "seq-write", "seq-write-%s%s" % (tag, sfx), work, bs=bs, size=size,
                    nj=nj, compress=compress) is None:
            return
        if phase == "seq-1m":
            self.ram_record(rnd, t, phase, parse_size(size) * nj)
        drop_caches()
        self.fio(rnd, t, phase, "seq-read", "seq-read-%s-cold%s" % (tag, sfx), work, bs=bs, size=size,
                 nj=nj, compress=compress)

    def phase_rand(self, rnd: int, t: Target, work: str, phase: str, bs: str, nj: int = 1) -> None:
        sfx = "" if nj == 1 else "-nj%d" % nj
        if self.fio(rnd, t, phase, "rand-write", "rand-write-%s%s" % (bs, sfx), work, bs=bs,
                    size=self.a.rand_size, nj=nj) is None:
            return
        drop_caches()
        self.fio(rnd, t, phase, "rand-read", "rand-read-%s%s" % (bs, sfx), work, bs=bs,
                 size=self.a.rand_size, nj=nj)

    def phase_randrw(self, rnd: int, t: Target, work: str, phase: str) -> None:
        self.fio(rnd, t, phase, "randrw-70-30", "randrw-70-30-4k", work, bs="4k",
                 size=self.a.rand_size)

    def phase_dedupe(self, rnd: int, t: Target, work: str, phase: str) -> None:
        self.ram_mark(t)
        if self.fio(rnd, t, phase, "dedupe", "dedupe-write-128k", work, bs="128k",
                    size=self.a.seq_size, compress=0) is not None:
            self.ram_record(rnd, t, phase, parse_size(self.a.seq_size))

    def phase_nj2(self, rnd: int, t: Target, work: str, phase: str) -> None:
        self.phase_rand(rnd, t, work, phase, "4k", nj=2)
        self.phase_seq(rnd, t, work, phase, "1m", nj=2)

    def phase_stream(self, rnd: int, t: Target, work: str, phase: str) -> None:
        size = parse_size(self.a.stream_size)
        kind = fs_type(t.path)
        remount = kind == "tmpfs"
        v = os.statvfs(t.path)
        free = v.f_bavail * v.f_frsize
        if kind in ("ext4", "ext2", "xfs", "btrfs") and free < size:
            # A disk's filesystem (zram's ext4): targets.sh's zram disk is
            # 4 GiB and ext4 leaves less of it, so the stream would hit ENOSPC.
            self.record(rnd, t, phase, "stream-write-1m", None, "MiB/s",
                        {"skipped": "%.1f GiB free for a %.1f GiB stream (zram: "
                                    "benchmarks/run --zram-size)" % (free / 2**30, size / 2**30)})
            return
        if remount:   # targets.sh mounts tmpfs with size=4G: make room for the stream
            subprocess.run(["mount", "-o", "remount,size=%dm" % (2 * size // MiB), t.path], check=True)
        try:
            self.fio(rnd, t, phase, "seq-write", "stream-write-1m", work, bs="1m",
                     size="%dm" % (size // MiB))
        finally:
            if remount:
                subprocess.run(["rm", "-rf", work])
                subprocess.run(["mount", "-o", "remount,size=4G", t.path], check=False)

    def untar(self, rnd: int, t: Target, work: str, phase: str, data: bytes) -> bool:
        t0 = time.perf_counter()
        p = subprocess.run(["tar", "-xf", "-", "-C", work], input=data, capture_output=True,
                           timeout=self.a.step_timeout)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            self.record(rnd, t, phase, "%s-s" % phase, None, "s",
                        {"stderr": p.stderr.decode(errors="replace")[-500:]})
            return False
        self.record(rnd, t, phase, "%s-s" % phase, dt, "s")
        return True

    def timed(self, rnd: int, t: Target, phase: str, metric: str, cmd: str) -> None:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, shell=True, capture_output=True, timeout=self.a.step_timeout)
        self.record(rnd, t, phase, metric, time.perf_counter() - t0 if p.returncode == 0 else None,
                    "s", None if p.returncode == 0 else {"stderr": p.stderr.decode()[-300:]})

    def phase_untar(self, rnd: int, t: Target, work: str, phase: str) -> None:
        self.ram_mark(t)
        if not self.untar(rnd, t, work, phase, self.tar_data):
            return
        os.sync()
        self.ram_record(rnd, t, phase, self.tar_logical)
        drop_caches()
        q = "'%s'" % work
        self.timed(rnd, t, phase, "du-s", "du -s %s >/dev/null" % q)
        self.timed(rnd, t, phase, "readall-s", "tar -cf - -C %s . | cat >/dev/null" % q)
        self.timed(rnd, t, phase, "rm-rf-s", "rm -rf %s" % q)

    def phase_copy(self, rnd: int, t: Target, work: str, phase: str) -> None:
        data, logical = self.extra_tars[phase]
        self.ram_mark(t)
        if self.untar(rnd, t, work, phase, data):
            os.sync()
            self.ram_record(rnd, t, phase, logical)

    def phase_copies(self, rnd: int, t: Target, work: str, phase: str = "copies") -> None:
        if rnd < self.a.copies_rounds:
            super().phase_copies(rnd, t, work)
            # dedup.py records ram-per-logical-byte from absolute figures; keep
            # the name every RAM figure of this report has.
            for r in self.records[::-1]:
                if r["target"] == t.name and r["metric"] == "ram-per-logical-byte":
                    self.record(rnd, t, phase, "ram-copies", r["value"], "x")
                    break

    # ---- driver -------------------------------------------------------------------
    def prepare(self) -> None:
        self.tar_data = self.load_tar()
        self.tar_logical = tar_logical(self.tar_data)
        log("source tree: %.1f MiB of files" % (self.tar_logical / MiB))
        self.extra_tars = {}
        for phase, path, builder in (("cp-bin", self.a.bin_tar, build_bin_tar),
                                     ("cp-zip", self.a.zip_tar, build_zip_tar)):
            if phase not in self.a.phases:
                continue
            if not os.path.exists(path):
                log("creating %s" % path)
                builder(path, parse_size(self.a.copy_size))
            with open(path, "rb") as f:
                data = f.read()
            self.extra_tars[phase] = (data, tar_logical(data))
            log("%s: %.1f MiB of files" % (phase, self.extra_tars[phase][1] / MiB))

    def run(self) -> None:
        self.prepare()
        dispatch = {
            "seq-1m": lambda r, t, w, p: self.phase_seq(r, t, w, p, "1m"),
            "seq-128k": lambda r, t, w, p: self.phase_seq(r, t, w, p, "128k"),
            "seq-4k": lambda r, t, w, p: self.phase_seq(r, t, w, p, "4k"),
            "seq-1m-incomp": lambda r, t, w, p: self.phase_seq(r, t, w, p, "1m", compress=0),
            "rand-4k": lambda r, t, w, p: self.phase_rand(r, t, w, p, "4k"),
            "rand-128k": lambda r, t, w, p: self.phase_rand(r, t, w, p, "128k"),
            "rand-1m": lambda r, t, w, p: self.phase_rand(r, t, w, p, "1m"),
            "randrw": self.phase_randrw, "dedupe": self.phase_dedupe, "nj2": self.phase_nj2,
            "stream": self.phase_stream, "untar": self.phase_untar,
            "cp-bin": self.phase_copy, "cp-zip": self.phase_copy, "copies": self.phase_copies,
        }
        for rnd in range(self.a.rounds):
            for phase in PHASES:
                if phase in self.a.phases and not (phase == "copies" and rnd >= self.a.copies_rounds):
                    self.run_phase(rnd, phase, "perf-",
                                   lambda r, t, w, _p=phase: dispatch[_p](r, t, w, _p))


def fs_type(path: str) -> str:
    p = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", path], capture_output=True, text=True)
    return p.stdout.strip()


def _tar_files(path: str, files: list[str]) -> None:
    with open(path + ".list", "w") as f:
        f.write("\n".join(files) + "\n")
    subprocess.run(["tar", "-cf", path, "--hard-dereference", "-T", path + ".list"], check=True,
                   stderr=subprocess.DEVNULL)
    os.unlink(path + ".list")


def build_bin_tar(path: str, limit: int) -> None:
    """Regular files of /usr/bin in name order, up to limit bytes: ELF binaries and scripts."""
    files, total = [], 0
    for name in sorted(os.listdir("/usr/bin")):
        p = os.path.join("/usr/bin", name)
        if os.path.isfile(p) and not os.path.islink(p):
            files.append(p)
            total += os.path.getsize(p)
            if total >= limit:
                break
    _tar_files(path, files)


def build_zip_tar(path: str, limit: int) -> None:
    """Already compressed files found under /usr, /var and /opt, smallest first, up to limit bytes."""
    exts = (".deb", ".whl", ".jar", ".zip", ".gz", ".xz", ".bz2", ".zst", ".png", ".jpg")
    found = []
    for root in ("/usr", "/var/cache", "/opt"):
        for dirpath, _, names in os.walk(root):
            for n in names:
                if n.endswith(exts):
                    p = os.path.join(dirpath, n)
                    if os.path.isfile(p) and not os.path.islink(p):
                        found.append((os.path.getsize(p), p))
    files, total = [], 0
    # Smallest first gives many files of every kind rather than a few big .debs.
    for size, p in sorted(found):
        if size < 4096:
            continue
        files.append(p)
        total += size
        if total >= limit:
            break
    _tar_files(path, files)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_target_options(ap)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--md", default=None, help="Markdown report (default: OUTPUT with .md)")
    ap.add_argument("--charts", default=None, help="directory for the PNG charts (default: beside --md)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--runtime", type=int, default=5, help="seconds per time-based random job")
    ap.add_argument("--seq-size", default="1g", help="file size of the sequential jobs")
    ap.add_argument("--seq-size-4k", default="256m", help="file size of the 4 KiB sequential jobs")
    ap.add_argument("--rand-size", default="256m", help="file size per job of the random jobs")
    ap.add_argument("--stream-size", default="4g")
    ap.add_argument("--copy-size", default="256m", help="size of the cp-bin and cp-zip file sets")
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--copies-rounds", type=int, default=1, help="rounds that run the copies phase")
    ap.add_argument("--src-tar", default="/tmp/bench-src.tar")
    ap.add_argument("--src-dir", default=sysconfig.get_paths()["stdlib"])
    ap.add_argument("--bin-tar", default="/tmp/bench-bin.tar")
    ap.add_argument("--zip-tar", default="/tmp/bench-zip.tar")
    ap.add_argument("--settle", type=float, default=2.0, help="pause after each phase (s)")
    ap.add_argument("--step-timeout", type=int, default=900)
    ap.add_argument("--fio", default="fio")
    ap.add_argument("--mount-opts", action="append", default=[], metavar="NAME=OPTS",
                    help="the mount options of a cctmpfs target, for the report")
    ap.add_argument("--check-args", action="store_true", help="only check the options, then exit")
    a = ap.parse_args()
    a.phases = a.phases.split(",")
    unknown = set(a.phases) - set(PHASES)
    if unknown:
        ap.error("--phases: unknown %s (want some of %s)" % (",".join(sorted(unknown)), ",".join(PHASES)))
    for opt in ("seq_size", "seq_size_4k", "rand_size", "stream_size", "copy_size"):
        try:
            parse_size(getattr(a, opt))
        except (ValueError, IndexError):
            ap.error("--%s %s: want a size such as 512m" % (opt.replace("_", "-"), getattr(a, opt)))
    targets = parse_targets(ap, a)
    if a.check_args:
        return 0
    bench = Perf(a, targets)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "argv": sys.argv, "kernel": os.uname().release,
            "git": subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"],
                                  capture_output=True, text=True).stdout.strip(),
            "targets": {t.name: t.path for t in targets}, "args": dict(vars(a)),
            "mount_opts": dict(spec.partition("=")[::2] for spec in a.mount_opts)}
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
    out = {"meta": meta, "records": bench.records, "medians": bench.medians(),
           "logical": {"untar": getattr(bench, "tar_logical", None)}}
    with open(a.output, "w") as f:
        json.dump(out, f, indent=1)
    md_path = a.md or os.path.splitext(a.output)[0] + ".md"
    md = perf_report.write(out, md_path, a.charts or os.path.dirname(os.path.abspath(md_path)))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
