"""The hot buffer: the uncompressed blocks in RAM (dirty ones and clean
cached copies), in least-recently-used order, and their byte accounting
against the buffer's budget (buffer=, options.py).

Pure Python, no llfuse. The data engine (filemap.DataEngine) owns one and
charges, touches and discharges its slots (filemap.Slot), and seals or drops
the oldest ones when it is over budget. Nothing here releases the global
lock.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .filemap import Slot


class HotBuffer:
    """The uncompressed blocks in RAM, in least-recently-used order.

    Protected by the global lock. `slots` is ordered by `touched`, oldest
    first, because touch() moves a slot to the end.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.slots: collections.OrderedDict[Slot, None] = collections.OrderedDict()
        self.dirty_bytes = 0
        self.clean_bytes = 0
        #: Decoded packs kept for reads (packing.Packer.cache): clean, and
        #: bounded by the packer to 1/16 of the budget.
        self.pack_cache_bytes = 0

    @property
    def total_bytes(self) -> int:
        return self.dirty_bytes + self.clean_bytes + self.pack_cache_bytes

    def charge(self, slot: Slot, now: float) -> None:
        """Account slot.raw (after any change of raw or state) and mark it used."""
        self._uncount(slot)
        slot.charged = len(slot.raw) if slot.raw is not None else 0
        if slot.dirty:
            self.dirty_bytes += slot.charged
        else:
            self.clean_bytes += slot.charged
        slot.touched = now
        self.slots[slot] = None
        self.slots.move_to_end(slot)

    def add_dirty(self, slot: Slot, now: float) -> None:
        """charge() for a new dirty slot, without the state checks charge()
        needs: the in-place write path's accounting."""
        n = len(slot.raw)  # type: ignore[arg-type]
        self.dirty_bytes += n
        slot.charged = n
        slot.touched = now
        self.slots[slot] = None   # a new key goes last: most recently used

    def grow_dirty(self, slot: Slot, now: float) -> None:
        """charge() for a charged dirty slot whose raw grew in place."""
        n = len(slot.raw)  # type: ignore[arg-type]
        self.dirty_bytes += n - slot.charged
        slot.charged = n
        slot.touched = now
        self.slots.move_to_end(slot)

    def touch(self, slot: Slot, now: float) -> None:
        slot.touched = now
        self.slots.move_to_end(slot)

    def discharge(self, slot: Slot) -> None:
        """Forget slot; the caller drops or has dropped slot.raw."""
        if slot in self.slots:
            self._uncount(slot)
            del self.slots[slot]
        slot.charged = 0

    def _uncount(self, slot: Slot) -> None:
        if slot.charged and slot in self.slots:
            if slot.dirty:
                self.dirty_bytes -= slot.charged
            else:
                self.clean_bytes -= slot.charged
