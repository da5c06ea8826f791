#!/usr/bin/env bash
# Benchmarks of the module lifecycle on a real node (tests/node/node.sh; root):
#  1. `module.init` of the hello module end to end (image already in local storage), split by phase
#     with timestamp steps an admin would drop in /var/local/node-events/module.init/ — user (10-30),
#     extract (40: image, imageroot, container images), agent start (50), containers up (60: the
#     module's own module.init, which starts its container) and register (70); each as a ratio to the
#     floor measured in the same node: one bare rootful `podman run --rm` of the same base image.
#  2. idle memory (RSS and PSS) of a node with N installed hello modules (default 20), per process
#     kind: module-agents, their systemd user managers, the user's D-Bus, the container helpers
#     (conmon, slirp4netns or pasta, catatonit, podman-init) and the container's own process, against
#     the node's own base (systemd, journald, redis, node-agent) measured before the first install.
# --signature-policy P sets the node's policy (/etc/agent/signing.conf) before the measurements:
# `off` against `warn` (the default) is the cost of the image's signature check in phase "user".
# Usage: scripts/bench-node.sh [--modules N] [--samples N] [--signature-policy off|warn|require]
set -euo pipefail
cd "$(dirname "$0")/.."
modules=20
samples=5
policy=
while [ $# -gt 0 ]; do
  case $1 in
    --modules) modules=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --signature-policy)
      case $2 in off|warn|require) policy=$2 ;; *) echo "bench-node.sh: --signature-policy off|warn|require" >&2; exit 2 ;; esac
      shift 2 ;;
    *) echo "usage: scripts/bench-node.sh [--modules N] [--samples N] [--signature-policy off|warn|require]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-node.sh: must run as root (it boots a systemd-nspawn node)" >&2; exit 1; }
scripts/test-deps.sh >/dev/null
# Release binaries in the node, as a real install would have (debug ones are 2-3x the RSS).
cargo build --release --workspace --bins --quiet
export AGENT_NODE_TARGET=$PWD/target/release
node=bench$$
marks=$(mktemp -d)
trap 'tests/node/node.sh down "$node" >/dev/null 2>&1 || true; rm -rf "$marks"' EXIT

# Timestamp steps between the phases (an admin's extra node events, merged by name).
mkdir -p "$marks/module.init"
for m in 05 35 45 55 65 75; do
  printf '#!/bin/sh\ndate +%%s.%%N >"/var/tmp/bench-mark-$1-%s"\n' "$m" >"$marks/module.init/${m}bench-mark"
  chmod +x "$marks/module.init/${m}bench-mark"
done
tests/node/node.sh up "$node" --events "$marks" >/dev/null
in_node() { tests/node/node.sh exec "$node" "$@"; }
# redis-cli as the admin (the package's setup locked the default user).
admin_cli() {
  in_node sh -c '. /etc/agent/admin.env && REDISCLI_AUTH=$REDIS_PASSWORD exec redis-cli --no-auth-warning --user "$REDIS_USER" "$@"' sh "$@"
}
in_node /usr/share/agent/examples/modules/build.sh >/dev/null
[ -z "$policy" ] || in_node sh -c "printf 'policy = %s\n' '$policy' >/etc/agent/signing.conf"

# The floor: one bare rootless container start and stop (same image, no network), as a user with
# linger like a module's — what every module container costs at least.
floor=$(in_node sh -c 'useradd --create-home benchfloor && loginctl enable-linger benchfloor
  uid=$(id -u benchfloor); i=0; while [ ! -S /run/user/$uid/bus ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  podman save --quiet --format oci-archive --output /var/tmp/base.tar localhost/agent-busybox:latest
  u() { runuser -u benchfloor -- env -C /home/benchfloor XDG_RUNTIME_DIR=/run/user/$uid "$@"; }
  u podman load --quiet </var/tmp/base.tar >/dev/null
  u podman run --rm --network none localhost/agent-busybox:latest true
  s=$(date +%s%N); for i in 1 2 3 4 5; do u podman run --rm --network none localhost/agent-busybox:latest true; done
  echo $(( ($(date +%s%N) - s) / 5000000 ))')
rss_kib() { # total RSS (KiB) of the processes whose user is in the list $1 (comma-separated), or all
  if [ -n "$1" ]; then
    in_node sh -c "ps -o rss= -u '$1' | awk '{ s += \$1 } END { print s + 0 }'"
  else
    in_node sh -c "ps -e -o rss= | awk '{ s += \$1 } END { print s + 0 }'"
  fi
}
pss_kib_all() { # total PSS (KiB) of every process of the node (root reads every smaps_rollup)
  in_node sh -c 'for f in /proc/[0-9]*/smaps_rollup; do awk "/^Pss:/ { print \$2 }" "$f" 2>/dev/null; done' |
    awk '{ s += $1 } END { print s + 0 }'
}
base_rss=$(rss_kib "")
base_pss=$(pss_kib_all)

echo "module.init of hello, image in local storage ($samples samples; floor = one rootless 'podman run --rm' = ${floor} ms)"
printf '%-8s %9s %9s %9s %9s %9s %9s\n' sample user extract agent containers register total
i=0
declare -a totals
while [ "$i" -lt "$samples" ]; do
  id=hello$((100 + i))
  admin_cli HSET "module/$id/module.env" EVENTS_IMAGE localhost/hello:latest PORT $((9000 + i)) >/dev/null
  t0=$(in_node date +%s.%N)
  [ "$(admin_cli PUBLISH "$node:module.init" "$id")" = 1 ] || { echo "node-agent did not receive module.init" >&2; exit 1; }
  for _ in $(seq 1 1200); do
    in_node test -e "/var/tmp/bench-mark-$id-75" && break
    sleep 0.1
  done
  in_node test -e "/var/tmp/bench-mark-$id-75" || { echo "module.init of $id did not finish" >&2; exit 1; }
  read -r m05 m35 m45 m55 m65 m75 < <(in_node sh -c "cat /var/tmp/bench-mark-$id-05 /var/tmp/bench-mark-$id-35 /var/tmp/bench-mark-$id-45 /var/tmp/bench-mark-$id-55 /var/tmp/bench-mark-$id-65 /var/tmp/bench-mark-$id-75" | tr '\n' ' '; echo)
  awk -v s="$((i + 1))" -v t0="$t0" -v a="$m05" -v b="$m35" -v c="$m45" -v d="$m55" -v e="$m65" -v f="$m75" -v fl="$floor" 'BEGIN {
    printf "%-8s %8.0fms %8.0fms %8.0fms %8.0fms %8.0fms %8.0fms\n", s, (b-a)*1000, (c-b)*1000, (d-c)*1000, (e-d)*1000, (f-e)*1000, (f-t0)*1000
    printf "%-8s %8.1fx  %8.1fx  %8.1fx  %8.1fx  %8.1fx  %8.1fx\n", "", (b-a)*1000/fl, (c-b)*1000/fl, (d-c)*1000/fl, (e-d)*1000/fl, (f-e)*1000/fl, (f-t0)*1000/fl
  }'
  totals+=("$(awk -v t0="$t0" -v f="$m75" 'BEGIN { printf "%.0f", (f-t0)*1000 }')")
  i=$((i + 1))
done
median=$(printf '%s\n' "${totals[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "median total: ${median} ms = $(awk -v m="$median" -v f="$floor" 'BEGIN { printf "%.1f", m / f }')x the floor"

# Idle RSS with N modules: install the rest (the sampled ones count), let them settle, then measure.
echo
echo "idle memory with $modules hello modules installed (node base before any module: $((base_rss / 1024)) MiB)"
users=
i=0
while [ "$i" -lt "$modules" ]; do
  id=hello$((100 + i))
  if [ "$i" -ge "$samples" ]; then
    admin_cli HSET "module/$id/module.env" EVENTS_IMAGE localhost/hello:latest PORT $((9000 + i)) >/dev/null
    admin_cli PUBLISH "$node:module.init" "$id" >/dev/null
  fi
  users=${users:+$users,}$id
  i=$((i + 1))
done
last=hello$((100 + modules - 1))
for _ in $(seq 1 3000); do
  in_node test -e "/var/tmp/bench-mark-$last-75" && break
  sleep 0.2
done
in_node test -e "/var/tmp/bench-mark-$last-75" || { echo "the $modules modules did not all install" >&2; exit 1; }
sleep 10
# RSS counts a shared page once per process that maps it (twenty user managers share systemd's
# libraries); PSS splits it among them, so PSS is what a module really adds. Both are shown, per
# process name, summed over the module users' processes (smaps_rollup, read as root).
in_node sh -c "for p in \$(pgrep -u '$users'); do
    printf '%s %s %s\n' \"\$(cat /proc/\$p/comm 2>/dev/null)\" \
      \"\$(awk '/^Rss:/ { print \$2 }' /proc/\$p/smaps_rollup 2>/dev/null)\" \
      \"\$(awk '/^Pss:/ { print \$2 }' /proc/\$p/smaps_rollup 2>/dev/null)\"
  done" >"$marks/idle"
total=$(rss_kib "")
total_pss=$(pss_kib_all)
awk -v n="$modules" -v total="$total" -v base="$base_rss" -v tpss="$total_pss" -v bpss="$base_pss" '
  NF == 3 && $2 != "" {
    name = $1
    if (name == "module-agent") group = "module-agent"
    else if (name == "systemd" || name == "(sd-pam)") group = "systemd user manager (+ sd-pam)"
    else if (name == "dbus-daemon" || name == "dbus-broker") group = "user D-Bus (for podman)"
    else if (name ~ /^(conmon|slirp4netns|pasta|pasta.avx2|rootlessport|rootlessport-ch|catatonit|podman-init)$/) group = "container helpers (" name ")"
    else if (name == "podman") group = "podman (transient: health checks)"
    else group = "the container (" name ")"
    rss[group] += $2; pss[group] += $3; allr += $2; allp += $3
  }
  END {
    printf "  %-44s %9s %9s %12s\n", "", "RSS MiB", "PSS MiB", "PSS/module"
    for (g in rss) printf "  %-44s %9.1f %9.1f %12.2f\n", g, rss[g]/1024, pss[g]/1024, pss[g]/1024/n | "sort"
    close("sort")
    printf "  %-44s %9.1f %9.1f %12.2f\n", "all processes of the " n " module users", allr/1024, allp/1024, allp/1024/n
    printf "  whole node RSS: %.1f MiB (base %.1f MiB)\n", total/1024, base/1024
    printf "  whole node PSS: %.1f MiB (base %.1f MiB): %.2f MiB a module\n", tpss/1024, bpss/1024, (tpss-bpss)/1024/n
  }' "$marks/idle"
