"""Small-file packing on a real mount (issue 15 item 4): a tree of small
files copied with cp -a is packed by the idle sealer, stores fewer bytes,
reads back identical (after drop_caches too), stays identical to a tmpfs
copy through writes, truncates and deletes of packed files, and packs are
evicted to a backing device and read back. The waits are bounded and the
assertions are on bytes and counters, never on time."""

from __future__ import annotations

import filecmp
import os
import random
import subprocess
import time

import pytest

from test_cli import run_cli  # tests/mounted is on sys.path (rootdir imports)
from test_eviction import drop_caches, loop_device  # noqa: F401 - a fixture

pytestmark = pytest.mark.mounted

MiB = 1 << 20
#: Quiet time (2 s) plus passes of 32 packs each; generous for 2 busy cores.
DEADLINE = 90.0


def source_tree(dest: str) -> str:
    """A tree of small real files (a few stdlib packages) at dest/src."""
    import json as anchor   # any pure-Python stdlib package
    top = os.path.dirname(os.path.dirname(anchor.__file__))
    src = os.path.join(dest, "src")
    os.mkdir(src)
    for pkg in ("json", "email", "urllib", "http", "xml", "logging", "importlib", "asyncio"):
        if os.path.isdir(os.path.join(top, pkg)):
            subprocess.run(["cp", "-a", os.path.join(top, pkg), src], check=True)
    return src


def wait_packed(mp) -> dict:  # type: ignore[no-untyped-def]
    """Stats once the idle sealer made packs and stopped making more."""
    end = time.monotonic() + DEADLINE
    last = -1
    s = mp.stats(settle=True)
    while time.monotonic() < end:
        time.sleep(1.0)
        s = mp.stats()
        made = s["packing"]["packs_made"]
        if made and made == last:
            return s
        last = made
    pytest.fail(f"no packing within {DEADLINE} s: {s['packing']}")


def same_tree(a: str, b: str) -> None:
    for d, _dirs, files in os.walk(a):
        rel = os.path.relpath(d, a)
        for name in files:
            pa, pb = os.path.join(d, name), os.path.join(b, rel, name)
            assert filecmp.cmp(pa, pb, shallow=False), pb
    n_a = sum(len(f) for _d, _s, f in os.walk(a))
    n_b = sum(len(f) for _d, _s, f in os.walk(b))
    assert n_a == n_b


def test_a_copied_tree_is_packed_reads_back_and_survives_changes(mount_cct, tmp_path) -> None:
    src = source_tree(str(tmp_path))
    mp = mount_cct("size=256m")
    dst = os.path.join(mp, "t")
    subprocess.run(["cp", "-a", src, dst], check=True)
    before = mp.stats(settle=True)
    s = wait_packed(mp)
    pk = s["packing"]
    assert pk["enabled"] is True
    assert pk["members"] > 100 and pk["packs"] < pk["members"], pk
    assert s["stored_bytes"] < before["stored_bytes"], (s["stored_bytes"], before["stored_bytes"])
    assert s["stored_bytes"] == before["stored_bytes"] - pk["bytes_saved"] or s["recompress"]["recompressed"]
    drop_caches()
    same_tree(src, dst)
    assert mp.stats()["packing"]["decodes"] > 0
    # Change packed files the same way on the source (a tmpfs-like reference)
    # and on the mount: writes move members back to private blocks.
    rng = random.Random(1)
    files = sorted(os.path.relpath(os.path.join(d, f), src)
                   for d, _s, fs in os.walk(src) for f in fs)
    for rel in rng.sample(files, 40):
        op = rng.choice(["append", "overwrite", "truncate", "unlink"])
        for root in (src, dst):
            p = os.path.join(root, rel)
            if op == "append":
                with open(p, "ab") as f:
                    f.write(b"# appended\n")
            elif op == "overwrite":
                with open(p, "r+b") as f:
                    f.seek(3)
                    f.write(b"XYZ")
            elif op == "truncate":
                os.truncate(p, 17)
            else:
                os.unlink(p)
    drop_caches()
    same_tree(src, dst)
    s = mp.stats(settle=True)
    assert s["packing"]["members_freed"] > 0
    r = run_cli("check", mp)
    assert r.returncode == 0, r.stdout + r.stderr
    subprocess.run(["rm", "-rf", dst], check=True)
    s = mp.stats(settle=True)
    assert s["packing"]["packs"] == s["packing"]["members"] == 0, s["packing"]
    assert s["stored_bytes"] == 0


def test_no_packing_with_pack_off(mount_cct, tmp_path) -> None:
    src = source_tree(str(tmp_path))
    mp = mount_cct("size=256m,pack=off")
    subprocess.run(["cp", "-a", src, os.path.join(mp, "t")], check=True)
    s = mp.stats(settle=True)
    assert s["packing"]["enabled"] is False
    time.sleep(4.0)   # past the quiet time: a few idle passes; nothing may be packed
    assert mp.stats()["packing"]["packs_made"] == 0


def test_packs_are_evicted_and_read_back(mount_cct, loop_device, tmp_path) -> None:  # noqa: F811
    src = source_tree(str(tmp_path))
    dev = loop_device(512 * MiB)
    mp = mount_cct(f"size=1g,ram=24m,backing={dev}")
    dst = os.path.join(mp, "t")
    subprocess.run(["cp", "-a", src, dst], check=True)
    s = wait_packed(mp)
    assert s["packing"]["packs"] > 0
    # Newer data past the budget pushes the (older) packs out to the device.
    rng = random.Random(2)
    for i in range(6):
        with open(os.path.join(mp, f"big{i}"), "wb") as f:
            f.write(rng.randbytes(8 * MiB))
    s = mp.stats(settle=True)
    assert s["device"]["blocks"] > 0
    drop_caches()
    same_tree(src, dst)
    s = mp.stats()
    assert s["device"]["reads"] > 0 and s["device"]["checksum_errors"] == 0
    assert s["packing"]["members"] > 0
    r = run_cli("check", mp)
    assert r.returncode == 0, r.stdout + r.stderr
