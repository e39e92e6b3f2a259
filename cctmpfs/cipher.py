"""Encryption of evicted records: AES-128-GCM with a key that lives only in
the daemon's memory, as encrypted swap does. After an unmount or a crash,
what is left on the backing device is noise.

Pure Python (the `cryptography` package, OpenSSL underneath), no llfuse.
Threading: seal() and open() run with the global lock RELEASED, like the
codec; the object holds no mutable state.

Measured here: 14 us to encrypt or decrypt 128 KiB (AES-NI), against 25 us
to decode it with zstd, so encryption is on by default
(`backing_encrypt=off` exists to measure the difference).

Nonces: GCM must never see one nonce twice under one key. A record's nonce
is its serial number (devlog.SegmentLog.place: unique per mount, and so per
key) as 8 little-endian bytes plus 4 zero bytes. The cleaner moves records
without re-encrypting them, so a nonce is never reused for other data.
"""

from __future__ import annotations

# `cryptography` is imported by RecordCipher itself, not here: loading it adds
# 6.5 MB to the daemon's RSS (measured: import of ...ciphers.aead after the
# daemon's other imports), paid by every mount although only a mount with an
# encrypted backing device uses it.

#: Bytes GCM adds to each payload (the authentication tag).
TAG_BYTES = 16


class DecryptError(Exception):
    """A record did not authenticate: corrupted, or from another mount."""


class RecordCipher:
    """Seals and opens record payloads with one random per-mount key."""

    def __init__(self, key: bytes | None = None) -> None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._invalid_tag = InvalidTag
        self._aead = AESGCM(key if key is not None else AESGCM.generate_key(bit_length=128))

    @staticmethod
    def nonce(seq: int) -> bytes:
        return seq.to_bytes(8, "little") + bytes(4)

    def seal(self, seq: int, payload: bytes) -> bytes:
        """Ciphertext plus tag (len(payload) + TAG_BYTES)."""
        return self._aead.encrypt(self.nonce(seq), payload, None)

    def open(self, seq: int, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(self.nonce(seq), sealed, None)
        except self._invalid_tag:
            raise DecryptError(f"record {seq} did not authenticate") from None
