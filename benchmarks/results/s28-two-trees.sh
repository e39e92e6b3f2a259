#!/bin/bash
# two.sh CCTMPFS MP: RSS growth of /usr/include copied after the stdlib has settled
C=$1; MP=$2
mkdir -p $MP && $C cctmpfs $MP
pid=$(for p in $(pgrep -f "cctmpfs $MP"); do tr "\0" " " < /proc/$p/cmdline | grep -q "^/bin/bash" || echo $p; done | head -1)
rss() { awk '/VmRSS/{print $2}' /proc/$pid/status; }
r0=$(rss)
cp -a /root/.pyenv/versions/3.11.7/lib/python3.11 $MP/a
/work/main/.venv/bin/cctmpfs stats $MP --settle >/dev/null; sleep 45
r1=$(rss)
cp -a /usr/include $MP/b
/work/main/.venv/bin/cctmpfs stats $MP --settle >/dev/null; sleep 45
r2=$(rss)
echo "$C stdlib $(( (r1-r0)/1024 )) MiB, then include $(( (r2-r1)/1024 )) MiB"
/work/main/.venv/bin/cctmpfs stats $MP --json | python3 -c "import json,sys; d=json.load(sys.stdin); m=d['memory']; print({k: round(m[k]/2**20,1) for k in ('inode_bytes','pymalloc_free_bytes','heap_slack_bytes') if k in m})"
umount $MP
