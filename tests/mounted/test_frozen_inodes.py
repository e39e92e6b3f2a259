"""Frozen inodes through the kernel (cctmpfs/inodetable.py): a tree that the
idle pass froze into columns, its directories' entries packed, reads back
as it was copied, and changes made to it afterwards behave as on the copy
they are made to beside it, frozen again or not."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

#: The idle pass freezes once the data has been quiet for 5 s
#: (filemap.COMPACT_QUIET_SECONDS), 8,192 inodes a pass (every 0.5 s).
FREEZE_DEADLINE = 60.0


def make_tree(root: Path, seed: int = 3) -> None:
    """Directories three deep with files of many sizes, symlinks, a hard
    link, a FIFO, a device node, xattrs and odd modes."""
    rng = random.Random(seed)
    for a in range(4):
        for b in range(5):
            d = root / f"d{a}" / f"e{b}"
            d.mkdir(parents=True)
            for i in range(20):
                f = d / f"f{i}.txt"
                f.write_bytes(rng.randbytes(rng.choice([0, 10, 4096, 5000, 70000])))
                os.chmod(f, rng.choice([0o644, 0o600, 0o755, 0o4755, 0o2644]))
                os.utime(f, ns=(rng.randrange(10 ** 18), rng.randrange(10 ** 18)))
            os.symlink(f"f{rng.randrange(20)}.txt", d / "link")
    os.link(root / "d0" / "e0" / "f1.txt", root / "d1" / "hard")
    os.mkfifo(root / "fifo")
    os.mknod(root / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.setxattr(root / "d2" / "e2" / "f3.txt", "user.note", b"kept")
    os.chown(root / "d3" / "e1" / "f0.txt", 1234, 5678)


def state(root: str) -> dict[str, Any]:
    """What a reader sees of every entry but inode numbers, atimes, and a
    directory's size and mtime (the source is on another filesystem)."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content: Any = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            else:
                content = st.st_rdev
            is_dir = stat.S_ISDIR(st.st_mode)   # sizes and mtimes as each filesystem has them
            out[os.path.relpath(path, root)] = (
                st.st_mode, st.st_uid, st.st_gid, None if is_dir else st.st_size, st.st_nlink,
                content, None if is_dir else st.st_mtime_ns,
                sorted(os.listxattr(path, follow_symlinks=False)))
    return out


def wait_frozen(mp: Any, at_least: int) -> dict[str, Any]:
    end = time.monotonic() + FREEZE_DEADLINE
    while True:
        table = mp.stats()["inode_table"]
        if table["frozen"] >= at_least:
            return table
        if time.monotonic() > end:
            pytest.fail(f"not frozen after {FREEZE_DEADLINE} s: {table}")
        time.sleep(0.5)


def change(root: str) -> None:
    """The same changes, made to the copy and to the mount."""
    r = Path(root)
    os.rename(r / "d0" / "e1", r / "d3" / "moved")
    os.unlink(r / "d1" / "e2" / "f5.txt")
    os.chmod(r / "d2" / "e3" / "f7.txt", 0o640)
    with open(r / "d2" / "e0" / "f2.txt", "ab") as f:
        f.write(b"appended")
    os.utime(r / "d2" / "e0" / "f2.txt", ns=(1, 2 * 10 ** 17))   # not the time of the write
    (r / "d1" / "e4" / "new").mkdir()
    (r / "d1" / "e4" / "new" / "x").write_bytes(b"x" * 9000)
    os.utime(r / "d1" / "e4" / "new" / "x", ns=(5, 7 * 10 ** 17))
    shutil.rmtree(r / "d3" / "e2")
    os.link(r / "d0" / "e0" / "f1.txt", r / "d2" / "hard2")


def test_a_frozen_tree_reads_back_as_copied_and_takes_changes(mount_cct: Any,
                                                               tmp_path: Path) -> None:
    mp = mount_cct("size=256m")
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    subprocess.run(["cp", "-a", str(src), os.path.join(mp, "t")], check=True)
    # The tree's inodes (a hard link is one) and its top directory; the
    # mount's root is thawed by every stats call.
    inodes = len({os.lstat(os.path.join(d, n)).st_ino
                  for d, ds, fs in os.walk(src) for n in ds + fs}) + 1
    wait_frozen(mp, inodes)
    assert state(os.path.join(mp, "t")) == state(str(src))
    st = mp.stats()["inode_table"]
    assert st["thaws"] > 0 and st["freezes"] >= inodes
    change(str(src))
    change(os.path.join(mp, "t"))
    assert state(os.path.join(mp, "t")) == state(str(src))
    # Frozen again (the changed ones too), and read once more.
    freezes = mp.stats()["inode_table"]["freezes"]
    end = time.monotonic() + FREEZE_DEADLINE
    while mp.stats()["inode_table"]["freezes"] < freezes + 50:
        assert time.monotonic() < end, mp.stats()["inode_table"]
        time.sleep(0.5)
    assert state(os.path.join(mp, "t")) == state(str(src))
