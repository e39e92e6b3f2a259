"""Concurrency torture: 4 processes x 8 threads on overlapping names.

Every thread mixes create, write, read, rename (of files and directories),
link, unlink, truncate, setxattr and readdir over a small shared name space,
so operations collide all the time. Every result must be success or an
errno tmpfs can give for that operation; the daemon must count no internal
error; the invariant checker must pass at the end (the mount fixture runs it);
and each file a thread wrote under its own private name reads back exactly.

CCTMPFS_TORTURE_SECONDS sets the duration (default 15 s per run).
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import threading
import time

import pytest

pytestmark = pytest.mark.mounted

SECONDS = float(os.environ.get("CCTMPFS_TORTURE_SECONDS", "15"))
PROCESSES = 4
THREADS = 8
SHARED = [f"s{i}" for i in range(6)] + [f"d{i}/s{j}" for i in range(3) for j in range(3)]
DIRS = [f"d{i}" for i in range(3)] + [f"d{i}/e" for i in range(3)]

#: Errnos tmpfs can answer to these operations when other threads race them.
ALLOWED = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR,
           errno.EINVAL, errno.EBUSY, errno.EXDEV, errno.ENODATA}


def worker(root: str, seed: int, deadline: float, out: "multiprocessing.Queue") -> None:
    results = {"ops": 0, "errnos": {}, "bad": [], "private": {}}
    lock = threading.Lock()

    def thread(tid: int) -> None:
        rng = random.Random(seed * 100 + tid)
        private = os.path.join(root, f"p{seed}-{tid}")
        want = b""
        while time.monotonic() < deadline:
            op = rng.randrange(11)
            a = os.path.join(root, rng.choice(SHARED))
            b = os.path.join(root, rng.choice(SHARED))
            d = os.path.join(root, rng.choice(DIRS))
            try:
                if op == 0:
                    with open(a, "ab") as f:
                        f.write(rng.randbytes(rng.randrange(1, 70_000)))
                elif op == 1:
                    with open(a, "rb") as f:
                        f.read()
                elif op == 2:
                    os.rename(a, b)
                elif op == 3:
                    os.rename(d, os.path.join(root, rng.choice(DIRS)))
                elif op == 4:
                    os.link(a, b)
                elif op == 5:
                    os.unlink(a)
                elif op == 6:
                    os.truncate(a, rng.randrange(0, 200_000))
                elif op == 7:
                    os.setxattr(a, "user.t", rng.randbytes(rng.randrange(0, 300)))
                elif op == 8:
                    os.listdir(rng.choice([root, d]))
                elif op == 9:
                    if rng.random() < 0.5:
                        os.mkdir(d)
                    else:
                        os.rmdir(d)
                else:
                    want = rng.randbytes(rng.randrange(0, 300_000))
                    with open(private, "wb") as f:
                        f.write(want)
            except OSError as e:
                with lock:
                    results["errnos"][e.errno] = results["errnos"].get(e.errno, 0) + 1
                    if e.errno not in ALLOWED:
                        results["bad"].append(f"op {op}: {e!r}")
            with lock:
                results["ops"] += 1
        with lock:
            results["private"][private] = hashlib.sha256(want).hexdigest() if want or \
                os.path.exists(private) else None

    threads = [threading.Thread(target=thread, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(results)


def test_four_processes_of_eight_threads(mount_cct):
    mp = mount_cct("size=512m,block_size=16k,buffer=256k,workers=4")
    for d in ("d0", "d1", "d2"):
        os.mkdir(os.path.join(mp, d))
    deadline = time.monotonic() + SECONDS
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(str(mp), s, deadline, q)) for s in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [q.get(timeout=SECONDS + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    bad = [b for r in results for b in r["bad"]]
    assert bad == [], bad[:20]
    ops = sum(r["ops"] for r in results)
    assert ops > 1000, f"only {ops} operations: the torture is too weak"
    for r in results:
        for path, digest in r["private"].items():
            if digest is None:
                continue
            with open(path, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest, path
    s = mp.stats(settle=True)
    assert s["internal_errors"] == 0
    report = json.loads(os.getxattr(mp, "trusted.cctmpfs.check"))
    assert report["count"] == 0, report["violations"]
    errnos = {}
    for r in results:
        for k, v in r["errnos"].items():
            errnos[errno.errorcode[int(k)]] = errnos.get(errno.errorcode[int(k)], 0) + v
    print(f"\ntorture: {ops} ops in {SECONDS:.0f}s, errnos {errnos}")


def test_listing_a_big_directory_while_others_change_it(mount_cct):
    """20,000 entries that stay, listed again and again by one process while
    four threads create and remove other names in the same directory: every
    listing holds each lasting entry exactly once."""
    mp = mount_cct("size=256m")
    big = os.path.join(mp, "big")
    os.mkdir(big)
    stable = {f"keep{i:05d}" for i in range(20_000)}
    for name in stable:
        os.close(os.open(os.path.join(big, name), os.O_CREAT | os.O_WRONLY, 0o644))
    deadline = time.monotonic() + min(SECONDS, 10)
    stop = threading.Event()
    churned = [0]

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            p = os.path.join(big, f"tmp{rng.randrange(5000):05d}")
            try:
                if rng.random() < 0.55:
                    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
                else:
                    os.unlink(p)
                churned[0] += 1
            except FileNotFoundError:
                pass

    threads = [threading.Thread(target=churn, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    listings = 0
    try:
        while time.monotonic() < deadline or listings < 3:
            names = [e.name for e in os.scandir(big) if e.name.startswith("keep")]
            assert len(names) == len(set(names)), "an entry was listed twice"
            assert set(names) == stable, f"{len(stable - set(names))} lasting entries skipped"
            listings += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert churned[0] > 1000
    print(f"\nbig directory: {listings} listings of 20k+ entries during {churned[0]} changes")
