#!/usr/bin/env bash
# Benchmark of a module's backup and restore on a real node (tests/node/node.sh; root), each as a
# ratio to plain restic doing the same in the same node and run:
#  1. full backup of hello with 1 GiB of data in 10,000 files (`agentctl backup run`: the module's
#     dump, the snapshot, the status) against `restic backup` of a copy of the same directory into
#     a repository of its own — throughput ratio plain/ours (target ≥ 0.9);
#  2. incremental backup after 1 % of the files changed, the same way;
#  3. restore under a new id (`agentctl backup restore --as`: fetch, module.init, the module's
#     restore) against `restic restore` of the plain snapshot.
# Each backup figure is measured in several rounds (default 3), the order of plain and ours
# swapped every round, and reported per round and as the median of the rounds' ratios: one sample
# on a shared machine moves by ±15 % (docs/BENCHMARKS.md). Every round's full backup goes into
# fresh repositories; the incremental rounds and the restore use round 1's.
# Usage: scripts/bench-backup.sh [--mib N] [--files N] [--rounds N]   (debug binaries: restic's work dominates)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=1024
files=10000
rounds=3
while [ $# -gt 0 ]; do
  case $1 in
    --mib) mib=$2; shift 2 ;;
    --files) files=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "usage: scripts/bench-backup.sh [--mib N] [--files N] [--rounds N]" >&2; exit 2 ;;
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
bytes=$((mib * 1024 * 1024 / files))
# The data: random, so that nothing deduplicates; one split, not 10,000 processes.
in_node runuser -u "$id" -- sh -c "mkdir -p ~/www/data && cd ~/www/data && head -c $((bytes * files)) /dev/urandom | split -b $bytes -a 5 - f"
in_node sh -c "cp -a /home/$id/www /var/tmp/plain"
# plain_restic N CMD: restic CMD with plain repository N.
plain_restic() { in_node sh -c "export RESTIC_REPOSITORY=/srv/plain-repo-$1 RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=/var/cache/bench-restic; $2"; }
plain_backup() { plain_restic "$1" "restic backup -q /var/tmp/plain"; }
ours_backup() { in_node agentctl backup run "$id" --repo "local$1" >/dev/null 2>&1; }
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# timed_pair ROUND REPO: plain and ours backed up (into repositories REPO), plain first in odd
# rounds; sets p and o (ms).
timed_pair() {
  local t
  if [ $(($1 % 2)) = 1 ]; then
    t=$(now); plain_backup "$2"; p=$(ms "$t" "$(now)")
    t=$(now); ours_backup "$2"; o=$(ms "$t" "$(now)")
  else
    t=$(now); ours_backup "$2"; o=$(ms "$t" "$(now)")
    t=$(now); plain_backup "$2"; p=$(ms "$t" "$(now)")
  fi
}

full_ratios="" full_rows=""
for r in $(seq 1 "$rounds"); do
  plain_restic "$r" "restic init -q"
  in_node agentctl backup repo add "local$r" "/srv/bench-repo-$r" >/dev/null 2>&1
  timed_pair "$r" "$r"
  full_ratios="$full_ratios $(ratio "$p" "$o")"
  full_rows="$full_rows $p/$o"
done

# Before each incremental round, 1 % of the files rewritten, the same ones in both.
change="for f in \$(ls | head -n $((files / 100))); do head -c $bytes /dev/urandom > \$f; done"
incr_ratios="" incr_rows=""
for r in $(seq 1 "$rounds"); do
  in_node runuser -u "$id" -- sh -c "cd ~/www/data && $change"
  in_node sh -c "cd /var/tmp/plain/data && $change"
  timed_pair "$r" 1
  incr_ratios="$incr_ratios $(ratio "$p" "$o")"
  incr_rows="$incr_rows $p/$o"
done

t=$(now); plain_restic 1 "restic restore -q latest --target /var/tmp/plain-restored"; plain_restore=$(ms "$t" "$(now)")
t=$(now); in_node agentctl backup restore "$id" --repo local1 --as copy1 --env PORT=8081 >/dev/null 2>&1; ours_restore=$(ms "$t" "$(now)")
restored=$(in_node sh -c "ls /home/copy1/www/data | wc -l")

echo "data: $files files, $((bytes * files / 1048576)) MiB; restored files: $restored; $rounds rounds"
echo "full backup, plain/ours ms per round:$full_rows; ratios$full_ratios; median $(echo "$full_ratios" | median)"
echo "incremental (1 %), plain/ours ms per round:$incr_rows; ratios$incr_ratios; median $(echo "$incr_ratios" | median)"
echo "restore: plain restic $plain_restore ms, agentctl backup restore --as $ours_restore ms (with module.init), ratio $(ratio "$plain_restore" "$ours_restore")"
