#!/bin/bash
# The main job: mount cctmpfs with its built-in defaults, put a real source
# tree in it, and show what it costs in RAM.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cct=${CCTMPFS:-$here/.venv/bin/cctmpfs}
mnt=${1:-/mnt/cctmpfs-demo}
py=${PYTHON:-$here/.venv/bin/python}
src=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')

mkdir -p "$mnt"
if mountpoint -q "$mnt"; then
	echo "$mnt is already mounted; unmount it first: fusermount -u $mnt" >&2
	exit 1
fi
echo "+ $cct demo $mnt"
"$cct" demo "$mnt"
echo "+ copy $src to $mnt/stdlib   (the Python standard library: real source files)"
mkdir "$mnt/stdlib"
tar -C "$src" --exclude=./site-packages -cf - . | tar -C "$mnt/stdlib" -xf -
echo "+ du -sh $mnt; df -h $mnt"
du -sh "$mnt"
df -h "$mnt"
echo "+ $cct stats --settle $mnt"
"$cct" stats --settle "$mnt"
echo
echo "Mounted at $mnt. Unmount with: fusermount -u $mnt"
