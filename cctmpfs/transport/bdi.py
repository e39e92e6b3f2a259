"""The mount's backing-device info (/sys/class/bdi/MAJOR:MINOR): the knobs
of the kernel's page cache for one FUSE mount that the daemon sets itself,
as root, after mounting. A user mount (no write access to sysfs) keeps the
kernel's defaults; each setter says so in the log, and returns 0 or, for
the dirty limit, the kernel's own bound.

Threading: called by the main thread while mounting, or by the reader right
after INIT.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

log = logging.getLogger(__name__)

#: The bdi's sysfs directory (linux: fuse_bdi_init names it MAJOR:MINOR).
BDI_DIR = "/sys/class/bdi"


def _write(device: Optional[str], settings: list[tuple[str, str]], read_back: str,
           why: str) -> int:
    """Write each (file, value) of the bdi's directory in order, then read
    read_back as an int. 0 when the device is unknown or a write failed."""
    if not device:
        log.warning("%s: mount device unknown, left as the kernel set it", why)
        return 0
    base = os.path.join(BDI_DIR, device)
    try:
        for name, value in settings:
            with open(os.path.join(base, name), "w") as f:
                f.write(value)
        with open(os.path.join(base, read_back)) as f:
            return int(f.read())
    except OSError as e:
        log.warning("%s: cannot set %s: %s", why, base, e.strerror)
        return 0


def _read_int(device: str, name: str) -> int:
    with open(os.path.join(BDI_DIR, device, name)) as f:
        return int(f.read())


def set_dirty_limit(device: Optional[str], limit: int) -> int:
    """Bound the dirty bytes of the mount's bdi to limit, strictly (the
    writeback cache's reserve, writeback.py). Returns the bound in force:
    what the kernel took (it rounds to its ratio); where it cannot be set
    (a user mount: sysfs is root's, but readable), the kernel's own bound,
    which FUSE makes strict with max_ratio 1% (47.8 MB on this 24 GiB
    machine); 0 if no strict bound holds."""
    took = _write(device, [("strict_limit", "1"), ("max_bytes", str(limit))], "max_bytes",
                  "writeback cache dirty limit")
    if took or not device:
        return took
    try:
        if _read_int(device, "strict_limit") == 1:
            kernels = _read_int(device, "max_bytes")
            log.info("writeback cache dirty limit: the kernel's, %d bytes", kernels)
            return kernels
    except (OSError, ValueError) as e:
        log.warning("writeback cache dirty limit: cannot read it: %s", e)
    log.warning("writeback cache: the kernel's dirty data for this mount is not bounded")
    return 0


def set_read_ahead(device: Optional[str], kb: int) -> int:
    """Let the kernel read ahead kb KiB of a file read sequentially. It must
    come after INIT's answer: the kernel then clamps the bdi's read-ahead to
    INIT's max_readahead and to its own default of 128 KiB. Returns the
    read-ahead in force (KiB), or 0 if it could not be set."""
    return _write(device, [("read_ahead_kb", str(kb))], "read_ahead_kb", "read-ahead")
