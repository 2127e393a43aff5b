#!/usr/bin/env bash
# Cache benchmark through the NBD export, on an O_DIRECT volume on disk
# (where a cache hit saves a device read), in one run:
#  1. 4 KiB random reads at QD32 over a 64 MiB hot set, without the cache
#     and with a 256 MiB cache (warmed by one pass): IOPS and the ratio;
#  2. 128 KiB sequential reads at QD1 over 512 MiB, cold, without and with
#     the cache (whose read-ahead then runs ahead of the reader);
#  3. a stream of 4 KiB sequential writes, write-through and write-back:
#     how many backend writes coalescing turned it into.
# Prints the cache's own statistics after each cached run.
#
#   tools/bench-cache.sh                 # 10 s per random-read run
#   RUNTIME=20 BENCH_DIR=/srv tools/bench-cache.sh
set -euo pipefail

RUNTIME=${RUNTIME:-10}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/umbra-cache-bench.XXXXXX)
FILE=$(mktemp "$BENCH_DIR/umbra-cache-bench.XXXXXX.img")
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK" "$FILE"
}
trap cleanup EXIT
command -v fio >/dev/null || { echo "bench-cache: fio is not installed" >&2; exit 1; }

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
UMBRA=$ROOT/target/release/umbra
fio --name=prep --filename="$FILE" --size=1G --rw=write --bs=1M --direct=1 \
    --ioengine=psync >/dev/null

UMBRA_DATA_DIR=$WORK/data UMBRA_DEFAULT_LISTEN=127.0.0.1:0 RUST_LOG=warn \
  "$UMBRA" serve >/dev/null 2>"$WORK/umbra.log" &
PID=$!
export UMBRA_SOCKET=$WORK/data/umbra.sock
for _ in $(seq 100); do [ -S "$UMBRA_SOCKET" ] && break; sleep 0.1; done
"$UMBRA" volume add bench --path "$FILE" --direct >/dev/null
"$UMBRA" export nbd bench --listen 127.0.0.1:0 >/dev/null
URI=$("$UMBRA" export list --json | python3 -c 'import json,sys; print([e["uri"] for e in json.load(sys.stdin) if e["volume"]=="bench"][0])')

# fio_iops ARGS... -> "IOPS MB/s"
fio_run() {
  fio --name=b --ioengine=nbd --uri="$URI" "$@" --output-format=json 2>/dev/null |
    python3 -c '
import json, sys
t = sys.stdin.read(); j = json.loads(t[t.index("{"):])["jobs"][0]["read"]
print(round(j["iops"]), round(j["bw_bytes"] / 1e6, 1))'
}
stats() { "$UMBRA" cache stats bench | tail -1; }

HOT="--rw=randread --bs=4k --iodepth=32 --size=64M --time_based --runtime=$RUNTIME --norandommap --randrepeat=0"
read -r nocache_iops _ <<<"$(fio_run $HOT)"
"$UMBRA" cache enable bench --size 256M >/dev/null
fio_run --rw=read --bs=1M --size=64M >/dev/null     # warm the hot set
read -r cache_iops _ <<<"$(fio_run $HOT)"
echo "cache stats after the hot-set run:"; "$UMBRA" cache stats bench
"$UMBRA" cache disable bench >/dev/null

SEQ="--rw=read --bs=128k --iodepth=1 --size=512M"
read -r _ seq_nocache <<<"$(fio_run $SEQ)"
"$UMBRA" cache enable bench --size 256M >/dev/null   # cold, empty cache
read -r _ seq_cache <<<"$(fio_run $SEQ)"
echo "cache stats after the sequential run:"; "$UMBRA" cache stats bench

python3 - "$nocache_iops" "$cache_iops" "$seq_nocache" "$seq_cache" <<'PY'
import sys
a, b, c, d = map(float, sys.argv[1:])
print(f"\n4k randread QD32, 64 MiB hot set: no cache {a:.0f} IOPS, cache {b:.0f} IOPS, ratio {b/a:.2f}x")
print(f"128k seq read QD1, cold:          no cache {c:.0f} MB/s, cache+read-ahead {d:.0f} MB/s, ratio {d/c:.2f}x")
PY

# 3. Write coalescing: a stream of small (4 KiB) sequential writes at QD8,
#    write-through against write-back (safe store on the same disk). The
#    write-back cache's statistics say how many backend writes the stream
#    became once destaged.
"$UMBRA" cache disable bench >/dev/null
fio_write() {
  fio --name=w --ioengine=nbd --uri="$URI" "$@" --output-format=json 2>/dev/null |
    python3 -c '
import json, sys
t = sys.stdin.read(); j = json.loads(t[t.index("{"):])["jobs"][0]["write"]
print(round(j["iops"]))'
}
SMALL="--rw=write --bs=4k --iodepth=8 --size=64M --offset=256M"
wt_iops=$(fio_write $SMALL)
"$UMBRA" cache enable bench --size 256M --mode write-back \
  --safe-store "$WORK/bench.safe" --safe-store-size 256M >/dev/null
wb_iops=$(fio_write $SMALL)
for _ in $(seq 100); do
  dirty=$("$UMBRA" cache stats bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])')
  [ "$dirty" = 0 ] && break
  sleep 0.2
done
echo "cache stats after the small sequential write stream:"; "$UMBRA" cache stats bench
"$UMBRA" cache stats bench --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
blocks = s["destaged_bytes"] // 4096
writes = blocks - s["writes_coalesced"]
print(f"coalescing: {blocks} logged 4 KiB writes reached the volume in {writes} writes "
      f"({blocks / max(writes, 1):.0f} per write, {100 * (1 - writes / max(blocks, 1)):.1f}% fewer)")'
echo "4k seq write QD8: write-through $wt_iops IOPS, write-back $wb_iops IOPS"
"$UMBRA" cache disable bench >/dev/null
