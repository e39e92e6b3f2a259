"""pymalloc's empty pools given back (cctmpfs/pools.py, _pools.c).

Each case runs in a process of its own: the arena allocator is installed
for the life of a process, and a mistake in the pool headers would crash
that process, not pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cctmpfs import pools

pytestmark = pytest.mark.skipif(pools._pools is None or pools.allocator_name() != "pymalloc",
                                reason="needs cctmpfs._pools and pymalloc")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(script: str, **env: str) -> dict:
    """Run script in a fresh interpreter; it prints one JSON line last."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_extension_is_built() -> None:
    """CI builds it (setup.py makes it optional for machines without a
    compiler): without it the pools stay resident."""
    assert pools.PoolTrimmer.why_unavailable() is None


CHURN = """
    import gc, hashlib, json, random
    from cctmpfs import pools
    from cctmpfs.memtrim import rss_bytes

    trimmer = pools.PoolTrimmer.install()
    assert trimmer.unavailable is None, trimmer.unavailable
    rng = random.Random(7)

    def make(i):
        # Objects of most of pymalloc's size classes (16 to 512 bytes):
        # bytes, tuples, dicts and lists holding them.
        kind = i % 4
        if kind == 0:
            return rng.randbytes(rng.randrange(1, 480))
        if kind == 1:
            return tuple(rng.randrange(1 << 40) for _ in range(rng.randrange(1, 50)))
        if kind == 2:
            return {b"k%d" % j: rng.randbytes(8) for j in range(rng.randrange(1, 12))}
        return [rng.randbytes(rng.randrange(1, 40)) for _ in range(rng.randrange(1, 20))]

    def digest(obj):
        return hashlib.sha1(repr(obj).encode()).hexdigest()

    live = {}
    report = {"trimmed": [], "rss_drop": [], "checked": 0}
    for cycle in range(6):
        for i in range(120000):
            obj = make(i)
            live[(cycle, i)] = (obj, digest(obj))
        # Free all but one object in 4,000, as `rm -rf` leaves a few
        # long-lived objects: the arenas stay, most of their pools empty.
        for key in [k for k in live if k[0] == cycle and k[1] % 4000]:
            del live[key]
        gc.collect()
        before = rss_bytes()
        n = 0
        while True:                          # POOLS_PER_PASS at a time
            k = trimmer.maybe_trim()
            assert k <= pools.POOLS_PER_PASS
            if not k:                        # nothing new: each pool once
                break
            n += k
        report["trimmed"].append(n)
        report["rss_drop"].append(before - rss_bytes())
        # Every live object is intact, and the next cycle allocates into the
        # pools just given back.
        for obj, d in live.values():
            assert digest(obj) == d
            report["checked"] += 1
    report["stats"] = trimmer.stats()
    print(json.dumps(report))
"""


def test_empty_pools_are_given_back_and_objects_stay_intact() -> None:
    r = run(CHURN)
    assert all(n > 100 for n in r["trimmed"]), r["trimmed"]
    # 12 KiB of each pool leaves RSS (the first page keeps the header).
    for n, drop in zip(r["trimmed"], r["rss_drop"]):
        assert drop >= n * 12288 // 2, (n, drop)
    s = r["stats"]
    assert s["enabled"] and s["pools"] == sum(r["trimmed"]) and s["bytes"] == s["pools"] * 12288
    assert s["trims"] >= 6 and s["arenas"] > 0
    assert r["checked"] == sum(30 * (c + 1) for c in range(6))


CORE = """
    import json, os, random
    from cctmpfs import pools
    from cctmpfs.check import check_all
    from cctmpfs.namespace import Caller, Filesystem

    trimmer = pools.PoolTrimmer.install()
    fs = Filesystem(buffer_bytes=1 << 30)
    rng = random.Random(11)
    caller = Caller()
    contents = {}
    trimmed = 0
    for cycle in range(4):
        d = fs.mkdir(1, b"d%d" % cycle, 0o755, caller)
        for i in range(3000):
            data = rng.randbytes(rng.randrange(0, 3000))
            ino = fs.create(d.ino, b"f%d" % i, 0o644, caller).ino
            fh = fs.open(ino)
            fs.write(fh, 0, data)
            fs.release(fh)
            contents[(d.ino, b"f%d" % i)] = (ino, data)
        for key in [k for k in contents if k[0] == d.ino and int(k[1][1:]) % 100]:
            fs.unlink(key[0], key[1])
            del contents[key]
        fs.engine.seal_everything()
        trimmed += pools._pools.trim(10 ** 6, 1)[0]   # every empty pool, however few
        assert check_all(fs) == []
        for ino, data in contents.values():
            fh = fs.open(ino)
            assert fs.read(fh, 0, 4096) == data
            fs.release(fh)
    print(json.dumps({"trimmed": trimmed, "files": len(contents)}))
"""


def test_the_core_keeps_every_file_across_trims() -> None:
    """Files created, partly deleted and read back while their metadata's
    empty pools are given back between the cycles: the checker and every
    byte agree."""
    r = run(CORE)
    assert r["trimmed"] > 0 and r["files"] == 4 * 30


def test_under_malloc_it_says_why_and_does_nothing() -> None:
    r = run("""
        import json
        from cctmpfs import pools
        t = pools.PoolTrimmer.install()
        print(json.dumps({"why": t.unavailable, "n": t.maybe_trim(), "stats": t.stats()}))
    """, PYTHONMALLOC="malloc")
    assert r["why"] == "Python objects come from malloc, not pymalloc"
    assert r["n"] == 0 and r["stats"]["enabled"] is False


def test_a_few_empty_pools_wait_for_more() -> None:
    """Below `minimum` empty pools nothing is given back (an idle daemon
    empties and refills a pool each pass); past it, up to `limit` at a time."""
    r = run("""
        import json
        from cctmpfs import _pools, pools
        assert pools.PoolTrimmer.install().unavailable is None
        keep, drop = [], []
        for i in range(200000):
            (keep if i % 3000 == 0 else drop).append(bytes(100 + i % 300))
        del drop
        waiting = _pools.trim(0, 0)[0]           # limit 0: nothing given back
        held = _pools.trim(1024, 10 ** 9)        # fewer than a billion wait
        some = _pools.trim(5, 1)                 # at most 5
        rest = _pools.trim(10 ** 6, 1)
        print(json.dumps({"waiting": waiting, "held": held[0], "some": some[0],
                          "rest": rest[0], "before": rest[2]}))
    """)
    assert r["waiting"] == 0 and r["held"] == 0
    assert r["some"] == 5 and r["rest"] > pools.MIN_POOLS
    assert r["before"] == 5


def test_room_measures_what_pymalloc_holds_without_objects() -> None:
    """room() walks the pool headers: freed 96-byte blocks of pools still
    in use are free block bytes, pools emptied are empty pool bytes until
    trimmed, then the one page each keeps."""
    out = run("""
        import json, os
        from cctmpfs import pools
        trimmer = pools.PoolTrimmer.install()
        assert trimmer.unavailable is None, trimmer.unavailable
        trimmer.mark_mounted()
        base = trimmer.room()
        # bytes of 63: 33 + 63 = 96, one size class; distinct objects. A
        # keeper of another size class every 1,000 keeps a few arenas mapped.
        objs, keepers = [], []
        for i in range(100_000):
            objs.append(os.urandom(63))
            if i % 1000 == 0:
                keepers.append(os.urandom(300))
        full = trimmer.room()
        del objs[::2]
        half = trimmer.room()
        freed_half = trimmer.free_room()
        del objs[:]
        empty = trimmer.room()
        trimmer.maybe_trim(); trimmer.maybe_trim(); trimmer.maybe_trim(); trimmer.maybe_trim()
        trimmed = trimmer.room()
        print(json.dumps({"base": base, "full": full, "half": half, "empty": empty,
                          "trimmed": trimmed, "freed_half": freed_half}))
    """)
    grew = out["half"]["free_block_bytes"] - out["full"]["free_block_bytes"]
    assert 0.9 * 50_000 * 96 < grew < 1.1 * 50_000 * 96, out
    assert 0.9 * 50_000 * 96 < out["freed_half"] < 1.3 * 50_000 * 96, out
    # All gone: their pools are empty, 100,000 blocks of 96 in 16 KiB pools,
    # or pymalloc unmapped their arenas (then room() no longer sees them).
    pools_used = 100_000 * 96 / (16384 - 48)
    unmapped = out["full"]["arena_bytes"] - out["empty"]["arena_bytes"]
    assert out["empty"]["empty_pool_bytes"] + unmapped >= 0.9 * pools_used * 16384, out
    assert out["empty"]["empty_pool_bytes"] >= pools.MIN_POOLS * 16384, out   # the keepers' arenas
    assert out["empty"]["free_block_bytes"] < out["full"]["free_block_bytes"] + 256 * 1024, out
    # Given back, each keeps its first page.
    emptied = out["empty"]["empty_pool_bytes"] // 16384
    assert out["trimmed"]["empty_pool_bytes"] == 0, out
    assert out["trimmed"]["given_back_header_bytes"] == emptied * 4096, out
