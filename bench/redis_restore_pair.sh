#!/bin/bash
# Paired Redis restore timing, interleaved, `sync` and empty targets before each measurement:
#   before   drkit from another checkout (via PYTHONPATH; skipped when BEFORE_CHECKOUT is -)
#   after    this checkout's drkit restore (durable: it ends with an fsync)
#   nosync   this checkout's drkit restore --no-sync
#   zstd-d   `zstd -d` of the same RDB (zstd -3), which does not fsync
#   zstd-d+fsync   the same followed by `sync FILE`: the durable comparison
#   bench/redis_restore_pair.sh CONFIG BACKUP_ID BEFORE_CHECKOUT [ROUNDS] [WORKDIR]
# CONFIG/BACKUP_ID: a drkit config with a Redis source 'cache' and a full backup of it (e.g. one
# that bench/redis_backup.py left in /var/tmp/drkit-bench-redis/r0). BEFORE_CHECKOUT: e.g.
# `git worktree add /var/tmp/wt-before <commit>`, with the built _rdbscan*.so copied in.
set -euo pipefail
CFG=$1 ID=$2 BEFORE=$3 ROUNDS=${4:-3} W=${5:-/var/tmp/drkit-restore-pair}
DRKIT=${DRKIT:-/opt/drkit/venv/bin/drkit}
mkdir -p "$W" && cd "$W"
if [[ ! -f base.rdb.zst ]]; then  # the baseline's input: the same RDB, zstd -3
  "$DRKIT" --config "$CFG" restore cache --backup "$ID" --target-dir "$W/seed" >/dev/null
  zstd -q -3 -T2 seed/dump.rdb -o base.rdb.zst && rm -rf seed
fi
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
for i in $(seq "$ROUNDS"); do
  rm -rf a b z.rdb; sync
  before=-
  if [[ $BEFORE != - ]]; then
    before=$(t env PYTHONPATH="$BEFORE" "$DRKIT" --config "$CFG" restore cache --backup "$ID" --target-dir "$W/a")
    rm -rf a; sync
  fi
  after=$(t "$DRKIT" --config "$CFG" restore cache --backup "$ID" --target-dir "$W/b")
  rm -rf b; sync
  nosync=$(t "$DRKIT" --config "$CFG" restore cache --backup "$ID" --target-dir "$W/b" --no-sync)
  rm -rf b; sync
  z=$(t zstd -q -d -f base.rdb.zst -o z.rdb)
  rm -f z.rdb; sync
  zf=$(t sh -c 'zstd -q -d -f base.rdb.zst -o z.rdb && sync z.rdb')
  rm -f z.rdb; sync
  echo "round $i: before $before after $after nosync $nosync zstd-d $z zstd-d+fsync $zf"
done
