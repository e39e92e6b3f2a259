"""Operations on byte ranges of file data: fallocate (allocate, punch a
hole) and copy_file_range by sharing stored blocks.

These are what a transport that speaks /dev/fuse itself can deliver
(FALLOCATE, COPY_FILE_RANGE) and llfuse cannot. Filesystem.fallocate and
Filesystem.copy_range (namespace.py) check the arguments and the inodes,
and keep the timestamps; the functions here change the block maps.

tmpfs, measured on this kernel (6.18) with a small script; the unit tests
(tests/unit/test_ranges.py) hold the same expectations:

- fallocate(mode 0 or KEEP_SIZE) allocates every page the range touches:
  they count in st_blocks and against size=, read as zeros, and are all or
  nothing (ENOSPC allocates none). Mode 0 extends the size; KEEP_SIZE may
  allocate pages past it, which a later truncate to that size or below frees.
  Here an allocated page costs no RAM: a block that has only allocated
  pages is an UNWRITTEN slot (filemap.py), with no content and no buffer.
- PUNCH_HOLE|KEEP_SIZE zeroes the range and frees the pages it covers
  whole; partly covered pages stay allocated. It never changes the size,
  and never fails for lack of space. Here a block covered whole is detached
  (its stored block unreferenced, freed with its last reference); a block
  covered in part gets the range zeroed in its content (which makes it
  dirty) and loses the pages covered whole.
- Every successful fallocate changes mtime and ctime, even one that
  allocates nothing (namespace.py).
- copy_file_range copies up to the source's end (a short count at EOF, 0
  past it), changes the destination's mtime and ctime, and refuses
  overlapping ranges of one file with EINVAL. At size= it copies what fits
  and returns the short count, ENOSPC when nothing fits.

Differences, each saving RAM or space:

- A block found all zeros at sealing becomes a hole (filemap.py). If it
  has pages allocated past its content (fallocate), it keeps its pages as
  an UNWRITTEN slot instead; a block whose allocated pages were all
  written with zeros loses them, where tmpfs keeps them.
- SEEK_DATA treats allocated pages as data when their block has content;
  tmpfs reports fallocated pages that were never written as a hole (an
  UNWRITTEN block is a hole here too: extents.py).
- copy_range leaves a whole hole (or UNWRITTEN block) of the source as a
  hole in the destination; tmpfs writes zero pages there.

Threading: runs with the global lock held. copy_range releases it (it seals
dirty source blocks and reads and writes the unaligned edges), and so does
punch_hole (to load blocks it zeroes in part); both re-check after.
allocate never releases it.
"""

from __future__ import annotations

import errno
from typing import Optional

from .blockmap import SLOT_BYTES
from .errors import FsError
from .filemap import MAX_FILE_SIZE, PAGE, SEAL_BATCH, DataEngine, FileData, Slot, page_span

#: linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_NO_HIDE_STALE = 0x04
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20
FALLOC_FL_UNSHARE_RANGE = 0x40
FALLOC_FL_WRITE_ZEROES = 0x80
#: Every mode bit vfs_fallocate knows; it refuses others with EOPNOTSUPP
#: before the size checks (the order Filesystem.fallocate keeps).
FALLOC_VALID = (FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_COLLAPSE_RANGE
                | FALLOC_FL_ZERO_RANGE | FALLOC_FL_INSERT_RANGE | FALLOC_FL_UNSHARE_RANGE
                | FALLOC_FL_WRITE_ZEROES)
#: The modes tmpfs supports (shmem_fallocate); others get EOPNOTSUPP.
FALLOC_SUPPORTED = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE

#: Bytes copy_range moves per read/write when it cannot share blocks.
COPY_CHUNK = 1 << 20


def _blocks_in(f: FileData, first: int, last: int) -> list[int]:
    """The mapped block indexes in [first, last], in order, without walking
    a huge range block by block."""
    if last - first + 1 <= f.count():
        return [i for i in range(first, last + 1) if f.slot(i) is not None]
    return [i for i in f.indexes() if first <= i <= last]


def allocate(eng: DataEngine, f: FileData, off: int, length: int, keep_size: bool) -> None:
    """fallocate(mode 0 or FALLOC_FL_KEEP_SIZE): allocate every page that
    [off, off + length) touches. Raises FsError(ENOSPC) past size=, with
    nothing allocated. Never releases the lock.

    The caller has checked off >= 0, length > 0 and the maximum size."""
    bs = eng.bs
    end = off + length
    first, last = off // bs, (end - 1) // bs
    touched = (end - 1) // PAGE - off // PAGE + 1
    have = 0   # pages of the range already allocated
    mapped = _blocks_in(f, first, last)
    for idx in mapped:
        start = idx * bs
        span = page_span(max(off, start) - start, min(end, start + bs) - start)
        have += (f.slot(idx).page_mask & span).bit_count()  # type: ignore[union-attr]
    new = touched - have
    if new and eng.size_limit and eng.alloc_bytes + PAGE * new > eng.size_limit:
        eng.counters.enospc += 1
        raise FsError(errno.ENOSPC, "size= limit reached")
    if new and not eng.size_limit and eng.ram_budget and \
            (last - first + 1 - len(mapped)) * SLOT_BYTES > eng.ram_budget - eng.ram_in_use():
        # Without size= (size=0, as tmpfs: unlimited) only RAM bounds the
        # allocation, and here an allocated page costs none: each block
        # costs its UNWRITTEN slot. Unchecked, fallocate -l 1P made 2**33
        # slots with the global lock held: the mount hung until the daemon
        # ran out of memory (tmpfs fails such a request as it runs out).
        eng.counters.enospc += 1
        raise FsError(errno.ENOSPC, "not enough RAM for the allocation's block records")
    if new:
        for idx in range(first, last + 1):
            start = idx * bs
            span = page_span(max(off, start) - start, min(end, start + bs) - start)
            slot = f.slot(idx)
            if slot is None:
                f.put(Slot(file=f, index=idx, page_mask=eng._share(span)), eng.maps)   # UNWRITTEN
                eng.unwritten_slots += 1
                grown = span.bit_count()
            else:
                grown = (span & ~slot.page_mask).bit_count()
                slot.page_mask = eng._share(slot.page_mask | span)
            if grown:
                eng._account_pages(f, grown)
    if not keep_size and end > f.size:
        f.size = end


def punch_hole(eng: DataEngine, f: FileData, off: int, length: int) -> None:
    """fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): zero
    [off, off + length), free the pages it covers whole and detach the
    blocks it covers whole. Never fails for lack of space: a block zeroed in
    part becomes dirty (RAM the sealer reclaims). Releases the global lock
    (to load the blocks zeroed in part), then applies everything without a
    release, re-checking what it loaded."""
    bs = eng.bs
    end = min(off + length, MAX_FILE_SIZE)
    first, last = off // bs, (end - 1) // bs
    while True:
        # Blocks cut in part whose content the range reaches and that are
        # not loaded: load them (this releases the lock), then look again.
        missing = []
        for idx in (first, last):
            slot = f.slot(idx)
            if slot is None or slot.raw is not None or slot.stored is None:
                continue
            start = idx * bs
            if off <= start and end >= start + bs:
                continue   # covered whole: detached, nothing to load
            if max(off, start) - start < slot.extent:
                missing.append(idx)
        if not missing:
            break
        for idx in missing:
            eng.raw_for(f, idx, mutable=True)
    now = eng.clock()
    for idx in _blocks_in(f, first, last):
        slot = f.slot(idx)
        assert slot is not None
        start = idx * bs
        bstart = max(off, start) - start
        bend = min(end, start + bs) - start
        if bstart == 0 and bend == bs:
            eng._detach(f, slot)
            continue
        # Pages covered whole are freed; those covered in part stay.
        p0 = (bstart + PAGE - 1) // PAGE
        p1 = bend // PAGE
        freed = slot.page_mask & (((1 << max(0, p1 - p0)) - 1) << p0)
        if freed:
            slot.page_mask = eng._share(slot.page_mask & ~freed)
            eng._account_pages(f, -freed.bit_count())
        if bstart < slot.extent:
            raw = slot.raw
            assert raw is not None, "punching an unloaded block"
            if bend >= slot.extent:
                new = bytes(raw[:bstart])   # the content now ends at the hole
            else:
                new = bytearray(raw)
                new[bstart:bend] = bytes(bend - bstart)
            if new:
                eng._set_dirty(slot, new, now)
            else:
                eng.make_unwritten(slot)
        if not slot.page_mask:
            # No page left allocated: its content, if any, was in freed
            # pages and is zeros now.
            eng._detach(f, slot)


def _share_block(eng: DataEngine, src: FileData, s_idx: int, dst: FileData, d_idx: int,
                 k: int) -> Optional[bool]:
    """Make the first k bytes of dst's block d_idx those of src's block
    s_idx without touching the data: a reference to the same stored block,
    or a hole for a hole. The caller ensures that k covers the source
    block's content and that dst holds nothing in the block past k.

    Returns True when done, None if the source block is dirty (not sealed)
    or a hole that would drop the destination's pages past k: the caller
    copies it instead; and False if the pages the copy
    allocates do not fit in size= (nothing is changed then). Never
    releases the lock."""
    s = src.slot(s_idx)
    old = dst.slot(d_idx)
    if s is None or (s.raw is None and s.stored is None):
        # A hole, or UNWRITTEN: zeros. The destination block becomes a
        # hole (tmpfs would write zero pages: a documented difference),
        # unless it has pages allocated past a tail copy: copy then.
        if old is not None and old.page_mask >> ((k + PAGE - 1) // PAGE):
            return None
        if old is not None:
            eng._detach(dst, old)
        return True
    block = s.stored
    if block is None:
        return None   # dirty: only a sealed block can be shared
    # Copying writes every page of the range, as on tmpfs.
    grown = page_span(0, k) & ~(old.page_mask if old is not None else 0)
    if grown and eng.size_limit and eng.alloc_bytes + PAGE * grown.bit_count() > eng.size_limit:
        return False
    eng.store.ref(block)   # first: old may hold this very block
    if old is None:
        old = Slot(file=dst, index=d_idx)
        dst.put(old, eng.maps)
    else:
        if old.raw is None and old.stored is None:
            eng.unwritten_slots -= 1   # it was UNWRITTEN
        eng.buffer.discharge(old)
        if old.stored is not None:
            eng.store.unref(old.stored)
        old.raw = None
    old.stored = block
    old.generation += 1
    eng.counters.copy_shared_blocks += 1
    if grown:
        old.page_mask = eng._share(old.page_mask | grown)
        eng._account_pages(dst, grown.bit_count())
    return True


def _seal_sources(eng: DataEngine, src: FileData, first: int, last: int) -> None:
    """Seal the dirty blocks of src in [first, last], so that they can be
    shared. Releases the global lock."""
    dirty = [s for s in (src.slot(i) for i in _blocks_in(src, first, last))
             if s is not None and s.dirty]
    for i in range(0, len(dirty), SEAL_BATCH):
        eng.seal(dirty[i:i + SEAL_BATCH])


def copy_range(eng: DataEngine, src: FileData, src_off: int, dst: FileData,
               dst_off: int, length: int) -> int:
    """copy_file_range: copy up to length bytes of src at src_off to dst at
    dst_off; returns the bytes copied (short at the source's end, 0 past it).

    Where both offsets are block-aligned and the copy covers a source block
    whole (or up to the source's end, into a destination block that holds
    nothing past the copy), the destination takes a reference to the
    source's stored block: no decompression, no compression, no payload RAM.
    Dirty source blocks are sealed first; a block still dirty after that is
    copied. Unaligned edges and partial blocks go through read and write.
    A write to either file afterwards is copy-on-write, as for dedup.

    At size= it copies what fits and returns the short count; FsError(ENOSPC)
    if nothing fits. The caller checks the arguments and same-file overlap.
    Releases the global lock.
    """
    if src_off >= src.size or length <= 0:
        return 0
    n = min(length, src.size - src_off)
    if dst_off + n > MAX_FILE_SIZE:
        raise FsError(errno.EFBIG, "copy past the maximum file size")
    bs = eng.bs
    if src_off % bs == 0 and dst_off % bs == 0:
        _seal_sources(eng, src, src_off // bs, (src_off + n - 1) // bs)
    done = 0
    full = False   # stopped at size=
    while done < n:
        s_pos, d_pos = src_off + done, dst_off + done
        if s_pos >= src.size:
            break   # the source shrank while the lock was released
        rem = min(n - done, src.size - s_pos)
        if s_pos % bs == 0 and d_pos % bs == 0:
            # A whole source block, or the source's tail block into a
            # destination that ends within the copy.
            k = min(rem, bs)
            if rem >= bs or (s_pos + rem == src.size and d_pos + rem >= dst.size):
                # False (size= is short of the block's pages): copy what fits.
                if _share_block(eng, src, s_pos // bs, dst, d_pos // bs, k):
                    done += k
                    if d_pos + k > dst.size:
                        dst.size = d_pos + k
                    continue
        # Copy through read and write, up to the next destination block
        # boundary (so that the blocks after can be shared if aligned).
        k = min(rem, COPY_CHUNK, bs - d_pos % bs if d_pos % bs else COPY_CHUNK)
        data = eng.read(src, s_pos, k)
        if not data:
            break
        try:
            w = eng.write(dst, d_pos, data)
        except FsError as e:
            if e.errno != errno.ENOSPC:
                raise
            full = True
            break
        done += w
        eng.counters.copy_copied_bytes += w
        if w < len(data):
            full = True
            break
    if full and not done:
        eng.counters.enospc += 1
        raise FsError(errno.ENOSPC, "size= limit reached")
    return done
