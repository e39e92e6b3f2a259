"""The global lock, as the core sees it.

Lock discipline (docs/locking.md has the whole story):

* One global lock guards all filesystem state: the namespace, every file's
  block map, the block store and the hot buffer. It is the transport's
  (cctmpfs/transport): `llfuse.lock`, which llfuse holds while any handler
  runs, or the native reader's threading.Lock, held around each handler.
* It is released only around compression, decompression, hashing, encryption
  and backing-device I/O, through `released()`. Every function that may release it says
  "Releases the global lock" in its docstring, and so do its callers.
* Work done unlocked is done on data nobody mutates (a block in
  `HotBuffer.sealing`, a `bytes` payload). Results are published under the lock only if
  the slot is still attached and its generation unchanged.
* Nothing waits on another lock, event or queue while holding the global lock.
"""

from __future__ import annotations

from typing import Protocol


class GlobalLock(Protocol):
    def acquire(self) -> object: ...
    def release(self) -> None: ...


class released:
    """Run the body with the global lock released; re-acquire it afterwards.

    A class rather than a generator-based contextmanager: a cold read enters
    one for every block it decodes, and the generator machinery took 80 of
    the 700 bytecodes of such a READ. It holds no state, so one instance can
    be kept and entered again, from any thread."""

    __slots__ = ("lock",)

    def __init__(self, lock: GlobalLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.release()

    def __exit__(self, *exc: object) -> None:
        self.lock.acquire()


class NoLock:
    """A stand-in for single-threaded unit tests: acquire and release do nothing."""

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass
