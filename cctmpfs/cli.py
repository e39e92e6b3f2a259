"""Command line: `cctmpfs SOURCE MOUNTPOINT [-o OPTIONS] [-f]`, `cctmpfs stats`
and `cctmpfs check`.

The mount form is the argv mount(8)'s FUSE helper uses for an fstab line of
type fuse.cctmpfs. Stats are read through a read-only xattr on the mount's
root (trusted.cctmpfs.stats), so they need root, as the kernel allows
trusted.* to CAP_SYS_ADMIN only.

A SOURCE may be any word, `stats` and `check` included, so the first word
alone cannot tell a subcommand from a mount: command() decides by the flags.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import sys
from typing import Any, Optional

from . import __version__
from .errors import OptionError
from .options import parse_options

FSTYPE = "fuse.cctmpfs"
XATTR_STATS = "trusted.cctmpfs.stats"
XATTR_STATS_SETTLED = "trusted.cctmpfs.stats-settled"
XATTR_CHECK = "trusted.cctmpfs.check"


def mounted_cctmpfs() -> list[str]:
    """Mount points of every cctmpfs mount, in mount order."""
    out = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == FSTYPE:
                    out.append(fields[1].encode().decode("unicode_escape"))
    except OSError:
        pass
    return out


class StatsError(Exception):
    pass


class NotCctmpfsError(StatsError):
    """The path is not a cctmpfs mount point."""


def read_stats(mountpoint: str, settle: bool = False) -> dict[str, Any]:
    """Syncs the mount first: under transport=native with writeback_cache
    the kernel holds written data the daemon has not seen yet, and the
    figures would be short of it."""
    sync_mount(mountpoint)
    return read_control(mountpoint, XATTR_STATS_SETTLED if settle else XATTR_STATS)


def sync_mount(mountpoint: str) -> None:
    """syncfs(2) of one mount: the kernel writes back its dirty pages and
    times (WRITEs and SETATTRs the daemon answers) and returns when they
    are answered. Best effort: stats are still worth reading without it."""
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        ctypes.CDLL(None, use_errno=True).syncfs(fd)
    finally:
        os.close(fd)


def read_control(mountpoint: str, name: str) -> dict[str, Any]:
    """The JSON behind one of the root's control xattrs; StatsError says why not."""
    try:
        raw = os.getxattr(mountpoint, name)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise StatsError(f"{mountpoint}: daemon is gone (ENOTCONN); remount it") from None
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP, errno.EPERM):
            if mountpoint not in mounted_cctmpfs():
                raise NotCctmpfsError(f"{mountpoint}: not a cctmpfs mount point") from None
            raise StatsError(f"{mountpoint}: reading {name} needs root") from None
        raise StatsError(f"{mountpoint}: {e.strerror}") from None
    return json.loads(raw)


def human(n: Optional[int]) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def _fmt_ratio(r: Optional[float]) -> str:
    return f"{r:.2f}" if r else "-"


def _metadata(s: dict[str, Any]) -> Optional[int]:
    """RAM of the structures beyond payloads, the hot buffer and the codec
    contexts; None from a daemon older than the memory breakdown."""
    mem = s.get("memory")
    if mem is None:
        return None
    return (mem["accounted_bytes"] - mem["payload_bytes"] - mem.get("arena_free_bytes", 0)
            - mem["hot_buffer_bytes"] - mem.get("codec_context_bytes", 0))


COLUMNS = [
    # (header, function of the stats dict)
    ("MOUNTPOINT", lambda m, s: m),
    ("CODEC", lambda m, s: s["codec"]),
    ("BLOCK", lambda m, s: human(s["block_size"])),
    ("FILES", lambda m, s: human(s["files_bytes"])),
    ("LOGICAL", lambda m, s: human(s["logical_bytes"])),
    ("STORED", lambda m, s: human(s["stored_bytes"])),
    ("COMPR", lambda m, s: _fmt_ratio(s["compression_ratio"])),
    ("DEDUP", lambda m, s: _fmt_ratio(s["dedup_ratio"]) if s["dedup"]["enabled"] else "off"),
    ("BUFFER", lambda m, s: human(s["buffer_bytes"])),
    ("RAM", lambda m, s: human(s["ram_used_bytes"])),
    ("RATIO", lambda m, s: _fmt_ratio(s["ratio"])),
    ("DIRTY", lambda m, s: str(s["blocks"]["dirty"] + s["blocks"]["sealing"])),
    ("CACHED", lambda m, s: str(s["blocks"]["cached"])),
    ("STORED#", lambda m, s: str(s["blocks"]["stored"])),
    ("SHARED", lambda m, s: str(s["dedup"]["saved_blocks"])),
    ("INDEX", lambda m, s: human(s["dedup"]["index_bytes"])),
    ("RSS", lambda m, s: human(s["rss_bytes"])),
    ("META", lambda m, s: human(_metadata(s))),
    ("SLACK", lambda m, s: human(s.get("memory", {}).get("heap_slack_bytes"))),
    ("DEVICE", lambda m, s: human(s["device"]["live_bytes"]) if s.get("device") else "-"),
    ("ZERO", lambda m, s: str(s["zero_blocks"])),
    ("INCOMP", lambda m, s: str(s["incompressible_blocks"])),
    ("INODES", lambda m, s: str(s["inodes"])),
    ("ERRORS", lambda m, s: str(s["internal_errors"])),
    ("TRANSPORT", lambda m, s: (s.get("transport") or {}).get("name", "-")),
    ("SPIN", lambda m, s: _spin(s)),
    # How the mount was made: mount(2) (root) or fusermount (a user, auto_unmount).
    ("MOUNTED_BY", lambda m, s: (s.get("transport") or {}).get("mounted_by") or "-"),
]


def _spin(s: dict[str, Any]) -> str:
    """transport=native's polling (spin=): off, or the share of spins that
    caught a request ("on" before the first spin); "-" for llfuse."""
    spin = (s.get("transport") or {}).get("spin")
    if spin is None:
        return "-"
    if not spin.get("window_us"):
        return "off"
    rate = spin.get("hit_rate")
    return "on" if rate is None else f"{rate * 100:.0f}%"


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    table = [[h for h, _ in COLUMNS]]
    for mp, s in rows:
        table.append([fn(mp, s) for _, fn in COLUMNS])
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = []
    for r in table:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def stats_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="cctmpfs stats",
                                 description="Show the statistics of cctmpfs mounts (root only).")
    ap.add_argument("mountpoints", nargs="*", help="default: every cctmpfs mount")
    ap.add_argument("--json", action="store_true", help="named fields with a format version")
    ap.add_argument("--settle", action="store_true",
                    help="compress all pending blocks first, for settled ratios")
    args = ap.parse_args(argv)
    mps = args.mountpoints or mounted_cctmpfs()
    rows = []
    status = 0
    for mp in mps:
        try:
            rows.append((mp, read_stats(mp, settle=args.settle)))
        except StatsError as e:
            print(f"cctmpfs stats: {e}{mount_hint('stats', args.mountpoints, e)}",
                  file=sys.stderr)
            status = 1
    if args.json:
        if args.mountpoints and len(args.mountpoints) == 1:
            print(json.dumps(rows[0][1] if rows else {}, indent=1))
        else:
            print(json.dumps({mp: s for mp, s in rows}, indent=1))
    elif rows:
        print(format_table(rows))
    return status


def mount_hint(word: str, mountpoints: list[str], error: StatsError) -> str:
    """What to add to the error of `cctmpfs stats DIR` (or check) when DIR is a
    plain directory: the user may have meant to mount a source named `word`."""
    if (isinstance(error, NotCctmpfsError) and len(mountpoints) == 1
            and os.path.isdir(mountpoints[0])):
        return (f" (to mount a source named {word} there, give mount options: "
                f"cctmpfs {word} {mountpoints[0]} -o defaults)")
    return ""


def check_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="cctmpfs check",
        description="Run the invariant checker of cctmpfs mounts (root only). "
                    "Exit status 0: consistent; 1: violations found; 2: could not check.")
    ap.add_argument("mountpoints", nargs="*", help="default: every cctmpfs mount")
    args = ap.parse_args(argv)
    status = 0
    for mp in args.mountpoints or mounted_cctmpfs():
        try:
            report = read_control(mp, XATTR_CHECK)
        except StatsError as e:
            print(f"cctmpfs check: {e}{mount_hint('check', args.mountpoints, e)}",
                  file=sys.stderr)
            status = 2
            continue
        if report["count"] == 0:
            print(f"{mp}: consistent")
            continue
        print(f"{mp}: {report['count']} violations")
        for line in report["violations"]:
            print(f"  {line}")
        status = max(status, 1)
    return status


def one_line(text: str) -> str:
    """text with its control characters escaped (a CR or newline in an option
    value as \\r, \\n), so that the message it goes into stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def mount_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="cctmpfs",
        usage="cctmpfs SOURCE MOUNTPOINT [-o OPTIONS] [-f]\n"
              "       cctmpfs stats [MOUNTPOINT ...] [--json] [--settle]\n"
              "       cctmpfs check [MOUNTPOINT ...]",
        description="Mount a compressed tmpfs-compatible filesystem.",
        epilog="A SOURCE named stats or check mounts when -o, -f or -d is given "
               "(mount(8) always gives -o); without them, those words are the subcommands.")
    ap.add_argument("source", help="any name; shown as the filesystem name (as tmpfs's)")
    ap.add_argument("mountpoint")
    ap.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                    help="comma-separated mount options (see README)")
    ap.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    ap.add_argument("-d", dest="debug", action="store_true", help="debug logging (implies -f)")
    ap.add_argument("--version", action="version", version=f"cctmpfs {__version__}")
    args = ap.parse_args(argv)
    try:
        opts = parse_options(args.options, source=args.source)
    except OptionError as e:
        print(f"cctmpfs: bad mount option {one_line(str(e))}", file=sys.stderr)
        return 1
    restart_under_allocator(opts.allocator, argv)
    from .daemon import run  # a transport (llfuse) is imported only when mounting
    return run(args.source, args.mountpoint, opts, foreground=args.foreground or args.debug,
               debug=args.debug)


def restart_under_allocator(allocator: str, argv: list[str]) -> None:
    """Run this command again, the same command line, with PYTHONMALLOC set
    to the allocator the mount asks for (options.ALLOCATORS). Python reads
    it only when it starts, and the daemon is forked from this process.
    Returns if it is set already (the restarted command), and when the
    command cannot be repeated: then the daemon runs with the allocator it
    has, and says so. A restart costs the mount about 0.1 s (allocator=malloc
    only)."""
    # Unset, Python uses pymalloc: the default mount starts no second time.
    if (os.environ.get("PYTHONMALLOC") or "pymalloc") == allocator:
        return
    why = "called with other arguments than its command line"
    if argv == sys.argv[1:]:
        env = dict(os.environ, PYTHONMALLOC=allocator)
        try:
            # sys.orig_argv keeps the interpreter's own flags and the script;
            # the first word is the interpreter itself, so that a venv stays
            # the venv (Python finds it from argv[0]).
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        except OSError as e:
            why = f"{sys.executable}: {e.strerror}"
    print(f"cctmpfs: allocator={allocator} not applied ({why})", file=sys.stderr)


def mount_helper_main(argv: Optional[list[str]] = None) -> int:
    """`mount.cctmpfs SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`:
    the helper mount(8) runs for `-t cctmpfs` (an fstab line of type cctmpfs).

    mount(8)'s flags mean other things than ours: -f is "fake" (check the
    options, mount nothing), -n "no mtab", -s "sloppy", -v "verbose". The
    daemon always forks here: mount(8) waits for its helper to return.
    """
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="mount.cctmpfs",
                                 usage="mount.cctmpfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]")
    ap.add_argument("source")
    ap.add_argument("mountpoint")
    ap.add_argument("-o", dest="options", action="append", default=[])
    ap.add_argument("-t", dest="type", default="cctmpfs")
    ap.add_argument("-N", dest="namespace", default=None)
    for flag in ("-s", "-f", "-n", "-v"):
        ap.add_argument(flag, action="store_true")
    args = ap.parse_args(argv)
    if args.namespace is not None:
        print("mount.cctmpfs: -N (mount in another namespace) is not supported; "
              "run mount inside the namespace instead", file=sys.stderr)
        return 1
    try:
        opts = parse_options(args.options, source=args.source)
    except OptionError as e:
        print(f"mount.cctmpfs: bad mount option {one_line(str(e))}", file=sys.stderr)
        return 1
    if args.f:
        return 0
    restart_under_allocator(opts.allocator, argv)
    from .daemon import run  # a transport (llfuse) is imported only when mounting
    return run(args.source, args.mountpoint, opts, foreground=False)


#: The subcommands. Each takes long options only (--json, --settle), never a
#: flag of the mount form: that is what keeps the two apart (command()).
SUBCOMMANDS = {"stats": stats_main, "check": check_main}
#: The short options of the mount form: -o OPTIONS, -f (foreground), -d (debug).
MOUNT_FLAGS = "ofd"


def command(argv: list[str]) -> str:
    """Which command argv is: a key of SUBCOMMANDS, or "mount".

    `stats` and `check` are also valid mount sources: an fstab line
    `stats /tmp fuse.cctmpfs size=8G` makes /sbin/mount.fuse run
    `cctmpfs stats /tmp -o rw,size=8G,dev,suid`. The rule: a first word that
    names a subcommand is that subcommand unless the arguments hold -o, -f or
    -d (in any spelling argparse takes: `-o X`, `-oX`, `-fo X`), which only
    the mount form has; then it is the mount's SOURCE. mount.fuse always
    passes -o (it adds dev or nodev, suid or nosuid), so every fstab or
    systemd mount mounts, and `cctmpfs stats [MOUNTPOINT...] [--json]` never
    does. Arguments after `--` are positional and never count as flags.
    """
    if not argv or argv[0] not in SUBCOMMANDS:
        return "mount"
    for arg in argv[1:]:
        if arg == "--":
            break
        if len(arg) > 1 and arg[0] == "-" and arg[1] in MOUNT_FLAGS:
            return "mount"
    return argv[0]


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    which = command(argv)
    if which == "mount":
        return mount_main(argv)
    return SUBCOMMANDS[which](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
