#!/bin/sh
# Runs inside the QEMU guest (as /mnt/share/guest-test), whose kernel has the Open vSwitch
# datapath: two hosts (network namespaces on a veth underlay) with a weave-router each and
# a pod each. Checks that the routers choose the Open vSwitch backend, that the tunnel's
# heartbeats make both connections fastdp, that the pods reach each other through flows
# the routers installed (read back with Open vSwitch's own ovs-dpctl: set(tunnel) with
# Weave's VNI, DF, TTL 64), and that `weave-router reset` removes the datapath and the
# devices. Prints STEP-OK/STEP-FAIL lines; exits non-zero if any step failed.
S=/mnt/share
export RUST_LOG=info,weave_router::fastdp=debug
IP=/usr/sbin/ip.iproute2
ROUTER="/lib64/ld-linux-x86-64.so.2 --library-path $S/lib $S/weave-router"
fail=0
step() { name=$1; shift; if "$@"; then echo "STEP-OK: $name"; else echo "STEP-FAIL: $name"; fail=1; fi; }
inns() { ns=$1; shift; $IP netns exec "$ns" "$@"; }
# wait_for SECONDS COMMAND...: retries every half second.
wait_for() { n=$(($1 * 2)); shift; while [ $n -gt 0 ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; n=$((n - 1)); done; return 1; }

for ns in h1 h2 p1 p2; do $IP netns add $ns; $IP -n $ns link set lo up; done
$IP link add u1 netns h1 type veth peer name u2 netns h2
$IP -n h1 addr add 10.9.0.1/24 dev u1; $IP -n h1 link set u1 up
$IP -n h2 addr add 10.9.0.2/24 dev u2; $IP -n h2 link set u2 up

launch() { # n [peer]
  mkdir -p /tmp/db$1
  RUST_LOG=${RUST_LOG:-info} inns h$1 $ROUTER launch --name aa:00:00:00:00:0$1 --nickname host$1 --ipalloc-range "" \
    --dataplane epoll --workers 1 --db-dir /tmp/db$1 $2 > /tmp/router$1.log 2>&1 &
}
launch 1
launch 2 10.9.0.1
fastdp() { inns h$1 $ROUTER status connections | grep -q "established fastdp"; }
step host1-fastdp wait_for 90 fastdp 1
step host2-fastdp wait_for 30 fastdp 2
for n in 1 2; do
  echo "--- host$n status connections"; inns h$n $ROUTER status connections
  grep -E "Fast datapath|Open vSwitch|ovs:" /tmp/router$n.log
done
step backend-is-open-vswitch sh -c 'grep -q "Fast datapath backend: ovs" /tmp/router1.log && grep -q "Fast datapath backend: ovs" /tmp/router2.log'
echo "--- host1 datapath"; inns h1 ovs-dpctl show
echo "--- host1 netlink sockets"; inns h1 cat /proc/net/netlink

pod() { # n
  $IP link add vp$1 netns h$1 type veth peer name eth0 netns p$1
  $IP -n h$1 link set vp$1 master weave up
  $IP -n p$1 link set eth0 mtu 1438 up
  $IP -n p$1 addr add 10.32.0.$1/12 dev eth0
}
pod 1; pod 2
step pods-ping wait_for 30 inns p1 ping -c 1 -W 1 10.32.0.2
step pods-ping-1400 inns p1 ping -c 20 -i 0.2 -s 1400 10.32.0.2
# ovs-dpctl, run above, switches the datapath to misses per CPU sent to its own sockets;
# the routers take them back within a second, and the pods never notice.
step routers-took-their-misses-back grep -q "setting them back" /tmp/router1.log
echo "--- host1 flows"; inns h1 ovs-dpctl dump-flows | tee /tmp/flows1
# Our VNI towards host2 is host1's short id | host2's << 12: read both from the status.
step flow-sets-weaves-tunnel grep -q "set(tunnel(tun_id=0x[0-9a-f]*,dst=10.9.0.2,ttl=64,.*flags(df" /tmp/flows1
step flow-from-tunnel-to-bridge grep -q "tunnel(tun_id=0x[0-9a-f]*,src=10.9.0.2,dst=10.9.0.1" /tmp/flows1
echo "--- host2 flows"; inns h2 ovs-dpctl dump-flows | tee /tmp/flows2
# Each side sends with VNI (its short id | the other's << 12): the two are mirror images.
vni() { grep -o "set(tunnel(tun_id=0x[0-9a-f]*" $1 | head -1 | sed 's/.*=//'; }
mirrored() {
  a=$(vni /tmp/flows1); b=$(vni /tmp/flows2)
  [ -n "$a" ] && [ -n "$b" ] && [ $((a & 0xfff)) = $((b >> 12)) ] && [ $((a >> 12)) = $((b & 0xfff)) ] && [ $a != $b ]
}
step vnis-name-both-ends mirrored
echo "--- host1 netlink sockets"; inns h1 cat /proc/net/netlink
echo "--- host1 ports"; inns h1 ovs-dpctl show -s | tee /tmp/ports1
step bridge-has-fastdp-entry sh -c "$IP netns exec h1 bridge fdb show dev vethwe-bridge | grep -q 'master weave static'"

# A restart finds the datapath, its vports and the veth pair again: no duplicates, and the
# pods reach each other again.
kill $($IP netns pids h1)
sleep 1
launch 1
step restart-back-on-fastdp wait_for 60 fastdp 1
step restart-pods-ping wait_for 30 inns p1 ping -c 1 -W 1 10.32.0.2
echo "--- host1 datapath after the restart"; inns h1 ovs-dpctl show | tee /tmp/ports1b
step restart-same-three-ports sh -c "[ \$(grep -c '  port ' /tmp/ports1b) = 3 ]"
step restart-one-veth-pair sh -c "[ \$($IP -n h1 -o link show | grep -c ': vethwe-bridge@') = 1 ]"

# Reset: with the routers stopped, nothing of theirs is left.
step reset-refused-while-running sh -c "! $IP netns exec h1 $ROUTER reset"
kill $($IP netns pids h1) $($IP netns pids h2)
sleep 2
for n in 1 2; do inns h$n $ROUTER reset; done
step reset-removes-datapath sh -c "! $IP netns exec h1 ovs-dpctl show 2>/dev/null | grep -q datapath"
step reset-removes-devices sh -c "! $IP -n h1 link show | grep -qE 'weave|vethwe|vxlan'"
# Interoperation with Weave Net 2.8 (when the share carries a weaver built from Weave's
# source): host3 runs Weave Net's router with its own Open vSwitch fast datapath, host4 a
# weave-router; their pods talk through both kernels' datapaths.
if [ -x $S/weaver ]; then
  WEAVER="/lib64/ld-linux-x86-64.so.2 --library-path $S/lib $S/weaver"
  for ns in h3 h4 p3 p4; do $IP netns add $ns; $IP -n $ns link set lo up; done
  $IP link add u3 netns h3 type veth peer name u4 netns h4
  $IP -n h3 addr add 10.9.1.3/24 dev u3; $IP -n h3 link set u3 up
  $IP -n h4 addr add 10.9.1.4/24 dev u4; $IP -n h4 link set u4 up
  mkdir -p /tmp/weavedb3 /tmp/db4
  # One MTU on both sides, as a mixed cluster sets WEAVE_MTU for both (Weave's default is 1376).
  inns h3 $WEAVER --port 6783 --datapath=datapath --mtu 1438 --name aa:00:00:00:00:03 --nickname weave3 \
    --http-addr 127.0.0.1:6784 --docker-api= --no-dns --db-prefix=/tmp/weavedb3/weave \
    --ipalloc-range= > /tmp/weaver3.log 2>&1 &
  step weave-net-router-starts wait_for 30 inns h3 wget -qO- http://127.0.0.1:6784/status
  echo "--- weaver3 log"; tail -30 /tmp/weaver3.log
  RUST_LOG=${RUST_LOG:-info} inns h4 $ROUTER launch --name aa:00:00:00:00:04 --nickname host4 \
    --ipalloc-range "" --dataplane epoll --workers 1 --db-dir /tmp/db4 10.9.1.3 > /tmp/router4.log 2>&1 &
  step weave-net-peer-on-fastdp wait_for 60 fastdp 4
  echo "--- host4 (weave-router) status connections"; inns h4 $ROUTER status connections
  echo "--- host3 (Weave Net) status connections"; inns h3 wget -qO- http://127.0.0.1:6784/status/connections
  pod 3; pod 4
  step weave-net-pods-ping wait_for 30 inns p4 ping -c 1 -W 1 10.32.0.3
  step weave-net-pods-ping-1400 inns p4 ping -c 10 -i 0.2 -s 1400 10.32.0.3
  echo "--- host3 (Weave Net) flows"; inns h3 ovs-dpctl dump-flows | tee /tmp/flows3
  echo "--- host4 (weave-router) flows"; inns h4 ovs-dpctl dump-flows | tee /tmp/flows4
  step weave-net-flows-tunnel-to-us grep -q "set(tunnel(tun_id=0x[0-9a-f]*,src=10.9.1.3,dst=10.9.1.4" /tmp/flows3
  step weave-router-flows-tunnel-to-weave-net grep -q "set(tunnel(tun_id=0x[0-9a-f]*,dst=10.9.1.3" /tmp/flows4
  vni34() { a=$(vni /tmp/flows3); b=$(vni /tmp/flows4); [ -n "$a" ] && [ -n "$b" ] && [ $((a & 0xfff)) = $((b >> 12)) ] && [ $((a >> 12)) = $((b & 0xfff)) ]; }
  step weave-net-vnis-mirror-ours vni34
  step weave-net-sees-fastdp sh -c "$IP netns exec h3 wget -qO- http://127.0.0.1:6784/status/connections | grep -q fastdp"
  if [ $fail != 0 ]; then echo "--- weaver3 log"; tail -60 /tmp/weaver3.log; echo "--- router4 log"; tail -40 /tmp/router4.log; fi
fi

if [ $fail != 0 ]; then
  for n in 1 2; do echo "--- router$n log"; cat /tmp/router$n.log; done
  echo "--- kernel log"; dmesg | tail -30
fi
exit $fail
