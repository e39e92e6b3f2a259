"""Stress: the fio jobs of examples/fio/ against cctmpfs, through run-job.

Every test goes through examples/fio/run-job, as an administrator would. The
CI run gives each verify-* job a fresh mount with 16 KiB blocks and a 1 MiB
hot buffer (64 blocks) against 16-64 MiB of files, so nearly every block is
compressed, dropped from the buffer and loaded again, and 4 KiB writes land
inside stored blocks. Between the passes the mount is settled (everything
sealed) and the page cache dropped, so the verify pass reads every block back
through the daemon, and the test checks from the stats that it did. A negative
control corrupts 4 bytes between the passes and expects fio to fail. The job
files' contract (examples/fio/README.md) is checked, the benchmark jobs run
briefly, and a short RSS check runs the four verify jobs in 4 cycles on one
mount. The whole file takes about 45 s here (2 vCPUs).

`pytest tests/stress/test_fio_stress.py --soak MINUTES` (option registered in
tests/conftest.py) also loops the four verify jobs on one mount for MINUTES
and checks that the daemon's RSS stays flat.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

pytestmark = pytest.mark.mounted

KiB, MiB = 1024, 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_DIR = REPO_ROOT / "examples" / "fio"
RUN_JOB = JOB_DIR / "run-job"
#: The smallest block size and a 64-block hot buffer: see the module docstring.
MOUNT_OPTIONS = "size=1g,block_size=16k,buffer=1m,workers=2"
#: One run of each verify job, as run-job variables. Together: 4k, 128k and 1m
#: writes, two fio jobs (two files) per run, 60% compressible data and
#: incompressible data (randrw, FIO_COMPRESS=0, stored raw).
CI_RUNS: dict[str, dict[str, str]] = {
    "verify-seq-write": {"FIO_BS": "1m", "FIO_SIZE": "32m", "FIO_NJ": "2", "FIO_COMPRESS": "60"},
    "verify-rand-write": {"FIO_BS": "4k", "FIO_SIZE": "8m", "FIO_NJ": "2", "FIO_COMPRESS": "60"},
    "verify-randrw-70-30": {"FIO_BS": "4k", "FIO_SIZE": "16m", "FIO_NJ": "2", "FIO_COMPRESS": "0"},
    "verify-dedupe": {"FIO_BS": "128k", "FIO_SIZE": "32m", "FIO_NJ": "2", "FIO_COMPRESS": "60"},
}
#: Per fio run; a full CI run of one job takes 1-2 s here.
FIO_TIMEOUT = 300


# ---- running fio through run-job --------------------------------------------------

@dataclass
class FioRun:
    """One run-job call: its status, output, and fio's JSON reports in order
    (two for a verify job run without FIO_VERIFY_ONLY: write, then verify)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    reports: list[dict[str, Any]]

    def describe(self) -> str:
        return (f"$ {' '.join(self.args)}\nstatus {self.returncode}\n"
                f"--- stdout (end) ---\n{self.stdout[-4000:]}\n"
                f"--- stderr (end) ---\n{self.stderr[-4000:]}")


#: fio prints plain lines to stdout before a JSON report (with verify and
#: numjobs > 1: "fio: multiple writers may overwrite blocks ..."), so a report
#: is found where a line holds just "{".
_REPORT_START = re.compile(r"^\{$", re.MULTILINE)


def fio_reports(stdout: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    reports, pos = [], 0
    while (m := _REPORT_START.search(stdout, pos)) is not None:
        report, pos = decoder.raw_decode(stdout, m.start())
        reports.append(report)
    return reports


def require_fio() -> None:
    if shutil.which("fio") is None:
        pytest.fail("fio is not installed (the CI installs it)", pytrace=False)


def run_job(job: str, directory: str, variables: dict[str, str],
            verify_only: Optional[int] = None, extra: tuple[str, ...] = ()) -> FioRun:
    """run-job JOB DIRECTORY VAR=VALUE... -- --output-format=json EXTRA...

    verify_only=0 or 1 runs that pass of a verify job alone; None runs a
    verify job's two passes (with sync and drop_caches between them)."""
    require_fio()
    # Only what this call sets: a FIO_* variable exported by whoever runs the
    # tests must not change the job.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIO_")}
    assigns = [f"{k}={v}" for k, v in variables.items()]
    if verify_only is not None:
        assigns.append(f"FIO_VERIFY_ONLY={verify_only}")
    args = [str(RUN_JOB), job, directory, *assigns, "--", "--output-format=json", *extra]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=FIO_TIMEOUT)
    try:
        reports = fio_reports(r.stdout)
    except ValueError as e:
        pytest.fail(f"fio's JSON output does not parse ({e}):\n"
                    f"{FioRun(args, r.returncode, r.stdout, r.stderr, []).describe()}")
    return FioRun(args, r.returncode, r.stdout, r.stderr, reports)


def verifies(report: dict[str, Any], section: dict[str, Any]) -> bool:
    return "verify" in section["job options"] or "verify" in report["global options"]


def check_ok(run: FioRun, reports: int) -> None:
    assert run.returncode == 0, f"fio failed:\n{run.describe()}"
    assert len(run.reports) == reports, f"expected {reports} fio report(s):\n{run.describe()}"
    for report in run.reports:
        for section in report["jobs"]:
            assert section["error"] == 0, f"fio job {section['jobname']}: error " \
                                          f"{section['error']}:\n{run.describe()}"


def verified_bytes(write: dict[str, Any], verify: dict[str, Any], run: FioRun) -> int:
    """Bytes the verify pass checked; fails unless that is all a section wrote.

    A verify_only pass replays the write pass without doing it: fio still
    counts the replayed reads and writes, and adds the verify reads to the
    reads. So per section, verify reads = replayed reads + bytes verified, and
    every byte written with headers must have been verified."""
    verify_sections = {s["jobname"]: s for s in verify["jobs"]}
    total = 0
    for w in write["jobs"]:
        v = verify_sections[w["jobname"]]
        checked = v["read"]["io_bytes"] - w["read"]["io_bytes"]
        wanted = w["write"]["io_bytes"] if verifies(write, w) else 0
        assert checked == wanted, (f"{w['jobname']}: the verify pass checked {checked} bytes, "
                                   f"the write pass wrote {wanted} with headers:\n{run.describe()}")
        total += checked
    assert total > 0, f"nothing was verified:\n{run.describe()}"
    return total


# ---- the mount ----------------------------------------------------------------------

def cleanup(mp: str) -> dict[str, Any]:
    """Delete everything; return the settled stats once nothing is left stored."""
    for name in os.listdir(mp):
        os.unlink(os.path.join(mp, name))
    # The kernel forgets the unlinked inodes asynchronously (FORGET).
    end = time.monotonic() + 5
    while True:
        s = json.loads(os.getxattr(mp, "trusted.cctmpfs.stats-settled"))
        if (s["inodes"], s["logical_bytes"], s["stored_bytes"]) == (1, 0, 0):
            return s
        assert time.monotonic() < end, f"left after deleting every file: {s}"
        time.sleep(0.05)


def daemon_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


#: Right after a cycle's files are deleted, the daemon's RSS may still hold
#: freed heap (115-145 MiB measured here before the payload arena, 33-36 MiB
#: once the daemon's malloc_trim had run). cctmpfs/memtrim.py looks at most
#: every 2 s and trims once the heaps hold 8 MiB of free memory; the payload
#: arena unmaps its segments without it. Wait up to this long for a trim.
TRIM_WAIT = 5.0


def settled_rss(mp: Any) -> tuple[int, bool]:
    """The daemon's RSS once the mount is settled and freed memory returned,
    and whether a malloc_trim was seen while waiting."""
    pid = mp.proc.pid   # `cctmpfs ... -f`: the child the fixture started is the daemon
    trims = mp.stats(settle=True)["malloc_trims"]
    low = daemon_rss(pid)
    end = time.monotonic() + TRIM_WAIT
    while time.monotonic() < end:
        time.sleep(0.1)
        trimmed = mp.stats()["malloc_trims"] > trims
        low = min(low, daemon_rss(pid))
        if trimmed:
            return low, True
    return low, False


# ---- the job files --------------------------------------------------------------------

#: What benchmarks/ and administrators rely on (examples/fio/README.md).
BENCH_JOBS = ["seq-write", "seq-read", "rand-write", "rand-read", "randrw-70-30", "dedupe"]
VERIFY_JOBS = sorted(CI_RUNS)
EVERY_JOB = {
    "directory": "${FIO_DIR}", "ioengine": "psync", "fallocate": "none", "group_reporting": "1",
    "refill_buffers": "1", "buffer_compress_percentage": "${FIO_COMPRESS}",
    "buffer_compress_chunk": "4k", "bs": "${FIO_BS}", "size": "${FIO_SIZE}",
    "numjobs": "${FIO_NJ}",
}
VERIFYING = {"verify": "crc32c", "verify_fatal": "1", "verify_state_save": "0",
             "do_verify": "${FIO_VERIFY_ONLY}", "verify_only": "${FIO_VERIFY_ONLY}"}
#: The read job of each family, and the write job that lays out its files.
READS_FILES_OF = {"seq-read": "seq-write", "rand-read": "rand-write"}


def job_sections(path: Path) -> dict[str, dict[str, str]]:
    """Each job section of a fio job file, with the [global] options it inherits."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    common = sections.pop("global", {})
    return {name: {**common, **options} for name, options in sections.items()}


def test_job_files_keep_the_contract():
    assert sorted(p.stem for p in JOB_DIR.glob("*.fio")) == sorted(BENCH_JOBS + VERIFY_JOBS + ["verify"])
    for job in BENCH_JOBS + VERIFY_JOBS:
        sections = job_sections(JOB_DIR / f"{job}.fio")
        for name, options in sections.items():
            where = f"{job}.fio [{name}]"
            for key, value in EVERY_JOB.items():
                assert options.get(key) == value, f"{where}: {key}={options.get(key)}, want {value}"
            assert re.fullmatch(r"fio-[a-z0-9-]+\.\$jobnum", options.get("filename_format", "")), where
            if options.get("time_based") == "1":
                assert options.get("runtime") == "${FIO_RUNTIME}", where
            if job.startswith("verify-"):
                assert options.get("verify_only") == "${FIO_VERIFY_ONLY}", where
                assert "time_based" not in options, f"{where}: verify_only cannot replay a timed run"
            if "verify" in options:
                assert {k: options.get(k) for k in VERIFYING} == VERIFYING, where
        if job.startswith("verify-"):
            assert any("verify" in o for o in sections.values()), f"{job}.fio verifies nothing"
    assert job_sections(JOB_DIR / "rand-read.fio")["rand-read"].get("direct") == "1"
    assert job_sections(JOB_DIR / "dedupe.fio")["dedupe"].get("dedupe_percentage") == "50"
    assert job_sections(JOB_DIR / "verify-dedupe.fio")["dedupe-fill"].get("dedupe_percentage") == "50"
    for read, write in READS_FILES_OF.items():
        files = {o["filename_format"] for o in job_sections(JOB_DIR / f"{read}.fio").values()}
        assert files == {o["filename_format"] for o in job_sections(JOB_DIR / f"{write}.fio").values()}


def test_benchmark_jobs_run(mount_cct):
    """Every job without verify runs on cctmpfs; a read job reads the files
    its write job left (it creates none); O_DIRECT reads reach the daemon."""
    mp = mount_cct(MOUNT_OPTIONS)
    variables = {"FIO_BS": "16k", "FIO_SIZE": "4m", "FIO_NJ": "2", "FIO_RUNTIME": "1"}
    for job in BENCH_JOBS:
        before = mp.stats()
        # Blocks repeat within a pass: buffered, most reads would be page cache
        # hits (README.md), so only O_DIRECT passes the request count below.
        extra = ("--norandommap=1",) if job == "rand-read" else ()
        run = run_job(job, mp, variables, extra=extra)
        check_ok(run, 1)
        [section] = run.reports[0]["jobs"]
        after = mp.stats()
        created = after["counters"]["inodes_created"] - before["counters"]["inodes_created"]
        if job in READS_FILES_OF:
            assert created == 0, f"{job} laid out new files rather than read {READS_FILES_OF[job]}'s"
            assert section["read"]["io_bytes"] > 0, run.describe()
        else:
            assert created == 2, f"{job}: {created} files created, want one per job"
            assert section["write"]["io_bytes"] > 0, run.describe()
        if job == "rand-read":
            reads = after["requests"].get("read", 0) - before["requests"].get("read", 0)
            assert reads >= section["read"]["total_ios"], \
                f"{section['read']['total_ios']} O_DIRECT reads, {reads} READ requests"
    cleanup(mp)


# ---- CI ---------------------------------------------------------------------------

@pytest.mark.parametrize("job", sorted(CI_RUNS))
def test_fio_verify_job(mount_cct, drop_caches, job):
    mp = mount_cct(MOUNT_OPTIONS)
    variables = CI_RUNS[job]
    write = run_job(job, mp, variables, verify_only=0)
    check_ok(write, 1)
    # Seal everything, then drop the page cache: each block the verify pass
    # reads must come from the daemon and be decompressed.
    written = mp.stats(settle=True)
    drop_caches()
    verify = run_job(job, mp, variables, verify_only=1)
    check_ok(verify, 1)
    checked = verified_bytes(write.reports[0], verify.reports[0], verify)

    after = mp.stats()
    block = after["block_size"]
    buffered = after["limits"]["buffer_bytes"] // block
    loads = after["counters"]["loads"] - written["counters"]["loads"]
    # verify_interval=4k in the job files keeps fio's runs of zeros from
    # filling whole blocks, which would be holes that nothing loads.
    assert after["counters"]["zero_blocks"] == 0, "fio wrote all-zero blocks (stored as holes)"
    # A block holds at most `block` verified bytes, and at most `buffered`
    # blocks can still be in the hot buffer after the settle.
    assert loads >= checked // block - buffered, \
        f"{checked} bytes verified but only {loads} blocks loaded: the reads did not reach the daemon"
    if job == "verify-dedupe":
        assert written["counters"]["shared"] > 0 and written["dedup"]["saved_blocks"] > 0, \
            f"dedupe-fill left no shared block: {written['dedup']}"
    print(f"\n{job}: verified {checked // MiB} MiB, {loads} blocks loaded, "
          f"{written['counters']['shared']} shared at seal")
    cleanup(mp)


def test_fio_verify_detects_corruption(mount_cct, drop_caches):
    """The negative control: 4 bytes changed through the mount between the
    passes must fail the verify pass, at the 4 KiB where they are."""
    mp = mount_cct(MOUNT_OPTIONS)
    variables = {"FIO_BS": "128k", "FIO_SIZE": "8m", "FIO_NJ": "2", "FIO_COMPRESS": "60"}
    check_ok(run_job("verify-seq-write", mp, variables, verify_only=0), 1)
    bad = 5 * MiB
    with open(os.path.join(mp, "fio-verify-seq.1"), "r+b") as f:
        f.seek(bad + 2048)
        data = f.read(4)
        f.seek(bad + 2048)
        f.write(bytes(b ^ 0xFF for b in data))
    mp.stats(settle=True)
    drop_caches()
    verify = run_job("verify-seq-write", mp, variables, verify_only=1)
    assert verify.returncode != 0, f"the verify pass passed over corrupted data:\n{verify.describe()}"
    assert [s["error"] for r in verify.reports for s in r["jobs"]] == [errno.EILSEQ], verify.describe()
    assert f"fio-verify-seq.1 offset {bad}, length 4096" in verify.stderr, verify.describe()
    cleanup(mp)


def test_run_job_runs_both_passes(mount_cct):
    """Without FIO_VERIFY_ONLY, run-job writes, drops caches and verifies."""
    mp = mount_cct(MOUNT_OPTIONS)
    run = run_job("verify-rand-write", mp, {"FIO_BS": "16k", "FIO_SIZE": "4m", "FIO_NJ": "2"})
    check_ok(run, 2)
    assert verified_bytes(run.reports[0], run.reports[1], run) == 8 * MiB
    cleanup(mp)


def test_run_job_fails_when_the_write_pass_fails(mount_cct):
    """A write pass that fails (ENOSPC here) fails run-job, without a verify pass."""
    mp = mount_cct("size=4m,block_size=16k,buffer=1m")
    run = run_job("verify-seq-write", mp, {"FIO_SIZE": "8m"})
    assert run.returncode != 0, run.describe()
    assert "write pass failed" in run.stderr and "(verify pass)" not in run.stderr, run.describe()
    assert len(run.reports) == 1 and run.reports[0]["jobs"][0]["error"] == errno.ENOSPC, \
        run.describe()
    cleanup(mp)


# ---- RSS over many cycles ------------------------------------------------------------

#: How far the median RSS of the last third of the cycles may rise above that
#: of the first third (with fewer than 6 cycles: the last sample above the
#: first). Measured here, one mount, the four CI_RUNS jobs per cycle, RSS
#: after cleanup and malloc_trim: a 2-minute soak, 18 cycles, 33.6 -> 34.0 MiB
#: (medians 33.8, 34.0); a 6-minute soak, 47 cycles, 33.4 -> 34.0 MiB, flat at
#: 34.0 from cycle 31 on (one 34.4). 8 MiB is 13 times the largest drift seen
#: and catches a leak of 1 MiB per cycle (0.5% of the ~200 MiB a cycle
#: writes) in a 2-minute soak, or of 3 MiB per cycle in the 4 cycles of CI.
RSS_TOLERANCE = 8 * MiB
#: The CI version: 4 cycles, ~30 s here.
CI_CYCLES = 4


def rss_cycles(mp: Any, deadline: float, min_cycles: int) -> list[tuple[int, bool]]:
    """Run the four verify jobs (both passes each), delete their files, and
    sample the settled RSS; again until deadline and at least min_cycles."""
    samples: list[tuple[int, bool]] = []
    while time.monotonic() < deadline or len(samples) < min_cycles:
        for job, variables in CI_RUNS.items():
            run = run_job(job, mp, variables)   # write, sync + drop_caches, verify
            check_ok(run, 2)
            verified_bytes(run.reports[0], run.reports[1], run)
        cleanup(mp)
        samples.append(settled_rss(mp))
    return samples


def check_rss_flat(samples: list[tuple[int, bool]], elapsed: float) -> None:
    rss = [r for r, _trimmed in samples]
    # Every cycle here frees ~85 MiB of stored blocks, from the payload arena
    # (unmapped at once) and the heap (request buffers, decoded blocks), which
    # memtrim trims past 8 MiB of free memory; a sample without a trim is
    # marked.
    shown = [f"{r / MiB:.1f}" + ("" if trimmed else " (no trim)") for r, trimmed in samples]
    third = len(rss) // 3 if len(rss) >= 6 else 1
    first, last = statistics.median(rss[:third]), statistics.median(rss[-third:])
    print(f"\n{len(rss)} cycles in {elapsed:.0f} s; daemon RSS (MiB) after each: "
          f"{', '.join(shown)}; first {first / MiB:.1f}, last {last / MiB:.1f}")
    assert last <= first + RSS_TOLERANCE, \
        f"daemon RSS grew from {first / MiB:.1f} to {last / MiB:.1f} MiB: {shown}"


def test_fio_rss_flat_short(mount_cct):
    """The CI version of the soak. It is worth its 30 s: cleanup() only sees
    what the stats account for, and this sees memory that nothing accounts
    for. The RSS is sampled after the daemon's malloc_trim (see TRIM_WAIT),
    which makes it steady to within 0.5 MiB here, rather than 35-145 MiB."""
    mp = mount_cct(MOUNT_OPTIONS)
    start = time.monotonic()
    check_rss_flat(rss_cycles(mp, start, CI_CYCLES), time.monotonic() - start)


def test_fio_soak_rss_flat(mount_cct, request):
    minutes = request.config.getoption("--soak")
    if minutes is None:
        pytest.skip("the soak runs on request: .venv/bin/python -m pytest "
                    "tests/stress/test_fio_stress.py --soak MINUTES")
    mp = mount_cct(MOUNT_OPTIONS)
    start = time.monotonic()
    samples = rss_cycles(mp, start + minutes * 60, 3)
    check_rss_flat(samples, time.monotonic() - start)
