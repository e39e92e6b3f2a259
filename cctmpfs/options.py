"""Mount option parsing: `-o` strings in, one frozen MountOptions out.

Our own keys (tmpfs's plus cctmpfs's) are popped into MountOptions; FUSE and
mount(8) flags that libfuse understands pass through in `fuse_options`; the
ones only mount(8) cares about are dropped. Anything else is an OptionError
that names the option, so a typo in fstab never mounts with silent defaults.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import attrs

from .errors import OptionError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

PAGE_SIZE = 4096
#: Sizes at or past 2**63 fit no kernel field; refuse them.
MAX_SIZE = 2 ** 63

#: Codecs by the name used in `compress=`; the level applies to zstd only.
CODEC_NAMES = ("zstd", "lz4", "none")
#: zstd level 3 is zstd's own default. Measured on the 7,733 stdlib files of
#: Python 3.11 compressed per file in 128 KiB blocks: level 1 gives 2.98,
#: level 3 gives 3.10 (295 MB/s), level 4 3.15 (266 MB/s), level 5 3.24 but at
#: 139 MB/s. Level 3 is the cheapest that clears a 3.0 ratio on real files.
DEFAULT_ZSTD_LEVEL = 3
ZSTD_LEVELS = range(-7, 23)
#: Idle recompression (recompress=LEVEL|off): the zstd level the sealer
#: recompresses cold blocks at when the mount is idle (recompress.py,
#: Recompressor.idle_pass). Measured here on the 1,618 128 KiB blocks (52.2 MB) of
#: /usr/lib/python3.11 (benchmark in docs/memory.md), stored bytes against
#: level 3 and CPU to compress:
#:     level  6:  -6.9%   14.3 ms/MB   (1.54 MB saved per CPU second)
#:     level  9:  -8.0%   18.6 ms/MB   (1.38)
#:     level 12:  -8.6%   57.6 ms/MB   (0.48)
#:     level 15: -13.1%  128.0 ms/MB   (0.33)
#:     level 19: -14.7%  314.6 ms/MB   (0.15)
#: 9 takes most of what is cheap (12 adds 0.6% for 3x the CPU); 15 saves 5
#: more points for 7x the CPU: 131 s of a core per GiB of cold data instead
#: of 19 s, spent again for every file rewritten. RAM-tight mounts can ask
#: for it. lz4 blocks (ratio 2.20 here) are recompressed to zstd too: -35%.
DEFAULT_RECOMPRESS_LEVEL = 9
RECOMPRESS_LEVELS = range(1, 23)

#: 128 KiB is both the libfuse 2.9 maximum WRITE/READ size (so sequential
#: writers fill a block per request) and where the ratio stops growing:
#: 4 KiB -> 128 KiB adds ~26% on source code, 128 KiB -> 1 MiB only 2-10%.
DEFAULT_BLOCK_SIZE = 128 * KiB
MIN_BLOCK_SIZE = 16 * KiB
MAX_BLOCK_SIZE = 1 * MiB

#: Small-file packing (pack=on|off|SIZE, packing.py): the decoded bytes a
#: pack of small files and tails is built to. The bigger the pack, the more
#: history zstd matches each file against, and the more a cold read of one
#: file decodes. The small files and tails of the stdlib with site-packages
#: (321 MiB of files at most 64 KiB) packed in order and compressed at zstd
#: -9 (the level they are recompressed at): 88.1 MB in 128 KiB packs, 82.6 in
#: 256 KiB, 79.8 in 512 KiB, 76.3 in 1 MiB; decoding one pack takes 100 us
#: and 824 us. The default is a tradeoff settled in docs/packing.md ("Pack
#: size"). At most 1 MiB, the largest decoded length a payload handle holds
#: (arena.py), and at least a block.
DEFAULT_PACK_BYTES = 1 * MiB
MAX_PACK_BYTES = MAX_BLOCK_SIZE

#: The hot buffer holds uncompressed blocks (being written, or decompressed for
#: reads). 512 MiB holds the whole working set of two fio random jobs of
#: 256 MiB each, so random 4 KiB I/O does not decompress a block per request.
DEFAULT_BUFFER_CAP = 512 * MiB

#: Options libfuse 2.9 (or the kernel through it) understands; passed on as is.
FUSE_FLAGS = frozenset({
    "allow_other", "allow_root", "auto_unmount", "default_permissions",
    "nosuid", "suid", "nodev", "dev", "noexec", "exec", "rw",
    "atime", "noatime", "sync", "async", "dirsync", "nonempty",
})
FUSE_KEYS = frozenset({"fsname", "subtype"})
#: Meaningful to mount(8), systemd or tmpfs only; accepted and ignored.
#: Atime policy is ours (relatime, see namespace.py), so the atime flags that
#: libfuse does not know are accepted here rather than passed on.
IGNORED_FLAGS = frozenset({
    "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser",
    "owner", "group", "relatime", "norelatime", "strictatime", "nostrictatime",
    "lazytime", "nolazytime", "nodiratime", "diratime", "inode64", "inode32",
    "noswap", "silent", "loud",
})
IGNORED_KEYS = frozenset({"huge", "mpol", "comment", "context", "fscontext",
                          "defcontext", "rootcontext"})


#: The FUSE bindings (cctmpfs/transport): llfuse on libfuse 2.9, or the
#: kernel protocol on /dev/fuse spoken directly. The native one is the
#: default since it won the perf suite on a quiet machine (issue 18, stop 22,
#: with spin=200; results/spin-s22c.md and default-s22.md): against llfuse,
#: random 4 KiB writes 3.1-3.8x the IOPS, reads 2.0-2.1x, stat 3.6x,
#: create 2.1x, a cold du 3.0-3.5x, sequential writes 1.2-1.6x, the untar
#: of the stdlib 0.52-0.55x the time; cold 1 MiB reads equal.
TRANSPORTS = ("llfuse", "native")
DEFAULT_TRANSPORT = "native"
#: Which allocator the daemon's Python objects come from (allocator=; set
#: as PYTHONMALLOC, so cli.py starts the command again under malloc). glibc's
#: malloc gives freed pages back page by page (memtrim.py); pymalloc keeps a
#: 1 MiB arena while one object in it lives. After `rm -rf` of the stdlib
#: with site-packages (59k inodes), packed and recompressed, the daemon's RSS
#: stayed 40-42 MiB above the fresh daemon's under pymalloc (25 arenas
#: pinned), 14-15 MiB under malloc (capacity-s24b and -s24c). Since the idle
#: pass gives back pymalloc's empty pools (pools.py), 16.1 MiB under
#: pymalloc (s27-capacity).
#: pymalloc stays the default: under malloc the untar of the perf suite took
#: 1.15x the time (medians of 8 interleaved rounds) and the core's metadata
#: path 1.12x the CPU, over the issue's 10% (docs/memory.md, "Stop 24").
ALLOCATORS = ("pymalloc", "malloc")
#: What write-only opens do on the native transport (wronly=direct|cached,
#: transport/directwrite.py). direct made the untar of the stdlib 0.84x the
#: time and a tar of /usr/bin 0.85x (results/s26-wronly), creates 0.91x
#: (s26-wronly-meta), but a 256 MiB file read right after it was written took
#: 0.19 s against 0.05 (its pages enter the page cache at the close, on the
#: reader's path), and 3,000 16 KiB files written and read back 0.97 s
#: against 0.83 (results/s26-readback). A file read back at once is what tmpfs users
#: do most (a build, a download then its extraction), so cached stays the
#: default; direct is for mounts that mostly unpack archives.
DEFAULT_WRONLY = "cached"
DEFAULT_ALLOCATOR = "pymalloc"
#: libfuse options the native transport cannot honour (none: it mounts with
#: mount(2) as root, through fusermount as a user or with auto_unmount).
NATIVE_UNSUPPORTED: frozenset[str] = frozenset()

#: The INIT flags transport=native asks the kernel for, each switchable by
#: its lowercased linux/fuse.h name (`fuse_off=NAME[:NAME...]` removes,
#: `fuse_on=` adds; colons, because fstab splits options on commas), and
#: whether it is asked for by default. The one definition: the transport
#: maps each name to its bit (transport/wire.py INIT_FLAGS) and asks for
#: the enabled ones the kernel offers; `stats` shows offered, asked and
#: negotiated. A kernel that offers fewer flags works, only slower. To add
#: a flag: a line here, and its semantics in the transport.
INIT_SWITCHES: dict[str, bool] = {
    # READs of one file may be in flight together (readahead): as libfuse 2.9.
    "async_read": True,
    # Up to 1 MiB per READ and WRITE (max_pages 256) instead of 128 KiB:
    # a quarter of the requests for sequential I/O.
    "max_pages": True,
    # OPEN carries O_TRUNC and the daemon truncates, instead of a SETATTR
    # before it: one request less per `> file`.
    "atomic_o_trunc": True,
    # Lookups and readdirs of one directory are not serialised by the
    # kernel (the daemon has one reader, so this only removes kernel waits).
    "parallel_dirops": True,
    # The kernel drops its cached pages of a file whenever a GETATTR shows
    # an mtime or size it did not expect: for data changed behind its back,
    # which cannot happen here (every change comes through this kernel, and
    # it drops the ranges of COPY_FILE_RANGE and FALLOCATE itself). Off: with
    # it, the first read after writing a file lost the page cache (benchmarks
    # run native-s19, seqread-1m-comp-warm: 2101 MiB/s against 6782 on
    # llfuse; dd of a 512 MiB file just written: 1.4 GB/s on, 10.3 off).
    "auto_inval_data": False,
    # The daemon clears suid/sgid (and security.capability) on write,
    # truncate and chown itself, so the kernel no longer asks
    # GETXATTR(security.capability) before every write(2).
    "handle_killpriv_v2": True,
    # The kernel caches writes and owns size and mtime while pages are
    # dirty. Off by default: a writer that opened its file before the mount
    # filled keeps the cache and gets ENOSPC once free space is down to the
    # reserve, before the mount is full, where tmpfs fills it to the byte
    # (transport/writeback.py; nothing acknowledged is lost).
    "writeback_cache": False,
    # READDIRPLUS (entries with their attributes and a lookup reference) and
    # the kernel's choice of when to use it: `ls -l` of 5,000 entries took
    # 0.53-0.85x the time of plain READDIR, `du -s` of the stdlib 0.30x
    # llfuse's (transport/native.py, READDIRPLUS_MAX).
    "readdirplus": True,
    "readdirplus_auto": True,
    # The kernel keeps a symlink's target in its page cache and asks
    # READLINK once per inode: a target never changes (a new one is a new
    # inode).
    "cache_symlinks": True,
}
DEFAULT_FUSE_FLAGS = frozenset(n for n, on in INIT_SWITCHES.items() if on)


#: Adaptive polling of /dev/fuse (spin=MICROSECONDS, transport/spin.py):
#: after an answer the reader keeps reading without blocking for up to this
#: long, while requests come close together, before it sleeps. 0 = off.
#: On by default since stop 22. On a quiet machine, where a halted vCPU
#: takes 55-75 us to wake, spin=200 against spin=0, interleaved
#: (results/spin-s22b.md, after spins that catch their request stopped
#: being charged in full, spin.HIT_FREE_NS): random 4 KiB writes 14.3k
#: against 8.1k IOPS, reads 15.3k against 7.8k, stat 48 against 135 us,
#: create 399 against 809 us, untar 9.98 against 14.1 s, at the same daemon
#: CPU per request (65-70 us). Where other jobs keep the CPUs busy it
#: stops itself (the crowding check): measured earlier under load 3-7 it
#: came out as noise either way (docs/locking.md, "Spinning"). An idle
#: mount spins one window and then uses no CPU (a mounted test bounds it).
DEFAULT_SPIN_US = 200
#: The largest window accepted: past 10 ms a "spin" is a busy sleep, not a
#: bridge over a vCPU wake-up (55-75 us here).
MAX_SPIN_US = 10_000


def total_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@attrs.frozen
class MountOptions:
    """Everything a mount was asked for, validated. 0 means "no limit"."""

    size_bytes: int          # limit on allocated file data (logical), as tmpfs size=
    nr_inodes: int           # limit on inodes, root included, as tmpfs nr_inodes=
    root_mode: int           # permission bits of the root directory (mode=)
    root_uid: int
    root_gid: int
    codec: str               # one of CODEC_NAMES
    level: int               # zstd level (ignored by the other codecs)
    block_size: int          # bytes per logical block, a power of two
    ram_bytes: int           # RAM budget for stored blocks plus the hot buffer
    buffer_bytes: int        # RAM budget of the uncompressed hot buffer
    workers: int             # llfuse worker threads (transport=native: one reader, for now)
    dedup: bool              # store identical blocks once (dedup=on|off)
    backing: Optional[str] = None   # absolute path of the backing device or file (backing=)
    backing_size: int = 0    # size to create a missing backing file at (backing_size=); 0: must exist
    backing_encrypt: bool = True    # AES-GCM records on the device (backing_encrypt=on|off)
    seal_idle: bool = True   # the sealer compresses at SCHED_IDLE while it can (seal_priority=idle|normal)
    recompress_level: int = 0   # zstd level cold blocks are recompressed at when idle; 0: off (recompress=)
    pack: bool = True        # pack cold small blocks into shared compressed packs (pack=on|off|SIZE, packing.py)
    pack_bytes: int = DEFAULT_PACK_BYTES   # decoded bytes a pack is built to (pack=SIZE), >= block_size
    transport: str = DEFAULT_TRANSPORT  # how FUSE requests arrive (transport=, one of TRANSPORTS)
    spin_us: int = 0         # transport=native: adaptive polling window, microseconds; 0: off (spin=)
    #: transport=native without the writeback cache: O_WRONLY opens bypass
    #: the page cache, and the file enters it at its last close (wronly=direct|cached,
    #: transport/directwrite.py). Off by default: see DEFAULT_WRONLY.
    wronly_direct: bool = False
    #: The INIT_SWITCHES names transport=native asks for (fuse_off=, fuse_on=).
    fuse_flags: frozenset[str] = DEFAULT_FUSE_FLAGS
    fuse_options: tuple[str, ...] = ()
    allocator: str = DEFAULT_ALLOCATOR  # the daemon's PYTHONMALLOC (allocator=, one of ALLOCATORS)

    @property
    def codec_spec(self) -> str:
        return f"zstd:{self.level}" if self.codec == "zstd" else self.codec


_SIZE_RE = re.compile(r"^(\d+)([kKmMgGtTpPeE%]?)$")
_SUFFIX = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB, "p": 1024 ** 5, "e": 1024 ** 6}


def parse_size(key: str, text: str, *, allow_percent: bool = True) -> int:
    """tmpfs-style size: a number with an optional k/m/g/t/p/e suffix, or N% of RAM."""
    m = _SIZE_RE.match(text)
    if not m or len(m.group(1)) > 30:
        raise OptionError(f"{key}={text[:40]}: not a size (use e.g. 512k, 64m, 8g or 50%)")
    number, suffix = int(m.group(1)), m.group(2).lower()
    if suffix == "%":
        if not allow_percent:
            raise OptionError(f"{key}={text}: a percentage is not allowed here")
        if number > 100 * 100:
            raise OptionError(f"{key}={text}: percentage too large")
        return total_ram_bytes() * number // 100
    value = number * _SUFFIX[suffix]
    if value >= MAX_SIZE:
        raise OptionError(f"{key}={text}: too large")
    return value


def _parse_int(key: str, text: str, base: int = 10) -> int:
    if len(text) > 30:
        raise OptionError(f"{key}={text[:40]}...: not a number")
    try:
        value = int(text, base)
    except ValueError:
        raise OptionError(f"{key}={text}: not a number") from None
    if value < 0:
        raise OptionError(f"{key}={text}: must not be negative")
    return value


def _parse_recompress(text: Optional[str], codec: str, level: int) -> int:
    """recompress=LEVEL|off -> the level, 0 for off. Not given: the default
    level, or off when the mount's codec is none (nothing is compressed) or
    zstd at that level or stronger (nothing to gain)."""
    if text is None:
        if codec == "none" or (codec == "zstd" and level >= DEFAULT_RECOMPRESS_LEVEL):
            return 0
        return DEFAULT_RECOMPRESS_LEVEL
    if text == "off":
        return 0
    if not text.isdigit() or len(text) > 2 or int(text) not in RECOMPRESS_LEVELS:
        raise OptionError(f"recompress={text[:40]}: must be off or a zstd level "
                          f"{RECOMPRESS_LEVELS.start}..{RECOMPRESS_LEVELS.stop - 1}")
    n = int(text)
    if codec == "none":
        raise OptionError(f"recompress={text}: compress=none stores nothing compressed")
    if codec == "zstd" and n <= level:
        raise OptionError(f"recompress={text}: must be stronger than compress=zstd:{level}")
    return n


def _parse_spin(text: Optional[str], transport: str) -> int:
    """spin=MICROSECONDS -> the window, 0 for off. Only the native transport
    polls: llfuse's loop is libfuse's C loop, which always blocks. There an
    explicit spin= other than 0 is refused rather than ignored, so that a
    mount never silently lacks what its options ask for; spin=0 is what
    llfuse does anyway, and is accepted."""
    if text is None:
        return DEFAULT_SPIN_US if transport == "native" else 0
    if not text.isdigit() or len(text) > 6:
        raise OptionError(f"spin={text[:40]}: must be a number of microseconds, "
                          f"0 (off) to {MAX_SPIN_US}")
    n = int(text)
    if n > MAX_SPIN_US:
        raise OptionError(f"spin={text}: at most {MAX_SPIN_US} microseconds")
    if n and transport != "native":
        raise OptionError(f"spin={text}: needs transport=native (llfuse's loop cannot poll); "
                          "use spin=0 or leave it out")
    return n


def _parse_codec(text: str) -> tuple[str, int]:
    name, colon, level_text = text.partition(":")
    if name not in CODEC_NAMES:
        raise OptionError(f"compress={text}: unknown codec (use zstd[:LEVEL], lz4 or none)")
    if not colon:
        return name, DEFAULT_ZSTD_LEVEL
    if not level_text:
        raise OptionError(f"compress={text}: empty level")
    if name != "zstd":
        raise OptionError(f"compress={text}: only zstd takes a level")
    try:
        if len(level_text) > 4:
            raise ValueError
        level = int(level_text)
    except ValueError:
        raise OptionError(f"compress={text}: level is not a number") from None
    if level not in ZSTD_LEVELS:
        raise OptionError(f"compress={text}: zstd level must be {ZSTD_LEVELS.start}..{ZSTD_LEVELS.stop - 1}")
    return name, level


def _parse_fuse_switches(off: Optional[str], on: Optional[str]) -> frozenset[str]:
    """The INIT_SWITCHES names enabled by default, less fuse_off=, plus
    fuse_on= (colon-separated names). OptionError names an unknown one."""
    flags = set(DEFAULT_FUSE_FLAGS)
    for key, text, add in (("fuse_off", off, False), ("fuse_on", on, True)):
        if text is None:
            continue
        for name in text.split(":"):
            if name not in INIT_SWITCHES:
                raise OptionError(f"{key}={text[:80]}: unknown flag {name[:40]!r} "
                                  f"(known: {':'.join(INIT_SWITCHES)})")
            if add:
                flags.add(name)
            else:
                flags.discard(name)
    return frozenset(flags)


#: A backslash escape in a -o string, as libfuse 2.9's option parser reads
#: them (fuse_opt.c): three octal digits are one byte (fstab's \054 is a
#: comma), any other character stands for itself (`fsname=a\,b`).
_ESCAPE = re.compile(r"\\([0-3][0-7][0-7]|.)", re.DOTALL)
_SPLIT = re.compile(r"(?:[^,\\]|\\.?)+", re.DOTALL)


def _unescape(part: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)) if len(m[1]) == 3 else m[1], part)


def split_option_strings(option_strings: list[str]) -> list[str]:
    r"""Split `-o a,b=c` strings into single options, dropping empty ones.
    A comma after a backslash does not split: libfuse's escapes apply, so a
    name may hold one (`fsname=a\,b`, or the source `a,b` of an fstab line,
    which arrives as fsname= unescaped and is escaped again for libfuse and
    fusermount: mounting.escape_name_option)."""
    out: list[str] = []
    for text in option_strings:
        out.extend(_unescape(part) for part in _SPLIT.findall(text))
    return out


def parse_options(option_strings: list[str], *, source: str = "cctmpfs") -> MountOptions:
    """Parse the `-o` strings of one mount. Raises OptionError naming the culprit."""
    ours: dict[str, str] = {}
    fuse: list[str] = []
    for opt in split_option_strings(option_strings):
        key, eq, value = opt.partition("=")
        if key == "ro":
            raise OptionError("ro: cctmpfs is a read-write /tmp; mount it rw")
        if key in ("size", "nr_inodes", "nr_blocks", "mode", "uid", "gid", "compress",
                   "block_size", "ram", "buffer", "workers", "dedup", "backing",
                   "backing_size", "backing_encrypt", "seal_priority", "recompress", "pack", "transport",
                   "spin", "fuse_off", "fuse_on", "wronly", "allocator"):
            if not eq or value == "":
                raise OptionError(f"{key}: needs a value ({key}=...)")
            ours[key] = value
        elif key in FUSE_FLAGS and not eq:
            fuse.append(key)
        elif key in FUSE_KEYS and eq:
            fuse.append(opt)
        elif (key in IGNORED_FLAGS and not eq) or (key in IGNORED_KEYS and eq) or key.startswith("x-"):
            continue
        else:
            raise OptionError(f"{opt}: unknown mount option")

    ram_total = total_ram_bytes()
    if "size" in ours and "nr_blocks" in ours:
        raise OptionError("size= and nr_blocks= both given; use one")
    if "nr_blocks" in ours:
        size = parse_size("nr_blocks", ours["nr_blocks"], allow_percent=False) * PAGE_SIZE
    else:
        size = parse_size("size", ours.get("size", "50%"))
    if "nr_inodes" in ours:
        nr_inodes = parse_size("nr_inodes", ours["nr_inodes"], allow_percent=False)
    else:
        # tmpfs's default: half the number of RAM pages.
        nr_inodes = ram_total // PAGE_SIZE // 2

    mode = _parse_int("mode", ours.get("mode", "1777"), 8)
    if mode > 0o7777:
        raise OptionError(f"mode={ours['mode']}: not a permission mode (0..7777 octal)")
    # The root directory is the mounter's, as a tmpfs's: root's, or the
    # user's of a user mount (through fusermount).
    uid = _parse_int("uid", ours.get("uid", str(os.getuid())))
    gid = _parse_int("gid", ours.get("gid", str(os.getgid())))
    if uid >= 2 ** 32 - 1 or gid >= 2 ** 32 - 1:
        raise OptionError("uid=/gid=: out of range")

    codec, level = _parse_codec(ours.get("compress", "zstd"))

    block_size = parse_size("block_size", ours.get("block_size", "128k"), allow_percent=False)
    if block_size & (block_size - 1) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise OptionError(f"block_size={ours['block_size']}: must be a power of two from 16k to 1m")

    # Default: as much RAM as size= could need, at most half the RAM, and at
    # least the 4 blocks the data path needs (tmpfs accepts tiny sizes too).
    default_ram = ram_total // 2 if size == 0 else min(size, ram_total // 2)
    ram = parse_size("ram", ours["ram"]) if "ram" in ours else max(default_ram, 4 * block_size)
    if ram < 4 * block_size:
        raise OptionError(f"ram={ours.get('ram', ram)}: must hold at least 4 blocks ({4 * block_size} bytes)")
    if "buffer" in ours:
        buffer = parse_size("buffer", ours["buffer"], allow_percent=False)
        if buffer < 2 * block_size:
            raise OptionError(f"buffer={ours['buffer']}: must hold at least 2 blocks ({2 * block_size} bytes)")
        if buffer > ram:
            raise OptionError(f"buffer={ours['buffer']}: larger than ram= ({ram} bytes)")
    else:
        buffer = max(2 * block_size, min(DEFAULT_BUFFER_CAP, ram // 4))

    transport = ours.get("transport", DEFAULT_TRANSPORT)
    if transport not in TRANSPORTS:
        raise OptionError(f"transport={transport}: must be {' or '.join(TRANSPORTS)}")

    spin_us = _parse_spin(ours.get("spin"), transport)

    workers = _parse_int("workers", ours.get("workers", "1"))
    if not 1 <= workers <= 64:
        raise OptionError(f"workers={ours['workers']}: must be 1..64")
    if transport == "native":
        for opt in fuse:
            if opt in NATIVE_UNSUPPORTED:
                raise OptionError(f"{opt}: not supported with transport=native yet")

    fuse_flags = _parse_fuse_switches(ours.get("fuse_off"), ours.get("fuse_on"))
    # Under transport=llfuse these are checked, then ignored with a log line
    # (transport/llfuse_ops.py), as workers= is under native.

    wronly = ours.get("wronly", DEFAULT_WRONLY)
    if wronly not in ("direct", "cached"):
        raise OptionError(f"wronly={wronly[:40]}: must be direct or cached")

    dedup_text = ours.get("dedup", "on")
    if dedup_text not in ("on", "off"):
        raise OptionError(f"dedup={dedup_text}: must be on or off")

    seal_priority = ours.get("seal_priority", "idle")
    if seal_priority not in ("idle", "normal"):
        raise OptionError(f"seal_priority={seal_priority}: must be idle or normal")

    recompress_level = _parse_recompress(ours.get("recompress"), codec, level)

    pack_text = ours.get("pack", "on")
    pack_bytes = max(block_size, DEFAULT_PACK_BYTES)
    if pack_text not in ("on", "off"):
        if not pack_text[:1].isdigit():
            raise OptionError(f"pack={pack_text[:40]}: must be on, off or a pack size (e.g. 512k)")
        pack_bytes = parse_size("pack", pack_text, allow_percent=False)
        if not block_size <= pack_bytes <= MAX_PACK_BYTES:
            raise OptionError(f"pack={pack_text}: a pack size must be from block_size ({block_size}) "
                              f"to {MAX_PACK_BYTES // MiB}m")

    allocator = ours.get("allocator", DEFAULT_ALLOCATOR)
    if allocator not in ALLOCATORS:
        raise OptionError(f"allocator={allocator[:40]}: must be {' or '.join(ALLOCATORS)}")

    backing = os.path.abspath(ours["backing"]) if "backing" in ours else None
    if backing is None and ("backing_size" in ours or "backing_encrypt" in ours):
        raise OptionError("backing_size=/backing_encrypt=: need backing=PATH")
    backing_size = parse_size("backing_size", ours["backing_size"], allow_percent=False) \
        if "backing_size" in ours else 0
    encrypt_text = ours.get("backing_encrypt", "on")
    if encrypt_text not in ("on", "off"):
        raise OptionError(f"backing_encrypt={encrypt_text}: must be on or off")

    if not any(o.startswith("fsname=") for o in fuse):
        fuse.append(f"fsname={source}")
    if not any(o.startswith("subtype=") for o in fuse):
        fuse.append("subtype=cctmpfs")
    # A /tmp is for every user, as a tmpfs is: when root mounts, other users
    # may enter (the kernel still checks every mode; see default_permissions).
    if "allow_other" in fuse and "allow_root" in fuse:
        raise OptionError("allow_other and allow_root: give one (libfuse refuses both)")
    if os.geteuid() == 0 and "allow_other" not in fuse and "allow_root" not in fuse:
        fuse.append("allow_other")
    # The kernel enforces modes, ownership and the sticky bit only with this.
    if "default_permissions" not in fuse:
        fuse.append("default_permissions")
    # 128 KiB WRITE requests; without it the kernel sends 4 KiB pieces.
    fuse.append("big_writes")
    # tmpfs mounts over a directory that holds files (a /tmp in use, say);
    # libfuse 2.9 refuses to unless told so.
    if "nonempty" not in fuse:
        fuse.append("nonempty")

    return MountOptions(
        size_bytes=size, nr_inodes=nr_inodes, root_mode=mode, root_uid=uid, root_gid=gid,
        codec=codec, level=level, block_size=block_size, ram_bytes=ram, buffer_bytes=buffer,
        workers=workers, dedup=dedup_text == "on", backing=backing, backing_size=backing_size,
        backing_encrypt=encrypt_text == "on", seal_idle=seal_priority == "idle",
        recompress_level=recompress_level, pack=pack_text != "off", pack_bytes=pack_bytes,
        transport=transport, spin_us=spin_us, fuse_flags=fuse_flags, fuse_options=tuple(fuse),
        wronly_direct=wronly == "direct",
        allocator=allocator,
    )
