"""Fixtures for tests on real mounts: cctmpfs through FUSE, and real tmpfs as reference.

`mount_cct(options)` is the one way mounted tests mount cctmpfs. It runs the
daemon in the foreground (`-f`) as a child process with its output in a log
file, waits (briefly) until the mount answers, and fails at once with the
daemon's log if the daemon died instead. At teardown it always unmounts
(fusermount -u, then fusermount -uz and a kill as fallbacks) and fails the
test unless the daemon exited with status 0, logged no traceback, and, just
before the unmount, its stats said internal_errors == 0 and the invariant
checker (trusted.cctmpfs.check) found nothing.

`tmpfs_mount(options)` mounts a real tmpfs: the reference for every semantic
question. Both fixtures unmount at teardown whatever happened, and a session
sweep (plus atexit) unmounts anything still mounted under this run's
directories, so nothing stays mounted after the suite.

Every cctmpfs mount runs on each transport (`transport=llfuse` and
`transport=native`): `mount_cct` depends on the parametrised `transport`
fixture, so each test that mounts runs once per transport, with the
transport in its id (`test_x[native]`). Tests that mount through the
command line, fstab or mount(8) take the `transport` fixture themselves and
add `transport_option(transport)` to their options. CCTMPFS_TRANSPORTS
(e.g. `native`) runs a subset.

Mounted tests need root and /dev/fuse. Without them they FAIL, unless
CCTMPFS_SKIP_MOUNTED=1 is set, which skips them.

tests/stress/conftest.py re-exports these fixtures.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from cctmpfs.cli import sync_mount

REPO_ROOT = Path(__file__).resolve().parents[2]
SKIP_ENV = "CCTMPFS_SKIP_MOUNTED"
#: How long a mount may take to answer, and a daemon to exit after an unmount.
MOUNT_DEADLINE = 10.0
EXIT_DEADLINE = 15.0
XATTR_STATS = "trusted.cctmpfs.stats"
XATTR_STATS_SETTLED = "trusted.cctmpfs.stats-settled"
XATTR_CHECK = "trusted.cctmpfs.check"

PR_SET_PDEATHSIG = 1

#: The transports every mounted test runs on (the mount option transport=).
ALL_TRANSPORTS = ("llfuse", "native")
TRANSPORTS_ENV = "CCTMPFS_TRANSPORTS"


def selected_transports() -> tuple[str, ...]:
    text = os.environ.get(TRANSPORTS_ENV, "")
    chosen = tuple(t for t in text.replace(",", " ").split() if t) or ALL_TRANSPORTS
    unknown = set(chosen) - set(ALL_TRANSPORTS)
    if unknown:
        raise pytest.UsageError(f"{TRANSPORTS_ENV}: unknown transport(s) {sorted(unknown)}")
    return chosen


@pytest.fixture(params=selected_transports())
def transport(request: pytest.FixtureRequest) -> str:
    """The transport a test mounts with; every mounting test runs on each."""
    return request.param


def transport_option(transport: str) -> str:
    return f"transport={transport}"


def with_transport(options: str, transport: str) -> str:
    """options plus transport=..., unless they choose one already."""
    if any(o.startswith("transport=") for o in options.split(",")):
        return options
    return ",".join(filter(None, [options, transport_option(transport)]))


# ---- environment -------------------------------------------------------------

def mount_env_problem() -> Optional[str]:
    """Why real mounts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "mounted tests need root (they mount FUSE and tmpfs file systems)"
    if not os.path.exists("/dev/fuse"):
        return "mounted tests need /dev/fuse"
    if fusermount() is None:
        return "mounted tests need fusermount (package fuse)"
    return None


def fusermount() -> Optional[str]:
    return shutil.which("fusermount") or shutil.which("fusermount3")


@pytest.fixture(autouse=True)
def _require_mount_environment() -> None:
    """Fail, never silently skip, when real mounts are impossible."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1")
    problem = mount_env_problem()
    if problem:
        pytest.fail(f"{problem}; set {SKIP_ENV}=1 to skip the mounted tests", pytrace=False)


# ---- mount table ---------------------------------------------------------------

def _unescape(field: str) -> str:
    # /proc/self/mounts escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_entries() -> list[tuple[str, str, str, str]]:
    """(source, mount point, fstype, options) of every mount, in order."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4:
                out.append((_unescape(fields[0]), _unescape(fields[1]), fields[2], fields[3]))
    return out


def mount_entry(path: str) -> Optional[tuple[str, str, str, str]]:
    """The last (topmost) mount table entry for path, or None.

    Never stats path (no realpath): a hung daemon must not hang the caller.
    Mount points made here are real paths already (see base_dir)."""
    path = os.path.abspath(path)
    found = None
    for entry in mount_entries():
        if entry[1] == path:
            found = entry
    return found


def is_mounted(path: str) -> bool:
    return mount_entry(path) is not None


def _lazy_unmount(path: str, fstype: str) -> None:
    if fstype.startswith("fuse"):
        fm = fusermount()
        if fm:
            subprocess.run([fm, "-uz", path], capture_output=True)
    if is_mounted(path):
        subprocess.run(["umount", "-l", path], capture_output=True)


def sweep_mounts(base: str) -> list[str]:
    """Lazily unmount everything still mounted under base; returns what was."""
    left = []
    prefix = os.path.realpath(base).rstrip("/") + "/"
    for _src, mp, fstype, _opts in reversed(mount_entries()):
        if mp.startswith(prefix):
            left.append(mp)
            _lazy_unmount(mp, fstype)
    return left


_BASE: Optional[str] = None
#: This run's directory is tempdir/BASE_PREFIX<pid>-<random>.
BASE_PREFIX = "cctmpfs-tests-"


def sweep_dead_runs() -> list[str]:
    """Unmount and remove what runs killed before their cleanup (SIGKILL, OOM) left."""
    left = []
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        if not name.startswith(BASE_PREFIX):
            continue
        pid_text = name[len(BASE_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or os.path.exists(f"/proc/{pid_text}"):
            continue
        path = os.path.join(tmp, name)
        left += sweep_mounts(path)
        if not any(mp.startswith(path + "/") for _s, mp, _t, _o in mount_entries()):
            shutil.rmtree(path, ignore_errors=True)
    return left


def base_dir() -> str:
    """This run's directory for mount points and daemon logs."""
    global _BASE
    if _BASE is None:
        tmp = os.path.realpath(tempfile.gettempdir())
        _BASE = tempfile.mkdtemp(prefix=f"{BASE_PREFIX}{os.getpid()}-", dir=tmp)
        os.chmod(_BASE, 0o755)   # tests act as other users inside the mounts
        atexit.register(_atexit_sweep, _BASE)
    return _BASE


def _atexit_sweep(base: str) -> None:
    sweep_mounts(base)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _sweep_leftover_mounts():
    stale = sweep_dead_runs()
    if stale:
        print(f"\ncctmpfs tests: unmounted leftovers of killed runs: {stale}", file=sys.stderr)
    yield
    if _BASE is not None:
        left = sweep_mounts(_BASE)
        if left:
            # The per-test finalizers should have unmounted these already.
            print(f"\ncctmpfs tests: lazily unmounted leftovers: {left}", file=sys.stderr)


def new_dir(kind: str) -> str:
    path = tempfile.mkdtemp(prefix=f"{kind}-", dir=base_dir())
    os.chmod(path, 0o755)
    return path


# ---- cctmpfs -------------------------------------------------------------------

def daemon_command(source: str, mountpoint: str, options: str, foreground: bool = True) -> list[str]:
    cmd = [sys.executable, "-m", "cctmpfs.cli", source, mountpoint]
    if options:
        cmd += ["-o", options]
    if foreground:
        cmd.append("-f")
    return cmd


def daemon_env() -> dict[str, str]:
    """The environment for cctmpfs commands: this checkout's package first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort only
        pass


def read_stats(mountpoint: str, settle: bool = False) -> dict[str, Any]:
    """As `cctmpfs stats` reads them: after syncing the mount, so that what
    the kernel's writeback cache holds (transport=native) is counted."""
    sync_mount(mountpoint)
    return json.loads(os.getxattr(mountpoint, XATTR_STATS_SETTLED if settle else XATTR_STATS))


class MountPath(str):
    """A cctmpfs mount point (a str), with its daemon process and log."""

    proc: subprocess.Popen
    log_path: str
    options: str
    #: Set by a test that ends the mount on purpose and checks the exit itself.
    expect_exit: Optional[int] = 0
    #: Set by a test that injects faults (CCTMPFS_FAULTS): internal errors (and
    #: their logged tracebacks) are then expected; the invariant checker must
    #: still pass.
    allow_internal_errors: bool = False

    def stats(self, settle: bool = False) -> dict[str, Any]:
        return read_stats(self, settle)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"

    def unmount(self, timeout: float = EXIT_DEADLINE) -> int:
        """fusermount -u and wait for the daemon; returns its exit status."""
        r = subprocess.run([fusermount(), "-u", str(self)], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"fusermount -u {self} failed: {r.stderr.strip()}")
        return self.proc.wait(timeout=timeout)


def _log_tail(m: MountPath, limit: int = 6000) -> str:
    text = m.log()
    return text if len(text) <= limit else "...\n" + text[-limit:]


def start_cctmpfs(options: str = "", *, source: str = "cctmpfs-test",
                  mountpoint: Optional[str] = None) -> MountPath:
    """Start a foreground daemon and wait until its mount answers."""
    mp = mountpoint or new_dir("cct")
    log_path = os.path.join(base_dir(), os.path.basename(mp) + ".log")
    logf = open(log_path, "wb")
    try:
        proc = subprocess.Popen(daemon_command(source, mp, options), stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                                env=daemon_env(), preexec_fn=_die_with_parent)
    finally:
        logf.close()
    m = MountPath(mp)
    m.proc, m.log_path, m.options = proc, log_path, options
    deadline = time.monotonic() + MOUNT_DEADLINE
    while True:
        rc = proc.poll()
        if rc is not None:
            if is_mounted(mp):
                _lazy_unmount(mp, "fuse")
            raise _MountFailed(f"cctmpfs -o {options!r} exited with status {rc} before its mount "
                               f"answered.\n--- daemon log ---\n{_log_tail(m)}")
        entry = mount_entry(mp)
        if entry is not None and entry[2] == "fuse.cctmpfs":
            try:
                os.stat(mp)
                return m
            except OSError:
                pass
        if time.monotonic() > deadline:
            stop_cctmpfs(m, check=False)
            raise _MountFailed(f"cctmpfs -o {options!r} did not answer within {MOUNT_DEADLINE}s."
                               f"\n--- daemon log ---\n{_log_tail(m)}")
        time.sleep(0.02)


class _MountFailed(Exception):
    pass


#: How long teardown waits for a (possibly hung) daemon to answer.
ANSWER_TIMEOUT = 10.0


def _probe(mountpoint: str, code: str) -> subprocess.CompletedProcess:
    """Run code against the mount in a child, so a hung daemon cannot hang the suite."""
    return subprocess.run([sys.executable, "-c", code, mountpoint], capture_output=True,
                          timeout=ANSWER_TIMEOUT)


def control_with_timeout(mountpoint: str, name: str) -> tuple[Optional[dict[str, Any]], str]:
    """Read a control xattr (stats, check) in a child; (report, "") or (None, why)."""
    code = ("import os, sys; sys.stdout.buffer.write("
            f"os.getxattr(sys.argv[1], {name!r}))")
    try:
        r = _probe(mountpoint, code)
    except subprocess.TimeoutExpired:
        return None, f"{name} did not answer within {ANSWER_TIMEOUT}s at teardown (daemon hung?)"
    if r.returncode != 0:
        return None, f"{name} unreadable at teardown: {r.stderr.decode(errors='replace').strip()[-500:]}"
    return json.loads(r.stdout), ""


def answers(mountpoint: str) -> bool:
    try:
        return _probe(mountpoint, "import os, sys; os.stat(sys.argv[1])").returncode == 0
    except subprocess.TimeoutExpired:
        return False


def abort_connection(mountpoint: str) -> None:
    """Abort the FUSE connection of a hung mount (every pending request fails)."""
    real = os.path.abspath(mountpoint)
    if not os.listdir("/sys/fs/fuse/connections"):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"],
                       capture_output=True)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if _unescape(fields[4]) == real and fields[-3].startswith("fuse"):
                    minor = fields[2].split(":")[1]
                    with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as a:
                        a.write("1")
    except OSError:
        pass


def stop_cctmpfs(m: MountPath, check: bool = True) -> list[str]:
    """Unmount (always) and reap the daemon. Returns the problems found."""
    problems: list[str] = []
    proc = m.proc
    fm = fusermount()
    if proc.poll() is None and is_mounted(m):
        hung = False
        if check:
            st, why = control_with_timeout(m, XATTR_STATS)
            if st is None:
                problems.append(why)
                hung = "did not answer" in why
            else:
                if st.get("internal_errors") != 0 and not m.allow_internal_errors:
                    problems.append(f"internal_errors = {st.get('internal_errors')}")
                report, why = control_with_timeout(m, XATTR_CHECK)
                if report is None:
                    problems.append(why)
                elif report["count"]:
                    problems.append(f"invariant checker: {report['count']} violations: "
                                    + "; ".join(report["violations"][:10]))
        elif not answers(m):
            hung = True
        if hung:
            problems.append("the FUSE connection of the hung mount was aborted")
            abort_connection(m)
        ok = False
        err = ""
        for _ in range(20):   # a child of the test may still be closing its files
            r = subprocess.run([fm, "-u", str(m)], capture_output=True, text=True)
            if r.returncode == 0 or not is_mounted(m):
                ok = True
                break
            err = r.stderr.strip()
            time.sleep(0.1)
        if not ok:
            problems.append(f"fusermount -u failed ({err}); unmounted lazily")
            _lazy_unmount(m, "fuse")
    elif is_mounted(m):
        # Daemon gone but mount left behind ("Transport endpoint is not connected").
        problems.append("daemon gone but its mount was still there")
        _lazy_unmount(m, "fuse")
    try:
        rc = proc.wait(timeout=EXIT_DEADLINE)
    except subprocess.TimeoutExpired:
        problems.append("daemon still running after the unmount; killed")
        _lazy_unmount(m, "fuse")
        proc.kill()
        rc = proc.wait()
    if check and m.expect_exit is not None and rc != m.expect_exit:
        problems.append(f"daemon exit status {rc} (expected {m.expect_exit})")
    if is_mounted(m):
        problems.append("still mounted after teardown; unmounted lazily")
        _lazy_unmount(m, "fuse")
    if check and "Traceback" in m.log() and not m.allow_internal_errors:
        problems.append("daemon logged a traceback")
    return problems


@pytest.fixture
def mount_cct(transport: str) -> Callable[..., MountPath]:
    """Factory: mount_cct(options="size=64m,...") -> the mount point (a MountPath),
    on the test's transport (unless the options name one).

    Every mount made is unmounted at teardown; the test then fails if the
    daemon did not exit cleanly or counted internal errors.
    """
    mounts: list[MountPath] = []

    def factory(options: str = "", **kw: Any) -> MountPath:
        try:
            m = start_cctmpfs(with_transport(options, transport), **kw)
        except _MountFailed as e:
            pytest.fail(str(e), pytrace=False)
        mounts.append(m)
        return m

    yield factory

    report = []
    for m in reversed(mounts):
        problems = stop_cctmpfs(m)
        if problems:
            report.append(f"{m} (-o {m.options!r}): " + "; ".join(problems)
                          + f"\n--- daemon log ---\n{_log_tail(m)}")
    for m in mounts:
        shutil.rmtree(m, ignore_errors=True)
    if report:
        pytest.fail("cctmpfs teardown:\n" + "\n".join(report), pytrace=False)


# ---- tmpfs ---------------------------------------------------------------------

@pytest.fixture
def tmpfs_mount() -> Callable[..., str]:
    """Factory: tmpfs_mount(options="size=64m") -> the mount point of a real tmpfs."""
    mounts: list[str] = []

    def factory(options: str = "size=64m") -> str:
        mp = new_dir("tmpfs")
        cmd = ["mount", "-t", "tmpfs"] + (["-o", options] if options else []) + ["tmpfs", mp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed: {r.stderr.strip()}", pytrace=False)
        mounts.append(mp)
        return mp

    yield factory

    failed = []
    for mp in reversed(mounts):
        if is_mounted(mp):
            r = subprocess.run(["umount", mp], capture_output=True, text=True)
            if r.returncode != 0:
                failed.append(f"{mp}: {r.stderr.strip()}")
                subprocess.run(["umount", "-l", mp], capture_output=True)
        shutil.rmtree(mp, ignore_errors=True)
    if failed:
        pytest.fail("tmpfs teardown: umount failed (something kept it busy): " + "; ".join(failed),
                    pytrace=False)


# ---- real users ------------------------------------------------------------------

@pytest.fixture
def new_users() -> Callable[[int], list]:
    """Factory: new_users(n) -> n real unprivileged accounts (pwd entries),
    made with useradd for this test and removed with userdel after it,
    whatever happened."""
    import pwd
    import uuid
    if shutil.which("useradd") is None:
        pytest.fail("useradd not found (apt-get install passwd)", pytrace=False)
    made: list[str] = []

    def factory(n: int) -> list:
        out = []
        for _ in range(n):
            name = f"cct{uuid.uuid4().hex[:8]}"
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                           check=True, capture_output=True)
            made.append(name)
            out.append(pwd.getpwnam(name))
        return out

    try:
        yield factory
    finally:
        for name in made:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
            subprocess.run(["userdel", name], capture_output=True)


def as_user_argv(user: Any) -> list[str]:
    """The argv prefix that runs a command as user (a pwd entry), without groups."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]


# ---- helpers shared by the mounted tests ----------------------------------------

def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@pytest.fixture
def drop_caches() -> Callable[[], None]:
    """drop_caches(): drop the kernel page cache so reads really reach the daemon."""
    return _drop_caches
