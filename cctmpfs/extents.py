"""Where a file has data and where it has holes: lseek(SEEK_DATA / SEEK_HOLE).

tmpfs answers these at page granularity (mapping_seek_hole_data): a page
that was ever written is data, an absent one is a hole. Here a slot's
`page_mask` records exactly those pages, so the answer is the same, except
for one difference that only saves RAM: a block found all zeros at sealing
becomes a hole (filemap.py), where tmpfs keeps the written zero pages.

Pages allocated by fallocate and never written are holes, as on tmpfs
(measured: after a 100-byte write and fallocate(0, 20000), SEEK_HOLE from 0
gives 4096): here they are the pages past a slot's extent, and the whole of
an UNWRITTEN slot (ranges.py).

Threading: runs with the global lock held, never releases it.
"""

from __future__ import annotations

import errno

from .errors import FsError
from .filemap import PAGE, FileData

SEEK_DATA = 3   # linux/fs.h whence values
SEEK_HOLE = 4


def seek(f: FileData, block_size: int, off: int, whence: int) -> int:
    """The offset lseek(fd, off, whence) returns for SEEK_DATA or SEEK_HOLE.

    ENXIO when off is at or past the end (either whence), or when SEEK_DATA
    finds no data after off; a SEEK_HOLE that finds none returns the size
    (the implicit hole at the end of every file)."""
    size = f.size
    if off < 0 or whence not in (SEEK_DATA, SEEK_HOLE):
        raise FsError(errno.EINVAL)
    if off >= size:
        raise FsError(errno.ENXIO)
    want_data = whence == SEEK_DATA
    pages_per_block = block_size // PAGE
    page = off // PAGE
    last_page = (size - 1) // PAGE
    while page <= last_page:
        idx, first = divmod(page, pages_per_block)
        slot = f.slot(idx)
        # Pages past the extent are allocated but unwritten: holes.
        mask = (slot.page_mask & ((1 << (slot.extent + PAGE - 1) // PAGE) - 1)) >> first \
            if slot is not None else 0
        if want_data:
            if mask:
                page += (mask & -mask).bit_length() - 1   # lowest set bit
                return max(off, page * PAGE)
        else:
            holes = ~mask & ((1 << (pages_per_block - first)) - 1)
            if holes:
                page += (holes & -holes).bit_length() - 1
                return min(size, max(off, page * PAGE))
        page = (idx + 1) * pages_per_block
    if want_data:
        raise FsError(errno.ENXIO)
    return size
