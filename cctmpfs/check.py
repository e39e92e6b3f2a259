"""The invariant checker of the data engine and block store, like an fsck of
the in-memory state: every counter is recomputed from the file block maps
and compared with the one the code keeps.

It returns a list of violations (empty when all is well) instead of raising,
so that a running mount can report them all at once.

Threading: the checks read shared state and must run with the global lock
held; they never release it.
"""

from __future__ import annotations

import stat

from .arena import LEN_MASK, OFF_MASK, OFF_SHIFT, SEG_MASK, SEG_SHIFT
from .blockmap import MapCensus
from .blockstore import StoredBlock
from .codec import CodecId
from .devlog import Location
from .filemap import PAGE, FileData, Slot
from .namespace import EMPTY_ENTRIES, NAME_MAX, ROOT_INO, Filesystem
from .packedentries import PackedEntries
from .packing import PackRef

#: Version of the report a mount gives (transport.Frontend.check); changes
#: when a field of it is renamed or changes meaning.
CHECK_VERSION = 1


def check_all(fs: Filesystem) -> list[str]:
    """Every invariant: the namespace, then the data."""
    return check_namespace(fs) + check_data(fs)


def check_namespace(fs: Filesystem) -> list[str]:
    """Directory entries against link counts, parents, kinds and limits."""
    bad: list[str] = []
    # A snapshot: frozen inodes get transient records, none is thawed.
    inodes = dict(fs.inodes.items())
    root = inodes.get(ROOT_INO)
    if root is None or root.entries is None:
        return ["the root directory is missing"]
    names_of: dict[int, int] = {}        # inode -> directory entries naming it
    parents_of: dict[int, list[int]] = {}   # directory -> directories holding it
    for ino, node in inodes.items():
        kind = stat.S_IFMT(node.mode)
        if (kind == stat.S_IFDIR) != (node.entries is not None) or \
                (kind == stat.S_IFREG) != (node.data is not None) or \
                (kind == stat.S_IFLNK) != (node.target is not None):
            bad.append(f"inode {ino}: fields do not match its type {kind:o}")
        if node.entries is None:
            continue
        for name, child in node.entries.items():
            if not name or b"/" in name or b"\0" in name or name in (b".", b"..") or len(name) > NAME_MAX:
                bad.append(f"directory {ino}: invalid name {name!r}")
            target = inodes.get(child)
            if target is None:
                bad.append(f"directory {ino}: {name!r} names missing inode {child}")
                continue
            names_of[child] = names_of.get(child, 0) + 1
            if target.entries is not None:
                parents_of.setdefault(child, []).append(ino)
    extra = 0
    for ino, node in inodes.items():
        names = names_of.get(ino, 0)
        if node.entries is not None:
            subdirs = sum(1 for c in node.entries.values()
                          if c in inodes and inodes[c].entries is not None)
            parents = parents_of.get(ino, [])
            if ino == ROOT_INO:
                want = 2 + subdirs
                if parents:
                    bad.append(f"the root is named in directories {parents}")
            elif node.nlink == 0:
                want = 0   # removed, kept alive by the kernel's references
                if parents:
                    bad.append(f"removed directory {ino} is still named in {parents}")
            else:
                want = 2 + subdirs
                if parents != [node.parent]:
                    bad.append(f"directory {ino}: parent {node.parent}, named in {parents}")
            if node.nlink != want:
                bad.append(f"directory {ino}: nlink {node.nlink}, want {want}")
        else:
            if node.nlink != names:
                bad.append(f"inode {ino}: nlink {node.nlink}, {names} directory entries")
            extra += max(0, names - 1)
        opens = fs.opens(ino)
        if node.nlink == 0 and node.nlookup <= 0 and opens <= 0 and ino != ROOT_INO:
            bad.append(f"inode {ino}: unlinked, unreferenced and not freed")
        if node.nlookup < 0 or opens < 0:
            bad.append(f"inode {ino}: negative count (lookups {node.nlookup}, opens {opens})")
    if fs.extra_links != extra:
        bad.append(f"extra_links {fs.extra_links}, hard links beyond the first add up to {extra}")
    # Every directory still linked is reachable from the root.
    seen, todo = {ROOT_INO}, [ROOT_INO]
    while todo:
        for c in inodes[todo.pop()].entries.values():  # type: ignore[union-attr]
            n = inodes.get(c)
            if n is not None and n.entries is not None and c not in seen:
                seen.add(c)
                todo.append(c)
    lost = [i for i, n in inodes.items() if n.entries is not None and n.nlink > 0 and i not in seen]
    if lost:
        bad.append(f"directories not reachable from the root: {lost[:10]}")
    if fs.nr_inodes and fs.inodes_used > fs.nr_inodes:
        bad.append(f"{fs.inodes_used} inodes in use, nr_inodes={fs.nr_inodes}")
    bad += _check_census(fs)
    bad += _check_side_tables(fs)
    bad += _check_inode_table(fs)
    return bad


def _check_inode_table(fs: Filesystem) -> list[str]:
    """The inode table (inodetable.py): hot records only for live rows,
    kind objects only in frozen rows (a hot row's lives in its record),
    and the live and free counts."""
    t = fs.inodes
    bad: list[str] = []
    live = sum(t.state[1:t.top])
    if live != t.live or t.top - 1 - live != t.free:
        bad.append(f"inode table: {live} live rows of {t.top - 1}, counted {t.live} live "
                   f"and {t.free} free")
    if any(t.state[t.top:]) or any(o is not None for o in t.obj[t.top:]):
        bad.append("inode table: rows past its top are in use")
    for ino in dict.keys(t):
        if ino not in t:
            bad.append(f"inode table: a record for free row {ino}")
        elif t.obj[ino] is not None:
            bad.append(f"inode table: hot inode {ino} keeps an object in its row")
    modes = t.cols["mode"]
    kind_objects = {stat.S_IFDIR: (PackedEntries, type(EMPTY_ENTRIES)), stat.S_IFREG: (FileData,),
                    stat.S_IFLNK: (bytes,)}
    for ino in range(1, t.top):
        obj = t.obj[ino]
        if not t.state[ino]:
            if obj is not None:
                bad.append(f"inode table: free row {ino} keeps an object")
            continue
        if t.is_hot(ino):
            continue
        kind = stat.S_IFMT(modes[ino])
        want = kind_objects.get(kind, (type(None),))
        if type(obj) not in want:
            bad.append(f"inode table: frozen inode {ino} of type {kind:o} keeps a "
                       f"{type(obj).__name__}")
    return bad


def _check_side_tables(fs: Filesystem) -> list[str]:
    """What is kept beside the inodes: xattrs and open counts only for live
    inodes that have some, empty directories on the shared EMPTY_ENTRIES
    (and it still empty), and shared ints equal to their values."""
    bad: list[str] = []
    inodes = dict(fs.inodes.items())
    for ino, xattrs in fs.xattrs.items():
        if ino not in inodes:
            bad.append(f"xattrs of freed inode {ino}")
        elif not xattrs:
            bad.append(f"inode {ino}: an empty xattr table is kept")
    for ino, count in fs.open_counts.items():
        node = inodes.get(ino)
        if node is None:
            bad.append(f"open count {count} of freed inode {ino}")
        elif node.data is None or count <= 0:
            bad.append(f"inode {ino}: open count {count} kept for mode {node.mode:o}")
    unreachable = {ino for ino, node in inodes.items()
                   if node.nlink == 0 and ino not in fs.open_counts and ino != ROOT_INO}
    if fs.awaiting_forget != unreachable:
        bad.append(f"awaiting_forget {sorted(fs.awaiting_forget)[:10]}, inodes with no name "
                   f"and no handle {sorted(unreachable)[:10]}")
    if EMPTY_ENTRIES:
        bad.append(f"the shared EMPTY_ENTRIES holds {len(EMPTY_ENTRIES)} entries")
    for ino, node in inodes.items():
        if node.entries is not None and not node.entries and node.entries is not EMPTY_ENTRIES:
            bad.append(f"directory {ino}: empty, with a dict of its own")
    if any(type(v) is not int or k != v for k, v in fs.shared_ints.table.items()):
        bad.append("a shared int differs from its value")
    return bad


def _check_census(fs: Filesystem) -> list[str]:
    """The live counts stats.py estimates RAM from, against the inodes."""
    want = {"files": 0, "dirs": 0, "empty_dirs": 0, "entries": 0, "name_bytes": 0}
    for node in fs.inodes.values():
        if node.data is not None:
            want["files"] += 1
        if node.entries is not None:
            want["dirs"] += 1
            want["empty_dirs"] += not node.entries
            want["entries"] += len(node.entries)
            want["name_bytes"] += sum(len(name) for name in node.entries)
        if node.target is not None:
            want["name_bytes"] += len(node.target)
    return [f"census {k} {getattr(fs.census, k)}, the inodes add up to {v}"
            for k, v in want.items() if getattr(fs.census, k) != v]


def check_data(fs: Filesystem) -> list[str]:
    """Block maps against allocation, the hot buffer, references, and the index."""
    eng, store = fs.engine, fs.store
    bad: list[str] = []
    refs: dict[int, int] = {}          # id(block) -> slots referring to it
    blocks: dict[int, StoredBlock] = {}     # id(block) -> block
    buffered: set[int] = set()
    total_alloc = 0
    unwritten = 0
    maps = MapCensus()
    for ino, node in fs.inodes.items():
        f = node.data
        if f is None:
            continue
        alloc = 0
        m = f.map
        if type(m) is dict:
            maps.dicts += 1
            maps.dict_slots += len(m)
            if len(m) < 2:
                bad.append(f"inode {ino}: block map is a dict of {len(m)} (one slot or None wanted)")
        elif m is not None and type(m) is not Slot:
            bad.append(f"inode {ino}: block map is a {type(m).__name__}")
        for idx, slot in f.blocks.items():
            where = f"inode {ino} block {idx}"
            if slot.file is not f or slot.index != idx:
                bad.append(f"{where}: slot does not point back at its file")
            if slot.raw is None and slot.stored is None:
                # UNWRITTEN: fallocated pages without content (filemap.py)
                unwritten += 1
                if slot.extent or not slot.page_mask:
                    bad.append(f"{where}: neither raw nor stored, extent {slot.extent}, "
                               f"pages {slot.page_mask:#x}")
            elif not 0 < slot.extent <= eng.bs:
                bad.append(f"{where}: extent {slot.extent} out of range")
            if slot.raw is not None:
                buffered.add(id(slot))
            b = slot.stored
            if b is not None:
                blocks[id(b)] = b
                refs[id(b)] = refs.get(id(b), 0) + 1
                # The extent is the raw copy's length: a CACHED copy must
                # have the stored block's.
                if slot.raw is not None and b.raw_len != len(slot.raw):
                    bad.append(f"{where}: stored length {b.raw_len} != raw length {len(slot.raw)}")
            # Pages past the extent are allowed: fallocate allocates them
            # without content. None past the block, nor past the size's
            # page unless fallocate(KEEP_SIZE) put it there.
            if slot.page_mask >> (eng.bs // PAGE):
                bad.append(f"{where}: page allocated past the block")
            if slot.extent and idx * eng.bs + slot.extent > f.size:
                bad.append(f"{where}: content past the file size {f.size}")
            alloc += PAGE * slot.page_mask.bit_count()
        if f.alloc_bytes != alloc:
            bad.append(f"inode {ino}: alloc_bytes {f.alloc_bytes} != {alloc} from its pages")
        total_alloc += alloc
    if (eng.maps.dicts, eng.maps.dict_slots) != (maps.dicts, maps.dict_slots):
        bad.append(f"engine map census {eng.maps.dicts} dicts of {eng.maps.dict_slots} slots, "
                   f"the files hold {maps.dicts} of {maps.dict_slots}")
    if eng.unwritten_slots != unwritten:
        bad.append(f"engine unwritten_slots {eng.unwritten_slots} != {unwritten} UNWRITTEN slots")
    if eng.alloc_bytes != total_alloc:
        bad.append(f"engine alloc_bytes {eng.alloc_bytes} != {total_alloc} over all files")
    bad += _check_buffer(fs, buffered)
    bad += _check_store(fs, blocks, refs)
    return bad


def _check_buffer(fs: Filesystem, buffered: set[int]) -> list[str]:
    buf = fs.engine.buffer
    bad = []
    in_buffer = {id(s) for s in buf.slots}
    if in_buffer != buffered:
        bad.append(f"hot buffer holds {len(in_buffer)} slots, {len(buffered)} have raw copies")
    wrong = [s for s, e in buf.slots.items() if s.raw is None or e.charged != len(s.raw)]
    if wrong:
        bad.append(f"{len(wrong)} buffered slots charged for another length, e.g. {wrong[0]!r}")
    dirty = sum(e.charged for s, e in buf.slots.items() if s.dirty)
    clean = sum(e.charged for s, e in buf.slots.items() if not s.dirty)
    if (buf.dirty_bytes, buf.clean_bytes) != (dirty, clean):
        bad.append(f"hot buffer counts dirty/clean {buf.dirty_bytes}/{buf.clean_bytes}, "
                   f"slots add up to {dirty}/{clean}")
    return bad


def _check_store(fs: Filesystem, blocks: dict[int, StoredBlock], refs: dict[int, int]) -> list[str]:
    store = fs.store
    c = store.counters
    bad = []
    live = list(blocks.values())   # what the slots refer to: blocks and pack members
    for b in live:
        if b.refs != refs[id(b)]:
            bad.append(f"{b!r}: refs {b.refs} but {refs[id(b)]} slots")
        if b.recompressed and b.codec != CodecId.ZSTD:
            bad.append(f"{b!r}: recompressed but its codec is not zstd")
    members = [b for b in live if b.packed]
    bad += _check_packs(fs, members)
    # The blocks with a payload of their own: the plain ones and the packs.
    packs = {id(b.payload.pack): b.payload.pack for b in members}  # type: ignore[union-attr]
    held = [b for b in live if not b.packed] + list(packs.values())
    in_ram = [b for b in held if b.in_ram]
    on_device = [b for b in held if not b.in_ram]
    want = {
        "blocks": len(held),
        "stored_bytes": sum(b.payload_len for b in in_ram),
        "device_blocks": len(on_device),
        "device_bytes": sum(b.payload.length for b in on_device),  # type: ignore[union-attr]
        "raw_bytes": sum(b.raw_len for b in held),
        "incompressible_blocks": sum(1 for b in held if b.codec == CodecId.RAW),
        "recompressed_blocks": sum(1 for b in held if b.recompressed),
        "refs": sum(refs.values()),
        "referenced_raw_bytes": sum(b.raw_len * refs[id(b)] for b in live),
    }
    for name, value in want.items():
        if getattr(c, name) != value:
            bad.append(f"store counter {name} = {getattr(c, name)}, blocks add up to {value}")
    # The index: every entry is a live block under its own fingerprint, and
    # every live fingerprinted block is indexed or counted as unindexed.
    live_ids = {id(b) for b in live}
    for fp, b in store.index.items():
        if id(b) not in live_ids:
            bad.append(f"index entry {fp:#x} points at a block no file uses: {b!r}")
        elif b.fingerprint != fp:
            bad.append(f"index entry {fp:#x} points at a block with fingerprint {b.fingerprint!r}")
    unindexed = 0
    for b in live:
        fp = b.fingerprint
        if fp is None:
            if store.dedup:
                bad.append(f"{b!r}: no fingerprint although dedup is on")
        elif store.index.get(fp) is not b:
            unindexed += 1
    if not store.dedup and store.index:
        bad.append(f"dedup is off but the index has {len(store.index)} entries")
    if c.unindexed_blocks != unindexed:
        bad.append(f"store counter unindexed_blocks = {c.unindexed_blocks}, blocks add up to {unindexed}")
    if store.ram_order is not None and set(map(id, store.ram_order)) != set(map(id, in_ram)):
        bad.append(f"RAM recency list holds {len(store.ram_order)} blocks, {len(in_ram)} are in RAM")
    bad += _check_arena(fs, in_ram)
    bad += _check_device(fs, on_device)
    return bad


def _check_packs(fs: Filesystem, members: list[StoredBlock]) -> list[str]:
    """Packs (packing.py) against the members the files refer to: every
    live pack is referenced by its members and by nothing else, its refs
    are its members, their slices lie inside it without overlapping, and
    its live bytes, the packer's totals and the decoded cache add up."""
    packer = fs.packer
    bad: list[str] = []
    by_pack: dict[int, list[StoredBlock]] = {}
    for m in members:
        ref = m.payload
        if type(ref) is not PackRef:
            bad.append(f"{m!r}: a pack member whose payload is not a PackRef")
            continue
        if ref.pack not in packer.packs:
            bad.append(f"{m!r}: its pack is not a live pack")
            continue
        by_pack.setdefault(id(ref.pack), []).append(m)
    for pack, info in packer.packs.items():
        ms = sorted(by_pack.get(id(pack), []), key=lambda m: m.payload.offset)  # type: ignore[union-attr]
        if pack.refs != len(ms):
            bad.append(f"pack {pack!r}: refs {pack.refs}, {len(ms)} members referenced")
        if pack.packed or pack.fingerprint is not None:
            bad.append(f"pack {pack!r}: a member, or fingerprinted")
        if pack.raw_len != info.raw_len:
            bad.append(f"pack {pack!r}: {pack.raw_len} bytes decoded, its record says {info.raw_len}")
        spans = [(m.payload.offset, m.payload.offset + m.payload.raw_len, m) for m in ms]  # type: ignore[union-attr]
        for s0, e0, m in spans:
            if s0 < 0 or e0 > info.raw_len or e0 <= s0:
                bad.append(f"pack {pack!r}: member {m!r} outside it")
        for (_a0, a1, ma), (b0, _b1, mb) in zip(spans, spans[1:]):
            if a1 > b0:
                bad.append(f"pack {pack!r}: members {ma!r} and {mb!r} overlap")
        live = sum(e - s for s, e, _m in spans)
        if info.live_bytes != live:
            bad.append(f"pack {pack!r}: live_bytes {info.live_bytes}, its members add up to {live}")
        missing = {id(m) for m in ms} - {id(m) for m in info.members}
        if missing:
            bad.append(f"pack {pack!r}: {len(missing)} members missing from its member list")
    totals = {
        "members": sum(len(v) for v in by_pack.values()),
        "live_bytes": sum(i.live_bytes for i in packer.packs.values()),
        "raw_bytes": sum(i.raw_len for i in packer.packs.values()),
    }
    for name, value in totals.items():
        if getattr(packer, name) != value:
            bad.append(f"packer {name} = {getattr(packer, name)}, the packs add up to {value}")
    cached = sum(len(d) for d, _t in packer.cache.values())
    if fs.engine.buffer.pack_cache_bytes != cached:
        bad.append(f"hot buffer counts {fs.engine.buffer.pack_cache_bytes} bytes of decoded packs, "
                   f"the cache holds {cached}")
    stale = [p for p in packer.cache if p not in packer.packs]
    if stale:
        bad.append(f"{len(stale)} freed packs still in the decoded cache")
    return bad


def _check_arena(fs: Filesystem, in_ram: list[StoredBlock]) -> list[str]:
    """The payload arena against the blocks in RAM: every live payload inside
    one segment's filled part, referenced by one block, no two overlapping;
    each segment's live bytes and count, and the totals, add up; the free
    space is accounted (mapped = live + free); no empty segment is kept."""
    arena = fs.store.arena
    bad: list[str] = []
    spans: dict[int, list[tuple[int, int, StoredBlock]]] = {}
    for b in in_ram:
        h: int = b.payload  # type: ignore[assignment]
        sid, off, n = h >> SEG_SHIFT & SEG_MASK, h >> OFF_SHIFT & OFF_MASK, h & LEN_MASK
        seg = arena.segments.get(sid)
        if seg is None:
            bad.append(f"{b!r}: payload in segment {sid}, which is not mapped")
            continue
        if off + n > seg.fill:
            bad.append(f"{b!r}: payload [{off}, {off + n}) past the fill {seg.fill} of {seg!r}")
        spans.setdefault(sid, []).append((off, off + n, b))
    for sid, seg in arena.segments.items():
        if seg.id != sid:
            bad.append(f"segment {sid} is filed under id {seg.id}")
        sp = sorted(spans.get(sid, []), key=lambda t: t[0])
        for (_a0, a1, ba), (b0, _b1, bb) in zip(sp, sp[1:]):
            if a1 > b0:
                bad.append(f"segment {sid}: payloads of {ba!r} and {bb!r} overlap")
        live = sum(e - s for s, e, _b in sp)
        if (seg.live_bytes, seg.live_blocks) != (live, len(sp)):
            bad.append(f"{seg!r}: live {seg.live_bytes} bytes in {seg.live_blocks} payloads, "
                       f"its blocks add up to {live} in {len(sp)}")
        owners = {id(o) for o in seg.owners}
        missing = [b for _s, _e, b in sp if id(b) not in owners]
        if missing:
            bad.append(f"{seg!r}: {len(missing)} live payloads missing from its owners, e.g. {missing[0]!r}")
        if not seg.live_blocks and seg.head < 0 and seg not in arena.deferred:
            bad.append(f"{seg!r}: empty, neither a head nor released")
        if not 0 <= seg.fill <= arena.segment_bytes:
            bad.append(f"{seg!r}: fill out of range")
    for role, seg in enumerate(arena.heads):
        if seg is not None and (arena.segments.get(seg.id) is not seg or seg.head != role):
            bad.append(f"head {role} is {seg!r}, not a mapped segment marked as that head")
    marked = [s for s in arena.segments.values() if s.head >= 0]
    if len(marked) != sum(1 for s in arena.heads if s is not None):
        bad.append(f"{len(marked)} segments are marked as heads: {marked}")
    if set(arena.free_ids) & set(arena.segments) or len(set(arena.free_ids)) != len(arena.free_ids):
        bad.append("a free segment id is in use, or free twice")
    want = {
        "live_bytes": sum(seg.live_bytes for seg in arena.segments.values()),
        "live_blocks": sum(seg.live_blocks for seg in arena.segments.values()),
        "used_bytes": sum(seg.fill for seg in arena.segments.values()),
    }
    for name, value in want.items():
        if getattr(arena, name) != value:
            bad.append(f"arena {name} = {getattr(arena, name)}, its segments add up to {value}")
    if arena.live_bytes != fs.store.counters.stored_bytes:
        bad.append(f"arena live_bytes {arena.live_bytes} != stored_bytes {fs.store.counters.stored_bytes}")
    # The free space is accounted: every mapped byte is live, dead (filled,
    # not live), unfilled room of a segment, or a spare.
    seg_bytes = arena.segment_bytes
    dead = arena.used_bytes - arena.live_bytes
    room = sum(seg_bytes - s.fill for s in arena.segments.values())
    if arena.live_bytes + dead + room + len(arena.spares) * seg_bytes != arena.mapped_bytes or \
            arena.free_bytes != dead + room + len(arena.spares) * seg_bytes:
        bad.append(f"arena space: live {arena.live_bytes} + dead {dead} + room {room} + "
                   f"{len(arena.spares)} spares != mapped {arena.mapped_bytes}")
    return bad


def _check_device(fs: Filesystem, on_device: list[StoredBlock]) -> list[str]:
    """Evicted blocks against the cold store's per-segment records and the
    segment usage table."""
    cold = fs.engine.cold
    if cold is None:
        return [f"{len(on_device)} blocks evicted without a backing device"] if on_device else []
    bad = []
    # The per-segment records: each names a block that is at that very
    # record, and together they are the evicted blocks the files reference.
    owners: dict[int, StoredBlock] = {}
    for seg, records in cold.segment_records.items():
        if not records:
            bad.append(f"segment {seg}: an empty record table is kept")
        for seq, b in records.items():
            loc = b.payload
            if type(loc) is not Location or loc.segment != seg or loc.seq != seq:
                bad.append(f"segment {seg}: record {seq} names {b!r}, which is at {loc!r}")
            elif seq in owners:
                bad.append(f"record {seq} is listed in two segments")
            owners[seq] = b
    want = {b.payload.seq: b for b in on_device}  # type: ignore[union-attr]
    if set(owners) != set(want) or any(owners[s] is not want[s] for s in want):
        bad.append(f"cold store lists {len(owners)} evicted blocks by segment, "
                   f"the files reference {len(want)}")
    live = [0] * cold.log.nsegments
    spans: dict[int, list[tuple[int, int]]] = {}
    for b in on_device:
        loc = b.payload
        live[loc.segment] += loc.length  # type: ignore[union-attr]
        spans.setdefault(loc.segment, []).append((loc.offset, loc.offset + loc.length))  # type: ignore[union-attr]
    for seg, u in enumerate(cold.log.usage):
        if seg in cold.in_flight:
            continue   # being written by another thread: its blocks point at it once published
        if u.state in ("full", "emptied") and u.live_bytes != live[seg]:
            bad.append(f"segment {seg}: live_bytes {u.live_bytes}, its records add up to {live[seg]}")
        if u.state in ("free", "emptied") and live[seg]:
            bad.append(f"segment {seg} is {u.state} but holds {live[seg]} live bytes")
    for seg, sp in spans.items():
        sp.sort()
        if any(a[1] > b[0] for a, b in zip(sp, sp[1:])):
            bad.append(f"segment {seg}: records overlap")
    return bad
