#!/usr/bin/env bash
# Several secondaries per set, three daemons on loopback, in one run:
#  1. 4 KiB random writes at QD32 through the primary's NBD export (fio's
#     nbd engine), RUNTIME seconds each: unreplicated, one secondary (sync),
#     two secondaries (sync + hybrid); IOPS, p50/p99, ratios;
#  2. a forced promotion on a SIZE set (default 4G) with 1% changed: the
#     primary replicates to B and C, C is suspended (`repl log`) while 1% of
#     the chunks are written, the primary is killed, B takes over and C
#     follows it: bytes and time of C's update sync, next to a full sync
#     of C from B.
#
#   tools/bench-fleet.sh
#   RUNTIME=10 SIZE=1G BENCH_DIR=/dev/shm tools/bench-fleet.sh
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/var/tmp}
RUNTIME=${RUNTIME:-5}
SIZE=${SIZE:-4G}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "$BENCH_DIR/umbra-fleet-bench.XXXXXX")
declare -A PID
cleanup() {
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
command -v fio >/dev/null || { echo "bench-fleet: fio is not installed" >&2; exit 1; }

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
UMBRA=$ROOT/target/release/umbra
start() { # name
  UMBRA_DATA_DIR=$WORK/$1 UMBRA_DEFAULT_LISTEN=127.0.0.1:0 RUST_LOG=${RUST_LOG:-warn} \
    "$UMBRA" serve >/dev/null 2>"$WORK/$1.log" &
  PID[$1]=$!
  for _ in $(seq 100); do [ -S "$WORK/$1/umbra.sock" ] && break; sleep 0.1; done
}
on() { local n=$1; shift; UMBRA_SOCKET=$WORK/$n/umbra.sock "$UMBRA" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
leg() { # node set secondary field
  on "$1" repl info "$2" --json | python3 -c "
import json,sys; v=json.load(sys.stdin)
print([l for l in v['peers'] if l['peer_node']=='$3'][0]['$4'])"
}
uri_of() { on "$1" export list --json | python3 -c "import json,sys; print([e['uri'] for e in json.load(sys.stdin) if e['volume']=='$2'][0])"; }

start a; start b; start c
head -c 32 /dev/urandom | base64 >"$WORK/key"
declare -A ADDR
for n in a b c; do
  on $n repl setup --node $n --listen 127.0.0.1:0 >/dev/null
  for p in a b c; do [ $p != $n ] && on $n repl peer add $p --secret-file "$WORK/key" >/dev/null; done
  ADDR[$n]=$(on $n repl status --json | field '["listen"]')
done

run_fio() { # uri -> "iops p50_us p99_us"
  fio --name=b --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k --iodepth=32 \
      --size=256M --time_based --runtime="$RUNTIME" --ramp_time=1 --output-format=json 2>/dev/null |
    python3 -c '
import json,sys
t=sys.stdin.read(); w=json.loads(t[t.index("{"):])["jobs"][0]["write"]
p=w["clat_ns"]["percentile"]
print(round(w["iops"]), round(p["50.000000"]/1000), round(p["99.000000"]/1000))'
}

echo "== 4k randwrite QD32, ${RUNTIME}s per run (IOPS, p50/p99 latency in µs)"
RESULTS=$WORK/results
: >"$RESULTS"
n=0
for setup in none one two; do
  n=$((n + 1)); v="v$n"
  for d in a b c; do on $d volume create "$v" --size 256M >/dev/null; done
  on a export nbd "$v" --listen 127.0.0.1:0 >/dev/null
  if [ $setup != none ]; then
    on a repl enable "$v" --local "$v" --peer "${ADDR[b]}" --remote "$v" --mode sync --no-sync >/dev/null
  fi
  if [ $setup = two ]; then
    on a repl enable "$v" --local "$v" --peer "${ADDR[c]}" --remote "$v" --mode hybrid --no-sync >/dev/null
  fi
  [ $setup != none ] && on a repl wait "$v" --timeout 30 >/dev/null
  read -r iops p50 p99 <<<"$(run_fio "$(uri_of a "$v")")"
  echo "$setup $iops $p50 $p99" >>"$RESULTS"
  printf "  %-22s %7s IOPS  p50 %6s µs  p99 %7s µs\n" \
    "$(case $setup in none) echo unreplicated;; one) echo "1 secondary (sync)";; two) echo "2 (sync + hybrid)";; esac)" \
    "$iops" "$p50" "$p99"
  [ $setup != none ] && on a repl disable "$v" >/dev/null
done
python3 - "$RESULTS" <<'PY'
import sys
r = {l.split()[0]: [int(x) for x in l.split()[1:]] for l in open(sys.argv[1])}
base = r["none"][0]
print(f"  one secondary: {r['one'][0] / base:.2f}x unreplicated IOPS; two: {r['two'][0] / base:.2f}x "
      f"({r['two'][0] / r['one'][0]:.2f}x of one)")
PY

echo "== forced promotion on a $SIZE set with 1% changed: C follows B"
for d in a b c; do on $d volume create big --size "$SIZE" >/dev/null; done
on a export nbd big --listen 127.0.0.1:0 >/dev/null
on b export nbd big --listen 127.0.0.1:0 >/dev/null
on a repl enable big --local big --peer "${ADDR[b]}" --remote big --mode hybrid --no-sync >/dev/null
on a repl enable big --local big --peer "${ADDR[c]}" --remote big --mode hybrid --no-sync >/dev/null
on a repl wait big --timeout 60 >/dev/null
sleep 2 # the first release round clears what both hold
on a repl log big --secondary c >/dev/null
CHUNKS=$(python3 -c "
s='$SIZE'; m={'G':1<<30,'M':1<<20}[s[-1]]; print(int(s[:-1])*m//65536//100)")
fio --name=c --ioengine=nbd --uri="$(uri_of a big)" --rw=randwrite --bs=64k --iodepth=16 \
    --size="$SIZE" --number_ios="$CHUNKS" --norandommap=0 --randrepeat=0 >/dev/null 2>&1
on a repl wait big --secondary b --timeout 60 >/dev/null
changed=$(leg a big c out_of_sync_bytes)
kill -9 "${PID[a]}"; unset 'PID[a]'
sleep 0.5
t0=$(date +%s%N)
on b repl swap big --force >/dev/null
on b repl wait big --secondary c --timeout 600 >/dev/null
t1=$(date +%s%N)
moved=$(leg b big c sync_done_bytes)
update_ms=$(python3 -c "print(round(($t1-$t0)/1e6))")
t0=$(date +%s%N)
on b repl sync big --secondary c --full --wait --timeout 1200 >/dev/null
t1=$(date +%s%N)
full_moved=$(leg b big c sync_done_bytes)
full_ms=$(python3 -c "print(round(($t1-$t0)/1e6))")
echo "  changed while C was suspended: $changed bytes ($CHUNKS chunks of 64 KiB)"
echo "  C's update sync after the takeover: $moved bytes in $update_ms ms (takeover to replicating)"
echo "  a full sync of C: $full_moved bytes in $full_ms ms"
python3 -c "print(f'  update / full: {$moved/$full_moved:.4f}x the bytes, {$update_ms/$full_ms:.3f}x the time; moved / changed: {$moved/max($changed,1):.2f}x')"
