#!/usr/bin/env bash
# Replication benchmark, two daemons on loopback in one run:
#  1. 4 KiB random writes at QD32 through the primary's NBD export (fio's
#     nbd engine), RUNTIME seconds each: unreplicated, then sync, async and
#     hybrid sets, each with 0 ms and 1 ms one-way delay injected by
#     `umbra fault-proxy` between the daemons; IOPS, p50/p99 completion
#     latency, ratios to unreplicated;
#  2. an update sync after 1% of a 4 GiB volume changed (as 64 KiB chunks),
#     next to sending the same bytes over a plain loopback TCP socket;
#  3. an outage: the link cut (its proxy killed) while fio makes 64 MiB of
#     random 4 KiB writes, then healed: time from heal to syncing, bytes
#     the resync moved (the secondary's applied bytes), its throughput
#     next to a plain TCP stream of those bytes;
#  4. hybrid keep-up: writes per second the primary took under fio and
#     the secondary applied in the same time, the lag left at the end;
#  5. the full stack: 4 KiB random writes at QD32 on a plain volume, then
#     on the same volume with a write-through cache, a dependent shadow
#     and hybrid replication to the second daemon, in one run; the ratio;
#  6. writer stalls during link faults: 4 KiB random writes at QD32 on a
#     hybrid set with a 1 s link timeout, once with the link black-holed
#     (its proxy stopped with SIGSTOP: nothing flows, the heartbeat times
#     out) and once cut (the proxy killed: the primary sees the close at
#     once), each healed 2 s later; the longest write, the writes slower
#     than 100 ms and than the link timeout, next to a run without a fault.
#
#   tools/bench-repl.sh
#   ONLY=qd|sync|stack|faults tools/bench-repl.sh # section 1, 2-4, 5 or 6
#   UMBRA_REPL_TLS=always tools/bench-repl.sh # every link over TLS 1.3
#                                             # (loopback is plain by default)
#   RUNTIME=10 BENCH_DIR=/var/tmp tools/bench-repl.sh
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/dev/shm}
RUNTIME=${RUNTIME:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "$BENCH_DIR/umbra-repl-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_LOGS:-}" ] && cp "$WORK"/*.log "$KEEP_LOGS"/
  rm -rf "$WORK"
}
trap cleanup EXIT
command -v fio >/dev/null || { echo "bench-repl: fio is not installed" >&2; exit 1; }

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
UMBRA=$ROOT/target/release/umbra
start() { # name
  UMBRA_DATA_DIR=$WORK/$1 UMBRA_DEFAULT_LISTEN=127.0.0.1:0 RUST_LOG=${RUST_LOG:-warn} \
    "$UMBRA" serve >/dev/null 2>"$WORK/$1.log" &
  PIDS+=($!)
  for _ in $(seq 100); do [ -S "$WORK/$1/umbra.sock" ] && break; sleep 0.1; done
}
A() { UMBRA_SOCKET=$WORK/a/umbra.sock "$UMBRA" "$@"; }
B() { UMBRA_SOCKET=$WORK/b/umbra.sock "$UMBRA" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
uri_of() { A export list --json | python3 -c "import json,sys; print([e['uri'] for e in json.load(sys.stdin) if e['volume']=='$1'][0])"; }

start a; start b
head -c 32 /dev/urandom | base64 >"$WORK/key"
A repl setup --node a --listen 127.0.0.1:0 >/dev/null
B repl setup --node b --listen 127.0.0.1:0 >/dev/null
A repl peer add b --secret-file "$WORK/key" >/dev/null
B repl peer add a --secret-file "$WORK/key" >/dev/null
B_ADDR=$(B repl status --json | field '["listen"]')
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Start `umbra fault-proxy` on PORT toward b (further options after it);
# returns once it listens, its pid in PROXY.
fault_proxy() { # port [options]
  local port=$1; shift
  "$UMBRA" fault-proxy --listen "127.0.0.1:$port" --to "$B_ADDR" "$@" >/dev/null &
  PROXY=$!; PIDS+=("$PROXY")
  for _ in $(seq 2500); do ss -ltnH "sport = :$port" | grep -q . && return; sleep 0.002; done
  echo "bench-repl: the fault proxy on port $port did not start" >&2; exit 1
}
PROXY_PORT=$(free_port)
fault_proxy "$PROXY_PORT" --delay-us 1000

# Milliseconds to send N bytes over a plain loopback TCP socket (the peer
# every transfer is compared with).
tcp_send_ms() {
  python3 - "$1" <<'PY'
import socket, sys, threading, time
n = max(int(sys.argv[1]), 1); buf = b"\0" * (1 << 20)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def sink():
    c, _ = srv.accept(); got = 0
    while got < n:
        d = c.recv(1 << 20)
        if not d: break
        got += len(d)
    c.sendall(b"k")
t = threading.Thread(target=sink); t.start()
s = socket.create_connection(srv.getsockname()); t0 = time.time(); left = n
while left > 0:
    k = min(left, len(buf)); s.sendall(buf[:k]); left -= k
s.recv(1); t1 = time.time(); t.join()
print(round((t1 - t0) * 1000, 1))
PY
}

run_fio() { # uri -> "iops p50_us p99_us"
  fio --name=b --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k --iodepth=32 \
      --size=256M --time_based --runtime="$RUNTIME" --ramp_time=1 --output-format=json 2>/dev/null |
    python3 -c '
import json,sys
t=sys.stdin.read(); w=json.loads(t[t.index("{"):])["jobs"][0]["write"]
p=w["clat_ns"]["percentile"]
print(round(w["iops"]), round(p["50.000000"]/1000), round(p["99.000000"]/1000))'
}

want() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }
if want qd; then
echo "== 4k randwrite QD32, ${RUNTIME}s per run (IOPS, p50/p99 latency in µs)"
n=0
RESULTS=$WORK/results
: >"$RESULTS"
for mode in none sync async hybrid; do
  for delay in 0 1; do
    [ "$mode" = none ] && [ "$delay" = 1 ] && continue
    n=$((n + 1)); v="v$n"
    A volume create "$v" --size 256M >/dev/null
    B volume create "$v" --size 256M >/dev/null
    A export nbd "$v" --listen 127.0.0.1:0 >/dev/null
    if [ "$mode" != none ]; then
      peer=$B_ADDR; [ "$delay" = 1 ] && peer=127.0.0.1:$PROXY_PORT
      A repl enable "$v" --local "$v" --peer "$peer" --remote "$v" --mode "$mode" --no-sync >/dev/null
      A repl wait "$v" --timeout 30 >/dev/null
    fi
    read -r iops p50 p99 <<<"$(run_fio "$(uri_of "$v")")"
    echo "$mode $delay $iops $p50 $p99" >>"$RESULTS"
    printf "  %-7s %sms  %7s IOPS  p50 %6s µs  p99 %7s µs\n" "$mode" "$delay" "$iops" "$p50" "$p99"
    [ "$mode" != none ] && A repl disable "$v" >/dev/null
  done
done
python3 - "$RESULTS" <<'PY'
import sys
r = {}
for line in open(sys.argv[1]):
    m, d, iops, p50, p99 = line.split()
    r[(m, int(d))] = (int(iops), int(p50), int(p99))
base = r[("none", 0)][0]
for m in ("sync", "async", "hybrid"):
    for d in (0, 1):
        print(f"  {m:7} {d}ms: {r[(m, d)][0] / base:.2f}x unreplicated IOPS")
h, a, s = r[("hybrid", 1)][1], r[("async", 1)][1], r[("sync", 1)][1]
print(f"  at 1 ms: hybrid p50 {h} µs = {h / a:.2f}x async's, sync's is {s / h:.1f}x hybrid's")
PY
fi

if want sync; then
echo "== update sync after 1% of a 4 GiB volume changed"
A volume create big --size 4G >/dev/null
B volume create big --size 4G >/dev/null
A export nbd big --listen 127.0.0.1:0 >/dev/null
A repl enable big --local big --peer "$B_ADDR" --remote big --mode hybrid --no-sync >/dev/null
A repl wait big --timeout 30 >/dev/null
A repl log big >/dev/null
CHUNKS=$((4096 * 16 / 100))  # 1% of 65536 chunks of 64 KiB
fio --name=c --ioengine=nbd --uri="$(uri_of big)" --rw=randwrite --bs=64k --iodepth=16 \
    --size=4G --number_ios="$CHUNKS" --norandommap=0 --randrepeat=0 >/dev/null 2>&1
oos=$(A repl info big --json | field '["out_of_sync_bytes"]')
t0=$(date +%s%N)
A repl sync big --wait --timeout 600 >/dev/null
t1=$(date +%s%N)
moved=$(A repl info big --json | field '["sync_done_bytes"]')
sync_ms=$(python3 -c "print(round(($t1-$t0)/1e6, 1))")
send_ms=$(tcp_send_ms "$oos")
echo "  out of sync: $oos bytes; the sync moved $moved bytes in $sync_ms ms (CLI to replicating)"
echo "  sending $oos bytes over a loopback socket: $send_ms ms; ratio $(python3 -c "print(round($sync_ms/$send_ms, 2))")x"
A repl disable big >/dev/null

echo "== outage: 64 MiB of random 4 KiB writes while the link is down, then heal"
P2=$(free_port)
fault_proxy "$P2"
A volume create o --size 4G >/dev/null
B volume create o --size 4G >/dev/null
A export nbd o --listen 127.0.0.1:0 >/dev/null
A repl enable o --local o --peer "127.0.0.1:$P2" --remote o --mode hybrid --no-sync --timeout 1s >/dev/null
A repl wait o --timeout 30 >/dev/null
kill "$PROXY"; wait "$PROXY" 2>/dev/null || true
A repl wait o --state logging --timeout 30 >/dev/null
fio --name=o --ioengine=nbd --uri="$(uri_of o)" --rw=randwrite --bs=4k --iodepth=16 \
    --size=4G --number_ios=16384 --randrepeat=0 >/dev/null 2>&1
oos=$(A repl info o --json | field '["out_of_sync_bytes"]')
applied0=$(B repl info o --json | field '["applied_bytes"]')
# The clock starts when the proxy listens again (the link is back) and
# stops at the daemon's own time of its repl.syncing event, not when a
# polling CLI happens to see the state.
A events --follow --json >"$WORK/events.log" 2>"$WORK/events.err" &
EVENTS=$!; PIDS+=("$EVENTS")
for _ in $(seq 500); do grep -q "following events" "$WORK/events.err" && break; sleep 0.01; done
grep -q "following events" "$WORK/events.err" || { echo "bench-repl: events did not start" >&2; exit 1; }
fault_proxy "$P2" # the link is back once it listens
t0=$(date +%s%N)
A repl wait o --timeout 600 >/dev/null
t2=$(date +%s%N)
kill "$EVENTS" 2>/dev/null || true
t1=$(python3 - "$WORK/events.log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["object"] == "o" and e["kind"] == "repl.syncing":
        print(e["time_ms"] * 1000000)
        break
else:
    sys.exit("bench-repl: set o synced without a repl.syncing event")
PY
)
applied1=$(B repl info o --json | field '["applied_bytes"]')
moved=$((applied1 - applied0))
heal_ms=$(python3 -c "print(round(($t1-$t0)/1e6))")
resync_ms=$(python3 -c "print(round(($t2-$t1)/1e6, 1))")
send_ms=$(tcp_send_ms "$moved")
echo "  written during the outage: 67108864 bytes in 16384 writes; the scoreboard's chunks: $oos bytes"
echo "  heal to syncing: $heal_ms ms; the resync moved $moved bytes ($(python3 -c "print(round($moved/67108864, 2))")x written) in $resync_ms ms"
echo "  the same bytes over a loopback socket: $send_ms ms; resync throughput $(python3 -c "print(round($send_ms/max($resync_ms,0.1), 2))")x a TCP stream"
A repl disable o >/dev/null

echo "== hybrid keep-up: fio ${RUNTIME}s at QD32, what the secondary applied meanwhile"
A volume create h --size 1G >/dev/null
B volume create h --size 1G >/dev/null
A export nbd h --listen 127.0.0.1:0 >/dev/null
A repl enable h --local h --peer "$B_ADDR" --remote h --mode hybrid --no-sync >/dev/null
A repl wait h --timeout 30 >/dev/null
w0=$(A repl info h --json | field '["writes"]'); b0=$(B repl info h --json | field '["applied_writes"]')
t0=$(date +%s%N)
fio --name=h --ioengine=nbd --uri="$(uri_of h)" --rw=randwrite --bs=4k --iodepth=32 \
    --size=1G --time_based --runtime="$RUNTIME" >/dev/null 2>&1
t1=$(date +%s%N)
w1=$(A repl info h --json | field '["writes"]'); b1=$(B repl info h --json | field '["applied_writes"]')
lag=$(A repl info h --json | field '["lag_writes"]')
A repl wait h --timeout 600 >/dev/null
t2=$(date +%s%N)
python3 - "$t0" "$t1" "$t2" "$w0" "$w1" "$b0" "$b1" "$lag" <<'PY'
import sys
t0, t1, t2 = (int(x) / 1e9 for x in sys.argv[1:4])
w0, w1, b0, b1, lag = map(int, sys.argv[4:])
took, applied = (w1 - w0) / (t1 - t0), (b1 - b0) / (t1 - t0)
print(f"  primary took {took:.0f} writes/s, the secondary applied {applied:.0f}/s ({applied / max(took, 1):.2f}x);"
      f" lag at the end {lag} writes, drained {(t2 - t1) * 1000:.0f} ms later")
PY

fi

if want stack; then
echo "== full stack: write-through cache + dependent shadow + hybrid replication, 4k randwrite QD32"
A volume create f --size 1G >/dev/null
B volume create f --size 1G >/dev/null
A export nbd f --listen 127.0.0.1:0 >/dev/null
read -r plain_iops plain_p50 plain_p99 <<<"$(run_fio "$(uri_of f)")"
A cache enable f >/dev/null
A image enable fsnap --master f --shadow f-snap --mode dependent >/dev/null
A repl enable f --local f --peer "$B_ADDR" --remote f --mode hybrid --no-sync >/dev/null
A repl wait f --timeout 30 >/dev/null
read -r full_iops full_p50 full_p99 <<<"$(run_fio "$(uri_of f)")"
cow=$(A stats f --json | field '["volumes"][0]["image"][0]["cow_chunks"]')
echo "  plain volume:  $plain_iops IOPS (p50 $plain_p50 µs, p99 $plain_p99 µs)"
echo "  full stack:    $full_iops IOPS (p50 $full_p50 µs, p99 $full_p99 µs); $(python3 -c "print(round($full_iops/$plain_iops, 2))")x the plain volume ($cow first touches copied on write)"
A repl disable f >/dev/null
fi

if want faults; then
echo "== writer stalls during link faults: hybrid, link timeout 1 s, 4k randwrite QD32, 8 s per run"
P3=$(free_port)
fault_proxy "$P3"
A volume create lf --size 1G >/dev/null
B volume create lf --size 1G >/dev/null
A export nbd lf --listen 127.0.0.1:0 >/dev/null
A repl enable lf --local lf --peer "127.0.0.1:$P3" --remote lf --mode hybrid --no-sync --timeout 1s >/dev/null
A repl wait lf --timeout 30 >/dev/null
for fault in none blackhole cut; do
  A repl wait lf --timeout 60 >/dev/null
  rm -f "$WORK"/lat_clat.*.log
  fio --name=lf --ioengine=nbd --uri="$(uri_of lf)" --rw=randwrite --bs=4k --iodepth=32 \
      --size=1G --time_based --runtime=8 --write_lat_log="$WORK/lat" --log_avg_msec=0 \
      >/dev/null 2>&1 &
  FIO=$!
  sleep 2
  case $fault in
    blackhole) kill -STOP "$PROXY"; sleep 2; kill -CONT "$PROXY" ;;
    cut) kill -9 "$PROXY"; wait "$PROXY" 2>/dev/null || true; sleep 2; fault_proxy "$P3" ;;
  esac
  wait "$FIO"
  state=$(A repl info lf --json | field '["state"]')
  python3 - "$fault" "$state" "$WORK"/lat_clat.*.log <<'PY'
import sys
fault, state, logs = sys.argv[1], sys.argv[2], sys.argv[3:]
lat = []  # completion latency of every write, in ns
for f in logs:
    for line in open(f):
        parts = line.split(",")
        if len(parts) > 2 and parts[2].strip() == "1":
            lat.append(int(parts[1]))
lat.sort()
if not lat:
    sys.exit(f"bench-repl: no writes logged for the {fault} run")
over = lambda ns: sum(1 for x in lat if x > ns)
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6
print(f"  {fault:9} {len(lat):7} writes; longest {lat[-1] / 1e6:7.1f} ms, p99.99 {p(0.9999):6.1f} ms;"
      f" over 100 ms: {over(100_000_000)}, over the 1 s timeout: {over(1_000_000_000)}; set {state} after")
PY
done
A repl disable lf >/dev/null
fi
