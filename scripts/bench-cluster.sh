#!/usr/bin/env bash
# Benchmarks of the cluster (issue 13; root): three Debian 13 nodes in one lab network, wireguard-go.
#   join:     `agentctl cluster join` from its start until it returns (the replica in sync, node-agent
#             on the leader, the mesh made), against a bare `agentctl cluster token` round on the
#             leader in the same run (the fixed cost of one agentctl against Redis);
#   dispatch: PUBLISH on the leader → the first step running on a member (the step writes its clock;
#             the nodes share the host's), as a ratio to the same on the leader itself, same run.
# Usage: scripts/bench-cluster.sh [--samples N]   (debug build of the workspace, as the tests use)
set -euo pipefail
cd "$(dirname "$0")/.."
samples=10
while [ $# -gt 0 ]; do
  case $1 in
    --samples) samples=$2; shift 2 ;;
    *) echo "usage: scripts/bench-cluster.sh [--samples N]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-cluster.sh: must run as root (it boots systemd-nspawn nodes)" >&2; exit 1; }
scripts/test-deps.sh >/dev/null
cargo build -q --workspace --bins
N=tests/node/node.sh
lab=bcl$$
a=bca$$ b=bcb$$ c=bcc$$
events=$(mktemp -d)
mkdir -p "$events/bench.dispatch"
printf '#!/bin/sh\ndate +%%s%%N > /tmp/bench-dispatch\n' >"$events/bench.dispatch/10clock"
chmod 755 "$events/bench.dispatch/10clock"
cleanup() {
  for n in "$a" "$b" "$c"; do $N down "$n" >/dev/null 2>&1 || true; done
  $N lab-down "$lab" >/dev/null 2>&1 || true
  rm -rf "$events"
}
trap cleanup EXIT
$N lab-up "$lab" >/dev/null
$N up "$a" --lab "$lab" --address 10.77.5.11/24 --events "$events" >/dev/null
$N up "$b" --lab "$lab" --address 10.77.5.12/24 --events "$events" >/dev/null
$N up "$c" --lab "$lab" --address 10.77.5.13/24 --events "$events" >/dev/null
in_node() { local n=$1; shift; $N exec "$n" "$@"; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

in_node "$a" agentctl cluster create --endpoint 10.77.5.11 --backend userspace >/dev/null
echo "join (command start → joined: replica in sync, node-agent on the leader, mesh made)"
for n in "$b" "$c"; do
  t0=$(date +%s.%N); tok=$(in_node "$a" agentctl cluster token 2>/dev/null); t1=$(date +%s.%N)
  ip=10.77.5.1$([ "$n" = "$b" ] && echo 2 || echo 3)
  t2=$(date +%s.%N)
  echo "$tok" | in_node "$n" agentctl cluster join 10.77.5.11 - --endpoint "$ip" --backend userspace >/tmp/bench-join-$n.log 2>&1
  t3=$(date +%s.%N)
  echo "  $n: join $(ms "$t2" "$t3") ms (agentctl cluster token on the leader: $(ms "$t0" "$t1") ms)"
done

admin_cli() { local n=$1; shift; in_node "$n" sh -c '. /etc/agent/admin.env && exec redis-cli --no-auth-warning --user "$REDIS_USER" --pass "$REDIS_PASSWORD" "$@"' sh "$@"; }
dispatch_ms() { # $1: the node whose agent runs the event; PUBLISH on the leader
  in_node "$1" rm -f /tmp/bench-dispatch
  local t0 t1
  t0=$(in_node "$a" date +%s%N)
  admin_cli "$a" PUBLISH "$1:bench.dispatch" x >/dev/null
  for _ in $(seq 200); do
    t1=$(in_node "$1" cat /tmp/bench-dispatch 2>/dev/null || true)
    [ -n "$t1" ] && break
    sleep 0.02
  done
  [ -n "$t1" ] || { echo "no step ran on $1" >&2; exit 1; }
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", (b - a) / 1e6 }'
}
echo "dispatch: PUBLISH on the leader → first step exec (median of $samples, ms)"
on_leader=$(for _ in $(seq "$samples"); do dispatch_ms "$a"; done | median)
on_member=$(for _ in $(seq "$samples"); do dispatch_ms "$b"; done | median)
ratio=$(awk -v l="$on_leader" -v m="$on_member" 'BEGIN { printf "%.2f", m / l }')
echo "  on the leader: $on_leader ms; on a member (over WireGuard): $on_member ms; ratio $ratio"
