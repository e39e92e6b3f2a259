#!/usr/bin/env python3
"""packing.py - what small-file packing (pack=, docs/packing.md) gains and
what it costs a cold read, pack=on against pack=off, side by side.

    .venv/bin/python benchmarks/packing.py [--name packing] [--rounds 5]
        [--src /usr/lib/python3.11 --src /usr/include] [--extra-opts OPTS]
        [--a NAME=OPTS --b NAME=OPTS]

--a and --b name the two mounts and their options (default pack-on=pack=on
and pack-off=pack=off; e.g. --a pack-1m=pack=1m --b pack-128k=pack=128k to
compare pack sizes).

Root only. Both mounts are up at once (a fresh daemon each): the sources are
copied into each with cp -a, settled, and left until the idle sealer is done
packing and recompressing (capacity.py's --wait-idle). Then:

  * held: stored bytes, RSS growth per byte of files, the stats' memory
    breakdown and packing section, per mount;
  * cold read, interleaved A/B/A/B: wait until the daemons dropped their
    clean copies and decoded packs (11 s), drop the page cache
    (echo 3 > /proc/sys/vm/drop_caches), then `cat` every file in directory
    order (find | xargs cat), timed, with the daemon's CPU time meanwhile
    (utime + stime: steadier than the wall clock on a loaded machine); then
    the same reading the files in a random order (each file alone: a pack
    decoded for one member). Ratios of the medians, pack=on over pack=off.

Writes results/NAME.json and prints a Markdown summary.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import capacity  # noqa: E402
from common import MiB, log  # noqa: E402


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


#: The daemon drops clean cached copies and decoded packs unused for 10 s
#: (filemap.CLEAN_COLD_SECONDS, packing.CACHE_COLD_SECONDS), in a sealer pass
#: every 0.5 s: past this, a read decodes again.
DAEMON_COLD_S = 11.0


def daemon_cold() -> None:
    """Cold for the kernel (page cache dropped) and for the daemon."""
    time.sleep(DAEMON_COLD_S)
    drop_caches()


def files_under(root: str) -> list[str]:
    out = []
    for d, _dirs, names in os.walk(root):
        for n in sorted(names):
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return out


def cat_all(root: str) -> float:
    t0 = time.monotonic()
    subprocess.run("find %s -type f -print0 | xargs -0 cat > /dev/null" % root, shell=True, check=True)
    return time.monotonic() - t0


def read_shuffled(paths: list[str], seed: int) -> float:
    order = list(paths)
    random.Random(seed).shuffle(order)
    t0 = time.monotonic()
    for p in order:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass
    return time.monotonic() - t0


def daemon_cpu(pid: int) -> float:
    """utime + stime of the daemon, in seconds (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(t, fn, *args):  # type: ignore[no-untyped-def]
    """(wall seconds of fn(*args), the daemon's CPU seconds meanwhile)."""
    c0 = daemon_cpu(t.proc.pid)
    wall = fn(*args)
    return wall, daemon_cpu(t.proc.pid) - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="packing")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--src", action="append", default=[])
    ap.add_argument("--extra-opts", default="", help="more -o options for both mounts")
    ap.add_argument("--a", default="pack-on=pack=on", metavar="NAME=OPTS", help="the first mount")
    ap.add_argument("--b", default="pack-off=pack=off", metavar="NAME=OPTS", help="the second mount")
    ap.add_argument("--cctmpfs", default=os.environ.get("CCTMPFS") or os.path.join(capacity.REPO, ".venv", "bin", "cctmpfs"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    srcs = a.src or ["/usr/lib/python3.11", "/usr/include"]
    if os.geteuid() != 0:
        ap.error("must run as root")
    lock = open("/tmp/bench-run.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        ap.error("another benchmark holds /tmp/bench-run.lock")
    a.wait, a.wait_idle, a.name_ = 0.0, True, a.name
    logical, nfiles = capacity.file_bytes(srcs)
    extra = ("," + a.extra_opts) if a.extra_opts else ""
    (na, _, oa), (nb, _, ob) = a.a.partition("="), a.b.partition("=")
    if not (na and oa and nb and ob) or na == nb:
        ap.error("--a/--b: want two different NAME=OPTS")
    targets = [capacity.Target(na, oa + extra, a), capacity.Target(nb, ob + extra, a)]
    res: dict = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "srcs": srcs, "logical": logical,
                          "files": nfiles, "rounds": a.rounds, "argv": sys.argv,
                          "load": os.getloadavg()}, "held": {}, "cat": {}, "shuffled": {},
           "cat_cpu": {}, "shuffled_cpu": {}}
    for src in srcs:
        subprocess.run(["tar", "-cf", "/dev/null", src], stderr=subprocess.DEVNULL)
    try:
        for t in targets:
            t.up()
            before = t.settle()
            data = os.path.join(t.mp, "data")
            os.mkdir(data)
            t0 = time.monotonic()
            subprocess.run(["cp", "-a"] + srcs + [data], check=True)
            copy_s = time.monotonic() - t0
            t0 = time.monotonic()
            held = t.settle()
            st = held["stats"]
            res["held"][t.name] = {
                "copy_s": round(copy_s, 2), "idle_s": round(time.monotonic() - t0, 1),
                "rss_growth": held["ram"] - before["ram"],
                "rss_per_byte": (held["ram"] - before["ram"]) / logical,
                "stored_bytes": st["stored_bytes"], "blocks": st["dedup"]["index_entries"],
                "accounted_bytes": st["memory"]["accounted_bytes"], "memory": st["memory"],
                "packing": st["packing"], "recompress": st["recompress"],
                "arena": st["arena"]}
            log("%s: %s" % (t.name, {k: v for k, v in res["held"][t.name].items()
                                     if k not in ("memory", "arena")}))
        paths = {t.name: files_under(os.path.join(t.mp, "data")) for t in targets}
        for r in range(a.rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            for t in order:
                daemon_cold()
                wall, cpu = timed(t, cat_all, os.path.join(t.mp, "data"))
                res["cat"].setdefault(t.name, []).append(wall)
                res["cat_cpu"].setdefault(t.name, []).append(cpu)
            for t in order:
                daemon_cold()
                wall, cpu = timed(t, read_shuffled, paths[t.name], r)
                res["shuffled"].setdefault(t.name, []).append(wall)
                res["shuffled_cpu"].setdefault(t.name, []).append(cpu)
            log("round %d: %s" % (r, {k: {n: round(v[-1], 3) for n, v in res[k].items()}
                                      for k in ("cat", "cat_cpu", "shuffled", "shuffled_cpu")}))
        for t in targets:
            res["held"][t.name]["stats_after_reads"] = t.stats(False)["packing"]
    finally:
        for t in targets:
            t.down()
    os.makedirs(a.results, exist_ok=True)
    with open(os.path.join(a.results, a.name + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    on, off = res["held"][na], res["held"][nb]
    kinds = ("cat", "cat_cpu", "shuffled", "shuffled_cpu")
    med = {k: {n: statistics.median(v) for n, v in res[k].items()} for k in kinds}
    print("| %s, %.1f MiB in %d files | %s | %s | %s/%s |" % (" + ".join(srcs), logical / MiB, nfiles,
                                                            oa, ob, na, nb))
    print("|---|---:|---:|---:|")
    for label, key in (("stored bytes (MiB)", "stored_bytes"), ("RSS growth (MiB)", "rss_growth"),
                       ("accounted (MiB)", "accounted_bytes")):
        print("| %s | %.1f | %.1f | %.3f |" % (label, on[key] / MiB, off[key] / MiB, on[key] / off[key]))
    print("| RSS per byte of files | %.3f | %.3f | |" % (on["rss_per_byte"], off["rss_per_byte"]))
    for k in kinds:
        print("| cold %s, median s | %.3f | %.3f | %.2f |" % (k, med[k][na], med[k][nb],
                                                          med[k][na] / med[k][nb]))
    print("packing:", json.dumps(on["packing"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
