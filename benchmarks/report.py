#!/usr/bin/env python3
"""report.py - Markdown report of one benchmarks/run result (stdlib only).

    python3 benchmarks/report.py results/NAME.json [-o results/NAME.md]
        [--base tmpfs] [--ref pyfuse] [--subjects cct,cct-lz4] [--spread]
        [--daemon-log NAME=PATH]... [--mount-opts NAME=OPTS]...

Sections:
  * targets: every cctmpfs target (--subjects; default: names starting with
    "cct") against the performance targets, stated as ratios to pyfuse (the
    plain Python llfuse memory fs, the FUSE speed ceiling): met / MISSED;
  * compression: the ratio each target reached after each write phase, the
    real-file (untar) ratio first;
  * medians: one row per metric, one column per target (median over rounds);
  * ratios: each target against tmpfs (--base) and against pyfuse (--ref).
    Every ratio is ORIENTED so that > 1 means better than the reference:
    higher-is-better metrics (MiB/s, IOPS) are target/reference,
    lower-is-better ones (s, us/op, s/GiB) are reference/target;
  * failures, daemon log problems, run conditions.
"""
import argparse
import json
import re
import statistics
import sys

#: The performance targets, as oriented ratios to pyfuse (metric, minimum, what).
GOALS = [
    ("seqwrite-1m-comp", 0.7, "seq write 1 MiB, compressible"),
    ("seqread-1m-comp", 0.7, "cold seq read 1 MiB, compressible"),
    ("seqread-128k-comp", 0.7, "cold seq read 128 KiB, compressible"),
    ("seqread-1m-rand", 0.7, "cold seq read 1 MiB, incompressible"),
    ("randwrite-4k-nj1", 0.6, "random 4 KiB write, 1 job"),
    ("randread-4k-nj1", 0.6, "random 4 KiB read (O_DIRECT), 1 job"),
    ("randwrite-4k-nj2", 0.6, "random 4 KiB write, 2 jobs"),
    ("randread-4k-nj2", 0.6, "random 4 KiB read (O_DIRECT), 2 jobs"),
    ("untar", 0.7, "untar of a real source tree (time, inverted)"),
]

#: Stats snapshots, in the order shown; "untar" is the real-file ratio.
SNAP_ORDER = ["untar", "seqwrite-1m-comp", "seqwrite-128k-comp", "seqwrite-1m-rand", "dedup-128k"]
SNAP_NOTE = {
    "untar": "real files: Python stdlib source tree",
    "seqwrite-1m-comp": "fio, 60% compressible (flatters codecs)",
    "seqwrite-128k-comp": "fio, 60% compressible",
    "seqwrite-1m-rand": "fio, incompressible (ideal 1.0)",
    "dedup-128k": "fio, 50% duplicate 128 KiB blocks, incompressible (ideal 2.0)",
}
MiB = 2 ** 20
#: Medians shown, ratios not: a FUSE fs syncs in ~1 ms, so its ratios are noise.
NO_RATIO = {"untar-sync"}


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(int(v))
    a = abs(v)
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    if a >= 1:
        return "%.2f" % v
    if a == 0:
        return "0"
    return "%.3g" % v


def fmt_ratio(r):
    return "-" if r is None else "%.2f" % r if r < 10 else "%.1f" % r


def oriented(better, val, ref):
    """val against ref so that > 1 is better; None if not comparable."""
    if val is None or ref is None or better not in ("higher", "lower"):
        return None
    if better == "higher":
        return val / ref if ref else None
    return ref / val if val else None


def summarize(d):
    """metric -> {"unit", "better", "targets": {name: {"median", "min", "max", "failed", "n"}}}."""
    out = {}
    for r in d["records"]:
        m = out.setdefault(r["metric"], {"unit": r["unit"], "better": r["better"], "targets": {}})
        e = m["targets"].setdefault(r["target"], {"values": [], "failed": 0, "n": 0})
        e["n"] += 1
        if r["value"] is None:
            e["failed"] += 1
        else:
            e["values"].append(r["value"])
    for m in out.values():
        for e in m["targets"].values():
            v = e["values"]
            e["median"] = statistics.median(v) if v else None
            e["min"] = min(v) if v else None
            e["max"] = max(v) if v else None
    return out


def med(summary, metric, target):
    return summary.get(metric, {}).get("targets", {}).get(target, {}).get("median")


def kv_list(specs):
    out = {}
    for s in specs or []:
        k, _, v = s.partition("=")
        out[k] = v
    return out


def log_problems(path):
    """(lines, problem lines) of a daemon log: ERROR/CRITICAL/WARNING/Traceback."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        return None, ["cannot read %s: %s" % (path, e)]
    pat = re.compile(r"\b(ERROR|CRITICAL|WARNING|Traceback|Exception)\b|internal error")
    return len(lines), [ln for ln in lines if pat.search(ln)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("results")
    ap.add_argument("-o", "--output", help="write the Markdown here (default: stdout)")
    ap.add_argument("--base", default="tmpfs", help="kernel reference (default tmpfs)")
    ap.add_argument("--ref", default="pyfuse", help="FUSE ceiling the targets are stated against")
    ap.add_argument("--subjects", help="comma list of cctmpfs targets (default: names starting with cct)")
    ap.add_argument("--spread", action="store_true", help="add min..max over rounds to the medians")
    ap.add_argument("--daemon-log", action="append", metavar="NAME=PATH")
    ap.add_argument("--mount-opts", action="append", metavar="NAME=OPTS")
    a = ap.parse_args()

    with open(a.results) as f:
        d = json.load(f)
    env, cfg = d.get("env", {}), d.get("config", {})
    targets = list(env.get("targets", {}).keys()) or sorted({r["target"] for r in d["records"]})
    subjects = a.subjects.split(",") if a.subjects else [t for t in targets if t.startswith("cct")]
    base = a.base if a.base in targets else None
    ref = a.ref if a.ref in targets else None
    summary = summarize(d)
    metrics = list(summary)
    mount_opts = kv_list(a.mount_opts)
    out = []
    w = out.append

    name = a.results.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    w("# cctmpfs benchmark: %s" % name)
    w("")
    rounds = cfg.get("rounds")
    w("%s, %s round%s, %s s per random job, seq size %s, phases: %s%s. Elapsed %s min." % (
        env.get("date", "?"), rounds, "" if rounds == 1 else "s", cfg.get("runtime"),
        cfg.get("seq_size"), ", ".join(cfg.get("phases", [])),
        ", **pinned to CPU %s**" % cfg["pin_cpu"] if cfg.get("pin_cpu") is not None else ", unpinned",
        round(env.get("elapsed_s", 0) / 60, 1)))
    w("")
    w("Targets: " + "; ".join(
        "`%s`%s" % (t, " (cctmpfs -o %s)" % mount_opts[t] if t in mount_opts else "") for t in targets) + ".")
    w("All numbers are medians over rounds. Every ratio in this report is **oriented so that > 1 "
      "is better** than the reference: MiB/s and IOPS are target / reference, times (s, us/op, s/GiB) "
      "are reference / target. Note that this differs from fsbench.py's own table, which divides "
      "medians as they are.")
    if rounds == 1:
        w("")
        w("> One round only: unpinned FUSE numbers swing 2-5x between rounds on this VM "
          "(BASELINE.md section 7.1). Use this for smoke checks, not for verdicts.")
    w("")

    # ---- performance targets ------------------------------------------------
    w("## Performance targets (ratio to %s, > 1 = faster than %s)" % (a.ref, a.ref))
    w("")
    if not ref:
        w("No `%s` target in this run: the targets cannot be judged." % a.ref)
        w("")
    elif not subjects:
        w("No cctmpfs target (name starting with `cct`) in this run.")
        w("")
    else:
        w("| goal | metric | need | %s |" % " | ".join(subjects))
        w("|---|---|---:|" + "---|" * len(subjects))
        tally = {s: [0, 0] for s in subjects}
        for metric, need, what in GOALS:
            if metric not in summary:
                continue
            better = summary[metric]["better"]
            rv = med(summary, metric, ref)
            cells = []
            for s in subjects:
                e = summary[metric]["targets"].get(s, {})
                r = oriented(better, e.get("median"), rv)
                if e.get("failed") and e.get("median") is None:
                    cells.append("**FAILED**")
                    tally[s][1] += 1
                elif r is None:
                    cells.append("n/a")
                elif r >= need:
                    cells.append("%s met" % fmt_ratio(r))
                    tally[s][0] += 1
                else:
                    cells.append("%s **MISSED**" % fmt_ratio(r))
                    tally[s][1] += 1
            w("| %s | `%s` | >= %.1f | %s |" % (what, metric, need, " | ".join(cells)))
        if "verify-ok" in summary:
            cells = []
            for s in subjects:
                v = summary["verify-ok"]["targets"].get(s, {})
                ok = v.get("values") and all(x == 1 for x in v["values"]) and not v.get("failed")
                cells.append("ok" if ok else "**FAILED**")
                if not ok:
                    tally[s][1] += 1
            w("| data integrity (fio crc32c verify after drop_caches) | `verify-ok` | 1 | %s |" % " | ".join(cells))
        w("")
        w("Met: " + "; ".join("%s %d of %d" % (s, t[0], t[0] + t[1]) for s, t in tally.items()) + ".")
        w("")

    # ---- compression ----------------------------------------------------------
    snaps = d.get("stats_snapshots", [])
    if snaps:
        w("## Compression")
        w("")
        w("`ratio` is what the target reports: for cctmpfs allocated bytes / RAM used (stored "
          "compressed blocks + the uncompressed hot buffer) after `cctmpfs stats --settle`; for zram "
          "orig_data_size / compr_data_size. `compr` is cctmpfs's compression_ratio over sealed blocks "
          "only. `unsettled` is the ratio before the settle. RSS is the daemon's resident memory (it also "
          "holds what earlier phases left in the heap), and logical / RSS is the ratio a user would see "
          "in `free`, leaving out the kernel page cache. Rows of targets without such figures (tmpfs; pyfuse, which stores 1:1) are "
          "left out.")
        w("")
        by = {}
        for s in snaps:
            by.setdefault((s["after"], s["target"]), []).append(s["stats"] or {})

        def m(lst, key, scale=1.0, sub=None):
            vals = []
            for st in lst:
                x = (st.get(sub) or {}).get(key) if sub else st.get(key)
                if isinstance(x, (int, float)) and not isinstance(x, bool):
                    vals.append(x / scale)
            return statistics.median(vals) if vals else None

        afters = [x for x in SNAP_ORDER if any(k[0] == x for k in by)]
        afters += sorted({k[0] for k in by} - set(afters))
        # headline: real files
        heads = []
        for t in targets:
            lst = by.get(("untar", t))
            if lst and m(lst, "ratio") is not None:
                h = "%s %s" % (t, fmt(m(lst, "ratio")))
                if m(lst, "compression_ratio") is not None:
                    h += " (compr %s)" % fmt(m(lst, "compression_ratio"))
                heads.append(h)
        if heads:
            w("**Real-file (untar) ratio:** " + ", ".join(heads) + ".")
            w("")
        w("| after | target | ratio | compr | unsettled | logical MiB | stored MiB | RAM used MiB | RSS MiB | logical / RSS | settle s | note |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for aft in afters:
            for t in targets:
                lst = by.get((aft, t))
                if not lst:
                    continue
                errs = [st["error"] for st in lst if "error" in st]
                if errs and len(errs) == len(lst):
                    w("| %s | %s | **stats failed: %s** |||||||||" % (aft, t, errs[0][:120].replace("|", "/")))
                    continue
                logical = m(lst, "logical_bytes", MiB)
                if logical is None:
                    logical = m(lst, "orig_bytes", MiB)
                stored = m(lst, "stored_bytes", MiB)
                if stored is None:
                    stored = m(lst, "compr_bytes", MiB)
                ram = m(lst, "ram_used_bytes", MiB)
                if ram is None:
                    ram = m(lst, "mem_used_bytes", MiB)
                rss = m(lst, "rss_bytes", MiB)
                ratio = m(lst, "ratio")
                if ratio is None and logical is None:
                    continue  # nothing to say (tmpfs; pyfuse stores 1:1)
                w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    aft, t, fmt(ratio), fmt(m(lst, "compression_ratio")),
                    fmt(m(lst, "ratio", sub="unsettled")), fmt(logical), fmt(stored), fmt(ram),
                    fmt(rss), fmt(logical / rss) if logical and rss else "-",
                    fmt(m(lst, "settle_s")), SNAP_NOTE.get(aft, "")))
        w("")

    # ---- medians ---------------------------------------------------------------
    w("## Medians")
    w("")
    w("| metric | unit | better | %s |" % " | ".join(targets))
    w("|---|---|---|" + "---:|" * len(targets))
    for metric in metrics:
        s = summary[metric]
        cells = []
        for t in targets:
            e = s["targets"].get(t)
            if not e or not e["n"]:
                cells.append("-")
                continue
            c = fmt(e["median"]) if e["median"] is not None else "**FAIL**"
            if e["failed"] and e["median"] is not None:
                c += " (%d failed)" % e["failed"]
            if a.spread and len(e["values"]) > 1:
                c += " [%s..%s]" % (fmt(e["min"]), fmt(e["max"]))
            cells.append(c)
        w("| %s | %s | %s | %s |" % (metric, s["unit"], s["better"] or "-", " | ".join(cells)))
    w("")

    # ---- ratios ---------------------------------------------------------------
    cols = []
    for t in targets:
        if base and t != base:
            cols.append((t, base))
        if ref and t not in (ref, base):
            cols.append((t, ref))
    if cols:
        w("## Ratios (> 1 = better than the reference)")
        w("")
        w("Throughput: target / reference. Times and CPU costs: reference / target. "
          "`-` = not comparable (no value on one side, e.g. daemon CPU on tmpfs). "
          "untar-sync has no ratio (a FUSE fs syncs in about 1 ms: noise).")
        w("")
        w("| metric | %s |" % " | ".join("%s ÷ %s" % c for c in cols))
        w("|---|" + "---:|" * len(cols))
        for metric in metrics:
            s = summary[metric]
            if s["better"] not in ("higher", "lower") or s["unit"] in ("x", "bool") or metric in NO_RATIO:
                continue
            cells = [fmt_ratio(oriented(s["better"], med(summary, metric, t), med(summary, metric, r)))
                     for t, r in cols]
            if all(c == "-" for c in cells):
                continue
            w("| %s | %s |" % (metric, " | ".join(cells)))
        w("")

    # ---- failures and logs ---------------------------------------------------
    fails = [r for r in d["records"] if r["value"] is None]
    errs = [(s["target"], s["after"], s["stats"]["error"]) for s in snaps
            if isinstance(s.get("stats"), dict) and "error" in s["stats"]]
    internal = [(s["target"], s["after"], s["stats"].get("internal_errors")) for s in snaps
                if isinstance(s.get("stats"), dict) and s["stats"].get("internal_errors")]
    logs = kv_list(a.daemon_log)
    w("## Problems")
    w("")
    if not (fails or errs or internal):
        w("No failed step, no stats error, no cctmpfs internal error counted.")
    for r in fails:
        ex = r.get("extra") or {}
        why = ex.get("error") or ex.get("fio_stderr") or ex.get("stderr") or ""
        if not why and ex.get("jobs"):
            why = "fio job errors: %s" % [j.get("error") for j in ex["jobs"]]
        if not why and "fio_rc" in ex:
            why = "fio rc=%s" % ex["fio_rc"]
        w("* round %s, %s, `%s`: **failed** %s" % (r["round"] + 1, r["target"], r["metric"],
                                                 ("- " + " ".join(str(why).split())[:300]) if why else ""))
    for t, aft, e in errs:
        w("* %s stats after %s failed: %s" % (t, aft, e[:300]))
    for t, aft, n in internal:
        w("* %s reported internal_errors = %s after %s (see its daemon log)" % (t, n, aft))
    for t, path in logs.items():
        n, probs = log_problems(path)
        if n is None:
            w("* %s daemon log: %s" % (t, probs[0]))
        elif n == 0:
            w("* %s daemon log (`%s`): empty (with --daemonize the daemon logs to syslog)." % (t, path))
        elif probs:
            w("* %s daemon log (`%s`, %d lines): %d warning/error lines, first ones:" % (t, path, n, len(probs)))
            w("")
            w("  ```")
            for ln in probs[:8]:
                w("  " + ln[:300])
            w("  ```")
        else:
            w("* %s daemon log (`%s`, %d lines): no warnings or errors." % (t, path, n))
    w("")

    # ---- conditions ---------------------------------------------------------
    steal, busy = [], []
    for r in d["records"]:
        ex = r.get("extra") or {}
        if "steal_pct" in ex:
            steal.append(ex["steal_pct"])
            busy.append(ex["cpu_busy_pct"])
    w("## Run conditions")
    w("")
    w("* kernel %s, %s CPUs, %s; fio %s; Python %s" % (
        env.get("kernel"), env.get("nproc"), " ".join((env.get("mem_total") or "").replace("MemTotal:", "RAM").split()),
        env.get("fio"), env.get("python")))
    w("* load average at start: %s; at end: %s" % (env.get("loadavg_start"), env.get("loadavg_end")))
    if steal:
        w("* CPU steal per step: median %s%%, max %s%%; CPU busy per step: median %s%%" % (
            fmt(statistics.median(steal)), fmt(max(steal)), fmt(statistics.median(busy))))
    if env.get("src_tar"):
        w("* untar source: %s (%s MiB)" % (env["src_tar"]["path"], fmt(env["src_tar"]["bytes"] / MiB)))
    w("* raw data: `%s`" % a.results)

    text = "\n".join(out) + "\n"
    if a.output:
        with open(a.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
