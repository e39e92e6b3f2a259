#!/usr/bin/env python3
"""perf_report.py RESULTS.json [-o REPORT.md] [--charts DIR]: the report of a perf.py run.

perf.py calls write() at the end of a run; this script rebuilds the report
(and the charts) from the JSON, e.g. after an interrupted run. The tables
give medians of the rounds, ratios oriented so that above 1 is better, and
the targets of issue 6 with met or missed. Charts need matplotlib (the
`bench` extra); without it the report says so and has no pictures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

#: Reference targets; every other target is a cctmpfs mount (cct, cct-lz4, ...).
REFERENCES = ("tmpfs", "zram", "pyfuse", "pyfuse-xattr")

#: metric -> (label, unit, higher is better)
METRICS = {
    "seq-write-1m": ("seq write 1 MiB, compressible", "MiB/s", True),
    "seq-read-1m-cold": ("cold seq read 1 MiB", "MiB/s", True),
    "seq-write-128k": ("seq write 128 KiB", "MiB/s", True),
    "seq-read-128k-cold": ("cold seq read 128 KiB", "MiB/s", True),
    "seq-write-4k": ("seq write 4 KiB", "IOPS", True),
    "seq-read-4k-cold": ("cold seq read 4 KiB", "IOPS", True),
    "seq-write-1m-incomp": ("seq write 1 MiB, incompressible", "MiB/s", True),
    "seq-read-1m-incomp-cold": ("cold seq read 1 MiB, incompressible", "MiB/s", True),
    "rand-write-4k": ("random write 4 KiB", "IOPS", True),
    "rand-read-4k": ("random read 4 KiB, O_DIRECT", "IOPS", True),
    "rand-write-128k": ("random write 128 KiB", "MiB/s", True),
    "rand-read-128k": ("random read 128 KiB, O_DIRECT", "MiB/s", True),
    "rand-write-1m": ("random write 1 MiB", "MiB/s", True),
    "rand-read-1m": ("random read 1 MiB, O_DIRECT", "MiB/s", True),
    "randrw-70-30-4k": ("mixed random 4 KiB 70/30, total", "IOPS", True),
    "dedupe-write-128k": ("seq write 128 KiB, 50% duplicates", "MiB/s", True),
    "rand-write-4k-nj2": ("random write 4 KiB, 2 jobs", "IOPS", True),
    "rand-read-4k-nj2": ("random read 4 KiB, 2 jobs", "IOPS", True),
    "seq-write-1m-nj2": ("seq write 1 MiB, 2 jobs", "MiB/s", True),
    "seq-read-1m-cold-nj2": ("cold seq read 1 MiB, 2 jobs", "MiB/s", True),
    "stream-write-1m": ("4 GiB write stream", "MiB/s", True),
    "untar-s": ("untar of the source tree", "s", False),
    "du-s": ("du -s, cold", "s", False),
    "readall-s": ("read the tree back, cold", "s", False),
    "rm-rf-s": ("rm -rf of the tree", "s", False),
    "cp-bin-s": ("copy of binaries", "s", False),
    "cp-zip-s": ("copy of compressed files", "s", False),
}

#: The data sets whose RAM per logical byte perf.py measures (metric ram-PHASE), by phase.
RAM_SETS = {"seq-1m": "fio data, 60% compressible", "dedupe": "fio data, 50% duplicates",
            "untar": "source tree (Python stdlib)", "cp-bin": "binaries (/usr/bin)",
            "cp-zip": "compressed files", "copies": "10 copies of the source tree"}

#: The performance targets of issue 6: (metric, reference, goal, what).
#: A ratio is oriented (above 1 is better) except for RAM, where it is
#: RAM per logical byte over the reference's and must be at most the goal.
TARGETS = [
    ("seq-write-1m", "pyfuse", 0.9, "sequential 1 MiB writes, compressible"),
    ("seq-read-1m-cold", "pyfuse", 0.9, "cold sequential reads, 1 MiB"),
    ("seq-read-128k-cold", "pyfuse", 0.9, "cold sequential reads, 128 KiB"),
    ("seq-read-1m-incomp-cold", "pyfuse", 0.9, "cold sequential reads, incompressible"),
    ("rand-write-4k", "pyfuse", 0.8, "4 KiB random writes"),
    ("rand-read-4k", "pyfuse", 0.8, "4 KiB random reads"),
    ("untar-s", "pyfuse", 0.9, "untar of a source tree"),
    ("stream-write-1m", "pyfuse", 0.6, "sustained 4 GiB write stream"),
    ("ram-untar", "zram", 0.75, "RAM per logical byte, source tree (at most)"),
    ("ram-copies", "zram", 0.2, "RAM per logical byte, 10 copies (at most)"),
]
#: The foundation's targets (issue 2): the same measures with lower goals.
FOUNDATION_GOALS = {"seq-write-1m": 0.7, "seq-read-1m-cold": 0.7, "seq-read-128k-cold": 0.7,
                    "seq-read-1m-incomp-cold": 0.7, "rand-write-4k": 0.6, "rand-read-4k": 0.6,
                    "untar-s": 0.7}
TARGETS_FOUNDATION = [(m, ref, FOUNDATION_GOALS[m], what) for m, ref, _, what in TARGETS
                      if m in FOUNDATION_GOALS]
#: No collapse at scale: each 2-job workload against its 1-job form, same target.
NJ2 = [("rand-write-4k-nj2", "rand-write-4k"), ("rand-read-4k-nj2", "rand-read-4k"),
       ("seq-write-1m-nj2", "seq-write-1m"), ("seq-read-1m-cold-nj2", "seq-read-1m-cold")]

#: Why a target can be missed and what would close it; docs/profiling.md has the profiles.
WHY = {
    "rand-write-4k": "The kernel sends GETXATTR(security.capability) before every write(2) to a "
                     "FUSE filesystem that has xattrs (file_remove_privs; libfuse 2.9 cannot "
                     "negotiate HANDLE_KILLPRIV and llfuse cannot set direct_io), so each 4 KiB "
                     "write is two round trips where pyfuse_mem.py, which has no xattrs, needs one. "
                     "Compare with pyfuse-xattr. Closing it needs libfuse 3 (killpriv_v2) or a "
                     "mount without xattrs.",
    "untar-s": "tar writes in 10 KiB pieces: every write(2) also costs the GETXATTR round trip "
               "(see random writes), about 52k extra requests for this tree; compare with "
               "pyfuse-xattr, which pays it too. The rest is the worker's Python per request: "
               "3870 bytecodes per untarred file against 1882 for pyfuse_mem.py "
               "(benchmarks/bytecodes.py), mostly the write path's bookkeeping (page mask, hot "
               "buffer, size= and ram=), 341 bytecodes per 10 KiB append against 99. Closing "
               "it needs the GETXATTR gone and a cheaper append (docs/profiling.md, \"Bytecodes "
               "per request\").",
    "seq-read-1m-cold": "A cold read decodes every 128 KiB block in the worker (zstd ~1.7 GB/s on this "
                        "data), where pyfuse_mem.py only copies; with compress=lz4 (cct-lz4 column) "
                        "decoding costs about half.",
    "seq-read-128k-cold": "Each 128 KiB READ decodes one zstd block in the worker and runs 323 "
                          "bytecodes of Python around it, against pyfuse_mem.py's 52 for a slice; "
                          "a 128 KiB read(2) keeps fewer READs queued than a 1 MiB one, so less of "
                          "that overlaps with the kernel's copying. A read-ahead thread was "
                          "measured slower (docs/profiling.md).",
    "seq-read-1m-cold-nj2": "Two readers and the one FUSE worker share two vCPUs, and each cold "
                            "READ costs the worker a decode: the second reader takes CPU from "
                            "the worker. Compare pyfuse_mem.py's own 2-jobs ratio in this run; "
                            "docs/profiling.md has a separate interleaved measurement.",
}


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "x":
        return "%.3f" % v
    if unit == "s":
        return "%.2f" % v
    return "%.0f" % v if abs(v) >= 100 else "%.3g" % v


def oriented(metric: str, v: float | None, ref: float | None) -> float | None:
    if v is None or ref is None or v == 0 or ref == 0:
        return None
    higher = METRICS.get(metric, ("", "", True))[2]
    return v / ref if higher else ref / v


def targets_of(res: dict) -> list[str]:
    names: list[str] = []
    for r in res["records"]:
        if r["target"] not in names:
            names.append(r["target"])
    order = [n for n in REFERENCES if n in names]
    return order + [n for n in names if n not in REFERENCES]


def target_table(med: dict, cct: list[str], targets: list | None = None,
                 scale: bool = True) -> list[str]:
    lines = ["| target | goal | reference | " + " | ".join(cct) + " |",
             "|---|---:|---|" + "---:|" * len(cct)]
    missed: list[str] = []
    for metric, ref, goal, what in targets or TARGETS:
        vals = med.get(metric, {})
        cells = []
        for n in cct:
            if metric.startswith("ram-"):
                v, r = vals.get(n), vals.get(ref)
                x = v / r if v is not None and r else None
                ok = x is not None and x <= goal
                sign = "at most"
            else:
                x = oriented(metric, vals.get(n), vals.get(ref))
                ok = x is not None and x >= goal
                sign = "at least"
            cells.append("-" if x is None else "%.2f %s" % (x, "met" if ok else "**missed**"))
            if x is not None and not ok and n == cct[0]:
                missed.append(metric)
        lines.append("| %s | %s %.2f | %s | %s |" % (what, sign, goal, ref, " | ".join(cells)))
    for many, one in NJ2 if scale else []:
        cells = []
        for n in cct:
            x = oriented(many, med.get(many, {}).get(n), med.get(one, {}).get(n))
            ok = x is not None and x >= 1.0
            cells.append("-" if x is None else "%.2f %s" % (x, "met" if ok else "**missed**"))
            if x is not None and not ok and n == cct[0]:
                missed.append(many)
        lines.append("| %s vs 1 job | at least 1.00 | same target | %s |" % (
            METRICS[many][0], " | ".join(cells)))
    lines.append("")
    for m in missed:
        if m in WHY:
            lines += ["- **%s missed.** %s" % (METRICS.get(m, (m,))[0], WHY[m])]
    return lines + [""]


def throughput_table(med: dict, names: list[str], cct: list[str]) -> list[str]:
    head = "| workload | unit | " + " | ".join(names) + " | " + " | ".join(
        "%s ÷ tmpfs | %s ÷ pyfuse" % (n, n) for n in cct) + " |"
    lines = [head, "|---|---|" + "---:|" * (len(names) + 2 * len(cct))]
    for metric, (label, unit, _) in METRICS.items():
        vals = med.get(metric)
        if not vals:
            continue
        row = [fmt(vals.get(n), unit) for n in names]
        for n in cct:
            for ref in ("tmpfs", "pyfuse"):
                x = oriented(metric, vals.get(n), vals.get(ref))
                row.append("-" if x is None else "%.2f" % x)
        lines.append("| %s | %s | %s |" % (label, unit, " | ".join(row)))
    return lines + ["", "Ratios are oriented: above 1 is better.", ""]


def with_ram(med: dict, names: list[str]) -> list[str]:
    """The targets that have a RAM figure (pyfuse_mem.py has none: perf.py)."""
    return [n for n in names if any(n in v for m, v in med.items() if m.startswith("ram-"))]


def ram_table(med: dict, names: list[str]) -> list[str]:
    names = with_ram(med, names)
    lines = ["| data set | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for phase, label in RAM_SETS.items():
        vals = med.get("ram-%s" % phase)
        if not vals:
            continue
        zr = vals.get("zram")
        cells = []
        for n in names:
            v = vals.get(n)
            cell = fmt(v, "x")
            if v is not None and zr and n != "zram":
                cell += " (%.2fx zram)" % (v / zr)
            cells.append(cell)
        lines.append("| %s | %s |" % (label, " | ".join(cells)))
        rss = med.get("rss-%s" % phase)
        if rss:
            lines.append("| ... cctmpfs daemon RSS growth | %s |" % " | ".join(
                fmt(rss.get(n), "x") if n in rss else "" for n in names))
    return lines + [""]


def charts(med: dict, names: list[str], outdir: str, stem: str) -> list[str]:
    """Draw the PNG charts; return the Markdown that shows them."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(No charts: matplotlib is not installed; `pip install -e '.[bench]'`.)", ""]
    os.makedirs(outdir, exist_ok=True)
    out = []
    groups = [("MiB/s", "throughput, MiB/s (log scale)"), ("IOPS", "operations per second (log scale)"),
              ("s", "seconds, lower is better (log scale)")]
    metrics = {u: [m for m, (_, unit, _) in METRICS.items() if unit == u and med.get(m)] for u, _ in groups}
    # A run of some phases only (--phases) may have no metric in a unit: no
    # panel for it (an empty log-scale axis cannot be drawn).
    groups = [(u, t) for u, t in groups if metrics[u]]
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 9), squeeze=False,
                             gridspec_kw={"width_ratios": [len(metrics[u]) for u, _ in groups]})
    axes = axes[0]
    width = 0.8 / max(len(names), 1)
    for ax, (unit, title) in zip(axes, groups):
        ms = metrics[unit]
        for i, n in enumerate(names):
            ys = [med[m].get(n) or 0 for m in ms]
            ax.barh([j + i * width for j in range(len(ms))], ys, height=width, label=n)
        ax.set_yticks([j + width * (len(names) - 1) / 2 for j in range(len(ms))])
        ax.set_yticklabels([METRICS[m][0] for m in ms], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(outdir, stem + "-throughput.png")
    fig.savefig(p, dpi=80)
    plt.close(fig)
    out.append("![throughput per workload](%s)" % os.path.basename(p))

    sets = [(ph, label) for ph, label in RAM_SETS.items() if med.get("ram-%s" % ph)]
    names = with_ram(med, names)
    if sets:
        fig, ax = plt.subplots(figsize=(12, 5))
        width = 0.8 / max(len(names), 1)
        for i, n in enumerate(names):
            ys = [med["ram-%s" % ph].get(n) or 0 for ph, _ in sets]
            ax.bar([j + i * width for j in range(len(sets))], ys, width=width, label=n)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(sets))])
        ax.set_xticklabels([label for _, label in sets], fontsize=8)
        ax.set_ylabel("bytes of RAM per logical byte (lower is better)")
        ax.set_title("RAM used per system")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(outdir, stem + "-ram.png")
        fig.savefig(p, dpi=80)
        plt.close(fig)
        out.append("![RAM per logical byte](%s)" % os.path.basename(p))
    return out + [""]


def render(res: dict, chart_md: list[str]) -> str:
    med = res["medians"]
    meta = res["meta"]
    names = targets_of(res)
    cct = [n for n in names if n not in REFERENCES]
    args = meta.get("args", {})
    lines = ["# Performance: cctmpfs against tmpfs, zram+ext4 and the Python FUSE ceiling", "",
             "`benchmarks/run --suite perf` (`benchmarks/perf.py`), %s, commit %s, kernel %s. "
             "Medians of %s rounds; each phase ran on every target before the next, in an order "
             "rotated every round; unpinned. Random jobs ran %s s each; sequential files %s "
             "(4 KiB: %s); random files %s per job." % (
                 meta.get("date"), meta.get("git"), meta.get("kernel"), args.get("rounds"),
                 args.get("runtime"), args.get("seq_size"), args.get("seq_size_4k"),
                 args.get("rand_size")), "",
             "Targets: " + ", ".join("`%s`" % n for n in names) + ". `pyfuse` is "
             "`pyfuse_mem.py`, a plain uncompressed Python llfuse memory filesystem (the speed "
             "limit for Python on FUSE here); `pyfuse-xattr` is the same with a getxattr handler; "
             "`zram` is zram0 (lz4) with ext4.", ""]
    for n, opts in sorted(meta.get("mount_opts", {}).items()):
        lines.append("- `%s`: `-o %s`" % (n, opts))
    lines += ["", "## Targets (issue 6)", ""] + target_table(med, cct)
    lines += ["## The foundation's targets (issue 2)", ""] + target_table(
        med, cct, TARGETS_FOUNDATION, scale=False)
    lines += ["## RAM per logical byte", "",
              "RAM held for what a phase wrote, over the bytes written: zram's mm_stat "
              "mem_used_total, tmpfs's used pages, cctmpfs's stored bytes + hot buffer + index "
              "(its daemon's RSS growth is given too). Differences from just before the phase, except "
              "10 copies (absolute, as in dedup.md). pyfuse_mem.py keeps every byte as is and has "
              "no figure: its RSS does not shrink when files are deleted.", ""]
    lines += ram_table(med, names)
    ratios = {n: med.get("ratio-untar", {}).get(n) for n in cct}
    if any(ratios.values()):
        lines += ["Compression ratio after the untar (cctmpfs stats, settled): " + ", ".join(
            "%s %.2f" % (n, v) for n, v in ratios.items() if v) + ".", ""]
    lines += ["## Every workload", ""] + throughput_table(med, names, cct)
    lines += ["## Charts", ""] + chart_md
    return "\n".join(lines)


def write(res: dict, md_path: str, chart_dir: str) -> str:
    stem = os.path.splitext(os.path.basename(md_path))[0]
    chart_md = charts(res["medians"], targets_of(res), chart_dir, stem)
    md = render(res, chart_md)
    with open(md_path, "w") as f:
        f.write(md + "\n")
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results")
    ap.add_argument("-o", "--output", default=None)
    ap.add_argument("--charts", default=None)
    ap.add_argument("--mount-opts", action="append", default=[], metavar="NAME=OPTS")
    a = ap.parse_args()
    res = load(a.results)
    for spec in a.mount_opts:
        n, _, o = spec.partition("=")
        res["meta"].setdefault("mount_opts", {})[n] = o
    md_path = a.output or os.path.splitext(a.results)[0] + ".md"
    print(write(res, md_path, a.charts or os.path.dirname(os.path.abspath(md_path))))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
