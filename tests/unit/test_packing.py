"""Small-file packing (packing.py, issue 15 item 4) without a mount: cold
small blocks are packed into shared compressed packs on the idle sealer,
read back identically, moved back to private blocks by a write or truncate,
freed by unlink, repacked once mostly dead, shared with dedup, and checked.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cctmpfs import faults
from cctmpfs.arena import ArenaFull
from cctmpfs.check import check_all
from cctmpfs.codec import CodecId
from cctmpfs.namespace import ROOT_INO
from cctmpfs.blockstore import RECORD_BYTES
from cctmpfs.packing import CACHE_COLD_SECONDS, MEMBER_EXTRA_BYTES, PACK_QUIET_SECONDS, PackRef, pack_ref

from .test_filemap import BS, Harness
from .test_recompress import source_text


def small_files(h: Harness, n: int, seed: int = 0, sizes: tuple[int, int] = (200, 3000)) -> list[int]:
    """n closed files of real source text, sealed, with no clean copies."""
    rng = random.Random(seed)
    inos = []
    for i in range(n):
        ino = h.create()
        assert h.write(ino, 0, source_text(rng.randrange(*sizes), seed * 1000 + i))
        h.fs.release(ino)
        inos.append(ino)
    settle_buffer(h)
    return inos


def settle_buffer(h: Harness) -> None:
    h.eng.seal_everything()
    for s in list(h.eng.buffer.slots):   # clean copies out: blocks are stored only
        h.eng._drop_clean(s)


def pack_all(h: Harness) -> int:
    """Let the mount go quiet and run the idle passes until nothing is left to pack."""
    c = h.fs.packer.counters
    before = c.packs_made
    h.eng.background_pass()   # notes the activity so far
    h.clock.advance(PACK_QUIET_SECONDS + 1)
    for _ in range(100):
        if not h.fs.packer.background_pass():
            break
    return c.packs_made - before


def members(h: Harness, ino: int) -> list[object]:
    return [s.stored for s in h.fs.inodes[ino].data.blocks.values()
            if s.stored is not None and s.stored.packed]


@pytest.mark.parametrize("pack_blocks", [1, 4])
def test_small_files_are_packed_smaller_and_read_back_identically(pack_blocks: int) -> None:
    h = Harness(buffer_blocks=8, pack_bytes=pack_blocks * BS)
    inos = small_files(h, 60)
    c = h.fs.store.counters
    before_bytes, before_blocks = c.stored_bytes, c.blocks
    assert pack_all(h) > 0
    pk = h.fs.packer
    assert pk.members == 60 and 1 <= len(pk.packs) < 60
    # Packs are built to the pack size, not past it (a member is at most half a block).
    assert max(info.raw_len for info in pk.packs.values()) <= pack_blocks * BS
    assert max(info.raw_len for info in pk.packs.values()) > (pack_blocks - 0.5) * BS
    assert c.blocks == len(pk.packs) < before_blocks
    saved = pk.counters.bytes_saved
    assert c.stored_bytes == before_bytes - saved < before_bytes
    assert check_all(h.fs) == []
    h.check()
    for ino in inos:
        assert members(h, ino)
        h.read(ino, 0, BS)
    # A directory read in order decodes each pack at most twice: its first
    # member's prefix, then all of it.
    assert pk.counters.decodes <= 2 * len(pk.packs) + 1
    assert pk.counters.cache_hits >= 60 - pk.counters.decodes
    assert h.eng.buffer.pack_cache_bytes <= pk.cache_budget
    h.check()
    # Cold, the decoded packs are dropped again.
    h.clock.advance(60)
    h.fs.packer.background_pass()
    assert h.eng.buffer.pack_cache_bytes == 0 and not pk.cache
    assert check_all(h.fs) == []


def test_write_and_truncate_move_a_member_back_to_a_private_block() -> None:
    h = Harness(buffer_blocks=8)
    inos = small_files(h, 20, seed=1)
    pack_all(h)
    pk = h.fs.packer
    a, b, c_ = inos[:3]
    assert members(h, a) and members(h, b) and members(h, c_)
    assert h.write(a, 10, b"written over a packed member")
    assert not members(h, a)
    assert pk.counters.write_loads == 1 and pk.counters.members_freed == 1
    h.truncate(b, 100)
    assert not members(h, b)
    h.truncate(c_, 5000)   # growing keeps the member: the rest is a hole
    h.check()
    settle_buffer(h)
    h.check()
    for ino in inos:
        h.read(ino, 0, 2 * BS)
    assert check_all(h.fs) == []


def test_unlink_frees_members_and_mostly_dead_packs_are_repacked_then_freed() -> None:
    h = Harness(buffer_blocks=8)
    inos = small_files(h, 80, seed=2)
    pack_all(h)
    pk = h.fs.packer
    packs_before = len(pk.packs)
    mapped = h.fs.store.counters.stored_bytes
    rng = random.Random(5)
    doomed = rng.sample(inos, 60)
    for ino in doomed:
        h.delete(ino, order=("unlink", "forget"))
    assert pk.members == 20
    assert pk.repack, "no pack fell under the live threshold"
    h.check()
    pack_all(h)
    assert pk.counters.repacks > 0
    assert pk.raw_bytes - pk.live_bytes < (1 - 0.5) * pk.raw_bytes or not pk.packs
    assert len(pk.packs) < packs_before
    assert h.fs.store.counters.stored_bytes < mapped
    h.check()
    for ino in h.models:
        h.read(ino, 0, BS)
    for ino in list(h.models):
        h.delete(ino, order=("unlink", "forget"))
    assert not pk.packs and pk.members == pk.live_bytes == pk.raw_bytes == 0
    h.check_empty()


def test_a_member_read_alone_decodes_its_pack_only_up_to_its_end() -> None:
    h = Harness(buffer_blocks=8, pack_bytes=4 * BS)
    inos = small_files(h, 60, seed=6)
    pack_all(h)
    pk = h.fs.packer
    first = {}
    for ino in inos:   # the first member of each pack
        m = members(h, ino)[0]
        first.setdefault(m.payload.pack, (m.payload.offset, ino))
    pack, (offset, ino) = max(first.items(), key=lambda kv: kv[0].raw_len)
    assert offset == 0 and pack.raw_len > 2 * BS
    end = offset + len(h.models[ino])
    h.read(ino, 0, BS)
    assert len(pk.cache[pack][0]) == end < pack.raw_len   # a prefix, cached
    decodes = pk.counters.decodes
    h.read(ino, 0, BS)
    assert pk.counters.decodes == decodes                 # served by the prefix
    last = max((i for i in inos if members(h, i)[0].payload.pack is pack),
               key=lambda i: members(h, i)[0].payload.offset)
    for s in list(h.eng.buffer.slots):   # its clean copy out: the read asks the pack again
        h.eng._drop_clean(s)
    h.read(last, 0, BS)
    assert len(pk.cache[pack][0]) == pack.raw_len         # past the prefix: all of it
    assert pk.counters.decodes == decodes + 1
    assert h.eng.buffer.pack_cache_bytes == sum(len(d) for d, _ in pk.cache.values())
    h.check()


def test_a_copy_of_packed_files_decodes_each_pack_once_to_share_them() -> None:
    """The sealer's dedup check of a copy (peek_member) reads the members of
    one pack after another: it decodes each pack once, and drops the last
    one it decoded once it has been unused for CACHE_COLD_SECONDS."""
    h = Harness(buffer_blocks=8, pack_bytes=4 * BS)
    inos = small_files(h, 60, seed=5)
    pack_all(h)
    pk = h.fs.packer
    packs = len(pk.packs)
    assert 1 < packs < 60
    decodes = []
    real = h.eng.codec.decompress

    def counting(cid, payload, raw_len, mutable=False):  # type: ignore[no-untyped-def]
        decodes.append(raw_len)
        return real(cid, payload, raw_len, mutable)

    h.eng.codec.decompress = counting  # type: ignore[method-assign]
    twins = []
    for ino in inos:
        twin = h.create()
        assert h.write(twin, 0, bytes(h.models[ino]))
        h.fs.release(twin)
        twins.append(twin)
    settle_buffer(h)
    for ino, twin in zip(inos, twins):
        assert members(h, twin) == members(h, ino)   # shared, not stored again
    assert len(decodes) <= packs
    assert pk._peeked is not None
    h.clock.advance(CACHE_COLD_SECONDS + 1)
    pk.background_pass()
    assert pk._peeked is None
    h.check()


def test_dedup_shares_a_packed_member_and_unlinking_one_copy_keeps_the_other() -> None:
    h = Harness(buffer_blocks=8)
    inos = small_files(h, 10, seed=3)
    pack_all(h)
    pk = h.fs.packer
    body = bytes(h.models[inos[4]])
    member = members(h, inos[4])[0]
    twin = h.create()
    assert h.write(twin, 0, body)
    h.fs.release(twin)
    settle_buffer(h)
    assert members(h, twin) == [member] and member.refs == 2   # shared, not stored again
    assert h.fs.store.dedup_counters.shared >= 1
    h.delete(inos[4], order=("unlink", "forget"))
    assert member.refs == 1 and pk.members == 10
    h.read(twin, 0, BS)
    h.check()


def test_a_full_arena_skips_packing_and_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(buffer_blocks=8)
    small_files(h, 30, seed=4)
    store = h.fs.store

    def full(*_a: object, **_k: object) -> None:
        raise ArenaFull("test: no room")

    monkeypatch.setattr(store.arena, "alloc", full)
    assert pack_all(h) == 0
    assert h.fs.packer.counters.arena_full > 0 and not h.fs.packer.packs
    monkeypatch.undo()
    h.check()
    assert pack_all(h) > 0   # room again: the next idle pass packs them
    h.check()


def test_a_failing_pack_encode_changes_nothing() -> None:
    h = Harness(buffer_blocks=8)
    small_files(h, 30, seed=6)
    faults.arm("pack.encode:1")
    try:
        assert pack_all(h) == 0
    finally:
        faults.disarm()
    assert h.fs.packer.counters.errors >= 1 and not h.fs.packer.packs
    h.check()


def test_blocks_that_change_while_packed_unlocked_are_left_alone() -> None:
    from .test_arena import CallbackLock
    lock = CallbackLock()
    h = Harness(buffer_blocks=8, lock=lock)
    inos = small_files(h, 12, seed=7)
    h.eng.background_pass()
    h.clock.advance(PACK_QUIET_SECONDS + 1)
    victims = inos[:6]

    def meanwhile() -> None:   # while the pack is compressed unlocked
        for ino in victims[:3]:
            h.fs.unlink(ROOT_INO, h.names[ino])
            h.fs.forget(ino, 1)
            del h.models[ino], h.names[ino]
        for ino in victims[3:]:
            h.fs.write(ino, 0, b"changed")
            h.models[ino][0:7] = b"changed"

    lock.on_release = meanwhile
    h.fs.packer.background_pass()
    for ino in victims[3:]:
        assert not members(h, ino)
    h.check()
    settle_buffer(h)
    h.check()


def test_packs_are_evicted_and_members_read_back_from_the_device(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .test_eviction import with_device
    h = Harness(buffer_blocks=8)
    with_device(h, str(tmp_path / "dev"), device_segments=64)
    inos = small_files(h, 60, seed=8)
    pack_all(h)
    pk = h.fs.packer
    assert pk.packs
    h.eng.evict(0)
    assert not any(p.in_ram for p in pk.packs), "packs stayed in RAM"
    assert check_all(h.fs) == []
    for ino in inos:
        h.read(ino, 0, BS)
    assert h.write(inos[0], 0, b"new")
    h.delete(inos[1], order=("unlink", "forget"))
    h.check()


def test_pack_off_builds_no_pack() -> None:
    h = Harness(buffer_blocks=8)
    h.fs.packer.enabled = False
    small_files(h, 20, seed=9)
    assert pack_all(h) == 0 and not h.fs.packer.packs


def test_check_finds_a_wrong_pack_record() -> None:
    h = Harness(buffer_blocks=8)
    small_files(h, 20, seed=10)
    pack_all(h)
    pack, info = next(iter(h.fs.packer.packs.items()))
    info.live_bytes += 1
    assert any("live_bytes" in v for v in check_all(h.fs))
    info.live_bytes -= 1
    m = info.members[0]
    ref = m.payload
    assert type(ref) is PackRef
    m.payload = pack_ref(pack, ref.offset + 1, ref.raw_len)   # overlaps its neighbour or passes the end
    assert check_all(h.fs)
    m.payload = ref
    assert check_all(h.fs) == []


OPS = st.lists(st.tuples(st.sampled_from(["write", "truncate", "delete", "create", "idle", "read"]),
                         st.integers(0, 7), st.integers(0, 3 * BS), st.integers(1, 5000)),
               max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.sampled_from([1, 4]))
def test_random_operations_against_a_model_with_packing(ops: list[tuple[str, int, int, int]],
                                                        pack_blocks: int) -> None:
    h = Harness(buffer_blocks=4, pack_bytes=pack_blocks * BS)
    inos = small_files(h, 8, seed=11, sizes=(10, 6000))
    for op, k, off, n in ops:
        live = list(h.models)
        if op == "create" or not live:
            ino = h.create()
            h.write(ino, 0, source_text(n, k))
            h.fs.release(ino)
            continue
        ino = live[k % len(live)]
        if op == "write":
            h.write(ino, off % (2 * BS), source_text(n, off))
        elif op == "truncate":
            h.truncate(ino, off)
        elif op == "delete":
            h.delete(ino, order=("unlink", "forget"))
        elif op == "read":
            h.read(ino, off, n)
        else:
            settle_buffer(h)
            pack_all(h)
        h.check()
    settle_buffer(h)
    pack_all(h)
    h.check()
    for ino in h.models:
        h.read(ino, 0, 3 * BS)
    del inos


def test_idle_recompression_recompresses_packs_and_members_read_back() -> None:
    from .test_recompress import settle as recompress_all
    h = Harness(buffer_blocks=8)
    h.eng.codec.recompress_level = 9
    inos = small_files(h, 40, seed=12)
    pack_all(h)
    pk = h.fs.packer
    assert pk.packs
    recompress_all(h)
    assert any(p.recompressed or p.settled for p in pk.packs)
    assert check_all(h.fs) == []
    for ino in inos:
        h.read(ino, 0, BS)
    h.check()


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_packs_are_built_at_the_recompress_level_and_recompression_leaves_them(codec: str) -> None:
    from .test_recompress import settle as recompress_all
    h = Harness(codec=codec, buffer_blocks=8, pack_bytes=4 * BS)
    h.eng.codec.recompress_level = 9
    inos = small_files(h, 40, seed=13)
    pack_all(h)
    pk = h.fs.packer
    assert pk.packs and all(p.recompressed and p.codec == CodecId.ZSTD for p in pk.packs)
    assert h.fs.store.counters.recompressed_blocks == len(pk.packs)
    assert check_all(h.fs) == []
    before = h.eng.recompress_counters.recompressed
    recompress_all(h)
    assert h.eng.recompress_counters.recompressed == before   # nothing left to do for the packs
    for ino in inos:
        h.read(ino, 0, BS)
    h.check()


def test_packs_are_built_at_the_mount_level_without_recompression() -> None:
    h = Harness(buffer_blocks=8, pack_bytes=4 * BS)
    assert h.eng.codec.recompress_level == 0
    small_files(h, 40, seed=14)
    pack_all(h)
    assert h.fs.packer.packs and not any(p.recompressed for p in h.fs.packer.packs)
    assert h.fs.store.counters.recompressed_blocks == 0
    h.check()


def test_what_packing_remembers_of_incompressible_blocks_goes_with_their_segments() -> None:
    """Packer._no_gain (blocks not worth packing) is pruned at the idle pass
    once their segments are released: after everything is deleted it holds
    nothing, where it used to keep every entry (two ints each, pinning
    pymalloc arenas)."""
    h = Harness(buffer_blocks=8)
    rng = random.Random(3)
    inos = []
    for _ in range(60):
        ino = h.create()
        assert h.write(ino, 0, rng.randbytes(rng.randrange(500, 3000)))
        h.fs.release(ino)
        inos.append(ino)
    settle_buffer(h)
    pk = h.fs.packer
    assert pack_all(h) == 0
    assert pk.counters.no_gain > 0 and pk._no_gain
    remembered = len(pk._no_gain)

    def idle_pass() -> None:
        h.eng.background_pass()   # notes the deletes as activity
        h.clock.advance(60)
        assert h.eng.idle()
        h.eng.idle_compact()

    idle_pass()   # nothing was released: every entry stays
    assert len(pk._no_gain) == remembered
    for ino in inos:
        h.delete(ino, order=("unlink", "forget"))
    c = h.fs.store.arena.counters
    assert c.segments_released + c.heads_reset > 0
    idle_pass()
    assert pk._no_gain == {}
    h.check_empty()


def test_the_estimate_of_member_records_matches_tracemalloc() -> None:
    """What packing changes in RAM, measured with tracemalloc (each member's
    PackRef and span int made, its arena handle freed, its place in its
    pack's member list, the packs' records), against what stats estimates.
    Before stop 29 the estimate left out the members' own block records."""
    import gc
    import tracemalloc

    from cctmpfs import stats
    h = Harness(buffer_blocks=8, pack_bytes=8 * BS)
    pk = h.fs.packer
    # Traced from before the files are made: tracemalloc subtracts only the
    # frees of what it saw allocated (the members' arena handles).
    tracemalloc.start()
    try:
        small_files(h, 3000, seed=1, sizes=(300, 3000))
        gc.collect()
        est0 = stats.collect(h.fs)["memory"]["block_record_bytes"]
        assert est0 == 3000 * RECORD_BYTES
        s0 = tracemalloc.take_snapshot()
        pack_all(h)
        pk._no_gain.clear()    # transient: what packing tried and found no gain in
        pk._peeked = None
        pk._trim_cache(0)      # the decoded cache is the hot buffer's
        gc.collect()
        s1 = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    measured = sum(d.size_diff for d in s1.compare_to(s0, "filename")
                   if "tracemalloc" not in d.traceback[0].filename)
    est1 = stats.collect(h.fs)["memory"]["block_record_bytes"]
    m = pk.members
    assert m > 2900 and 10 < len(pk.packs) < 100
    assert est1 == (3000 - m + len(pk.packs) + m) * RECORD_BYTES + m * MEMBER_EXTRA_BYTES
    assert abs((est1 - est0) - measured) < 0.2 * measured, (est1 - est0, measured)
