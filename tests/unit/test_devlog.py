"""The device log without a device: the record format and the segment usage
table; and the device layer on real files (no mount, no loop device)."""

from __future__ import annotations

import errno
import logging
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cctmpfs.device import ALIGN, Device, DeviceCounters, DeviceError
from cctmpfs.devlog import (RECORD_HEADER, Location, NoSpace, RecordError, SegmentLog,
                            decode_record, encode_record, record_size)

SEG = 64 * 1024


# ---- records ---------------------------------------------------------------------------

def test_record_round_trip() -> None:
    payload = random.Random(1).randbytes(5000)
    data = encode_record(1, 0, block_id=77, seq=9, payload=payload)
    assert len(data) == RECORD_HEADER.size + 5000
    rec = decode_record(data + b"\0" * 7, block_id=77)   # alignment padding after it
    assert (rec.codec, rec.flags, rec.block_id, rec.seq, rec.payload) == (1, 0, 77, 9, payload)


def test_every_corrupted_byte_is_detected() -> None:
    payload = bytes(range(256)) * 4
    data = encode_record(2, 0, block_id=5, seq=1, payload=payload)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(RecordError):
            decode_record(bytes(bad), block_id=5)


def test_wrong_identity_and_short_reads_are_refused() -> None:
    data = encode_record(0, 0, block_id=5, seq=1, payload=b"x" * 100)
    with pytest.raises(RecordError, match="expected 6"):
        decode_record(data, block_id=6)
    with pytest.raises(RecordError):
        decode_record(data[:-1])
    with pytest.raises(RecordError):
        decode_record(data[:20])
    with pytest.raises(RecordError, match="magic"):
        decode_record(bytes(len(data)))


def test_record_sizes_are_aligned() -> None:
    assert record_size(0) == RECORD_HEADER.size
    assert record_size(1) == RECORD_HEADER.size + 8
    assert all(record_size(n) % 8 == 0 and record_size(n) >= RECORD_HEADER.size + n
               for n in range(100))


# ---- the segment usage table --------------------------------------------------------------

def test_records_fill_segments_in_order_and_never_span_two() -> None:
    log = SegmentLog(8 * SEG, SEG)
    locs = [log.place(30_000)[0] for _ in range(5)]
    assert [(loc.segment, loc.offset) for loc in locs] == [
        (0, 0), (0, record_size(30_000)), (1, 0), (1, record_size(30_000)), (2, 0)]
    assert all(loc.offset + loc.length <= SEG for loc in locs)
    assert log.counters.segments_sealed == 2 and log.open_segment == 2
    seqs = [log.place(10)[1] for _ in range(3)]
    assert seqs == [6, 7, 8]


def test_no_space_when_every_segment_but_the_cleaners_reserve_is_used() -> None:
    log = SegmentLog(4 * SEG, SEG)
    for _ in range(3):
        log.place(SEG - RECORD_HEADER.size)
    with pytest.raises(NoSpace):
        log.place(10)
    assert log.free == [3]
    loc = log.relocate(Location(0, 0, SEG, 1))        # the cleaner may use it
    assert loc.segment == 3


def test_a_segment_is_freed_when_its_last_record_dies() -> None:
    log = SegmentLog(4 * SEG, SEG)
    a, _ = log.place(20_000)
    b, _ = log.place(20_000)
    c, _ = log.place(40_000)            # opens segment 1, seals segment 0
    assert (a.segment, b.segment, c.segment) == (0, 0, 1)
    assert log.mark_written(0, now=1.0) is False
    assert log.mark_dead(a) is False
    assert log.mark_dead(b) is True      # segment 0 is empty: to discard, not reused yet
    assert 0 not in log.free and log.usage[0].state == "emptied"
    log.discarded([0])
    assert 0 in log.free and log.usage[0].state == "free"
    assert log.mark_dead(c) is False     # the open segment stays open
    assert log.usage[1].state == "open"


def test_the_used_area_covers_every_segment_ever_opened() -> None:
    log = SegmentLog(8 * SEG, SEG)
    assert log.used_area == 0
    a, _ = log.place(SEG - RECORD_HEADER.size)
    b, _ = log.place(SEG - RECORD_HEADER.size)          # segments 0 and 1
    assert log.used_area == 2 * SEG
    log.seal_open()
    log.mark_written(0, now=1.0)
    log.mark_written(1, now=1.0)
    assert log.mark_dead(a) and log.mark_dead(b)
    log.discarded([0, 1])
    log.place(10)                                        # reuses segment 0, lowest first
    assert log.open_segment == 0 and log.used_area == 2 * SEG


def test_cleaner_prefers_emptier_and_older_segments() -> None:
    log = SegmentLog(8 * SEG, SEG)
    records = {seg: [] for seg in range(4)}
    for _ in range(4 * 4):
        loc, _ = log.place(SEG // 4 - RECORD_HEADER.size - 8)
        records[loc.segment].append(loc)
    log.seal_open()
    for seg, age in ((0, 100.0), (1, 100.0), (2, 10.0), (3, 100.0)):
        log.mark_written(seg, now=1000.0 - age)
    log.mark_dead(records[1][0])                           # segment 1: 3/4 live, old
    for loc in records[2][:3]:                              # segment 2: 1/4 live, young
        log.mark_dead(loc)
    for loc in records[3][:3]:                              # segment 3: 1/4 live, old
        log.mark_dead(loc)
    assert log.cleaning_candidates(now=1000.0, limit=3) == [3, 1, 2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, SEG - RECORD_HEADER.size)), max_size=200),
       st.randoms(use_true_random=False))
def test_usage_table_matches_the_live_records(ops, rnd) -> None:  # type: ignore[no-untyped-def]
    log = SegmentLog(16 * SEG, SEG)
    live: list[Location] = []
    for add, n in ops:
        if add or not live:
            try:
                loc, _ = log.place(n)
            except NoSpace:
                continue
            live.append(loc)
            sealed = [s for s, u in enumerate(log.usage) if u.state == "full" and not u.written_at]
            for s in sealed:
                if log.mark_written(s, now=1.0):
                    log.discarded([s])
        else:
            loc = live.pop(rnd.randrange(len(live)))
            if log.mark_dead(loc):
                log.discarded([loc.segment])
        per_segment = [0] * log.nsegments
        for loc in live:
            per_segment[loc.segment] += loc.length
        assert [u.live_bytes for u in log.usage] == per_segment
        assert sorted(log.free) == sorted(s for s, u in enumerate(log.usage) if u.state == "free")
        assert all(per_segment[s] == 0 for s in log.free)
        spans = sorted((loc.segment, loc.offset, loc.offset + loc.length) for loc in live)
        assert all(a[0] != b[0] or a[2] <= b[1] for a, b in zip(spans, spans[1:])), "records overlap"


# ---- the device layer on files ----------------------------------------------------------

def test_a_missing_file_is_created_sparse_at_backing_size(tmp_path) -> None:
    path = str(tmp_path / "back")
    dev = Device.open(path, create_size=64 << 20, min_size=4 * SEG)
    try:
        st_ = os.stat(path)
        assert st_.st_size == 64 << 20 and st_.st_blocks == 0 and dev.size == 64 << 20
        assert oct(st_.st_mode & 0o777) == "0o600"
    finally:
        dev.close()


def test_write_read_and_discard(tmp_path) -> None:
    path = str(tmp_path / "back")
    dev = Device.open(path, create_size=8 * SEG)
    try:
        seg = random.Random(3).randbytes(SEG)
        c = DeviceCounters()                      # the caller's tally
        dev.write(SEG, seg, c)
        assert os.stat(path).st_blocks * 512 >= SEG
        assert dev.read(SEG + 1000, 5000, c) == seg[1000:6000]
        assert dev.read(SEG, SEG, c) == seg
        with pytest.raises(ValueError):
            dev.write(100, b"x" * ALIGN, c)
        dev.discard(SEG, SEG, c)
        assert os.stat(path).st_blocks == 0
        assert dev.read(SEG, 100, c) == bytes(100)
        assert (c.writes, c.bytes_written, c.reads, c.discards, c.io_errors) == (1, SEG, 3, 1, 0)
        assert dev.counters == DeviceCounters(), "the I/O methods touched the shared counters"
    finally:
        dev.close()


@pytest.mark.parametrize("setup,message", [
    (lambda p: None, "does not exist"),
    (lambda p: os.mkdir(p), "neither a block device nor a regular file"),
    (lambda p: open(p, "wb").truncate(SEG), "too small"),
])
def test_unusable_backing_is_refused_with_a_clear_message(tmp_path, setup, message) -> None:
    path = str(tmp_path / "back")
    setup(path)
    with pytest.raises(DeviceError, match=message) as info:
        Device.open(path, min_size=4 * SEG)
    assert path in str(info.value)


def test_a_file_in_use_by_another_mount_is_refused(tmp_path) -> None:
    path = str(tmp_path / "back")
    first = Device.open(path, create_size=8 * SEG)
    try:
        with pytest.raises(DeviceError, match="in use"):
            Device.open(path)
    finally:
        first.close()
    Device.open(path).close()    # free again once the first is closed


def test_a_backing_file_that_cannot_be_created_is_refused(tmp_path) -> None:
    with pytest.raises(DeviceError, match="cannot create"):
        Device.open(str(tmp_path / "no" / "such" / "dir"), create_size=8 * SEG)


def test_io_errors_are_counted_and_raised(tmp_path) -> None:
    """The seam: a device whose descriptor fails every call."""
    dev = Device.open(str(tmp_path / "back"), create_size=8 * SEG)
    os.close(dev.fd)
    dev.fd = os.open("/dev/null", os.O_RDONLY)   # reads give nothing, writes fail
    try:
        c = DeviceCounters()
        with pytest.raises(OSError):
            dev.write(0, bytes(ALIGN), c)
        with pytest.raises(OSError):
            dev.read(0, 100, c)
        assert c.io_errors == 2
    finally:
        dev.close()


def test_a_device_without_discard_is_logged_once_and_not_asked_again(tmp_path, monkeypatch,
                                                                     caplog) -> None:
    import cctmpfs.device as device_mod

    calls = []

    def unsupported(fd: int, mode: int, offset: int, length: int) -> None:
        calls.append((offset, length))
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(device_mod, "_fallocate", unsupported)
    dev = Device.open(str(tmp_path / "back"), create_size=8 * SEG)
    try:
        c = DeviceCounters()
        caplog.set_level(logging.INFO, logger="cctmpfs.device")
        assert dev.discard(0, SEG, c) is False
        assert dev.discard(SEG, SEG, c) is False
        assert dev.discard(0, 8 * SEG, c) is False
        assert calls == [(0, SEG)]                       # asked once, then remembered
        assert (c.discards, c.io_errors) == (0, 0)       # not an error: the device still works
        said = [r for r in caplog.records if "does not support discard" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.INFO
    finally:
        dev.close()
