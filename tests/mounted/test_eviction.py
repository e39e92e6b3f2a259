"""Eviction on a real mount: a loop device as the backing device and a small
ram=, data past the budget read back verified (fio crc32c too), RSS bounded,
corruption giving EIO on the affected file only, a full device giving
ENOSPC, and backing devices that must be refused."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from test_cli import run_cli  # tests/mounted is on sys.path (rootdir imports)

pytestmark = pytest.mark.mounted

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
FIO_JOB = REPO / "examples" / "fio" / "verify.fio"


@pytest.fixture
def loop_device():
    """Factory: loop_device(size) -> /dev/loopN over a sparse file; detached after."""
    made: list[tuple[str, str]] = []

    def factory(size: int, read_only: bool = False) -> str:
        fd, path = tempfile.mkstemp(prefix="cct-backing.", dir="/var/tmp")
        os.ftruncate(fd, size)
        os.close(fd)
        r = subprocess.run(["losetup", "--find", "--show"] + (["--read-only"] if read_only else [])
                           + [path], capture_output=True, text=True)
        if r.returncode != 0:
            os.unlink(path)
            pytest.fail(f"losetup failed: {r.stderr.strip()}", pytrace=False)
        made.append((r.stdout.strip(), path))
        return r.stdout.strip()

    yield factory
    for dev, path in made:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        os.unlink(path)


def blocks_of(path: str) -> list[list]:
    return json.loads(os.getxattr(path, "trusted.cctmpfs.blocks"))


def write_files(root: str, n: int, size: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        if i % 2:
            data = rng.randbytes(size)
        else:
            word = b"%d compressible line of a file in /tmp\n" % rng.randrange(10 ** 6)
            data = (word * (size // len(word) + 1))[:size]
        p = os.path.join(root, f"f{seed}-{i}")
        with open(p, "wb") as f:
            f.write(data)
        out[p] = data
    return out


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def test_four_times_the_ram_budget_reads_back_with_rss_bounded(mount_cct, loop_device):
    dev = loop_device(1024 * MiB)
    mp = mount_cct(f"size=2g,ram=64m,backing={dev}")
    files = write_files(mp, 32, 8 * MiB, seed=1)           # 256 MiB: 4x ram=
    s = mp.stats(settle=True)
    assert s["device"]["blocks"] > 0 and s["device"]["evictions"] > 0
    assert s["ram_used_bytes"] <= 64 * MiB
    drop_caches()
    for p, data in files.items():
        with open(p, "rb") as f:
            assert f.read() == data, p
    s = mp.stats(settle=True)
    assert s["device"]["reads"] > 0 and s["device"]["checksum_errors"] == 0
    # The documented bound (docs/eviction.md, RSS): 1.25 x ram= for the
    # trimmer's slack, plus its 96 MiB, plus ~48 MiB of interpreter and libraries.
    assert s["rss_bytes"] <= 1.25 * 64 * MiB + 96 * MiB + 48 * MiB, s["rss_bytes"]
    assert s["device"]["encrypted"] is True
    r = run_cli("check", mp)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fio_crc32c_verify_past_the_budget(mount_cct, loop_device):
    dev = loop_device(1024 * MiB)
    mp = mount_cct(f"size=2g,ram=64m,backing={dev}")
    # 256 MiB sequential + 64 MiB random 4k with crc32c headers: 5x ram=.
    env = dict(os.environ, FSB_DIR=str(mp), FSB_VERIFY_ONLY="0")
    r = subprocess.run(["fio", "--output-format=terse", str(FIO_JOB)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    drop_caches()
    env["FSB_VERIFY_ONLY"] = "1"
    r = subprocess.run(["fio", "--output-format=terse", str(FIO_JOB)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    s = mp.stats(settle=True)
    assert s["device"]["evictions"] > 0 and s["device"]["reads"] > 0


def test_corrupted_device_bytes_give_eio_on_that_file_only(mount_cct, loop_device):
    dev = loop_device(512 * MiB)
    mp = mount_cct(f"size=1g,ram=32m,backing={dev}")
    files = write_files(mp, 24, 4 * MiB, seed=2)          # 96 MiB: 3x ram=
    mp.stats(settle=True)
    drop_caches()
    victim = next(p for p in files if any(b[1] == "device" for b in blocks_of(p)))
    idx, _state, seg, off, length = next(b for b in blocks_of(victim) if b[1] == "device")
    segment_bytes = mp.stats()["device"]["segment_bytes"]
    with open(dev, "r+b", buffering=0) as d:       # not O_EXCL: the daemon's hold allows it
        d.seek(seg * segment_bytes + off + length // 2)   # inside this record only
        d.write(b"\xde\xad\xbe\xef")
    drop_caches()
    with pytest.raises(OSError) as info:
        with open(victim, "rb") as f:
            f.seek(idx * 128 * 1024)
            f.read(128 * 1024)
    assert info.value.errno == errno.EIO
    for p, data in files.items():
        if p != victim:
            with open(p, "rb") as f:
                assert f.read() == data, p
    s = mp.stats()
    assert s["device"]["checksum_errors"] >= 1 and s["internal_errors"] == 0


def test_a_full_device_gives_enospc_and_other_files_keep_working(mount_cct, loop_device):
    dev = loop_device(40 * MiB)
    mp = mount_cct(f"size=1g,ram=16m,backing={dev},backing_encrypt=off")
    rng = random.Random(3)
    kept: dict[str, bytes] = {}
    with pytest.raises(OSError) as info:
        for i in range(200):
            data = rng.randbytes(MiB)
            p = os.path.join(mp, f"f{i}")
            with open(p, "wb") as f:
                f.write(data)
            kept[p] = data
    assert info.value.errno == errno.ENOSPC
    s = mp.stats()
    assert s["device"]["full"] > 0
    assert len(kept) * MiB >= 40 * MiB                     # the device was used
    for p, data in kept.items():
        with open(p, "rb") as f:
            assert f.read() == data, p
    # Deleting makes room again.
    for p in list(kept)[:10]:
        os.unlink(p)
    mp.stats(settle=True)
    with open(os.path.join(mp, "after"), "wb") as f:
        f.write(b"y" * MiB)


def test_unusable_backing_devices_are_refused(tmp_path, loop_device):
    small = loop_device(1 * MiB)
    read_only = loop_device(64 * MiB, read_only=True)
    busy = loop_device(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", busy], check=True, capture_output=True)
    mounted = tmp_path / "ext4"
    mounted.mkdir()
    subprocess.run(["mount", busy, str(mounted)], check=True)
    try:
        mp = tmp_path / "mp"
        mp.mkdir()
        for opts, message in ((f"backing={tmp_path}/missing", "does not exist"),
                              (f"backing={small}", "too small"),
                              (f"backing={read_only}", "cannot open for writing"),
                              (f"backing={busy}", "in use"),
                              (f"backing={tmp_path}", "neither a block device"),
                              ("backing_size=1g", "need backing=")):
            r = run_cli("cctmpfs", str(mp), "-o", opts)
            if os.path.ismount(mp):
                subprocess.run(["umount", str(mp)])
            assert r.returncode != 0, opts
            assert message in r.stderr and "Traceback" not in r.stderr, (opts, r.stderr)
            assert not os.path.ismount(mp), opts
    finally:
        subprocess.run(["umount", str(mounted)], check=True)


def test_a_backing_file_is_created_sparse(mount_cct, tmp_path):
    path = tmp_path / "overflow.img"
    mp = mount_cct(f"size=1g,ram=16m,backing={path},backing_size=256m")
    assert path.stat().st_size == 256 * MiB
    files = write_files(mp, 8, 8 * MiB, seed=4)
    s = mp.stats(settle=True)
    assert s["device"]["path"] == str(path) and s["device"]["blocks"] > 0
    drop_caches()
    for p, data in files.items():
        with open(p, "rb") as f:
            assert f.read() == data
    for p in files:
        os.unlink(p)
    s = mp.stats(settle=True)
    assert s["device"]["blocks"] == 0 and s["device"]["live_bytes"] == 0


def test_sustained_overwrite_of_twice_the_device_never_runs_out(mount_cct, loop_device):
    """Rewrite 2x the device's capacity, in random 128 KiB pieces, over a
    working set of half the device: no ENOSPC, device use stays bounded by
    the cleaner, and write amplification is reported."""
    device_size = 96 * MiB
    dev = loop_device(device_size)
    mp = mount_cct(f"size=1g,ram=16m,backing={dev},backing_encrypt=off")
    rng = random.Random(5)
    piece = 128 * 1024
    working = device_size // 2 // piece                    # pieces in the working set
    names = [os.path.join(mp, f"w{i}") for i in range(4)]
    model = {n: bytearray(working // 4 * piece) for n in names}
    fds = {n: os.open(n, os.O_RDWR | os.O_CREAT, 0o644) for n in names}
    try:
        for n in names:
            os.pwrite(fds[n], bytes(model[n]), 0)
        written = 0
        while written < 2 * device_size:
            n = rng.choice(names)
            off = rng.randrange(working // 4) * piece
            data = rng.randbytes(piece)
            assert os.pwrite(fds[n], data, off) == piece
            model[n][off:off + piece] = data
            written += piece
    finally:
        for fd in fds.values():
            os.close(fd)
    s = mp.stats(settle=True)
    d = s["device"]
    print(f"\nsustained overwrite: write amplification {d['write_amplification']}, "
          f"{d['segments_cleaned']} segments cleaned, {d['used_bytes'] // MiB} MiB used")
    assert d["full"] == 0 and d["segments_cleaned"] > 0
    assert d["used_bytes"] <= device_size
    assert d["write_amplification"] is not None and d["write_amplification"] < 4
    drop_caches()
    for n in names:
        with open(n, "rb") as f:
            assert f.read() == bytes(model[n]), n


def allocated(path) -> int:
    """Bytes the file really holds on its filesystem (st_blocks), after a sync."""
    os.sync()
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("end", ["unmount", "sigterm"])
def test_unmount_discards_a_backing_file(mount_cct, tmp_path, end):
    """The contents are volatile, as on tmpfs: when the daemon ends (an
    unmount, or SIGTERM) every segment ever written is punched out of the
    backing file, which holds nothing then."""
    path = tmp_path / "overflow.img"
    mp = mount_cct(f"size=1g,ram=16m,backing={path},backing_size=256m,backing_encrypt=off")
    write_files(mp, 8, 8 * MiB, seed=6)                   # 64 MiB: 4x ram=
    s = mp.stats(settle=True)
    assert s["device"]["blocks"] > 0
    assert allocated(path) >= 16 * MiB
    r = run_cli("check", mp)                              # the teardown cannot: it is unmounted
    assert r.returncode == 0, r.stdout + r.stderr
    if end == "unmount":
        assert mp.unmount() == 0
    else:
        mp.proc.send_signal(signal.SIGTERM)
        assert mp.proc.wait(timeout=15) == 0
    assert allocated(path) == 0
    assert path.stat().st_size == 256 * MiB               # holes punched, the size kept
    assert "discarded its used area" in mp.log(), mp.log()


def test_unmount_discards_a_loop_device(mount_cct, loop_device):
    """BLKDISCARD of the used area at unmount: the loop device passes it on
    as holes in its backing file, and the area reads back as zeros."""
    dev = loop_device(256 * MiB)
    name = os.path.basename(dev)
    with open(f"/sys/block/{name}/loop/backing_file") as f:
        backing = f.read().strip()
    with open(f"/sys/block/{name}/queue/discard_max_bytes") as f:
        assert int(f.read()) > 0, f"{dev} does not support discard here"
    mp = mount_cct(f"size=1g,ram=16m,backing={dev},backing_encrypt=off")
    write_files(mp, 8, 8 * MiB, seed=7)                   # 64 MiB: 4x ram=
    s = mp.stats(settle=True)
    assert s["device"]["blocks"] > 0
    used = s["device"]["used_bytes"]
    assert allocated(backing) >= 16 * MiB
    r = run_cli("check", mp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert mp.unmount() == 0
    assert allocated(backing) == 0
    with open(dev, "rb") as d:
        head = d.read(max(used, 16 * MiB))
    assert head.count(0) == len(head), "the used area still holds data after the unmount"
    assert "discarded its used area" in mp.log(), mp.log()
