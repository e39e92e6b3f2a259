"""Command-line options of the whole suite.

pytest takes pytest_addoption only from initial conftests: this file (found
through testpaths = ["tests"] or any path under tests/ on the command line)
and those of the directories named on the command line. A plain `pytest` from
the repository root never loads tests/stress/conftest.py that way, so an
option registered there would be "unrecognized". Fixtures stay with their
tests (tests/mounted/conftest.py, re-exported by tests/stress/conftest.py).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", type=float, default=None, metavar="MINUTES",
        help="run the fio soak in tests/stress/test_fio_stress.py for MINUTES: the verify "
             "jobs of examples/fio/ in a loop on one cctmpfs mount, checking the daemon's "
             "RSS stays flat (skipped without this option)")
