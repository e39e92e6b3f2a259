"""Codec: round trips, RAW fallback, per-thread contexts."""

from __future__ import annotations

import os
import random
import threading

import lz4.block
import pytest
import zstandard

from cctmpfs.codec import MIN_SAVING_SHIFT, Codec, CodecId, decoded_length

CODECS = ["zstd", "lz4", "none"]
EXPECTED_ID = {"zstd": CodecId.ZSTD, "lz4": CodecId.LZ4, "none": CodecId.RAW}


def compressible(n: int, seed: int = 1) -> bytes:
    """Text-like data: words from a small vocabulary."""
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"\n", b"epsilon", b"zeta", b"  "]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


SAMPLES = {
    "text": compressible(128 * 1024),
    "random": os.urandom(128 * 1024),
    "zeros": bytes(128 * 1024),
    "short": b"abc",
    "one": b"\x00",
    "empty": b"",
    "half": compressible(8192) + os.urandom(8192),
}


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_round_trip(name: str, sample: str) -> None:
    c = Codec(name)
    raw = SAMPLES[sample]
    cid, payload = c.compress(raw)
    assert isinstance(payload, bytes)
    assert c.decompress(cid, payload, len(raw)) == raw
    # Never larger than raw: incompressible data is kept as is.
    assert len(payload) <= len(raw)
    if cid == CodecId.RAW:
        assert payload == raw


def test_cold_data_is_compressed_at_the_recompress_level_when_the_mount_recompresses() -> None:
    raw = SAMPLES["text"]
    strong = Codec("zstd", 3, 9).compress_cold(raw)
    assert strong[0] == CodecId.ZSTD and strong[2] is True
    assert strong[1] == zstandard.ZstdCompressor(level=9, write_content_size=True,
                                                 write_checksum=False).compress(raw)
    assert Codec("lz4", 3, 9).compress_cold(raw)[::2] == (CodecId.ZSTD, True)   # lz4 goes to zstd
    # Not when the mount does not recompress, or not to a stronger level.
    for c in (Codec("zstd", 3, 0), Codec("zstd", 9, 9), Codec("lz4", 3, 0)):
        cid, payload, strong_ = c.compress_cold(raw)
        assert not strong_ and (cid, payload) == c.compress(raw)
    assert Codec("none", 3, 9).compress_cold(raw) == (CodecId.RAW, raw, False)
    # Incompressible: stored raw, as compress() would.
    noise = SAMPLES["random"]
    assert Codec("zstd", 3, 9).compress_cold(noise) == (CodecId.RAW, noise, False)


@pytest.mark.parametrize("name", CODECS)
def test_a_prefix_decode_gives_at_least_the_prefix_asked_for(name: str) -> None:
    c = Codec(name)
    raw = compressible(1024 * 1024, seed=7)   # a pack: eight zstd blocks of 128 KiB
    cid, payload = c.compress(raw)
    for n in (0, 1, 4096, 128 * 1024, 128 * 1024 + 1, 700_000, len(raw) - 1, len(raw)):
        out = c.decompress_prefix(cid, memoryview(payload), len(raw), n)
        assert len(out) >= n and out == raw[:len(out)]
        if name == "zstd" and n:
            assert len(out) == n   # zstd stops there
    if name == "zstd":
        with pytest.raises(ValueError):   # a payload that decodes short
            c.decompress_prefix(cid, payload[:len(payload) // 2], len(raw), len(raw) - 1)


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_mutable_decode_gives_a_private_bytearray(name: str, sample: str) -> None:
    c = Codec(name)
    raw = SAMPLES[sample]
    cid, payload = c.compress(raw)
    out = c.decompress(cid, payload, len(raw), mutable=True)
    assert type(out) is bytearray and out == raw
    if out:
        out[0] ^= 0xFF            # patching it leaves the stored payload intact
        assert c.decompress(cid, payload, len(raw)) == raw


def test_mutable_zstd_decode_checks_the_length() -> None:
    c = Codec("zstd")
    cid, payload = c.compress(SAMPLES["text"])
    with pytest.raises(ValueError, match="expected"):
        c.decompress(cid, payload, len(SAMPLES["text"]) + 1, mutable=True)


@pytest.mark.parametrize("name", CODECS)
def test_round_trip_of_bytearray_and_memoryview_input(name: str) -> None:
    c = Codec(name)
    raw = compressible(50_000, seed=7)
    for form in (bytearray(raw), memoryview(raw)):
        cid, payload = c.compress(form)
        # A RAW payload is the input itself (the store copies it into its arena).
        assert isinstance(payload, bytes) or (cid == CodecId.RAW and payload is form)
        assert c.decompress(cid, payload, len(raw)) == raw


@pytest.mark.parametrize("name", CODECS)
def test_decoding_a_view_returns_bytes_that_outlive_it(name: str) -> None:
    """Reads decode straight from the payload arena through a view, which is
    released after: the result must not refer to it."""
    c = Codec(name)
    raw = compressible(50_000, seed=8)
    cid, payload = c.compress(raw)
    held = bytearray(payload)
    view = memoryview(held)
    out = c.decompress(cid, view, len(raw))
    view.release()
    held[:] = bytes(len(held))
    assert type(out) is bytes and out == raw


@pytest.mark.parametrize("name", ["zstd", "lz4"])
def test_compressible_data_is_compressed_with_the_mount_codec(name: str) -> None:
    c = Codec(name)
    for raw in (SAMPLES["text"], SAMPLES["zeros"]):
        cid, payload = c.compress(raw)
        assert cid == EXPECTED_ID[name]
        assert len(payload) < len(raw) // 2


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("sample", ["random", "short", "one", "empty"])
def test_incompressible_falls_back_to_raw(name: str, sample: str) -> None:
    cid, payload = Codec(name).compress(SAMPLES[sample])
    assert cid == CodecId.RAW
    assert payload == SAMPLES[sample]


def test_payload_must_save_the_minimum_fraction() -> None:
    # Half random, half text: compresses but by how much decides the codec id.
    c = Codec("zstd")
    for raw in (SAMPLES["half"], compressible(4096) + os.urandom(60_000)):
        cid, payload = c.compress(raw)
        real = zstandard.ZstdCompressor(level=3, write_content_size=True,
                                        write_checksum=False).compress(raw)
        keeps = len(real) <= len(raw) - (len(raw) >> MIN_SAVING_SHIFT)
        assert (cid == CodecId.ZSTD) == keeps
        assert c.decompress(cid, payload, len(raw)) == raw


def test_none_codec_never_compresses() -> None:
    c = Codec("none")
    for raw in (SAMPLES["text"], SAMPLES["zeros"]):
        assert c.compress(raw) == (CodecId.RAW, raw)


def test_any_codec_decodes_any_id() -> None:
    # A mount decodes blocks written under another compress= setting.
    raw = SAMPLES["text"]
    blocks = [Codec(n).compress(raw) for n in CODECS]
    assert {cid for cid, _ in blocks} == {CodecId.ZSTD, CodecId.LZ4, CodecId.RAW}
    for reader in CODECS:
        for cid, payload in blocks:
            assert Codec(reader).decompress(cid, payload, len(raw)) == raw


def test_zstd_level_is_used() -> None:
    raw = compressible(128 * 1024, seed=3)
    sizes = {lvl: len(Codec("zstd", lvl).compress(raw)[1]) for lvl in (-7, 19)}
    assert sizes[19] < sizes[-7]
    assert Codec("zstd", 19).decompress(CodecId.ZSTD, Codec("zstd", 19).compress(raw)[1],
                                        len(raw)) == raw


def test_ids_are_the_stored_format() -> None:
    assert (int(CodecId.RAW), int(CodecId.ZSTD), int(CodecId.LZ4)) == (0, 1, 2)


def test_zstd_frames_carry_their_content_size_but_no_checksum() -> None:
    raw = SAMPLES["text"]
    _, payload = Codec("zstd").compress(raw)
    params = zstandard.get_frame_parameters(payload)
    assert params.content_size == len(raw)
    assert not params.has_checksum and params.dict_id == 0


def test_lz4_payload_is_a_block_with_its_size_prefix() -> None:
    raw = SAMPLES["text"]
    _, payload = Codec("lz4").compress(raw)
    assert int.from_bytes(payload[:4], "little") == len(raw)
    assert lz4.block.decompress(payload[4:], uncompressed_size=len(raw)) == raw


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("n", [1, 255, 256, 65_791, 65_792, 128 * 1024, 1 << 20])
def test_every_payload_knows_its_decoded_length(name: str, n: int) -> None:
    for raw in (compressible(n, seed=n), os.urandom(n)):
        cid, payload = Codec(name).compress(raw)
        assert decoded_length(cid, payload) == n


def test_wrong_length_or_id_is_refused() -> None:
    c = Codec("zstd")
    raw = SAMPLES["text"]
    cid, payload = c.compress(raw)
    with pytest.raises(Exception):
        c.decompress(cid, payload, len(raw) - 1)
    with pytest.raises(ValueError):
        c.decompress(9, payload, len(raw))
    with pytest.raises(ValueError):
        Codec("gzip")


@pytest.mark.parametrize("name", CODECS)
def test_concurrent_threads_round_trip(name: str) -> None:
    """One Codec shared by threads: each thread gets its own contexts."""
    c = Codec(name)
    n_threads, rounds = 8, 40
    errors: list[str] = []
    contexts: dict[int, object] = {}
    start = threading.Barrier(n_threads)

    def work(t: int) -> None:
        rng = random.Random(t)
        start.wait()
        for i in range(rounds):
            size = rng.randrange(1, 64 * 1024)
            kind = rng.randrange(3)
            if kind == 0:
                raw = compressible(size, seed=t * 1000 + i)
            elif kind == 1:
                raw = rng.randbytes(size)
            else:
                raw = bytes([t]) * size
            cid, payload = c.compress(raw)
            back = c.decompress(cid, payload, len(raw))
            if back != raw:
                errors.append(f"thread {t} round {i}: {cid!r} mismatch")
        contexts[t] = getattr(c._local, "zc", None)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(contexts) == n_threads
    if name == "zstd":
        ids = {id(ctx) for ctx in contexts.values()}
        assert None not in contexts.values()
        assert len(ids) == n_threads, "threads shared a ZstdCompressor"


def test_idle_thread_drops_its_compressors_and_makes_them_again() -> None:
    """drop_unused_compressors keeps contexts used since its last call and
    drops the calling thread's compressors (not the decompressor) after a
    call with no compression in between; the next block makes one again."""
    c = Codec("zstd", level=3, recompress_level=9)
    raw = SAMPLES["text"][:128 * 1024]
    cid, payload = c.compress(raw)
    c.compress_strong(raw)
    c.decompress(cid, payload, len(raw))
    with_all = c.context_bytes()
    assert with_all > 2_000_000                      # two compressors of >1 MB each
    assert c.drop_unused_compressors() == 0          # both used since the last call
    freed = c.drop_unused_compressors()
    assert freed > 2_000_000
    assert c.context_bytes() == with_all - freed > 0   # the decompressor stays
    assert c.drop_unused_compressors() == 0          # nothing left to drop
    cid2, payload2 = c.compress(raw)
    assert (cid2, payload2) == (cid, payload)
    assert c.context_bytes() > with_all - freed


def test_a_thread_drops_only_its_own_compressors() -> None:
    c = Codec("zstd", level=3)
    raw = SAMPLES["text"][:128 * 1024]
    c.compress(raw)
    here = c.context_bytes()
    t = threading.Thread(target=lambda: (c.compress(raw), c.drop_unused_compressors(),
                                         c.drop_unused_compressors()))
    # The other thread dropped its own, made while it ran; ours stays.
    t.start()
    t.join()
    assert c.context_bytes() == here
    assert c.drop_unused_compressors() == 0 and c.drop_unused_compressors() > 1_000_000
