"""Pieces the benchmark suites share (dedup.py, perf.py): targets, fio, RAM held.

stdlib only. A target is one mount point with optional hooks, as fsbench.py
takes them (-t NAME=DIR, --stats-cmd NAME=CMD, --clean-cmd NAME=CMD,
--pid NAME=PIDFILE); benchmarks/run builds those options.
"""
from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import tarfile
import tempfile

MiB = 1 << 20


def log(msg: str) -> None:
    print(msg, flush=True)


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    return int(t[:-1]) * units[t[-1]] if t[-1] in units else int(t)


def drop_caches() -> None:
    """Write back and drop the page cache, so the next read reaches the filesystem."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Target:
    def __init__(self, name: str, path: str) -> None:
        self.name, self.path = name, path
        self.stats_cmd: str | None = None
        self.clean_cmd: str | None = None
        self.pidfile: str | None = None

    def stats(self) -> dict:
        if not self.stats_cmd:
            return {}
        try:
            out = subprocess.run(self.stats_cmd, shell=True, capture_output=True, text=True,
                                 timeout=600).stdout.strip()
            return json.loads(out.splitlines()[-1]) if out else {}
        except Exception as e:  # noqa: BLE001 - a stats hook must never stop the run
            return {"error": repr(e)}

    def clean(self) -> None:
        if self.clean_cmd:
            subprocess.run(self.clean_cmd, shell=True, capture_output=True, timeout=300)

    def daemon_rss(self) -> int | None:
        """VmRSS of the FUSE daemon, for targets that have one (--pid)."""
        try:
            with open(self.pidfile or "") as f:
                pid = int(f.read().split()[0])
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None


def parse_targets(ap, a) -> list[Target]:  # type: ignore[no-untyped-def]
    """Targets from the -t/--stats-cmd/--clean-cmd/--pid options of an argparse result."""
    targets = []
    for spec in a.target:
        name, _, path = spec.partition("=")
        targets.append(Target(name, path))
    by_name = {t.name: t for t in targets}
    for opt, attr in ((a.stats_cmd, "stats_cmd"), (a.clean_cmd, "clean_cmd"), (a.pid, "pidfile")):
        for spec in opt:
            name, _, value = spec.partition("=")
            if name not in by_name:
                ap.error("%s: no target named %s" % (spec, name))
            setattr(by_name[name], attr, value)
    return targets


def add_own_mount_options(ap, name: str) -> None:  # type: ignore[no-untyped-def]
    """--variant, --cctmpfs, --name and --results, for the scripts that mount
    their own targets (bigcopy.py, readback.py)."""
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OPTS",
                    help="one more cctmpfs target mounted with -o OPTS")
    ap.add_argument("--cctmpfs", default=os.path.join(here, "..", ".venv", "bin", "cctmpfs"))
    ap.add_argument("--name", default=name)
    ap.add_argument("--results", default=os.path.join(here, "results"))


def add_target_options(ap) -> None:  # type: ignore[no-untyped-def]
    ap.add_argument("-t", "--target", action="append", default=[], metavar="NAME=DIR", required=True)
    ap.add_argument("--stats-cmd", action="append", default=[], metavar="NAME=CMD")
    ap.add_argument("--clean-cmd", action="append", default=[], metavar="NAME=CMD")
    ap.add_argument("--pid", action="append", default=[], metavar="NAME=PIDFILE")


#: The zram device benchmarks/run (and targets.sh) bring up as the zram target.
ZRAM_SYSFS = "/sys/block/zram0"


def zram_stats(sysfs: str = ZRAM_SYSFS) -> dict:
    """The zram target's mm_stat, under the names of targets.sh's stats hook,
    read here as Python ints.

    targets.sh prints them with awk's printf %d, and mawk (Debian's awk)
    clamps %d at 2**31 - 1: every figure above 2 GiB came out as 2147483647
    (10 copies of the stdlib are 2.4 GiB of orig_data_size). benchmarks/run
    gives the zram target benchmarks/zram-stats, which prints this, instead.
    Fields (Documentation/admin-guide/blockdev/zram.rst): orig_data_size
    compr_data_size mem_used_total mem_limit mem_used_max same_pages
    pages_compacted huge_pages [huge_pages_since].
    """
    with open(sysfs + "/mm_stat") as f:
        orig, compr, used, _limit, _max_used, same, _compacted, huge = \
            (int(v) for v in f.read().split()[:8])
    return {"orig_bytes": orig, "compr_bytes": compr, "mem_used_bytes": used,
            "same_pages": same, "huge_pages": huge,
            "ratio": round(orig / compr, 3) if compr else 0.0,
            "ratio_mem": round(orig / used, 3) if used else 0.0}


def ram_held(t: Target, st: dict) -> tuple[int | None, str]:
    """(bytes of RAM a target holds for its data, where the figure comes from).

    zram's and tmpfs's figures are read here, not taken from the stats hook:
    targets.sh's hook prints them with awk's %d, which mawk clamps at 2**31 - 1
    (see zram_stats()).
    """
    if "mem_used_bytes" in st:                       # zram: mm_stat mem_used_total
        return zram_stats()["mem_used_bytes"], "zram mm_stat mem_used_total"
    if "ram_used_bytes" in st:                       # cctmpfs stats
        return st["ram_used_bytes"] + st.get("dedup", {}).get("index_bytes", 0), \
            "cctmpfs ram_used + index"
    if "df_used_bytes" in st:                        # tmpfs: its used pages are RAM
        v = os.statvfs(t.path)
        return (v.f_blocks - v.f_bfree) * v.f_frsize, "statvfs used"
    if "rss_bytes" in st:                            # pyfuse_mem.py
        return st["rss_bytes"], "daemon RSS"
    return None, "-"


def run_fio_json(cmd: list[str], env: dict | None = None, timeout: int = 900) -> tuple[dict | None, str]:
    """Run fio with JSON output to a temp file: (parsed output or None, error text)."""
    with tempfile.NamedTemporaryFile(prefix="bench-fio-", suffix=".json", delete=False) as tf:
        outp = tf.name
    try:
        p = subprocess.run(cmd + ["--output-format=json", "--output=" + outp], env=env,
                           capture_output=True, text=True, timeout=timeout)
        with open(outp) as f:
            txt = f.read()
    except subprocess.TimeoutExpired:
        return None, "timeout after %d s" % timeout
    finally:
        os.unlink(outp)
    if p.returncode != 0:
        return None, (p.stderr.strip() or txt.strip())[-500:]
    return json.loads(txt[txt.find("{"):]), ""


def medians(records: list[dict]) -> dict:
    """{metric: {target: median of the rounds}} over numeric records."""
    out: dict = {}
    for r in records:
        if r["value"] is None or not isinstance(r["value"], (int, float)):
            continue
        out.setdefault(r["metric"], {}).setdefault(r["target"], []).append(r["value"])
    return {m: {t: statistics.median(v) for t, v in tv.items()} for m, tv in out.items()}


def tar_logical(data: bytes) -> int:
    """Bytes of regular files in a tar archive held in memory."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return sum(m.size for m in tf.getmembers() if m.isreg())


def write_report(results: str, name: str, raw: dict, lines: list[str]) -> None:
    """results/NAME.json (raw) and results/NAME.md (lines, a Markdown report), and print
    the report."""
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, name + ".json"), "w") as f:
        json.dump(raw, f, indent=1)
    md = "\n".join(lines) + "\n"
    with open(os.path.join(results, name + ".md"), "w") as f:
        f.write(md)
    print(md)
