#!/bin/sh
# Put cctmpfs where mount(8) and systemd find it (run as root, from the
# repository, after the README's first command made .venv):
#
#   /usr/local/sbin/cctmpfs   on the PATH of mount(8), systemd and root's shell;
#                             /sbin/mount.fuse runs it for type fuse.cctmpfs
#   /sbin/mount.cctmpfs       the helper mount(8) runs for type cctmpfs
#
# Both are symlinks into .venv, so they follow the checkout. Remove them with
#   rm /usr/local/sbin/cctmpfs /sbin/mount.cctmpfs
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
for cmd in cctmpfs mount.cctmpfs; do
	[ -x "$here/.venv/bin/$cmd" ] || { echo "install-helpers: $here/.venv/bin/$cmd missing; run the README's first command" >&2; exit 1; }
done
ln -sfn "$here/.venv/bin/cctmpfs" /usr/local/sbin/cctmpfs
ln -sfn "$here/.venv/bin/mount.cctmpfs" /sbin/mount.cctmpfs
echo "installed /usr/local/sbin/cctmpfs and /sbin/mount.cctmpfs -> $here/.venv/bin"
