"""The native binding (transport=native): the kernel's FUSE protocol on
/dev/fuse, spoken here, without libfuse.

One reader thread reads a request into one reusable buffer, decodes it with
the precompiled layouts of wire.py through a memoryview, calls the core or
the shared Frontend under the global lock, and writes the answer with one
writev(2). The INIT reply asks for the flags switched on in
options.INIT_SWITCHES (`fuse_off=`, `fuse_on=`) that the kernel offers:
1 MiB requests (MAX_PAGES), ATOMIC_O_TRUNC, PARALLEL_DIROPS,
HANDLE_KILLPRIV_V2 and READDIRPLUS with
READDIRPLUS_AUTO by default; WRITEBACK_CACHE only when
switched on (a handle opened before the mount filled keeps the cache, and
its writer learns of ENOSPC only at fsync or close: writeback.py).
What each flag moves onto the daemon:
* ATOMIC_O_TRUNC: OPEN carries O_TRUNC, and the daemon truncates;
* HANDLE_KILLPRIV_V2: the daemon clears suid/sgid/security.capability
  (namespace.kill_privileges) on WRITE with WRITE_KILL_SUIDGID, SETATTR
  with FATTR_KILL_SUIDGID and OPEN with OPEN_KILL_SUIDGID;
* WRITEBACK_CACHE: the kernel owns size, mtime and ctime of a file it
  caches, and sends them in SETATTR (FATTR_CTIME included), which the
  daemon takes as they are; WRITEs come later, on any open handle.

Rules of the loop (the kernel is trusted, but the daemon must outlive a bug):
* a handler's FsError is its errno; any other exception is logged, counted
  (internal_errors) and answered EIO by the Frontend's boundary;
* a request that is short or garbled is logged, counted (bad_requests) and
  answered EIO; an unknown opcode is answered ENOSYS;
* FORGET, BATCH_FORGET and INTERRUPT get no answer; a request is never
  abandoned, so an INTERRUPT changes nothing (its request is answered, and
  if the kernel gave up on it, that answer is dropped: ENOENT from write,
  and the lookup reference or open handle it carried is taken back);
* the loop ends when the kernel ends the connection (ENODEV: umount,
  fusermount -u, an abort), or on SIGTERM, SIGINT or SIGHUP.

Threading: `run()` is the only reader. It holds the global lock (a
threading.Lock, `NativeSession.lock`) while a handler runs, never while it
reads a request or writes an answer; handlers may release it inside the
core, as under llfuse. With spin= the fd is non-blocking, and between
requests the reader may spin (read without blocking, the GIL taken between
reads) before it blocks in poll(2): spin.py decides, and never spins while
the sealer is in a pass. The request buffer is the reader's alone: the WRITE
payload is passed to the core as a memoryview over it, and the core copies
what it keeps (tests/unit/test_native.py pins that).
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import os
import select
import signal
import threading
import time
from typing import Any, Callable, Optional

from ..errors import FsError
from ..namespace import Caller, Inode
from ..options import DEFAULT_FUSE_FLAGS, MountOptions
from . import bdi, mounting
from .mounting import MountError
from . import wire as w
from .frontend import CACHE_TIMEOUT, NOT_NEEDED, Frontend
from .directwrite import FH_DIRECT_WRITER, DirectWriters
from .spin import CpuCrowding, SpinPolicy
from .writeback import WritebackGuard

log = logging.getLogger(__name__)

#: Bit 63 of a file handle: opened for writing through the kernel's
#: writeback cache (writeback.py, rule 4). The rest of the handle is what
#: Filesystem.open gives, the inode number; the file's handlers take the
#: file from the request's nodeid.
FH_CACHED_WRITER = 1 << 63
#: An O_WRONLY open without the writeback cache (directwrite.py): bypass the
#: page cache, keep what it holds.
_DIRECT_WRITER_OPEN = w.FOPEN_DIRECT_IO | w.FOPEN_KEEP_CACHE

#: The largest WRITE (and READ) the kernel may send without MAX_PAGES: 32
#: pages, and the block size by default.
MAX_WRITE = 128 * 1024
#: With MAX_PAGES: 256 pages, the kernel's default limit
#: (/proc/sys/fs/fuse/max_pages_limit), 1 MiB per READ and WRITE.
MAX_PAGES = 256
MAX_WRITE_PAGES = MAX_PAGES * 4096
#: The longest COPY_FILE_RANGE answered at once: its reply's size is 32 bits.
MAX_COPY = (1 << 32) - (1 << 12)
#: The request buffer beyond max_write: the kernel refuses a read(2) shorter
#: than a WRITE header plus max_write; a page more, as libfuse has.
BUFFER_SLACK = 4096
#: Asked for whatever the switches say: requests past 4 KiB (without it the
#: kernel sends 4 KiB WRITEs; implied by MAX_PAGES on new kernels).
BASE_FLAGS = w.BIG_WRITES
# ATOMIC_O_TRUNC is asked for only with HANDLE_KILLPRIV_V2. Without it the
# kernel clears suid/sgid itself, but on open(O_TRUNC) under ATOMIC_O_TRUNC
# it skips the SETATTR that would carry the new mode (6.18 fuse_setattr
# returns early for ATTR_OPEN), and the daemon cannot tell a caller with
# CAP_FSETID: suid would survive a truncate by its owner, unlike on tmpfs
# (tests/mounted/test_native_flags.py, kernel_kills).
# READDIRPLUS, used as the kernel sees fit (READDIRPLUS_AUTO): for the
# first batch of a listing and after lookups in the directory (`ls -l`,
# `du`, `find -type`), each entry comes with its attributes and a lookup
# reference, which saves a LOOKUP per entry; a bare `ls -f` gets plain
# READDIR after the first batch, 5x denser (32 bytes an entry, not 160).
#: The most a READDIRPLUS answer holds (~190 records). The kernel asks for
#: as much as the caller's getdents buffer (128 KiB from glibc's readdir:
#: ~780 records), and READDIRPLUS_AUTO sends READDIRPLUS for the first
#: batch of every listing, also a bare `ls -f`, whose records cost ~4 us
#: each here against ~1 us for a plain READDIR one. Measured on a cold
#: 5,000-entry directory, os.listdir: 10.8 ms with whole batches against
#: 5.5 ms without READDIRPLUS; with this cap 7.4 ms against 7.8 (another
#: run), while `ls -l` of it took 0.66x the time of no READDIRPLUS. A short
#: answer ends the batch; the next getdents gets READDIRPLUS again only if
#: the caller looked entries up meanwhile. Measured again at stop 21,
#: interleaved, medians (benchmarks/listing.py, results/listing-s21b.md):
#: a cold `ls -f` of 5,000 entries 4.55 ms against 3.69 without READDIRPLUS
#: and 3.25 on llfuse, `ls -l` equal (267, 260, 268 ms); and a cold `du -s`
#: of the untarred stdlib 0.19 s against 0.44 without it, 0.43 on llfuse
#: (results/readdirplus-tree.md). Trees of small directories are the
#: common case: it stays on.
READDIRPLUS_MAX = 32 * 1024
#: OPENDIR's answer: the kernel keeps a listing it got in the directory's
#: page cache and serves the next listings from it, across opens, until
#: the directory changes. Every change comes through this kernel, and each
#: (create, link, unlink, rename, mkdir...) drops the cache (fs/fuse/dir.c,
#: fuse_dir_changed), as AUTO_INVAL_DATA's reasoning goes (options.py). A
#: warm os.listdir of 5,000 entries: 0.91 ms against 4.4 without it, 5
#: requests for 15 listings against 75.
OPENDIR_FLAGS = w.FOPEN_CACHE_DIR | w.FOPEN_KEEP_CACHE
#: OPENDIR's answer when a listing now would update the directory's atime
#: (relatime: its ctime changed since, which a chmod does without dropping
#: the cache, or it is a day old): the cache is dropped at this open, so
#: the listing reaches the daemon, and later ones are cached again.
OPENDIR_ATIME_DUE = w.FOPEN_CACHE_DIR
#: Plain READDIR records packed at once for an unchanged listing
#: (Server._packed_listing). One list comprehension packs an entry in
#: 0.28 us, against 0.50 us through readdir()'s generator with its
#: per-entry recheck (5,000 entries, warm). The bound keeps what a listing
#: of a huge directory holds at once to ~200 KB; an answer stops at the
#: end of a packed range, and the kernel asks again from there.
LISTING_CHUNK = 2048
#: How long a request that found no room (ENOSPC: size= or nr_inodes=)
#: waits for a RELEASE or FORGET the kernel still owes, when one would free
#: some (Filesystem.pending_release). tmpfs frees an unlinked file at its
#: last close(2); the kernel sends our RELEASE asynchronously, later still
#: when the file had reads in flight (ASYNC_READ: the last READ's answer
#: drops the last reference), and FORGET after that, so `cat f; rm f;
#: write` can bring the WRITE first. Seen under load as ENOSPC right after
#: freeing 2 MiB (tests/mounted/test_semantics.py,
#: test_enospc_at_size_keeps_existing_files), and at nr_inodes. A real
#: ENOSPC with such files about is answered this much later.
SPACE_WAIT_NS = 100_000_000
#: How long a STATFS waits for the FORGET of unlinked inodes that still hold
#: data: tmpfs has freed them at the last close (or unlink), and `df` right
#: after a close must say so. The kernel queues that FORGET after our
#: RELEASE's answer; under load it came ~10 ms later. Shorter than
#: SPACE_WAIT_NS: an inode the kernel keeps (a cached dentry) delays every
#: STATFS by this much.
STATFS_WAIT_NS = 30_000_000
#: The requests that may wait so: those that take space or an inode.
_SPACE_OPS = frozenset({w.WRITE, w.FALLOCATE, w.COPY_FILE_RANGE, w.CREATE, w.MKNOD, w.MKDIR,
                        w.SYMLINK, w.LINK, w.TMPFILE, w.SETXATTR})
#: Signals that end the loop and unmount, as under llfuse.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_HDR = w.IN_HEADER.size
_OUT = w.OUT_HEADER.size
_NS = 1_000_000_000
_UNIQUE = w.INTERRUPT_IN   # a u64: fuse_in_header.unique sits at offset 8
#: Answers that give the kernel a lookup reference (a fuse_entry_out first).
_ENTRY_OPS = frozenset({w.LOOKUP, w.MKNOD, w.MKDIR, w.SYMLINK, w.LINK, w.CREATE, w.TMPFILE})
#: Served whoever asks, under allow_root (libfuse's list, and those that get no answer).
_ANY_UID_OPS = frozenset({w.INIT, w.READ, w.WRITE, w.FSYNC, w.RELEASE, w.READDIR, w.FSYNCDIR,
                          w.RELEASEDIR, w.READDIRPLUS, w.FORGET, w.BATCH_FORGET, w.INTERRUPT,
                          w.DESTROY})
#: A READDIRPLUS record's entry that gives no reference (nodeid 0).
_NO_ENTRY = bytes(w.ENTRY_OUT.size)

#: What a handler returns: the answer's payload (bytes-like, or a list of
#: immutable bytes-like pieces sent in order: READ), None for no answer at
#: all, or an int: an errno to answer, for a hot path that cannot afford
#: raising FsError (a raise and its catch cost ~1 us here).
Reply = Optional[Any]


def _direntplus_nodeids(payload: Any) -> list[int]:
    """The nodeids (each a lookup reference) of a READDIRPLUS answer's records."""
    out, pos, end = [], 0, len(payload)
    base = w.DIRENTPLUS_NAME_OFFSET
    while pos + base <= end:
        nodeid = w.ENTRY_OUT.unpack_from(payload, pos)[0]
        namelen = w.DIRENT.unpack_from(payload, pos + w.ENTRY_OUT.size)[2]
        if nodeid:
            out.append(nodeid)
        pos += (base + namelen + 7) & ~7
    return out


class BadRequest(Exception):
    """A request that does not parse (short, or a name without its NUL)."""


class _AwaitSpace(Exception):
    """A WRITE was short for want of space, or a STATFS would count space
    tmpfs has freed, while a RELEASE or FORGET the kernel still owes may
    free some (Server._defer)."""


class _Stop(BaseException):
    """Raised by the signal handler to leave a blocking read."""


class Server:
    """Decodes requests, calls the core, encodes answers. One per connection."""

    def __init__(self, fd: int, frontend: Frontend, lock: Any,
                 switches: frozenset[str] = DEFAULT_FUSE_FLAGS, spin_us: int = 0,
                 wronly_direct: bool = False) -> None:
        self.fd = fd
        self.frontend = frontend
        self.fs = frontend.fs
        self.lock = lock
        #: INIT flags to ask for: BASE_FLAGS and the switches turned on.
        self.wanted = BASE_FLAGS
        for name in switches:
            self.wanted |= w.switch_bit(name)
        if not self.wanted & w.HANDLE_KILLPRIV_V2:
            self.wanted &= ~w.ATOMIC_O_TRUNC
        #: With the writeback cache: the reserve, FOPEN_DIRECT_IO near full,
        #: failed writebacks (writeback.py); None without.
        self.guard: Optional[WritebackGuard] = None
        if self.wanted & w.WRITEBACK_CACHE:
            # Opens near full are FOPEN_DIRECT_IO; this keeps mmap(MAP_SHARED)
            # of them working (7.39+; the bit is in flags2, so INIT_EXT).
            self.wanted |= w.DIRECT_IO_ALLOW_MMAP | w.INIT_EXT
            fs = self.fs
            self.guard = WritebackGuard(fd, lambda: fs.statfs()["f_bavail"] * 4096,
                                        fs.engine.size_limit)
        #: Without the writeback cache (wronly=direct): O_WRONLY opens are
        #: FOPEN_DIRECT_IO, and their file is stored into the page cache at
        #: its last close (directwrite.py); None otherwise.
        self.direct: Optional[DirectWriters] = None
        if wronly_direct and self.guard is None:
            self.direct = DirectWriters(fd, self.fs)
            # With it every kernel writes back and drops its cached pages of
            # a range before a direct write to it (fuse_direct_io). Some
            # kernels do that only with it (upstream 1ce120dcefc0 made it
            # unconditional); 6.18 does it either way (the coherence test in
            # test_native_flags.py passes without the flag). It also allows
            # MAP_SHARED of direct handles: O_WRONLY ones cannot be mapped.
            self.wanted |= w.DIRECT_IO_ALLOW_MMAP | w.INIT_EXT
        # Every "now" reaches the daemon as a flag (FATTR_*_NOW) unless the
        # kernel keeps times itself (writeback cache): stamps may be fine.
        self.fs.clock.fine = not self.wanted & w.WRITEBACK_CACHE
        #: max_write offered at INIT; the buffer must hold a WRITE that big.
        self.max_write = MAX_WRITE_PAGES if self.wanted & w.MAX_PAGES else MAX_WRITE
        self.buf = bytearray(self.max_write + BUFFER_SLACK)
        self.mv = memoryview(self.buf)
        self.counts = [0] * (w.OPCODE_LIMIT + 1)   # requests by opcode; the last: unknown ones
        self.bad_requests = 0       # short or garbled requests, answered EIO
        self.dropped_replies = 0    # answers to requests the kernel had given up (ENOENT)
        self.reply_errors = 0       # answers the kernel refused (a bug: EIO sent instead)
        #: Requests waiting for room a RELEASE or FORGET may free (_defer): (deadline
        #: in monotonic ns, request header, a copy of the request). The loop
        #: keeps an alias: never rebound.
        self.deferred: list[tuple[int, tuple[int, ...], bytes]] = []
        self.space_waits = 0        # requests that waited for a RELEASE or FORGET (_defer)
        self.space_waits_won = 0    # of them, those that then found the space
        self._deferral_poller: Optional[Any] = None
        #: False while a deferred request is served past its deadline: it
        #: gets its answer then (ENOSPC, or a short write), no more waiting.
        self._may_wait_for_space = True
        #: INIT: (kernel major, minor), what it offered, what we took.
        self.kernel_version = (0, 0)
        self.minor = 0
        self.offered = 0
        self.flags = 0
        self.max_readahead = 0
        self.max_pages = 0
        #: The mount's "major:minor" (its bdi), set by NativeSession; None in
        #: tests over a socket.
        self.device: Optional[str] = None
        self.read_ahead_kb = 0      # what the bdi's read-ahead was raised to; 0: left alone
        #: How the mount was made (mounting.BY_MOUNT or BY_FUSERMOUNT), and
        #: whether a fusermount helper unmounts it if the daemon dies; set
        #: by NativeSession.
        self.mounted_by = ""
        self.auto_unmount = False
        #: allow_root: the uids let in (the mounter and root); None: all the kernel lets in.
        self.allowed_uids: Optional[frozenset[int]] = None
        self.stopping = False
        self._waiting = False       # blocked in read(2), where a stop signal may interrupt
        self._hdr: tuple[int, ...] = ()
        #: Adaptive polling (spin=, spin.py): None when off. With it the fd
        #: is non-blocking and a blocking wait is poll(2), then a read.
        self.spin: Optional[SpinPolicy] = None
        if spin_us:
            self.spin = SpinPolicy(spin_us, busy=lambda: frontend.background_busy(),
                                   crowded=CpuCrowding())
            os.set_blocking(fd, False)
            self._poller = select.poll()
            self._poller.register(fd, select.POLLIN)
        self._negative_entry = w.ENTRY_OUT.pack(0, 0, CACHE_TIMEOUT, 0, 0, 0, *([0] * 16))
        #: Directory handle -> (its snapshot, offset of the first record,
        #: packed READDIR records, their cumulative ends): _packed_listing.
        self._listings: dict[int, tuple[list, int, list[bytes], list[int]]] = {}
        self.handlers: list[Optional[Callable[[int, int], Reply]]] = [None] * w.OPCODE_LIMIT
        self.min_size = [_HDR] * w.OPCODE_LIMIT
        for op, h in {
            w.LOOKUP: self.lookup, w.FORGET: self.forget, w.GETATTR: self.getattr,
            w.SETATTR: self.setattr, w.READLINK: self.readlink, w.SYMLINK: self.symlink,
            w.MKNOD: self.mknod, w.MKDIR: self.mkdir, w.UNLINK: self.unlink,
            w.RMDIR: self.rmdir, w.RENAME: self.rename, w.LINK: self.link, w.OPEN: self.open,
            w.READ: self.read, w.WRITE: self.write, w.STATFS: self.statfs,
            w.RELEASE: self.release, w.FSYNC: self.not_needed, w.SETXATTR: self.setxattr,
            w.GETXATTR: self.getxattr, w.LISTXATTR: self.listxattr,
            w.REMOVEXATTR: self.removexattr, w.FLUSH: self.not_needed, w.INIT: self.init,
            w.OPENDIR: self.opendir, w.READDIR: self.readdir, w.RELEASEDIR: self.releasedir,
            w.READDIRPLUS: self.readdirplus,
            w.FSYNCDIR: self.not_needed, w.ACCESS: self.access, w.CREATE: self.create,
            w.INTERRUPT: self.interrupt, w.DESTROY: self.empty,
            w.BATCH_FORGET: self.batch_forget, w.RENAME2: self.rename2, w.LSEEK: self.lseek,
            w.FALLOCATE: self.fallocate, w.COPY_FILE_RANGE: self.copy_file_range,
            w.TMPFILE: self.tmpfile,
        }.items():
            self.handlers[op] = h
            self.min_size[op] = _HDR + w.BODY_SIZE[op]

    def allow_only(self, uids: set[int]) -> None:
        """allow_root: answer EACCES to requests of any other uid, as libfuse
        does (fuse_lowlevel.c), except those on what a permitted user already
        opened (READ, WRITE, FSYNC, RELEASE, READDIR...: a descriptor may be
        passed on) and those that get no answer. Costs nothing without it:
        the handlers of the other opcodes are wrapped here."""
        self.allowed_uids = frozenset(uids)
        for op in range(w.OPCODE_LIMIT):
            handler = self.handlers[op]
            if handler is not None and op not in _ANY_UID_OPS:
                self.handlers[op] = self._uid_checked(handler)

    def _uid_checked(self, handler: Callable[[int, int], Reply]) -> Callable[[int, int], Reply]:
        allowed = self.allowed_uids

        def checked(nodeid: int, n: int) -> Reply:
            if self._hdr[4] not in allowed:     # fuse_in_header.uid
                return errno.EACCES
            return handler(nodeid, n)
        return checked

    # ---- the loop --------------------------------------------------------------
    def run(self) -> None:
        """Serve until the connection ends (ENODEV) or `stopping` is set."""
        fd, bufs, buf = self.fd, [self.buf], self.buf
        readv, writev = os.readv, os.writev
        unpack_hdr, pack_out = w.IN_HEADER.unpack_from, w.OUT_HEADER.pack
        handlers, min_size, counts = self.handlers, self.min_size, self.counts
        lock, frontend = self.lock, self.frontend
        limit = w.OPCODE_LIMIT
        spin, clock = self.spin, time.monotonic_ns
        deferred, release_op = self.deferred, w.RELEASE
        started = clock()               # spin: when the request being served was read
        try:
            while not self.stopping:
                try:
                    if deferred:
                        n = self._read_deferring()
                        if n < 0:
                            continue    # a deadline passed, or stopping
                    elif spin is None:
                        self._waiting = True
                        try:
                            n = readv(fd, bufs)
                        finally:
                            self._waiting = False
                    else:
                        # The last request, answered or not, earns its credit.
                        # The fd is non-blocking: a request already queued is
                        # read at once, else spin and then block (_wait).
                        now = clock()
                        spin.served(now - started)
                        started = now
                        try:
                            n = readv(fd, bufs)
                            spin.queued()
                        except BlockingIOError:
                            n = self._wait(spin, now)
                            if n < 0:
                                continue    # stopping
                            started = clock()
                except OSError as e:
                    if e.errno == errno.ENODEV:
                        return          # unmounted, or the connection was aborted
                    if e.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                        started = clock()   # the wait earns no credit
                        continue        # ENOENT: the request was interrupted before we read it
                    raise
                if n < _HDR:
                    if n == 0:
                        return          # end of file: not /dev/fuse's way, a socket's (tests)
                    # Its unique, if it got that far, is answered EIO.
                    self._bad(_UNIQUE.unpack_from(buf, 8)[0] if n >= 16 else None,
                              f"{n}-byte request")
                    continue
                hdr = unpack_hdr(buf)
                length, opcode, unique, nodeid = hdr[0], hdr[1], hdr[2], hdr[3]
                handler = handlers[opcode] if opcode < limit else None
                if handler is None:
                    counts[limit] += 1
                    log.debug("opcode %d not supported: ENOSYS", opcode)
                    self._send(pack_out(_OUT, -errno.ENOSYS, unique))
                    continue
                counts[opcode] += 1
                if length != n or n < min_size[opcode]:
                    self._bad(unique, f"opcode {opcode}: {n} bytes read, {length} announced")
                    continue
                self._hdr = hdr
                lock.acquire()
                try:
                    payload = handler(nodeid, n)
                except BadRequest as e:
                    lock.release()
                    self._bad(unique, f"opcode {opcode}: {e}")
                    continue
                except _AwaitSpace:
                    lock.release()
                    self._defer(n)
                    continue
                except Exception as e:
                    if opcode in _SPACE_OPS and self._waits_for_space(e):
                        lock.release()
                        self._defer(n)
                        continue
                    err = frontend.errno_for(e, w.OPCODE_NAMES[opcode], (nodeid,))
                    lock.release()
                    self._send(pack_out(_OUT, -err, unique))
                    continue
                lock.release()
                if payload is None:     # FORGET, BATCH_FORGET, INTERRUPT
                    if deferred:
                        self._retry_deferred(clock())   # a FORGET may have freed room
                    continue
                if type(payload) is int:
                    # An errno answered without raising: see getxattr().
                    self._send(pack_out(_OUT, -payload, unique))
                    continue
                try:
                    if type(payload) is list:
                        # READ's pieces (DataEngine.read_pieces): not joined,
                        # a copy of up to 1 MiB saved (issue 18: with 1 MiB
                        # READs the join cost +44% daemon CPU per GiB read).
                        writev(fd, [pack_out(_OUT + sum(map(len, payload)), 0, unique), *payload])
                    else:
                        writev(fd, [pack_out(_OUT + len(payload), 0, unique), payload])
                except OSError as e:
                    self._reply_failed(e, unique, opcode, payload)
                if deferred and opcode == release_op:
                    self._retry_deferred(clock())
        except _Stop:
            return

    # ---- requests waiting for space (SPACE_WAIT_NS) -------------------------------
    def _waits_for_space(self, e: Exception) -> bool:
        """e is ENOSPC that a RELEASE or FORGET the kernel still owes may lift."""
        return (isinstance(e, FsError) and e.errno == errno.ENOSPC
                and self._may_wait_for_space and self.fs.pending_release())

    def _defer(self, n: int) -> None:
        """Keep the request in the buffer (n bytes) for _retry_deferred."""
        self.space_waits += 1
        if not self.deferred and self.spin is None:
            os.set_blocking(self.fd, False)    # _read_deferring must not block past a deadline
        wait = STATFS_WAIT_NS if self._hdr[1] == w.STATFS else SPACE_WAIT_NS
        self.deferred.append((time.monotonic_ns() + wait, self._hdr, bytes(self.buf[:n])))

    def _read_deferring(self) -> int:
        """Read the next request, waiting no later than the first deadline of
        the deferred requests; at the deadline, retry them. The request's
        length, or -1 when none was read."""
        if self._deferral_poller is None:
            self._deferral_poller = select.poll()
            self._deferral_poller.register(self.fd, select.POLLIN)
        wait_ms = -(-(min(d[0] for d in self.deferred) - time.monotonic_ns()) // 1_000_000)
        self._waiting = True
        try:
            ready = self._deferral_poller.poll(wait_ms) if wait_ms > 0 else []
        finally:
            self._waiting = False
        if ready:
            try:
                return os.readv(self.fd, [self.buf])
            except BlockingIOError:
                return -1               # interrupted before we read it
        self._retry_deferred(time.monotonic_ns())
        return -1

    def _retry_deferred(self, now: int) -> None:
        """Serve the deferred requests again (a RELEASE was served, or a
        deadline passed): each is answered, or waits on until its deadline,
        and is then answered ENOSPC."""
        pending = list(self.deferred)
        del self.deferred[:]
        for deadline, hdr, request in pending:
            n = len(request)
            self.buf[:n] = request
            self._hdr = hdr
            opcode, unique, nodeid = hdr[1], hdr[2], hdr[3]
            self._may_wait_for_space = now < deadline
            with self.lock:
                try:
                    payload = self.handlers[opcode](nodeid, n)  # type: ignore[misc]
                except _AwaitSpace:
                    self.deferred.append((deadline, hdr, request))
                    continue
                except Exception as e:
                    if self._waits_for_space(e):
                        self.deferred.append((deadline, hdr, request))
                        continue
                    payload = self.frontend.errno_for(e, w.OPCODE_NAMES[opcode], (nodeid,))
                finally:
                    self._may_wait_for_space = True
            if type(payload) is int:
                self._send(w.OUT_HEADER.pack(_OUT, -payload, unique))
                continue
            self.space_waits_won += 1
            try:
                os.writev(self.fd, [w.OUT_HEADER.pack(_OUT + len(payload), 0, unique), payload])
            except OSError as e:
                self._reply_failed(e, unique, opcode, payload)
        if not self.deferred and self.spin is None:
            os.set_blocking(self.fd, True)

    def _wait(self, spin: SpinPolicy, now: int) -> int:
        """No request was queued at now: spin (read without blocking) while
        the policy allows, then block in poll(2). The request's length, or -1
        when a stop signal came. OSError from a read propagates (ENODEV...)."""
        fd, bufs, readv, clock = self.fd, [self.buf], os.readv, time.monotonic_ns
        deadline = spin.begin(now)
        if deadline:
            while not self.stopping:
                try:
                    n = readv(fd, bufs)
                except BlockingIOError:
                    now = clock()
                    if now >= deadline:
                        spin.missed(now)
                        break
                    continue
                spin.caught(clock())
                return n
            else:
                return -1
        self._waiting = True
        try:
            while not self.stopping:    # a stop signal may have come before _waiting was set
                self._poller.poll()     # a stop signal raises _Stop here
                try:
                    n = readv(fd, bufs)
                except BlockingIOError:
                    continue            # the request went (interrupted) before we read it
                spin.woke(clock())
                return n
            return -1
        finally:
            self._waiting = False

    def _send(self, answer: bytes) -> None:
        try:
            os.write(self.fd, answer)
        except OSError as e:
            if e.errno == errno.ENOENT:
                self.dropped_replies += 1
            elif e.errno != errno.ENODEV:
                log.error("error answer refused by the kernel: %s", e.strerror)

    def _reply_failed(self, e: OSError, unique: int, opcode: int, payload: Any) -> None:
        if e.errno == errno.ENOENT:
            # The kernel gave the request up (interrupted): it never saw
            # this answer, so it holds none of the references it carried.
            self.dropped_replies += 1
            self._take_back(opcode, payload)
        elif e.errno != errno.ENODEV:
            # The kernel refused the answer (EINVAL: malformed): a bug here.
            # Answer EIO, or the caller would wait for ever.
            self.reply_errors += 1
            self.frontend.count_internal_error()
            log.error("answer to %s refused by the kernel: %s", w.OPCODE_NAMES.get(opcode, opcode),
                      e.strerror)
            self._send(w.OUT_HEADER.pack(_OUT, -errno.EIO, unique))

    def _take_back(self, opcode: int, payload: Any) -> None:
        """Undo what an answer the kernel never received would have given it,
        as libfuse does for an interrupted open: the lookup reference of an
        entry, the handle of an open file or directory. Takes the lock."""
        with self.lock:
            try:
                if opcode in _ENTRY_OPS:
                    nodeid = w.ENTRY_OUT.unpack_from(payload)[0]
                    if opcode == w.CREATE or opcode == w.TMPFILE:
                        self._release(w.OPEN_OUT.unpack_from(payload, w.ENTRY_OUT.size)[0])
                    if nodeid:
                        self.fs.forget(nodeid, 1)
                elif opcode == w.OPEN:
                    self._release(w.OPEN_OUT.unpack_from(payload)[0])
                elif opcode == w.OPENDIR:
                    self.fs.releasedir(w.OPEN_OUT.unpack_from(payload)[0])
                elif opcode == w.READDIRPLUS:
                    for nodeid in _direntplus_nodeids(payload):
                        self.fs.forget(nodeid, 1)
            except Exception as e:
                self.frontend.errno_for(e, "taking back an unanswered " + w.OPCODE_NAMES[opcode])

    def _bad(self, unique: Optional[int], why: str) -> None:
        self.bad_requests += 1
        log.warning("garbled request (%s): answered EIO", why)
        if unique is not None:
            self._send(w.OUT_HEADER.pack(_OUT, -errno.EIO, unique))

    def on_stop_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM, SIGINT, SIGHUP: end the loop; a blocking read is left at once."""
        self.stopping = True
        if self._waiting:
            raise _Stop

    # ---- decoding helpers --------------------------------------------------------
    def _name(self, off: int, n: int) -> tuple[bytes, int]:
        """The NUL-terminated name at off, and the offset after its NUL."""
        try:
            end = self.buf.index(0, off, n)
        except ValueError:
            raise BadRequest(f"no NUL after the name at {off}") from None
        return bytes(self.mv[off:end]), end + 1

    def _caller(self) -> Caller:
        h = self._hdr
        return Caller(uid=h[4], gid=h[5], pid=h[6])

    def _attr(self, node: Inode) -> tuple[int, ...]:
        ino, size, blocks, atime, mtime, ctime, mode, nlink, uid, gid, rdev, blksize = \
            self.frontend.attributes(node)
        a_s, a_ns = divmod(atime, _NS)
        m_s, m_ns = divmod(mtime, _NS)
        c_s, c_ns = divmod(ctime, _NS)
        return (ino, size, blocks, a_s, m_s, c_s, a_ns, m_ns, c_ns, mode, nlink, uid, gid,
                rdev, blksize, 0)

    def _entry(self, node: Inode) -> bytes:
        return w.ENTRY_OUT.pack(node.ino, 0, CACHE_TIMEOUT, CACHE_TIMEOUT, 0, 0, *self._attr(node))

    def _attr_out(self, node: Inode) -> bytes:
        return w.ATTR_OUT.pack(CACHE_TIMEOUT, 0, 0, *self._attr(node))

    # ---- INIT ----------------------------------------------------------------
    def init(self, nodeid: int, n: int) -> Reply:
        major, minor, max_readahead, flags = w.INIT_IN.unpack_from(self.buf, _HDR)
        if minor >= 36 and flags & w.INIT_EXT and n >= _HDR + w.INIT_IN.size + 4:
            flags |= w.INIT_IN_FLAGS2.unpack_from(self.buf, _HDR + w.INIT_IN.size)[0] << 32
        self.kernel_version = (major, minor)
        if major > w.PROTOCOL_MAJOR:
            # A newer major: answer ours alone; the kernel then sends an INIT we speak.
            return w.INIT_OUT.pack(w.PROTOCOL_MAJOR, w.PROTOCOL_MINOR, *([0] * 9))[:8]
        if major < w.PROTOCOL_MAJOR or minor < w.MIN_KERNEL_MINOR:
            log.error("kernel FUSE protocol %d.%d is older than 7.%d", major, minor,
                      w.MIN_KERNEL_MINOR)
            raise FsError(errno.EPROTO)
        self.minor = min(minor, w.PROTOCOL_MINOR)
        self.offered = flags
        self.flags = self.wanted & flags
        if not self.flags & w.HANDLE_KILLPRIV_V2:
            self.flags &= ~w.ATOMIC_O_TRUNC
        if not self.flags & w.WRITEBACK_CACHE and self.guard is not None:
            self.guard.stop()
            self.guard = None
        if self.flags & w.MAX_PAGES:
            self.max_pages = MAX_PAGES
        else:
            # An older kernel: 128 KiB requests (the buffer stays as it is).
            self.max_pages, self.max_write = 0, min(self.max_write, MAX_WRITE)
        self.max_readahead = max_readahead
        missing = self.wanted & ~flags
        if missing:
            log.warning("the kernel does not offer %s: working without", ",".join(w.flag_names(missing)))
        out = w.INIT_OUT.pack(w.PROTOCOL_MAJOR, self.minor, max_readahead, self.flags & 0xFFFFFFFF,
                              0, 0, self.max_write, 1, self.max_pages, 0, self.flags >> 32)
        log.info("FUSE %d.%d (kernel %d.%d), flags %s, max_write %d", w.PROTOCOL_MAJOR,
                 self.minor, major, minor, ",".join(w.flag_names(self.flags)), self.max_write)
        if self.minor < w.INIT_OUT_COMPAT_MINOR:
            out = out[:w.INIT_OUT_COMPAT_SIZE]
        if not (self.max_pages and self.device):
            return out
        # INIT answers itself here: the read-ahead can only be raised once
        # the kernel has taken the answer (it clamps the bdi's read-ahead to
        # 128 KiB then). 1 MiB, one READ, instead of 128 KiB: a cold 512 MiB
        # sequential read cost the daemon 16-17 CPU ticks instead of 23-28
        # and ran at 600-940 MB/s instead of 510-580 (dd, loaded machine).
        os.writev(self.fd, [w.OUT_HEADER.pack(_OUT + len(out), 0, self._hdr[2]), out])
        self.read_ahead_kb = bdi.set_read_ahead(self.device, self.max_pages * 4)
        return None

    def info(self) -> dict[str, Any]:
        """What stats says about this binding."""
        counts = self.counts
        return {
            "name": "native",
            # mount(2) (root) or fusermount (a user, or auto_unmount).
            "mounted_by": self.mounted_by,
            "auto_unmount": self.auto_unmount,
            "allow_root": self.allowed_uids is not None,
            "protocol": f"{w.PROTOCOL_MAJOR}.{self.minor}",
            "kernel_protocol": "%d.%d" % self.kernel_version,
            # INIT: what the kernel offered, what we asked (options.INIT_SWITCHES
            # less fuse_off=, plus fuse_on=), and the flags in force: both.
            "kernel_flags": w.flag_names(self.offered),
            "asked_flags": w.flag_names(self.wanted),
            "flags": w.flag_names(self.flags),
            "max_write": self.max_write,
            "max_pages": self.max_pages,
            "max_readahead": self.max_readahead,
            "read_ahead_kb": self.read_ahead_kb,
            "writeback": self.guard.info() if self.guard is not None else None,
            # wronly=direct (directwrite.py): None when off, or under the writeback cache.
            "direct_writers": self.direct.info() if self.direct is not None else None,
            "threads": 1,
            "spin": self.spin.info() if self.spin is not None else {"window_us": 0},
            "bad_requests": self.bad_requests,
            "unknown_requests": counts[w.OPCODE_LIMIT],
            "dropped_replies": self.dropped_replies,
            "reply_errors": self.reply_errors,
            # Requests that found no room while a RELEASE or FORGET the
            # kernel still owed would free some, and waited for it
            # (SPACE_WAIT_NS); of them, those that then found it.
            "space_waits": self.space_waits,
            "space_waits_won": self.space_waits_won,
        }

    def request_counts(self) -> dict[str, int]:
        return {w.OPCODE_NAMES[op]: c for op, c in enumerate(self.counts[:w.OPCODE_LIMIT]) if c}

    # ---- namespace -----------------------------------------------------------
    def lookup(self, nodeid: int, n: int) -> Reply:
        name, _ = self._name(_HDR, n)
        node = self.fs.find(nodeid, name)
        if node is None:
            # A negative entry: the kernel caches the miss for entry_valid.
            return self._negative_entry
        return self._entry(node)

    def forget(self, nodeid: int, n: int) -> Reply:
        self._forget_one(nodeid, w.FORGET_IN.unpack_from(self.buf, _HDR)[0])
        return None

    def batch_forget(self, nodeid: int, n: int) -> Reply:
        count = w.BATCH_FORGET_IN.unpack_from(self.buf, _HDR)[0]
        base = _HDR + w.BATCH_FORGET_IN.size
        count = min(count, (n - base) // w.FORGET_ONE.size)
        unpack = w.FORGET_ONE.unpack_from
        for k in range(count):
            self._forget_one(*unpack(self.buf, base + k * w.FORGET_ONE.size))
        return None

    def _forget_one(self, ino: int, nlookup: int) -> None:
        # No answer to send: an error is logged and counted here, and the
        # rest of a batch is still forgotten.
        try:
            self.fs.forget(ino, nlookup)
        except Exception as e:
            self.frontend.errno_for(e, "forget", (ino, nlookup))

    def getattr(self, nodeid: int, n: int) -> Reply:
        guard = self.guard
        if guard is not None and guard.tight and n >= _HDR + w.GETATTR_IN.size:
            # Writeback rule 4 (writeback.py): a cached writer's write(2)
            # asks this first once its attributes are invalid.
            flags, _dummy, fh = w.GETATTR_IN.unpack_from(self.buf, _HDR)
            if flags & w.GETATTR_FH and fh & FH_CACHED_WRITER:
                if guard.refuse_cached_write():
                    return errno.ENOSPC
            elif nodeid in guard.cached_writers:
                # Valid for no time, so that the writer asks again.
                return w.ATTR_OUT.pack(0, 0, 0, *self._attr(self.fs.getattr(nodeid)))
        return self._attr_out(self.fs.getattr(nodeid))

    def setattr(self, nodeid: int, n: int) -> Reply:
        (valid, _pad, _fh, size, _owner, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
         mode, _u4, uid, gid, _u5) = w.SETATTR_IN.unpack_from(self.buf, _HDR)
        # FATTR_*_NOW: the kernel's "now" (touch, utimensat(UTIME_NOW)) is
        # the core's clock's stamp for this change, which never goes back
        # (clock.py); one for both times, as the kernel takes one.
        now: Optional[int] = None
        if valid & (w.FATTR_ATIME_NOW | w.FATTR_MTIME_NOW):
            node = self.fs.get(nodeid)
            now = self.fs.stamp_ns(node.ino, node.ctime_ns)
        if valid & w.FATTR_ATIME_NOW:
            atime_ns: Optional[int] = now
        else:
            atime_ns = atime * _NS + atimensec if valid & w.FATTR_ATIME else None
        if valid & w.FATTR_MTIME_NOW:
            mtime_ns: Optional[int] = now
        else:
            mtime_ns = mtime * _NS + mtimensec if valid & w.FATTR_MTIME else None
        node = self.fs.setattr(
            nodeid,
            size=size if valid & w.FATTR_SIZE else None,
            mode=mode if valid & w.FATTR_MODE else None,
            uid=uid if valid & w.FATTR_UID else None,
            gid=gid if valid & w.FATTR_GID else None,
            atime_ns=atime_ns, mtime_ns=mtime_ns,
            # WRITEBACK_CACHE: the kernel's own ctime of a file it caches.
            ctime_ns=ctime * _NS + ctimensec if valid & w.FATTR_CTIME else None,
            # HANDLE_KILLPRIV_V2: truncate without CAP_FSETID, or chown.
            kill_privileges=bool(valid & w.FATTR_KILL_SUIDGID))
        self._uncache_if_atime_due(node)
        return self._attr_out(node)

    def readlink(self, nodeid: int, n: int) -> Reply:
        return self.fs.readlink(nodeid)

    def _uncache_if_atime_due(self, node: Inode) -> None:
        """CACHE_SYMLINKS and FOPEN_CACHE_DIR: the kernel reads a symlink's
        target and a directory's listing from its page cache, without
        READLINK or READDIR. Once a read would update the atime (relatime:
        after a chmod, chown, utime, link, unlink or rename changed the
        ctime), drop the kernel's copy so that the next read comes here, as
        on tmpfs. OPENDIR does it for new opens of a directory (its answer
        without KEEP_CACHE); this covers one held open across the change.
        The pages of either are never dirty, so the kernel writes nothing
        back before it returns: the reader may send this itself."""
        if node.target is not None:
            if not self.flags & w.CACHE_SYMLINKS:
                return
        elif not node.is_dir:
            return
        if node.nlink == 0 or not self.fs.atime_due(node):
            return
        err = w.notify_inval_inode(self.fd, node.ino, 0)
        if err:
            log.warning("NOTIFY_INVAL_INODE of %d refused: %s", node.ino, os.strerror(err))

    def symlink(self, nodeid: int, n: int) -> Reply:
        name, off = self._name(_HDR, n)
        target, _ = self._name(off, n)
        return self._entry(self.fs.symlink(nodeid, name, target, self._caller()))

    def mknod(self, nodeid: int, n: int) -> Reply:
        # Without DONT_MASK the kernel has applied the umask to mode already.
        mode, rdev, _umask, _pad = w.MKNOD_IN.unpack_from(self.buf, _HDR)
        name, _ = self._name(_HDR + w.MKNOD_IN.size, n)
        return self._entry(self.fs.mknod(nodeid, name, mode, rdev, self._caller()))

    def mkdir(self, nodeid: int, n: int) -> Reply:
        mode, _umask = w.MKDIR_IN.unpack_from(self.buf, _HDR)
        name, _ = self._name(_HDR + w.MKDIR_IN.size, n)
        return self._entry(self.fs.mkdir(nodeid, name, mode, self._caller()))

    def unlink(self, nodeid: int, n: int) -> Reply:
        node = self.fs.unlink(nodeid, self._name(_HDR, n)[0])
        if node.target is not None and node.nlink:
            # Another link of a symlink: its ctime changed (relatime).
            self._uncache_if_atime_due(node)
        return b""

    def rmdir(self, nodeid: int, n: int) -> Reply:
        self.fs.rmdir(nodeid, self._name(_HDR, n)[0])
        return b""

    def rename(self, nodeid: int, n: int) -> Reply:
        newdir = w.RENAME_IN.unpack_from(self.buf, _HDR)[0]
        return self._rename(nodeid, newdir, _HDR + w.RENAME_IN.size, n)

    def rename2(self, nodeid: int, n: int) -> Reply:
        # renameat2(2): RENAME_NOREPLACE, RENAME_EXCHANGE and RENAME_WHITEOUT,
        # as tmpfs (the core checks them; the whiteout is the caller's).
        newdir, flags, _pad = w.RENAME2_IN.unpack_from(self.buf, _HDR)
        return self._rename(nodeid, newdir, _HDR + w.RENAME2_IN.size, n, flags)

    def _rename(self, nodeid: int, newdir: int, off: int, n: int, flags: int = 0) -> Reply:
        old, off = self._name(off, n)
        new, _ = self._name(off, n)
        for node in self.fs.rename(nodeid, old, newdir, new, flags,
                                   self._caller() if flags else None):
            self._uncache_if_atime_due(node)
        return b""

    def link(self, nodeid: int, n: int) -> Reply:
        old = w.LINK_IN.unpack_from(self.buf, _HDR)[0]
        name, _ = self._name(_HDR + w.LINK_IN.size, n)
        node = self.fs.link(old, nodeid, name)
        self._uncache_if_atime_due(node)
        return self._entry(node)

    # ---- file I/O ----------------------------------------------------------------
    def open(self, nodeid: int, n: int) -> Reply:
        flags, open_flags = w.OPEN_IN.unpack_from(self.buf, _HDR)
        fh = self.fs.open(nodeid)
        if flags & os.O_TRUNC:
            # Only with ATOMIC_O_TRUNC: otherwise the kernel strips O_TRUNC
            # and sends a SETATTR first. OPEN_KILL_SUIDGID (KILLPRIV_V2):
            # the opener lacks CAP_FSETID.
            try:
                self.fs.truncate_on_open(nodeid, bool(open_flags & w.OPEN_KILL_SUIDGID))
            except BaseException:
                self.fs.release(fh)
                raise
        return self._open_out(fh, flags)

    def _open_out(self, fh: int, flags: int) -> bytes:
        """OPEN's answer for handle fh (an inode number) opened with flags.
        The page cache is kept across opens, as llfuse keeps it: every
        change goes through this kernel. Under the writeback cache with free
        space down to the reserve: no cache, so write(2) gets ENOSPC (rule
        2); a writer that keeps the cache is tagged, for rule 4."""
        guard = self.guard
        if guard is None:
            direct = self.direct
            if direct is not None and flags & os.O_ACCMODE == os.O_WRONLY:
                direct.opens += 1
                return w.OPEN_OUT.pack(fh | FH_DIRECT_WRITER, _DIRECT_WRITER_OPEN, 0)
            return w.OPEN_OUT.pack(fh, w.FOPEN_KEEP_CACHE, 0)
        if guard.near_full():
            return w.OPEN_OUT.pack(fh, w.FOPEN_DIRECT_IO, 0)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            guard.cached_writer_opened(fh)
            fh |= FH_CACHED_WRITER
        return w.OPEN_OUT.pack(fh, w.FOPEN_KEEP_CACHE, 0)

    def _release(self, fh: int) -> None:
        """Close a file handle that OPEN, CREATE or TMPFILE gave out. The
        last close of a file that direct writers wrote stores what they wrote
        into the page cache (DirectWriters.store, which releases the global
        lock)."""
        fh &= ~FH_DIRECT_WRITER
        if fh & FH_CACHED_WRITER:
            fh &= ~FH_CACHED_WRITER
            if self.guard is not None:
                self.guard.cached_writer_closed(fh)
        self.fs.release(fh)
        direct = self.direct
        if direct is not None and fh in direct.written and not self.fs.opens(fh):
            direct.store(fh)

    def create(self, nodeid: int, n: int) -> Reply:
        # A new file: O_TRUNC and OPEN_KILL_SUIDGID in open_flags change
        # nothing (tmpfs neither truncates nor clears what it creates).
        flags, mode, _umask, _open_flags = w.CREATE_IN.unpack_from(self.buf, _HDR)
        name, _ = self._name(_HDR + w.CREATE_IN.size, n)
        node = self.fs.create(nodeid, name, mode, self._caller())
        return self._entry(node) + self._open_out(node.ino, flags)

    def tmpfile(self, nodeid: int, n: int) -> Reply:
        """open(dir, O_TMPFILE): CREATE's arguments (the name is "/") and
        answer, for a file that no directory names. Its entry says nlink 0,
        the truth: with it 6.18 refuses linkat() of an O_EXCL one with ENOENT
        as tmpfs does (an entry saying 1 let it be linked), and logs nothing."""
        flags, mode, _umask, _open_flags = w.CREATE_IN.unpack_from(self.buf, _HDR)
        node = self.fs.tmpfile(nodeid, mode, self._caller())
        return self._entry(node) + self._open_out(node.ino, flags)

    # The file's handlers below take the file from the request's nodeid, not
    # from the handle, which may carry FH_CACHED_WRITER or FH_DIRECT_WRITER.
    def lseek(self, nodeid: int, n: int) -> Reply:
        _fh, off, whence, _pad = w.LSEEK_IN.unpack_from(self.buf, _HDR)
        return w.LSEEK_OUT.pack(self.fs.seek(nodeid, off, whence))

    def fallocate(self, nodeid: int, n: int) -> Reply:
        # The kernel drops its own cached pages of a punched range itself.
        _fh, off, length, mode, _pad = w.FALLOCATE_IN.unpack_from(self.buf, _HDR)
        self.fs.fallocate(nodeid, mode, off, length)
        if self.guard is not None:
            self.guard.check_space()
        return b""

    def copy_file_range(self, nodeid: int, n: int) -> Reply:
        # Whole stored blocks are shared through their refcounts (ranges.py):
        # `cp` of a big file costs slots, not payload. The answer's size is
        # 32 bits, so a longer copy is cut to whole pages below 4 GiB; the
        # caller asks again for the rest, as after any short copy.
        _fh_in, off_in, node_out, _fh_out, off_out, length, flags = \
            w.COPY_FILE_RANGE_IN.unpack_from(self.buf, _HDR)
        if flags:
            raise FsError(errno.EINVAL, "copy_file_range flags")
        done = self.fs.copy_range(nodeid, off_in, node_out, off_out, min(length, MAX_COPY))
        if self.guard is not None:
            self.guard.check_space()
        return w.WRITE_OUT.pack(done, 0)

    def read(self, nodeid: int, n: int) -> Reply:
        _fh, off, size, _rf, _owner, _flags, _pad = w.READ_IN.unpack_from(self.buf, _HDR)
        # A list: run() writes the pieces behind the header with one writev(2).
        return self.fs.read_pieces(nodeid, off, size)

    def write(self, nodeid: int, n: int) -> Reply:
        fh, off, size, write_flags, _owner, _flags, _pad = w.WRITE_IN.unpack_from(self.buf, _HDR)
        start = _HDR + w.WRITE_IN.size
        if start + size > n:
            raise BadRequest(f"WRITE of {size} bytes in a {n}-byte request")
        if write_flags & w.WRITE_KILL_SUIDGID:
            # HANDLE_KILLPRIV_V2: a writer without CAP_FSETID, to a file
            # with suid or sgid (the kernel sends it only then, and for every
            # direct write of such a writer): before the data, as the VFS does.
            self.fs.kill_privileges(nodeid)
        if fh & FH_DIRECT_WRITER:   # one test per WRITE of a cached handle
            if not write_flags & w.WRITE_KILL_SUIDGID:
                # The kernel's direct path drops no security.capability (its
                # page-cache path asks GETXATTR and REMOVEXATTR), which any
                # write drops on tmpfs, root's too.
                self.fs.kill_privileges(nodeid, setid=False)
            if size:
                # Noted before the write: a span past what a short write
                # wrote only stores what the file holds there.
                self.direct.wrote(nodeid, off, off + size)   # type: ignore[union-attr]
        # A view over the request buffer: the core copies what it keeps.
        # WRITE_CACHE: a writeback of cached pages; the kernel owns mtime
        # and ctime then, and sends its own (SETATTR, FATTR_CTIME).
        guard = self.guard
        if not write_flags & w.WRITE_CACHE:
            written = self.fs.write(nodeid, off, self.mv[start:start + size])
            if written < size and self._may_wait_for_space and self.fs.pending_release():
                # Short at size=: the whole write may fit once a RELEASE
                # comes. Written again then, the same bytes at the same offset.
                raise _AwaitSpace
            if guard is not None:
                guard.check_space()
            return w.WRITE_OUT.pack(written, 0)
        try:
            written = self.fs.write(nodeid, off, self.mv[start:start + size], False)
            if written < size:
                # Short at size= (as tmpfs's write(2) would be): the kernel
                # does not retry the rest of a writeback, so it is an error
                # the kernel reports at fsync and close.
                raise FsError(errno.ENOSPC, "short writeback")
        except FsError as e:
            if guard is not None:
                guard.writeback_failed(nodeid, e.errno)
            raise
        if guard is not None:
            guard.check_space()
        return w.WRITE_OUT.pack(written, 0)

    def release(self, nodeid: int, n: int) -> Reply:
        self._release(w.RELEASE_IN.unpack_from(self.buf, _HDR)[0])
        return b""

    def empty(self, nodeid: int, n: int) -> Reply:
        """DESTROY: nothing to do (volatile, as tmpfs)."""
        return b""

    def not_needed(self, nodeid: int, n: int) -> Reply:
        """FLUSH, FSYNC, FSYNCDIR: frontend.NOT_NEEDED."""
        return NOT_NEEDED

    def interrupt(self, nodeid: int, n: int) -> Reply:
        return None

    def statfs(self, nodeid: int, n: int) -> Reply:
        if self._may_wait_for_space and self.fs.awaiting_forget_bytes():
            raise _AwaitSpace   # wait for their FORGET (STATFS_WAIT_NS)
        s = self.fs.statfs()
        return w.KSTATFS.pack(s["f_blocks"], s["f_bfree"], s["f_bavail"], s["f_files"],
                              s["f_ffree"], s["f_bsize"], s["f_namemax"], s["f_frsize"], 0)

    def access(self, nodeid: int, n: int) -> Reply:
        self.fs.get(nodeid)   # not asked under default_permissions; the kernel decides
        return b""

    # ---- directories -------------------------------------------------------------
    def opendir(self, nodeid: int, n: int) -> Reply:
        dh = self.fs.opendir(nodeid)
        due = self.fs.atime_due(self.fs.get(nodeid))
        return w.OPEN_OUT.pack(dh, OPENDIR_ATIME_DUE if due else OPENDIR_FLAGS, 0)

    def readdir(self, nodeid: int, n: int) -> Reply:
        fh, off, size, _rf, _owner, _flags, _pad = w.READ_IN.unpack_from(self.buf, _HDR)
        packed = self._packed_listing(fh, off)
        if packed is not None:
            _snap, first, recs, ends = packed
            i = off - first
            # Whole records up to size: the first whose end passes it stops.
            stop = bisect.bisect_right(ends, (ends[i - 1] if i else 0) + size, i)
            return b"".join(recs[i:stop])
        out = bytearray()
        used = 0
        records = w.DIRENT_BY_NAMELEN   # one pack a record, name and padding included
        for name, node, next_off in self.fs.readdir(fh, off):
            st = records[len(name)]
            used += st.size
            if used > size:
                break
            # The type is the S_IFMT bits as a DT_* value.
            out += st.pack(node.ino, next_off, len(name), (node.mode >> 12) & 15, name)
        return out

    def readdirplus(self, nodeid: int, n: int) -> Reply:
        """fuse_direntplus records: each entry's attributes and a lookup
        reference (nlookup + 1), which the kernel takes for every record in
        the answer, whether or not the caller's buffer had room for it, and
        gives back with FORGET. `.` and `..` go with nodeid 0 and no
        reference: the kernel links neither (fuse_direntplus_link skips
        them) and would never forget one, as libfuse does. The references
        are taken once the answer is complete; if the kernel never gets it,
        _take_back() returns them."""
        fh, off, size, _rf, _owner, _flags, _pad = w.READ_IN.unpack_from(self.buf, _HDR)
        size = min(size, READDIRPLUS_MAX)
        out = bytearray()
        used = 0
        records, dirents = w.DIRENTPLUS_BY_NAMELEN, w.DIRENT_BY_NAMELEN
        attributes = self.frontend.attributes
        linked = []
        for name, node, next_off in self.fs.readdir(fh, off):
            namelen = len(name)
            st = records[namelen]
            used += st.size
            if used > size:
                break
            if name == b"." or name == b"..":
                out += _NO_ENTRY
                out += dirents[namelen].pack(node.ino, next_off, namelen, (node.mode >> 12) & 15,
                                             name)
            else:
                # The fuse_entry_out (_entry's fields), the fuse_dirent and
                # the padded name in one pack.
                ino, sz, blocks, at, mt, ct, mode, nlink, uid, gid, rdev, blksize = attributes(node)
                out += st.pack(ino, 0, CACHE_TIMEOUT, CACHE_TIMEOUT, 0, 0,
                               ino, sz, blocks, at // _NS, mt // _NS, ct // _NS,
                               at % _NS, mt % _NS, ct % _NS, mode, nlink, uid, gid, rdev, blksize, 0,
                               ino, next_off, namelen, (mode >> 12) & 15, name)
                linked.append(node)
        self.fs.referenced(linked)
        return out

    def _packed_listing(self, fh: int, off: int) -> Optional[tuple[list, int, list[bytes],
                                                                    list[int]]]:
        """READDIR's records of handle fh packed from off on, at most
        LISTING_CHUNK of them, while no directory entry changed since the
        listing's snapshot (Filesystem.listing); None when it did, or at
        its end: then readdir() walks it entry by entry."""
        snap = self.fs.listing(fh, off)
        if snap is None or off >= len(snap):
            self._listings.pop(fh, None)
            return None
        packed = self._listings.get(fh)
        if packed is not None and packed[0] is snap and 0 <= off - packed[1] < len(packed[2]):
            return packed
        # mode_of: the type without thawing a frozen inode (inodetable.py).
        records, mode_of = w.DIRENT_BY_NAMELEN, self.fs.inodes.mode_of
        try:
            recs = [records[len(name)].pack(ino, k, len(name), (mode_of(ino) >> 12) & 15, name)
                    for k, (name, ino) in enumerate(snap[off:off + LISTING_CHUNK], off + 1)]
        except KeyError:    # `..` of a removed directory whose parent went too
            return None
        packed = self._listings[fh] = (snap, off, recs, list(itertools.accumulate(map(len, recs))))
        return packed

    def releasedir(self, nodeid: int, n: int) -> Reply:
        fh = w.RELEASE_IN.unpack_from(self.buf, _HDR)[0]
        self._listings.pop(fh, None)
        self.fs.releasedir(fh)
        return b""

    # ---- extended attributes -----------------------------------------------------
    def getxattr(self, nodeid: int, n: int) -> Reply:
        size = w.GETXATTR_IN.unpack_from(self.buf, _HDR)[0]
        name, _ = self._name(_HDR + w.GETXATTR_IN.size, n)
        if self.frontend.capability_absent(nodeid, name):
            return errno.ENODATA   # asked before every write(2): no raise on this path
        return self._sized(self.frontend.getxattr(nodeid, name), size)

    def listxattr(self, nodeid: int, n: int) -> Reply:
        size = w.GETXATTR_IN.unpack_from(self.buf, _HDR)[0]
        return self._sized(b"".join(name + b"\0" for name in self.frontend.listxattr(nodeid)),
                           size)

    @staticmethod
    def _sized(value: bytes, size: int) -> Reply:
        """A value for a caller with a size-byte buffer: size 0 asks only the
        length; a buffer too small is ERANGE."""
        if size == 0:
            return w.GETXATTR_OUT.pack(len(value), 0)
        if len(value) > size:
            raise FsError(errno.ERANGE)
        return value

    def setxattr(self, nodeid: int, n: int) -> Reply:
        size, flags = w.SETXATTR_IN.unpack_from(self.buf, _HDR)
        name, off = self._name(_HDR + w.SETXATTR_IN.size, n)
        if off + size > n:
            raise BadRequest(f"SETXATTR value of {size} bytes in a {n}-byte request")
        self.frontend.setxattr(nodeid, name, bytes(self.mv[off:off + size]), flags)
        return b""

    def removexattr(self, nodeid: int, n: int) -> Reply:
        self.frontend.removexattr(nodeid, self._name(_HDR, n)[0])
        return b""


class NativeSession:
    """One mount through /dev/fuse: mount(2) as root, fusermount as a user
    or with auto_unmount (mounting.py); serve until unmounted; close."""

    name = "native"

    def __init__(self) -> None:
        #: The global lock, held by the reader while a handler runs.
        self.lock = threading.Lock()
        self.fd = -1
        self.mountpoint = ""
        self.device: Optional[str] = None   # the mount's "major:minor", to unmount only ours
        self.server: Optional[Server] = None
        #: How the mount was made (mounting.BY_MOUNT, BY_FUSERMOUNT), for stats.
        self.mounted_by = ""
        #: Through fusermount with auto_unmount: its helper and socket.
        self.helper: Optional[mounting.FusermountMount] = None

    def _mount(self, mountpoint: str, opts: MountOptions) -> int:
        """The connected /dev/fuse descriptor of a new mount at mountpoint."""
        refused: Optional[MountError] = None
        if not mounting.use_fusermount(opts.fuse_options):
            fd = mounting.open_device()
            try:
                # The source travels as fsname=, as options.py sets it for llfuse.
                self.device = mounting.mount(fd, mountpoint, opts.fuse_options)
                self.mounted_by = mounting.BY_MOUNT
                return fd
            except mounting.MountNotPermitted as e:
                os.close(fd)
                # As libfuse: root without CAP_SYS_ADMIN may still have fusermount.
                log.debug("%s: trying fusermount", e)
                refused = e
            except BaseException:
                os.close(fd)
                raise
        try:
            made = mounting.mount_with_fusermount(mountpoint, opts.fuse_options)
        except MountError as e:
            if refused is None:
                raise
            why = str(e).removeprefix(f"mounting {mountpoint} ")
            raise MountError(f"{refused}, nor through fusermount ({why})") from None
        self.mounted_by = mounting.BY_FUSERMOUNT
        self.device = mounting.mounted_device(mountpoint)
        if made.sock is not None:
            self.helper = made
        return made.fd

    def mount(self, frontend: Frontend, source: str, mountpoint: str, opts: MountOptions) -> None:
        fd = self._mount(mountpoint, opts)
        self.fd, self.mountpoint = fd, mountpoint
        self.server = Server(fd, frontend, self.lock, opts.fuse_flags, spin_us=opts.spin_us,
                             wronly_direct=opts.wronly_direct)
        self.server.device = self.device
        self.server.mounted_by = self.mounted_by
        self.server.auto_unmount = self.helper is not None
        if mounting.ALLOW_ROOT in opts.fuse_options:
            self.server.allow_only({0, os.getuid()})
        if self.server.guard is not None:
            self.server.guard.start(self.device)
        frontend.transport_info = self.server.info
        frontend.request_counts = self.server.request_counts

    def serve(self) -> None:
        """Until unmounted, or SIGTERM/SIGINT/SIGHUP (then close() unmounts).
        Runs in the main thread, which the signal handlers need."""
        assert self.server is not None
        previous = {s: signal.signal(s, self.server.on_stop_signal) for s in STOP_SIGNALS}
        try:
            self.server.run()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def close(self) -> None:
        """Unmount (root: umount2, a user: fusermount -u), then let an
        auto_unmount helper go: it finds the mount gone and exits."""
        if self.server is not None and self.server.guard is not None:
            self.server.guard.stop()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            mounting.unmount(fd, self.mountpoint, self.device)
        if self.helper is not None:
            helper, self.helper = self.helper, None
            helper.release()
