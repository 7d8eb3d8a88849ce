#!/usr/bin/env bash
# One TCP stream pod to pod between two hosts (network namespaces on one underlay), over
# the kernel's own VXLAN overlay and over weave-router's sleeve, in the same run, with
# iperf3. Prints both throughputs, their ratio, the sleeve's batching factor and the
# router's CPU seconds per GiB. Needs root, iperf3 and a built weave-router.
#
#   [BACKEND=auto|io-uring|epoll] perf/scripts/sleeve-vs-vxlan.sh [ROUTER_BIN] [SECONDS]
set -euo pipefail
BIN=${1:-target/release/weave-router}
SECS=${2:-10}
P=svx$$
NS="${P}u ${P}h1 ${P}h2 ${P}p1 ${P}p2"
cleanup() {
  for n in $NS; do ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  sleep 0.3
  for n in $NS; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT
for n in $NS; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n ${P}u link add br0 type bridge
ip -n ${P}u link set br0 up
for i in 1 2; do
  ip link add u$i netns ${P}h$i type veth peer name v$i netns ${P}u
  ip -n ${P}u link set v$i master br0 up
  ip -n ${P}h$i addr add 192.168.97.$i/24 dev u$i
  ip -n ${P}h$i link set u$i up
done

pod() { # host index, bridge name, pod MTU
  local i=$1 br=$2 mtu=$3
  ip link add pv$i netns ${P}h$i type veth peer name eth0 netns ${P}p$i
  ip -n ${P}h$i link set pv$i master "$br" up
  ip -n ${P}p$i link set eth0 mtu "$mtu" up
  ip -n ${P}p$i addr add 10.40.0.$i/16 dev eth0
}
unpod() { for i in 1 2; do ip -n ${P}h$i link del pv$i 2>/dev/null || true; done; }
measure() { # label
  ip netns exec ${P}p2 iperf3 -s -1 -D >/dev/null 2>&1
  sleep 0.5
  local bps
  bps=$(ip netns exec ${P}p1 iperf3 -c 10.40.0.2 -t "$SECS" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
  echo "$bps"
}

# 1. Kernel VXLAN: a vxlan device per host on a bridge, pods on the bridge.
for i in 1 2; do
  other=$((3 - i))
  ip -n ${P}h$i link add kbr type bridge
  ip -n ${P}h$i link add vx0 type vxlan id 42 dstport 4789 remote 192.168.97.$other local 192.168.97.$i dev u$i
  ip -n ${P}h$i link set vx0 master kbr up
  ip -n ${P}h$i link set kbr up
  pod $i kbr 1450
done
sleep 1
vxlan=$(measure vxlan)
unpod

# 2. weave-router sleeve.
ip netns exec ${P}h1 "$BIN" launch --name aa:00:00:00:00:01 --nickname h1 --dataplane "${BACKEND:-auto}" --metrics-addr= >/tmp/${P}-h1.log 2>&1 &
R1=$!
sleep 0.5
ip netns exec ${P}h2 "$BIN" launch --name aa:00:00:00:00:02 --nickname h2 --dataplane "${BACKEND:-auto}" --metrics-addr= 192.168.97.1 >/tmp/${P}-h2.log 2>&1 &
R2=$!
for _ in $(seq 50); do
  ip netns exec ${P}h1 "$BIN" status connections 2>/dev/null | grep -q "mtu=" && break
  sleep 0.2
done
for i in 1 2; do pod $i weave 1438; done
sleep 1
cpu0=$(( $(awk '{print $14+$15}' /proc/$R1/stat) + $(awk '{print $14+$15}' /proc/$R2/stat) ))
sleeve=$(measure sleeve)
cpu1=$(( $(awk '{print $14+$15}' /proc/$R1/stat) + $(awk '{print $14+$15}' /proc/$R2/stat) ))
report=$(ip netns exec ${P}h1 "$BIN" status --json)

python3 - "$vxlan" "$sleeve" "$SECS" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" "$report" <<'PY'
import json, sys
vx, sl, secs, ticks, hz = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
gib = sl * secs / 8 / 2**30
print(f"kernel VXLAN : {vx/1e9:6.2f} Gbit/s")
print(f"weave sleeve : {sl/1e9:6.2f} Gbit/s")
print(f"ratio        : {sl/vx:6.2f} x kernel VXLAN")
print(f"router CPU   : {ticks/hz/gib:6.2f} s per GiB (both routers)")
try:
    dp = json.loads(sys.argv[6]).get("Dataplane")
    if dp:
        tx = sum(w["UdpTxDatagrams"] for w in dp["Workers"]); calls = sum(w["UdpTxCalls"] for w in dp["Workers"])
        print(f"batching     : {tx/max(calls,1):6.1f} datagrams per send (host1)")
except Exception as e:
    print("batching     : n/a", e)
PY
kill $R1 $R2 2>/dev/null || true
