#!/usr/bin/env python3
"""listing.py - cold directory listings on tmpfs, cctmpfs over llfuse and
cctmpfs over the native transport, interleaved in one run (issue 18: "a bare
`ls -f` of 5,000 entries no slower than on llfuse", what READDIRPLUS_AUTO is
for).

    benchmarks/listing.py [--entries 5000] [--rounds 15] [--variant NAME=OPTS]...
                          [--base NAME=PATH]... [--tree SRC] [--cctmpfs PATH]
                          [--name listing]

Root only. Each target gets one directory of --entries empty files named as a
source tree names them. Each round, for every target in turn: drop the
kernel's caches (so dentries and inodes are gone, as for a tree nobody
touched lately), then time

  ls -f    os.listdir: getdents alone (READDIRPLUS for the first batch, then
           plain READDIR, when the kernel decides: READDIRPLUS_AUTO);
  ls -l    os.listdir and an lstat of every entry (what READDIRPLUS saves:
           a LOOKUP per entry);
  du -s    with --tree SRC: `du -s` of a copy of SRC (cp -a) made on every
           target, a tree of many small directories (READDIRPLUS's best case,
           against ls -f's worst).

--base NAME=PATH adds a cctmpfs target run by the cctmpfs command PATH of
another checkout (an A/B of two commits), mounted with transport=native.

Reports the median of each, in ms, and each cctmpfs target's time as a ratio
to llfuse's (lower is better). Writes results/NAME.json and results/NAME.md.
Timing is reported, never asserted. stdlib only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import drop_caches, write_report  # noqa: E402


def timed_ls_f(path: str) -> float:
    t0 = time.perf_counter()
    os.listdir(path)
    return time.perf_counter() - t0


def timed_ls_l(path: str) -> float:
    t0 = time.perf_counter()
    for name in os.listdir(path):
        os.lstat(os.path.join(path, name))
    return time.perf_counter() - t0


def timed_du(path: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["du", "-s", path], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def mount(kind: str, opts: str, cctmpfs: str, mp: str) -> None:
    if kind == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", mp], check=True)
    else:
        subprocess.run([cctmpfs, "cctmpfs", mp] + (["-o", opts] if opts else []), check=True)


def unmount(mp: str) -> None:
    for _ in range(20):
        if subprocess.run(["umount", mp], capture_output=True).returncode == 0:
            break
        time.sleep(0.5)
    os.rmdir(mp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OPTS",
                    help="one more cctmpfs target mounted with -o OPTS")
    ap.add_argument("--base", action="append", default=[], metavar="NAME=PATH",
                    help="one more target: another checkout's cctmpfs command, transport=native")
    ap.add_argument("--tree", metavar="SRC", help="also time a cold du -s of a copy of SRC")
    ap.add_argument("--cctmpfs", default=os.path.join(HERE, "..", ".venv", "bin", "cctmpfs"))
    ap.add_argument("--name", default="listing")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    # (name, kind, -o options, cctmpfs command)
    targets = [("tmpfs", "tmpfs", "", ""), ("llfuse", "cct", "transport=llfuse", a.cctmpfs),
               ("native", "cct", "transport=native", a.cctmpfs)]
    for v in a.variant:
        name, _, opts = v.partition("=")
        targets.append((name, "cct", opts, a.cctmpfs))
    for v in a.base:
        name, _, path = v.partition("=")
        targets.append((name, "cct", "transport=native", path))
    timings = [("ls -f", "d", timed_ls_f), ("ls -l", "d", timed_ls_l)]
    if a.tree:
        timings.append(("du -s", "tree", timed_du))
    mps: dict[str, str] = {}
    times: dict[str, dict[str, list[float]]] = {t[0]: {w[0]: [] for w in timings} for t in targets}
    try:
        for name, kind, opts, cmd in targets:
            mp = tempfile.mkdtemp(prefix=f"listing-{name}.", dir="/var/tmp")
            mount(kind, opts, cmd, mp)
            mps[name] = mp
            d = os.path.join(mp, "d")
            os.mkdir(d)
            for i in range(a.entries):
                os.close(os.open(os.path.join(d, f"module_{i:05d}.py"), os.O_CREAT | os.O_WRONLY, 0o644))
            if a.tree:
                subprocess.run(["cp", "-a", a.tree, os.path.join(mp, "tree")], check=True)
        for rnd in range(a.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for name, *_ in order:
                for what, sub, fn in timings:
                    drop_caches()
                    times[name][what].append(fn(os.path.join(mps[name], sub)))
            print(f"round {rnd + 1}: " + ", ".join(
                f"{t[0]} " + "/".join(f"{times[t[0]][w[0]][-1] * 1e3:.2f}" for w in timings)
                + " ms" for t in targets), flush=True)
    finally:
        for mp in mps.values():
            unmount(mp)
    med = {n: {w: statistics.median(v) * 1e3 for w, v in t.items()} for n, t in times.items()}
    names = [t[0] for t in targets]
    lines = ["# Cold directory listings", "",
             f"`benchmarks/listing.py --entries {a.entries} --rounds {a.rounds}`, "
             f"{time.strftime('%Y-%m-%d %H:%M')}: one directory of {a.entries} empty files per "
             "target, the kernel's caches dropped before every listing, targets interleaved. "
             "Median milliseconds; `÷ llfuse` is the cctmpfs target's time over cctmpfs on "
             "llfuse's (lower is better).", "",
             "| listing | " + " | ".join(names) + " | "
             + " | ".join(f"{n} ÷ llfuse" for n in names if n not in ("tmpfs", "llfuse")) + " |",
             "|---|" + "---:|" * (2 * len(names) - 2)]
    for what, _sub, _fn in timings:
        cells = ["%.2f" % med[n][what] for n in names]
        cells += ["**%.2f**" % (med[n][what] / med["llfuse"][what])
                  for n in names if n not in ("tmpfs", "llfuse")]
        lines.append(f"| `{what}` | " + " | ".join(cells) + " |")
    for n, _k, o, c in targets:
        lines.append(f"\n- `{n}`: " + (f"`-o {o}`" if o else "the kernel's tmpfs")
                     + (f", `{c}`" if c not in ("", a.cctmpfs) else ""))
    if a.tree:
        lines.append(f"\n`du -s` is of a copy of `{a.tree}` on each target.")
    write_report(a.results, a.name,
                 {"argv": sys.argv, "entries": a.entries, "rounds": a.rounds,
                  "targets": [{"name": n, "kind": k, "opts": o, "cctmpfs": c}
                              for n, k, o, c in targets],
                  "seconds": times, "median_ms": med}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
