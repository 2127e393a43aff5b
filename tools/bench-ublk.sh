#!/usr/bin/env bash
# ublk export against the kernel loop device on the same file, in one run:
# umbra `export ublk` of a volume on FILE (O_DIRECT) and `losetup
# --direct-io=on FILE`, the same fio jobs (io_uring, O_DIRECT, 4 KiB random
# reads and writes at QD32, 128 KiB sequential), interleaved round-robin;
# medians and the ratio ublk/loop.
#
#   tools/bench-ublk.sh                   # needs root and ublk_drv
#   RUNTIME=10 REPEAT=5 BENCH_DIR=/srv tools/bench-ublk.sh
#
# Under TCG (tools/vm-ublk.sh) the numbers mean nothing; run it on a host
# whose kernel has ublk.
set -euo pipefail

RUNTIME=${RUNTIME:-5}
REPEAT=${REPEAT:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -e /dev/ublk-control ] && ! modprobe ublk_drv 2>/dev/null; then
  echo "bench-ublk: this host has no ublk driver (/dev/ublk-control); not measurable here" >&2
  exit 2
fi
WORK=$(mktemp -d /tmp/umbra-ublk-bench.XXXXXX)
FILE=$(mktemp "$BENCH_DIR/umbra-ublk-bench.XXXXXX.img")
PID=""; LOOP=""
cleanup() {
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK" "$FILE"
}
trap cleanup EXIT
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
UMBRA=$ROOT/target/release/umbra
fio --name=prep --filename="$FILE" --size=1G --rw=write --bs=1M --direct=1 --ioengine=psync >/dev/null
UMBRA_DATA_DIR=$WORK/data UMBRA_DEFAULT_LISTEN=127.0.0.1:0 RUST_LOG=warn \
  "$UMBRA" serve >/dev/null 2>"$WORK/umbra.log" &
PID=$!
export UMBRA_SOCKET=$WORK/data/umbra.sock
for _ in $(seq 100); do [ -S "$UMBRA_SOCKET" ] && break; sleep 0.1; done
"$UMBRA" volume add bench --path "$FILE" --direct >/dev/null
UBLK=$("$UMBRA" export ublk bench --queues 2 --depth 64)
LOOP=$(losetup -f --show --direct-io=on "$FILE")

job() { # device, fio args -> "IOPS MB/s"
  local dev=$1; shift
  fio --name=j --filename="$dev" --ioengine=io_uring --direct=1 --time_based \
      --runtime="$RUNTIME" "$@" --output-format=json 2>/dev/null |
    python3 -c '
import json, sys
t = sys.stdin.read(); j = json.loads(t[t.index("{"):])["jobs"][0]
io = j["read"] if j["read"]["iops"] > 0 else j["write"]
print(round(io["iops"]), round(io["bw_bytes"] / 1e6, 1))'
}
JOBS=("randread --rw=randread --bs=4k --iodepth=32"
      "randwrite --rw=randwrite --bs=4k --iodepth=32"
      "seqread --rw=read --bs=128k --iodepth=8")
for r in $(seq "$REPEAT"); do
  for j in "${JOBS[@]}"; do
    set -- $j; name=$1; shift
    for dev in "$UBLK" "$LOOP"; do
      echo "$name $dev $(job "$dev" "$@")" >> "$WORK/results"
    done
  done
done
python3 - "$WORK/results" "$UBLK" "$LOOP" <<'PY'
import statistics as st, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, dev, iops, mbs = line.split()
    rows[(name, dev)].append((float(iops), float(mbs)))
ublk, loop = sys.argv[2], sys.argv[3]
for name in dict.fromkeys(k[0] for k in rows):
    u = st.median(x[0] for x in rows[(name, ublk)]); l = st.median(x[0] for x in rows[(name, loop)])
    print(f"{name:10} umbra ublk {u:9.0f} IOPS   kernel loop {l:9.0f} IOPS   ratio {u/l:.2f}x")
PY
