"""The one C extension, cctmpfs._pools (pymalloc's empty pools given back,
cctmpfs/pools.py). Optional: where it cannot be built, cctmpfs runs
without it and `cctmpfs stats` says so. Everything else is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("cctmpfs._pools", ["cctmpfs/_pools.c"], optional=True)])
