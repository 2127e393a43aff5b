#!/usr/bin/env bash
# The cost of the per-volume statistics on the hot path: the same fio jobs
# (4 KiB randread and randwrite, QD32, fio's NBD engine) against umbra built
# with them (the default) and without them (--no-default-features), serving
# the same file on tmpfs, interleaved round-robin in one run. Prints median
# IOPS per build and the ratio with/without.
#
#   tools/bench-stats.sh               # 5 interleaved rounds of 5 s per job
#   RUNTIME=10 REPEAT=7 tools/bench-stats.sh
set -euo pipefail

RUNTIME=${RUNTIME:-5}
REPEAT=${REPEAT:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$([ -d /dev/shm ] && echo /dev/shm || echo /tmp)}
WORK=$(mktemp -d /tmp/umbra-bench-stats.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK" "$BENCH_DIR"/umbra-bench-stats.*.img
}
trap cleanup EXIT

for t in fio python3; do
  command -v "$t" >/dev/null || { echo "bench-stats: $t is not installed" >&2; exit 1; }
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
cp "$TARGET/release/umbra" "$WORK/umbra-stats"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --no-default-features
cp "$TARGET/release/umbra" "$WORK/umbra-nostats"
# Leave the default build in target/ for whoever runs next.
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start BUILD: a daemon of that build on its own data dir, volume `v` on a
# fully written 1 GiB file in tmpfs, exported over NBD; prints its port.
start() {
  local b=$1 port dir file
  port=$(free_port)
  dir=$WORK/$b
  file=$(mktemp "$BENCH_DIR/umbra-bench-stats.XXXXXX.img")
  mkdir -p "$dir"
  fio --name=prep --filename="$file" --size=1G --rw=write --bs=1M --ioengine=psync >/dev/null
  UMBRA_DATA_DIR=$dir UMBRA_DEFAULT_LISTEN=127.0.0.1:0 RUST_LOG=warn \
    "$WORK/umbra-$b" serve >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [ -S "$dir/umbra.sock" ] && break; sleep 0.1; done
  UMBRA_SOCKET=$dir/umbra.sock "$WORK/umbra-$b" volume add v --path "$file" >/dev/null
  UMBRA_SOCKET=$dir/umbra.sock "$WORK/umbra-$b" export nbd v --listen "127.0.0.1:$port" >/dev/null
  echo "$port"
}

declare -A PORT
for b in stats nostats; do PORT[$b]=$(start $b); done

JOBS=("randread-4k-qd32 randread" "randwrite-4k-qd32 randwrite")
: >"$WORK/results"
for round in $(seq "$REPEAT"); do
  for j in "${JOBS[@]}"; do
    read -r name rw <<<"$j"
    for b in stats nostats; do
      fio --name="$name" --ioengine=nbd --uri="nbd://127.0.0.1:${PORT[$b]}/v" \
        --rw="$rw" --bs=4k --iodepth=32 --size=1G --time_based --runtime="$RUNTIME" \
        --output-format=json --output="$WORK/out.json" >/dev/null 2>&1
      python3 - "$WORK/out.json" "$b" "$name" >>"$WORK/results" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print(sys.argv[2], sys.argv[3], j["read"]["iops"] + j["write"]["iops"])
PY
    done
  done
  echo "round $round done" >&2
done

python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
jobs = sorted({r[1] for r in rows})
print(f"{'job':<20} {'with stats':>12} {'without':>12} {'ratio':>7}")
for job in jobs:
    med = {b: statistics.median(float(r[2]) for r in rows if r[0] == b and r[1] == job)
           for b in ("stats", "nostats")}
    print(f"{job:<20} {med['stats']:>12.0f} {med['nostats']:>12.0f} {med['stats']/med['nostats']:>7.3f}")
PY
