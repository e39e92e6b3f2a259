"""A frozen directory's entries, packed into one bytes object.

A directory's entries are a dict of name -> inode number: per entry a dict
slot (about 40 bytes at 2/3 load), the name's bytes object (33 bytes plus
the name, in 16-byte steps) and the child's own int for its number (32).
On the stdlib with site-packages that was 8.7 MB for 59k entries. Once the
directory is frozen (inodetable.py) nothing looks names up in it until it
is thawed, so its entries are kept as one bytes object of ~5 bytes plus
the name each, about an eighth (206 entries of /usr/lib/python3.11: 3.2 KB
against 24.8 KB), and the dict is built again at the thaw (0.6 us an entry,
measured; packing is 0.8 us).

The format, one definition: for each entry, in the dict's order,

    u8  name length (1-255: NAME_MAX)
    ... the name
    u32 little-endian inode number

An inode number past 2**32 - 1 does not fit, and a directory of more than
PACK_MAX_ENTRIES is not packed: pack() raises OverflowError, and the
directory stays a record (InodeTable.freeze counts it too_big).

Pure Python, no lock of its own: called under the global lock.
"""

from __future__ import annotations

from typing import Mapping

INO_BYTES = 4
#: A directory with more entries stays a dict (pack() refuses it): packing
#: is done under the global lock, 0.8 us an entry, so 16,384 take 13 ms.
PACK_MAX_ENTRIES = 16384


class PackedEntries(bytes):
    """The packed entries of a frozen directory: bytes of their own type, so
    a frozen row's object tells a directory's entries from a symlink's
    target."""

    __slots__ = ()


def pack(entries: Mapping[bytes, int]) -> PackedEntries:
    """OverflowError past PACK_MAX_ENTRIES entries or an ino of 2**32."""
    if len(entries) > PACK_MAX_ENTRIES:
        raise OverflowError(f"{len(entries)} entries, more than {PACK_MAX_ENTRIES} to pack")
    parts = []
    for name, ino in entries.items():
        parts += (len(name).to_bytes(1, "little"), name, ino.to_bytes(INO_BYTES, "little"))
    return PackedEntries(b"".join(parts))


def unpack(packed: bytes) -> dict[bytes, int]:
    entries = {}
    from_bytes = int.from_bytes
    i, end = 0, len(packed)
    while i < end:
        j = i + 1 + packed[i]
        entries[packed[i + 1:j]] = from_bytes(packed[j:j + INO_BYTES], "little")
        i = j + INO_BYTES
    return entries
