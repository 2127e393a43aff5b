#!/usr/bin/env bash
# A thousand volumes on one daemon, in one run: N (default 1000) volumes of
# 64 MiB created and exported on one NBD listener through the CLI; then
#  1. the cost of creating and exporting one (ms, median), admin requests
#     (status, volume list, export list, volume info: ms, median of 20
#     CLI calls) with everything idle;
#  2. the daemon's threads and memory idle, then with one NBD client
#     connected (handshake done, idle) to every volume, and the admin
#     requests again with all of them connected;
#  3. one 4 KiB write and read through every one of those clients, then
#     the threads and memory again after 6 s quiet (a client quiet for 5 s
#     gives its thread back);
#  4. a restart: SIGTERM, then a new daemon until every volume is exported
#     again and an NBD client reads from the last one.
#
#   tools/bench-scale.sh
#   N=2000 BENCH_DIR=/var/tmp tools/bench-scale.sh
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/dev/shm}
N=${N:-1000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "$BENCH_DIR/umbra-scale-bench.XXXXXX")
PID=""
HOLD=""
cleanup() {
  [ -n "$HOLD" ] && kill "$HOLD" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
UMBRA=$ROOT/target/release/umbra
ulimit -n "$(ulimit -Hn)"
UMBRA_DATA_DIR=$WORK/data UMBRA_NO_DEFAULT=1 RUST_LOG=warn "$UMBRA" serve >/dev/null 2>"$WORK/umbra.log" &
PID=$!
export UMBRA_SOCKET=$WORK/data/umbra.sock
for _ in $(seq 100); do [ -S "$UMBRA_SOCKET" ] && break; sleep 0.1; done
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

ms() { python3 -c "import sys; print(round((int(sys.argv[2])-int(sys.argv[1]))/1e6, 2))" "$@"; }
median_ms() { # command... -> "median/p99" of 20 runs, in ms (p99 of 20: the slowest)
  local t=()
  for _ in $(seq 20); do
    local a; a=$(date +%s%N); "$@" >/dev/null; t+=("$(ms "$a" "$(date +%s%N)")")
  done
  python3 -c "import statistics,sys; v=sorted(map(float, sys.argv[1:])); print(f'{statistics.median(v):.1f}/{v[-1]:.1f}')" "${t[@]}"
}
threads() { awk '/^Threads/ {print $2}' "/proc/$PID/status"; }
rss_mib() { awk '/^VmRSS/ {print int($2/1024)}' "/proc/$PID/status"; }

echo "== $N volumes of 64 MiB, exported on 127.0.0.1:$PORT"
t0=$(date +%s%N)
for i in $(seq -w 0 $((N - 1))); do
  "$UMBRA" volume create "v$i" --size 64M >/dev/null
  "$UMBRA" export nbd "v$i" --listen "127.0.0.1:$PORT" >/dev/null
done
t1=$(date +%s%N)
echo "  create + export: $(python3 -c "print(round(($t1-$t0)/1e6/$N, 2))") ms per volume (two CLI calls, each persisting the configuration)"
MID=v$(seq -w 0 $((N - 1)) | sed -n "$((N / 2 + 1))p")
admin() { # median/p99 ms of each admin request, through the CLI (a process each)
  echo "  status $(median_ms "$UMBRA" status) ms, volume list $(median_ms "$UMBRA" volume list --json) ms," \
       "export list $(median_ms "$UMBRA" export list --json) ms, volume info $(median_ms "$UMBRA" volume info "$MID" --json) ms"
}
echo "== idle"
echo "  daemon: $(threads) threads, $(rss_mib) MiB resident"
admin

echo "== one idle NBD client per volume ($N at once)"
python3 - "$PORT" "$N" "$WORK/ready" <<'PY' &
import socket, struct, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
width = len(str(n - 1))
socks = []
def recv(s, k):
    b = b""
    while len(b) < k:
        d = s.recv(k - len(b))
        if not d: raise EOFError("closed")
        b += d
    return b
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    recv(s, 18)                                   # NBDMAGIC, IHAVEOPT, flags
    s.sendall(struct.pack(">I", 3))               # fixed newstyle, no zeroes
    name = f"v{i:0{width}d}".encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)  # NBD_OPT_GO
    while True:
        _, _, typ, ln = struct.unpack(">QIII", recv(s, 20)); recv(s, ln)
        if typ == 1: break                        # NBD_REP_ACK
        if typ & 0x80000000: raise SystemExit(f"{name}: error reply {typ:#x}")
    socks.append(s)
# One 4 KiB write then read per client (NBD_CMD_WRITE 1, READ 0).
t0 = time.time()
for i, s in enumerate(socks):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, i, 4096, 4096) + bytes([i % 250 + 1]) * 4096)
    magic, err, h = struct.unpack(">IIQ", recv(s, 16)); assert err == 0
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, 4096, 4096))
    magic, err, h = struct.unpack(">IIQ", recv(s, 16)); assert err == 0
    assert recv(s, 4096) == bytes([i % 250 + 1]) * 4096
t1 = time.time()
open(ready, "w").write(f"{(t1 - t0) * 1e6 / n / 2:.0f}\n")
time.sleep(3600)
PY
HOLD=$!
for _ in $(seq 600); do [ -s "$WORK/ready" ] && break; sleep 0.1; done
[ -s "$WORK/ready" ] || { echo "bench-scale: the clients did not all connect" >&2; exit 1; }
echo "  daemon: $(threads) threads, $(rss_mib) MiB resident; each client wrote and read 4 KiB: $(cat "$WORK/ready") µs per request (one at a time)"
admin
sleep 6
echo "== the same clients after 6 s quiet (each parked: no thread of its own)"
echo "  daemon: $(threads) threads, $(rss_mib) MiB resident"
admin

echo "== restart with $N volumes and exports"
kill "$HOLD" 2>/dev/null; wait "$HOLD" 2>/dev/null || true; HOLD=""
t0=$(date +%s%N)
kill "$PID"; wait "$PID" 2>/dev/null || true
t1=$(date +%s%N)
UMBRA_DATA_DIR=$WORK/data UMBRA_NO_DEFAULT=1 RUST_LOG=warn "$UMBRA" serve >/dev/null 2>>"$WORK/umbra.log" &
PID=$!
LAST=v$(seq -w 0 $((N - 1)) | tail -1)
until nbdinfo --size "nbd://127.0.0.1:$PORT/$LAST" >/dev/null 2>&1; do sleep 0.01; done
t2=$(date +%s%N)
exported=$("$UMBRA" export list --json | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
echo "  shutdown $(ms "$t0" "$t1") ms; start to the last volume served $(ms "$t1" "$t2") ms ($exported exports back)"
