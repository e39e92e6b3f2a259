#!/usr/bin/env python3
"""capacity.py - the RAM the machine pays per byte of files: cctmpfs's daemon
RSS beside zram's mem_used_total, for several data sets, in one run.

    .venv/bin/python benchmarks/capacity.py [--name capacity] [--sets a,b]
        [--variant NAME=OPTS]... [--rounds 1] [--wait 5] [--wait-idle]

Root only (mounts zram0 and FUSE). For every data set, every target gets a
fresh mount (a new cctmpfs daemon, a freshly formatted zram0), so each figure
is what a new user sees on an empty /tmp:

  1. mount; read the RAM it holds (cctmpfs: the daemon's RSS; zram: the
     mem_used_total of /sys/block/zram0/mm_stat, read here directly: the
     shared targets.sh prints it with mawk's %d, which stops at 2**31-1);
  2. copy the data set in (cp -a, or fio for the fio data);
  3. settle: cctmpfs `stats --settle` (with --wait-idle, then until the idle
     sealer is done packing and recompressing), zram `sync`; wait --wait
     seconds (the sealer drops stale clean copies and may trim the heap);
  4. read the RAM again: RAM per logical byte = growth / bytes of files; for
     cctmpfs also what stats accounts (payloads, buffer, metadata) and its
     memory breakdown;
  5. rm -rf everything, settle, read it once more (what stays after a delete);
  6. unmount.

Targets: zram (zram0, lz4, ext4, as targets.sh makes it), cct (cctmpfs with
its defaults) and one cctmpfs mount per --variant. Data sets (--sets):

  stdlib-site  the running Python's standard library with its site-packages
  include      /usr/include
  copies       10 copies of /usr/lib/python3.11 (a source tree, deduplicated)
  binaries     /usr/bin (ELF binaries and scripts)
  fio          one 256 MiB fio file, 60% compressible (refill_buffers)

Writes results/NAME.json (every figure) and results/NAME.md (the report).
stdlib only, needs cp, fio, mkfs.ext4 and the shared targets.sh; holds
/tmp/bench-run.lock, as benchmarks/run does, and uses /tmp/bench-zram and
/tmp/bench-cap-NAME.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import MiB, log, run_fio_json  # noqa: E402

REPO = os.path.dirname(HERE)
MM_STAT = "/sys/block/zram0/mm_stat"

DATA_SETS = {
    # name: (label, sources, copies)
    "stdlib-site": ("Python stdlib with site-packages", [sysconfig.get_paths()["stdlib"]], 1),
    "include": ("/usr/include", ["/usr/include"], 1),
    "copies": ("10 copies of /usr/lib/python3.11", ["/usr/lib/python3.11"], 10),
    "binaries": ("binaries (/usr/bin)", ["/usr/bin"], 1),
    "fio": ("fio data, 60% compressible, 256 MiB", [], 1),
}
FIO_SIZE = 256 * MiB
#: --wait-idle: the idle sealer's counters must stay put this long (its
#: quiet times are 2 s for packing, 5 s for recompression), at most IDLE_MAX_S.
IDLE_STABLE_S = 8.0
IDLE_MAX_S = 600.0


def file_bytes(paths: list[str]) -> tuple[int, int]:
    """(bytes, count) of the regular files under paths, as cp -a copies them."""
    total = count = 0
    for top in paths:
        for root, _dirs, files in os.walk(top):
            for name in files:
                st = os.lstat(os.path.join(root, name))
                if (st.st_mode & 0o170000) == 0o100000:
                    total += st.st_size
                    count += 1
    return total, count


def zram_mm_stat() -> dict[str, int]:
    """The fields of mm_stat this benchmark uses (Documentation/admin-guide/blockdev/zram.rst)."""
    with open(MM_STAT) as f:
        v = [int(x) for x in f.read().split()]
    return {"ram": v[2], "orig_data_size": v[0], "compr_data_size": v[1]}


class Target:
    def __init__(self, name: str, opts: str, a: argparse.Namespace) -> None:
        self.name, self.opts, self.a = name, opts, a
        self.proc: subprocess.Popen | None = None
        self.mp = "/tmp/bench-zram" if name == "zram" else "/tmp/bench-cap-" + name

    @property
    def is_zram(self) -> bool:
        return self.name == "zram"

    def up(self) -> None:
        if self.is_zram:
            subprocess.run([self.a.targets_sh, "up", "zram"], check=True)
            return
        os.makedirs(self.mp, exist_ok=True)
        args = [self.a.cctmpfs, "cctmpfs", self.mp, "-f"] + (["-o", self.opts] if self.opts else [])
        logf = open(os.path.join(self.a.results, "%s-%s.log" % (self.a.name, self.name)), "a")
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not (os.path.ismount(self.mp) and self.stats(False)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("cctmpfs %s did not mount (see its log)" % self.name)
            time.sleep(0.1)

    def down(self) -> None:
        if self.is_zram:
            subprocess.run([self.a.targets_sh, "down", "zram"])
            return
        if os.path.ismount(self.mp):
            subprocess.run(["fusermount", "-u", self.mp])
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("%s: daemon pid %d still alive after the unmount; TERM" % (self.name, self.proc.pid))
                self.proc.terminate()
                self.proc.wait(timeout=10)
            self.proc = None

    def stats(self, settle: bool) -> dict:
        p = subprocess.run([self.a.cctmpfs, "stats", "--json"] + (["--settle"] if settle else [])
                           + [self.mp], capture_output=True, text=True, timeout=600)
        return json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else {}

    def settle(self) -> dict:
        """Settle, wait, and return what the target holds: {ram, ...}."""
        if self.is_zram:
            os.sync()
            time.sleep(self.a.wait)
            os.sync()
            return zram_mm_stat()
        self.stats(True)
        if self.a.wait_idle:
            self.wait_idle()
        time.sleep(self.a.wait)
        st = self.stats(False)
        return {"ram": st["rss_bytes"], "stats": st, "accounted": st["memory"]["accounted_bytes"]}


    def wait_idle(self) -> None:
        """Wait until the idle sealer is done: packing (pack=), idle
        recompression (recompress=), the idle compaction and the freezing of
        cold inodes made no progress for IDLE_STABLE_S
        (longer than either's quiet time), at most IDLE_MAX_S."""
        end = time.monotonic() + IDLE_MAX_S
        last, since = None, time.monotonic()
        while time.monotonic() < end:
            st = self.stats(False)
            pk, rc = st.get("packing") or {}, st.get("recompress") or {}
            moved = (st.get("arena") or {}).get("bytes_moved")   # the idle compaction
            # Inodes frozen into columns now (not the count of freezes: each
            # stats call thaws the root, and the next idle pass freezes it).
            frozen = (st.get("inode_table") or {}).get("frozen")
            now = (pk.get("packs_made"), pk.get("repacks"), rc.get("recompressed"), rc.get("no_gain"),
                   moved, frozen)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= IDLE_STABLE_S:
                return
            time.sleep(1.0)
        log("%s: the idle sealer was still busy after %d s" % (self.name, IDLE_MAX_S))


def fill(t: Target, data_set: str) -> None:
    _label, sources, copies = DATA_SETS[data_set]
    work = os.path.join(t.mp, "data")
    os.mkdir(work)
    if data_set == "fio":
        data, err = run_fio_json([
            "fio", "--name=capacity", "--directory=" + work, "--filename=fio.dat", "--rw=write",
            "--bs=1m", "--size=%d" % FIO_SIZE, "--ioengine=psync", "--end_fsync=1",
            "--refill_buffers=1", "--buffer_compress_percentage=60", "--randseed=4242"])
        if data is None:
            raise RuntimeError("fio failed: " + err)
        return
    for i in range(copies):
        dst = os.path.join(work, "c%d" % i)
        os.mkdir(dst)
        subprocess.run(["cp", "-a"] + sources + [dst], check=True)


def measure(t: Target, data_set: str, logical: int) -> dict:
    t.up()
    try:
        before = t.settle()
        t0 = time.monotonic()
        fill(t, data_set)
        copy_s = time.monotonic() - t0
        held = t.settle()
        subprocess.run(["rm", "-rf", os.path.join(t.mp, "data")], check=True)
        after = t.settle()
    finally:
        t.down()
    rec = {"target": t.name, "data_set": data_set, "logical_bytes": logical,
           "copy_s": round(copy_s, 2), "ram_before": before["ram"], "ram_held": held["ram"],
           "ram_after_delete": after["ram"],
           "ram_per_logical_byte": (held["ram"] - before["ram"]) / logical}
    if t.is_zram:
        rec["compression_ratio"] = round(held["orig_data_size"] / held["compr_data_size"], 3) \
            if held["compr_data_size"] else None
    else:
        st, mem = held["stats"], held["stats"]["memory"]
        rec.update({
            "accounted_bytes": held["accounted"],
            "accounted_per_logical_byte": (held["accounted"] - before["accounted"]) / logical,
            # RSS growth over what stats accounts: the issue wants at most 1.15.
            "rss_over_accounted": (held["ram"] - mem["runtime_bytes"]) / held["accounted"]
            if held["accounted"] else None,
            "memory": mem, "stored_bytes": st["stored_bytes"], "inodes": st["inodes"],
            "compression_ratio": st["compression_ratio"], "dedup_ratio": st["dedup_ratio"],
            "memory_after_delete": after["stats"]["memory"],
        })
    return rec


def report(results: dict) -> str:
    recs, meta = results["records"], results["meta"]
    targets = meta["targets"]
    by = {(r["data_set"], r["target"]): r for r in recs}

    def med(ds: str, t: str, key: str) -> float | None:
        vals = [r[key] for r in recs if r["data_set"] == ds and r["target"] == t
                and r.get(key) is not None]
        vals.sort()
        return vals[len(vals) // 2] if vals else None

    cct = [t for t in targets if t != "zram"]
    lines = ["# Capacity: the daemon's RSS against zram, per byte of files", "",
             "`benchmarks/capacity.py`, %s, commit %s, %d round(s) (medians). Every data set on a "
             "fresh mount of every target; settled, then %.0f s of wait; RAM is the growth from "
             "just after the mount. cctmpfs: the daemon's RSS (`rss_bytes`); zram: "
             "`mem_used_total` of mm_stat (zram0, lz4, ext4). `accounted` is what "
             "`cctmpfs stats` accounts: payloads, hot buffer, the metadata estimate and the "
             "codec contexts (`memory.accounted_bytes`)."
             % (meta["date"], meta["git"], meta["rounds"], meta["wait"]), ""]
    for t in cct:
        lines.append("- `%s`: `-o %s`" % (t, meta["options"].get(t) or "<defaults>"))
    lines += ["", "## RAM per byte of files", "",
              "| data set | MiB of files | files | zram | " +
              " | ".join("%s RSS | %s ÷ zram | %s accounted" % (t, t, t) for t in cct) + " |",
              "|---|---:|---:|---:|" + "---:|---:|---:|" * len(cct)]
    for ds in meta["data_sets"]:
        z = med(ds, "zram", "ram_per_logical_byte")
        row = ["%s" % DATA_SETS[ds][0], "%.0f" % (meta["logical"][ds] / MiB),
               "%d" % meta["files"][ds], "%.3f" % z if z is not None else "-"]
        for t in cct:
            r = med(ds, t, "ram_per_logical_byte")
            acc = med(ds, t, "accounted_per_logical_byte")
            row += ["%.3f" % r if r is not None else "-",
                    ("**%.2f**" % (r / z)) if r is not None and z else "-",
                    "%.3f" % acc if acc is not None else "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Where cctmpfs's RSS went (the `memory` breakdown of `cctmpfs stats`)", "",
              "MiB, settled. `metadata` is inodes, names, block maps, block records and the index "
              "(and the arena's free room); `contexts` the zstd contexts the threads made; "
              "`slack` is RSS less the RSS once mounted less everything accounted. "
              "`RSS ÷ accounted` is the RSS growth over what stats accounts (the issue's target: "
              "at most 1.15). `after rm -rf` is the RSS left above the freshly mounted daemon's "
              "once everything was deleted (target: 32 MiB).", "",
              "| data set | target | RSS growth | payloads | metadata | metadata per file (bytes) "
              "| contexts | slack | RSS ÷ accounted | compression | dedup | after rm -rf |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ds in meta["data_sets"]:
        for t in cct:
            r = by.get((ds, t))
            if r is None:
                continue
            m = r["memory"]
            contexts = m.get("codec_context_bytes", 0)   # 0 before stop 25
            meta_b = m["accounted_bytes"] - m["payload_bytes"] - m["hot_buffer_bytes"] - contexts
            files = max(1, m["files"])
            lines.append("| %s | %s | %.1f | %.1f | %.1f | %.0f | %.1f | %.1f | %.2f | %s | %s | %.1f |" % (
                ds, t, (r["ram_held"] - r["ram_before"]) / MiB, m["payload_bytes"] / MiB,
                meta_b / MiB, meta_b / files, contexts / MiB, m["heap_slack_bytes"] / MiB,
                r["rss_over_accounted"] or 0, r["compression_ratio"], r["dedup_ratio"],
                (r["ram_after_delete"] - r["ram_before"]) / MiB))
    lines += ["", "zram after rm -rf (ext4 mounted with discard): " + ", ".join(
        "%s %.1f MiB" % (ds, (by[(ds, "zram")]["ram_after_delete"] - by[(ds, "zram")]["ram_before"])
                         / MiB) for ds in meta["data_sets"] if (ds, "zram") in by) + ".", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="capacity")
    ap.add_argument("--sets", default=",".join(DATA_SETS))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OPTS")
    ap.add_argument("--no-zram", action="store_true")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--wait", type=float, default=5.0, help="seconds to wait after settling")
    ap.add_argument("--wait-idle", action="store_true",
                    help="after settling, also wait until the idle sealer stops packing and "
                         "recompressing (cctmpfs targets)")
    ap.add_argument("--cctmpfs", default=os.environ.get("CCTMPFS") or os.path.join(REPO, ".venv", "bin", "cctmpfs"))
    ap.add_argument("--bench-dir", default=os.environ.get("CCTMPFS_BENCH_DIR") or next(
        (d for d in (os.path.join(REPO, "..", "shared", "bench"),          # a checkout
                     os.path.join(REPO, "..", "..", "shared", "bench"))   # a worktree in wt/
         if os.path.exists(os.path.join(d, "targets.sh"))), "../shared/bench"),
        help="the shared bench folder, for targets.sh (default: ../shared/bench or ../../shared/bench)")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--report-only", action="store_true", help="rewrite NAME.md from NAME.json")
    a = ap.parse_args()
    out_json = os.path.join(a.results, a.name + ".json")
    out_md = os.path.join(a.results, a.name + ".md")
    if a.report_only:
        with open(out_json) as f:
            results = json.load(f)
        with open(out_md, "w") as f:
            f.write(report(results) + "\n")
        return 0
    sets = a.sets.split(",")
    unknown = set(sets) - set(DATA_SETS)
    if unknown:
        ap.error("--sets: unknown %s (want %s)" % (",".join(sorted(unknown)), ",".join(DATA_SETS)))
    a.targets_sh = os.path.join(a.bench_dir, "targets.sh")
    os.makedirs(a.results, exist_ok=True)   # the daemons' logs go there first
    if os.geteuid() != 0:
        ap.error("must run as root")
    for tool in ("fio", "mkfs.ext4", "fusermount"):
        if shutil.which(tool) is None:
            ap.error("%s not found" % tool)
    options = {"cct": ""}
    for v in a.variant:
        name, _, opts = v.partition("=")
        if not name or not opts or name in options or name == "zram":
            ap.error("--variant %s: want a new NAME=OPTS" % v)
        options[name] = opts
    names = ([] if a.no_zram else ["zram"]) + list(options)
    lock = open("/tmp/bench-run.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        ap.error("another benchmark holds /tmp/bench-run.lock")
    if not a.no_zram:
        if not os.path.exists(MM_STAT):
            subprocess.run(["modprobe", "zram"], check=False)
        with open("/sys/block/zram0/disksize") as f:
            if f.read().strip() != "0":
                ap.error("zram0 is in use (disksize != 0)")
    for n in names:
        mp = "/tmp/bench-zram" if n == "zram" else "/tmp/bench-cap-" + n
        if os.path.ismount(mp):
            ap.error("%s is already mounted" % mp)
    logical, files = {}, {}
    for ds in sets:
        if ds == "fio":
            logical[ds], files[ds] = FIO_SIZE, 1
        else:
            b, n = file_bytes(DATA_SETS[ds][1])
            logical[ds], files[ds] = b * DATA_SETS[ds][2], n * DATA_SETS[ds][2]
        # Read the sources once, so that every target copies from the page cache.
        for src in DATA_SETS[ds][1]:
            subprocess.run(["tar", "-cf", "/dev/null", src], stderr=subprocess.DEVNULL)
        log("%s: %.1f MiB in %d files" % (ds, logical[ds] / MiB, files[ds]))
    git = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    results = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "git": git, "argv": sys.argv,
                        "rounds": a.rounds, "wait": a.wait, "wait_idle": a.wait_idle, "targets": names, "options": options,
                        "data_sets": sets, "logical": logical, "files": files},
               "records": []}
    for rnd in range(a.rounds):
        for ds in sets:
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for n in order:
                t = Target(n, options.get(n, ""), a)
                try:
                    rec = measure(t, ds, logical[ds])
                except Exception as e:  # noqa: BLE001 - one failed step must not lose the run
                    log("%s on %s failed: %r" % (ds, n, e))
                    continue
                rec["round"] = rnd
                results["records"].append(rec)
                log("round %d %-12s %-8s %6.1f s  RAM per byte %.3f%s" % (
                    rnd + 1, ds, n, rec["copy_s"], rec["ram_per_logical_byte"],
                    "  (accounted %.3f, RSS/accounted %.2f)" % (
                        rec["accounted_per_logical_byte"], rec["rss_over_accounted"])
                    if "accounted_per_logical_byte" in rec else ""))
                with open(out_json, "w") as f:
                    json.dump(results, f, indent=1)
    md = report(results)
    with open(out_md, "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
