#!/usr/bin/env python3
"""bigcopy.py - copying a big file: `cp` (coreutils 9 calls copy_file_range,
which cctmpfs's native transport serves by sharing the source's stored
blocks) against a copy through read(2) and write(2) (`dd bs=1M`), on tmpfs,
cctmpfs with its defaults and cctmpfs over llfuse, interleaved in one run
(issue 18: "`cp` of a 1 GiB file > 20x faster than `cat a > b`, and RSS
grows < 1 MiB").

    benchmarks/bigcopy.py [--size 1g] [--rounds 3] [--variant NAME=OPTS]...
                       [--cctmpfs PATH] [--name copy]

Root only. Each target gets one source file written by fio (60% compressible,
new data in every buffer, as perf.py's sequential writes), settled. Each
round, for every target in turn:

  cp       `cp SRC DST` (copy_file_range; on llfuse, which cannot pass it
           on, the kernel falls back to reads and writes);
  dd       `dd if=SRC of=DST bs=1M`: the copy every filesystem gets, reads
           and writes through the daemon;

each followed by `sync` in the time (a FUSE mount and tmpfs sync in about a
millisecond), and for cctmpfs the daemon's RSS after `cctmpfs stats
--settle`, before the copy and after it: what the copy costs in RAM. The
copies are deleted before the next round.

Reports medians (seconds, and the cp speed-up over dd), RSS growth per copy,
writes results/NAME.json and results/NAME.md. Timing is reported, never
asserted. stdlib only; needs fio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import MiB, add_own_mount_options, drop_caches, parse_size, write_report  # noqa: E402
from listing import mount, unmount  # noqa: E402

FIO_JOBS = os.path.join(os.path.dirname(HERE), "examples", "fio")


def settled_rss(cctmpfs: str, mp: str) -> int:
    """The daemon's RSS once the mount has sealed what it holds."""
    out = subprocess.run([cctmpfs, "stats", "--settle", "--json", mp], check=True,
                         capture_output=True, text=True).stdout
    return int(json.loads(out)["rss_bytes"])


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.sync()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1g")
    ap.add_argument("--rounds", type=int, default=3)
    add_own_mount_options(ap, "bigcopy")
    a = ap.parse_args()
    size = parse_size(a.size)
    # (name, kind, -o options)
    targets = [("tmpfs", "tmpfs", ""), ("cct", "cct", ""), ("cct-llfuse", "cct", "transport=llfuse")]
    targets += [(n, "cct", o) for n, _, o in (v.partition("=") for v in a.variant)]
    mps: dict[str, str] = {}
    secs: dict[str, dict[str, list[float]]] = {t[0]: {"cp": [], "dd": []} for t in targets}
    rss: dict[str, list[int]] = {t[0]: [] for t in targets}
    try:
        for name, kind, opts in targets:
            mp = tempfile.mkdtemp(prefix=f"copy-{name}.", dir="/var/tmp")
            if kind == "cct":
                mount(kind, opts, a.cctmpfs, mp)
            else:   # room for the source and its two copies
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={3 * size + 64 * MiB}",
                                "tmpfs", mp], check=True)
            mps[name] = mp
            env = dict(os.environ, FIO_DIR=mp, FIO_BS="1m", FIO_SIZE=str(size), FIO_NJ="1",
                       FIO_COMPRESS="60")
            subprocess.run(["fio", "--output=/dev/null", os.path.join(FIO_JOBS, "seq-write.fio")],
                           env=env, check=True)
        for rnd in range(a.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for name, kind, _opts in order:
                mp = mps[name]
                src = os.path.join(mp, "fio-seq.0")
                before = settled_rss(a.cctmpfs, mp) if kind == "cct" else 0
                drop_caches()
                secs[name]["cp"].append(timed(["cp", src, os.path.join(mp, "copy-cp")]))
                if kind == "cct":
                    rss[name].append(settled_rss(a.cctmpfs, mp) - before)
                drop_caches()
                secs[name]["dd"].append(timed(["dd", f"if={src}", f"of={os.path.join(mp, 'copy-dd')}",
                                               "bs=1M"]))
                for f in ("copy-cp", "copy-dd"):
                    os.unlink(os.path.join(mp, f))
            print(f"round {rnd + 1}: " + ", ".join(
                f"{n} cp {secs[n]['cp'][-1]:.3f} s, dd {secs[n]['dd'][-1]:.3f} s"
                + (f", RSS +{rss[n][-1] / MiB:.2f} MiB" if rss[n] else "")
                for n, *_ in targets), flush=True)
    finally:
        for mp in mps.values():
            unmount(mp)
    med = {n: {w: statistics.median(v) for w, v in t.items()} for n, t in secs.items()}
    lines = ["# Copying a big file", "",
             f"`benchmarks/bigcopy.py --size {a.size} --rounds {a.rounds}`, "
             f"{time.strftime('%Y-%m-%d %H:%M')}: one {a.size} fio file (60% compressible) per "
             "target; each round `cp` (copy_file_range) and `dd bs=1M` (read and write) copy it, "
             "caches dropped before each, `sync` included; targets interleaved. Medians; "
             "RSS growth is the daemon's, settled, over the `cp`, per round.", "",
             "| target | cp s | dd s | dd ÷ cp | RSS growth over cp, MiB |",
             "|---|---:|---:|---:|---|"]
    for n, _k, _o in targets:
        growth = ", ".join(f"{g / MiB:.2f}" for g in rss[n]) if rss[n] else "-"
        lines.append(f"| {n} | {med[n]['cp']:.3f} | {med[n]['dd']:.3f} | "
                     f"**{med[n]['dd'] / med[n]['cp']:.1f}x** | {growth} |")
    for n, _k, o in targets:
        lines.append(f"\n- `{n}`: " + ("the kernel's tmpfs" if n == "tmpfs" else
                                      f"`-o {o}`" if o else "cctmpfs with its defaults"))
    write_report(a.results, a.name,
                 {"argv": sys.argv, "size": size, "rounds": a.rounds,
                  "targets": [{"name": n, "kind": k, "opts": o} for n, k, o in targets],
                  "seconds": secs, "rss_growth_bytes": rss, "median_s": med}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
