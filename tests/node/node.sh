#!/usr/bin/env bash
# node-in-a-box: real systemd nodes for integration tests (issue 4, part 1).
#
#   node.sh rootfs            build (once) and cache the Debian base rootfs; prints its path
#   node.sh up NAME [--events DIR]... [--lab LAB --address ADDR/PREFIX]
#                             boot node NAME (systemd-nspawn --boot, own network namespace), then
#                             install the project's Debian package in it (`apt-get install ./agent…deb`,
#                             whose postinst runs `agentctl node setup`); --events trees are copied to
#                             /usr/local/share/agent/node-events (a hand install's directory); with --lab
#                             the node gets eth0 with the IPv4 ADDR/PREFIX, a veth into the lab's bridge
#   node.sh exec NAME CMD...  run CMD inside the node (clean environment, exit code passed through)
#   node.sh shell NAME        interactive root shell inside the node
#   node.sh status NAME       is it running? (exit 0 = booted)
#   node.sh reboot NAME       power the node off and boot it again (root, homes, containers are kept)
#   node.sh kill NAME         power cut: SIGKILL every process of the node at once, no shutdown, and
#                             its eth0 down; root, homes, containers, netns and address are kept
#   node.sh boot NAME         boot a killed node again (same root; eth0 up, same address)
#   node.sh down NAME         stop the node and remove everything `up` created (also after a failed up
#                             or a kill)
#   node.sh list              nodes that have state under the run dir
#   node.sh lab-up LAB        network namespace agentlab-LAB with a bridge br0 (idempotent)
#   node.sh lab-down LAB      delete the lab's namespace: every node's eth0 in it goes too
#   node.sh cut NAME          network partition: the node's veth port on the lab bridge down
#   node.sh heal NAME         and up again
#   node.sh prune             `down` every node, remove stray agentnode-* and agentlab-* namespaces
#                             (after a killed test run; it takes down every session's nodes)
#
# Must run as root. Environment:
#   AGENT_NODE_CACHE   cache dir of base rootfs trees   (default /var/cache/agent-test-nodes)
#   AGENT_NODE_RUN     per-node state: overlay, logs     (default /run/agent-test-nodes)
#   AGENT_NODE_MIRROR  Debian mirror                     (default: the one apt uses)
#   AGENT_NODE_TARGET  dir with the built binaries       (default <repo>/target/debug)
#   AGENT_NODE_DEB     the package to install            (default: scripts/package.sh --profile dev
#                      of those binaries, into AGENT_NODE_TARGET/../debian/nodes — so
#                      <repo>/target/debian/nodes by default —, made again when older than the
#                      binaries or the packaged files)
#   AGENT_NODE_SETUP   no = install the package with AGENT_SETUP=no (node setup not run)
#   AGENT_NODE_BOOT_TIMEOUT  seconds to wait for boot    (default 90)
# See tests/node/README.md and docs/NODE-HARNESS.md.
set -euo pipefail

# Bump when the way the base rootfs is built changes: it is part of the cache key.
SCRIPT_VERSION=1
# Debian 13 "trixie" nodes with pure cgroup v2 (HARNESS.md): Podman 5.4 and Quadlet need it, and the
# product targets Debian 13. Debian 12 nodes are not supported any more (its Podman 4.3 has no
# Quadlet; README.md, "Supported systems").
SUITE=trixie
# HARNESS.md's list with nftables (netavark's firewall driver) and passt; caddy (the edge proxy) and
# pebble (its tests' ACME server); restic (backups), rclone (its tests' REST and SFTP servers) and
# openssh-client (restic's SFTP transport). netavark must be listed explicitly, or debootstrap fails to
# resolve podman.
PACKAGES=(systemd systemd-sysv dbus dbus-user-session libpam-systemd redis-server iproute2 procps podman
  netavark aardvark-dns uidmap crun passt slirp4netns catatonit nftables wireguard-tools wireguard-go
  iputils-ping ca-certificates busybox-static curl docker-registry skopeo iptables valkey-server
  redis-sentinel valkey-sentinel caddy pebble restic rclone openssh-client)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${AGENT_NODE_CACHE:-/var/cache/agent-test-nodes}
RUNDIR=${AGENT_NODE_RUN:-/run/agent-test-nodes}
TARGET=${AGENT_NODE_TARGET:-$REPO/target/debug}
BOOT_TIMEOUT=${AGENT_NODE_BOOT_TIMEOUT:-90}
BINARIES=(node-agent module-agent agentctl module-sdk)
NODE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "node.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }
need_cmd() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null || die "$c is missing (apt-get install -y --no-install-recommends debootstrap systemd-container)"
  done
}

check_name() {
  [[ ${1:-} =~ ^[a-z][a-z0-9-]{0,30}$ ]] || die "bad node name '${1:-}': [a-z][a-z0-9-]{0,30} (it is the node's hostname)"
}

check_lab() {
  [[ ${1:-} =~ ^[a-z][a-z0-9-]{0,30}$ ]] || die "bad lab name '${1:-}': [a-z][a-z0-9-]{0,30}"
}

# An IPv4 address with its prefix length, A.B.C.D/N: octets 0-255 without leading zeros, N 1-32.
check_address() {
  local a=${1:-} o
  local oct='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
  [[ $a =~ ^$oct\.$oct\.$oct\.$oct/([1-9]|[12][0-9]|3[0-2])$ ]] ||
    die "bad --address '$a': an IPv4 address with its prefix length, like 10.77.0.11/24"
  o=${a%%.*}
  { [ "$o" != 0 ] && [ "$o" -lt 224 ] && [ "$o" != 127 ]; } ||
    die "bad --address '$a': not a unicast address (0/8, 127/8 and 224-255 are refused)"
}

mirror() {
  if [ -n "${AGENT_NODE_MIRROR:-}" ]; then echo "$AGENT_NODE_MIRROR"; return; fi
  local m
  # deb822 sources first (URIs: …), then one-line sources (deb URL SUITE …); the first Debian main archive.
  m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' |
    grep -v -- '-security' | grep -m1 debian || true)
  if [ -z "$m" ]; then
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }' |
      grep -v -- '-security' | grep -m1 debian || true)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

rootfs_key() {
  { printf '%s\n' "${PACKAGES[@]}" | LC_ALL=C sort; echo "suite=$SUITE"; echo "version=$SCRIPT_VERSION"; } |
    sha256sum | cut -c1-16
}

rootfs_path() { echo "$CACHE/rootfs-$(rootfs_key)"; }

# Builds the base rootfs once; concurrent callers wait on a lock and reuse it.
cmd_rootfs() {
  need_root
  local dest start tmp pkgs
  dest=$(rootfs_path)
  if [ -f "$dest/.complete" ]; then echo "$dest"; return; fi
  need_cmd debootstrap flock
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  if [ -f "$dest/.complete" ]; then exec 9>&-; echo "$dest"; return; fi
  rm -rf "$CACHE"/.build-* # left by a build that was killed (we hold the lock: nobody else builds)
  start=$(now)
  tmp=$(mktemp -d "$CACHE/.build-XXXXXX")
  pkgs=$(IFS=,; echo "${PACKAGES[*]}")
  log "building base rootfs $dest from $(mirror) (about a minute)"
  if ! debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$tmp" "$(mirror)" >"$tmp.log" 2>&1; then
    tail -n 30 "$tmp.log" >&2
    rm -rf "$tmp"
    die "debootstrap failed (full log: $tmp.log)"
  fi
  # Things every node needs and no test changes: no apt caches, no host identity.
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
  rm -f "$tmp/etc/machine-id" "$tmp/var/lib/dbus/machine-id"
  : >"$tmp/etc/machine-id" # empty: systemd generates one per boot (each node differs)
  printf '%s\n' "${PACKAGES[@]}" >"$tmp/.packages"
  chmod 0755 "$tmp" # mktemp made it 0700: it becomes the node's /, which every user must traverse
  touch "$tmp/.complete"
  rm -f "$tmp.log"
  rm -rf "$dest" # a stale incomplete tree (no .complete) from an older crash
  mv -T "$tmp" "$dest"
  exec 9>&-
  log "base rootfs built in $(elapsed "$start") s: $dest ($(du -sh "$dest" | cut -f1))"
  echo "$dest"
}

node_dir() { echo "$RUNDIR/$1"; }
netns_name() { echo "agentnode-$1"; }
lab_netns() { echo "agentlab-$1"; }
netns_exists() { [ -e "/run/netns/$1" ]; }

# The lab-side end of node NAME's veth: v-NAME, or (an interface name has at most 15 characters)
# v-<first 7 of NAME>-<5 hex of its sha256> for a name longer than 13.
lab_veth_name() {
  if [ ${#1} -le 13 ]; then
    echo "v-$1"
  else
    echo "v-${1:0:7}-$(printf %s "$1" | sha256sum | cut -c1-5)"
  fi
}

# The node's lab, address and lab-side veth as `up --lab` recorded them (empty when in no lab).
node_lab() { cat "$(node_dir "$1")/lab" 2>/dev/null || true; }
node_address() { cat "$(node_dir "$1")/address" 2>/dev/null || true; }
node_veth() { cat "$(node_dir "$1")/veth" 2>/dev/null || true; }

# PID 1 of the node (the init nspawn started), or nothing.
leader_pid() {
  local d p
  d=$(node_dir "$1")
  [ -f "$d/leader.pid" ] || return 0
  p=$(cat "$d/leader.pid")
  [ -n "$p" ] && [ -d "/proc/$p" ] && echo "$p"
  return 0
}

# Finds the container's init: a child of the nspawn process living in another PID namespace that has
# already exec'd systemd. (While nspawn sets the container up, a short-lived helper child lives in the
# new namespaces too; taking it for init made `up` wait for a vanished pid until the boot timeout.)
find_leader() {
  local npid=$1 c
  for c in $(cat /proc/"$npid"/task/*/children 2>/dev/null); do
    if [ "$(readlink "/proc/$c/ns/pid" 2>/dev/null)" != "$(readlink /proc/self/ns/pid)" ] &&
      [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ]; then
      echo "$c"
      return
    fi
  done
}

# Runs a command inside the node: its namespaces, and a cgroup of the node's own tree. Left in the
# host's cgroup, the command's cgroup reads "/../../.." inside the node, and systemd 257's logind
# cannot place such a caller: `loginctl enable-linger` failed with "Protocol driver not attached"
# (EUNATCH) in Debian 13 nodes, while the same call from a unit inside the node worked.
in_node() {
  local leader=$1 exec_cg
  shift
  exec_cg=$(node_exec_cgroup "$leader")
  sh -c '[ -z "$1" ] || echo $$ >"$1/cgroup.procs" || exit 1; shift; exec "$@"' sh "$exec_cg" \
    nsenter -t "$leader" -a -- env -i PATH="$NODE_PATH" HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" "$@"
}

# The cgroup of commands run by `exec` and `shell`: harness-exec beside the node's init.scope in
# the host's v2 hierarchy, made on first use (removed with the node's cgroups by `down`).
node_exec_cgroup() {
  local own
  own=$(sed -n 's|^0::\(/.*\)/init\.scope$|\1|p' "/proc/$1/cgroup" 2>/dev/null)
  [ -n "$own" ] && [ -f /sys/fs/cgroup/unified/cgroup.procs ] || return 0
  mkdir -p "/sys/fs/cgroup/unified$own/harness-exec" && echo "/sys/fs/cgroup/unified$own/harness-exec"
}

# The package the nodes install: AGENT_NODE_DEB, else one made from $TARGET's binaries with
# scripts/package.sh, again whenever a binary or a packaged file is newer than it. Under a lock:
# tests start several nodes at once.
node_package() {
  if [ -n "${AGENT_NODE_DEB:-}" ]; then
    [ -f "$AGENT_NODE_DEB" ] || die "AGENT_NODE_DEB=$AGENT_NODE_DEB: no such file"
    echo "$AGENT_NODE_DEB"
    return
  fi
  # Beside the binaries' target dir: a session building into another CARGO_TARGET_DIR packages there.
  local out profile deb b
  out=$(dirname "$TARGET")/debian/nodes
  case $(basename "$TARGET") in
    release) profile=release ;;
    *) profile=dev ;;
  esac
  for b in "${BINARIES[@]}" agent-docgen; do
    [ -x "$TARGET/$b" ] || die "$TARGET/$b is missing: cargo build --workspace --bins"
  done
  mkdir -p "$out"
  (
    flock 9
    deb=$(find "$out" -maxdepth 1 -name 'agent_*.deb' | head -n1)
    if [ -z "$deb" ] || [ -n "$(find "${BINARIES[@]/#/$TARGET/}" "$REPO/systemd" "$REPO/imageroot/node-events" \
      "$REPO/examples/modules" "$REPO/debian" "$REPO/node-agent/Cargo.toml" "$REPO/docs" \
      -newer "$deb" -print -quit)" ]; then
      rm -f "$out"/agent_*.deb
      CARGO_TARGET_DIR=$(dirname "$TARGET") "$REPO/scripts/package.sh" --profile "$profile" --no-build \
        --fast --out "$out" >/dev/null || die "scripts/package.sh failed"
    fi
  ) 9>"$out.lock"
  find "$out" -maxdepth 1 -name 'agent_*.deb' | head -n1
}

install_into() {
  local name=$1 root=$2
  shift 2
  local d
  # The package is installed once the node runs (its postinst needs systemd and Redis): here it
  # is only put where the node sees it.
  mkdir -p "$root/var/cache/agent-test"
  cp "$(node_package)" "$root/var/cache/agent-test/agent.deb"
  mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
  ln -sf /lib/systemd/system/redis-server.service "$root/etc/systemd/system/multi-user.target.wants/redis-server.service"
  # Valkey is installed too (a test runs the node on it) but not started: both listen on 6379.
  rm -f "$root/etc/systemd/system/multi-user.target.wants/valkey-server.service"
  # Both Sentinels are installed for cluster tests, not started (both listen on 26379, and Debian's
  # sentinel.conf watches a "mymaster" on 127.0.0.1): a test configures and starts the one it uses.
  # (sentinel.service: the alias both claim; the package installed last got it.)
  rm -f "$root/etc/systemd/system/multi-user.target.wants/redis-sentinel.service" \
    "$root/etc/systemd/system/multi-user.target.wants/valkey-sentinel.service" \
    "$root/etc/systemd/system/sentinel.service"
  # Extra node events given with --events: the directory of a hand install, searched after the
  # package's /usr/share/agent/node-events (agent-engine's default_events_dirs).
  mkdir -p "$root/usr/local/share/agent/node-events" "$root/var/local/node-events"
  for d in "$@"; do
    [ -d "$d" ] || die "--events $d: not a directory"
    cp -a "$d/." "$root/usr/local/share/agent/node-events/"
  done
  # Identity: the hostname is the node's name (node-agent's default agent name).
  echo "$name" >"$root/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" >"$root/etc/hosts"
  : >"$root/etc/machine-id"
  # Podman inside an nspawn node (HARNESS.md): no kernel keyring, no pids controller. Harness-only:
  # a real host needs none of it.
  mkdir -p "$root/etc/containers"
  cat >"$root/etc/containers/containers.conf" <<'CONF'
[containers]
keyring = false
pids_limit = 0
CONF
  # Without it every unit ordered after network-online.target (Quadlet's) waits 90 s.
  mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/etc/systemd/system/sysinit.target.wants"
  ln -sf /usr/lib/systemd/system/network-online.target \
    "$root/etc/systemd/system/multi-user.target.wants/network-online.target"
  # nspawn mounts /proc/sys read-only, /proc/sys/net included; netavark must set sysctls there for
  # a bridge network. Safe: the node has a network namespace of its own.
  cat >"$root/etc/systemd/system/agent-test-node-proc-sys-net.service" <<'UNIT'
[Unit]
Description=Writable /proc/sys/net in a test node (its own network namespace)
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount --bind /proc/sys/net /proc/sys/net
ExecStart=/bin/mount -o remount,bind,rw /proc/sys/net
UNIT
  ln -sf ../agent-test-node-proc-sys-net.service \
    "$root/etc/systemd/system/sysinit.target.wants/agent-test-node-proc-sys-net.service"
  # Rootless Podman's slirp4netns opens /dev/net/tun as the module's user: 0666 as on a stock Debian
  # host. The node binds the host's device node, so this changes the host's mode too.
  echo 'z /dev/net/tun 0666 - - -' >"$root/etc/tmpfiles.d/agent-test-node-tun.conf"
  # A local registry for tests (Debian's docker-registry): loopback only, no auth, not started at boot
  # (a test starts it); podman and skopeo may speak plain HTTP to it.
  mkdir -p "$root/etc/docker/registry" "$root/etc/containers/registries.conf.d"
  cat >"$root/etc/docker/registry/config.yml" <<'CONF'
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
CONF
  rm -f "$root/etc/systemd/system/multi-user.target.wants/docker-registry.service"
  printf '[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n' \
    >"$root/etc/containers/registries.conf.d/50-agent-test-registry.conf"
  # Units that only fail or wait for nothing in a container without network devices.
  ln -sf /dev/null "$root/etc/systemd/system/systemd-networkd-wait-online.service"
}

# Boots the prepared node NAME (root, network namespace, binds in its run dir) and waits until systemd
# says it is running; START is when the whole operation began (for the log line).
boot_node() {
  local name=$1 start=$2
  local dir ns root npid leader st t0
  dir=$(node_dir "$name")
  ns=$(netns_name "$name")
  root=$dir/root
  t0=$(now)
  # Each node gets a cgroup of its own in every hierarchy nspawn uses (HARNESS.md): started from
  # the host's root cgroup, every node's container would be the same /payload cgroup, and one
  # node's systemd stopping a unit would kill the same-named unit's processes of every other node.
  local cgs
  cgs=$(node_cgroups "$name")
  # shellcheck disable=SC2086
  mkdir -p $cgs
  # --console=read-only with the output in console.log (HARNESS.md): with `passive` nothing reads
  # the console, and after ~14-20 KB of console output every writer to /dev/console, PID 1
  # included, blocks — the node then never finishes shutting down.
  setsid sh -c 'for cg in $1; do echo $$ > "$cg/cgroup.procs" || exit 1; done; shift; exec "$@"' sh "$cgs" \
    env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 \
    systemd-nspawn -D "$root" --boot -M "$name" --register=no --keep-unit --console=read-only \
    --network-namespace-path="/run/netns/$ns" --bind=/dev/net/tun --capability=CAP_NET_ADMIN \
    --bind="$dir/containers:/var/lib/containers" --bind="$dir/home:/home" \
    </dev/null >"$dir/console.log" 2>&1 &
  npid=$!
  echo "$npid" >"$dir/nspawn.pid"
  leader=
  local deadline=$((SECONDS + BOOT_TIMEOUT))
  while [ -z "$leader" ]; do
    kill -0 "$npid" 2>/dev/null || { tail -n 30 "$dir/console.log" >&2; die "systemd-nspawn exited during start (log: $dir/console.log); clean up with: node.sh down $name"; }
    [ $SECONDS -lt $deadline ] || die "no container init after ${BOOT_TIMEOUT}s; clean up with: node.sh down $name"
    leader=$(find_leader "$npid")
    [ -n "$leader" ] || sleep 0.05
  done
  echo "$leader" >"$dir/leader.pid"
  st=
  while :; do
    # Should the pid found first still vanish, look for init again rather than wait on a dead pid.
    if [ ! -d "/proc/$leader" ]; then
      leader=$(find_leader "$npid")
      [ -n "$leader" ] && echo "$leader" >"$dir/leader.pid"
    fi
    st=
    [ -n "$leader" ] && st=$(in_node "$leader" systemctl is-system-running 2>/dev/null || true)
    case $st in running | degraded) break ;; esac
    kill -0 "$npid" 2>/dev/null || { tail -n 30 "$dir/console.log" >&2; die "node $name died while booting (log: $dir/console.log)"; }
    [ $SECONDS -lt $deadline ] || {
      in_node "$leader" systemctl list-jobs >&2 || true
      die "node $name not booted after ${BOOT_TIMEOUT}s (state '$st'); clean up with: node.sh down $name"
    }
    sleep 0.1
  done
  if [ "$st" = degraded ]; then
    log "node $name is degraded; failed units:"
    in_node "$leader" systemctl --failed --no-legend >&2 || true
  fi
  log "node $name up: booted in $(elapsed "$t0") s ($(elapsed "$start") s with setup), state $st"
}

cmd_up() {
  need_root
  need_cmd systemd-nspawn nsenter ip
  local name=${1:-}
  check_name "$name"
  shift
  local events=() lab='' address=''
  while [ $# -gt 0 ]; do
    case $1 in
      --events) [ $# -ge 2 ] || die "up: --events needs a directory"; events+=("$(cd "$2" && pwd)"); shift 2 ;;
      --lab) [ $# -ge 2 ] || die "up: --lab needs a lab name"; lab=$2; shift 2 ;;
      --address) [ $# -ge 2 ] || die "up: --address needs ADDR/PREFIX"; address=$2; shift 2 ;;
      *) die "up: unknown argument $1" ;;
    esac
  done
  # Everything is checked before anything is made.
  if [ -n "$lab" ] || [ -n "$address" ]; then
    if [ -z "$lab" ] || [ -z "$address" ]; then die "up: --lab and --address go together"; fi
    check_lab "$lab"
    check_address "$address"
    netns_exists "$(lab_netns "$lab")" || die "lab $lab is not up: node.sh lab-up $lab"
    local other
    for other in "$RUNDIR"/*/; do
      [ -f "$other/lab" ] && [ "$(cat "$other/lab")" = "$lab" ] &&
        [ "$(cat "$other/address" 2>/dev/null)" = "$address" ] &&
        die "up: address $address is node $(basename "$other")'s in lab $lab"
    done
  fi
  local dir ns base start root
  dir=$(node_dir "$name")
  ns=$(netns_name "$name")
  [ -e "$dir" ] && die "node $name exists ($dir): node.sh down $name first"
  base=$(cmd_rootfs)
  start=$(now)
  mkdir -p "$dir"/{upper,work,root}
  root=$dir/root
  # Copy-on-write view of the base: overlayfs, else a reflink/plain copy.
  if mount -t overlay overlay -o "lowerdir=$base,upperdir=$dir/upper,workdir=$dir/work" "$root" 2>"$dir/overlay.err"; then
    echo overlay >"$dir/mode"
  else
    log "overlayfs failed ($(cat "$dir/overlay.err")); copying the rootfs instead"
    cp -a --reflink=auto "$base/." "$root/"
    echo copy >"$dir/mode"
  fi
  install_into "$name" "$root" "${events[@]}"
  # Podman's overlay storage refuses an overlayfs backing: container storage (root's and, under /home,
  # every module user's) lives in plain per-node directories bound over the overlay.
  mkdir -p "$dir/containers" "$dir/home"
  # Network: a namespace of its own with loopback up, and with --lab a veth into the lab's bridge.
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  [ -z "$lab" ] || lab_attach "$name" "$lab" "$address"
  boot_node "$name" "$start"
  install_package "$name" "$start"
}

# Node NAME's network in lab LAB: a veth made in the lab's namespace (nothing in the host's), its
# end eth0 moved into the node's namespace with ADDRESS, the other end a port of the lab's br0.
# Recorded in the run dir (lab, address, veth) for reboot, kill, boot, cut, heal, status and down.
lab_attach() {
  local name=$1 lab=$2 address=$3 ns labns veth dir
  dir=$(node_dir "$name")
  ns=$(netns_name "$name")
  labns=$(lab_netns "$lab")
  veth=$(lab_veth_name "$name")
  echo "$lab" >"$dir/lab"
  echo "$address" >"$dir/address"
  echo "$veth" >"$dir/veth"
  ip -n "$labns" link add "$veth" type veth peer name eth0 netns "$ns" ||
    die "node $name: cannot make veth $veth in lab $lab; clean up with: node.sh down $name"
  ip -n "$labns" link set "$veth" master br0 up
  ip -n "$ns" addr add "$address" dev eth0
  ip -n "$ns" link set eth0 up
}

# apt-get install of the package put into the node by install_into: no network, every dependency is
# in the rootfs. Its postinst runs `agentctl node setup` (unless AGENT_NODE_SETUP=no).
install_package() {
  local name=$1 start=$2 leader t0 dir
  dir=$(node_dir "$name")
  leader=$(leader_pid "$name")
  t0=$(now)
  if ! in_node "$leader" env DEBIAN_FRONTEND=noninteractive AGENT_SETUP="${AGENT_NODE_SETUP:-yes}" \
    apt-get install -y /var/cache/agent-test/agent.deb >"$dir/install.log" 2>&1; then
    tail -n 30 "$dir/install.log" >&2
    die "installing the package in node $name failed (log: $dir/install.log); clean up with: node.sh down $name"
  fi
  in_node "$leader" rm -f /var/cache/agent-test/agent.deb
  log "node $name: package installed in $(elapsed "$t0") s ($(elapsed "$start") s in all; log: $dir/install.log)"
  local lab
  lab=$(node_lab "$name")
  cat <<EOF
node $name is up (init pid $leader, network namespace $(netns_name "$name"), root $dir/root)${lab:+
  network: eth0 $(node_address "$name") in lab $lab (bridge br0 of network namespace $(lab_netns "$lab"))}
  shell:  $0 shell $name        (or: nsenter -t $leader -a bash)
  run:    $0 exec $name systemctl status node-agent
  stop:   $0 down $name
EOF
}

running_leader() {
  local l
  l=$(leader_pid "$1")
  if [ -z "$l" ]; then
    [ -f "$(node_dir "$1")/killed" ] && die "node $1 is not running (killed; node.sh boot $1 starts it again)"
    die "node $1 is not running"
  fi
  echo "$l"
}

cmd_exec() {
  need_root
  local name=${1:-}
  check_name "$name"
  shift
  [ $# -gt 0 ] || die "exec: no command"
  local l
  l=$(running_leader "$name")
  in_node "$l" "$@"
}

cmd_shell() {
  need_root
  local name=${1:-}
  check_name "$name"
  local l
  l=$(running_leader "$name")
  in_node "$l" PS1="[node $name] \\w# " bash --norc -i
}

cmd_status() {
  local name=${1:-}
  check_name "$name"
  local l net='' lab
  lab=$(node_lab "$name")
  if [ -n "$lab" ]; then
    net="; lab $lab, eth0 $(node_address "$name")"
    if ! ip -n "$(lab_netns "$lab")" link show "$(node_veth "$name")" >/dev/null 2>&1; then
      net="$net, veth gone (lab down?)"
    elif ! ip -n "$(lab_netns "$lab")" link show "$(node_veth "$name")" | grep -q '[<,]UP[,>]'; then
      net="$net, cut"
    fi
  fi
  l=$(leader_pid "$name")
  if [ -z "$l" ]; then
    if [ -f "$(node_dir "$name")/killed" ]; then
      echo "$name: killed, not running (node.sh boot $name$net)"
    else
      echo "$name: not running${net:+ (${net#; })}"
    fi
    return 1
  fi
  echo "$name: $(in_node "$l" systemctl is-system-running 2>/dev/null || true) (init pid $l$net)"
}

# The node's own cgroup directories: in the v2 hierarchy and the named systemd one (hybrid host).
node_cgroups() {
  local h out=
  for h in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
    [ -f "$h/cgroup.procs" ] && out="$out $h/agent-nodes/$1"
  done
  echo $out
}

# Removes the node's cgroups, deepest first (what the container's systemd left, empty by now).
remove_node_cgroups() {
  local cg
  for cg in $(node_cgroups "$1"); do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  return 0
}

# Stops the node's systemd (power off: SIGTERM to nspawn), the hard way after 20 s. Keeps its files.
power_off() {
  local name=$1 dir npid l i
  dir=$(node_dir "$name")
  npid=$(cat "$dir/nspawn.pid" 2>/dev/null || true)
  l=$(leader_pid "$name")
  if [ -n "$npid" ] && kill -0 "$npid" 2>/dev/null; then
    # SIGTERM to nspawn = orderly shutdown of the container's systemd; then the hard way.
    kill -TERM "$npid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      kill -0 "$npid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$npid" 2>/dev/null; then
      log "node $name did not power off in 20 s; killing it"
      [ -n "$l" ] && kill -KILL "$l" 2>/dev/null || true
      kill -KILL "$npid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do kill -0 "$npid" 2>/dev/null || break; sleep 0.1; done
    fi
  elif [ -n "$l" ]; then
    kill -KILL "$l" 2>/dev/null || true
  fi
  rm -f "$dir/leader.pid" "$dir/nspawn.pid"
  remove_node_cgroups "$name"
}

# Pids in cgroup CG and every cgroup below it.
cgroup_pids() {
  find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null || true
}

# Whether process PID exists and is not a zombie (a killed nspawn stays one until the host's init
# reaps it).
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ]
}

# Power cut: SIGKILL to every process of the node at once (cgroup.kill of its own v2 cgroup, else
# each pid of its cgroups, and nspawn); no shutdown. Root, homes, containers and netns stay. A node
# in a lab first loses its eth0 (link down; `boot` brings it up): a dead machine answers nothing,
# while the namespace's kernel would go on answering ping and refusing TCP connections, and the
# dying processes' FIN/RST never reach the peers, as after a real power cut.
cmd_kill() {
  need_root
  local name=${1:-}
  check_name "$name"
  local dir npid l cg i p q
  dir=$(node_dir "$name")
  [ -d "$dir" ] || die "no node $name"
  npid=$(cat "$dir/nspawn.pid" 2>/dev/null || true)
  l=$(leader_pid "$name")
  [ -n "$l" ] || { [ -n "$npid" ] && kill -0 "$npid" 2>/dev/null; } || die "node $name is not running"
  if [ -n "$(node_lab "$name")" ]; then
    ip -n "$(netns_name "$name")" link set eth0 down 2>/dev/null || log "node $name: no eth0 to take down"
  fi
  # The v2 cgroup.kill takes the whole tree at once; a hierarchy without one (the named v1 systemd
  # one) holds the same processes, killed one by one only if there was no cgroup.kill.
  local killed=''
  for cg in $(node_cgroups "$name"); do
    if [ -f "$cg/cgroup.kill" ] && echo 1 >"$cg/cgroup.kill"; then killed=yes; fi
  done
  if [ -z "$killed" ]; then
    for cg in $(node_cgroups "$name"); do
      for p in $(cgroup_pids "$cg"); do kill -KILL "$p" 2>/dev/null || true; done
    done
  fi
  if [ -n "$npid" ]; then kill -KILL "$npid" 2>/dev/null || true; fi
  if [ -n "$l" ]; then kill -KILL "$l" 2>/dev/null || true; fi
  # Until every process is gone (a cgroup's pids may still be exiting), then its cgroups can go.
  for ((i = 0; i < 100; i++)); do
    p=
    for cg in $(node_cgroups "$name"); do
      [ -d "$cg" ] && p="$p $(cgroup_pids "$cg")"
    done
    if [ -n "$npid" ] && alive "$npid"; then p="$p $npid"; fi
    [ -n "${p//[[:space:]]/}" ] || break
    for q in $p; do kill -KILL "$q" 2>/dev/null || true; done
    sleep 0.05
  done
  [ -z "${p//[[:space:]]/}" ] || log "node $name: processes still there after the kill: $p"
  rm -f "$dir/leader.pid" "$dir/nspawn.pid"
  remove_node_cgroups "$name"
  touch "$dir/killed"
  log "node $name killed (node.sh boot $name starts it again)"
}

# Boots a node that is not running (after `kill`) with its root, homes, containers and network.
cmd_boot() {
  need_root
  local name=${1:-} dir start
  check_name "$name"
  dir=$(node_dir "$name")
  [ -d "$dir/root" ] || die "no node $name: node.sh up $name"
  [ -z "$(leader_pid "$name")" ] || die "node $name is running"
  netns_exists "$(netns_name "$name")" || die "node $name has no network namespace: node.sh down $name"
  start=$(now)
  remove_node_cgroups "$name"
  rm -f "$dir/killed"
  if [ -n "$(node_lab "$name")" ]; then
    ip -n "$(netns_name "$name")" link set eth0 up || log "node $name: no eth0 (was its lab taken down?)"
  fi
  boot_node "$name" "$start"
}

# Power off and boot again with the same root, homes and container storage: what a reboot keeps.
cmd_reboot() {
  need_root
  local name=${1:-} start
  check_name "$name"
  running_leader "$name" >/dev/null
  start=$(now)
  power_off "$name"
  log "node $name powered off; booting it again"
  boot_node "$name" "$start"
}

# The lab-side veth of node NAME down (cut) or up (heal): the node's eth0 loses its carrier.
lab_port() {
  need_root
  local name=${2:-} lab veth
  check_name "$name"
  lab=$(node_lab "$name")
  [ -n "$lab" ] || die "node $name is in no lab (up --lab LAB --address ADDR)"
  veth=$(node_veth "$name")
  ip -n "$(lab_netns "$lab")" link set "$veth" "$1" ||
    die "node $name: cannot set $veth $1 in lab $lab (is the lab up?)"
}

cmd_down() {
  need_root
  local name=${1:-}
  check_name "$name"
  local dir ns lab veth
  dir=$(node_dir "$name")
  ns=$(netns_name "$name")
  lab=$(node_lab "$name")
  veth=$(node_veth "$name")
  power_off "$name"
  if mountpoint -q "$dir/root" 2>/dev/null; then
    umount "$dir/root" 2>/dev/null || { sleep 0.5; umount "$dir/root" 2>/dev/null; } || umount -l "$dir/root"
  fi
  # Deleting the lab-side end deletes both ends of the veth (the node's namespace would take it too).
  if [ -n "$lab" ] && [ -n "$veth" ] && netns_exists "$(lab_netns "$lab")"; then
    ip -n "$(lab_netns "$lab")" link del "$veth" 2>/dev/null || true
  fi
  if netns_exists "$ns"; then ip netns del "$ns"; fi
  rm -rf "$dir"
  rmdir "$RUNDIR" 2>/dev/null || true
  log "node $name is down"
}

cmd_list() {
  [ -d "$RUNDIR" ] || return 0
  local d
  for d in "$RUNDIR"/*/; do
    [ -d "$d" ] && cmd_status "$(basename "$d")" || true
  done
}

# A network namespace agentlab-LAB with lo and a bridge br0 up: nodes' veths are its ports.
# Nothing is added to the host's namespace. Idempotent.
cmd_lab_up() {
  need_root
  need_cmd ip
  local lab=${1:-} ns
  check_lab "$lab"
  ns=$(lab_netns "$lab")
  netns_exists "$ns" || ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link show br0 >/dev/null 2>&1 || ip -n "$ns" link add br0 type bridge
  # No STP: a port forwards as soon as it is up (after `heal` too).
  ip -n "$ns" link set br0 type bridge stp_state 0
  ip -n "$ns" link set br0 up
  echo "$ns"
}

# Deletes the lab's namespace, and with it the veths of nodes still in it: those nodes keep
# running with no eth0 (down them first).
cmd_lab_down() {
  need_root
  local lab=${1:-} ns d left=
  check_lab "$lab"
  ns=$(lab_netns "$lab")
  if [ -d "$RUNDIR" ]; then
    for d in "$RUNDIR"/*/; do
      [ -f "$d/lab" ] && [ "$(cat "$d/lab")" = "$lab" ] && left="$left $(basename "$d")"
    done
  fi
  [ -z "$left" ] || log "warning: lab $lab still has nodes:$left (their eth0 goes with it)"
  if netns_exists "$ns"; then ip netns del "$ns"; fi
  log "lab $lab is down"
}

cmd_prune() {
  need_root
  local d n
  if [ -d "$RUNDIR" ]; then
    for d in "$RUNDIR"/*/; do
      [ -d "$d" ] && cmd_down "$(basename "$d")"
    done
  fi
  for n in $(ip netns list | awk '{print $1}' | grep -E '^agent(node|lab)-' || true); do
    ip netns del "$n" && log "removed stray network namespace $n"
  done
}

case ${1:-} in
  rootfs) shift; cmd_rootfs "$@" ;;
  up) shift; cmd_up "$@" ;;
  exec) shift; cmd_exec "$@" ;;
  shell) shift; cmd_shell "$@" ;;
  status) shift; cmd_status "$@" ;;
  down) shift; cmd_down "$@" ;;
  reboot) shift; cmd_reboot "$@" ;;
  kill) shift; cmd_kill "$@" ;;
  boot) shift; cmd_boot "$@" ;;
  lab-up) shift; cmd_lab_up "$@" ;;
  lab-down) shift; cmd_lab_down "$@" ;;
  cut) shift; lab_port down "$@" ;;
  heal) shift; lab_port up "$@" ;;
  list) shift; cmd_list ;;
  prune) shift; cmd_prune ;;
  *) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 2 ;;
esac
