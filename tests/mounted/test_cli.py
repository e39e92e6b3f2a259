"""The command line contract, through the installed console entry point.

`cctmpfs SOURCE MOUNTPOINT [-o OPTIONS]` daemonizes and returns only once the
mount answers; bad options or mount points exit non-zero with one message
and leave nothing mounted; unmounting (umount or fusermount -u) ends the
daemon; `cctmpfs stats` shows a table, `--json` named fields.
"""

from __future__ import annotations

import ctypes
import email
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.mounted

PR_SET_CHILD_SUBREAPER = 36
STDLIB_PACKAGES = [os.path.dirname(json.__file__), os.path.dirname(email.__file__)]


def cctmpfs_command() -> list[str]:
    """The console script of the running environment (as installed by pip)."""
    script = Path(sys.executable).parent / "cctmpfs"
    if script.exists():
        return [str(script)]
    found = shutil.which("cctmpfs")
    if found:
        return [found]
    return [sys.executable, "-m", "cctmpfs.cli"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cctmpfs_command() + list(args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def mounted_at(path: str) -> list[str]:
    path = os.path.abspath(path)   # no realpath: it would stat a possibly hung mount
    with open("/proc/self/mounts") as f:
        return [line for line in f if line.split()[1] == path]


def daemon_pids(mountpoint: str) -> list[int]:
    """Live (non-zombie) processes whose command line names mountpoint."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if mountpoint.encode() in argv and state != "Z":
            out.append(int(d))
    return out


@pytest.fixture
def daemonized(tmp_path):
    """Mount points for daemonized mounts; the test process is made a child
    subreaper, so the daemons become its children and their exit status can
    be collected. Everything is unmounted and reaped at teardown."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    made: list[str] = []

    def new_mountpoint(name: str = "mnt") -> str:
        p = tmp_path / name
        p.mkdir()
        made.append(str(p))
        return str(p)

    try:
        yield new_mountpoint
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for mp in made:
            if mounted_at(mp):
                subprocess.run(["fusermount", "-uz", mp], capture_output=True)
            for pid in daemon_pids(mp):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        # Reap what became our children (daemons of this test only).
        deadline = time.monotonic() + 10
        for pid in _children_of_ours():
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.05)


def _children_of_ours() -> list[int]:
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cmd = Path(f"/proc/{d}/cmdline").read_bytes() if os.path.exists(f"/proc/{d}/cmdline") else b""
        if int(stat[1]) == me and b"cctmpfs" in cmd:
            out.append(int(d))
    return out


def wait_exit(pid: int, timeout: float = 15.0) -> int:
    """Wait for a daemon (our child through the subreaper) and return its exit status."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            raise AssertionError(f"daemon {pid} still running {timeout}s after the unmount")
        time.sleep(0.05)


def mount_daemonized(mp: str, *opts: str, source: str = "clitest") -> int:
    """Mount with the console script (daemonizing); returns the daemon pid."""
    r = run_cli(source, mp, *opts)
    assert r.returncode == 0, f"mount failed: {r.stderr}"
    pids = daemon_pids(mp)
    assert len(pids) == 1, f"expected one daemon for {mp}, found {pids}"
    return pids[0]


# ---- mounting ------------------------------------------------------------------

def test_daemonized_mount_is_usable_when_the_command_returns(daemonized, transport):
    mp = daemonized()
    r = run_cli("myfsname", mp, "-o", f"size=32m,mode=0755,transport={transport}")
    # The very first thing after the command returns: the mount answers.
    st = os.stat(mp)
    assert r.returncode == 0, r.stderr
    assert st.st_ino == 1
    assert oct(st.st_mode) == oct(0o40755)
    lines = mounted_at(mp)
    assert len(lines) == 1
    source, _mp, fstype = lines[0].split()[:3]
    assert (source, fstype) == ("myfsname", "fuse.cctmpfs")
    assert r.stdout == "" and r.stderr == ""
    Path(mp, "hello").write_text("world")
    assert Path(mp, "hello").read_text() == "world"
    pid = daemon_pids(mp)[0]
    assert subprocess.run(["fusermount", "-u", mp]).returncode == 0
    assert wait_exit(pid) == 0
    assert not mounted_at(mp)


def test_a_source_with_a_comma_and_a_backslash_is_shown_as_tmpfs_shows_it(daemonized, transport):
    """libfuse 2.9 and fusermount split their -o strings at commas: the
    source (which travels as fsname=) is escaped for them, not split."""
    source = "a,b\\c d"
    mp, ref = daemonized(), daemonized("ref")
    r = run_cli(source, mp, "-o", f"size=8m,transport={transport}")
    assert r.returncode == 0, r.stderr
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", source, ref], check=True)
    try:
        shown = [subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--mountpoint", p],
                                capture_output=True, text=True, check=True).stdout
                 for p in (mp, ref)]
    finally:
        subprocess.run(["umount", ref], check=True)
    assert shown[0] == shown[1] == source + "\n"


@pytest.mark.parametrize("allocator", ["malloc", "pymalloc"])
def test_the_daemon_runs_under_the_allocator_asked_for(daemonized, transport, allocator):
    """allocator=malloc: the command starts itself again under
    PYTHONMALLOC=malloc, the same command line, so the daemon forked from it
    has glibc's malloc; an inherited PYTHONMALLOC is replaced for pymalloc."""
    mp = daemonized()
    env = dict(os.environ, PYTHONMALLOC="malloc" if allocator == "pymalloc" else "pymalloc")
    r = subprocess.run(cctmpfs_command() + ["src", mp, "-o", f"size=8m,allocator={allocator},"
                                            f"transport={transport}"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    (pid,) = daemon_pids(mp)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"PYTHONMALLOC={allocator}".encode() in environ
    Path(mp, "f").write_bytes(b"x" * 100_000)
    assert Path(mp, "f").read_bytes() == b"x" * 100_000
    assert subprocess.run(["fusermount", "-u", mp]).returncode == 0
    assert wait_exit(pid) == 0


def test_daemonized_mount_repeatedly_answers_at_once(daemonized, transport):
    # The "returns only once usable" promise must hold every time, not by luck.
    for i in range(5):
        mp = daemonized(f"m{i}")
        r = run_cli("x", mp, "-o", f"transport={transport}")
        try:
            os.listdir(mp)
            os.statvfs(mp)
        finally:
            assert r.returncode == 0, r.stderr
            pid = daemon_pids(mp)[0]
            subprocess.run(["fusermount", "-u", mp], check=True)
            assert wait_exit(pid) == 0


@pytest.mark.parametrize("unmount", [["umount"], ["fusermount", "-u"]], ids=["umount", "fusermount"])
def test_unmount_ends_the_daemon(daemonized, unmount, transport):
    mp = daemonized()
    pid = mount_daemonized(mp, "-o", f"size=16m,transport={transport}")
    Path(mp, "f").write_bytes(os.urandom(300_000))
    r = subprocess.run(unmount + [mp], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert wait_exit(pid) == 0
    assert not mounted_at(mp)
    assert os.listdir(mp) == []   # the underlying (empty) directory again


@pytest.mark.parametrize("unmount", [["umount"], ["fusermount", "-u"]], ids=["umount", "fusermount"])
def test_unmount_ends_a_foreground_daemon(mount_cct, unmount):
    mp = mount_cct("size=16m")
    Path(mp, "f").write_text("x" * 100_000)
    r = subprocess.run(unmount + [mp], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert mp.proc.wait(timeout=15) == 0
    assert not mounted_at(mp)


def test_sigterm_unmounts_a_foreground_daemon(mount_cct):
    mp = mount_cct()
    mp.proc.send_signal(signal.SIGTERM)
    assert mp.proc.wait(timeout=15) == 0
    assert not mounted_at(mp)


BAD_OPTIONS = [
    # (option string, word the message must contain)
    ("bogus", "bogus"),
    ("size=64m,bogus=1", "bogus"),
    ("size=abc", "size"),
    ("size=", "size"),
    ("nr_inodes=10%", "nr_inodes"),
    ("mode=99999", "mode"),
    ("mode=abc", "mode"),
    ("uid=-1", "uid"),
    ("compress=gzip", "compress"),
    ("compress=zstd:99", "compress"),
    ("compress=lz4:3", "compress"),
    ("block_size=3k", "block_size"),
    ("block_size=2m", "block_size"),
    ("buffer=1k", "buffer"),
    ("ram=1k", "ram"),
    ("workers=0", "workers"),
    ("seal_priority=low", "seal_priority"),
    ("ro", "ro"),
    ("size=1m,nr_blocks=10", "nr_blocks"),
]


@pytest.mark.parametrize("foreground", [False, True], ids=["daemon", "foreground"])
@pytest.mark.parametrize("options,word", BAD_OPTIONS, ids=[o for o, _ in BAD_OPTIONS])
def test_bad_option_exits_with_one_message_and_mounts_nothing(tmp_path, options, word, foreground):
    mp = tmp_path / "mnt"
    mp.mkdir()
    args = ["src", str(mp), "-o", options] + (["-f"] if foreground else [])
    r = run_cli(*args, timeout=30)
    assert r.returncode == 1, (r.returncode, r.stderr)
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1, f"expected one message line, got: {r.stderr!r}"
    assert word in msg, msg
    assert "Traceback" not in r.stderr
    assert not mounted_at(str(mp))
    assert daemon_pids(str(mp)) == []


@pytest.mark.parametrize("foreground", [False, True], ids=["daemon", "foreground"])
def test_missing_mountpoint(tmp_path, foreground):
    mp = tmp_path / "does-not-exist"
    r = run_cli("src", str(mp), *(["-f"] if foreground else []), timeout=30)
    assert r.returncode != 0
    assert str(mp) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not mp.exists()
    assert not mounted_at(str(mp))
    assert daemon_pids(str(mp)) == []


@pytest.mark.parametrize("foreground", [False, True], ids=["daemon", "foreground"])
@pytest.mark.parametrize("cause", ["no-dev-fuse", "no-cap-sys-admin"])
def test_native_says_why_it_cannot_mount(tmp_path, cause, foreground):
    """No /dev/fuse (a private mount namespace with an empty /dev), or no
    permission to mount (CAP_SYS_ADMIN dropped): one line that names the
    cause, status 1, nothing mounted."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    cmd = cctmpfs_command() + ["src", str(mp), "-o", "transport=native"] \
        + (["-f"] if foreground else [])
    if cause == "no-dev-fuse":
        script = ('mount -t tmpfs tmpfs /dev && touch /dev/null && exec "$@" </dev/null')
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"] + cmd
        want = "/dev/fuse does not exist"
    else:
        cmd = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"] + cmd
        # As libfuse, root then tries fusermount, which cannot either.
        want = "with mount(2) is not permitted (no CAP_SYS_ADMIN here), nor through fusermount"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and want in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not mounted_at(str(mp)) and daemon_pids(str(mp)) == []


def test_mountpoint_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = run_cli("src", str(f), timeout=30)
    assert r.returncode != 0
    assert str(f) in r.stderr
    assert not mounted_at(str(f))


def test_usage_errors(tmp_path):
    r = run_cli()
    assert r.returncode != 0 and "usage" in r.stderr.lower()
    r = run_cli("--version")
    assert r.returncode == 0 and "cctmpfs" in r.stdout


# ---- stats ---------------------------------------------------------------------

def copy_stdlib_packages(dest: str) -> int:
    """Copy the json and email packages (real source files) into dest; returns bytes."""
    total = 0
    for src in STDLIB_PACKAGES:
        shutil.copytree(src, os.path.join(dest, os.path.basename(src)),
                        ignore=shutil.ignore_patterns("__pycache__"))
    for root, _dirs, files in os.walk(dest):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


STATS_FIELDS = {
    "version", "codec", "block_size", "files_bytes", "logical_bytes", "stored_bytes",
    "stored_logical_bytes", "buffer_bytes", "ram_used_bytes", "compression_ratio", "ratio",
    "blocks", "incompressible_blocks", "limits", "inodes", "counters", "internal_errors",
}


def test_stats_json_after_writing_real_files(mount_cct, transport):
    mp = mount_cct("size=64m")
    total = copy_stdlib_packages(mp)
    assert total > 300_000
    r = run_cli("stats", mp, "--json", "--settle")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert STATS_FIELDS <= set(s), STATS_FIELDS - set(s)
    assert s["version"] == 1
    assert s["codec"] == "zstd:3"
    assert s["block_size"] == 131072
    assert s["files_bytes"] == total
    assert s["logical_bytes"] >= total
    assert s["internal_errors"] == 0
    assert s["limits"]["size_bytes"] == 64 * 1024 * 1024
    nfiles = sum(len(f) for _r, _d, f in os.walk(mp))
    ndirs = sum(len(d) for _r, d, _f in os.walk(mp))
    assert s["inodes"] == 1 + nfiles + ndirs
    # Settled: nothing dirty, and Python source compresses well.
    assert s["blocks"]["dirty"] == 0 and s["blocks"]["sealing"] == 0
    assert s["compression_ratio"] is not None and s["compression_ratio"] > 2.0, s
    assert s["stored_bytes"] < total / 2
    # The transport, and for native what INIT negotiated: the default
    # switches (options.INIT_SWITCHES), which 6.18 all offers.
    assert s["transport"]["name"] == transport
    assert s["transport"]["timestamps"] == ("multigrain" if transport == "native" else "coarse")
    if transport == "native":
        t = s["transport"]
        assert t["flags"] == ["ASYNC_READ", "ATOMIC_O_TRUNC", "BIG_WRITES",
                              "DO_READDIRPLUS", "READDIRPLUS_AUTO", "PARALLEL_DIROPS", "MAX_PAGES",
                              "CACHE_SYMLINKS", "HANDLE_KILLPRIV_V2"], t
        assert t["flags"] == t["asked_flags"]
        assert set(t["flags"]) <= set(t["kernel_flags"]) and t["max_write"] == 1 << 20
        assert t["protocol"].startswith("7.") and t["bad_requests"] == 0 == t["reply_errors"]
        assert s["requests"]["init"] == 1 and s["requests"]["create"] > 0

    # Unsettled --json works too and keeps the same shape.
    r = run_cli("stats", mp, "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == set(s)


from cctmpfs.stats import MEMORY_PARTS  # noqa: E402


def test_stats_report_rss_and_where_it_goes(mount_cct):
    """The daemon's RSS, its RSS once mounted, and the breakdown of the
    rest, which follows the files copied in and out."""
    mp = mount_cct("size=64m")
    empty = mp.stats()
    m = empty["memory"]
    assert 0 < m["runtime_bytes"] <= empty["rss_bytes"]
    assert m["payload_bytes"] == 0 and m["inode_bytes"] > 0
    assert m["files"] == m["entries"] == 0 and m["dirs"] == 1
    total = copy_stdlib_packages(mp)
    s = json.loads(run_cli("stats", mp, "--json", "--settle").stdout)
    m = s["memory"]
    assert m["runtime_bytes"] == empty["memory"]["runtime_bytes"]
    assert m["accounted_bytes"] == sum(m[k] for k in MEMORY_PARTS)
    assert m["heap_slack_bytes"] == s["rss_bytes"] - m["runtime_bytes"] - m["accounted_bytes"]
    assert m["payload_bytes"] == s["stored_bytes"] > 0
    nfiles = sum(len(f) for _r, _d, f in os.walk(mp))
    ndirs = sum(len(d) for _r, d, _f in os.walk(mp))
    assert (m["files"], m["dirs"], m["entries"]) == (nfiles, ndirs + 1, nfiles + ndirs)
    # Hot files cost their record; frozen ones (inodetable.py) their row.
    hot_files = max(0, nfiles - m["frozen_inodes"])
    assert m["hot_inodes"] + m["frozen_inodes"] == s["inodes"]
    assert m["inode_bytes"] >= m["inode_table_bytes"] + hot_files * m["per_file_inode_bytes"]
    assert m["block_record_bytes"] == s["dedup"]["index_bytes"] - m["dedup_index_bytes"]
    # The metadata of these small files (~1 KB each) is a fair part of what they store.
    metadata = (m["accounted_bytes"] - m["payload_bytes"] - m["arena_free_bytes"]
                - m["codec_context_bytes"])
    assert 0.05 < metadata / total < 1
    # The sealer's zstd compressor at level 3 at least (1.30 MB, codec.py).
    assert m["codec_context_bytes"] > 1_000_000
    assert s["rss_bytes"] > m["runtime_bytes"]
    r = run_cli("stats", mp)
    header, row = (line.split() for line in r.stdout.splitlines())
    cells = dict(zip(header, row))
    assert {"RSS", "META", "SLACK"} <= set(cells), r.stdout
    shutil.rmtree(os.path.join(mp, "json"))
    shutil.rmtree(os.path.join(mp, "email"))
    m = mp.stats()["memory"]
    assert m["files"] == m["entries"] == m["slots"] == m["payload_bytes"] == 0
    assert m["file_map_bytes"] == m["block_record_bytes"] == 0


@pytest.mark.parametrize("priority", ["idle", "normal"])
def test_sealer_cpu_class(mount_cct, priority):
    """The daemon's sealer compresses released files in the background at
    SCHED_IDLE (seal_priority=idle, the default) or at normal priority, and
    every thread is back at SCHED_OTHER once it is done."""
    mp = mount_cct("size=64m" + ("" if priority == "idle" else ",seal_priority=normal"))
    total = copy_stdlib_packages(mp)
    assert total > 300_000
    deadline = time.monotonic() + 30
    while True:     # no --settle: that would seal in the handler, not in the sealer
        s = mp.stats()
        if s["blocks"]["dirty"] == 0 and s["blocks"]["sealing"] == 0:
            break
        assert time.monotonic() < deadline, s["blocks"]
        time.sleep(0.1)
    assert s["compression_ratio"] > 2.0
    if priority == "idle":
        assert s["seal_batches_idle"] > 0 and s["seal_batches_normal"] == 0, s
    else:
        assert s["seal_batches_idle"] == 0 and s["seal_batches_normal"] > 0, s
    tids = os.listdir(f"/proc/{mp.proc.pid}/task")
    assert len(tids) >= 2      # the worker and the sealer at least
    assert {os.sched_getscheduler(int(t)) for t in tids} == {os.SCHED_OTHER}


def test_stats_table(mount_cct, transport):
    mp = mount_cct("size=64m,compress=lz4,block_size=64k")
    copy_stdlib_packages(mp)
    r = run_cli("stats", mp, "--settle")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    header = lines[0].split()
    assert header[:3] == ["MOUNTPOINT", "CODEC", "BLOCK"]
    for col in ("COMPR", "INODES", "ERRORS"):
        assert col in header
    row = lines[1].split()
    assert len(row) == len(header), r.stdout
    cells = dict(zip(header, row))
    assert cells["MOUNTPOINT"] == mp
    assert cells["CODEC"] == "lz4"
    assert cells["BLOCK"] == "64.0K"
    assert float(cells["COMPR"]) > 1.5
    assert cells["ERRORS"] == "0"
    assert cells["TRANSPORT"] == transport
    # spin=200 is native's default: "on" until a spin, then the share that caught a request.
    if transport == "native":
        assert re.fullmatch(r"on|\d+%", cells["SPIN"]), cells["SPIN"]
    else:
        assert cells["SPIN"] == "-"
    assert cells["MOUNTED_BY"] == "mount(2)"     # root, without auto_unmount


def assert_failed_only_on_others(r: subprocess.CompletedProcess, ours: list[str]) -> None:
    """`cctmpfs stats` without arguments reads every cctmpfs mount of the machine,
    and exits 1 if one fails. Mounts of other runs on a shared machine may be
    dead (ENOTCONN): accept errors about those, never about ours."""
    if r.returncode == 0:
        return
    assert r.returncode == 1, r.stderr
    for line in r.stderr.splitlines():
        assert line.startswith("cctmpfs stats: /"), r.stderr
        assert line.split()[2].rstrip(":") not in ours, r.stderr


def test_stats_without_argument_lists_every_mount(mount_cct):
    a = mount_cct("size=8m")
    b = mount_cct("size=8m,compress=none")
    Path(a, "f").write_text("a" * 10_000)
    r = run_cli("stats")
    assert_failed_only_on_others(r, [a, b])
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert a in rows and b in rows, r.stdout
    r = run_cli("stats", "--json")
    assert_failed_only_on_others(r, [a, b])
    data = json.loads(r.stdout)
    assert data[a]["version"] == 1 and data[b]["codec"] == "none"
    assert data[a]["files_bytes"] == 10_000


def test_stats_of_something_else_fails(tmp_path, mount_cct):
    mount_cct()   # at least one cctmpfs mount exists; tmp_path is still not one
    r = run_cli("stats", str(tmp_path))
    assert r.returncode != 0
    assert str(tmp_path) in r.stderr
    assert "Traceback" not in r.stderr


def test_stats_xattrs_are_read_only_and_unlisted(mount_cct):
    mp = mount_cct()
    assert "trusted.cctmpfs.stats" not in os.listxattr(mp)
    with pytest.raises(OSError):
        os.setxattr(mp, "trusted.cctmpfs.stats", b"{}")
    with pytest.raises(OSError):
        os.removexattr(mp, "trusted.cctmpfs.stats")
    assert json.loads(os.getxattr(mp, "trusted.cctmpfs.stats"))["version"] == 1


# ---- fuzzed mount options through the real command --------------------------------

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FUZZ_KEYS = ["size", "nr_inodes", "mode", "uid", "compress", "block_size", "ram", "buffer",
              "workers", "dedup", "backing_size", "backing_encrypt", "ro", "rw", "noauto",
              "allow_other", "bogus", "x-systemd.after", ""]
_FUZZ_VALUES = st.one_of(st.text(alphabet=st.characters(blacklist_characters=",\x00"), max_size=8),
                         st.from_regex(r"\A-?[0-9]{1,22}[kmgt%]?\Z"),
                         st.sampled_from(["zstd:99", "lz4", "on", "off", "16k", "2m", "50%"]))
_FUZZ_OPTION = st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_FUZZ_KEYS), _FUZZ_VALUES),
                         st.sampled_from(_FUZZ_KEYS))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_FUZZ_OPTION, min_size=1, max_size=4))
@example(["size=\r"])          # found by hypothesis: a CR in the value split the message
@example(["mode=\n", "bogus"])
def test_fuzzed_options_get_one_clear_message_and_a_status(tmp_path_factory, opts):
    """mount.cctmpfs -f (mount(8)'s "fake": check the options, mount nothing)
    with fuzzed options: exit 0 for what parse_options accepts, else exit 1
    with one line that names the problem, never a traceback."""
    from cctmpfs.errors import OptionError
    from cctmpfs.options import parse_options

    text = ",".join(opts)
    mp = tmp_path_factory.mktemp("fuzz")
    helper = Path(cctmpfs_command()[0]).parent / "mount.cctmpfs"
    r = subprocess.run([str(helper), "cctmpfs", str(mp), "-f", "-o", text], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    try:
        parse_options([text])
        accepted = True
    except OptionError:
        accepted = False
    assert "Traceback" not in r.stderr, r.stderr
    if accepted:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mount.cctmpfs: bad mount option"), lines
    assert not os.path.ismount(mp)
