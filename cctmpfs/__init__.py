"""cctmpfs: a compressed, deduplicating tmpfs replacement on FUSE.

Import layering (enforced by tests/unit/test_layering.py): the core modules
(errors, options, codec, blockstore, filemap, hotbuffer, eviction, recompress,
quiet, packing, namespace, sealer, stats) never import a transport nor llfuse; only the transport package
(where only transport/llfuse_ops.py imports llfuse), daemon and, lazily, cli
do.
"""

__version__ = "0.1.0"
