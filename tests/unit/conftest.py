"""Shared fixtures of the unit tests (no FUSE mount, no llfuse)."""

from __future__ import annotations

import threading
from typing import Callable

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
