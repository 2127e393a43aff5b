#!/usr/bin/env bash
# Automatic failover on etcd, RUNS times (default 20), in MODE (sync or
# hybrid) replication: three daemons on loopback and a real etcd; a writer
# writes numbered 4 KiB blocks to the production node until it dies
# (kill -9), then to the new production node. Per run: failover time (last
# acknowledged write on the old primary to the first on the new one) and
# data lost (acknowledged writes whose block is older on the new primary).
# Prints the median and the maximum next to the lease TTL.
#
#   tools/bench-failover.sh
#   MODE=hybrid RUNS=10 TTL=3 tools/bench-failover.sh
set -euo pipefail

MODE=${MODE:-sync}
RUNS=${RUNS:-20}
TTL=${TTL:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${BENCH_DIR:-/dev/shm}/umbra-failover.XXXXXX")
declare -A PID
cleanup() {
  for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
command -v etcd >/dev/null || { echo "bench-failover: etcd is not installed (etcd-server)" >&2; exit 1; }

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
UMBRA=$ROOT/target/release/umbra
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EC=$(free_port); EP=$(free_port)
etcd --name m0 --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$EC" \
  --advertise-client-urls "http://127.0.0.1:$EC" --listen-peer-urls "http://127.0.0.1:$EP" \
  --initial-advertise-peer-urls "http://127.0.0.1:$EP" --initial-cluster "m0=http://127.0.0.1:$EP" \
  --log-level error >/dev/null 2>&1 &
PID[etcd]=$!
start() { # node
  UMBRA_DATA_DIR=$WORK/$1 UMBRA_DEFAULT_LISTEN=127.0.0.1:0 RUST_LOG=${RUST_LOG:-warn} \
    "$UMBRA" serve >/dev/null 2>>"$WORK/$1.log" &
  PID[$1]=$!
  for _ in $(seq 100); do [ -S "$WORK/$1/umbra.sock" ] && break; sleep 0.1; done
}
on() { local n=$1; shift; UMBRA_SOCKET=$WORK/$n/umbra.sock "$UMBRA" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
for _ in $(seq 100); do curl -s "http://127.0.0.1:$EC/health" 2>/dev/null | grep -q true && break; sleep 0.1; done

head -c 32 /dev/urandom | base64 >"$WORK/key"
declare -A ADDR NBD
for n in a b c; do
  start $n
  on $n repl setup --node $n --listen 127.0.0.1:0 >/dev/null
  for p in a b c; do [ $p != $n ] && on $n repl peer add $p --secret-file "$WORK/key" >/dev/null; done
  ADDR[$n]=$(on $n repl status --json | field '["listen"]')
  NBD[$n]=127.0.0.1:$(free_port)
  on $n volume create v --size 64M >/dev/null
  on $n export nbd v --listen "${NBD[$n]}" >/dev/null
done
on a repl enable s --local v --peer "${ADDR[b]}" --remote v --mode "$MODE" --no-sync --timeout 2s >/dev/null
on a repl enable s --local v --peer "${ADDR[c]}" --remote v --mode "$MODE" --no-sync --timeout 2s >/dev/null
on a repl wait s --timeout 30 >/dev/null
on a group policy s --auto-failover on --max-lag-on-failover 64M >/dev/null
for n in a b c; do
  on $n cluster join --etcd "http://127.0.0.1:$EC" --name bench --ttl "$TTL" >/dev/null
done

# The writer: a minimal NBD client. Writes block k (of 16384) with its
# sequence number until the connection fails, then reconnects to the
# address in $WORK/target; every acknowledged write is logged with its
# time. Stops at the first acknowledgement on a new target.
cat >"$WORK/writer.py" <<'PY'
import socket, struct, sys, time
work = sys.argv[1]
def connect(addr):
    h, p = addr.rsplit(":", 1)
    s = socket.create_connection((h, int(p)), timeout=5)
    s.recv(18, socket.MSG_WAITALL)
    s.sendall(struct.pack(">I", 3))
    name = b"v"
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(name) + 6) + struct.pack(">I", len(name)) + name + b"\0\0")
    while True:
        hdr = s.recv(20, socket.MSG_WAITALL)
        if len(hdr) < 20:
            raise OSError("connection closed")
        _, _, rtype, ln = struct.unpack(">QIII", hdr)
        s.recv(ln, socket.MSG_WAITALL) if ln else None
        if rtype == 1:
            return s
        if rtype >= 0x80000000:
            raise OSError("export refused")
def write(s, seq):
    k = seq % 16384
    data = struct.pack("<Q", seq) * 512
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, seq, k * 4096, 4096) + data)
    r = s.recv(16, socket.MSG_WAITALL)
    if len(r) < 16:
        raise OSError("connection closed")
    _, err, _ = struct.unpack(">IIQ", r)
    return err == 0
first = open(f"{work}/target").read().strip()
log = open(f"{work}/acks", "w")
seq = 0; cur = first; s = connect(cur)
while True:
    seq += 1
    try:
        ok = write(s, seq)
    except OSError:
        ok = False
    if ok:
        log.write(f"{time.time():.6f} {cur} {seq}\n"); log.flush()
        if cur != first:
            break
        continue
    while True:
        time.sleep(0.02)
        t = open(f"{work}/target").read().strip()
        if t != cur:
            try:
                s = connect(t); cur = t; break
            except OSError:
                pass
PY

# The production node (waits up to 30 s for one: a rejoin may still be
# settling); says what each node reports when there is none.
primary() {
  for _ in $(seq 300); do
    for n in a b c; do
      [ -S "$WORK/$n/umbra.sock" ] && on $n repl info s --json 2>/dev/null | grep -q '"role": *"primary"' && { echo $n; return 0; }
    done
    sleep 0.1
  done
  for n in a b c; do echo "node $n: $(on $n group status s --json 2>&1 | tr -d '\n' | cut -c1-400)" >&2; done
  return 1
}
trap 'echo "bench-failover: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
RESULTS=$WORK/results; : >"$RESULTS"
for run in $(seq "$RUNS"); do
  p=$(primary) || { echo "run $run: no production node" >&2; exit 1; }
  echo "${NBD[$p]}" >"$WORK/target"
  : >"$WORK/acks"
  python3 "$WORK/writer.py" "$WORK" &
  W=$!
  sleep 1
  kill -9 "${PID[$p]}"; unset "PID[$p]"
  new=""
  for _ in $(seq 600); do
    for n in a b c; do
      [ $n = "$p" ] && continue
      on $n repl info s --json 2>/dev/null | grep -q '"role": *"primary"' && new=$n
    done
    [ -n "$new" ] && break
    sleep 0.05
  done
  [ -n "$new" ] || { echo "run $run: no failover" >&2; exit 1; }
  echo "${NBD[$new]}" >"$WORK/target"
  wait $W
  # Data lost: acknowledged writes on the old primary whose block on the
  # new one holds an older sequence number.
  lost=$(python3 - "$WORK/acks" "${NBD[$new]}" <<'PY'
import struct, subprocess, sys
acks = [l.split() for l in open(sys.argv[1])]
old = acks[0][1]
latest = {}
for t, who, seq in acks:
    if who == old:
        latest[int(seq) % 16384] = int(seq)
img = subprocess.run(["nbdcopy", f"nbd://{sys.argv[2]}/v", "-"], capture_output=True).stdout
lost = sum(1 for k, seq in latest.items() if struct.unpack_from("<Q", img, k * 4096)[0] < seq)
print(lost * 4096)
PY
)
  read -r gap <<<"$(python3 - "$WORK/acks" <<'PY'
import sys
acks = [l.split() for l in open(sys.argv[1])]
old = acks[0][1]
last_old = max(float(t) for t, who, _ in acks if who == old)
first_new = min(float(t) for t, who, _ in acks if who != old)
print(round((first_new - last_old) * 1000))
PY
)"
  echo "$gap $lost" >>"$RESULTS"
  printf "  run %2d: %s -> %s in %5s ms, %s bytes lost\n" "$run" "$p" "$new" "$gap" "$lost"
  start "$p"
  on "$new" repl wait s --timeout 120 >/dev/null
done
python3 - "$RESULTS" "$TTL" "$MODE" <<'PY'
import statistics, sys
r = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
g = sorted(x[0] for x in r)
print(f"== {sys.argv[3]}: failover median {statistics.median(g):.0f} ms, max {g[-1]} ms "
      f"(lease TTL {sys.argv[2]} s); bytes lost: max {max(x[1] for x in r)}, total {sum(x[1] for x in r)}")
PY
