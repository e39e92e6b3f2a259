"""The cold store on a real (file) backing device, without the data engine:
eviction, reads, freeing and discards, cleaning, corruption and I/O errors."""

from __future__ import annotations

import os
import random

import attrs
import pytest

from cctmpfs.cipher import RecordCipher
from cctmpfs.coldstore import ColdReadError, ColdStore, Tally
from cctmpfs.device import Device
from cctmpfs.devlog import Location, SegmentLog

SEG = 64 * 1024


@attrs.define(eq=False)
class Owner:
    """Stands in for a StoredBlock: a payload (bytes or Location) and refs."""

    payload: object
    refs: int = 1

    @property
    def raw_len(self) -> int:
        return len(self.payload) if isinstance(self.payload, bytes) else self.payload.raw_len


@pytest.fixture(params=["plain", "encrypted"])
def cold(request, tmp_path):  # type: ignore[no-untyped-def]
    dev = Device.open(str(tmp_path / "back"), create_size=16 * SEG)
    store = ColdStore(dev, SegmentLog(dev.size, SEG),
                      RecordCipher() if request.param == "encrypted" else None, clock=lambda: 100.0)
    yield store
    dev.close()


def payloads(n: int, size: int = 9000, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


def evict(cold: ColdStore, owners: list[Owner]) -> list[Owner]:
    """Plan, write and publish until every owner is evicted (or fails)."""
    done: list[Owner] = []
    todo = list(owners)
    while todo:
        batch = cold.plan([(o, 1, o.payload) for o in todo])
        assert batch is not None
        cold.write_batch(batch)
        done += [p.owner for p in cold.publish(batch)]
        todo = todo[len(batch.entries):]
    return done


def settle_discards(cold: ColdStore) -> list[int]:
    segs = cold.take_discards()
    tally = Tally()
    cold.discard(segs, tally)
    cold.apply(tally)
    cold.finish_discards(segs)
    return segs


def read(cold: ColdStore, loc: Location) -> tuple[int, bytes]:
    """An evicted record, read back as the engine does: counts applied after."""
    tally = Tally()
    try:
        return cold.read(loc, tally)
    finally:
        cold.apply(tally)


def read_segment(cold: ColdStore, seg: int) -> bytes:
    tally = Tally()
    data = cold.read_segment(seg, tally)
    cold.apply(tally)
    assert data is not None
    return data


def test_evicted_payloads_read_back_exactly(cold: ColdStore) -> None:
    data = payloads(15)
    owners = [Owner(p) for p in data]
    assert evict(cold, owners) == owners
    assert all(isinstance(o.payload, Location) for o in owners)
    assert len({o.payload.segment for o in owners}) >= 3      # 6 records of 9 KiB per 64 KiB
    for o, p in zip(owners, data):
        assert read(cold, o.payload) == (1, p)
    c = cold.counters
    assert (c.evictions, c.bytes_evicted, c.cold_reads) == (15, 15 * 9000, 15)
    assert cold.device.counters.writes == len({o.payload.segment for o in owners})


def test_the_device_holds_no_readable_data_when_encrypted(tmp_path) -> None:
    dev = Device.open(str(tmp_path / "back"), create_size=16 * SEG)
    text = b"the secret contents of a /tmp file, easy to spot. " * 100
    for cipher, visible in ((RecordCipher(), False), (None, True)):
        cold = ColdStore(dev, SegmentLog(dev.size, SEG), cipher)
        o = Owner(text)
        evict(cold, [o])
        with open(tmp_path / "back", "rb") as f:
            raw = f.read()
        assert (text[:40] in raw) is visible
        assert read(cold, o.payload) == (1, text)
        cold.free(o.payload)
        settle_discards(cold)
    dev.close()


def test_a_block_that_changes_or_dies_meanwhile_is_not_evicted(cold: ColdStore) -> None:
    a, b, c = (Owner(p) for p in payloads(3))
    batch = cold.plan([(o, 1, o.payload) for o in (a, b, c)])
    cold.write_batch(batch)
    b.payload = b"rewritten while the segment was written"
    c.refs = 0
    assert [p.owner for p in cold.publish(batch)] == [a]
    assert b.payload == b"rewritten while the segment was written"
    assert cold.counters.evictions_dropped == 2
    seg = a.payload.segment
    assert cold.log.usage[seg].live_bytes == a.payload.length


def test_freeing_empties_discards_and_reuses_a_segment(cold: ColdStore, tmp_path) -> None:
    owners = [Owner(p) for p in payloads(6)]
    evict(cold, owners)
    seg = owners[0].payload.segment
    for o in owners:
        if o.payload.segment == seg:
            cold.free(o.payload)
    assert cold.log.usage[seg].state == "emptied" and seg not in cold.log.free
    assert settle_discards(cold) == [seg]
    assert cold.device.counters.discards == 1
    assert seg in cold.log.free and cold.log.usage[seg].state == "free"
    # A discarded file segment is a hole again.
    with open(tmp_path / "back", "rb") as f:
        f.seek(seg * SEG)
        assert f.read(SEG) == bytes(SEG)


def test_corruption_gives_an_error_for_that_record_only(cold: ColdStore, tmp_path) -> None:
    owners = [Owner(p) for p in payloads(4)]
    data = [o.payload for o in owners]
    evict(cold, owners)
    victim = owners[1].payload
    with open(tmp_path / "back", "r+b") as f:
        f.seek(victim.segment * SEG + victim.offset + 100)
        f.write(b"\xff\x00\xff")
    with pytest.raises(ColdReadError):
        read(cold, victim)
    assert cold.counters.checksum_errors == 1
    for i in (0, 2, 3):
        assert read(cold, owners[i].payload) == (1, data[i])


def test_a_failed_segment_write_keeps_the_blocks_in_ram(cold: ColdStore) -> None:
    owners = [Owner(p) for p in payloads(3)]
    data = [o.payload for o in owners]
    real_fd = cold.device.fd
    cold.device.fd = os.open("/dev/null", os.O_RDONLY)   # the seam: writes fail with EBADF
    try:
        batch = cold.plan([(o, 1, o.payload) for o in owners])
        cold.write_batch(batch)
        assert batch.error is not None
        assert cold.publish(batch) == []
    finally:
        os.close(cold.device.fd)
        cold.device.fd = real_fd
    assert [o.payload for o in owners] == data
    assert cold.counters.io_errors == 1 and cold.log.live_bytes == 0
    assert settle_discards(cold) == [batch.segment]


def test_cleaning_moves_the_live_records_and_frees_the_segment(cold: ColdStore) -> None:
    owners = [Owner(p) for p in payloads(12)]
    data = {id(o): o.payload for o in owners}
    evict(cold, owners)
    seg = owners[0].payload.segment
    in_seg = [o for o in owners if o.payload.segment == seg]
    for o in in_seg[:-2]:                       # leave two live records in it
        cold.free(o.payload)
        o.refs = 0
    keep = in_seg[-2:]
    assert cold.pick_segments_to_clean(1) == [seg]
    raw = read_segment(cold, seg)
    batch = cold.plan([], [(seg, raw)])
    cold.write_batch(batch)
    assert cold.publish(batch) == []
    cold.note_cleaned([seg])
    assert all(o.payload.segment == batch.segment for o in keep)
    assert cold.log.usage[seg].state == "emptied"
    for o in owners:
        if o.refs:
            assert read(cold, o.payload) == (1, data[id(o)])
    assert cold.counters.records_moved == 2 and cold.counters.segments_cleaned == 1


def test_a_cleaning_batch_fills_up_with_evictions(cold: ColdStore) -> None:
    """On a full device, moving one live record frees its segment, and the
    same new segment takes fresh evictions: cleaning makes room."""
    owners = [Owner(p) for p in payloads(6)]
    evict(cold, owners)
    seg = owners[0].payload.segment
    for o in owners:
        if o.payload.segment == seg and o is not owners[0]:
            cold.free(o.payload)
            o.refs = 0
    fresh = [Owner(p) for p in payloads(3, seed=1)]
    batch = cold.plan([(o, 1, o.payload) for o in fresh], [(seg, read_segment(cold, seg))])
    cold.write_batch(batch)
    assert len(cold.publish(batch)) == 3
    assert owners[0].payload.segment == batch.segment == fresh[0].payload.segment
    assert cold.log.usage[seg].state == "emptied"


def test_a_block_freed_while_its_segment_is_cleaned(cold: ColdStore) -> None:
    owners = [Owner(p) for p in payloads(6)]
    evict(cold, owners)
    seg = owners[0].payload.segment
    in_seg = [o for o in owners if o.payload.segment == seg]
    batch = cold.plan([], [(seg, read_segment(cold, seg))])
    cold.write_batch(batch)
    gone = in_seg[0]
    cold.free(gone.payload)                     # its last reference went meanwhile
    gone.refs = 0
    cold.publish(batch)
    assert cold.counters.records_moved == len(in_seg) - 1
    total_live = sum(o.payload.length for o in owners if o.refs)
    assert cold.log.live_bytes == total_live


class Watched(Owner):
    """An Owner that counts how often anything looks at where it is."""

    looks: int = 0

    def __getattribute__(self, name: str) -> object:
        if name == "payload":
            object.__setattr__(self, "looks", object.__getattribute__(self, "looks") + 1)
        return object.__getattribute__(self, name)


def test_cleaning_visits_only_the_victim_segments_records(cold: ColdStore) -> None:
    """Cleaning costs what the cleaned segment holds: with some 1,300 evicted
    blocks in 12 other segments, planning the clean of one segment looks at
    its 3 live records and at no other block (issue 14: it used to scan
    every evicted block)."""
    victims = [Watched(p) for p in payloads(120, size=500, seed=1)]
    evict(cold, victims)
    seg = victims[0].payload.segment
    in_seg = [o for o in victims if o.payload.segment == seg]
    assert len(in_seg) > 100                              # 500-byte records: ~120 per segment
    others = [Watched(p) for p in payloads(1300, size=500, seed=2)]
    evict(cold, others)
    assert len({o.payload.segment for o in others}) >= 10
    assert seg not in {o.payload.segment for o in others}
    for o in in_seg[3:]:
        cold.free(o.payload)
        o.refs = 0
    keep = in_seg[:3]
    for o in victims + others:
        o.looks = 0
    scanned = cold.counters.records_scanned
    batch = cold.plan([], [(seg, read_segment(cold, seg))])
    assert cold.counters.records_scanned - scanned == 3
    assert sum(o.looks for o in others) == 0, "the cleaner looked at blocks of other segments"
    cold.write_batch(batch)
    cold.publish(batch)
    assert [o.payload.segment for o in keep] == [batch.segment] * 3
    assert set(cold.segment_records[batch.segment].values()) == set(keep)
    assert seg not in cold.segment_records
    for o, p in zip(victims[:3], payloads(3, size=500, seed=1)):
        assert read(cold, o.payload) == (1, p)


def test_the_per_segment_records_follow_evictions_moves_and_frees(cold: ColdStore) -> None:
    owners = [Owner(p) for p in payloads(12)]
    evict(cold, owners)

    def by_segment() -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for o in owners:
            if o.refs and isinstance(o.payload, Location):
                out.setdefault(o.payload.segment, set()).add(id(o))
        return out

    def recorded() -> dict[int, set[int]]:
        return {seg: {id(o) for o in recs.values()} for seg, recs in cold.segment_records.items()}

    assert recorded() == by_segment() and len(recorded()) >= 2
    seg = owners[0].payload.segment
    for o in [o for o in owners if o.payload.segment == seg][1:]:
        cold.free(o.payload)
        o.refs = 0
    assert recorded() == by_segment()
    batch = cold.plan([], [(seg, read_segment(cold, seg))])
    assert recorded() == by_segment()                     # nothing moves before the publish
    cold.write_batch(batch)
    cold.publish(batch)
    assert owners[0].payload.segment == batch.segment
    assert recorded() == by_segment()
    for o in owners:
        if o.refs:
            cold.free(o.payload)
            o.refs = 0
    assert cold.segment_records == {}
