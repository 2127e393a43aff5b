#!/bin/sh
# What a user does with umbra's ublk export, checked one step at a time.
# Runs inside the VM tools/vm-ublk.sh boots (or directly on a host with
# ublk). Prints "ok"/"FAIL" per check and a closing "N passed, M failed".
set -u
UMBRA=${UMBRA:-$PWD/target/release/umbra}
W=$(mktemp -d "${TMPDIR:-/tmp}/umbra-ublk.XXXXXX")
export UMBRA_DATA_DIR=$W/data UMBRA_SOCKET=$W/data/umbra.sock UMBRA_DEFAULT_LISTEN=127.0.0.1:0
export RUST_LOG=warn
pass=0; fail=0
check() {
  name=$1; shift
  if "$@" >"$W/last.log" 2>&1; then pass=$((pass+1)); echo "ok   $name"
  else fail=$((fail+1)); echo "FAIL $name"; sed 's/^/     | /' "$W/last.log" | tail -20; fi
}
start_daemon() {
  "$UMBRA" serve >>"$W/daemon.log" 2>&1 &
  PID=$!
  i=0; while [ ! -S "$UMBRA_SOCKET" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
  # The socket may be a leftover of a killed daemon: wait for an answer.
  i=0; while ! "$UMBRA" status >/dev/null 2>&1 && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
}
dev_of() { "$UMBRA" export list --json | python3 -c "import json,sys; print([e['device'] for e in json.load(sys.stdin) if e['volume']=='$1' and e['kind']=='ublk'][0])"; }

start_daemon
check "daemon starts" "$UMBRA" status

# 1. ext4 on /dev/ublkbN: mkfs, mount, files, remount, verify.
"$UMBRA" volume create fs --size 256M >/dev/null
DEV=$("$UMBRA" export ublk fs 2>"$W/export.err")
echo "     fs exported at $DEV"
check "export ublk prints a block device" test -b "$DEV"
check "export list shows it" sh -c "'$UMBRA' export list --json | grep -q '\"device\": \"$DEV\"'"
check "mkfs.ext4" mkfs.ext4 -q -F "$DEV"
mkdir -p "$W/mnt"
check "mount" mount "$DEV" "$W/mnt"
for i in 1 2 3 4 5 6; do head -c $((i * 300000)) /dev/urandom > "$W/mnt/file$i"; done
mkdir -p "$W/mnt/dir"; head -c 5000000 /dev/urandom > "$W/mnt/dir/big"
(cd "$W/mnt" && sha256sum file* dir/big) > "$W/sums"
sync
check "umount" umount "$W/mnt"
check "remount" mount "$DEV" "$W/mnt"
check "files verify after remount" sh -c "cd '$W/mnt' && sha256sum -c --quiet '$W/sums'"

# 2. A dependent shadow of the mounted volume, exported over ublk and
#    mounted read-only: exactly the files of that moment.
sync; fsfreeze -f "$W/mnt"
check "image enable (dependent) while mounted" "$UMBRA" image enable snap --master fs --shadow fs-snap --mode dependent
fsfreeze -u "$W/mnt"
head -c 700000 /dev/urandom > "$W/mnt/file1"; rm -f "$W/mnt/file2"; head -c 100000 /dev/urandom > "$W/mnt/later"; sync
SDEV=$("$UMBRA" export ublk fs-snap --read-only 2>>"$W/export.err")
mkdir -p "$W/snap"
check "a read-only export is a read-only disk" sh -c "[ \"\$(cat /sys/block/\$(basename '$SDEV')/ro)\" = 1 ]"
check "shadow mounts read-only" mount -o ro,noload "$SDEV" "$W/snap"
check "shadow has exactly the files of T0" sh -c "cd '$W/snap' && sha256sum -c --quiet '$W/sums' && [ ! -e later ]"
umount "$W/snap" 2>/dev/null
check "shadow export removed" "$UMBRA" export remove fs-snap --kind ublk
check "shadow device gone" sh -c "! test -e '$SDEV'"
(cd "$W/mnt" && sha256sum file* dir/big later) > "$W/sums2"

# 3. fio on a raw device: io_uring, O_DIRECT, crc32c verification, with
#    and without fsync every 16 writes.
"$UMBRA" volume create raw --size 128M >/dev/null
RDEV=$("$UMBRA" export ublk raw --queues 2 --depth 32 2>>"$W/export.err")
check "fio io_uring direct verify" fio --name=v --filename="$RDEV" --ioengine=io_uring --direct=1 \
  --rw=randwrite --bs=4k --size=32M --iodepth=16 --verify=crc32c --verify_fatal=1 --verify_state_save=0
check "fio with fsync every 16 writes" fio --name=f --filename="$RDEV" --ioengine=io_uring --direct=1 \
  --rw=write --bs=64k --size=32M --offset=64M --iodepth=8 --fsync=16 --verify=crc32c --verify_fatal=1 --verify_state_save=0
check "discard and write-zeroes" sh -c "blkdiscard -o 0 -l 1048576 '$RDEV' && blkdiscard -z -o 1048576 -l 1048576 '$RDEV'"

# 4. kill -9 with the filesystem mounted: the device stays, the restarted
#    daemon re-attaches, nothing acknowledged and flushed is lost.
sync
kill -9 "$PID"; wait "$PID" 2>/dev/null
check "device survives the daemon" test -b "$DEV"
start_daemon
check "restarted daemon re-attached" sh -c "'$UMBRA' export list --json | grep -q '\"device\": \"$DEV\"'"
check "files verify after kill -9 and recovery" sh -c "cd '$W/mnt' && echo 3 > /proc/sys/vm/drop_caches && sha256sum -c --quiet '$W/sums2'"
check "filesystem writable after recovery" sh -c "head -c 200000 /dev/urandom > '$W/mnt/after' && sync"
check "umount after recovery" umount "$W/mnt"
check "fsck clean" fsck.ext4 -n -f "$DEV"

# 5. export remove under fio load ends cleanly; the device disappears.
check "raw device back after recovery" sh -c "test -b '$RDEV' || { ls -l /dev/ublk*; '$UMBRA' export list --json; false; }"
fio --name=load --filename="$RDEV" --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
  --size=64M --iodepth=16 --time_based --runtime=60 >/dev/null 2>&1 &
FIO=$!
sleep 3
check "export remove under load" "$UMBRA" export remove raw --kind ublk
wait "$FIO" 2>/dev/null
check "device gone after remove" sh -c "i=0; while test -e '$RDEV' && [ \$i -lt 50 ]; do sleep 0.1; i=\$((i+1)); done; ! test -e '$RDEV' || { ls -l /dev/ublk*; grep -i ublk '$W/daemon.log'; false; }"
check "daemon still serves" "$UMBRA" status

# 6. A clean restart brings the ublk export back (a new device), here in
#    copy mode instead of USER_COPY.
kill -TERM "$PID"; wait "$PID" 2>/dev/null
check "clean shutdown" sh -c "! kill -0 $PID 2>/dev/null"
export UMBRA_UBLK_COPY_MODE=1
start_daemon
DEV=$(dev_of fs)
check "export back after a clean restart" test -b "$DEV"
check "copy mode in use" sh -c "'$UMBRA' export list --json | grep -q '\"user_copy\": false'"
check "files verify in copy mode" sh -c "mount '$DEV' '$W/mnt' && cd '$W/mnt' && sha256sum -c --quiet '$W/sums2' && test -s after"
umount "$W/mnt" 2>/dev/null
"$UMBRA" volume create raw2 --size 64M >/dev/null
R2=$("$UMBRA" export ublk raw2 --depth 16 2>>"$W/export.err")
check "fio verify in copy mode" fio --name=c --filename="$R2" --ioengine=io_uring --direct=1 \
  --rw=randrw --bs=16k --size=32M --iodepth=8 --verify=crc32c --verify_fatal=1 --verify_state_save=0

# 7. Many requests in flight per queue: a volume that takes 50 ms per
#    request (--latency; long enough that the device, not the emulated
#    CPU, is what a request waits for), read at queue depth 16 through one
#    ublk queue. The queue hands requests to its workers, so the volume has
#    many in flight at once (it had one at a time before).
"$UMBRA" volume create slow --size 64M --latency 50ms >/dev/null
QDEV=$("$UMBRA" export ublk slow --depth 32 2>>"$W/export.err")
iops() { # depth seconds
  fio --name=qd --filename="$QDEV" --ioengine=io_uring --direct=1 --rw=randread --bs=4k \
    --size=64M --iodepth="$1" --time_based --runtime="$2" --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}
iops 16 4 > "$W/qd16" &
FIO=$!
sleep 1
max=0
for i in 1 2 3 4 5 6 7 8 9 10; do
  n=$("$UMBRA" stats slow --json | grep -o '"in_flight": *[0-9]*' | head -1 | grep -o '[0-9]*$')
  [ "${n:-0}" -gt "$max" ] && max=$n
  sleep 0.2
done
wait "$FIO"
check "one queue keeps many requests in flight (at most $max seen, 8 needed)" test "$max" -ge 8
echo "info: 50 ms per request, 4 KiB randread, one queue: QD1 $(iops 1 3) IOPS, QD16 $(cat "$W/qd16") IOPS"
"$UMBRA" export remove slow --kind ublk >/dev/null 2>&1

"$UMBRA" export remove fs --kind ublk >/dev/null 2>&1
kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null
if [ "$fail" -gt 0 ]; then echo "---- daemon log"; tail -40 "$W/daemon.log"; cat "$W/export.err"; fi
echo "$pass passed, $fail failed"
