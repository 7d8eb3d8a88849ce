#!/usr/bin/env bash
# Does watching a router slow it? One TCP stream (iperf3) pod to pod between two hosts over
# weave-router's sleeve, measured alternately "quiet" and "polled": polled, both routers
# run `weave-router stats --watch --json --interval 0.2` and have /metrics scraped five
# times a second for the whole measurement. Prints each round's throughput; compare the
# two within a round. Needs root, iperf3 and a built weave-router.
#
#   [BACKEND=auto|io-uring|epoll] perf/scripts/stats-under-load.sh [ROUTER_BIN] [SECONDS]
set -euo pipefail
BIN=${1:-target/release/weave-router}
SECS=${2:-10}
P=sul$$
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
measure() {
  ip netns exec ${P}p2 iperf3 -s -1 -D >/dev/null 2>&1
  sleep 0.5
  local bps
  bps=$(ip netns exec ${P}p1 iperf3 -c 10.40.0.2 -t "$SECS" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
  echo "$bps"
}

ip netns exec ${P}h1 "$BIN" launch --name aa:00:00:00:00:01 --nickname h1 --dataplane "${BACKEND:-auto}" >/tmp/${P}-h1.log 2>&1 &
R1=$!
sleep 0.5
ip netns exec ${P}h2 "$BIN" launch --name aa:00:00:00:00:02 --nickname h2 --dataplane "${BACKEND:-auto}" 192.168.97.1 >/tmp/${P}-h2.log 2>&1 &
R2=$!
for _ in $(seq 50); do
  ip netns exec ${P}h1 "$BIN" status connections 2>/dev/null | grep -q "mtu=" && break
  sleep 0.2
done
for i in 1 2; do pod $i weave 1438; done
sleep 1
poll() { # watch both routers' stats and scrape both /metrics five times a second
  for h in 1 2; do
    ip netns exec ${P}h$h "$BIN" stats --watch --json --interval 0.2 >/dev/null 2>&1 &
    ip netns exec ${P}h$h python3 -c '
import time, urllib.request
while True:
    urllib.request.urlopen("http://127.0.0.1:6782/metrics").read()
    time.sleep(0.2)
' >/dev/null 2>&1 &
  done
  wait
}
for round in 1 2 3; do
  for mode in quiet polled; do
    if [ $mode = polled ]; then poll & PP=$!; fi
    bps=$(measure)
    if [ $mode = polled ]; then pkill -P $PP; kill $PP; wait $PP 2>/dev/null || true; fi
    echo "round $round $mode $(python3 -c "print(f'{$bps/1e9:.2f}')") Gbit/s"
  done
done
kill $R1 $R2 2>/dev/null || true
