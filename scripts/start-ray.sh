#!/usr/bin/env bash
# Start (or stop) a three-node Ray cluster on this host: a head and two workers, each in its own
# network namespace, joined by a Linux bridge. Ray swaps a loopback --node-ip-address for the
# machine's external address, and traffic to that address is not allowed here, so every node gets
# an address of its own in 198.18.0.0/15 (the benchmarking range: never a private range, never the
# machine's address) and the host reaches the head through the bridge.
#
#   scripts/start-ray.sh          bring the cluster up (idempotent: running nodes are left alone)
#   scripts/start-ray.sh stop     stop every node (by the pids in its namespace) and remove the network
#
# Prints the Jobs API address (http://198.18.0.10:8265) on stdout. Needs root and `ray` on PATH
# (pip install 'harness[ray]'). Each node advertises a custom resource naming it (node_head,
# node_w1, node_w2) so a test can pin work to one node. Used by .ci/run and tests/test_ray.py.
set -euo pipefail

BRIDGE=hray0
HOST_ADDR=198.18.0.1
PREFIX=24
HEAD_ADDR=198.18.0.10
GCS_PORT=6379
DASHBOARD_PORT=8265
NODES=(head w1 w2)
declare -A ADDR=([head]=198.18.0.10 [w1]=198.18.0.11 [w2]=198.18.0.12)
NODE_CPUS=${HARNESS_RAY_NODE_CPUS:-2}
WAIT_S=${RAY_START_TIMEOUT:-180}
TEMP_ROOT=${HARNESS_RAY_TEMP:-/tmp/harness-ray}

log() { echo "start-ray: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (network namespaces)"; exit 1
fi

ns() { echo "hray-$1"; }

node_pids() {  # the live processes of a node (a zombie waits for a parent that may never reap it)
  local pid
  for pid in $(ip netns pids "$(ns "$1")" 2>/dev/null); do
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] || echo "$pid"
  done
}

raylet_runs() {  # whether the node's raylet is alive (other processes of a node can outlive it)
  local pid
  for pid in $(node_pids "$1"); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = raylet ] && return 0
  done
  return 1
}

stop_node() {
  local name=$1 pids deadline
  pids=$(node_pids "$name")
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  deadline=$((SECONDS + 10))  # the head's daemons can take longer than this to end on TERM
  while [ -n "$(node_pids "$name")" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
  pids=$(node_pids "$name")
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
}

if [ "${1:-}" = "stop" ]; then
  for name in w2 w1 head; do
    stop_node "$name"
    ip netns del "$(ns "$name")" 2>/dev/null || true
    ip link del "vray-$name" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$TEMP_ROOT"
  log "stopped"
  exit 0
fi

command -v ray >/dev/null || { log "ray is not on PATH: pip install 'ray[default]'"; exit 1; }
RAY=$(command -v ray)

mkdir -p "$TEMP_ROOT"
# the network: bridge on the host, one veth pair per node
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
fi
ip addr replace "$HOST_ADDR/$PREFIX" dev "$BRIDGE"
ip link set "$BRIDGE" up
for name in "${NODES[@]}"; do
  space=$(ns "$name")
  ip netns list | grep -qw "^$space" || ip netns add "$space"
  if ! ip link show "vray-$name" >/dev/null 2>&1; then
    ip link add "vray-$name" type veth peer name eth0 netns "$space"
  fi
  ip link set "vray-$name" master "$BRIDGE" up
  ip -n "$space" link set lo up
  ip -n "$space" addr replace "${ADDR[$name]}/$PREFIX" dev eth0
  ip -n "$space" link set eth0 up
  # only the bridge's subnet is reachable from a node: no default route
done

gcs_up() { ip netns exec "$(ns head)" "$RAY" status --address "$HEAD_ADDR:$GCS_PORT" >/dev/null 2>&1; }

alive_nodes() {
  # how many nodes the head counts as alive
  ip netns exec "$(ns head)" "$RAY" status --address "$HEAD_ADDR:$GCS_PORT" 2>/dev/null |
    awk '/^Active:/{a=1; next} /^(Pending|Recent failures):/{a=0} a && /node_/{n++} END{print n+0}'
}

wait_for() {  # wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds, at most WAIT_S
  local what=$1 deadline=$((SECONDS + WAIT_S))
  shift
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then log "timed out after ${WAIT_S}s waiting for $what"; exit 1; fi
    sleep 1
  done
}

start_node() {
  local name=$1 space
  space=$(ns "$name")
  if raylet_runs "$name"; then
    return 0
  fi
  stop_node "$name"  # what is left of a node whose raylet died
  local args=(
    --node-ip-address="${ADDR[$name]}"
    --num-cpus="$NODE_CPUS"
    --num-gpus=0
    --object-store-memory=$((100 * 1024 * 1024))
    --resources="{\"node_$name\": 1}"
    --disable-usage-stats
  )
  if [ "$name" = head ]; then
    args+=(--head --port="$GCS_PORT" --include-dashboard=true --dashboard-host="$HEAD_ADDR"
      --dashboard-port="$DASHBOARD_PORT" --temp-dir="$TEMP_ROOT")
  else
    args+=(--address="$HEAD_ADDR:$GCS_PORT")
  fi
  log "starting node $name at ${ADDR[$name]}"
  # nsenter, not `ip netns exec`: that remounts /sys, which hides the cgroup mounts a node's
  # podman (the reproducible builder) needs; only the network namespace is the node's own
  nsenter --net="/run/netns/$space" env RAY_USAGE_STATS_ENABLED=0 "$RAY" start "${args[@]}" >"$TEMP_ROOT/start-$name.log" 2>&1 ||
    { log "node $name did not start: $(tail -5 "$TEMP_ROOT/start-$name.log")"; exit 1; }
}

dashboard_up() {
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5).read()' \
    "http://$HEAD_ADDR:$DASHBOARD_PORT/api/version" >/dev/null 2>&1
}

# one node after another: two at once time out on a 2-core machine
start_node head
wait_for "the head's GCS" gcs_up
wait_for "the Jobs API" dashboard_up
expected=1
for name in w1 w2; do
  start_node "$name"
  expected=$((expected + 1))
  enough() { [ "$(alive_nodes)" -ge "$expected" ]; }
  wait_for "node $name to join" enough
done
log "cluster up: $(alive_nodes) nodes"
echo "http://$HEAD_ADDR:$DASHBOARD_PORT"
