#!/bin/bash
# Builds a tiny initramfs that boots Debian's stock kernel (which has openvswitch.ko)
# under QEMU, loads the OVS datapath module and runs the project's guest test from a 9p
# share. Everything lives under $OVS_VM_WORK (default /var/tmp/weave-router-ovs-vm) and is
# reused: the kernel and Open vSwitch packages are downloaded once, never installed.
# Needs root for apt.
set -euo pipefail
WORK=${OVS_VM_WORK:-/var/tmp/weave-router-ovs-vm}
HERE=$(dirname "$(readlink -f "$0")")
mkdir -p "$WORK"/debs
cd "$WORK"

# --- host packages (qemu, busybox-static, kmod for depmod/modprobe -d, libxdp1 for ovs-dpctl's libs)
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
[ -e /usr/lib/x86_64-linux-gnu/libxdp.so.1 ] || need+=(libxdp1)
[ -x /usr/sbin/xtables-nft-multi ] || need+=(iptables)
[ -x /usr/sbin/ipset ] || need+=(ipset)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${need[@]}" >/dev/null ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi

# --- kernel + ovs userspace (.deb extracted, never installed)
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
KV=${KPKG#linux-image-}
( cd debs
  ls ${KPKG}_*.deb >/dev/null 2>&1 || apt-get download "$KPKG" 2>/dev/null
  ls openvswitch-switch_*.deb >/dev/null 2>&1 || apt-get download openvswitch-switch 2>/dev/null )
if [ ! -d kroot/lib/modules/$KV ]; then
  rm -rf kroot; dpkg -x debs/${KPKG}_*.deb kroot
  depmod -b "$WORK/kroot" "$KV"   # .deb ships no modules.dep (postinst makes it)
fi
[ -d ovsroot ] || dpkg -x debs/openvswitch-switch_*.deb ovsroot
cp kroot/boot/vmlinuz-$KV vmlinuz
# uncompressed ELF vmlinux: qemu boots it via the PVH entry (CONFIG_PVH=y) and skips the
# in-guest XZ decompressor (saves ~1.5-4 s under TCG)
python3 - <<'PY'
import lzma
d = open("vmlinuz", "rb").read(); off = d.find(b"\xfd7zXZ\x00")
open("vmlinux", "wb").write(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[off:]))
PY

# --- initramfs tree
R=$WORK/initramfs; rm -rf "$R"
mkdir -p "$R"/{bin,sbin,dev,proc,sys,tmp,run,mnt/host,mnt/share,etc,var/run/openvswitch,lib/modules/$KV}
cp /bin/busybox "$R"/bin/busybox
for a in sh mount umount mkdir cat echo ls insmod modprobe lsmod poweroff reboot sleep dmesg grep chroot uname date mknod seq head tr ping kill wc sed cut tail timeout wget; do
  ln -sf busybox "$R/bin/$a"; done
ln -sf ../bin/busybox "$R/sbin/modprobe"   # kernel request_module() runs /sbin/modprobe

# modules (+ dependencies) copied with their paths, then depmod for busybox modprobe
MODS="crc32c_generic openvswitch vport-vxlan vxlan veth bridge tun virtio_pci 9pnet_virtio 9p"
# What a Weave Net router (weaver) needs when the guest test runs one: its dummy interface,
# iptables (nft backend) with the matches and targets it uses, and ipset.
MODS="$MODS dummy nf_tables nft_compat nft_chain_nat nf_nat nf_conntrack xt_comment xt_conntrack
  xt_state xt_set xt_physdev xt_addrtype xt_MASQUERADE xt_NFLOG xt_tcpudp xt_mark xt_multiport
  ip_set ip_set_hash_ip ip_set_hash_net ip_set_list_set br_netfilter nfnetlink_log"
for m in $MODS; do
  modprobe -d "$WORK/kroot" -S "$KV" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | sort -u | while read -r f; do
  rel=${f#"$WORK/kroot/"}
  mkdir -p "$R/$(dirname "$rel")"; cp "$f" "$R/$rel"
done
cp kroot/lib/modules/$KV/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KV/" 2>/dev/null || true
depmod -b "$R" "$KV"

# a dynamically linked binary + its libs
copy_bin() { # src [dest]
  local src=$1 dst=${2:-$1}
  mkdir -p "$R/$(dirname "$dst")"; cp -L "$src" "$R/$dst"
  ldd "$src" | awk '/=>/{print $3} /^\s*\/lib/{print $1}' | while read -r l; do
    [ -n "$l" ] && [ -e "$l" ] || continue
    mkdir -p "$R/$(dirname "$l")"; cp -Ln "$l" "$R/$l" 2>/dev/null || true
  done
}
copy_bin ovsroot/usr/bin/ovs-dpctl /usr/bin/ovs-dpctl
copy_bin /usr/sbin/genl /usr/sbin/genl
# (as ip.iproute2: busybox sh would run its own `ip` applet for plain `ip`)
copy_bin /usr/sbin/ip /usr/sbin/ip.iproute2
copy_bin /usr/sbin/bridge /usr/sbin/bridge
copy_bin /usr/sbin/xtables-nft-multi /usr/sbin/xtables-nft-multi
for t in iptables iptables-save iptables-restore ip6tables; do ln -sf xtables-nft-multi "$R/usr/sbin/$t"; done
copy_bin /usr/sbin/ipset /usr/sbin/ipset
# iptables' matches and targets are libraries it loads by name.
# (under /lib: /usr/lib/x86_64-linux-gnu becomes a link to it below)
mkdir -p "$R/lib/x86_64-linux-gnu"
cp -r /usr/lib/x86_64-linux-gnu/xtables "$R/lib/x86_64-linux-gnu/"
# ld.so at the canonical path (Debian: /lib64 -> usr/lib64 symlink in newer; copy real file)
mkdir -p "$R/lib64"; cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
# merged-/usr: libs were copied under /lib/x86_64-linux-gnu by ldd path; keep /usr/lib path too
mkdir -p "$R/usr/lib"; ln -sfn /lib/x86_64-linux-gnu "$R/usr/lib/x86_64-linux-gnu" 2>/dev/null || true

cp "$HERE/init" "$R/init"; chmod +x "$R/init"
( cd "$R" && find . | cpio -o -H newc --quiet | gzip -1 ) > "$WORK/initramfs.cpio.gz"
echo "KV=$KV initramfs=$(du -h "$WORK/initramfs.cpio.gz" | cut -f1)"
