"""The hot buffer: the uncompressed blocks in RAM (dirty ones and clean
cached copies), in least-recently-used order, and their byte accounting
against the buffer's budget (buffer=, options.py).

What only a hot block needs, its byte charge, its last access and whether
it is being compressed, lives here, in a HotEntry per buffered slot, not in
every Slot: a sealed cold block carries none of it (blockmap.py).

Pure Python, no llfuse. The data engine (filemap.DataEngine) owns one and
charges, touches and discharges its slots (blockmap.Slot), and seals or drops
the oldest ones when it is over budget. Nothing here releases the global
lock.
"""

from __future__ import annotations

import collections
import sys
from typing import TYPE_CHECKING, Iterator

from .blockmap import BlockState

if TYPE_CHECKING:
    from .blockmap import Slot


class HotEntry:
    """What the buffer knows of one of its slots. Protected by the global lock."""

    __slots__ = ("charged", "touched")

    def __init__(self, charged: int, touched: float) -> None:
        self.charged = charged   # bytes of the slot's raw charged to the buffer
        self.touched = touched   # time.monotonic() (the engine's clock) of the last access


#: RAM of one buffered slot's entry beyond the LRU dict: the HotEntry and its
#: access-time float (the charge is an int the raw's length already made).
HOT_ENTRY_BYTES = sys.getsizeof(HotEntry(0, 0.5)) + sys.getsizeof(0.5)


class HotBuffer:
    """The uncompressed blocks in RAM, in least-recently-used order.

    Protected by the global lock. `slots` is ordered by last access, oldest
    first, because touch() moves a slot to the end.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        #: slot -> its entry, for every slot with a raw copy
        self.slots: collections.OrderedDict[Slot, HotEntry] = collections.OrderedDict()
        #: Dirty slots whose raw is being compressed with the lock released
        #: (DataEngine.seal): a writer copies their raw before changing it.
        #: A slot stays here until its seal() returns, even if it is dropped
        #: from the buffer meanwhile.
        self.sealing: set[Slot] = set()
        self.dirty_bytes = 0
        self.clean_bytes = 0
        #: Decoded packs kept for reads (packing.Packer.cache): clean, and
        #: bounded by the packer to 1/16 of the budget.
        self.pack_cache_bytes = 0

    @property
    def total_bytes(self) -> int:
        return self.dirty_bytes + self.clean_bytes + self.pack_cache_bytes

    def charged(self, slot: Slot) -> int:
        """Bytes of slot's raw charged to the buffer (0 if not buffered)."""
        e = self.slots.get(slot)
        return e.charged if e is not None else 0

    def touched(self, slot: Slot) -> float:
        """When slot was last used (KeyError if it is not buffered)."""
        return self.slots[slot].touched

    def aged(self) -> Iterator[tuple[Slot, float]]:
        """(slot, last access), oldest first. Do not change the buffer while
        walking it: take a list first."""
        for slot, e in self.slots.items():
            yield slot, e.touched

    def state(self, slot: Slot) -> BlockState:
        """slot's state, SEALING told apart from DIRTY."""
        st = slot.state
        return BlockState.SEALING if st is BlockState.DIRTY and slot in self.sealing else st

    def charge(self, slot: Slot, now: float) -> None:
        """Account slot.raw (after any change of raw or state) and mark it used."""
        n = len(slot.raw) if slot.raw is not None else 0
        e = self.slots.get(slot)
        if e is None:
            e = self.slots[slot] = HotEntry(n, now)
        else:
            self._uncount(slot, e)
            e.charged = n
            e.touched = now
            self.slots.move_to_end(slot)
        if slot.dirty:
            self.dirty_bytes += n
        else:
            self.clean_bytes += n

    def add_dirty(self, slot: Slot, now: float) -> None:
        """charge() for a new dirty slot, without the state checks charge()
        needs: the in-place write path's accounting."""
        n = len(slot.raw)  # type: ignore[arg-type]
        self.dirty_bytes += n
        self.slots[slot] = HotEntry(n, now)   # a new key goes last: most recently used

    def grow_dirty(self, slot: Slot, now: float) -> None:
        """charge() for a charged dirty slot whose raw grew in place."""
        n = len(slot.raw)  # type: ignore[arg-type]
        e = self.slots[slot]
        self.dirty_bytes += n - e.charged
        e.charged = n
        e.touched = now
        self.slots.move_to_end(slot)

    def touch(self, slot: Slot, now: float) -> None:
        self.slots[slot].touched = now
        self.slots.move_to_end(slot)

    def discharge(self, slot: Slot) -> None:
        """Forget slot; the caller drops or has dropped slot.raw."""
        e = self.slots.pop(slot, None)
        if e is not None:
            self._uncount(slot, e)

    def _uncount(self, slot: Slot, e: HotEntry) -> None:
        if slot.dirty:
            self.dirty_bytes -= e.charged
        else:
            self.clean_bytes -= e.charged
