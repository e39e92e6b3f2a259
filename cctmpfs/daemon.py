"""Mount lifecycle: build the filesystem, mount it, serve, unmount cleanly.

Without -f the command forks: the child becomes the daemon, mounts, and
reports "ok" or an error through a pipe; the parent returns only once the
mount answers a stat(), so scripts and mount(8) can use it at once. Any
failure before that leaves nothing mounted and exits non-zero with one line
naming the problem.

Threading: the transport's session serves requests under its global lock
(llfuse: `workers` handler threads under llfuse.lock; native: one reader
thread, docs/locking.md); the Sealer adds one background thread that takes
the same lock.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
import sys
import time
from typing import Any, Callable

from . import faults
from .cipher import RecordCipher
from .codec import Codec
from .coldstore import ColdStore
from .device import Device, DeviceError
from .devlog import SEGMENT_SIZE, SegmentLog
from .memtrim import rss_bytes, tune_malloc
from .namespace import Filesystem
from .options import MountOptions
from .pools import PoolTrimmer
from .sealer import Sealer
from .transport import Frontend, MountError, open_session

log = logging.getLogger(__name__)

#: A backing device smaller than this many segments is refused: the log
#: needs room to evict, one segment in reserve for the cleaner, and slack.
MIN_BACKING_SEGMENTS = 8
#: How long the parent waits for the daemon to mount and answer.
MOUNT_WAIT_SECONDS = 30.0
#: How long the exit waits for the global lock to discard the backing device.
#: Every other thread has stopped by then, so only a thread stuck holding it
#: (a bug) makes it wait; the exit then skips the discard rather than hang.
EXIT_LOCK_SECONDS = 10.0


def check_mountpoint(mountpoint: str) -> None:
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist") from None
    except OSError as e:
        raise MountError(f"mount point {mountpoint}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {mountpoint} is not a directory")


def build(opts: MountOptions, lock: object) -> Filesystem:
    return Filesystem(
        block_size=opts.block_size, codec=Codec(opts.codec, opts.level, opts.recompress_level),
        size_limit=opts.size_bytes, nr_inodes=opts.nr_inodes, ram_budget=opts.ram_bytes,
        buffer_bytes=opts.buffer_bytes, root_mode=opts.root_mode, root_uid=opts.root_uid,
        root_gid=opts.root_gid, dedup=opts.dedup, pack=opts.pack, pack_bytes=opts.pack_bytes,
        lock=lock)  # type: ignore[arg-type]


class KmsgHandler(logging.Handler):
    """Writes records to the kernel log (/dev/kmsg: dmesg, and the journal),
    one write per record, with its syslog priority."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                  logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, path: str = "/dev/kmsg") -> None:
        super().__init__()
        self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            pri = self.PRIORITIES.get(record.levelno, 6)
            for line in self.format(record).splitlines() or [""]:
                # The kernel keeps at most ~1 KiB per record.
                os.write(self.fd, f"<{pri}>{line}"[:1000].encode(errors="replace") + b"\n")
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)

    def close(self) -> None:
        try:
            os.close(self.fd)
        finally:
            super().close()


def _setup_daemon_logging(debug: bool) -> None:
    """Log to syslog (the journal under systemd), never to a terminal. Where
    there is no syslog socket (a container, an early boot), to the kernel
    log; only if that is closed too, nowhere."""
    root = logging.getLogger()
    root.handlers.clear()
    fmt = logging.Formatter("cctmpfs[%(process)d]: %(name)s: %(message)s")
    handler: logging.Handler
    if os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        try:
            handler = KmsgHandler()
        except OSError:
            handler = logging.NullHandler()
    handler.setFormatter(fmt)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def serve(source: str, mountpoint: str, opts: MountOptions, ready: Callable[[str], None]) -> int:
    """Mount and run the main loop until unmounted. Calls ready("ok") once mounted,
    or ready("error: ...") if mounting failed."""
    tune_malloc()
    pool_trimmer = PoolTrimmer.install()   # before the first file's metadata: it knows new arenas only
    faults.arm_from_environment()   # test-only (tests/mounted); unset everywhere else
    session = open_session(opts.transport)
    fs = build(opts, session.lock)
    device = None
    if opts.backing is not None:
        try:
            device = Device.open(opts.backing, create_size=opts.backing_size,
                                 min_size=MIN_BACKING_SEGMENTS * SEGMENT_SIZE)
        except DeviceError as e:
            ready(f"error: {e}")
            return 1
        fs.engine.attach_cold(ColdStore(device, SegmentLog(device.size),
                                        RecordCipher() if opts.backing_encrypt else None))
    frontend = Frontend(fs)
    sealer = Sealer(fs.engine, session.lock, on_error=lambda e: frontend.count_internal_error(),
                    idle_priority=opts.seal_idle, pool_trimmer=pool_trimmer)
    frontend.extra_stats = lambda: {"malloc_trims": sealer.trimmer.trims,
                                    "malloc_trim_freed_bytes": sealer.trimmer.freed_bytes,
                                    "pymalloc_pools": pool_trimmer.stats(),
                                    "idle_dropped_context_bytes": sealer.dropped_context_bytes,
                                    # Sealer batches compressed at SCHED_IDLE and at normal priority.
                                    "seal_batches_idle": sealer.idle_batches,
                                    "seal_batches_normal": sealer.normal_batches}
    frontend.background_busy = lambda: sealer.working
    frontend.pymalloc_free = pool_trimmer.free_room
    try:
        session.mount(frontend, source, mountpoint, opts)
    except MountError as e:
        ready(f"error: {e}")
        if device is not None:
            device.close()
        return 1
    log.info("mounted %s on %s (transport=%s, %s)", source, mountpoint, opts.transport,
             ",".join(opts.fuse_options))
    frontend.runtime_rss = rss_bytes()   # before any file: the base of stats' memory breakdown
    pool_trimmer.mark_mounted()          # and of pymalloc's room in it
    sealer.start()
    ready("ok")
    code = 0
    try:
        session.serve()
    except Exception:
        log.exception("main loop ended with an error")
        code = 1
    finally:
        sealer.stop()
        session.close()
        if device is not None:
            discard_backing(fs, session.lock)
            device.close()
        log.info("unmounted %s", mountpoint)
    return code


def discard_backing(fs: Filesystem, lock: Any) -> None:
    """At exit, after the unmount: discard the backing device's used area,
    whose contents nobody can ask for any more (DataEngine.discard_device).
    Takes the global lock (the transport's: llfuse.lock or a threading.Lock,
    both with a timeout), which that releases around the I/O. Never raises:
    the exit goes on whatever happens."""
    if not lock.acquire(timeout=EXIT_LOCK_SECONDS):
        log.warning("the backing device was not discarded at exit: the global lock stayed busy")
        return
    try:
        fs.engine.discard_device()
    except Exception:  # noqa: BLE001 - the exit must finish; the data is volatile anyway
        log.exception("discarding the backing device at exit failed")
    finally:
        lock.release()


def run(source: str, mountpoint: str, opts: MountOptions, *, foreground: bool,
        debug: bool = False) -> int:
    """The `cctmpfs SOURCE MOUNTPOINT` command. Returns the exit status."""
    # The real path, as the mount table will show it: the unmount finds its
    # own mount there (mounting.mounted_device), also through a symlinked home.
    mountpoint = os.path.realpath(mountpoint)
    try:
        check_mountpoint(mountpoint)
    except MountError as e:
        print(f"cctmpfs: {e}", file=sys.stderr)
        return 1
    if foreground:
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")

        def ready(msg: str) -> None:
            if msg != "ok":
                print(f"cctmpfs: {msg.removeprefix('error: ')}", file=sys.stderr)

        return serve(source, mountpoint, opts, ready)

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(r)
        try:
            os.setsid()
            os.chdir("/")
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            _setup_daemon_logging(debug)

            def ready(msg: str) -> None:
                os.write(w, msg.encode() + b"\n")
                os.close(w)

            code = serve(source, mountpoint, opts, ready)
        except BaseException:  # noqa: BLE001
            logging.getLogger(__name__).exception("daemon failed")
            code = 1
        os._exit(code)

    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        msg = pipe.readline().decode(errors="replace").strip()
    if msg != "ok":
        os.waitpid(pid, 0)
        text = msg.removeprefix("error: ") or "the daemon exited before mounting (see syslog)"
        print(f"cctmpfs: {text}", file=sys.stderr)
        return 1
    # Mounted: wait until the daemon answers, so the caller can use it at once.
    deadline = time.monotonic() + MOUNT_WAIT_SECONDS
    while True:
        try:
            os.stat(mountpoint)
            return 0
        except OSError as e:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                print(f"cctmpfs: {mountpoint} mounted but not answering: {e.strerror}",
                      file=sys.stderr)
                return 1
            time.sleep(0.05)
