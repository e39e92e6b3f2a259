"""Dedup on a real mount: copies of a real directory tree cost one copy, a
change to one copy leaves the others alone, concurrent processes writing the
same content end with one stored copy, and nothing leaks once all is removed."""

from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from test_cli import run_cli  # tests/mounted is on sys.path (rootdir imports)

pytestmark = pytest.mark.mounted

COPIES = 10
TREE_BYTES = 20 << 20


def stdlib_files(limit: int) -> list[Path]:
    """Real source and data files of this Python's standard library, in a
    fixed order, adding up to at least `limit` bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "site-packages"))
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if p.is_symlink() or not p.is_file():
                continue
            out.append(p)
            total += p.stat().st_size
            if total >= limit:
                return out
    raise AssertionError(f"the standard library at {root} holds only {total} bytes")


def make_tree(dest: Path, limit: int = TREE_BYTES) -> tuple[int, Path]:
    """Copy stdlib files into dest, keeping their relative paths; returns (bytes, stdlib root)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for p in stdlib_files(limit):
        target = dest / p.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
        total += p.stat().st_size
    return total, root


def same_trees(a: Path, b: Path) -> list[str]:
    """Relative paths whose content differs between a and b (or exist in one only)."""
    diff = []
    for dirpath, _dirs, files in os.walk(a):
        for name in files:
            rel = Path(dirpath, name).relative_to(a)
            if not (b / rel).exists() or not filecmp.cmp(a / rel, b / rel, shallow=False):
                diff.append(str(rel))
    count_b = sum(len(f) for _d, _s, f in os.walk(b))
    count_a = sum(len(f) for _d, _s, f in os.walk(a))
    if count_a != count_b:
        diff.append(f"{count_a} files against {count_b}")
    return diff


def test_ten_copies_of_a_real_tree_cost_one_copy(mount_cct, tmp_path):
    mp = mount_cct("size=2g")
    copy0 = Path(mp, "copy0")
    total, _ = make_tree(copy0)
    assert total >= TREE_BYTES
    one = mp.stats(settle=True)
    assert one["dedup"]["enabled"]
    stored_one = one["stored_bytes"]
    assert 0 < stored_one < total / 2      # compressed, too

    for i in range(1, COPIES):
        r = subprocess.run(["cp", "-a", str(copy0), str(Path(mp, f"copy{i}"))],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    s = mp.stats(settle=True)
    assert s["stored_bytes"] <= 1.1 * stored_one, (s["stored_bytes"], stored_one)
    assert s["logical_bytes"] >= COPIES * one["logical_bytes"] * 0.99
    assert s["dedup_ratio"] >= 0.9 * COPIES
    assert s["dedup"]["saved_blocks"] >= (COPIES - 1) * one["blocks"]["stored"] * 0.9
    assert s["total_ratio"] == pytest.approx(s["dedup_ratio"] * s["compression_ratio"], rel=0.01)

    # A private, unmodified reference copy of the tree outside the mount.
    reference = tmp_path / "reference"
    shutil.copytree(copy0, reference)

    # Change copy 3 in every way a writer can: overwrite in the middle,
    # append, truncate, replace, delete; the other nine must not change.
    changed = Path(mp, "copy3")
    files = sorted(p for p in changed.rglob("*") if p.is_file() and p.stat().st_size > 8192)
    assert len(files) >= 5
    with open(files[0], "r+b") as f:
        f.seek(4096)
        f.write(b"overwritten in the middle")
    with open(files[1], "ab") as f:
        f.write(b"appended\n")
    os.truncate(files[2], 100)
    files[3].write_bytes(b"replaced")
    files[4].unlink()
    os.sync()
    for i in range(COPIES):
        if i != 3:
            assert same_trees(reference, Path(mp, f"copy{i}")) == [], f"copy{i} changed"
    diff = same_trees(reference, changed)
    assert sorted(diff[:-1]) == sorted(str(p.relative_to(changed)) for p in files[:5])
    assert diff[-1].endswith("files against %d" % (int(diff[-1].split()[0]) - 1))   # one deleted
    assert files[2].read_bytes() == (reference / files[2].relative_to(changed)).read_bytes()[:100]

    # The sharing is there after the change too; then removing everything
    # leaves nothing stored and nothing in the index.
    s = mp.stats(settle=True)
    assert s["stored_bytes"] <= 1.1 * stored_one
    for i in range(COPIES):
        shutil.rmtree(Path(mp, f"copy{i}"))
    s = mp.stats(settle=True)
    assert s["stored_bytes"] == 0 and s["stored_logical_bytes"] == 0
    assert s["dedup"]["index_entries"] == 0
    assert s["blocks"] == {"dirty": 0, "sealing": 0, "cached": 0, "stored": 0}
    assert s["logical_bytes"] == 0 and s["buffer_bytes"] == 0


def test_dedup_off_stores_every_copy(mount_cct):
    mp = mount_cct("size=256m,dedup=off")
    a = Path(mp, "a")
    make_tree(a, 2 << 20)
    one = mp.stats(settle=True)["stored_bytes"]
    for i in range(3):
        shutil.copytree(a, Path(mp, f"b{i}"))
    s = mp.stats(settle=True)
    assert not s["dedup"]["enabled"] and s["dedup"]["index_entries"] == 0
    assert s["stored_bytes"] >= 3.9 * one
    r = run_cli("stats", mp)
    assert r.returncode == 0, r.stderr
    header, row = (line.split() for line in r.stdout.splitlines())
    assert dict(zip(header, row))["DEDUP"] == "off"


WRITER = r"""
import os, sys
path, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import random
rng = random.Random(seed)
words = [b"alpha ", b"beta ", b"gamma\n", b"delta ", b"epsilon ", b"zeta "]
data = b"".join(rng.choice(words) for _ in range(size // 4))[:size]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for off in range(0, size, 65536):
    os.pwrite(fd, data[off:off + 65536], off)
os.close(fd)
"""


def test_processes_writing_identical_content_at_once_end_with_one_copy(mount_cct):
    mp = mount_cct("size=512m")
    size = 8 << 20                      # 64 blocks of 128 KiB
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(Path(mp, f"w{i}")), "7", str(size)])
             for i in range(6)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 6
    s = mp.stats(settle=True)
    assert s["dedup"]["index_entries"] == 64
    assert s["blocks"]["stored"] + s["blocks"]["cached"] == 6 * 64
    assert s["dedup"]["saved_blocks"] == 5 * 64
    digests = {hashlib.sha256(Path(mp, f"w{i}").read_bytes()).hexdigest() for i in range(6)}
    assert len(digests) == 1


def test_check_command_reports_a_consistent_mount(mount_cct):
    mp = mount_cct("size=64m")
    make_tree(Path(mp, "t"), 1 << 20)
    r = run_cli("check", mp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"{mp}: consistent"
