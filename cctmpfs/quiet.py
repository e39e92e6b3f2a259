"""When the mount counts as quiet, for the idle sealer's background jobs:
idle recompression (recompress.py), small-file packing (packing.py) and the
idle compaction of the payload arena (DataEngine.idle_compact).

A job runs once no block was sealed, loaded or promoted for its quiet time
and there is no sealing work (queued slots, dirty blocks); a scan that found
nothing to do is not repeated until there is activity again.

Threading: protected by the global lock, as the engine it watches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .filemap import DataEngine


class QuietWatch:
    """The activity seen at the last pass of one background job."""

    def __init__(self, quiet_seconds: float) -> None:
        self.quiet_seconds = quiet_seconds
        #: (seals, loads, promotions) at the last pass, and since when.
        self.activity: tuple[int, int, int] = (-1, -1, -1)
        self.since = 0.0
        #: A scan went round everything and found nothing to do, with no
        #: activity since: passes skip the scan until there is.
        self.exhausted = False

    @staticmethod
    def busy(eng: DataEngine) -> bool:
        """There is sealing work: queued slots or dirty blocks."""
        return bool(eng.seal_queue) or eng.buffer.dirty_bytes > 0

    def quiet(self, eng: DataEngine, now: float) -> bool:
        """True if the job may run now: no activity and no sealing work for
        quiet_seconds, and the last scan was not exhausted."""
        c = eng.counters
        activity = (c.seals, c.loads, c.promotions)
        if activity != self.activity or self.busy(eng):
            self.activity, self.since, self.exhausted = activity, now, False
            return False
        return now - self.since >= self.quiet_seconds and not self.exhausted
