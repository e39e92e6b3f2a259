"""Stress tests use the mounted tests' fixtures (tests/mounted/conftest.py):
the same mount factory, teardown checks, root and /dev/fuse requirement."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_MOUNTED_CONFTEST = (Path(__file__).resolve().parent.parent / "mounted" / "conftest.py")


def _load_mounted_conftest():
    # Reuse the module pytest already imported, if it did (both directories collected).
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and Path(f).resolve() == _MOUNTED_CONFTEST:
            return mod
    spec = importlib.util.spec_from_file_location("cctmpfs_tests_mounted_conftest", _MOUNTED_CONFTEST)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


_m = _load_mounted_conftest()

mount_cct = _m.mount_cct
transport = _m.transport
tmpfs_mount = _m.tmpfs_mount
drop_caches = _m.drop_caches
_require_mount_environment = _m._require_mount_environment
_sweep_leftover_mounts = _m._sweep_leftover_mounts
