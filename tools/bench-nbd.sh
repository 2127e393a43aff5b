#!/usr/bin/env bash
# Side-by-side NBD benchmark: the same fio jobs against umbra's NBD export,
# `nbdkit file` and `qemu-nbd` serving the same 1 GiB file, in one run,
# interleaved round-robin (one server busy at a time); plus the file itself
# through local io_uring as a ceiling. Prints median IOPS and MB/s per job
# and server, and the ratio umbra/nbdkit of the medians.
#
#   tools/bench-nbd.sh                 # 3 interleaved rounds of 5 s per job
#   RUNTIME=10 REPEAT=5 ENGINE=sync tools/bench-nbd.sh
#
# Needs: fio (with the nbd engine), nbdkit, qemu-nbd, python3. Builds umbra
# in release mode. Absolute numbers on shared machines are noise; compare
# the ratios, which come from one run on one machine.
set -euo pipefail

RUNTIME=${RUNTIME:-5}            # seconds per run
REPEAT=${REPEAT:-3}              # interleaved rounds; medians are reported
ENGINE=${ENGINE:-auto}           # umbra's file engine: auto, uring or sync
SIZE=${SIZE:-1G}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Where the 1 GiB file lives. Default: tmpfs (/dev/shm), where a write's
# kernel cost is stable, so the ratios measure the servers. On ext4 the cost
# of one buffered 4 KiB write swings 2-5x with the page cache's folio state
# (it dominates every server's profile); set BENCH_DIR=/var/tmp to see that.
BENCH_DIR=${BENCH_DIR:-$([ -d /dev/shm ] && echo /dev/shm || echo /tmp)}
WORK=$(mktemp -d /tmp/umbra-bench.XXXXXX)
FILE=$(mktemp "$BENCH_DIR/umbra-bench.XXXXXX.img")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && cp "$WORK/results" "$KEEP"   # KEEP=FILE keeps the raw rows
  rm -rf "$WORK" "$FILE"
}
trap cleanup EXIT

for t in fio nbdkit qemu-nbd python3; do
  command -v "$t" >/dev/null || { echo "bench-nbd: $t is not installed" >&2; exit 1; }
done

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
UMBRA=$ROOT/target/release/umbra

echo "preparing $SIZE file in $BENCH_DIR (fully written, so no server hits holes)..." >&2
fio --name=prep --filename="$FILE" --size="$SIZE" --rw=write --bs=1M \
    --ioengine=psync --end_fsync=1 >/dev/null

# The page cache's state changes per-write kernel cost a lot (a file just
# written sequentially sits in large folios, and every 4 KiB write into one
# walks all its buffer heads: measured 2x slower for every server). Reset it
# before each round, as root: write back, drop, then warm with a read pass.
reset_cache() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then
    echo 3 >/proc/sys/vm/drop_caches
  else
    echo "bench-nbd: not root, page cache not reset between rounds" >&2
  fi
  fio --name=warm --filename="$FILE" --size="$SIZE" --rw=read --bs=1M \
      --ioengine=psync >/dev/null
}

# name rw bs iodepth
JOBS=(
  "randread-4k-qd32 randread 4k 32"
  "randwrite-4k-qd32 randwrite 4k 32"
  "seqwrite-1m-qd8 write 1m 8"
)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench-nbd: nothing listening on $1" >&2; exit 1
}

# run_job LABEL NAME RW BS QD ENGINE-ARGS... ; appends "label job iops mbps"
run_job() {
  local label=$1 name=$2 rw=$3 bs=$4 qd=$5; shift 5
  fio --name="$name" "$@" --rw="$rw" --bs="$bs" --iodepth="$qd" \
      --size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time=1 \
      --norandommap --randrepeat=0 --output-format=json \
      >"$WORK/$label-$name.json"
  python3 - "$WORK/$label-$name.json" "$label" "$name" >>"$WORK/results" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])["jobs"][0]  # fio may print notes first
io = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
print(sys.argv[2], sys.argv[3], round(io["iops"]), round(io["bw_bytes"] / 1e6, 1))
PY
}

# Start every server up front (idle ones cost nothing), then interleave
# them per job and round, so slow drifts in machine load hit all alike.
P_UMBRA=$(free_port)
mkdir -p "$WORK/umbra-data"
UMBRA_DATA_DIR=$WORK/umbra-data UMBRA_DEFAULT_LISTEN=127.0.0.1:0 RUST_LOG=warn \
  "$UMBRA" serve >/dev/null 2>"$WORK/umbra.log" &
PIDS+=($!)
export UMBRA_SOCKET=$WORK/umbra-data/umbra.sock
for _ in $(seq 100); do [ -S "$UMBRA_SOCKET" ] && break; sleep 0.1; done
"$UMBRA" volume add bench --path "$FILE" --engine "$ENGINE" >/dev/null
"$UMBRA" export nbd bench --listen "127.0.0.1:$P_UMBRA" >/dev/null
echo "umbra: $("$UMBRA" volume info bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backend"])')" >&2

P_NBDKIT=$(free_port)
nbdkit -f -p "$P_NBDKIT" -i 127.0.0.1 file "$FILE" &   # default parallel thread model
PIDS+=($!)
wait_port "$P_NBDKIT"

P_QEMU=$(free_port)
qemu-nbd -f raw -p "$P_QEMU" -b 127.0.0.1 -x bench --shared=8 --persistent "$FILE" &
PIDS+=($!)
wait_port "$P_QEMU"

for round in $(seq "$REPEAT"); do
  reset_cache
  for j in "${JOBS[@]}"; do
    read -r name rw bs qd <<<"$j"
    echo "round $round/$REPEAT: $name" >&2
    run_job umbra "$name" "$rw" "$bs" "$qd" --ioengine=nbd --uri="nbd://127.0.0.1:$P_UMBRA/bench"
    run_job nbdkit "$name" "$rw" "$bs" "$qd" --ioengine=nbd --uri="nbd://127.0.0.1:$P_NBDKIT/"
    run_job qemu-nbd "$name" "$rw" "$bs" "$qd" --ioengine=nbd --uri="nbd://127.0.0.1:$P_QEMU/bench"
    # The file itself through io_uring, no NBD at all: the ceiling.
    run_job local-io_uring "$name" "$rw" "$bs" "$qd" --ioengine=io_uring --filename="$FILE"
  done
done

python3 - "$WORK/results" <<'PY'
import sys, collections, statistics
rows = [l.split() for l in open(sys.argv[1])]
runs = collections.defaultdict(lambda: collections.defaultdict(list))
for label, job, iops, mbps in rows:
    runs[job][label].append((int(iops), float(mbps)))
med = lambda xs: (statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs))
labels = ["umbra", "nbdkit", "qemu-nbd", "local-io_uring"]
print(f"{'job (median of ' + str(len(next(iter(runs.values()))['umbra'])) + ')':<20}" + "".join(f"{l:>22}" for l in labels) + f"{'umbra/nbdkit':>14}")
for job, r in runs.items():
    m = {l: med(r[l]) for l in labels if r[l]}
    cells = "".join(f"{m[l][0]:>10.0f} IOPS {m[l][1]:>6.0f}MB/s" if l in m else f"{'-':>22}" for l in labels)
    ratio = m["umbra"][0] / m["nbdkit"][0] if m.get("nbdkit", (0,))[0] else 0
    print(f"{job:<20}{cells}{ratio:>13.2f}x")
PY
