"""cli.command(): which command a command line is, without running it.

`stats` and `check` are subcommands and also valid mount sources (an fstab
line `stats /tmp fuse.cctmpfs ...` makes mount.fuse run
`cctmpfs stats /tmp -o ...`). The mount form's flags decide.
"""

from __future__ import annotations

import argparse

import pytest

from cctmpfs import cli

CASES = [
    # (argv, command)
    ([], "mount"),                                            # argparse prints the usage
    (["cctmpfs", "/tmp"], "mount"),
    (["cctmpfs", "/tmp", "-o", "size=1g"], "mount"),
    (["stats"], "stats"),
    (["stats", "/tmp"], "stats"),
    (["stats", "/tmp", "/mnt", "--json", "--settle"], "stats"),
    (["stats", "-h"], "stats"),
    (["check"], "check"),
    (["check", "/tmp", "/mnt"], "check"),
    # What /sbin/mount.fuse runs for fstab lines whose source is stats or check.
    (["stats", "/tmp", "-o", "rw,nosuid,nodev,size=8G,dev,suid"], "mount"),
    (["check", "/tmp", "-o", "rw,dev,suid"], "mount"),
    # Every spelling of the mount form's flags that argparse takes.
    (["stats", "/tmp", "-osize=1m"], "mount"),
    (["stats", "/tmp", "-f"], "mount"),
    (["stats", "-d", "/tmp"], "mount"),
    (["check", "/tmp", "-fo", "size=1m"], "mount"),
    # After --, everything is positional.
    (["stats", "--", "-o"], "stats"),
]


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(a) or "empty" for a, _ in CASES])
def test_command(argv: list[str], expected: str) -> None:
    assert cli.command(argv) == expected


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_subcommands_take_no_flag_of_the_mount_form(name: str, monkeypatch) -> None:
    """The rule holds only while stats and check have no -o, -f or -d of their own."""
    parsers: list[argparse.ArgumentParser] = []

    def capture(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        cli.SUBCOMMANDS[name]([])
    short = {s for a in parsers[0]._actions for s in a.option_strings if not s.startswith("--")}
    assert short == {"-h"}, short


@pytest.mark.parametrize("transport,cell", [
    ({"name": "llfuse"}, "-"),
    ({"name": "native", "spin": {"window_us": 0}}, "off"),
    ({"name": "native", "spin": {"window_us": 200, "hit_rate": None}}, "on"),
    ({"name": "native", "spin": {"window_us": 200, "hit_rate": 0.9762}}, "98%"),
])
def test_the_spin_column(transport: dict, cell: str) -> None:
    assert cli._spin({"transport": transport}) == cell
