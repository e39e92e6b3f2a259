"""Block codecs: zstd, lz4 or raw, each identified by a one-byte ID.

Every stored block records the ID of the codec that produced its payload, so
blocks written under different `compress=` settings (or stored raw because
they did not compress) always decode correctly.

Threading: compress() and decompress() run outside the global lock, on any
thread. Codec contexts are per thread: a ZstdCompressor shared between threads
crashed the process on this machine (anchors.md).
"""

from __future__ import annotations

import enum
import threading

import lz4.block
import zstandard


class CodecId(enum.IntEnum):
    """On-record codec identifier. Values are part of the stored-block format."""

    RAW = 0   # payload is the raw bytes themselves
    ZSTD = 1  # zstd frame with its content size, without checksum or dictionary ID
    LZ4 = 2   # lz4 block with its 4-byte little-endian size prefix (lz4.block store_size)


#: A compressed payload must save at least 1/32 (3%) of the raw size to be
#: kept; otherwise the block is stored raw and reads skip decompression.
MIN_SAVING_SHIFT = 5


def pays(raw_len: int, payload_len: int) -> bool:
    """Whether a payload saves at least MIN_SAVING_SHIFT's share of raw_len."""
    return payload_len <= raw_len - (raw_len >> MIN_SAVING_SHIFT)


def decoded_length(cid: int, payload: bytes | bytearray | memoryview) -> int:
    """The length a payload decodes to, read from the payload itself (~0.1 us)."""
    if cid == CodecId.RAW:
        return len(payload)
    if cid == CodecId.ZSTD:
        return zstandard.frame_content_size(payload)
    if cid == CodecId.LZ4:
        return int.from_bytes(payload[:4], "little")
    raise ValueError(f"unknown codec id {cid}")


class Codec:
    """Compresses with the mount's codec and decompresses any CodecId."""

    def __init__(self, name: str, level: int = 3, recompress_level: int = 0) -> None:
        if name not in ("zstd", "lz4", "none"):
            raise ValueError(f"unknown codec {name!r}")
        self.name = name
        self.level = level
        #: zstd level cold blocks are recompressed at by the idle sealer
        #: (DataEngine.recompress_pass); 0: off.
        self.recompress_level = recompress_level
        self._local = threading.local()
        #: Every zstd context made, by (thread, kind), for context_bytes(),
        #: which drops those of threads that ended (a daemon's threads live as
        #: long as the mount; a thread that ends would leave ~1.3 MB here).
        self._contexts: dict[tuple[int, str], object] = {}

    def recompresses(self, cid: int) -> bool:
        """Whether a block this codec stored as cid (and not recompressed
        yet) is worth recompressing: a zstd block sealed at a weaker level,
        or an lz4 one (zstd at any level beats lz4's ratio)."""
        if not self.recompress_level:
            return False
        if cid == CodecId.ZSTD:
            return self.recompress_level > self.level
        return cid == CodecId.LZ4

    def compress_strong(self, raw: bytes | bytearray) -> bytes:
        """raw as a zstd payload at recompress_level. Runs unlocked; the
        context is per thread, as for compress()."""
        c = getattr(self._local, "zs", None)
        if c is None:
            c = self._local.zs = zstandard.ZstdCompressor(
                level=self.recompress_level, write_content_size=True, write_checksum=False,
                write_dict_id=False)
            self._contexts[(threading.get_ident(), "zs")] = c
        self._local.compressed = True
        return c.compress(raw)

    def _zstd_c(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "zc", None)
        if c is None:
            # With the content size (1-4 bytes) the payload says its own
            # length (decoded_length), so the block record needs no int for
            # it; no checksum: the record is in RAM, and the device log will
            # carry its own.
            c = self._local.zc = zstandard.ZstdCompressor(
                level=self.level, write_content_size=True, write_checksum=False,
                write_dict_id=False)
            self._contexts[(threading.get_ident(), "zc")] = c
        self._local.compressed = True
        return c

    def _zstd_d(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "zd", None)
        if d is None:
            d = self._local.zd = zstandard.ZstdDecompressor()
            self._contexts[(threading.get_ident(), "zd")] = d
        return d

    def context_bytes(self) -> int:
        """The RAM of the zstd contexts made so far, as zstd counts it
        (ZSTD_sizeof_CCtx and _DCtx: match tables, window, buffers). A
        context is sized at its first use and kept while its thread lives:
        after a 128 KiB block, 1.30 MB for a compressor at level 3, 1.57 MB
        at level 9, 96 KB for a decompressor; a sealer and a request thread
        hold about 3 MB. Any thread may call it: the sizes are plain fields
        of each context, read while its own thread may be using it."""
        alive = {t.ident for t in threading.enumerate()}
        for key in [k for k in list(self._contexts) if k[0] not in alive]:
            self._contexts.pop(key, None)
        return sum(c.memory_size() for c in list(self._contexts.values()))  # type: ignore[attr-defined]

    def drop_unused_compressors(self) -> int:
        """Drop the calling thread's zstd compression contexts if it has
        not compressed since its last call; returns their bytes. The idle
        sealer calls it each idle pass: its two contexts (1.30 MB at level 3,
        1.57 MB at level 9) were 2.9 of the 26 MiB of RSS that /usr/include
        cost (results/s27-capacity), and a new one costs ~1 ms at its first
        block. Decompression contexts (96 KB) stay."""
        loc = self._local
        if getattr(loc, "compressed", False):
            loc.compressed = False
            return 0
        freed = 0
        for kind in ("zc", "zs"):
            c = getattr(loc, kind, None)
            if c is not None:
                freed += c.memory_size()
                delattr(loc, kind)
                self._contexts.pop((threading.get_ident(), kind), None)
        return freed

    def compress_cold(self, raw: bytes | bytearray) -> tuple[CodecId, bytes | bytearray, bool]:
        """Compress data that is already cold (a pack, packing.py) straight
        at the level idle recompression would bring it to, when the mount
        recompresses (recompresses(): stronger than the sealing level, or
        lz4). Returns (codec, payload, strong): strong says the payload is
        at recompress_level, so the block is born recompressed. Falls back
        to compress() when that does not pay. Runs unlocked."""
        cid = CodecId.LZ4 if self.name == "lz4" else CodecId.ZSTD
        if self.name != "none" and self.recompresses(cid):
            payload = self.compress_strong(raw)
            if pays(len(raw), len(payload)):
                return CodecId.ZSTD, payload, True
        cid2, plain = self.compress(raw)
        return cid2, plain, False

    def compress(self, raw: bytes | bytearray) -> tuple[CodecId, bytes | bytearray]:
        """Compress raw; fall back to RAW when compression does not pay.

        A RAW payload is raw itself, not a copy: the block store copies every
        payload into its arena anyway (arena.py), so a copy here would be a
        second one. The caller must not change raw before it is published.
        A compressed payload is a fresh bytes object that may hold much more
        memory than its length (zstd keeps its compressBound buffer: 131 KB
        for a 7 KB payload, arena.py), so it is not kept either."""
        n = len(raw)
        if self.name == "zstd":
            payload = self._zstd_c().compress(raw)
            cid = CodecId.ZSTD
        elif self.name == "lz4":
            payload = lz4.block.compress(raw, store_size=True)
            cid = CodecId.LZ4
        else:
            return CodecId.RAW, raw
        if not pays(n, len(payload)):
            return CodecId.RAW, raw
        return cid, payload

    def decompress_prefix(self, cid: int, payload: bytes | bytearray | memoryview, raw_len: int,
                          n: int) -> bytes | bytearray:
        """At least the first n of a payload's raw_len decoded bytes (n <=
        raw_len). zstd stops once it has them: it decodes whole zstd blocks
        of up to 128 KiB, so the first 4 KiB of a 1 MiB pack cost 95 us,
        512 KiB 436 us and the whole 1 MiB 762-805 us here (zstd -9 on
        stdlib sources). The other codecs decode everything."""
        if cid != CodecId.ZSTD or n >= raw_len:
            return self.decompress(cid, payload, raw_len)
        reader = self._zstd_d().stream_reader(payload, read_across_frames=False)
        out = reader.read(n)
        while len(out) < n:   # a reader may return less than asked
            more = reader.read(n - len(out))
            if not more:
                break
            out += more
        if len(out) != n:
            raise ValueError(f"codec {cid}: decoded {len(out)} bytes, expected at least {n}")
        return out

    def decompress(self, cid: int, payload: bytes | bytearray | memoryview, raw_len: int,
                   mutable: bool = False) -> bytes | bytearray:
        """Decode a payload, which may be a view into the payload arena (the
        codecs read any buffer; the result never refers to it). mutable=True
        returns a bytearray, for a block about to be written. Decoding
        straight into it saves a copy and a second fresh 128 KiB allocation:
        80 against 110 us per block when the memory is fresh (its page faults
        are most of either figure)."""
        out: bytes | bytearray
        if cid == CodecId.RAW:
            return bytearray(payload) if mutable else bytes(payload)
        if cid == CodecId.ZSTD:
            if mutable:
                out = bytearray(raw_len)
                got = self._zstd_d().stream_reader(payload, read_across_frames=False).readinto(out)
                if got != raw_len:
                    raise ValueError(f"codec {cid}: decoded {got} bytes, expected {raw_len}")
                return out
            out = self._zstd_d().decompress(payload, max_output_size=raw_len)
        elif cid == CodecId.LZ4:
            out = lz4.block.decompress(payload, return_bytearray=mutable)
        else:
            raise ValueError(f"unknown codec id {cid}")
        if len(out) != raw_len:
            raise ValueError(f"codec {cid}: decoded {len(out)} bytes, expected {raw_len}")
        return out
