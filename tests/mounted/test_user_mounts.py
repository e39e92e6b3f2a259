"""Mounts made by users, as libfuse makes them: through the setuid fusermount
(the _FUSE_COMMFD protocol), unmounted with `fusermount -u`, auto_unmount,
allow_other/allow_root and fuse.conf, an fstab `user` line (issue 18).

Every test runs as root a bash script in a private mount and PID namespace
(test_system.in_namespace): real users (made with useradd, removed after)
mount real FUSE file systems with the real fusermount inside it, and when
the script ends the namespace ends with every process in it, daemons and
fusermount helpers included, and with every mount. The machine is changed
in nothing but the accounts, which the new_users fixture always removes.

Inside the namespace, and only there, USER_PRELUDE makes the machine one a
user can mount on, where it is not: /root (where this Python may live) is
0700 here, so a tmpfs of mode 0755 covers it with the interpreter's
directory bound back in; /dev/fuse is 0600 here, so a node of mode 0666 (as
Debian's udev makes it) is bound over it; /etc/fuse.conf is the test's own.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import sys
from pathlib import Path

import pytest

from conftest import as_user_argv, new_dir
from test_system import in_namespace

pytestmark = pytest.mark.mounted

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fusermount_is_there() -> None:
    """Skip only when the machine truly cannot: no setuid fusermount."""
    fm = shutil.which("fusermount")
    if fm is None:
        pytest.skip("fusermount is not installed (package fuse): users cannot mount FUSE here")
    if not os.stat(fm).st_mode & stat.S_ISUID:
        pytest.skip(f"{fm} is not setuid root: users cannot mount FUSE here")


def _under_closed_root() -> list[str]:
    """The top directories under /root that this Python and checkout need,
    if /root is closed to other users."""
    if os.stat("/root").st_mode & 0o005 == 0o005:
        return []
    needed = {str(REPO), sys.prefix, os.path.realpath(sys.base_prefix),
              os.path.realpath(sys.executable)}
    return sorted({"/root/" + Path(p).relative_to("/root").parts[0]
                   for p in needed if p.startswith("/root/")})


def user_prelude(scratch: str, fuse_conf: str = "", fstab: str = "") -> str:
    """Root's first lines in the namespace: make this machine one a user can
    mount on (see the module docstring), with fuse.conf (and fstab) as given."""
    # The daemons import this checkout (as conftest.daemon_env), whoever starts them.
    lines = [f"export PYTHONPATH={shlex.quote(str(REPO))}",
             f"mkdir -p {scratch}/old-root {scratch}/dev",
             f"printf %s {shlex.quote(fuse_conf)} > {scratch}/fuse.conf",
             f"mount --bind {scratch}/fuse.conf /etc/fuse.conf"]
    if fstab:
        lines += [f"printf %s {shlex.quote(fstab)} > {scratch}/fstab",
                  f"mount --bind {scratch}/fstab /etc/fstab"]
    keep = _under_closed_root()
    if keep:
        lines += [f"mount --bind /root {scratch}/old-root",
                  "mount -t tmpfs -o mode=755 tmpfs /root"]
        for d in keep:
            lines += [f"mkdir -p {d}", f"mount --bind {scratch}/old-root/{d[6:]} {d}"]
    if os.stat("/dev/fuse").st_mode & 0o006 != 0o006:
        lines += [f"mount -t tmpfs -o mode=755 tmpfs {scratch}/dev",
                  f"mknod -m 666 {scratch}/dev/fuse c 10 229",
                  f"mount --bind {scratch}/dev/fuse /dev/fuse"]
    return "\n".join(lines)


def as_user(user) -> str:
    """The shell words that run a command as user."""
    return " ".join(as_user_argv(user))


def run_as_users(script: str, *, fuse_conf: str = "", fstab: str = "", timeout: float = 120):
    scratch = new_dir("ns")
    try:
        return in_namespace(user_prelude(scratch, fuse_conf, fstab) + "\n" + script,
                            timeout=timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def user_mountpoint(user) -> str:
    """An empty directory the user owns, in a directory every user can pass."""
    mp = os.path.join(new_dir("user"), "mp")
    os.mkdir(mp)
    os.chown(mp, user.pw_uid, user.pw_gid)
    return mp


#: Shell functions. `daemon MP`: the pattern of MP's daemon for pgrep -f
#: ("[p]ython" keeps it from matching this script, whose text is in bash's
#: argv). `mounted MP`: in the mount table (mountpoint(1) stats, and a dead
#: daemon's mount answers ENOTCONN). `gone MP`, `unmounted MP`: wait up to
#: 10 s until the daemon and its mount, or the mount, are gone.
GONE = r"""
daemon() { echo "[p]ython.*cctmpfs [^ ]* $1 "; }
mounted() { grep -q "^[^ ]* $1 " /proc/self/mounts; }
gone() {
    for i in $(seq 1 100); do
        if ! pgrep -f "$(daemon $1)" >/dev/null && ! mounted "$1"; then return 0; fi
        sleep 0.1
    done
    return 1
}
unmounted() {
    for i in $(seq 1 100); do mounted "$1" || return 0; sleep 0.1; done
    return 1
}
"""


def test_a_user_mounts_and_unmounts(new_users, transport, tmp_path):
    """`cctmpfs SOURCE MOUNTPOINT -o ...` as a user: mounted through
    fusermount, files are the user's, `fusermount -u` ends the daemon."""
    (user,) = new_users(1)
    mp = user_mountpoint(user)
    r = run_as_users(GONE + f"""
        {as_user(user)} cctmpfs usrc {mp} -o size=8m,transport={transport}
        findmnt -n -o SOURCE,FSTYPE,OPTIONS {mp}
        {as_user(user)} sh -c 'echo mine > {mp}/f && mkdir {mp}/d'
        {as_user(user)} stat -c '%u %g' {mp}/f {mp}/d {mp}
        cctmpfs stats {mp} --json > {tmp_path}/stats.json
        {as_user(user)} fusermount -u {mp}
        gone {mp} || {{ echo "still mounted or daemon left"; exit 1; }}
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    source, fstype, options = lines[0].split()
    assert (source, fstype) == ("usrc", "fuse.cctmpfs")
    assert f"user_id={user.pw_uid}" in options.split(",")
    assert "default_permissions" in options.split(",")
    ids = f"{user.pw_uid} {user.pw_gid}"
    assert lines[1:4] == [ids, ids, ids]     # the root of the mount is the user's too
    import json
    info = json.loads((tmp_path / "stats.json").read_text())["transport"]
    assert info["mounted_by"] == "fusermount" and info["auto_unmount"] is False


@pytest.mark.parametrize("transport", ["native"])
@pytest.mark.parametrize("extra", ["", ",auto_unmount"], ids=["plain", "auto_unmount"])
def test_sigterm_unmounts_a_user_mount(new_users, transport, extra):
    """SIGTERM unmounts and ends the daemon; with auto_unmount the
    fusermount helper must go with it, not stay behind."""
    (user,) = new_users(1)
    mp = user_mountpoint(user)
    r = run_as_users(GONE + f"""
        {as_user(user)} cctmpfs usrc {mp} -o size=8m,transport={transport}{extra}
        {as_user(user)} sh -c 'echo x > {mp}/f'
        pkill -TERM -f "$(daemon {mp})"
        gone {mp} || {{ echo "SIGTERM did not unmount"; exit 1; }}
        for i in $(seq 1 50); do pgrep -x fusermount >/dev/null || break; sleep 0.1; done
        if pgrep -x fusermount; then echo "helper left after SIGTERM"; exit 1; fi
        """)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sigkill_with_auto_unmount_clears_the_mount(new_users, transport):
    """fusermount stays as a helper and unmounts when the daemon dies; on a
    clean unmount the helper goes too."""
    (user,) = new_users(1)
    mp = user_mountpoint(user)
    r = run_as_users(GONE + f"""
        {as_user(user)} cctmpfs usrc {mp} -o size=8m,auto_unmount,transport={transport}
        pgrep -x fusermount >/dev/null || {{ echo "no auto_unmount helper"; exit 1; }}
        {as_user(user)} sh -c 'echo x > {mp}/f'
        pkill -KILL -f "$(daemon {mp})"
        unmounted {mp} || {{ echo "the mount stayed after SIGKILL"; exit 1; }}
        for i in $(seq 1 50); do pgrep -x fusermount >/dev/null || break; sleep 0.1; done
        if pgrep -x fusermount; then echo "helper left after it unmounted"; exit 1; fi
        # A clean exit unmounts, and the helper must not be left behind.
        {as_user(user)} cctmpfs usrc {mp} -o size=8m,auto_unmount,transport={transport}
        {as_user(user)} fusermount -u {mp}
        gone {mp} || {{ echo "still mounted or daemon left"; exit 1; }}
        for i in $(seq 1 50); do pgrep -x fusermount >/dev/null || break; sleep 0.1; done
        if pgrep -x fusermount; then echo "helper left after a clean unmount"; exit 1; fi
        """)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("transport", ["native"])
def test_root_with_auto_unmount_mounts_through_fusermount(transport, tmp_path):
    """As libfuse: auto_unmount makes even root's mount a fusermount one."""
    mp = new_dir("rootmp")
    r = run_as_users(GONE + f"""
        cctmpfs rsrc {mp} -o size=8m,auto_unmount,transport={transport}
        cctmpfs stats {mp} --json > {tmp_path}/stats.json
        pkill -KILL -f "$(daemon {mp})"
        unmounted {mp} || {{ echo "the mount stayed after SIGKILL"; exit 1; }}
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    import json
    info = json.loads((tmp_path / "stats.json").read_text())["transport"]
    assert info["mounted_by"] == "fusermount" and info["auto_unmount"] is True


@pytest.mark.parametrize("transport", ["native"])
def test_sigkill_without_auto_unmount_leaves_a_mount_fusermount_u_clears(new_users, transport,
                                                                          tmp_path):
    (user,) = new_users(1)
    mp = user_mountpoint(user)
    r = run_as_users(GONE + f"""
        {as_user(user)} cctmpfs usrc {mp} -o size=8m,transport={transport}
        pkill -KILL -f "$(daemon {mp})"
        sleep 0.5
        mounted {mp} || {{ echo "gone by itself"; exit 1; }}
        if {as_user(user)} stat {mp}/f 2> {tmp_path}/stat.err; then exit 1; fi
        {as_user(user)} fusermount -u {mp}
        unmounted {mp} || {{ echo "fusermount -u did not clear it"; exit 1; }}
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Transport endpoint is not connected" in (tmp_path / "stat.err").read_text()


@pytest.mark.parametrize("transport", ["native"])
def test_a_user_mount_under_writeback_cache_keeps_the_kernels_dirty_bound(new_users, transport,
                                                                           tmp_path):
    """A user cannot set the bdi's max_bytes (writeback.py, rule 1): the
    reserve grows to the kernel's own strict bound instead, so a writer that
    fills a small mount gets ENOSPC at write(2), as on tmpfs, and everything
    it wrote reads back from the daemon."""
    (user,) = new_users(1)
    mp = user_mountpoint(user)
    src = Path(new_dir("src"), "data")
    src.write_bytes(os.urandom(40 << 20))
    src.chmod(0o644)
    # Root may not stat a user's mount: its device comes from mountinfo.
    bdi = f"/sys/class/bdi/$(awk '$5 == \"{mp}\" {{print $3}}' /proc/self/mountinfo)"
    try:
        r = run_as_users(GONE + f"""
            {as_user(user)} cctmpfs usrc {mp} \
                -o size=24m,fuse_on=writeback_cache,transport={transport}
            cat {bdi}/max_bytes {bdi}/strict_limit
            if {as_user(user)} dd if={src} of={mp}/f bs=1M 2> {tmp_path}/dd.err; then
                echo "40 MiB fitted in size=24m"; exit 1
            fi
            sync; echo 3 > /proc/sys/vm/drop_caches
            {as_user(user)} stat -c %s {mp}/f
            {as_user(user)} cmp -n "$({as_user(user)} stat -c %s {mp}/f)" {src} {mp}/f || exit 1
            cctmpfs stats {mp} --json > {tmp_path}/stats.json
            {as_user(user)} fusermount -u {mp}
            gone {mp} || {{ echo "still mounted or daemon left"; exit 1; }}
            """)
    finally:
        shutil.rmtree(src.parent, ignore_errors=True)
    assert r.returncode == 0, r.stdout + r.stderr
    kernels_bound, strict, stored = (int(x) for x in r.stdout.split())
    assert strict == 1
    assert "No space left on device" in (tmp_path / "dd.err").read_text()
    assert stored > 8 << 20
    import json
    wb = json.loads((tmp_path / "stats.json").read_text())["transport"]["writeback"]
    # The kernel derives max_bytes from its ratio and the memory free now:
    # read again later, it moves by a few KB.
    assert kernels_bound > 0 and abs(wb["bdi_max_bytes"] - kernels_bound) < kernels_bound / 100
    # Not the 6 MiB a root mount of size=24m holds back (test_native_flags).
    assert wb["reserve_bytes"] == 2 * wb["bdi_max_bytes"]
    assert wb["direct_io_opens"] > 0


def test_allow_other_without_user_allow_other_is_refused_clearly(new_users, transport, tmp_path):
    (user,) = new_users(1)
    mp = user_mountpoint(user)
    r = run_as_users(f"""
        for opt in allow_other allow_root; do
            if {as_user(user)} cctmpfs usrc {mp} -o size=8m,$opt,transport={transport} \
                    2> {tmp_path}/$opt.err; then echo "$opt mounted"; exit 1; fi
            if grep -q " {mp} " /proc/self/mounts; then echo "$opt left a mount"; exit 1; fi
        done
        """, fuse_conf="#user_allow_other\n")
    assert r.returncode == 0, r.stdout + r.stderr
    for opt in ("allow_other", "allow_root"):
        err = (tmp_path / f"{opt}.err").read_text()
        assert "user_allow_other" in err and "/etc/fuse.conf" in err, err
        assert "Traceback" not in err, err
        if transport == "native":
            assert err.startswith("cctmpfs: ") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("transport", ["native"])
def test_allow_other_and_allow_root_with_user_allow_other(new_users, transport, tmp_path):
    """allow_other lets another user in (the kernel still checks modes);
    allow_root lets in the mounter and root only."""
    a, b = new_users(2)
    mp = user_mountpoint(a)
    r = run_as_users(GONE + f"""
        {as_user(a)} cctmpfs usrc {mp} -o size=8m,mode=1777,allow_other,transport={transport}
        {as_user(b)} sh -c 'echo theirs > {mp}/b && cat {mp}/b'
        stat -c %u {mp}/b
        {as_user(a)} fusermount -u {mp}
        gone {mp}
        {as_user(a)} cctmpfs usrc {mp} -o size=8m,mode=1777,allow_root,transport={transport}
        {as_user(a)} sh -c 'echo mine > {mp}/a'
        cat {mp}/a
        if {as_user(b)} ls {mp} 2> {tmp_path}/b.err; then echo "b got in"; exit 1; fi
        cctmpfs stats {mp} --json > {tmp_path}/stats.json
        grep -q '"allow_root": true' {tmp_path}/stats.json
        {as_user(a)} fusermount -u {mp}
        gone {mp}
        """, fuse_conf="user_allow_other\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["theirs", str(b.pw_uid), "mine"]
    assert "Permission denied" in (tmp_path / "b.err").read_text()


@pytest.mark.parametrize("transport", ["native"])
def test_fstab_user_line_mounted_by_a_user_with_mount8(new_users, transport, tmp_path):
    (user,) = new_users(1)
    mp = user_mountpoint(user)
    r = run_as_users(GONE + f"""
        {as_user(user)} mount {mp}
        findmnt -n -o SOURCE,FSTYPE {mp}
        {as_user(user)} sh -c 'echo mine > {mp}/f'
        {as_user(user)} stat -c %u {mp}/f
        cctmpfs stats {mp} --json > {tmp_path}/stats.json
        grep -q '"mounted_by": "fusermount"' {tmp_path}/stats.json
        {as_user(user)} fusermount -u {mp}
        gone {mp} || {{ echo "still mounted or daemon left"; exit 1; }}
        """, fstab=f"usertmp {mp} fuse.cctmpfs size=8m,noauto,user,transport={transport} 0 0\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["usertmp", "fuse.cctmpfs", str(user.pw_uid)]


@pytest.mark.parametrize("transport", ["native"])
def test_a_user_mount_that_cannot_be_made_names_the_cause(new_users, transport, tmp_path):
    """No write access to the mount point, no /dev/fuse, no fusermount:
    one line naming the cause, exit 1, nothing mounted."""
    (user,) = new_users(1)
    mp = user_mountpoint(user)
    theirs = new_dir("roots")          # root's, 0755: not the user's to mount on
    r = run_as_users(f"""
        try() {{   # try NAME MOUNTPOINT: the mount must fail and leave nothing
            if {as_user(user)} cctmpfs usrc $2 -o size=8m,transport={transport} \
                    2> {tmp_path}/$1.err; then echo "$1 mounted"; exit 1; fi
            if grep -q " $2 " /proc/self/mounts; then echo "$1 left a mount"; exit 1; fi
        }}
        try access {theirs}
        touch {tmp_path}/empty
        mount --bind {tmp_path}/empty /usr/bin/fusermount
        try nofusermount {mp}
        umount /usr/bin/fusermount
        mount -t tmpfs -o mode=755 tmpfs /dev
        mknod -m 666 /dev/null c 1 3
        mknod -m 666 /dev/urandom c 1 9
        try nodevice {mp}
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    errs = {n: (tmp_path / f"{n}.err").read_text() for n in ("access", "nofusermount", "nodevice")}
    for name, err in errs.items():
        assert err.startswith("cctmpfs: ") and "Traceback" not in err, (name, err)
    assert "not permitted" in errs["access"] and "write access" in errs["access"], errs
    assert "fusermount was not found" in errs["nofusermount"], errs
    assert "modprobe fuse" in errs["nodevice"], errs
