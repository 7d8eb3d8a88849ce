#!/bin/bash
# Boot the OVS test VM; serial console -> stdout + $LOG; exit 0 iff guest printed "RESULT: PASS".
# usage: run-vm.sh [share-dir]   env: ACCEL=tcg|kvm (default tcg: /dev/kvm here is kvm_pvm and far too slow
#        for a stock kernel), DISK=ext4.img, KERNEL=vmlinux|vmlinuz, TIMEOUT=s, MEM=MiB
set -uo pipefail
WORK=${OVS_VM_WORK:-/var/tmp/weave-router-ovs-vm}
SHARE=${1:-}
ACCEL=${ACCEL:-tcg}
KERNEL=${KERNEL:-$WORK/vmlinux}
args=(-machine q35,accel=$ACCEL -m ${MEM:-512} -smp ${SMP:-1} -nographic -no-reboot
      -kernel "$KERNEL" -initrd "$WORK/initramfs.cpio.gz"
      -append "console=ttyS0 panic=-1 quiet loglevel=3 ${EXTRA_APPEND:-}"
      -device isa-debug-exit,iobase=0xf4,iosize=0x04 -nic none)
[ "$ACCEL" = kvm ] && args+=(-cpu ${CPU:-host,-arch-capabilities})
[ -n "$SHARE" ] && args+=(-virtfs local,path="$SHARE",mount_tag=share,security_model=none,readonly=${SHARE_RO:-on})
[ -n "${DISK:-}" ] && args+=(-drive file="$DISK",format=raw,if=virtio,readonly=on)
LOG=${LOG:-$WORK/serial.log}
timeout ${TIMEOUT:-120} qemu-system-x86_64 "${args[@]}" </dev/null 2>&1 | tr -d '\033' | tee "$LOG"
rc=${PIPESTATUS[0]}
echo "qemu exit code: $rc (33 = guest PASS via isa-debug-exit, 35 = FAIL, 124 = timeout)"
grep -aq '^RESULT: PASS' "$LOG"
