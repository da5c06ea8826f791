#!/usr/bin/env bash
# Benchmarks of the cluster (issue 13; root): three Debian 13 nodes in one lab network, wireguard-go.
#   join:     `agentctl cluster join` from its start until it returns (the replica in sync, node-agent
#             on the leader, the mesh made), against a bare `agentctl cluster token` round on the
#             leader in the same run (the fixed cost of one agentctl against Redis);
#   dispatch: PUBLISH on the leader → the first step running on a member (the step writes its clock;
#             the nodes share the host's), as a ratio to the same on the leader itself, same run;
#   failover: the leader's node killed (SIGKILL of the whole node) → a member's Redis leads
#             (Sentinel) → a member's agent runs an event PUBLISHed on the new leader; the old
#             leader booted again and back as a replica before the next round. Median of the rounds.
# Usage: scripts/bench-cluster.sh [--samples N] [--failovers N]   (debug build, as the tests use)
set -euo pipefail
cd "$(dirname "$0")/.."
samples=10
failovers=3
while [ $# -gt 0 ]; do
  case $1 in
    --samples) samples=$2; shift 2 ;;
    --failovers) failovers=$2; shift 2 ;;
    *) echo "usage: scripts/bench-cluster.sh [--samples N] [--failovers N]" >&2; exit 2 ;;
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

role_of() { admin_cli "$1" ROLE 2>/dev/null | head -1; }
now_ms() { date +%s%3N; }
echo "failover: leader killed → a new leader; → a member's agent runs an event on it (ms)"
leader=$a
: >/tmp/bench-failover.txt
for round in $(seq "$failovers"); do
  survivors=()
  for n in "$a" "$b" "$c"; do [ "$n" = "$leader" ] || survivors+=("$n"); done
  t0=$(now_ms)
  $N kill "$leader" >/dev/null
  new=
  while [ -z "$new" ]; do
    for n in "${survivors[@]}"; do [ "$(role_of "$n")" = master ] && new=$n; done
    [ $(( $(now_ms) - t0 )) -lt 60000 ] || { echo "no new leader after 60 s" >&2; exit 1; }
    [ -n "$new" ] || sleep 0.1
  done
  t1=$(now_ms)
  member=${survivors[0]}; [ "$member" = "$new" ] && member=${survivors[1]}
  in_node "$member" rm -f /tmp/bench-dispatch
  until in_node "$member" test -s /tmp/bench-dispatch; do
    admin_cli "$new" PUBLISH "$member:bench.dispatch" x >/dev/null 2>&1 || true
    [ $(( $(now_ms) - t0 )) -lt 120000 ] || { echo "no agent on the new leader after 120 s" >&2; exit 1; }
    sleep 0.2
  done
  t2=$(now_ms)
  echo "  round $round: $leader killed; $new leads after $((t1 - t0)) ms; $member's agent runs on it after $((t2 - t0)) ms"
  echo "$((t1 - t0)) $((t2 - t0))" >>/tmp/bench-failover.txt
  $N boot "$leader" >/dev/null
  until admin_cli "$leader" INFO replication 2>/dev/null | grep -q master_link_status:up; do
    [ $(( $(now_ms) - t2 )) -lt 180000 ] || { echo "$leader did not come back as a replica" >&2; exit 1; }
    sleep 0.5
  done
  leader=$new
done
echo "  median: new leader $(cut -d' ' -f1 /tmp/bench-failover.txt | median) ms; agents on it $(cut -d' ' -f2 /tmp/bench-failover.txt | median) ms"
