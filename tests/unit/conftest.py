"""Shared fixtures of the unit tests (no FUSE mount, no llfuse)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import attrs
import pytest


class FakeClock:
    """A controllable clock: ns for Filesystem.clock_ns, seconds for DataEngine.clock.

    Every read advances it by `step_ns`, so two events never share a timestamp
    unless the test says so (step_ns=0).
    """

    def __init__(self, start_ns: int = 1_700_000_000 * 10 ** 9, step_ns: int = 1000) -> None:
        self.now_ns = start_ns
        self.step_ns = step_ns

    def ns(self) -> int:
        self.now_ns += self.step_ns
        return self.now_ns

    def seconds(self) -> float:
        return self.now_ns / 1e9

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def run_alongside(workers: list[threading.Thread], background: Callable[[threading.Event], None]) -> None:
    """Run the worker threads to their end while background(stop) runs in a
    thread of its own (a sealer's passes, say); then stop it and wait."""
    stop = threading.Event()
    bg = threading.Thread(target=background, args=(stop,))
    bg.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    bg.join()


class OwnedLock:
    """The global lock as a real threading.Lock that knows which thread holds
    it, so a test can ask whether the running thread does (threading.Lock
    only says whether some thread does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holder: Optional[int] = None

    def acquire(self) -> bool:
        self._lock.acquire()
        self.holder = threading.get_ident()
        return True

    def release(self) -> None:
        self.holder = None
        self._lock.release()

    def held(self) -> bool:
        return self.holder == threading.get_ident()

    def __enter__(self) -> "OwnedLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def guard_counters(lock: OwnedLock, places: list[tuple[Any, str]]) -> list[str]:
    """Replace each counters record getattr(obj, name) by an equal one that
    notes every change made by a thread not holding lock. Returns the list
    the notes go to. Call holding lock."""
    violations: list[str] = []
    for obj, name in places:
        counters = getattr(obj, name)
        cls = type(counters)

        class Guarded(cls):  # type: ignore[misc, valid-type]
            def __setattr__(self, field: str, value: Any, cls: type = cls) -> None:
                if not lock.held():
                    violations.append(f"{cls.__name__}.{field} changed by "
                                      f"{threading.current_thread().name} without the lock")
                super().__setattr__(field, value)

        setattr(obj, name, Guarded(**attrs.asdict(counters)))
    return violations


def sealer_passes(fs, lock) -> Callable[[threading.Event], None]:  # type: ignore[no-untyped-def]
    """A background for run_alongside: the sealer's periodic pass and a full
    seal, under lock, until stopped."""

    def sealer(stop: threading.Event) -> None:
        while not stop.is_set():
            with lock:
                fs.engine.background_pass()
                fs.engine.seal_everything()

    return sealer
