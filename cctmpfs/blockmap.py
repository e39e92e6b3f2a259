"""A file's block map: FileData, its Slots, and the map between them.

A regular file is a map {block index: Slot}; a missing index is a hole and
costs nothing. Most files under /tmp have no block or one, so the map takes
the cheapest of three forms (issue 15, compact metadata):

    FileData.map   the file has        costs beside the slots
    None           no block            nothing
    a Slot         one block           nothing (the slot knows its index)
    a dict         two blocks or more  the dict: 224 bytes for 2-5 blocks,
                                       about 42 a block past that

A dict for every file cost 64 bytes empty and 224 with one block. A file
moves between the forms as it gains and loses blocks (put, remove): a dict
left with one slot becomes that slot again. MapCensus counts the dicts and
their slots, for the memory estimate (stats.py), which never walks the
files; `cctmpfs check` recomputes it.

What only matters while a block is hot (its buffer charge, its last access,
whether it is being compressed) is kept by the hot buffer (hotbuffer.py),
and a file's sequential-access ends by the engine while it is open
(filemap.DataEngine), so that sealed cold blocks and closed files do not
carry them. A slot's extent is not stored either: it is the length of its
raw copy or of its stored block.

Pure Python, no llfuse. Everything here is protected by the global lock and
never releases it.
"""

from __future__ import annotations

import enum
import sys
from typing import Optional

import attrs

from .blockstore import StoredBlock

PAGE = 4096


def pages(n: int) -> int:
    """Bytes rounded up to whole 4 KiB pages, the unit of st_blocks and size=."""
    return (n + PAGE - 1) // PAGE * PAGE


def page_span(start: int, end: int) -> int:
    """Bit mask of the 4 KiB pages of a block that bytes [start, end) touch."""
    first, last = start // PAGE, (end - 1) // PAGE
    return ((1 << (last - first + 1)) - 1) << first


class BlockState(enum.Enum):
    """Derived state of a slot (filemap.py's module docstring), for stats and checks."""

    DIRTY = "dirty"
    SEALING = "sealing"       # DIRTY, being compressed unlocked: HotBuffer.state() tells it apart
    CACHED = "cached"
    STORED = "stored"
    UNWRITTEN = "unwritten"   # fallocated pages only, no content


@attrs.define(slots=True, eq=False, repr=False, weakref_slot=False)
class Slot:
    """One logical block of one file. Protected by the global lock.

    Six fields, 80 bytes (with the GC header): its access time, buffer
    charge, sealing flag and extent made it 112 bytes plus a float and an
    int (hotbuffer.HotEntry keeps the first three while the block is hot).
    """

    file: Optional["FileData"]   # owner; None once detached (truncated away or freed)
    index: int                   # block number within the file
    #: Pages of the block ever written (bit i = page i), as tmpfs allocates
    #: them: what st_blocks and size= count. A sparse write into the middle of
    #: a block charges its own pages, not the zeros before it. Values past
    #: 256 are shared (DataEngine.ints): a full 128 KiB block's is 2**32 - 1.
    page_mask: int = 0
    raw: bytes | bytearray | None = None   # uncompressed content (in the hot buffer)
    stored: Optional[StoredBlock] = None   # sealed content, None while dirty
    generation: int = 0          # bumped on every change of content

    @property
    def extent(self) -> int:
        """Length of the block's content; beyond it, zeros. The raw copy's
        length, else the stored block's, else 0 (UNWRITTEN): both copies
        of a CACHED block have one length (cctmpfs check)."""
        raw = self.raw
        if raw is not None:
            return len(raw)
        stored = self.stored
        return stored.raw_len if stored is not None else 0

    @property
    def dirty(self) -> bool:
        return self.raw is not None and self.stored is None

    @property
    def state(self) -> BlockState:
        """The content's state; a SEALING slot says DIRTY here (the hot
        buffer knows which are being compressed: HotBuffer.state)."""
        if self.stored is None:
            return BlockState.UNWRITTEN if self.raw is None else BlockState.DIRTY
        return BlockState.STORED if self.raw is None else BlockState.CACHED

    def __repr__(self) -> str:
        return f"<Slot #{self.index} {self.state.value} extent={self.extent} gen={self.generation}>"


@attrs.define(slots=True, weakref_slot=False)
class MapCensus:
    """The files whose map is a dict, for the memory estimate. Protected by
    the global lock; kept by put() and remove(), checked by cctmpfs check."""

    dicts: int = 0         # maps held as a dict (files with two blocks or more)
    dict_slots: int = 0    # slots in those dicts


@attrs.define(slots=True, eq=False, weakref_slot=False)
class FileData:
    """The data of one regular file. Protected by the global lock.

    Three fields, 56 bytes: a dict for the map, the sequential-access ends
    (kept by the engine now) and a weakref slot made it 80 bytes plus a
    64-224 byte dict.
    """

    size: int = 0    # st_size
    #: The block map: None (no block), the one Slot, or {index: Slot} for
    #: two or more (the module docstring). Change it only with put/remove.
    map: "None | Slot | dict[int, Slot]" = None
    #: Pages allocated in the slots' page_mask: what st_blocks and size=
    #: count. Pages, not bytes: a file up to 1 MiB keeps a cached small int.
    alloc_pages: int = 0

    @property
    def alloc_bytes(self) -> int:
        return self.alloc_pages * PAGE

    @alloc_bytes.setter
    def alloc_bytes(self, value: int) -> None:   # tests and repair tools
        self.alloc_pages = value // PAGE

    def slot(self, idx: int) -> Optional[Slot]:
        """The slot of block idx, or None for a hole."""
        m = self.map
        if m is None:
            return None
        if type(m) is dict:
            return m.get(idx)
        return m if m.index == idx else None   # type: ignore[union-attr]

    def put(self, slot: Slot, census: MapCensus) -> None:
        """Map slot at slot.index, where no slot is mapped."""
        m = self.map
        if m is None:
            self.map = slot
        elif type(m) is dict:
            assert slot.index not in m
            m[slot.index] = slot
            census.dict_slots += 1
        else:
            assert m.index != slot.index   # type: ignore[union-attr]
            self.map = {m.index: m, slot.index: slot}   # type: ignore[union-attr]
            census.dicts += 1
            census.dict_slots += 2

    def remove(self, slot: Slot, census: MapCensus) -> None:
        """Unmap slot, which is mapped at slot.index."""
        m = self.map
        if type(m) is dict:
            del m[slot.index]
            census.dict_slots -= 1
            if len(m) == 1:
                self.map = next(iter(m.values()))
                census.dicts -= 1
                census.dict_slots -= 1
        else:
            assert m is slot
            self.map = None

    def slots(self) -> list[Slot]:
        """The mapped slots, in no particular order (a new list: the caller may
        change the map while walking it)."""
        m = self.map
        if m is None:
            return []
        if type(m) is dict:
            return list(m.values())
        return [m]   # type: ignore[list-item]

    def indexes(self) -> list[int]:
        """The mapped block indexes, ascending."""
        m = self.map
        if m is None:
            return []
        if type(m) is dict:
            return sorted(m)
        return [m.index]   # type: ignore[union-attr]

    def count(self) -> int:
        """How many blocks are mapped."""
        m = self.map
        return 0 if m is None else len(m) if type(m) is dict else 1   # type: ignore[arg-type]

    @property
    def blocks(self) -> dict[int, Slot]:
        """The map as a new dict {index: slot}, for checks, tests and
        describe(); the data path uses slot(), put() and remove()."""
        m = self.map
        if m is None:
            return {}
        if type(m) is dict:
            return dict(m)
        return {m.index: m}   # type: ignore[union-attr]


#: The RAM of one file's data record beyond its inode (stats.py): the
#: record; its size int (past the small-int cache for any file over 256
#: bytes); its map costs nothing until it holds two blocks (MapCensus).
FILE_DATA_BYTES = sys.getsizeof(FileData()) + sys.getsizeof(1 << 20)
#: One block of a file's map beyond the map itself: the Slot (its page mask
#: is a small or shared int, its extent is derived).
SLOT_BYTES = sys.getsizeof(Slot(file=None, index=0))
