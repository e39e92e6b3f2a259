#!/bin/sh
# Put cctmpfs where mount(8) and systemd find it. The README's first command
# runs this (as root, after it made .venv); run it again after moving the
# checkout. Usage: examples/install-helpers.sh [BINDIR]   (default: .venv/bin)
#
#   /usr/local/sbin/cctmpfs   /sbin/mount.fuse runs `cctmpfs` for type fuse.cctmpfs
#   /sbin/mount.cctmpfs       the helper mount(8) runs for type cctmpfs
#
# mount(8) starts its helper without PATH, and /sbin/mount.fuse runs the
# command through /bin/sh, whose built-in PATH is then
# /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin, whatever PATH
# the caller (a shell, systemd) had: the venv is never searched.
#
# Both are symlinks into BINDIR, so they follow the checkout. Remove them with
#   rm /usr/local/sbin/cctmpfs /sbin/mount.cctmpfs
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$here/.venv/bin}
for cmd in cctmpfs mount.cctmpfs; do
	[ -x "$bin/$cmd" ] || { echo "install-helpers: $bin/$cmd missing; run the README's first command" >&2; exit 1; }
done
bin=$(cd "$bin" && pwd)
mkdir -p /usr/local/sbin
ln -sfn "$bin/cctmpfs" /usr/local/sbin/cctmpfs
ln -sfn "$bin/mount.cctmpfs" /sbin/mount.cctmpfs
echo "installed /usr/local/sbin/cctmpfs and /sbin/mount.cctmpfs -> $bin"
