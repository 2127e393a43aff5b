#!/usr/bin/env bash
# Imaging benchmark, in one run against one daemon:
#  1. establish time of a dependent shadow of a 1 GiB and a 64 GiB sparse
#     master (measured inside the daemon: quiesce + header + layer swap);
#  2. 4 KiB random writes at QD32 through the NBD export, IOS writes per
#     run: no shadow, right after establishing a dependent shadow (every
#     write the first touch of its chunk: offsets aligned to the 32 KiB
#     chunk, never repeated), and the same offsets again once those chunks
#     are copied; ratios to no shadow;
#  3. an independent set's full copy of a 2 GiB master, then an update
#     after 1% of its chunks changed: the update copies only those.
#
#   tools/bench-image.sh                      # on tmpfs
#   IOS=50000 BENCH_DIR=/var/tmp tools/bench-image.sh
#   BENCH_FS=xfs tools/bench-image.sh         # on a fresh loop-mounted XFS
#   BENCH_FS=ext4 tools/bench-image.sh        # (reflink) or ext4; as root
#   CHUNK=4K BENCH_FS=ext4 tools/bench-image.sh   # the set's chunk (32K)
#
# On XFS the copy-on-write shares the master's extents (FICLONERANGE);
# the run prints how many chunks moved that way.
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/dev/shm}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PID=""
FSIMG=""
FSMNT=""
if [ -n "${BENCH_FS:-}" ]; then
  case "$BENCH_FS" in
    xfs) MKFS="mkfs.xfs -q -m reflink=1" ;;
    ext4) MKFS="mkfs.ext4 -q" ;;
    *) echo "bench-image: BENCH_FS is xfs or ext4" >&2; exit 2 ;;
  esac
  # The filesystem image itself lives on real disk, not tmpfs.
  FSIMG=$(mktemp /var/tmp/umbra-bench-fs.XXXXXX)
  FSMNT=$(mktemp -d /var/tmp/umbra-bench-mnt.XXXXXX)
  truncate -s 12G "$FSIMG"
  $MKFS "$FSIMG"
  mount -o loop "$FSIMG" "$FSMNT"
  BENCH_DIR=$FSMNT
fi
WORK=$(mktemp -d "$BENCH_DIR/umbra-image-bench.XXXXXX")
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
  if [ -n "$FSMNT" ]; then umount "$FSMNT"; rmdir "$FSMNT"; rm -f "$FSIMG"; fi
}
trap cleanup EXIT
echo "bench-image: on $(df -T "$WORK" | awk 'NR==2 {print $2}') ($BENCH_DIR)"
command -v fio >/dev/null || { echo "bench-image: fio is not installed" >&2; exit 1; }

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
UMBRA=$ROOT/target/release/umbra
UMBRA_DATA_DIR=$WORK/data UMBRA_DEFAULT_LISTEN=127.0.0.1:0 RUST_LOG=warn \
  "$UMBRA" serve >/dev/null 2>"$WORK/umbra.log" &
PID=$!
export UMBRA_SOCKET=$WORK/data/umbra.sock
for _ in $(seq 100); do [ -S "$UMBRA_SOCKET" ] && break; sleep 0.1; done
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
uri_of() { "$UMBRA" export list --json | python3 -c "import json,sys; print([e['uri'] for e in json.load(sys.stdin) if e['volume']=='$1'][0])"; }

echo "== establish time (dependent shadow, sparse master)"
for size in 1G 64G; do
  "$UMBRA" volume create "big$size" --size "$size" >/dev/null
  t0=$(date +%s%N)
  out=$("$UMBRA" image enable "e$size" --master "big$size" --shadow "big$size-s" \
       --mode dependent --json)
  t1=$(date +%s%N)
  us=$(field '["establish_us"]' <<<"$out")
  echo "  $size master: $(python3 -c "print($us/1000)") ms in the daemon (quiesce, header, layers);" \
       "$(python3 -c "print(round(($t1-$t0)/1e6, 2))") ms for the whole CLI command (bitmap file, shadow volume)"
  "$UMBRA" image disable "e$size" >/dev/null
  "$UMBRA" volume remove "big$size" >/dev/null
  "$UMBRA" volume remove "big$size-s" >/dev/null
  rm -f "$WORK/data/big$size.img" "$WORK/data/big$size-s.img"
done

IOS=${IOS:-30000}
# The set's chunk (its copy unit); writes land 32 KiB apart, each the first
# touch of its chunk at any chunk size up to that.
CHUNK=${CHUNK:-32K}
REPEAT=${REPEAT:-3}
echo "== 4k randwrite QD32, $IOS writes at chunk-aligned offsets per run, median of $REPEAT rounds"
"$UMBRA" volume create w --size 2G >/dev/null
fio --name=prep --filename="$WORK/data/w.img" --rw=write --bs=1M --size=2G \
    --ioengine=psync >/dev/null
"$UMBRA" export nbd w --listen 127.0.0.1:0 >/dev/null
URI=$(uri_of w)
fio_iops() {
  fio --name=b --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --blockalign=32k \
      --iodepth=32 --size=2G --number_ios="$IOS" --randseed="$1" \
      --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; t=sys.stdin.read(); print(round(json.loads(t[t.index("{"):])["jobs"][0]["write"]["iops"]))'
}
base=(); first=(); again=()
for r in $(seq "$REPEAT"); do
  # Each round: no shadow; a fresh point in time (every chunk a first
  # touch); the same offsets again (every chunk already saved).
  base+=("$(fio_iops "$r")")
  "$UMBRA" image enable snap --master w --shadow w-snap --mode dependent --chunk-size "$CHUNK" >/dev/null
  first+=("$(fio_iops "$r")")
  again+=("$(fio_iops "$r")")
  "$UMBRA" stats w --json | python3 -c '
import json, sys
s = json.load(sys.stdin)["volumes"][0]["image"][0]
print("  round: %d chunks copied on write, %d of them by reflink" % (s["cow_chunks"], s["cloned_chunks"]))'
  "$UMBRA" image disable snap >/dev/null
  "$UMBRA" volume remove w-snap --delete-data --yes >/dev/null
done
python3 - "${base[*]}" "${first[*]}" "${again[*]}" <<'PY'
import statistics as st, sys
b, f, a = ([float(x) for x in arg.split()] for arg in sys.argv[1:4])
mb, mf, ma = st.median(b), st.median(f), st.median(a)
print(f"  no shadow:          {mb:.0f} IOPS   (rounds: {' '.join(f'{x:.0f}' for x in b)})")
print(f"  first touch (COW):  {mf:.0f} IOPS   {mf/mb:.2f}x   (rounds: {' '.join(f'{x:.0f}' for x in f)})")
print(f"  already copied:     {ma:.0f} IOPS   {ma/mb:.2f}x   (rounds: {' '.join(f'{x:.0f}' for x in a)})")
PY

echo "== independent set on a 2 GiB master: full copy, then update after 1% changed"
"$UMBRA" volume create u --size 2G >/dev/null
fio --name=prep --filename="$WORK/data/u.img" --rw=write --bs=1M --size=2G \
    --ioengine=psync >/dev/null
"$UMBRA" export nbd u --listen 127.0.0.1:0 >/dev/null
t0=$(date +%s.%N)
"$UMBRA" image enable full --master u --shadow u-copy --mode independent --wait >/dev/null
t1=$(date +%s.%N)
chunks=$("$UMBRA" image info full --json | field '["chunks_total"]')
URI=$(uri_of u)
# 1% of the chunks, one 4 KiB write each.
fio --name=touch --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --blockalign=32k \
    --size=2G --number_ios=$((chunks / 100)) --iodepth=16 >/dev/null 2>&1
changed=$("$UMBRA" image info full --json | field '["chunks_differing"]')
t2=$(date +%s.%N)
"$UMBRA" image update full --to shadow --wait >/dev/null
t3=$(date +%s.%N)
python3 - "$t0" "$t1" "$t2" "$t3" "$chunks" "$changed" <<'PY'
import sys
t0, t1, t2, t3 = map(float, sys.argv[1:5]); total, changed = map(int, sys.argv[5:])
full, upd = t1 - t0, t3 - t2
print(f"  full copy:  {total} chunks in {full:.2f} s")
print(f"  update:     {changed} changed chunks ({100*changed/total:.1f}%) in {upd*1000:.0f} ms "
      f"({100*upd/full:.1f}% of the full copy's time)")
PY
