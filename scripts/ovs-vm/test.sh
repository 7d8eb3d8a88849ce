#!/bin/bash
# Runs the Open vSwitch fast-datapath test in a QEMU guest booted from Debian's stock kernel
# (this host's kernel has no openvswitch module): builds the guest once (cached under
# $OVS_VM_WORK, default /var/tmp/weave-router-ovs-vm, rebuilt when these scripts change),
# shares the given weave-router binary and its libraries with it, runs guest-test.sh there
# and reads the result from the serial console. Exit 0 iff the guest passed.
# usage: scripts/ovs-vm/test.sh [path/to/weave-router]   (as root; env TIMEOUT, KEEP_SHARE)
#   WEAVER=path/to/weaver also runs Weave Net 2.8's router (built from Weave's source) in the
#   guest against a weave-router, both on Open vSwitch.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
export OVS_VM_WORK=${OVS_VM_WORK:-/var/tmp/weave-router-ovs-vm}
BIN=$(readlink -f "${1:-target/debug/weave-router}")
[ -x "$BIN" ] || { echo "no weave-router binary at $BIN" >&2; exit 2; }

stamp=$(cat "$HERE/build-initramfs.sh" "$HERE/init" | sha256sum | cut -c1-16)
if [ ! -f "$OVS_VM_WORK/initramfs.cpio.gz" ] || [ "$(cat "$OVS_VM_WORK/stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "building the guest in $OVS_VM_WORK (kernel and Open vSwitch from Debian, cached)"
  bash "$HERE/build-initramfs.sh"
  echo "$stamp" > "$OVS_VM_WORK/stamp"
fi

SHARE=$(mktemp -d /tmp/weave-ovs-vm.XXXXXX)
cleanup() { [ -n "${KEEP_SHARE:-}" ] || rm -rf "$SHARE"; }
trap cleanup EXIT
cp "$BIN" "$SHARE/weave-router"
mkdir "$SHARE/lib"
# The guest has the host's loader and C library (copied for ip and ovs-dpctl); the
# router's own libraries travel with it.
ldd "$BIN" | awk '/=>/ {print $3}' | while read -r lib; do
  [ -e "$lib" ] && cp -L "$lib" "$SHARE/lib/"
done
if [ -n "${WEAVER:-}" ]; then
  cp "$WEAVER" "$SHARE/weaver"
  ldd "$WEAVER" | awk '/=>/ {print $3}' | while read -r lib; do
    [ -e "$lib" ] && cp -Ln "$lib" "$SHARE/lib/" 2>/dev/null || true
  done
fi
cp "$HERE/guest-test.sh" "$SHARE/guest-test"
chmod +x "$SHARE/guest-test"
LOG="$SHARE/serial.log" TIMEOUT=${TIMEOUT:-300} bash "$HERE/run-vm.sh" "$SHARE"
