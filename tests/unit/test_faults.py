"""Injected faults at every point of faults.POINTS: the operation fails (or,
for sealing and device writes, is retried later) and nothing else changes:
the model still matches byte for byte and the invariant checker passes."""

from __future__ import annotations

import random

import pytest

from cctmpfs import faults
from cctmpfs.check import check_all
from cctmpfs.errors import FsError

from .test_eviction import with_device
from .test_filemap import BS, Harness, make_data, pick_length, pick_offset


@pytest.fixture(autouse=True)
def _disarm():
    yield
    faults.disarm()


def test_unknown_points_and_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault point"):
        faults.arm("nowhere:2")
    with pytest.raises(ValueError):
        faults.arm("unlink:0")


@pytest.mark.parametrize("spec", ["read.decode:3", "write.apply:4", "truncate.cut:2", "unlink:2",
                                  "seal.encode:3", "device.write:2",
                                  "read.decode:5,write.apply:7,seal.encode:4,device.write:3"])
def test_faults_change_nothing_but_the_failed_operation(tmp_path, spec: str) -> None:
    rng = random.Random(spec)
    h = Harness("zstd", buffer_blocks=2, ram_budget=6 * BS)
    with_device(h, str(tmp_path / "back"), device_segments=128)
    faults.arm(spec)
    injected = 0
    for step in range(600):
        if not h.models or (len(h.models) < 5 and rng.random() < 0.05):
            with faults.suspended():
                h.create()
        ino = rng.choice(sorted(h.models))
        size = len(h.models[ino])
        r = rng.random()
        try:
            if r < 0.45:
                off = pick_offset(rng, size)
                h.write(ino, off, make_data(rng, pick_length(rng, off)))
            elif r < 0.7:
                off = pick_offset(rng, size)
                h.read(ino, off, pick_length(rng, off))
            elif r < 0.8:
                h.truncate(ino, rng.randrange(0, size + 2 * BS))
            elif r < 0.85 and len(h.models) > 1:
                h.delete(ino)
            else:
                h.clock.advance(rng.choice([0.5, 3.0]))
                h.eng.background_pass()
        except faults.InjectedFault:
            injected += 1
        with faults.suspended():   # the checks themselves must not trip a fault
            h.check()
            assert check_all(h.fs) == [], step
    faults.disarm()
    for ino in h.models:
        assert h.read_all(ino) == bytes(h.models[ino])
    point_counts = {p.split(":")[0] for p in spec.split(",")}
    surfaced = point_counts - {"seal.encode", "device.write"}
    if surfaced:
        assert injected > 0, "no fault surfaced: the test is too weak"
    if point_counts == {"seal.encode"}:
        assert h.eng.counters.seal_errors > 0
    if point_counts == {"device.write"}:
        assert h.eng.cold.counters.evictions_dropped > 0
    h.delete_all()
    h.eng.background_pass()
    assert check_all(h.fs) == []


def test_an_injected_read_fault_is_an_error_for_that_read_only(tmp_path) -> None:
    h = Harness("zstd", buffer_blocks=2)
    ino = h.create()
    h.write(ino, 0, b"z" * (3 * BS))
    h.eng.seal_everything()
    h.eng.make_room()
    faults.arm("read.decode:1")
    with pytest.raises(faults.InjectedFault):
        h.fs.read(ino, 0, 100)
    faults.disarm()
    assert h.fs.read(ino, 0, 3 * BS) == b"z" * (3 * BS)
    with pytest.raises(FsError):
        h.fs.read(12345, 0, 1)
