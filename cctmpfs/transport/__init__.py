"""Transports: how FUSE requests reach the core, and answers leave it.

Two bindings serve the same core (namespace.Filesystem), chosen with the
mount option `transport=`:

* `llfuse` (llfuse_ops.py): llfuse 1.5 on libfuse 2.9, the binding this
  project was specified with; the default.
* `native` (native.py): the kernel's FUSE protocol on /dev/fuse spoken
  directly (wire.py has the format, mounting.py the mount: mount(2) as
  root, fusermount as a user or with auto_unmount).

What is not specific to a binding is shared (frontend.py): the error
boundary, attributes, the control xattrs, request counters and stats. A
binding decodes requests and encodes answers, and nothing else.

Each binding is a session with one life: `mount()`, `serve()` until
unmounted or signalled, `close()`. `lock` is the global lock its handlers
run under, which the core and the sealer take too (docs/locking.md).

Layering: the core never imports this package, and importing it does not
load llfuse: `open_session()` imports the chosen binding only
(tests/unit/test_layering.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..options import MountOptions
from .frontend import Frontend
from .mounting import MountError

NAMES = ("llfuse", "native")

__all__ = ["NAMES", "Frontend", "MountError", "Session", "open_session"]


class Session(Protocol):
    name: str
    lock: Any   # the global lock (locking.GlobalLock)

    def mount(self, frontend: Frontend, source: str, mountpoint: str, opts: MountOptions) -> None:
        """Mount, or raise MountError with a message for the user."""

    def serve(self) -> None:
        """Answer requests until unmounted or SIGTERM/SIGINT/SIGHUP."""

    def close(self) -> None:
        """Unmount if still mounted; release the connection. Idempotent."""


def open_session(name: str) -> Session:
    """A new, unmounted session of the binding called name (one of NAMES)."""
    if name == "llfuse":
        from .llfuse_ops import LlfuseSession
        return LlfuseSession()
    if name == "native":
        from .native import NativeSession
        return NativeSession()
    raise ValueError(f"unknown transport {name!r}")
