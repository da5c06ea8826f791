#!/usr/bin/env bash
# The engine alone, without a node (no systemd needed; root only to install Redis when it is missing):
# builds the agents, starts a private redis-server and a node-agent; the node-agent's module.init
# (examples/demo/node-events) starts a module-agent for module "hello0" as a plain process, which runs
# its own module.init (examples/demo/module-events); then
# the demo drives the module the way a sysadmin would, with redis-cli and agentctl. Everything stops at
# the end. (The real module.init — Unix user, systemd user service, containers — is scripts/demo.sh's.)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "== installing redis-server and redis-tools"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
fi
echo "== building"
cargo build --workspace --bins --quiet
bin="$root/target/debug"
work=$(mktemp -d)
port=${DEMO_REDIS_PORT:-6399}
cleanup() {
  [ -s "$work/hello0.pid" ] && kill "$(cat "$work/hello0.pid")" 2>/dev/null
  [ -n "${node_pid:-}" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
rcli() { redis-cli -p "$port" "$@"; }

echo "== starting a private redis-server on 127.0.0.1:$port (data in $work)"
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save '' --appendonly yes --daemonize yes --logfile "$work/redis.log"
until rcli ping >/dev/null 2>&1; do sleep 0.1; done
export REDIS_URL="redis://127.0.0.1:$port"

echo "== the sysadmin sets the module's environment"
echo "\$ redis-cli HSET module/hello0/module.env PAGE_TITLE 'Hello from hello0'"
rcli HSET module/hello0/module.env PAGE_TITLE 'Hello from hello0' DEMO_STATE_DIR "$work/hello0-state" >/dev/null

echo "== starting node-agent demo-node"
DEMO_BIN="$bin" DEMO_ROOT="$root" DEMO_WORK="$work" "$bin/node-agent" --name demo-node \
  --events-dir "$root/examples/demo/node-events" >"$work/node-agent.log" 2>&1 &
node_pid=$!
until [ "$(rcli PUBSUB NUMSUB cancel/demo-node | tail -1)" = 1 ]; do sleep 0.1; done

echo "== the node installs module hello0 (the node-agent starts its module-agent, which runs its module.init)"
echo "\$ redis-cli PUBLISH demo-node:module.init hello0"
rcli PUBLISH demo-node:module.init hello0
for _ in $(seq 100); do
  [ "$(rcli XLEN node/demo-node/queue)" = 0 ] &&
    [ "$(rcli HGET module/hello0/run/startup-module.init status)" = done ] && break
  sleep 0.1
done
"$bin/agentctl" journal node/demo-node -n 5
echo
"$bin/agentctl" show module/hello0 startup-module.init
echo "page: $(cat "$work/hello0-state/index.html")"

echo
echo "== firing an event with redis-cli PUBLISH (reply = number of agents that received it)"
echo "\$ redis-cli PUBLISH hello0:configure 'Configured by PUBLISH'"
rcli PUBLISH hello0:configure 'Configured by PUBLISH'
for _ in $(seq 100); do
  [ "$(rcli XLEN module/hello0/queue)" = 0 ] && grep -q PUBLISH "$work/hello0-state/index.html" 2>/dev/null && break
  sleep 0.1
done
echo "page: $(cat "$work/hello0-state/index.html")"

echo
echo "== queuing an event with agentctl and following it to its end"
echo "\$ agentctl run module/hello0 configure 'Configured by agentctl'"
"$bin/agentctl" run module/hello0 configure 'Configured by agentctl'
echo "page: $(cat "$work/hello0-state/index.html")"

echo
echo "== a failing run: configure without data (the step exits 2)"
echo "\$ agentctl run module/hello0 configure"
"$bin/agentctl" run module/hello0 configure || echo "(agentctl exited with the run's exit code: $?)"

echo
echo "== what the steps of an event are, and where they come from"
echo "\$ agentctl explain module/hello0 configure --events-dir examples/demo/module-events"
"$bin/agentctl" explain module/hello0 configure --events-dir "$root/examples/demo/module-events"

echo
echo "== the journal"
echo "\$ agentctl journal module/hello0"
"$bin/agentctl" journal module/hello0 -n 20
echo
echo "demo done; everything it started is stopped now."
