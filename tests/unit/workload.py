"""A random namespace workload for the unit tests: one step of it at a time
(test_check.py runs it under the checker, test_inodetable.py on two
filesystems, one of them freezing its inodes)."""

from __future__ import annotations

import errno
import random
import stat as S

from cctmpfs.errors import FsError
from cctmpfs.namespace import Caller, Filesystem

ME = Caller(uid=1000, gid=1000, pid=42)


def random_step(fs: Filesystem, rng: random.Random, dirs: list[int]) -> None:
    parent, other = rng.choice(dirs), rng.choice(dirs)
    name, name2 = rng.choice([b"a", b"b", b"c"]), rng.choice([b"a", b"b", b"c"])
    op = rng.randrange(14)
    try:
        if op == 0:
            dirs.append(fs.mkdir(parent, name, 0o755, ME).ino)
        elif op == 1:
            ino = fs.create(parent, name, 0o644, ME).ino
            fs.write(ino, rng.randrange(40000), b"y" * rng.randrange(1, 20000))
            fs.release(ino)
            if rng.random() < 0.7:
                fs.forget(ino, 1)
        elif op == 2:
            node = fs.lookup(parent, name)
            fs.link(node.ino, other, name2)
        elif op == 3:
            fs.unlink(parent, name)
        elif op == 4:
            fs.rmdir(parent, name)
        elif op == 5:
            fs.rename(parent, name, other, name2)
        elif op == 6:
            node = fs.symlink(parent, name, b"target-%d" % rng.randrange(1000), ME)
            if rng.random() < 0.7:   # the kernel forgets it: an unlink frees it
                fs.forget(node.ino, 1)
        elif op == 7:
            node = fs.mknod(parent, name, S.S_IFCHR | 0o600, rng.randrange(1 << 20), ME)
            if rng.random() < 0.7:
                fs.forget(node.ino, 1)
        elif op == 8:   # a lookup the kernel forgets later, or at once
            node = fs.lookup(parent, name)
            if rng.random() < 0.5:
                fs.forget(node.ino, node.nlookup)
        elif op == 9:
            node = fs.lookup(parent, name)
            fs.setattr(node.ino, mode=rng.randrange(0o7777), uid=rng.randrange(5000),
                       mtime_ns=rng.randrange(-10 ** 18, 10 ** 18), size=rng.randrange(30000)
                       if node.data is not None else None)
        elif op == 10:
            node = fs.lookup(parent, name)
            fs.setxattr(node.ino, b"user.k", b"v%d" % rng.randrange(9))
        elif op == 11:   # churn: short-lived files, freed at once
            for i in range(rng.randrange(1, 6)):
                fs.forget(fs.mknod(parent, b"t%d" % i, S.S_IFREG | 0o600, 0, ME).ino, 1)
                fs.unlink(parent, b"t%d" % i)
        elif op == 12:
            ino = fs.lookup(parent, name).ino
            fh = fs.open(ino)
            fs.read(fh, 0, 100)
            fs.release(fh)
        else:
            fs.engine.seal_everything()
    except FsError as e:
        assert e.errno in (errno.EEXIST, errno.ENOENT, errno.ENOTEMPTY, errno.EISDIR,
                           errno.ENOTDIR, errno.EINVAL, errno.EPERM, errno.ENOSPC,
                           errno.ENODATA, errno.EOPNOTSUPP), e
    dirs[:] = [i for i in dirs if i in fs.inodes and fs.inodes[i].nlink > 0]
