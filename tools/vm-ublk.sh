#!/usr/bin/env bash
# Run tools/ublk-guest.sh against a real Linux ublk driver.
#
# On a host with ublk (/dev/ublk-control, or `modprobe ublk_drv` works) the
# script runs right here. Otherwise this boots Debian's 6.12 kernel (which
# has ublk_drv as a module) under qemu TCG with a busybox initramfs; the
# guest mounts this host's root read-only over 9p, chroots into it and runs
# the same script with the host's binaries (the umbra just built, mkfs.ext4,
# fio). The run passes only if the guest prints a closing
# "N passed, M failed" line with M = 0.
#
#   tools/vm-ublk.sh                 # builds umbra (release) first
#   UMBRA_VM_CACHE=/srv/cache tools/vm-ublk.sh
#
# Needs: qemu-system-x86 busybox-static cpio kmod xz-utils (apt), network
# access to the Debian archive the first time (the kernel is cached).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${UMBRA_VM_CACHE:-/var/cache/umbra-vm}
GUEST_SCRIPT=${GUEST_SCRIPT:-tools/ublk-guest.sh}
TIMEOUT=${VM_TIMEOUT:-1500}

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

if [ -e /dev/ublk-control ] || modprobe ublk_drv 2>/dev/null; then
  echo "vm-ublk: this host has ublk; running $GUEST_SCRIPT directly"
  out=$(cd "$ROOT" && sh "$GUEST_SCRIPT" 2>&1 | tee /dev/stderr)
else
  for t in qemu-system-x86_64 busybox cpio depmod xz; do
    command -v "$t" >/dev/null || { echo "vm-ublk: $t is not installed" >&2; exit 1; }
  done
  mkdir -p "$CACHE"
  # Resolve the kernel at run time: the archive's version rotates.
  pkg=$(apt-cache depends linux-image-6.12-amd64 | awk '/Depends: linux-image-6/{print $2; exit}')
  [ -n "$pkg" ] || { echo "vm-ublk: cannot resolve linux-image-6.12-amd64 (apt-get update?)" >&2; exit 1; }
  ver=${pkg#linux-image-}
  kdir=$CACHE/$ver
  if [ ! -f "$kdir/boot/vmlinuz-$ver" ]; then
    (cd "$CACHE" && rm -f "${pkg}"_*.deb && apt-get download "$pkg" >/dev/null \
      && rm -rf "$kdir" && dpkg-deb -x "${pkg}"_*.deb "$kdir" && rm -f "${pkg}"_*.deb)
  fi
  depmod -b "$kdir" "$ver"
  work=$(mktemp -d /tmp/umbra-vm.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  # The guest sees this host's root read-only; its scratch space is a
  # tmpfs mounted over a directory that does not hold the repository.
  SCRATCH=""
  for d in /run /mnt /media /srv /var/tmp /tmp; do
    case "$ROOT/" in "$d"/*) continue ;; esac
    [ -d "$d" ] && { SCRATCH=$d; break; }
  done
  [ -n "$SCRATCH" ] || { echo "vm-ublk: no directory for the guest's scratch tmpfs" >&2; exit 1; }
  init=$work/initramfs
  mkdir -p "$init"/{bin,proc,sys,dev,host,mods}
  cp "$(command -v busybox)" "$init/bin/busybox"
  mods="crc32c_generic netfs 9pnet 9pnet_virtio 9p crc16 mbcache jbd2 ext4 ublk_drv"
  for m in $mods; do
    f=$(find "$kdir/lib/modules/$ver" -name "$m.ko*" | head -1)
    if [ -z "$f" ]; then
      echo "vm-ublk: module $m not in the kernel package (built in?)" >&2
      continue
    fi
    case "$f" in
      *.xz) xz -dc "$f" > "$init/mods/$m.ko" ;;
      *.zst) zstd -dqc "$f" > "$init/mods/$m.ko" ;;
      *) cp "$f" "$init/mods/$m.ko" ;;
    esac
  done
  cat > "$init/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $mods; do
  [ -f /mods/\$m.ko ] && insmod /mods/\$m.ko
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /host || echo "9p mount failed"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs -o size=1500m scratch /host$SCRATCH
echo "vm-ublk: guest up, kernel \$(uname -r)"
chroot /host /bin/sh -c "cd $ROOT && TMPDIR=$SCRATCH PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin sh $GUEST_SCRIPT" 2>&1
echo "vm-ublk: guest script exited"
echo o > /proc/sysrq-trigger
sleep 5
INIT
  chmod +x "$init/init"
  (cd "$init" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd"
  echo "vm-ublk: booting $ver under qemu TCG"
  # Multi-threaded TCG races with the guest kernel patching its own code
  # (an int3 oops in early boot, seen once in CI): boot again, at most
  # twice more, when the guest died before its script started.
  for attempt in 1 2 3; do
    out=$(timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 3072 -smp 2 \
        -nographic -no-reboot -kernel "$kdir/boot/vmlinuz-$ver" -initrd "$work/initrd" \
        -append "console=ttyS0 quiet panic=-1" \
        -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap 2>&1 | tee /dev/stderr) || true
    if printf '%s\n' "$out" | grep -q "vm-ublk: guest up"; then
      break
    fi
    echo "vm-ublk: the guest did not come up (attempt $attempt); booting again" >&2
  done
fi

summary=$(printf '%s\n' "$out" | tr -d '\r' | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
if [ -z "$summary" ]; then
  echo "vm-ublk: FAILED: the guest printed no 'N passed, N failed' line" >&2
  exit 1
fi
failed=$(echo "$summary" | awk '{print $3}')
echo "vm-ublk: $summary"
[ "$failed" = 0 ]
