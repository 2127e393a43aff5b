#!/usr/bin/env bash
# Idle replication links, two daemons on loopback in one run: N (default
# 200) volumes of 64 MiB on each, one hybrid set (one link) per volume
# from a to b, every volume exported on one NBD listener of a; then
#  1. each set takes one 4 KiB write (its sender and b's apply workers
#     start), and the bench waits QUIET seconds (default 15: senders and
#     workers end after 2 s idle, round threads after 10 s);
#  2. both daemons' threads (all, and the replication ones) and resident
#     memory with every link idle;
#  3. `repl status` and `repl info` through the CLI (median/p99 of 20);
#  4. the latency of a 4 KiB write after the quiet spell (its set's sender
#     starts again) next to the one right after it (sender running), the
#     median over 20 sets, each acknowledged by the primary (hybrid: not
#     waiting for the peer). The first also commits its chunk's scoreboard
#     bit again (cleaned while idle), as it did before senders came and went.
#
#   tools/bench-repl-links.sh
#   N=1000 QUIET=20 tools/bench-repl-links.sh
#   UMBRA_REPL_TLS=always tools/bench-repl-links.sh   # the links over TLS
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/dev/shm}
N=${N:-200}
QUIET=${QUIET:-15}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "$BENCH_DIR/umbra-links-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
UMBRA=$ROOT/target/release/umbra
ulimit -n "$(ulimit -Hn)"
start() { # name
  UMBRA_DATA_DIR=$WORK/$1 UMBRA_NO_DEFAULT=1 RUST_LOG=${RUST_LOG:-warn} \
    "$UMBRA" serve >/dev/null 2>"$WORK/$1.log" &
  PIDS+=($!)
  for _ in $(seq 100); do [ -S "$WORK/$1/umbra.sock" ] && break; sleep 0.1; done
}
A() { UMBRA_SOCKET=$WORK/a/umbra.sock "$UMBRA" "$@"; }
B() { UMBRA_SOCKET=$WORK/b/umbra.sock "$UMBRA" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
ms() { python3 -c "import sys; print(round((int(sys.argv[2])-int(sys.argv[1]))/1e6, 2))" "$@"; }
median_ms() { # command... -> "median/p99" of 20 runs, in ms (p99 of 20: the slowest)
  local t=()
  for _ in $(seq 20); do
    local a; a=$(date +%s%N); "$@" >/dev/null; t+=("$(ms "$a" "$(date +%s%N)")")
  done
  python3 -c "import statistics,sys; v=sorted(map(float, sys.argv[1:])); print(f'{statistics.median(v):.1f}/{v[-1]:.1f}')" "${t[@]}"
}
report() { # name pid
  local all repl rss
  all=$(awk '/^Threads/ {print $2}' "/proc/$2/status")
  repl=$(cat /proc/"$2"/task/*/comm 2>/dev/null | grep -c '^repl' || true)
  rss=$(awk '/^VmRSS/ {print int($2/1024)}' "/proc/$2/status")
  echo "  $1: $all threads ($repl replication: $(cat /proc/"$2"/task/*/comm 2>/dev/null | grep '^repl' | awk -F- '{print $1 "-" $2}' | sort | uniq -c | awk '{printf "%s %s, ", $2, $1}' | sed 's/, $//')), $rss MiB resident"
}

start a; start b
PA=${PIDS[0]}; PB=${PIDS[1]}
head -c 32 /dev/urandom | base64 >"$WORK/key"
A repl setup --node a --listen 127.0.0.1:0 >/dev/null
B repl setup --node b --listen 127.0.0.1:0 >/dev/null
A repl peer add b --secret-file "$WORK/key" >/dev/null
B repl peer add a --secret-file "$WORK/key" >/dev/null
B_ADDR=$(B repl status --json | field '["listen"]')
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

echo "== $N hybrid sets of 64 MiB, one link each, a -> b on loopback"
for i in $(seq -w 0 $((N - 1))); do
  A volume create "v$i" --size 64M >/dev/null
  B volume create "v$i" --size 64M >/dev/null
  A repl enable "s$i" --local "v$i" --peer "$B_ADDR" --remote "v$i" --mode hybrid --no-sync >/dev/null
  A export nbd "v$i" --listen "127.0.0.1:$PORT" >/dev/null
done
for i in $(seq -w 0 $((N - 1))); do
  until A repl info "s$i" --json | field '["state"]' | grep -q replicating; do sleep 0.05; done
done

# NBD client: one 4 KiB write to each of the given volumes, in order, each
# connection opened first; prints the microseconds of each write.
nbd_writes() { # port rounds volume...
  python3 - "$@" <<'PY'
import socket, struct, sys, time
port, rounds, names = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def recv(s, k):
    b = b""
    while len(b) < k:
        d = s.recv(k - len(b))
        if not d: raise EOFError("closed")
        b += d
    return b
socks = []
for name in names:
    s = socket.create_connection(("127.0.0.1", port))
    recv(s, 18); s.sendall(struct.pack(">I", 3))
    n = name.encode()
    data = struct.pack(">I", len(n)) + n + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)
    while True:
        _, _, typ, ln = struct.unpack(">QIII", recv(s, 20)); recv(s, ln)
        if typ == 1: break
        if typ & 0x80000000: raise SystemExit(f"{name}: error reply {typ:#x}")
    socks.append(s)
for s in socks:
    out = []
    for r in range(rounds):
        t0 = time.perf_counter()
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, r, r * 4096, 4096) + b"\x5a" * 4096)
        _, err, _ = struct.unpack(">IIQ", recv(s, 16)); assert err == 0
        out.append(round((time.perf_counter() - t0) * 1e6))
    print(" ".join(map(str, out)))
PY
}
VOLS=$(seq -w 0 $((N - 1)) | sed 's/^/v/')
nbd_writes "$PORT" 1 $VOLS >/dev/null
echo "== every set took a write; now $QUIET s quiet"
report a "$PA"; report b "$PB"
sleep "$QUIET"
echo "== idle"
report a "$PA"; report b "$PB"
MID=s$(seq -w 0 $((N - 1)) | sed -n "$((N / 2 + 1))p")
echo "  repl status $(median_ms A repl status) ms, repl info $(median_ms A repl info "$MID" --json) ms (median/p99 of 20)"

echo "== a write after the quiet spell (sender starts) vs the next one (sender running)"
nbd_writes "$PORT" 2 $(echo "$VOLS" | head -20) | python3 -c '
import statistics, sys
rows = [list(map(int, l.split())) for l in sys.stdin if l.strip()]
first = statistics.median(r[0] for r in rows); second = statistics.median(r[1] for r in rows)
print(f"  first write {first:.0f} µs, second {second:.0f} µs (median of {len(rows)} sets); ratio {first / second:.2f}x")'
