"""Idle recompression on a real mount (issue 15 item 5): once the mount is
idle, the sealer recompresses cold blocks at the stronger level, stored
bytes go down and every file reads back the same. The wait is bounded and
the assertions are on bytes and counters, never on time."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.mounted

#: Quiet time (5 s) plus a few passes of 64 blocks; generous for 2 busy cores.
DEADLINE = 90.0


def python_sources(limit: int) -> list[bytes]:
    """Contents of real .py files of the stdlib, up to limit bytes."""
    import json as anchor   # any pure-Python stdlib package
    top = os.path.dirname(os.path.dirname(anchor.__file__))
    out, n = [], 0
    for d, _dirs, files in sorted(os.walk(top)):
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(d, name), "rb") as f:
                    data = f.read()
                if len(data) > 2000:
                    out.append(data)
                    n += len(data)
                    if n >= limit:
                        return out
    return out


def test_idle_sealer_recompresses_cold_blocks_and_data_reads_back(mount_cct) -> None:
    # pack=off: packing (docs/packing.md) would turn these small files into
    # pack members, which recompression leaves to their packs.
    mp = mount_cct("size=256m,pack=off")
    contents = python_sources(6 << 20)
    for i, data in enumerate(contents):
        with open(os.path.join(mp, f"f{i}.py"), "wb") as f:
            f.write(data)
    sealed = mp.stats(settle=True)
    assert sealed["recompress"]["level"] == 9
    end = time.monotonic() + DEADLINE
    rc = sealed["recompress"]
    while time.monotonic() < end:
        time.sleep(0.5)
        s = mp.stats()
        rc = s["recompress"]
        if rc["recompressed"] + rc["no_gain"] >= s["dedup"]["index_entries"] > 0:
            break   # every stored block looked at
    assert rc["recompressed"] > 0, rc
    assert rc["recompressed_blocks"] == rc["recompressed"]
    assert s["stored_bytes"] == sealed["stored_bytes"] - rc["bytes_saved"] < sealed["stored_bytes"]
    assert s["arena"]["live_bytes"] == s["stored_bytes"]
    for i, data in enumerate(contents):
        with open(os.path.join(mp, f"f{i}.py"), "rb") as f:
            assert f.read() == data, f"f{i}.py"


def test_no_recompression_with_recompress_off(mount_cct) -> None:
    mp = mount_cct("size=64m,recompress=off")
    with open(os.path.join(mp, "a.py"), "wb") as f:
        f.write(b"".join(python_sources(1 << 20)))
    s = mp.stats(settle=True)
    assert s["recompress"]["level"] is None
    time.sleep(1.0)   # a couple of sealer passes; nothing may change
    assert mp.stats()["recompress"]["recompressed"] == 0
