"""The kernel's FUSE protocol: opcodes, flags and struct layouts (linux/fuse.h).

The one definition of the wire format the native binding speaks. Layouts are
precompiled struct.Struct objects, little-endian as on every Linux FUSE
host, with their sizes pinned by asserts against fuse.h. Names follow
fuse.h without the FUSE_ prefix.

We speak protocol 7.38 (the headers of this machine; the kernel, 6.18,
speaks 7.45 and accepts 7.38 answers). The layouts used here are all
unchanged since 7.12, the oldest minor the binding accepts; fuse_init_out
is cut to its 7.22 size for a kernel older than 7.23.
"""

from __future__ import annotations

import errno
import os
import struct

PROTOCOL_MAJOR = 7
PROTOCOL_MINOR = 38
#: The oldest kernel protocol accepted: fuse_mknod_in and fuse_create_in
#: carry umask since 7.12.
MIN_KERNEL_MINOR = 12
#: Below 7.23 the kernel expects the 24-byte fuse_init_out of 7.22.
INIT_OUT_COMPAT_MINOR = 23
INIT_OUT_COMPAT_SIZE = 24

ROOT_ID = 1

# ---- opcodes (enum fuse_opcode) ------------------------------------------------
LOOKUP = 1
FORGET = 2            # no reply
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
ACCESS = 34
CREATE = 35
INTERRUPT = 36        # no reply
DESTROY = 38
BATCH_FORGET = 42     # no reply
READDIRPLUS = 44      # answered with fuse_direntplus records: an entry (a lookup reference) + a dirent
FALLOCATE = 43
RENAME2 = 45
LSEEK = 46            # SEEK_DATA / SEEK_HOLE only: the kernel does SET/CUR/END itself
COPY_FILE_RANGE = 47  # answered with a fuse_write_out
TMPFILE = 51          # O_TMPFILE (7.38): CREATE's arguments and answer; the name is "/"
#: One past the highest opcode a dispatch table needs a slot for (fuse.h
#: has them up to 51, FUSE_TMPFILE; CUSE_INIT is 4096).
OPCODE_LIMIT = 64

# ---- INIT flags (fuse_init_in/out.flags; flags2 holds bits 32-63) --------------
INIT_FLAGS = {
    "ASYNC_READ": 1 << 0, "POSIX_LOCKS": 1 << 1, "FILE_OPS": 1 << 2,
    "ATOMIC_O_TRUNC": 1 << 3, "EXPORT_SUPPORT": 1 << 4, "BIG_WRITES": 1 << 5,
    "DONT_MASK": 1 << 6, "SPLICE_WRITE": 1 << 7, "SPLICE_MOVE": 1 << 8,
    "SPLICE_READ": 1 << 9, "FLOCK_LOCKS": 1 << 10, "HAS_IOCTL_DIR": 1 << 11,
    "AUTO_INVAL_DATA": 1 << 12, "DO_READDIRPLUS": 1 << 13, "READDIRPLUS_AUTO": 1 << 14,
    "ASYNC_DIO": 1 << 15, "WRITEBACK_CACHE": 1 << 16, "NO_OPEN_SUPPORT": 1 << 17,
    "PARALLEL_DIROPS": 1 << 18, "HANDLE_KILLPRIV": 1 << 19, "POSIX_ACL": 1 << 20,
    "ABORT_ERROR": 1 << 21, "MAX_PAGES": 1 << 22, "CACHE_SYMLINKS": 1 << 23,
    "NO_OPENDIR_SUPPORT": 1 << 24, "EXPLICIT_INVAL_DATA": 1 << 25, "MAP_ALIGNMENT": 1 << 26,
    "SUBMOUNTS": 1 << 27, "HANDLE_KILLPRIV_V2": 1 << 28, "SETXATTR_EXT": 1 << 29,
    "INIT_EXT": 1 << 30, "INIT_RESERVED": 1 << 31,
    "SECURITY_CTX": 1 << 32, "HAS_INODE_DAX": 1 << 33, "CREATE_SUPP_GROUP": 1 << 34,
    "HAS_EXPIRE_ONLY": 1 << 35, "DIRECT_IO_ALLOW_MMAP": 1 << 36, "PASSTHROUGH": 1 << 37,
    "NO_EXPORT_SUPPORT": 1 << 38, "HAS_RESEND": 1 << 39, "ALLOW_IDMAP": 1 << 40,
    "OVER_IO_URING": 1 << 41, "REQUEST_TIMEOUT": 1 << 42,
}
ASYNC_READ = INIT_FLAGS["ASYNC_READ"]
BIG_WRITES = INIT_FLAGS["BIG_WRITES"]
INIT_EXT = INIT_FLAGS["INIT_EXT"]
DO_READDIRPLUS = INIT_FLAGS["DO_READDIRPLUS"]
READDIRPLUS_AUTO = INIT_FLAGS["READDIRPLUS_AUTO"]
ATOMIC_O_TRUNC = INIT_FLAGS["ATOMIC_O_TRUNC"]
MAX_PAGES = INIT_FLAGS["MAX_PAGES"]
WRITEBACK_CACHE = INIT_FLAGS["WRITEBACK_CACHE"]
HANDLE_KILLPRIV_V2 = INIT_FLAGS["HANDLE_KILLPRIV_V2"]
DIRECT_IO_ALLOW_MMAP = INIT_FLAGS["DIRECT_IO_ALLOW_MMAP"]
CACHE_SYMLINKS = INIT_FLAGS["CACHE_SYMLINKS"]
#: Switch names (options.INIT_SWITCHES) whose fuse.h name differs from the
#: lowercased flag: FUSE_DO_READDIRPLUS is switched as `readdirplus`.
SWITCH_ALIASES = {"readdirplus": "DO_READDIRPLUS"}


def switch_bit(name: str) -> int:
    """The INIT flag of a switch name (options.INIT_SWITCHES)."""
    return INIT_FLAGS[SWITCH_ALIASES.get(name, name.upper())]


def flag_names(flags: int) -> list[str]:
    """The INIT flag names set in flags, lowest bit first; unknown bits as hex."""
    names = [name for name, bit in INIT_FLAGS.items() if flags & bit]
    rest = flags & ~sum(INIT_FLAGS.values())
    return names + ([hex(rest)] if rest else [])


# ---- other flags ---------------------------------------------------------------
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3

#: fuse_write_in.write_flags
WRITE_CACHE = 1 << 0          # a writeback of cached pages; the handle is any open one
WRITE_KILL_SUIDGID = 1 << 2   # HANDLE_KILLPRIV_V2: clear suid/sgid (the writer lacks CAP_FSETID)
#: fuse_open_in.open_flags, fuse_create_in.open_flags
OPEN_KILL_SUIDGID = 1 << 0    # HANDLE_KILLPRIV_V2: O_TRUNC by a caller without CAP_FSETID

# ---- layouts -------------------------------------------------------------------
IN_HEADER = struct.Struct("<IIQQIIIHH")     # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HEADER = struct.Struct("<IiQ")          # len, error (negative errno), unique
#: fuse_attr, with the seconds of the three times signed: the kernel takes
#: them as time64_t, so a time before 1970 travels as its two's complement.
_ATTR = "QQQqqqIIIIIIIIII"   # ino size blocks atime mtime ctime atimensec mtimensec ctimensec
#                              mode nlink uid gid rdev blksize flags
ATTR = struct.Struct("<" + _ATTR)
ENTRY_OUT = struct.Struct("<QQQQII" + _ATTR)   # nodeid generation entry_valid attr_valid (+nsec x2) attr
ATTR_OUT = struct.Struct("<QII" + _ATTR)       # attr_valid attr_valid_nsec dummy attr
OPEN_OUT = struct.Struct("<QII")               # fh open_flags padding
WRITE_OUT = struct.Struct("<II")               # size padding
GETXATTR_OUT = struct.Struct("<II")            # size padding
KSTATFS = struct.Struct("<QQQQQIIII24x")       # blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")    # major minor max_readahead flags max_background
#                                                congestion_threshold max_write time_gran max_pages
#                                                map_alignment flags2 unused[7]
DIRENT = struct.Struct("<QQII")                # ino off namelen type, then the name, padded to 8
#: fuse_direntplus: a fuse_entry_out, then a fuse_dirent; the name starts
#: here (FUSE_NAME_OFFSET_DIRENTPLUS) and the record is padded to 8 bytes.
DIRENTPLUS_NAME_OFFSET = ENTRY_OUT.size + DIRENT.size
#: The fixed part of a fuse_direntplus as one layout (a fuse_entry_out, then
#: a fuse_dirent): the base of DIRENTPLUS_BY_NAMELEN.
DIRENTPLUS = struct.Struct(ENTRY_OUT.format + DIRENT.format[1:])
#: By name length (1..255, NAME_MAX): a whole record, its name and the zero
#: padding to 8 bytes included ("Ns" pads with zeros), so a READDIR record
#: is one pack (0.61 -> 0.53 us a record in-process; llfuse's C loop does a
#: bare `ls -f` of 5,000 entries faster than three packs a record did).
DIRENT_BY_NAMELEN = [struct.Struct(DIRENT.format + "%ds" % (((DIRENT.size + n + 7) & ~7) - DIRENT.size))
                     for n in range(256)]
DIRENTPLUS_BY_NAMELEN = [struct.Struct(DIRENTPLUS.format + "%ds" % (((DIRENTPLUS.size + n + 7) & ~7)
                                                                  - DIRENTPLUS.size))
                         for n in range(256)]

INIT_IN = struct.Struct("<IIII")               # major minor max_readahead flags (7.6+)
INIT_IN_FLAGS2 = struct.Struct("<I")           # flags2, after them (7.36+, with INIT_EXT)
FORGET_IN = struct.Struct("<Q")                # nlookup
BATCH_FORGET_IN = struct.Struct("<II")         # count dummy
FORGET_ONE = struct.Struct("<QQ")              # nodeid nlookup
GETATTR_IN = struct.Struct("<IIQ")             # getattr_flags dummy fh
GETATTR_FH = 1 << 0     # getattr_flags: fh is the caller's open file (fstat, a cached write(2))
SETATTR_IN = struct.Struct("<IIQQQqqqIIIIIIII")  # valid padding fh size lock_owner atime mtime ctime
#                                                  atimensec mtimensec ctimensec mode unused4 uid gid unused5
MKNOD_IN = struct.Struct("<IIII")              # mode rdev umask padding
MKDIR_IN = struct.Struct("<II")                # mode umask
RENAME_IN = struct.Struct("<Q")                # newdir
RENAME2_IN = struct.Struct("<QII")             # newdir flags padding
LINK_IN = struct.Struct("<Q")                  # oldnodeid
OPEN_IN = struct.Struct("<II")                 # flags open_flags
CREATE_IN = struct.Struct("<IIII")             # flags mode umask open_flags
READ_IN = struct.Struct("<QQIIQII")            # fh offset size read_flags lock_owner flags padding
WRITE_IN = READ_IN                             # fh offset size write_flags lock_owner flags padding
RELEASE_IN = struct.Struct("<QIIQ")            # fh flags release_flags lock_owner
FLUSH_IN = struct.Struct("<QIIQ")              # fh unused padding lock_owner
FSYNC_IN = struct.Struct("<QII")               # fh fsync_flags padding
SETXATTR_IN = struct.Struct("<II")             # size flags (the compat size: no SETXATTR_EXT)
GETXATTR_IN = struct.Struct("<II")             # size padding (also LISTXATTR)
ACCESS_IN = struct.Struct("<II")               # mask padding
INTERRUPT_IN = struct.Struct("<Q")             # unique
LSEEK_IN = struct.Struct("<QQII")              # fh offset whence padding
LSEEK_OUT = struct.Struct("<Q")                # offset
FALLOCATE_IN = struct.Struct("<QQQII")         # fh offset length mode padding
COPY_FILE_RANGE_IN = struct.Struct("<QQQQQQQ")  # fh_in off_in nodeid_out fh_out off_out len flags

# ---- notifications (daemon to kernel: unique 0, the code in the error field) ----
NOTIFY_INVAL_INODE = 2
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")  # ino off len (off < 0: attributes only; len <= 0: to the end)
#: Data into the page cache of ino at off; the data follows. The kernel marks
#: a page up to date when the data covers it whole or ends at the file's end.
NOTIFY_STORE = 4
NOTIFY_STORE_OUT = struct.Struct("<QQII")      # ino offset size padding


def notify_inval_inode(fd: int, ino: int, offset: int) -> int:
    """Write NOTIFY_INVAL_INODE of ino, from offset to the end of its cached
    pages (offset -1: its attributes only), to /dev/fuse fd in one write(2).
    Returns 0, or the errno of a refusal: ENOENT (the kernel no longer knows
    the inode, so holds nothing of it) and ENODEV (unmounted) count as done."""
    msg = OUT_HEADER.pack(OUT_HEADER.size + NOTIFY_INVAL_INODE_OUT.size, NOTIFY_INVAL_INODE, 0) \
        + NOTIFY_INVAL_INODE_OUT.pack(ino, offset, 0)
    try:
        os.write(fd, msg)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENODEV):
            return e.errno
    return 0

def notify_store(fd: int, ino: int, offset: int, pieces: list, size: int) -> int:
    """Write NOTIFY_STORE of the size bytes in pieces (bytes or views) at
    offset of ino to /dev/fuse fd, in one writev(2). Returns 0, or the errno
    of a refusal (ENOENT: the kernel no longer knows the inode)."""
    head = OUT_HEADER.pack(OUT_HEADER.size + NOTIFY_STORE_OUT.size + size, NOTIFY_STORE, 0) \
        + NOTIFY_STORE_OUT.pack(ino, offset, size, 0)
    try:
        os.writev(fd, [head, *pieces])
    except OSError as e:
        return e.errno
    return 0


for _s, _size in ((IN_HEADER, 40), (OUT_HEADER, 16), (ATTR, 88), (ENTRY_OUT, 128),
                  (ATTR_OUT, 104), (OPEN_OUT, 16), (WRITE_OUT, 8), (KSTATFS, 80),
                  (INIT_OUT, 64), (DIRENT, 24), (INIT_IN, 16), (SETATTR_IN, 88),
                  (MKNOD_IN, 16), (CREATE_IN, 16), (READ_IN, 40), (RELEASE_IN, 24),
                  (FLUSH_IN, 24), (FSYNC_IN, 16), (RENAME2_IN, 16), (GETATTR_IN, 16),
                  (LSEEK_IN, 24), (LSEEK_OUT, 8), (FALLOCATE_IN, 32),
                  (COPY_FILE_RANGE_IN, 56), (NOTIFY_INVAL_INODE_OUT, 24), (NOTIFY_STORE_OUT, 24),
                  (DIRENTPLUS, 152)):
    assert _s.size == _size, (_s.format, _s.size, _size)
assert DIRENTPLUS_NAME_OFFSET == 152

#: Where the fixed part of a request's arguments ends and its names or data
#: begin (after the 40-byte header), per opcode: a request shorter than
#: this is garbled. Opcodes whose arguments are only names have 0.
BODY_SIZE = {
    LOOKUP: 0, FORGET: FORGET_IN.size, GETATTR: 0, SETATTR: SETATTR_IN.size, READLINK: 0,
    SYMLINK: 0, MKNOD: MKNOD_IN.size, MKDIR: MKDIR_IN.size, UNLINK: 0, RMDIR: 0,
    RENAME: RENAME_IN.size, LINK: LINK_IN.size, OPEN: OPEN_IN.size, READ: READ_IN.size,
    WRITE: WRITE_IN.size, STATFS: 0, RELEASE: RELEASE_IN.size, FSYNC: 0,
    SETXATTR: SETXATTR_IN.size, GETXATTR: GETXATTR_IN.size, LISTXATTR: GETXATTR_IN.size,
    REMOVEXATTR: 0, FLUSH: 0, INIT: INIT_IN.size, OPENDIR: 0, READDIR: READ_IN.size,
    RELEASEDIR: RELEASE_IN.size, FSYNCDIR: 0, ACCESS: 0, CREATE: CREATE_IN.size,
    INTERRUPT: INTERRUPT_IN.size, DESTROY: 0, BATCH_FORGET: BATCH_FORGET_IN.size,
    READDIRPLUS: READ_IN.size,
    RENAME2: RENAME2_IN.size, LSEEK: LSEEK_IN.size, FALLOCATE: FALLOCATE_IN.size,
    COPY_FILE_RANGE: COPY_FILE_RANGE_IN.size, TMPFILE: CREATE_IN.size,
}

#: Request names, as stats counts them (the llfuse binding's handler names).
OPCODE_NAMES = {
    LOOKUP: "lookup", FORGET: "forget", GETATTR: "getattr", SETATTR: "setattr",
    READLINK: "readlink", SYMLINK: "symlink", MKNOD: "mknod", MKDIR: "mkdir",
    UNLINK: "unlink", RMDIR: "rmdir", RENAME: "rename", LINK: "link", OPEN: "open",
    READ: "read", WRITE: "write", STATFS: "statfs", RELEASE: "release", FSYNC: "fsync",
    SETXATTR: "setxattr", GETXATTR: "getxattr", LISTXATTR: "listxattr",
    REMOVEXATTR: "removexattr", FLUSH: "flush", INIT: "init", OPENDIR: "opendir",
    READDIR: "readdir", RELEASEDIR: "releasedir", FSYNCDIR: "fsyncdir", ACCESS: "access",
    CREATE: "create", INTERRUPT: "interrupt", DESTROY: "destroy",
    BATCH_FORGET: "batch_forget", READDIRPLUS: "readdirplus", RENAME2: "rename2", LSEEK: "lseek", FALLOCATE: "fallocate",
    COPY_FILE_RANGE: "copy_file_range", TMPFILE: "tmpfile",
}
