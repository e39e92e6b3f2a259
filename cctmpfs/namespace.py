"""The POSIX namespace: inodes, directories, links, xattrs and lookup counts.

No llfuse here: operations take inode numbers and byte names, return Inode
records, and raise FsError for an errno answer. Permission checks are the
kernel's (the mount always has default_permissions); this module keeps
tmpfs's semantics for everything the kernel leaves to the filesystem:
link counts, timestamps, setgid directories, sizes, ENOSPC and lifetimes.

Threading: every method runs with the global lock held. read(), write()
and setattr() (truncate) release it around codec work, through DataEngine.
"""

from __future__ import annotations

import errno
import logging
import stat as S
import types
from typing import Callable, Iterator, Mapping, Optional

import attrs

from . import extents, faults
from .arena import segment_bytes_for
from .blockstore import BlockStore
from .clock import TimestampClock
from .codec import Codec
from .errors import FsError
from .filemap import MAX_FILE_SIZE, DataEngine, FileData, HotBuffer, joined, pages
from .inodetable import InodeTable
from .locking import GlobalLock, NoLock
from .packedentries import pack as pack_entries, unpack as unpack_entries
from .packing import Packer
from .ranges import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_SUPPORTED,
                     FALLOC_VALID, allocate, copy_range, punch_hole)
from .sharedints import SharedInts

log = logging.getLogger(__name__)

ROOT_INO = 1            # FUSE's root inode number, as llfuse.ROOT_INODE
NAME_MAX = 255          # bytes per name, as tmpfs; the kernel lets up to 1024 through
PATH_MAX = 4096         # bytes per symlink target
BOGO_DIRENT_SIZE = 20   # tmpfs reports a directory's size as 20 bytes per entry
RELATIME_SECONDS = 24 * 3600
XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")
#: POSIX ACLs are refused: FUSE on libfuse 2 cannot make the kernel enforce
#: them, and storing them as plain xattrs would pretend to protect files.
ACL_PREFIX = b"system.posix_acl_"
#: renameat2(2) flags (linux/fs.h); llfuse never passes them, the native transport does.
RENAME_NOREPLACE = 1 << 0   # fail with EEXIST if the new name exists
RENAME_EXCHANGE = 1 << 1    # swap the two names, both must exist
RENAME_WHITEOUT = 1 << 2    # leave a whiteout (char device 0/0) at the old name
RENAME_FLAGS = RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT
#: File capabilities (setcap); dropped with suid on write, truncate, chown.
SECURITY_CAPABILITY = b"security.capability"
#: The entries of every empty directory: one immutable mapping shared by all,
#: replaced by a dict of the directory's own at its first entry and put back
#: when its last entry goes. An empty dict of its own is 64 bytes per
#: directory.
EMPTY_ENTRIES: Mapping[bytes, int] = types.MappingProxyType({})


@attrs.define(slots=True)
class Caller:
    """Who asks: the uid/gid of the requesting process. Made for every
    create, mkdir, mknod and symlink: not frozen, because a frozen attrs
    record takes twice as long to build (0.55 against 0.28 us)."""

    uid: int = 0
    gid: int = 0
    pid: int = 0


@attrs.define(slots=True, eq=False, repr=False, weakref_slot=False)
class Inode:
    """One inode: the fields every kind has. Protected by the global lock.

    Each kind is a subclass that adds only its own fields, because an inode
    is paid per file: a regular file's record is 112 bytes where one class
    with every field took 168 (tests/unit/test_namespace.py measures it).
    The fields of the other kinds read as these class defaults here:
    `entries` None and `parent` 0 unless a directory, `target` None unless
    a symlink, `data` None unless a regular file, `rdev` 0 unless a device
    node. FIFOs and sockets are plain Inodes.

    What few inodes have is kept beside them, keyed by inode number:
    xattrs in Filesystem.xattrs, open handles in Filesystem.open_counts.
    mode, uid, gid and times set from a request are shared int objects
    (Filesystem.share): a tree holds few distinct values of them.
    """

    ino: int
    mode: int            # S_IF* type bits and permission bits
    uid: int
    gid: int
    nlink: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlookup: int = 0     # kernel references (lookups not yet forgotten)

    entries = None       # DirInode: name -> inode number (EMPTY_ENTRIES when empty)
    parent = 0           # DirInode: inode number of ".."
    target = None        # SymlinkInode: the target
    data = None          # FileInode: the content
    rdev = 0             # DeviceInode: the device number

    def __repr__(self) -> str:
        return f"<Inode {self.ino} mode={self.mode:o} nlink={self.nlink} nlookup={self.nlookup}>"

    @property
    def is_dir(self) -> bool:
        return self.entries is not None

    @property
    def size(self) -> int:
        if self.data is not None:
            return self.data.size
        if self.entries is not None:
            return BOGO_DIRENT_SIZE * (len(self.entries) + 2)
        if self.target is not None:
            return len(self.target)
        return 0

    @property
    def blocks_512(self) -> int:
        """st_blocks: the pages really allocated, in 512-byte units."""
        return self.data.alloc_bytes // 512 if self.data is not None else 0


@attrs.define(slots=True, eq=False, repr=False, weakref_slot=False)
class FileInode(Inode):
    data: FileData = attrs.field(factory=FileData)   # type: ignore[assignment]


@attrs.define(slots=True, eq=False, repr=False, weakref_slot=False)
class DirInode(Inode):
    entries: Mapping[bytes, int] = EMPTY_ENTRIES              # type: ignore[assignment]
    parent: int = 0                                          # type: ignore[misc]


@attrs.define(slots=True, eq=False, repr=False, weakref_slot=False)
class SymlinkInode(Inode):
    target: bytes = b""                                      # type: ignore[assignment]


@attrs.define(slots=True, eq=False, repr=False, weakref_slot=False)
class DeviceInode(Inode):
    rdev: int = 0                                            # type: ignore[misc]


#: The record of each S_IFMT kind; FIFOs and sockets have no field of their own.
INODE_CLASSES: dict[int, type[Inode]] = {
    S.S_IFREG: FileInode, S.S_IFDIR: DirInode, S.S_IFLNK: SymlinkInode,
    S.S_IFCHR: DeviceInode, S.S_IFBLK: DeviceInode,
}


@attrs.define(slots=True)
class NamespaceCensus:
    """Live counts of what the namespace holds, kept as it changes so that
    stats.py can estimate the RAM of the namespace without walking it: a
    walk of a million inodes holds the global lock for 70 ms or more.
    Protected by the global lock; check.py recomputes them. One comment each."""

    files: int = 0        # regular files (inodes with a FileData), freed ones excluded
    dirs: int = 0         # directories, the root included
    empty_dirs: int = 0   # directories without entries (their entries are EMPTY_ENTRIES)
    entries: int = 0      # directory entries (names), each hard link counted
    name_bytes: int = 0   # bytes of those names plus the targets of symlinks


@attrs.define(slots=True)
class NamespaceCounters:
    """Cumulative namespace counters, one comment each. Protected by the global lock."""

    inodes_created: int = 0   # inodes ever created
    inodes_freed: int = 0     # inodes freed (unlinked and forgotten and closed)


class Filesystem:
    """The whole in-memory filesystem: namespace plus data engine."""

    def __init__(self, *, block_size: int = 128 * 1024, codec: Optional[Codec] = None,
                 size_limit: int = 0, nr_inodes: int = 0, ram_budget: int = 0,
                 buffer_bytes: int = 64 * 1024 * 1024, root_mode: int = 0o1777,
                 root_uid: int = 0, root_gid: int = 0, lock: Optional[GlobalLock] = None,
                 dedup: bool = True, pack: bool = True, pack_bytes: int = 0,
                 clock_ns: Optional[Callable[[], int]] = None) -> None:
        self.lock: GlobalLock = lock if lock is not None else NoLock()
        self.block_size = block_size
        self.nr_inodes = nr_inodes
        #: Every timestamp set here comes from this clock (clock.py); tests
        #: pass clock_ns, a fake clock that is both source and real time.
        self.clock = TimestampClock() if clock_ns is None else TimestampClock(clock_ns, clock_ns)
        self.now_ns = self.clock.now_ns
        #: stamp_ns(ino, ctime_ns): now for a change to an inode, multigrain
        #: where the transport allows it (clock.py).
        self.stamp_ns = self.clock.stamp_ns
        self.store = BlockStore(dedup=dedup, segment_bytes=segment_bytes_for(block_size))
        self.engine = DataEngine(
            block_size=block_size, codec=codec or Codec("zstd", 3), store=self.store,
            buffer=HotBuffer(buffer_bytes), lock=self.lock, size_limit=size_limit,
            ram_budget=ram_budget)
        #: Small-file packing on the idle sealer (packing.py); pack=off only
        #: stops building packs. pack_bytes 0: packs of a block.
        self.packer = Packer(self.engine, enabled=pack, pack_bytes=pack_bytes or block_size)
        self.counters = NamespaceCounters()
        self.census = NamespaceCensus()
        #: Every live inode: hot ones as records, cold ones frozen into
        #: columns by the idle pass and thawed at their next use (inodetable.py).
        self.inodes = InodeTable(self._thawed, self._frozen, self.now_ns)
        #: inode -> its xattrs (name -> value), only for inodes that have
        #: some: most have none, and a field of its own cost every inode 8
        #: bytes. Freed with the inode.
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        #: regular file -> its open handles, only while it has some (see
        #: opens()). Freed at the last release.
        self.open_counts: dict[int, int] = {}
        #: The one int object of each frequent value of mode, uid, gid and
        #: the times a request sets (sharedints.py): each int of its own is
        #: 28-32 bytes per field per inode.
        self.shared_ints = SharedInts()
        self.share = self.shared_ints.share
        #: Hard links beyond the first of each file. tmpfs charges each against
        #: nr_inodes (shmem_link reserves an inode for the extra dentry).
        self.extra_links = 0
        #: Inodes with no name and no handle left, kept until the kernel's
        #: FORGET. An unlinked file's data must stay until then: a path walk
        #: that found the name before the unlink may still OPEN the inode by
        #: its number and read it, as on tmpfs (tests/stress: a reader
        #: racing a rename over its file read 0 bytes when the data was
        #: freed at unlink). The kernel queues the FORGET once its last
        #: reference goes, usually at once; a request that finds no room
        #: meanwhile may wait for it (pending_release(), transport/native.py
        #: SPACE_WAIT_NS).
        self.awaiting_forget: set[int] = set()
        #: The idle pass gives back the room of these once they have emptied
        #: (tables.py: after `rm -rf` of 59,426 inodes the inode table and
        #: the content index kept 2.5 MiB each).
        self.engine.idle_tables += [self.inodes, self.xattrs, self.open_counts,
                                    self.awaiting_forget, self.store.index]
        self.engine.pass_hooks.append(self.inodes.freeze_pass)
        self.engine.idle_shared_ints.append(self.shared_ints)
        #: open directory handle -> (directory inode, snapshot of its entries,
        #: entry_changes when the snapshot was taken)
        self.dir_handles: dict[int, tuple[int, list[tuple[bytes, int]], int]] = {}
        #: Bumped by every change of any directory's entries: a listing whose
        #: snapshot is no older than this has every entry still live, and
        #: skips readdir()'s per-entry recheck (listing()).
        self.entry_changes = 0
        self.next_dh = 1
        root = self._new_inode(S.S_IFDIR | (root_mode & 0o7777), root_uid, root_gid)
        root.parent = ROOT_INO
        root.nlookup = 1   # the kernel holds the root for the whole mount

    # ---- helpers -------------------------------------------------------
    def get(self, ino: int) -> Inode:
        try:
            return self.inodes[ino]
        except KeyError:
            raise self._no_inode(ino) from None

    def _dir(self, ino: int) -> Inode:
        try:
            node = self.inodes[ino]
        except KeyError:
            raise self._no_inode(ino) from None
        if node.entries is None:
            raise FsError(errno.ENOTDIR)
        return node

    def _file(self, ino: int) -> Inode:
        try:
            node = self.inodes[ino]
        except KeyError:
            raise self._no_inode(ino) from None
        if node.data is None:
            raise FsError(errno.EISDIR if node.is_dir else errno.EINVAL)
        return node

    @staticmethod
    def _no_inode(ino: int) -> FsError:
        return FsError(errno.ENOENT, f"inode {ino} does not exist")

    def _new_inode(self, mode: int, uid: int, gid: int, rdev: int = 0) -> Inode:
        self._reserve_inode()
        now = self.now_ns()
        ino = self.inodes.allocate()
        cls = INODE_CLASSES.get(S.S_IFMT(mode), Inode)
        share = self.share
        node = cls(ino, share(mode), share(uid), share(gid), 1, now, now, now)
        if cls is DirInode:
            node.nlink = 2
            self.census.dirs += 1
            self.census.empty_dirs += 1
        elif cls is FileInode:
            self.census.files += 1
        elif cls is DeviceInode:
            node.rdev = rdev
        self.inodes[ino] = node
        self.counters.inodes_created += 1
        return node

    def _thawed(self, ino: int, f: list[int], obj: object, aux: int) -> Inode:
        """The record of a frozen inode (InodeTable.make): f holds mode,
        uid, gid, nlink, atime_ns, mtime_ns, ctime_ns and nlookup, obj its
        kind's object, aux a directory's parent or a device's rdev."""
        mode = f[0]
        share = self.share
        cls = INODE_CLASSES.get(S.S_IFMT(mode), Inode)
        head = (ino, share(mode), share(f[1]), share(f[2]), f[3], f[4], f[5], f[6], f[7])
        if cls is FileInode or cls is SymlinkInode:
            return cls(*head, obj)
        if cls is DirInode:
            return cls(*head, obj if obj is EMPTY_ENTRIES else unpack_entries(obj), aux)
        if cls is DeviceInode:
            return cls(*head, aux)
        return cls(*head)

    @staticmethod
    def _frozen(node: Inode) -> tuple[list[int], object, int]:
        """What a frozen inode keeps (InodeTable.unmake): its fields in
        COLUMNS' order, its kind's object (a directory's entries packed,
        packedentries.py), and aux: a directory's parent or a device's
        rdev. OverflowError for a value a row cannot hold."""
        entries = node.entries
        if entries is not None:
            obj: object = entries if entries is EMPTY_ENTRIES else pack_entries(entries)
            aux = node.parent
        else:
            obj = node.data if node.data is not None else node.target
            aux = node.rdev
        return ([node.mode, node.uid, node.gid, node.nlink, node.atime_ns, node.mtime_ns,
                 node.ctime_ns, node.nlookup], obj, aux)

    @property
    def inodes_used(self) -> int:
        """What counts against nr_inodes: inodes plus extra hard links."""
        return len(self.inodes) + self.extra_links

    def _reserve_inode(self) -> None:
        if self.nr_inodes and self.inodes_used >= self.nr_inodes:
            raise FsError(errno.ENOSPC, "nr_inodes limit reached")

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise FsError(errno.EINVAL, "invalid name")

    def opens(self, ino: int) -> int:
        """The open handles of inode ino (0 for anything but an open regular file)."""
        return self.open_counts.get(ino, 0)

    def _maybe_free(self, node: Inode) -> None:
        """Free an inode once nothing refers to it: no link, no lookup, no handle."""
        ino = node.ino
        if node.nlink > 0 or node.nlookup > 0 or ino in self.open_counts or ino == ROOT_INO:
            return
        census = self.census
        if node.data is not None:
            self.engine.free(node.data)
            census.files -= 1
        elif node.entries is not None:
            census.dirs -= 1
            census.empty_dirs -= 1   # only an empty directory is removed
        elif node.target is not None:
            census.name_bytes -= len(node.target)
        if self.xattrs:
            self.xattrs.pop(ino, None)
        self.awaiting_forget.discard(ino)
        del self.inodes[ino]
        self.counters.inodes_freed += 1

    def _unreachable(self, node: Inode) -> None:
        """node lost its last name and its last handle: free it, or, while
        the kernel still holds it (nlookup), keep it, data and all, until
        its FORGET (awaiting_forget)."""
        self._maybe_free(node)
        if node.ino in self.inodes:
            self.awaiting_forget.add(node.ino)

    def _touch_dir(self, d: Inode, now: int) -> None:
        if now <= d.ctime_ns and self.clock.fine:   # changed at this stamp already
            now = self.stamp_ns(d.ino, d.ctime_ns)
        d.mtime_ns = d.ctime_ns = now

    def _maybe_update_atime(self, node: Inode) -> None:
        """relatime: tmpfs's default atime policy."""
        now = self.now_ns()
        if self._atime_due(node, now):
            node.atime_ns = now

    @staticmethod
    def _atime_due(node: Inode, now: int) -> bool:
        return (node.atime_ns <= node.mtime_ns or node.atime_ns <= node.ctime_ns
                or now - node.atime_ns >= RELATIME_SECONDS * 10 ** 9)

    def atime_due(self, node: Inode) -> bool:
        """Whether reading node now would update its atime (relatime). A
        transport whose kernel serves listings or symlink targets from its
        cache lets the next read through when it would."""
        return self._atime_due(node, self.now_ns())

    # ---- lookups and lifetimes ------------------------------------------
    def lookup(self, parent: int, name: bytes) -> Inode:
        """Find name in parent and take one lookup reference on it."""
        node = self.find(parent, name)
        if node is None:
            raise FsError(errno.ENOENT)
        return node

    def find(self, parent: int, name: bytes) -> Optional[Inode]:
        """lookup(), but None when parent has no such name, without a
        reference and without an exception: the adapter answers it as a
        negative entry, which the kernel caches, and a compiler or an
        import system probes many missing names."""
        d = self._dir(parent)
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        ino = d.entries.get(name)  # type: ignore[union-attr]
        if ino is not None:
            node = self.inodes[ino]
        elif name == b".":
            node = d
        elif name == b"..":
            node = self.get(d.parent)
        else:
            return None
        node.nlookup += 1
        return node

    @staticmethod
    def referenced(nodes: list[Inode]) -> None:
        """The kernel took one lookup reference on each of nodes, as from
        lookup(): the entries of a READDIRPLUS answer."""
        for node in nodes:
            node.nlookup += 1

    def forget(self, ino: int, n: int) -> None:
        """The kernel dropped n lookup references. Never raises."""
        node = self.inodes.get(ino)
        if node is None:
            return
        if n > node.nlookup:
            log.warning("forget(%d, %d) exceeds nlookup %d", ino, n, node.nlookup)
            n = node.nlookup
        node.nlookup -= n
        self._maybe_free(node)

    #: GETATTR: the inode itself (an alias, not a wrapper: one call less per stat).
    getattr = get

    # ---- creating ------------------------------------------------------
    def _new_inode_in(self, d: Inode, mode: int, caller: Caller, rdev: int = 0) -> Inode:
        """A new inode made in directory d by caller, not yet entered anywhere."""
        gid = caller.gid
        if d.mode & S.S_ISGID:
            # setgid directory: new entries take its group, subdirectories its setgid bit.
            gid = d.gid
            if S.S_ISDIR(mode):
                mode |= S.S_ISGID
        return self._new_inode(mode, caller.uid, gid, rdev)

    def _link_new(self, parent: int, name: bytes, mode: int, caller: Caller,
                  rdev: int = 0) -> Inode:
        self._check_name(name)
        d = self._dir(parent)
        if d.nlink == 0:
            raise FsError(errno.ENOENT, "directory was removed")
        if name in d.entries:  # type: ignore[operator]
            raise FsError(errno.EEXIST)
        node = self._new_inode_in(d, mode, caller, rdev)
        # _add_entry(), inline: this runs for every create, mkdir and symlink.
        entries = d.entries
        census = self.census
        if entries is EMPTY_ENTRIES:
            d.entries = entries = {}
            census.empty_dirs -= 1
        entries[name] = node.ino  # type: ignore[index]
        self.entry_changes += 1
        census.entries += 1
        census.name_bytes += len(name)
        if node.entries is not None:   # a directory
            node.parent = d.ino
            d.nlink += 1
        self._touch_dir(d, node.ctime_ns)
        node.nlookup += 1
        return node

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, caller: Caller) -> Inode:
        kind = S.S_IFMT(mode)
        if kind == 0:
            mode |= S.S_IFREG
        elif kind not in (S.S_IFREG, S.S_IFCHR, S.S_IFBLK, S.S_IFIFO, S.S_IFSOCK):
            raise FsError(errno.EINVAL, "mknod of a directory or symlink")
        return self._link_new(parent, name, mode, caller, rdev)

    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> Inode:
        return self._link_new(parent, name, S.S_IFDIR | (mode & 0o7777), caller)

    def symlink(self, parent: int, name: bytes, target: bytes, caller: Caller) -> Inode:
        if len(target) >= PATH_MAX:
            raise FsError(errno.ENAMETOOLONG)
        node = self._link_new(parent, name, S.S_IFLNK | 0o777, caller)
        node.target = bytes(target)
        self.census.name_bytes += len(target)
        return node

    def create(self, parent: int, name: bytes, mode: int, caller: Caller) -> Inode:
        """Create and open a regular file (one lookup and one open reference)."""
        node = self._link_new(parent, name, S.S_IFREG | (mode & 0o7777), caller)
        self.open_counts[node.ino] = 1
        return node

    def tmpfile(self, parent: int, mode: int, caller: Caller) -> Inode:
        """O_TMPFILE: create and open a regular file that no directory names
        (nlink 0; one lookup and one open reference). It is freed at its last
        close unless link() names it first (linkat(2) with AT_EMPTY_PATH), as
        on tmpfs. The parent's times do not change (tmpfs leaves them)."""
        d = self._dir(parent)
        if d.nlink == 0:
            raise FsError(errno.ENOENT, "directory was removed")
        node = self._new_inode_in(d, S.S_IFREG | (mode & 0o7777), caller)
        node.nlink = 0
        node.nlookup += 1
        self.open_counts[node.ino] = 1
        return node

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Inode:
        self._check_name(new_name)
        node = self.get(ino)
        if node.is_dir:
            raise FsError(errno.EPERM, "hard link to a directory")
        d = self._dir(new_parent)
        if d.nlink == 0:
            raise FsError(errno.ENOENT, "directory was removed")
        if new_name in d.entries:  # type: ignore[operator]
            raise FsError(errno.EEXIST)
        if node.nlink:
            # A second name counts against nr_inodes; naming an O_TMPFILE
            # file (nlink 0) does not: its inode is already counted.
            self._reserve_inode()
            self.extra_links += 1
        self._add_entry(d, new_name, ino)
        node.nlink += 1
        self.awaiting_forget.discard(ino)   # named again (the kernel links what it holds)
        now = self.now_ns()
        node.ctime_ns = now
        self._touch_dir(d, now)
        node.nlookup += 1
        return node

    # ---- directory entries ----------------------------------------------
    def _add_entry(self, d: Inode, name: bytes, ino: int) -> None:
        """Name ino in directory d (which has no such name), keeping the
        census; a directory's first entry gives it a dict of its own."""
        entries = d.entries
        census = self.census
        if entries is EMPTY_ENTRIES:
            d.entries = entries = {}
            census.empty_dirs -= 1
        entries[name] = ino  # type: ignore[index]
        self.entry_changes += 1
        census.entries += 1
        census.name_bytes += len(name)

    def _drop_entry(self, d: Inode, name: bytes) -> None:
        """Remove name from directory d, keeping the census; a directory
        left empty gets EMPTY_ENTRIES back (its dict, whatever size it grew
        to, is freed)."""
        entries = d.entries
        del entries[name]  # type: ignore[union-attr]
        self.entry_changes += 1
        census = self.census
        census.entries -= 1
        census.name_bytes -= len(name)
        if not entries:
            d.entries = EMPTY_ENTRIES
            census.empty_dirs += 1

    # ---- removing and renaming -----------------------------------------
    def _remove_entry(self, d: Inode, name: bytes, node: Inode, now: int) -> None:
        self._drop_entry(d, name)
        if node.is_dir:
            d.nlink -= 1
            node.nlink = 0
        else:
            if node.nlink > 1:
                self.extra_links -= 1
            node.nlink -= 1
        node.ctime_ns = now
        if node.nlink == 0 and node.ino not in self.open_counts:
            self._unreachable(node)

    def _child(self, d: Inode, name: bytes) -> Inode:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        ino = d.entries.get(name)  # type: ignore[union-attr]
        if ino is None:
            raise FsError(errno.ENOENT)
        return self.inodes[ino]

    def unlink(self, parent: int, name: bytes) -> Inode:
        """Remove a name of a non-directory; the inode it named (its ctime
        changed; other links may still name it)."""
        d = self._dir(parent)
        node = self._child(d, name)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        faults.hit("unlink")
        now = self.now_ns()
        self._touch_dir(d, now)
        self._remove_entry(d, name, node, now)
        return node

    def rmdir(self, parent: int, name: bytes) -> None:
        d = self._dir(parent)
        if name == b".":
            raise FsError(errno.EINVAL)
        if name == b"..":
            raise FsError(errno.ENOTEMPTY)
        node = self._child(d, name)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        if node.entries:
            raise FsError(errno.ENOTEMPTY)
        now = self.now_ns()
        self._touch_dir(d, now)
        self._remove_entry(d, name, node, now)

    def _is_ancestor(self, maybe_ancestor: Inode, node: Inode) -> bool:
        cur = node
        while True:
            if cur is maybe_ancestor:
                return True
            if cur.ino == ROOT_INO:
                return False
            cur = self.inodes[cur.parent]

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0, caller: Optional[Caller] = None) -> tuple[Inode, ...]:
        """rename(2) and renameat2(2)'s flags (RENAME_NOREPLACE, RENAME_EXCHANGE,
        RENAME_WHITEOUT), as tmpfs has them. caller owns a whiteout. Returns
        the inodes whose ctime it changed besides the directories: the one
        moved, and the one replaced or exchanged."""
        if flags & ~RENAME_FLAGS or (flags & RENAME_EXCHANGE and flags & (RENAME_NOREPLACE | RENAME_WHITEOUT)):
            raise FsError(errno.EINVAL, "invalid rename flags")
        self._check_name(new_name)
        od = self._dir(old_parent)
        nd = self._dir(new_parent)
        src = self._child(od, old_name)
        if nd.nlink == 0:
            raise FsError(errno.ENOENT, "directory was removed")
        dst_ino = nd.entries.get(new_name)  # type: ignore[union-attr]
        if flags & RENAME_EXCHANGE:
            if dst_ino is None:
                raise FsError(errno.ENOENT)
            dst = self.inodes[dst_ino]
            self._exchange(od, old_name, src, nd, new_name, dst)
            return (src, dst) if dst is not src else ()
        if flags & RENAME_NOREPLACE and dst_ino is not None:
            raise FsError(errno.EEXIST)
        if dst_ino == src.ino:
            return ()  # same inode (hard links or the same entry): POSIX says do nothing
        if src.is_dir and self._is_ancestor(src, nd):
            raise FsError(errno.EINVAL, "directory moved into itself")
        dst = self.inodes[dst_ino] if dst_ino is not None else None
        if dst is not None:
            if dst.is_dir:
                if not src.is_dir:
                    raise FsError(errno.EISDIR)
                if dst.entries:
                    raise FsError(errno.ENOTEMPTY)
            elif src.is_dir:
                raise FsError(errno.ENOTDIR)
        if flags & RENAME_WHITEOUT:
            # The whiteout takes the old name's place: an inode like mknod's.
            self._reserve_inode()
        now = self.now_ns()
        if dst is not None:
            self._remove_entry(nd, new_name, dst, now)
        self._drop_entry(od, old_name)
        self._add_entry(nd, new_name, src.ino)
        if src.is_dir and od is not nd:
            od.nlink -= 1
            nd.nlink += 1
            src.parent = nd.ino
        src.ctime_ns = now
        self._touch_dir(od, now)
        self._touch_dir(nd, now)
        if flags & RENAME_WHITEOUT:
            # overlayfs's whiteout: a character device 0/0 (tmpfs: shmem_whiteout).
            who = caller or Caller()
            wh = self._new_inode(S.S_IFCHR, who.uid, who.gid, 0)
            self._add_entry(od, old_name, wh.ino)
        return (src,) if dst is None else (src, dst)

    def _exchange(self, od: Inode, old_name: bytes, a: Inode, nd: Inode, new_name: bytes,
                  b: Inode) -> None:
        """RENAME_EXCHANGE: swap two existing entries atomically."""
        if a is b:
            return
        if (a.is_dir and self._is_ancestor(a, nd)) or (b.is_dir and self._is_ancestor(b, od)):
            raise FsError(errno.EINVAL, "directory exchanged into itself")
        od.entries[old_name] = b.ino  # type: ignore[index]
        nd.entries[new_name] = a.ino  # type: ignore[index]
        self.entry_changes += 1
        if od is not nd:
            if a.is_dir:
                a.parent = nd.ino
                od.nlink -= 1
                nd.nlink += 1
            if b.is_dir:
                b.parent = od.ino
                nd.nlink -= 1
                od.nlink += 1
        now = self.now_ns()
        a.ctime_ns = b.ctime_ns = now
        self._touch_dir(od, now)
        self._touch_dir(nd, now)

    # ---- attributes ----------------------------------------------------
    def setattr(self, ino: int, *, size: Optional[int] = None, mode: Optional[int] = None,
                uid: Optional[int] = None, gid: Optional[int] = None,
                atime_ns: Optional[int] = None, mtime_ns: Optional[int] = None,
                ctime_ns: Optional[int] = None, kill_privileges: bool = False) -> Inode:
        """chmod, chown, utimens and truncate. ctime_ns is a ctime the kernel
        owns (writeback cache: it stamps ctime itself and sends it); without
        it ctime is now. kill_privileges: see kill_privileges(), applied
        before mode, so an explicit mode wins. Releases the global lock
        (truncate)."""
        node = self.get(ino)
        if kill_privileges:
            self.kill_privileges(ino)
        if size is not None:
            if node.data is None:
                raise FsError(errno.EISDIR if node.is_dir else errno.EINVAL)
            # Even at the same size: tmpfs then frees the pages that
            # fallocate(KEEP_SIZE) allocated past the end.
            self.engine.truncate(node.data, size)
            # tmpfs sets mtime even when the size does not change.
            node.mtime_ns = self.stamp_ns(node.ino, node.ctime_ns)
        # The values a request sets are shared (cp -a and tar set a tree's
        # few owners and its mtimes, which often repeat).
        share = self.share
        if mode is not None:
            node.mode = share(S.S_IFMT(node.mode) | (mode & 0o7777))
        if uid is not None:
            node.uid = share(uid)
        if gid is not None:
            node.gid = share(gid)
        # A time may be the kernel's "now" (touch, UTIME_NOW): the clock
        # takes it in, so no later stamp precedes it (clock.py).
        if atime_ns is not None:
            node.atime_ns = share(atime_ns)
            self.clock.observe(atime_ns)
        if mtime_ns is not None:
            node.mtime_ns = share(mtime_ns)
            self.clock.observe(mtime_ns)
        # Every SETATTR changes ctime, even one that changes nothing else:
        # chown(f, -1, -1) arrives as a SETATTR without fields, and tmpfs
        # updates ctime for it.
        if ctime_ns is not None:
            node.ctime_ns = share(ctime_ns)
            self.clock.observe(ctime_ns)
        else:
            node.ctime_ns = self.stamp_ns(node.ino, node.ctime_ns)
        return node

    def kill_privileges(self, ino: int, setid: bool = True) -> None:
        """What a write, truncate or chown by a caller without CAP_FSETID
        drops on tmpfs (the VFS's file_remove_privs and
        setattr_should_drop_suidgid): the setuid bit; the setgid bit if the
        file is group-executable (without group-exec, setgid is the
        mandatory-locking mark and stays); and security.capability. Sets
        ctime if anything changed. The kernel does this itself unless the
        transport negotiated HANDLE_KILLPRIV_V2; then it sends a flag and
        the transport calls this.

        setid=False: security.capability only, which any write(2) drops on
        tmpfs, a caller with CAP_FSETID's too. The kernel does that itself
        for writes through its page cache, not for FOPEN_DIRECT_IO handles
        (transport/directwrite.py): their writes call this."""
        node = self.get(ino)
        changed = False
        if setid:
            mode = node.mode
            if mode & S.S_ISUID:
                mode &= ~S.S_ISUID
            if mode & (S.S_ISGID | S.S_IXGRP) == S.S_ISGID | S.S_IXGRP:
                mode &= ~S.S_ISGID
            changed = mode != node.mode
            if changed:
                node.mode = self.share(mode)
        xattrs = self.xattrs.get(ino)
        if xattrs is not None and SECURITY_CAPABILITY in xattrs:
            del xattrs[SECURITY_CAPABILITY]
            if not xattrs:
                del self.xattrs[ino]
            changed = True
        if changed:
            node.ctime_ns = self.stamp_ns(node.ino, node.ctime_ns)

    def truncate_on_open(self, ino: int, kill_privileges: bool = False) -> None:
        """open(2) with O_TRUNC, when the transport gets it whole
        (ATOMIC_O_TRUNC): size 0, mtime and ctime now even if it was empty
        (tmpfs: do_truncate with ATTR_MTIME|ATTR_CTIME). Releases the global
        lock."""
        self.setattr(ino, size=0, kill_privileges=kill_privileges)

    def readlink(self, ino: int) -> bytes:
        node = self.get(ino)
        if node.target is None:
            raise FsError(errno.EINVAL, "not a symlink")
        self._maybe_update_atime(node)
        return node.target

    # ---- file I/O --------------------------------------------------------
    def open(self, ino: int) -> int:
        """Open a regular file; the handle is its inode number."""
        node = self._file(ino)
        if node.nlink == 0:
            self.awaiting_forget.discard(ino)   # opened by number after its unlink
        opens = self.open_counts
        opens[ino] = opens.get(ino, 0) + 1
        return ino

    def release(self, fh: int) -> None:
        """Close one handle. Never raises for a known handle."""
        node = self.inodes.get(fh)
        if node is None:
            return
        opens = self.open_counts
        count = opens.get(fh, 0) - 1
        if count > 0:
            opens[fh] = count
            return
        if count < 0:
            log.warning("release(%d) of a file without open handles", fh)
            return
        del opens[fh]
        if node.data is not None:
            if node.nlink > 0:
                self.engine.release(node.data)
            else:
                # No name and no handle: the data goes with the inode at
                # FORGET, which the kernel queues only after this RELEASE's
                # answer. Not sooner: a path walk that found the name before
                # its unlink may still open the inode by number and read it,
                # as on tmpfs (tests/stress/test_exerciser read 0 bytes when
                # 902fdd0 freed it at this close). The native transport
                # holds a STATFS back for that FORGET (STATFS_WAIT_NS).
                self._unreachable(node)

    def awaiting_forget_bytes(self) -> int:
        """Bytes allocated to inodes that await only the kernel's FORGET:
        space tmpfs would have freed already."""
        inodes = self.inodes
        total = 0
        for ino in self.awaiting_forget:
            data = inodes[ino].data
            if data is not None:
                total += data.alloc_bytes
        return total

    def pending_release(self) -> bool:
        """Whether a RELEASE or FORGET the kernel still owes would free space
        or inodes: a file without a name is still open (the kernel sends
        RELEASE asynchronously, after the file's reads in flight are
        answered), or an inode without a name or handle awaits its FORGET.
        A request that found no room may wait for them. Walks the open
        files only; asked on ENOSPC, not per request."""
        if self.awaiting_forget:
            return True
        inodes = self.inodes
        for ino in self.open_counts:
            node = inodes.get(ino)
            if node is not None and node.nlink == 0:
                return True
        return False

    def seek(self, fh: int, off: int, whence: int) -> int:
        """lseek(2) SEEK_DATA / SEEK_HOLE of an open file (extents.py)."""
        node = self._file(fh)
        return extents.seek(node.data, self.block_size, off, whence)  # type: ignore[arg-type]

    def read(self, fh: int, off: int, size: int) -> bytes:
        """Releases the global lock."""
        return joined(self.read_pieces(fh, off, size))

    def read_pieces(self, fh: int, off: int, size: int) -> list[bytes | memoryview]:
        """read(), as immutable pieces for one writev(2) (DataEngine.read_pieces).
        Releases the global lock."""
        node = self._file(fh)
        if off < 0:
            raise FsError(errno.EINVAL)
        out = self.engine.read_pieces(node.data, off, size)  # type: ignore[arg-type]
        self._maybe_update_atime(node)
        return out

    def write(self, fh: int, off: int, buf: bytes, stamp: bool = True) -> int:
        """stamp=False: leave mtime and ctime alone, for a writeback of pages
        the kernel cached (it owns the times of such a file, stamped them at
        write(2), and sends them in a SETATTR). Releases the global lock."""
        node = self._file(fh)
        if off < 0:
            raise FsError(errno.EINVAL)
        n = self.engine.write(node.data, off, buf)  # type: ignore[arg-type]
        if stamp:
            node.mtime_ns = node.ctime_ns = self.stamp_ns(node.ino, node.ctime_ns)
        return n

    def fallocate(self, ino: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) as tmpfs has it: mode 0 (allocate, extend the size),
        FALLOC_FL_KEEP_SIZE, and FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        (ranges.py). EINVAL for offset < 0 or length <= 0, EFBIG past the
        maximum file size, EOPNOTSUPP for any other mode, ENOSPC past size=
        (nothing allocated). Sets mtime and ctime, as tmpfs does on every
        success. Releases the global lock (punching a hole)."""
        node = self._file(ino)
        if offset < 0 or length <= 0:
            raise FsError(errno.EINVAL)
        # The kernel's order (vfs_fallocate, then shmem_fallocate).
        if mode & ~FALLOC_VALID or (mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE):
            raise FsError(errno.EOPNOTSUPP)
        if offset + length > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        if mode & ~FALLOC_SUPPORTED:
            raise FsError(errno.EOPNOTSUPP)
        f = node.data
        assert f is not None
        if mode & FALLOC_FL_PUNCH_HOLE:
            punch_hole(self.engine, f, offset, length)
        else:
            allocate(self.engine, f, offset, length, keep_size=bool(mode & FALLOC_FL_KEEP_SIZE))
        node.mtime_ns = node.ctime_ns = self.stamp_ns(node.ino, node.ctime_ns)

    def copy_range(self, src_ino: int, src_off: int, dst_ino: int, dst_off: int,
                   length: int) -> int:
        """copy_file_range(2): copy up to length bytes; returns the bytes
        copied, short at the source's end, 0 past it. Whole stored blocks at
        block-aligned offsets are shared, not copied (ranges.copy_range).
        EINVAL for negative offsets and for overlapping ranges of one file
        (as the kernel checks, after shortening the copy to the source's
        end); ENOSPC if nothing fits in size=. Sets the destination's mtime
        and ctime, and the source's atime (relatime). Releases the global
        lock."""
        src = self._file(src_ino)
        dst = self._file(dst_ino)
        if src_off < 0 or dst_off < 0 or length < 0:
            raise FsError(errno.EINVAL)
        size = src.data.size  # type: ignore[union-attr]
        count = 0 if src_off >= size else min(length, size - src_off)
        if src is dst and dst_off + count > src_off and dst_off < src_off + count:
            raise FsError(errno.EINVAL, "overlapping ranges of one file")
        n = copy_range(self.engine, src.data, src_off, dst.data, dst_off, count)  # type: ignore[arg-type]
        self._maybe_update_atime(src)
        if n:
            dst.mtime_ns = dst.ctime_ns = self.stamp_ns(dst.ino, dst.ctime_ns)
        return n

    # ---- directories ---------------------------------------------------
    def opendir(self, ino: int) -> int:
        self._dir(ino)
        dh = self.next_dh
        self.next_dh += 1
        self.dir_handles[dh] = (ino, [], -1)
        return dh

    def _snapshot(self, dh: int, off: int) -> tuple[Inode, list[tuple[bytes, int]], int]:
        """(directory, snapshot, entry_changes at the snapshot) of handle
        dh; offset 0 takes a new snapshot."""
        try:
            ino, snap, changes = self.dir_handles[dh]
        except KeyError:
            raise FsError(errno.EBADF, "unknown directory handle") from None
        d = self._dir(ino)
        if off == 0:
            snap = [(b".", d.ino), (b"..", d.parent)] + list(d.entries.items())  # type: ignore[union-attr]
            changes = self.entry_changes
            self.dir_handles[dh] = (ino, snap, changes)
            self._maybe_update_atime(d)
        return d, snap, changes

    def readdir(self, dh: int, off: int) -> Iterator[tuple[bytes, Inode, int]]:
        """Yield (name, inode, next offset) from offset off.

        Offset 0 takes a snapshot of the names, so a listing neither skips
        nor repeats an entry that exists throughout it, whatever is created or
        removed meanwhile. Entries removed since the snapshot are skipped.
        """
        d, snap, _changes = self._snapshot(dh, off)
        for i in range(off, len(snap)):
            name, child = snap[i]
            # d.entries each time: between two yields the directory may
            # have emptied (EMPTY_ENTRIES) and filled again (a new dict).
            if i >= 2 and d.entries.get(name) != child:  # type: ignore[union-attr]
                continue
            node = self.inodes.get(child)
            if node is None:
                continue
            yield name, node, i + 1

    def listing(self, dh: int, off: int) -> Optional[list[tuple[bytes, int]]]:
        """readdir() for a transport that packs many entries at once: the
        snapshot of handle dh, (name, inode number) pairs whose entry at
        index i has offset i + 1, taken at offset 0 as readdir() takes it.
        Only while no directory entry changed since the snapshot
        (entry_changes), so that every pair in it is live and readdir()'s
        per-entry recheck is moot; None otherwise (use readdir()). The same
        list is returned until the next snapshot; nobody may change it."""
        _d, snap, changes = self._snapshot(dh, off)
        return snap if changes == self.entry_changes else None

    def releasedir(self, dh: int) -> None:
        self.dir_handles.pop(dh, None)

    # ---- extended attributes -----------------------------------------------
    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if name.startswith(ACL_PREFIX) or not name.startswith(XATTR_PREFIXES):
            raise FsError(errno.EOPNOTSUPP, "unsupported xattr namespace")
        if name in XATTR_PREFIXES:
            raise FsError(errno.EINVAL, "empty xattr name after the prefix")
        if len(name) > NAME_MAX:
            raise FsError(errno.ERANGE, "xattr name too long")

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.get(ino)
        xattrs = self.xattrs.get(ino)
        if xattrs is None or name not in xattrs:
            if not name.startswith(XATTR_PREFIXES):
                self._check_xattr_name(name)
            raise FsError(errno.ENODATA)
        return xattrs[name]

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        node = self.get(ino)
        self._check_xattr_name(name)
        xattrs = self.xattrs.get(ino)
        if xattrs is None:
            xattrs = self.xattrs[ino] = {}
        xattrs[name] = bytes(value)
        node.ctime_ns = self.stamp_ns(node.ino, node.ctime_ns)

    def listxattr(self, ino: int) -> list[bytes]:
        self.get(ino)
        return list(self.xattrs.get(ino, ()))

    def removexattr(self, ino: int, name: bytes) -> None:
        node = self.get(ino)
        self._check_xattr_name(name)
        xattrs = self.xattrs.get(ino)
        if xattrs is None or name not in xattrs:
            raise FsError(errno.ENODATA)
        del xattrs[name]
        if not xattrs:
            del self.xattrs[ino]
        node.ctime_ns = self.stamp_ns(node.ino, node.ctime_ns)

    # ---- whole-filesystem figures ------------------------------------------
    def statfs(self) -> dict[str, int]:
        """statvfs figures in 4 KiB units, following size= and nr_inodes=.

        Free space is also capped by what the RAM budget can still hold at
        the current compression ratio.
        """
        eng = self.engine
        unit = 4096
        # What awaits only the kernel's FORGET, tmpfs has freed: counted
        # free (exact against size=; against ram= the RAM it holds until
        # FORGET still lowers the estimate below, which the native
        # transport avoids by holding a STATFS back for that FORGET).
        used = eng.alloc_bytes - (self.awaiting_forget_bytes() if self.awaiting_forget else 0)
        total = eng.size_limit
        if eng.ram_budget:
            # Capacity is also what the RAM budget can still take at the
            # current compression ratio; "used" stays the allocated pages,
            # so df agrees with du, as on tmpfs.
            c = self.store.counters
            payload = c.stored_bytes + c.device_bytes
            ratio = c.referenced_raw_bytes / payload if payload else 1.0
            ram_free = max(0, eng.ram_budget - eng.ram_in_use())
            if eng.cold is not None:
                # The device's free room counts too, less the cleaner's reserve.
                lg = eng.cold.log
                ram_free += max(0, (lg.nsegments - lg.reserve) * lg.segment_size - lg.live_bytes)
            by_ram = used + pages(int(ram_free * max(1.0, ratio)))
            total = min(total, by_ram) if total else by_ram
        free = max(0, total - used)
        files = self.nr_inodes
        return {
            "f_bsize": unit, "f_frsize": unit,
            "f_blocks": total // unit, "f_bfree": free // unit, "f_bavail": free // unit,
            "f_files": files, "f_ffree": max(0, files - self.inodes_used) if files else 0,
            "f_favail": max(0, files - self.inodes_used) if files else 0,
            "f_namemax": NAME_MAX,
        }
