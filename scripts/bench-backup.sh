#!/usr/bin/env bash
# Benchmark of a module's backup and restore on a real node (tests/node/node.sh; root), each as a
# ratio to plain restic doing the same in the same node and run:
#  1. full backup of hello with 1 GiB of data in 10,000 files (`agentctl backup run`: the module's
#     dump, the snapshot, the status) against `restic backup` of a copy of the same directory into
#     a repository of its own — throughput ratio plain/ours (target ≥ 0.9);
#  2. incremental backup after 1 % of the files changed, the same way;
#  3. restore under a new id (`agentctl backup restore --as`: fetch, module.init, the module's
#     restore) against `restic restore` of the plain snapshot.
# Usage: scripts/bench-backup.sh [--mib N] [--files N]   (debug binaries: restic's work dominates)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=1024
files=10000
while [ $# -gt 0 ]; do
  case $1 in
    --mib) mib=$2; shift 2 ;;
    --files) files=$2; shift 2 ;;
    *) echo "usage: scripts/bench-backup.sh [--mib N] [--files N]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-backup.sh: must run as root (it boots a systemd-nspawn node)" >&2; exit 1; }
scripts/test-deps.sh >/dev/null
cargo build --workspace --bins --quiet
node=bkbench$$
trap 'tests/node/node.sh down "$node" >/dev/null 2>&1 || true' EXIT
tests/node/node.sh up "$node" >/dev/null
in_node() { tests/node/node.sh exec "$node" "$@"; }
in_node /usr/share/agent/examples/modules/build.sh >/dev/null
id=$(in_node agentctl module add --env PORT=8080 localhost/hello:latest 2>/dev/null | head -n 1)
in_node agentctl backup repo add local /srv/bench-repo >/dev/null 2>&1
bytes=$((mib * 1024 * 1024 / files))
# The data: random, so that nothing deduplicates; one split, not 10,000 processes.
in_node runuser -u "$id" -- sh -c "mkdir -p ~/www/data && cd ~/www/data && head -c $((bytes * files)) /dev/urandom | split -b $bytes -a 5 - f"
in_node sh -c "cp -a /home/$id/www /var/tmp/plain && mkdir -p /srv/plain-repo"
plain() { in_node sh -c "export RESTIC_REPOSITORY=/srv/plain-repo RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=/var/cache/bench-restic; $1"; }
plain "restic init -q"
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }

t=$(now); plain "restic backup -q /var/tmp/plain"; plain_full=$(ms "$t" "$(now)")
t=$(now); in_node agentctl backup run "$id" >/dev/null 2>&1; ours_full=$(ms "$t" "$(now)")

# 1 % of the files rewritten, the same ones in both.
change="for f in \$(ls | head -n $((files / 100))); do head -c $bytes /dev/urandom > \$f; done"
in_node runuser -u "$id" -- sh -c "cd ~/www/data && $change"
in_node sh -c "cd /var/tmp/plain/data && $change"
t=$(now); plain "restic backup -q /var/tmp/plain"; plain_incr=$(ms "$t" "$(now)")
t=$(now); in_node agentctl backup run "$id" >/dev/null 2>&1; ours_incr=$(ms "$t" "$(now)")

t=$(now); plain "restic restore -q latest --target /var/tmp/plain-restored"; plain_restore=$(ms "$t" "$(now)")
t=$(now); in_node agentctl backup restore "$id" --as copy1 --env PORT=8081 >/dev/null 2>&1; ours_restore=$(ms "$t" "$(now)")
restored=$(in_node sh -c "ls /home/copy1/www/data | wc -l")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "data: $files files, $((bytes * files / 1048576)) MiB; restored files: $restored"
echo "full backup:        plain restic ${plain_full} ms, agentctl backup run ${ours_full} ms, throughput ratio $(ratio "$plain_full" "$ours_full")"
echo "incremental (1 %):  plain restic ${plain_incr} ms, agentctl backup run ${ours_incr} ms, ratio $(ratio "$plain_incr" "$ours_incr")"
echo "restore:            plain restic ${plain_restore} ms, agentctl backup restore --as ${ours_restore} ms (with module.init), ratio $(ratio "$plain_restore" "$ours_restore")"
