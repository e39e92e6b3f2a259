"""cctmpfs: a compressed, deduplicating tmpfs replacement on FUSE.

Import layering (enforced by tests/unit/test_layering.py): the core modules
(errors, options, codec, blockstore, filemap, namespace, sealer, stats) never
import llfuse; only fuseops, daemon and cli do.
"""

__version__ = "0.1.0"
