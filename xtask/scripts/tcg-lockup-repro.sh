#!/bin/bash
# Reproduces the guest soft lockup of multi-threaded TCG without ifsock (see TCG_ACCEL in
# xtask/src/vm/boot.rs): a busybox guest toggles a syscall tracepoint (a static key, patched
# with the int3 protocol) while `dd bs=1` makes syscalls on each vCPU.
#
# usage: xtask/scripts/tcg-lockup-repro.sh ACCEL TOGGLES LOG
#   ACCEL   QEMU -accel value: `tcg` (multi-threaded, locks up) or `tcg,thread=single` (does not)
#   TOGGLES tracepoint enable/disable pairs before the guest powers off
#   LOG     console log; ends with `REPRO-DONE` on success, or the soft lockup's stacks
# Needs `cargo xtask vm-test` to have downloaded the kernel once (target/vm/kernel) and a static
# busybox (busybox-static). Exit status: 0 done, 1 soft lockup, 2 neither (timeout: 900 s).
set -euo pipefail
accel=$1 toggles=$2 log=$3
root=$(cd "$(dirname "$0")/../.." && pwd)
kernel=$(ls "$root"/target/vm/kernel/boot/vmlinuz-* | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/rd/{bin,proc,sys,dev}
cp "$(command -v busybox)" "$work/rd/bin/busybox"
cat > "$work/rd/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing
echo 1 > /proc/sys/kernel/softlockup_panic
N=$(sed -n 's/.*toggles=\([0-9]*\).*/\1/p' /proc/cmdline)
echo "cpus=$(nproc) toggles=$N"
taskset 1 dd if=/dev/zero of=/dev/null bs=1 count=2000000000 2>/dev/null &
taskset 2 dd if=/dev/zero of=/dev/null bs=1 count=2000000000 2>/dev/null &
E=/sys/kernel/tracing/events/syscalls/sys_enter_openat/enable
i=0
while [ $i -lt "$N" ]; do
  echo 1 > $E; echo 0 > $E
  i=$((i+1))
  [ $((i % 100)) = 0 ] && echo "toggles $i uptime $(cut -d' ' -f1 /proc/uptime)"
done
echo "REPRO-DONE toggles=$i uptime $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
INIT
chmod +x "$work/rd/init"
(cd "$work/rd" && find . | cpio -o -H newc 2>/dev/null) > "$work/rd.cpio"
timeout 900 qemu-system-x86_64 -accel "$accel" -cpu max -m 1024 -smp 2 -nodefaults -display none \
  -no-reboot -serial stdio -kernel "$kernel" -initrd "$work/rd.cpio" \
  -append "console=ttyS0 panic=-1 quiet rdinit=/init mitigations=off watchdog_thresh=10 toggles=$toggles" \
  > "$log" 2>&1 < /dev/null || true
if grep -q "BUG: soft lockup" "$log"; then
  grep -m1 "BUG: soft lockup" "$log"; grep -m1 "RIP: 0010" "$log"; exit 1
elif grep -q REPRO-DONE "$log"; then
  grep REPRO-DONE "$log"; exit 0
fi
echo "neither done nor locked up (timeout?): $log"; exit 2
