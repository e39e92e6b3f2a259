"""The background sealer: one thread that compresses blocks off the FUSE path.

It wakes when a sequential writer fills a block or a file is released (the
engine calls wake(), which only sets an event), and every POLL_SECONDS to
seal blocks that went cold, drop stale clean copies, compact the payload
arena (arena.py) and return freed heap memory (memtrim.py). When a pass has
nothing to seal and the mount has been quiet for a while, it recompresses
cold blocks at the stronger zstd level of recompress= (idle recompression,
DataEngine.recompress_pass), a bounded batch at a time.

Threading: the thread takes the global lock for each pass; the pass releases
it around compression (DataEngine.seal). It waits on its event only while
not holding the global lock.

CPU class: while the dirty part of the hot buffer is under IDLE_DIRTY_FRACTION
of its budget, the thread compresses at SCHED_IDLE, so that the worker and
the programs waiting on it always run first (cpuprio.py has the measurements);
past it, it compresses at normal priority to keep up with the writers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Optional

from . import cpuprio
from .filemap import DataEngine
from .locking import GlobalLock
from .memtrim import Trimmer
from .pools import PoolTrimmer

log = logging.getLogger(__name__)

#: How often cold blocks are looked for when nothing wakes the thread.
POLL_SECONDS = 0.5
#: Compress at SCHED_IDLE while dirty bytes are under this part of the hot
#: buffer's budget. Half leaves the other half for the time a writer that
#: outruns the idle sealer needs to push it back to normal priority: at the
#: 600 MiB/s of sequential writes, 0.4 s of the default 512 MiB buffer.
IDLE_DIRTY_FRACTION = 0.5


class Sealer:
    def __init__(self, engine: DataEngine, lock: GlobalLock,
                 on_error: Callable[[BaseException], None] = lambda e: None,
                 idle_priority: bool = True, pool_trimmer: Optional[PoolTrimmer] = None) -> None:
        self.engine = engine
        self.lock = lock
        self.on_error = on_error
        self._event = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="cctmpfs-sealer", daemon=True)
        engine.wake_sealer = self.wake
        engine.compress_cpu = self.compress_cpu
        self.trimmer = Trimmer()
        #: Gives back pymalloc's empty pools when idle (pools.py); None: not done.
        self.pool_trimmer = pool_trimmer
        #: seal_priority=idle was asked for and this process can use SCHED_IDLE.
        self.idle_priority = idle_priority and cpuprio.available()
        #: True while the thread runs a pass (it needs a CPU and, between
        #: codec calls, the GIL). Written by the thread alone; read unlocked
        #: by the native reader, which does not spin then (transport/spin.py).
        self.working = False
        self.idle_batches = 0     # batches this thread compressed at SCHED_IDLE
        self.normal_batches = 0   # batches it compressed at normal priority
        #: zstd contexts this thread dropped once idle (Codec.drop_unused_compressors)
        self.dropped_context_bytes = 0

    def compress_cpu(self) -> contextlib.AbstractContextManager[object]:
        """DataEngine.compress_cpu: the CPU class of one batch's compression.
        Called under the global lock. Other threads (a worker sealing under
        buffer pressure) always compress at their own priority."""
        if threading.get_ident() != self._thread.ident:
            return contextlib.nullcontext()
        buf = self.engine.buffer
        if self.idle_priority and buf.dirty_bytes < IDLE_DIRTY_FRACTION * buf.budget:
            self.idle_batches += 1
            return cpuprio.idle_cpu()
        self.normal_batches += 1
        return contextlib.nullcontext()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Ask for a pass soon. Safe under the global lock: it never blocks.

        Event.set() takes the event's lock and notifies (0.5 us warm); a set
        event needs neither. An event still set is cleared by the thread
        before its next pass, and that pass sees what was queued."""
        if not self._event.is_set():
            self._event.set()

    def stop(self) -> None:
        """Stop the thread. Call without holding the global lock."""
        self._stop = True
        self._event.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        last_scan = time.monotonic()
        while not self._stop:
            self._event.wait(POLL_SECONDS)
            self._event.clear()
            if self._stop:
                break
            # A wake-up does the queued work only; the aging scan (which walks
            # the whole buffer) and the heap trim run every POLL_SECONDS.
            scan = time.monotonic() - last_scan >= POLL_SECONDS
            if scan:
                last_scan = time.monotonic()
            self.working = True
            idle = False
            self.lock.acquire()
            try:
                if scan:
                    self.engine.background_pass()
                    idle = self.engine.idle()
                else:
                    self.engine.queued_pass()
            except Exception as e:  # noqa: BLE001 - a bug here must not kill the mount
                log.exception("background sealer pass failed")
                self.on_error(e)
            finally:
                self.lock.release()
                self.working = False
            if scan:
                try:
                    self._give_back_memory(idle)
                except Exception as e:  # noqa: BLE001 - as for the pass: the sealer must live on
                    log.exception("giving memory back failed")
                    self.on_error(e)

    def _give_back_memory(self, idle: bool) -> None:
        """Without the global lock: free malloc heap (memtrim.py) and, once
        idle, this thread's zstd compressors and pymalloc's empty pools
        (pools.py, which holds the GIL)."""
        self.trimmer.maybe_trim(idle)
        if idle:
            self.dropped_context_bytes += self.engine.codec.drop_unused_compressors()
            if self.pool_trimmer is not None:
                self.pool_trimmer.maybe_trim()
