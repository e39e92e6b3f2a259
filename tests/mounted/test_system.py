"""cctmpfs as the machine's /tmp: fstab and mount(8), the mount.cctmpfs helper,
SIGTERM, logging, mounting over a non-empty directory, several users.

Tests that mount through mount(8) run in a private mount and PID namespace
(`unshare --mount --pid --fork`): the machine's mount table and /tmp are never
touched, and when the script ends the namespace ends with every process in it
(the daemon included), so nothing stays mounted whatever happened.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from conftest import as_user_argv
from test_cli import cctmpfs_command, mounted_at  # tests/mounted is on sys.path (rootdir imports)

pytestmark = pytest.mark.mounted

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = str(Path(cctmpfs_command()[0]).parent) if len(cctmpfs_command()) == 1 else None


#: What a root shell on a fresh Debian machine has: the scripts find `cctmpfs`
#: and `mount.cctmpfs` where examples/install-helpers.sh put them, not in the venv.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def in_namespace(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a bash script in a private mount + PID namespace, after the README's
    step `examples/install-helpers.sh` (its first command ends with it).

    The step writes /usr/local/sbin/cctmpfs and /sbin/mount.cctmpfs (symlinks
    to this environment's console scripts). Inside the namespace both
    directories are overlays whose writes go to a temporary directory, so the
    machine's own are never changed. The script runs with a root shell's PATH
    (ROOT_PATH, no venv) and starts in an empty directory: mount(8) turns a
    relative source such as `check` into a path if the current directory has
    an entry of that name (a CI machine had /check, so `/` is not safe)."""
    assert BIN_DIR, "the cctmpfs console script is not installed beside this Python"
    scratch = tempfile.mkdtemp(prefix="cct-sbin.", dir="/var/tmp")
    overlays = []
    for i, d in enumerate(("/usr/local/sbin", "/usr/sbin")):
        upper, work = f"{scratch}/upper{i}", f"{scratch}/work{i}"
        os.mkdir(upper)
        os.mkdir(work)
        overlays.append(f"mount -t overlay -o lowerdir={d},upperdir={upper},workdir={work} "
                        f"overlay {d}")
    install = f"{REPO}/examples/install-helpers.sh {BIN_DIR} >/dev/null"
    env = dict(os.environ, PATH=ROOT_PATH)
    empty = f"{scratch}/cwd"
    os.mkdir(empty)
    try:
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
             "bash", "-euo", "pipefail", "-c", "\n".join(overlays + [install, f"cd {empty}", script])],
            capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(scratch)


def findmnt(output: str) -> dict:
    """The one filesystem of a `findmnt -J` output."""
    return json.loads(output)["filesystems"][0]


# ---- fstab, mount(8), mount.cctmpfs --------------------------------------------------------

def test_fstab_line_mounts_with_mount8_and_unmounts(tmp_path, transport):
    mp = tmp_path / "tmp"
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"cctmpfs {mp} fuse.cctmpfs "
        "size=64m,ram=32m,mode=1777,allow_other,defaults,rw,nosuid,nodev,noexec,nofail,_netdev,"
        f"transport={transport} 0 0\n")
    r = in_namespace(f"""
        mount -T {fstab} {mp}
        findmnt -J -o TARGET,SOURCE,FSTYPE,OPTIONS {mp} > {tmp_path}/findmnt.json
        stat -c %a {mp} > {tmp_path}/mode
        echo hello > {mp}/f
        cat {mp}/f > {tmp_path}/content
        umount {mp}
        if mountpoint -q {mp}; then echo "still mounted after umount"; exit 1; fi
        # mount -a mounts it again; the helper daemon is gone after umount.
        mount -a -T {fstab}
        mountpoint -q {mp}
        test ! -e {mp}/f          # volatile, as tmpfs
        umount {mp}
        sleep 0.5
        if pgrep -f "[p]ython.*cctmpfs cctmpfs {mp}"; then echo "daemon left running"; exit 1; fi
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    fs = findmnt((tmp_path / "findmnt.json").read_text())
    assert fs["fstype"] == "fuse.cctmpfs" and fs["source"] == "cctmpfs"
    for opt in ("rw", "nosuid", "nodev", "noexec", "allow_other", "default_permissions"):
        assert opt in fs["options"].split(","), fs["options"]
    assert (tmp_path / "mode").read_text().strip() == "1777"
    assert (tmp_path / "content").read_text() == "hello\n"


def readme_commands() -> list[str]:
    """The README's first two ```sh blocks: the setup line, then the test command."""
    text = (REPO / "README.md").read_text()
    blocks = text.split("```sh\n")[1:3]
    return [b.split("```", 1)[0].strip() for b in blocks]


def test_readme_first_command_installs_what_mount8_runs(tmp_path, transport):
    """After the README's first command, whose last steps are
    `... && .venv/bin/pip install -e '.[test]' && examples/install-helpers.sh && examples/demo.sh`,
    `mount -t fuse.cctmpfs` and an fstab line work with no manual step.

    mount(8) starts /sbin/mount.fuse without PATH (measured: util-linux 2.38,
    fuse 2.9.9), and mount.fuse runs `cctmpfs ...` through /bin/sh, whose
    built-in PATH is ROOT_PATH: the venv is never searched, so the command
    must be in one of those directories. Here mount(8) runs from an empty
    environment, as systemd's mount units and boot scripts would."""
    setup = [step.strip() for step in readme_commands()[0].split("&&")]
    install = "examples/install-helpers.sh"
    assert install in setup, f"the README's first command does not run {install}: {setup}"
    pip = next(i for i, step in enumerate(setup) if step.startswith(".venv/bin/pip install"))
    assert pip < setup.index(install) < setup.index("examples/demo.sh"), setup

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"mytmp {b} fuse.cctmpfs size=16m,mode=1777,nosuid,nodev,transport={transport} 0 0\n")
    r = in_namespace(f"""
        test "$(readlink /usr/local/sbin/cctmpfs)" = {BIN_DIR}/cctmpfs
        env -i /usr/bin/mount -t fuse.cctmpfs -o size=16m,transport={transport} cctmpfs {a}
        env -i /usr/bin/mount -T {fstab} {b}
        echo hello > {a}/f
        cat {a}/f
        findmnt -n -o SOURCE,FSTYPE {a}
        findmnt -n -o SOURCE,FSTYPE {b}
        umount {a}
        umount {b}
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["hello", "cctmpfs", "fuse.cctmpfs", "mytmp", "fuse.cctmpfs"]


def test_sources_named_stats_and_check_mount_and_the_subcommands_still_work(tmp_path):
    """`mount -t fuse.cctmpfs stats DIR` and the fstab line `check DIR fuse.cctmpfs
    ...` make /sbin/mount.fuse run `cctmpfs stats DIR -o ...` and `cctmpfs check
    DIR -o ...`: mounts, because only the mount form takes -o (cli.command()).
    `cctmpfs stats` and `cctmpfs check` without mount flags still report, and
    never mount a plain directory."""
    s, c, plain = tmp_path / "s", tmp_path / "c", tmp_path / "plain"
    for d in (s, c, plain):
        d.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"check {c} fuse.cctmpfs size=16m,nosuid,nodev 0 0\n")
    r = in_namespace(f"""
        mount -t fuse.cctmpfs -o size=16m,mode=1777 stats {s}
        mount -T {fstab} {c}
        findmnt -J -o SOURCE,FSTYPE {s} > {tmp_path}/s.findmnt
        findmnt -J -o SOURCE,FSTYPE {c} > {tmp_path}/c.findmnt
        printf 12345 > {s}/f
        cctmpfs stats {s} {c} --json --settle > {tmp_path}/stats.json
        cctmpfs stats {c} > {tmp_path}/stats.table
        cctmpfs check {s} {c} > {tmp_path}/check.out
        if cctmpfs stats {plain} 2> {tmp_path}/plain.err; then echo "stats of a directory"; exit 1; fi
        if cctmpfs check {plain} 2>/dev/null; then echo "check of a directory"; exit 1; fi
        if mountpoint -q {plain}; then echo "stats mounted {plain}"; exit 1; fi
        # By hand, any mount option makes it a mount (the error's own advice).
        cctmpfs stats {plain} -o defaults
        findmnt -n -o SOURCE,FSTYPE {plain}
        umount {plain}
        umount {s}
        umount {c}
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    assert findmnt((tmp_path / "s.findmnt").read_text()) == {"source": "stats", "fstype": "fuse.cctmpfs"}
    assert findmnt((tmp_path / "c.findmnt").read_text()) == {"source": "check", "fstype": "fuse.cctmpfs"}
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert set(stats) == {str(s), str(c)}
    assert stats[str(s)]["files_bytes"] == 5 and stats[str(c)]["files_bytes"] == 0
    table = (tmp_path / "stats.table").read_text().splitlines()
    assert table[0].split()[0] == "MOUNTPOINT" and table[1].split()[0] == str(c)
    assert (tmp_path / "check.out").read_text() == f"{s}: consistent\n{c}: consistent\n"
    err = (tmp_path / "plain.err").read_text()
    assert "not a cctmpfs mount point" in err and f"cctmpfs stats {plain} -o defaults" in err, err
    assert r.stdout.split() == ["stats", "fuse.cctmpfs"]


def test_fstab_ro_and_bad_options_are_refused_clearly(tmp_path):
    mp = tmp_path / "tmp"
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"cctmpfs {mp} fuse.cctmpfs size=16m 0 0\n"
                     f"cctmpfs {tmp_path}/bad fuse.cctmpfs size=16m,compress=gzip 0 0\n")
    (tmp_path / "bad").mkdir()
    r = in_namespace(f"""
        if mount -T {fstab} -o ro {mp} 2> {tmp_path}/ro.err; then echo "ro mounted"; exit 1; fi
        if mountpoint -q {mp}; then echo "ro left a mount"; exit 1; fi
        if mount -T {fstab} {tmp_path}/bad 2> {tmp_path}/bad.err; then echo "bad mounted"; exit 1; fi
        if mountpoint -q {tmp_path}/bad; then echo "bad left a mount"; exit 1; fi
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    ro = (tmp_path / "ro.err").read_text()
    assert "ro" in ro and "read-write" in ro, ro
    bad = (tmp_path / "bad.err").read_text()
    assert "compress=gzip" in bad and "Traceback" not in bad, bad


def test_type_cctmpfs_uses_the_mount_cctmpfs_helper(tmp_path, transport):
    """`type cctmpfs` (no fuse. prefix): mount(8) runs /sbin/mount.cctmpfs, which
    examples/install-helpers.sh installed (in_namespace runs it)."""
    mp = tmp_path / "tmp"
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"mytmp {mp} cctmpfs size=16m,mode=1777,nodev,nosuid,transport={transport} 0 0\n")
    r = in_namespace(f"""
        test "$(readlink /sbin/mount.cctmpfs)" = {BIN_DIR}/mount.cctmpfs
        mount -T {fstab} {mp}
        findmnt -J -o SOURCE,FSTYPE {mp} > {tmp_path}/findmnt.json
        # -f (fake) checks the options and mounts nothing
        {BIN_DIR}/mount.cctmpfs x {tmp_path} -f -o size=1m
        if {BIN_DIR}/mount.cctmpfs x {tmp_path} -f -o size=1m,bogus 2> {tmp_path}/fake.err; then exit 1; fi
        umount {mp}
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    fs = findmnt((tmp_path / "findmnt.json").read_text())
    assert fs["fstype"] == "fuse.cctmpfs" and fs["source"] == "mytmp"
    assert "bogus" in (tmp_path / "fake.err").read_text()


def test_daemon_logs_to_the_system_log_not_a_terminal(tmp_path, transport):
    """A daemonized mount logs to syslog; without /dev/log (as here), to the
    kernel log. The terminal it was started from gets nothing."""
    mp = tmp_path / "tmp"
    mp.mkdir()
    marker = uuid.uuid4().hex[:12]
    r = in_namespace(f"""
        cctmpfs {marker} {mp} -o size=8m,transport={transport}
        umount {mp}
        sleep 0.5
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "" and r.stderr == ""
    if os.path.exists("/dev/log"):
        pytest.skip("this machine has a syslog socket; the kernel-log fallback is not used")
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    assert f"mounted {marker} on {mp}" in log
    assert f"unmounted {mp}" in log


# ---- lifecycle --------------------------------------------------------------------------------

def test_sigterm_stops_the_daemon_cleanly(mount_cct):
    mp = mount_cct("size=16m")
    Path(mp, "f").write_bytes(b"x" * 100_000)
    mp.proc.send_signal(signal.SIGTERM)
    assert mp.proc.wait(timeout=15) == 0
    assert mounted_at(mp) == []
    assert "Traceback" not in mp.log()


@pytest.mark.parametrize("transport", ["native"])   # llfuse unmounts by path, as libfuse 2.9
def test_a_stopped_daemon_unmounts_only_its_own_mount(mount_cct, transport):
    """A busy mount detached with umount -l keeps its daemon serving; a new
    mount then takes the mount point. Stopping the first daemon must not
    unmount the second."""
    first = mount_cct("size=8m")
    fd = os.open(os.path.join(first, "busy"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        subprocess.run(["umount", "-l", str(first)], check=True)
        second = mount_cct("size=8m", mountpoint=str(first))
        Path(second, "f").write_text("second")
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=15) == 0
    finally:
        try:
            os.close(fd)
        except OSError:
            pass      # ENOTCONN: its connection ended with its daemon
    assert mounted_at(second) and Path(second, "f").read_text() == "second"


def test_sigterm_stops_a_daemonized_mount(tmp_path, transport):
    mp = tmp_path / "tmp"
    mp.mkdir()
    r = in_namespace(f"""
        cctmpfs cctmpfs {mp} -o size=8m,transport={transport}
        pid=$(pgrep -f "[p]ython.*cctmpfs cctmpfs {mp}")
        echo data > {mp}/f
        kill -TERM $pid
        for i in $(seq 1 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
        if kill -0 $pid 2>/dev/null; then echo "daemon ignored SIGTERM"; exit 1; fi
        if mountpoint -q {mp}; then echo "still mounted"; exit 1; fi
        """)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mounting_over_a_non_empty_directory_works_as_on_tmpfs(mount_cct, tmpfs_mount, tmp_path):
    for kind in ("tmpfs", "cctmpfs"):
        d = tmp_path / kind
        d.mkdir()
        (d / "old").write_text("under the mount")
        if kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)], check=True)
            try:
                assert os.listdir(d) == []
            finally:
                subprocess.run(["umount", str(d)], check=True)
        else:
            m = mount_cct("size=8m", mountpoint=str(d))
            assert os.listdir(m) == []
            Path(m, "new").write_text("on the mount")
            assert m.unmount() == 0
        assert os.listdir(d) == ["old"] and (d / "old").read_text() == "under the mount"


# ---- several users ----------------------------------------------------------------------------

@pytest.fixture
def two_users(new_users):
    """Two real unprivileged accounts, created for the test and removed after."""
    return new_users(2)


AS_USER = r"""
import errno, json, os, sys
root, me, other = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
mine = os.path.join(root, me)
def create():
    with open(mine, "w") as f:
        f.write("mine")
    os.chmod(mine, 0o600)
attempt("create", create)
theirs = os.path.join(root, other)
if os.path.exists(theirs):
    attempt("read_other", lambda: open(theirs).read())
    attempt("write_other", lambda: open(theirs, "a").write("x"))
    attempt("unlink_other", lambda: os.unlink(theirs))
    attempt("rename_other", lambda: os.rename(theirs, os.path.join(root, "stolen")))
    attempt("rename_over_other", lambda: os.rename(mine, theirs))
attempt("read_trusted", lambda: os.getxattr(root, "trusted.cctmpfs.stats"))
attempt("set_trusted", lambda: os.setxattr(mine, "trusted.x", b"1"))
attempt("set_user_xattr", lambda: os.setxattr(mine, "user.x", b"1"))
attempt("mkdir", lambda: os.mkdir(os.path.join(root, me + ".d")))
print(json.dumps(out))
"""


def run_as(user: pwd.struct_passwd, root: str, other: str) -> dict:
    r = subprocess.run(as_user_argv(user) + [sys.executable, "-c", AS_USER, root, user.pw_name, other],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_users_share_a_sticky_root_as_on_tmpfs(two_users, mount_cct, tmpfs_mount):
    a, b = two_users
    results = {}
    for kind, mp in (("tmpfs", tmpfs_mount("size=16m,mode=1777")),
                     ("cctmpfs", mount_cct("size=16m,mode=1777"))):
        # The test mount points sit in 0700 directories: let the users through.
        for parent in (Path(mp).parent, Path(mp).parent.parent):
            if str(parent).startswith(("/tmp/cctmpfs-tests", "/tmp/pytest")):
                os.chmod(parent, 0o711)
        b_first = run_as(b, mp, a.pw_name)
        a_second = run_as(a, mp, b.pw_name)
        st = os.stat(Path(mp, b.pw_name))
        results[kind] = (b_first, a_second, st.st_uid, oct(st.st_mode & 0o7777),
                         Path(mp, b.pw_name).read_text())
    assert results["cctmpfs"] == results["tmpfs"]
    b_first, a_second, owner, mode, content = results["cctmpfs"]
    assert b_first["create"] == a_second["create"] == "ok"
    assert a_second["read_other"] == "EACCES" and a_second["write_other"] == "EACCES"
    assert a_second["unlink_other"] == "EPERM" and a_second["rename_other"] == "EPERM"
    assert a_second["rename_over_other"] == "EPERM"
    # trusted.* is the kernel's to refuse: the stats channel never answers a user.
    assert a_second["set_trusted"] == "EPERM" and a_second["read_trusted"] == "ENODATA"
    assert a_second["set_user_xattr"] == "ok"
    assert (owner, mode, content) == (b.pw_uid, "0o600", "mine")


# ---- programs that live in /tmp -------------------------------------------------------------

PROGRAMS = REPO / "tests" / "mounted" / "tmp_programs.py"


def run_programs_on_tmp(kind: str, keep: str, transport: str = "llfuse") -> tuple[dict, str]:
    """tmp_programs.py with a fresh `kind` mounted on /tmp, in a private namespace.

    Whatever this run needs from the real /tmp (a checkout or venv that lives
    there) is bound back into the new /tmp, from `keep`, a bind of the old one.
    Returns (the programs' results, the daemon's stats and check report)."""
    needed = sorted({"/tmp/" + Path(p).relative_to("/tmp").parts[0]
                     for p in (str(REPO), sys.prefix, os.path.realpath(sys.base_prefix),
                               os.path.realpath(sys.executable))
                     if p.startswith("/tmp/")})
    mount = {"tmpfs": "mount -t tmpfs -o size=2g,mode=1777 tmpfs /tmp",
             "cctmpfs": f"cctmpfs cctmpfs /tmp -o size=2g,mode=1777,transport={transport}"}[kind]
    rebind = "\n".join(f"mkdir -p {p}; mount --bind {keep}{p[4:]} {p}" for p in needed)
    after = ("cctmpfs stats --json --settle /tmp | tr -d '\\n'; echo; "
             "cctmpfs check /tmp | tr -d '\\n'; echo") if kind == "cctmpfs" else "echo; echo"
    r = in_namespace(f"""
        mount --rbind /tmp {keep}
        {mount}
        {rebind}
        test "$(findmnt -n -o FSTYPE /tmp)" = "{'fuse.cctmpfs' if kind == 'cctmpfs' else 'tmpfs'}"
        cd /
        {sys.executable} {PROGRAMS}
        {after}
        umount -R /tmp
        """, timeout=600)
    assert r.returncode == 0, f"{kind}: {r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    lines = r.stdout.splitlines()
    return json.loads(lines[0]), "\n".join(lines[1:])


def test_programs_that_use_tmp_behave_as_on_tmpfs(transport):
    keep = tempfile.mkdtemp(prefix="cct-oldtmp.", dir="/var/tmp")
    try:
        ref, _ = run_programs_on_tmp("tmpfs", keep)
        got, after = run_programs_on_tmp("cctmpfs", keep, transport)
    finally:
        os.rmdir(keep)
    for name in ref:
        assert got[name] == ref[name], f"{name}: cctmpfs {got[name]!r}, tmpfs {ref[name]!r}"
    # The reference run itself did what each program is meant to do.
    assert ref["gcc"] == {"rcs": [0, 0, 0], "out": "hello 42\n"}
    assert ref["pip_wheel"]["rc"] == 0 and ref["pip_wheel"]["wheels"] == ["cct_probe-1.0-py3-none-any.whl"]
    assert ref["git"]["fsck"] == 0 and ref["git"]["packs"] == 1 and set(ref["git"]["rcs"]) == {0}
    assert ref["sqlite_wal"] == {"mode": "wal", "readers": ["ok", "ok"], "count": 3000,
                                 "check": "ok", "wal": True}
    assert ref["tar"]["same"] and ref["tar"]["rc"] == [0, 0]
    assert ref["fifo"] == {"rc": 0, "fifo": True, "same": True, "bytes": 1 << 20}
    assert ref["unix_socket"] == {"socket": True, "replies": [True, True, True]}
    assert ref["tempfile"]["gettempdir"] == "/tmp" and ref["tempfile"]["tmpdir_gone"]
    stats_line, check_line = after.splitlines()[:2]
    assert json.loads(stats_line)["internal_errors"] == 0
    assert check_line == "/tmp: consistent"


# ---- the shipped examples ---------------------------------------------------------------------

DROP_IN = REPO / "examples" / "systemd" / "tmp.mount.d" / "cctmpfs.conf"

#: systemd's own tmp.mount (Debian ships it in /usr/share/systemd), which the drop-in changes.
TMP_MOUNT_UNIT = """\
[Unit]
Description=Temporary Directory /tmp
ConditionPathIsSymbolicLink=!/tmp
DefaultDependencies=no
Conflicts=umount.target
Before=local-fs.target umount.target
After=swap.target

[Mount]
What=tmpfs
Where=/tmp
Type=tmpfs
Options=mode=1777,strictatime,nosuid,nodev,size=50%%,nr_inodes=1m
"""


def test_systemd_drop_in_is_a_valid_unit_whose_options_mount(tmp_path, transport):
    """systemd-analyze reads tmp.mount with the drop-in and finds nothing wrong,
    and the options it gives mount(8) are ones cctmpfs accepts. (PID 1 here is
    not systemd, so the unit itself cannot be started.)"""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    (tmp_path / "tmp.mount").write_text(TMP_MOUNT_UNIT)
    (tmp_path / "tmp.mount.d").mkdir()
    shutil.copy(DROP_IN, tmp_path / "tmp.mount.d")
    r = subprocess.run([analyze, "verify", str(tmp_path / "tmp.mount")], capture_output=True,
                       text=True, env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:"))
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    options = [line.split("=", 1)[1] for line in DROP_IN.read_text().splitlines()
               if line.startswith("Options=")]
    assert len(options) == 1
    mp = tmp_path / "mp"
    mp.mkdir()
    # What mount(8) hands the helper: the options with systemd's %% unescaped.
    opts = options[0].replace('%%', '%') + f",transport={transport}"
    r = in_namespace(f"""
        mount.cctmpfs cctmpfs {mp} -f -o {opts}
        mount -t fuse.cctmpfs -o {opts} cctmpfs {mp}
        findmnt -n -o FSTYPE,OPTIONS {mp}
        umount {mp}
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    fstype, opts = r.stdout.split()
    assert fstype == "fuse.cctmpfs" and {"nosuid", "nodev"} <= set(opts.split(","))


def test_fstab_example_mounts(tmp_path, transport):
    line = next(line for line in (REPO / "examples" / "fstab").read_text().splitlines()
                if line and not line.startswith("#"))
    source, _target, fstype, options, *_ = line.split()
    mp = tmp_path / "tmp"
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{source} {mp} {fstype} {options},transport={transport} 0 0\n")
    r = in_namespace(f"""
        mount -T {fstab} {mp}
        findmnt -n -o FSTYPE {mp}
        stat -c %a {mp}
        umount {mp}
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["fuse.cctmpfs", "1777"]


def test_sigkill_leaves_enotconn_until_fusermount_uz_and_a_new_mount(tmp_path, transport):
    """What the README says happens when the daemon dies."""
    mp = tmp_path / "tmp"
    mp.mkdir()
    r = in_namespace(f"""
        cctmpfs cctmpfs {mp} -o size=8m,transport={transport}
        echo before > {mp}/f
        pid=$(pgrep -f "[p]ython.*cctmpfs cctmpfs {mp}")
        kill -KILL $pid
        sleep 0.5
        if stat {mp}/f 2> {tmp_path}/stat.err; then echo "still answering"; exit 1; fi
        if cctmpfs stats {mp} 2> {tmp_path}/stats.err; then echo "stats answered"; exit 1; fi
        fusermount -uz {mp}
        cctmpfs cctmpfs {mp} -o size=8m,transport={transport}
        test ! -e {mp}/f                 # the data is gone, as after a reboot
        echo after > {mp}/g
        cat {mp}/g
        umount {mp}
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Transport endpoint is not connected" in (tmp_path / "stat.err").read_text()
    assert "ENOTCONN" in (tmp_path / "stats.err").read_text()
    assert r.stdout.strip() == "after"
