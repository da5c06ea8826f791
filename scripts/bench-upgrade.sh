#!/usr/bin/env bash
# Benchmark of a module's upgrade on a real node (tests/node/node.sh; root): hello from Debian's
# docker-registry on loopback, a request loop inside the node (curl every 20 ms, each answer
# logged with its time), and per round:
#  1. the baseline: a bare restart of hello's container unit (`systemctl --user restart`), its
#     downtime — what any upgrade of a container costs at the least;
#  2. an upgrade 1.0.0 -> 2.0.0 (or back, every other round) with `agentctl module update`: its
#     time and its downtime (the longest run of failed requests), and the ratio to the baseline's
#     downtime (targets: downtime <= 2 s);
#  3. a failed upgrade to 3.0.0, which does not start its container, so that hello's health check
#     fails (health-timeout 3 s): the rollback time,
#     from the moment the run's record says its rollback started (the gate failed) to the first
#     request served again (target <= 10 s), and the whole run's time.
# Reported per round and as medians.
# Usage: scripts/bench-upgrade.sh [--rounds N]   (debug binaries: the node's steps dominate)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    *) echo "usage: scripts/bench-upgrade.sh [--rounds N]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-upgrade.sh: must run as root (it boots a systemd-nspawn node)" >&2; exit 1; }
scripts/test-deps.sh >/dev/null
cargo build --workspace --bins --quiet
node=upbench$$
trap 'tests/node/node.sh down "$node" >/dev/null 2>&1 || true' EXIT
tests/node/node.sh up "$node" >/dev/null
in_node() { tests/node/node.sh exec "$node" "$@"; }
in_node /usr/share/agent/examples/modules/build.sh >/dev/null
in_node systemctl start docker-registry
in_node sh -c 'until curl -s -o /dev/null http://127.0.0.1:5000/v2/; do sleep 0.1; done'
# The versions: 2.0.0 brings one file more; 3.0.0 does not start its container, so its health
# check (hello's own: is the page served?) fails.
in_node sh -c '
  set -e
  build() { rm -rf /root/$1 && cp -a /usr/share/agent/examples/modules/hello /root/$1 && cd /root/$1/imageroot/.config/module-events && eval "$2" && cd /root/$1 && podman build --quiet $3 --tag localhost/hello-$1:1 --file Containerfile . >/dev/null; }
  build v2 "mkdir -p ../hello && echo 2 > ../hello/release" ""
  build v3 "printf \"%s\\n\" \"#!/bin/sh\" \"exit 0\" > module.init/30start-httpd" "--label org.agent-system.module.health-timeout=3"
  push() { skopeo copy --quiet --dest-tls-verify=false containers-storage:$1 docker://127.0.0.1:5000/modules/hello:$2; }
  push localhost/hello:latest 1.0.0; push localhost/hello-v2:1 2.0.0; push localhost/hello-v3:1 3.0.0'
in_node agentctl module repo add lab 127.0.0.1:5000/modules >/dev/null
id=$(in_node agentctl module add --env PORT=8080 hello:1.0.0 2>/dev/null | head -n 1)
in_node sh -c 'until curl -s --fail -o /dev/null http://127.0.0.1:8080/; do sleep 0.1; done'
# The request loop, a unit of the node's own; each line: time in ms, 1 (served) or 0.
in_node systemd-run --quiet --unit bench-probe sh -c 'while :; do if curl -s --fail --max-time 1 -o /dev/null http://127.0.0.1:8080/; then r=1; else r=0; fi; echo "$(date +%s%3N) $r"; sleep 0.02; done > /var/tmp/probe.log'

now_ms() { in_node date +%s%3N; }
# downtime FROM TO: the longest run of failed requests between FROM and TO (ms), from the time
# of the last request served before it to the first one served after.
downtime() {
  in_node awk -v from="$1" -v to="$2" '
    $1 < from || $1 > to { next }
    $2 == 1 { if (down) { d = $1 - last_ok; if (d > max) max = d; down = 0 }; last_ok = $1 }
    $2 == 0 && last_ok { down = 1 }
    END { print max + 0 }' /var/tmp/probe.log
}
# first_ok_after T: the time of the first request served at T or later.
first_ok_after() { in_node awk -v t="$1" '$1 >= t && $2 == 1 { print $1; exit }' /var/tmp/probe.log; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b > 0) ? a / b : 0 }'; }
settle() { sleep 2; }

base_rows="" up_rows="" up_ratios="" rb_rows=""
base_list="" up_list="" uptime_list="" rb_list="" rbrun_list=""
version=1.0.0
for r in $(seq 1 "$rounds"); do
  settle
  t0=$(now_ms)
  in_node systemctl --user -M "$id@" restart hello-httpd.service
  settle
  base=$(downtime "$t0" "$(now_ms)")

  next=$([ "$version" = 1.0.0 ] && echo 2.0.0 || echo 1.0.0)
  t0=$(now_ms)
  in_node agentctl module update "$id" --to "$next" >/dev/null 2>&1
  took=$(($(now_ms) - t0))
  settle
  down=$(downtime "$t0" "$(now_ms)")
  version=$next

  # The failed upgrade: the moment its rollback starts, read off the run record every 20 ms.
  settle
  t0=$(now_ms)
  run=$(in_node agentctl module update "$id" --to 3.0.0 --no-wait 2>&1 | sed -n 's/^run \(.*\) queued on .*/\1/p')
  rb_start=$(in_node sh -c ". /etc/agent/admin.env; export REDISCLI_AUTH=\$REDIS_PASSWORD; until [ \"\$(redis-cli --user \"\$REDIS_USER\" HGET node/\$(hostname -s)/run/$run rollback)\" = running ]; do sleep 0.02; done; date +%s%3N")
  in_node sh -c ". /etc/agent/admin.env; export REDISCLI_AUTH=\$REDIS_PASSWORD; until [ \"\$(redis-cli --user \"\$REDIS_USER\" HGET node/\$(hostname -s)/run/$run status)\" = failed ]; do sleep 0.1; done"
  run_took=$(($(now_ms) - t0))
  back=$(first_ok_after "$rb_start")
  rb=$((back - rb_start))

  base_rows="$base_rows $base"; base_list="$base_list $base"
  up_rows="$up_rows $took/$down"; up_list="$up_list $down"; uptime_list="$uptime_list $took"
  up_ratios="$up_ratios $(ratio "$down" "$base")"
  rb_rows="$rb_rows $rb/$run_took"; rb_list="$rb_list $rb"; rbrun_list="$rbrun_list $run_took"
done
in_node systemctl stop bench-probe
echo "$rounds rounds; hello $id, request loop every 20 ms inside the node"
echo "baseline, bare restart of the container unit, downtime ms per round:$base_rows; median $(echo "$base_list" | median)"
echo "upgrade 1.0.0 <-> 2.0.0, time/downtime ms per round:$up_rows; downtime ratio to the restart:$up_ratios; median time $(echo "$uptime_list" | median), median downtime $(echo "$up_list" | median)"
echo "failed upgrade to 3.0.0 (its container not started, health-timeout 3 s), rollback start to serving again / whole run ms per round:$rb_rows; median rollback $(echo "$rb_list" | median), median run $(echo "$rbrun_list" | median)"
