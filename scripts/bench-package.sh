#!/usr/bin/env bash
# Benchmark of the Debian package (issue 12; root): its size, and `apt-get install` of it on a fresh
# node until node-agent is ready (the postinst's `agentctl node setup` starts it and waits for its
# READY=1) against the same install with AGENT_SETUP=no (apt and dpkg alone: unpack, daemon-reload)
# in the same node, as a ratio. Each sample starts from a purged package, so Redis is back on
# Debian's configuration and the full install switches AOF on and restarts it, as on a new server.
# Usage: scripts/bench-package.sh [--samples N]   (release build: scripts/package.sh, several minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
samples=5
while [ $# -gt 0 ]; do
  case $1 in
    --samples) samples=$2; shift 2 ;;
    *) echo "usage: scripts/bench-package.sh [--samples N]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-package.sh: must run as root (it boots a systemd-nspawn node)" >&2; exit 1; }
scripts/test-deps.sh >/dev/null
deb=$(scripts/package.sh)
node=benchpkg$$
trap 'tests/node/node.sh down "$node" >/dev/null 2>&1 || true' EXIT
AGENT_NODE_DEB=$deb AGENT_NODE_SETUP=no tests/node/node.sh up "$node" >/dev/null
in_node() { tests/node/node.sh exec "$node" "$@"; }
cat "$deb" | in_node sh -c 'cat >/var/cache/agent-test/bench.deb'

echo "package: $(basename "$deb")"
echo "  .deb size: $(stat -c %s "$deb" | awk '{ printf "%.1f MB", $1 / 1e6 }'); installed size: $(in_node dpkg-query -W -f '${Installed-Size}' agent | awk '{ printf "%.1f MB", $1 / 1024 }')"
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
install_ms() { # $1: AGENT_SETUP value; prints the milliseconds of one apt-get install from purged
  in_node env DEBIAN_FRONTEND=noninteractive apt-get purge -y agent >/dev/null 2>&1
  local t0 t1
  t0=$(date +%s.%N)
  in_node env DEBIAN_FRONTEND=noninteractive AGENT_SETUP="$1" apt-get install -y /var/cache/agent-test/bench.deb >/dev/null 2>&1
  t1=$(date +%s.%N)
  if [ "$1" = yes ]; then
    [ "$(in_node systemctl is-active node-agent)" = active ] || { echo "node-agent is not active after the install" >&2; exit 1; }
  fi
  ms "$t0" "$t1"
}
printf '%-8s %14s %14s %7s\n' sample "unpack (ms)" "to ready (ms)" ratio
bases=() fulls=()
for i in $(seq 1 "$samples"); do
  b=$(install_ms no)
  f=$(install_ms yes)
  bases+=("$b") fulls+=("$f")
  printf '%-8s %14s %14s %7s\n' "$i" "$b" "$f" "$(awk -v a="$b" -v b="$f" 'BEGIN { printf "%.2f", b / a }')"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
mb=$(median "${bases[@]}") mf=$(median "${fulls[@]}")
printf '%-8s %14s %14s %7s\n' median "$mb" "$mf" "$(awk -v a="$mb" -v b="$mf" 'BEGIN { printf "%.2f", b / a }')"
