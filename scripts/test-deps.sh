#!/usr/bin/env bash
# Installs (as root, from Debian's archive) what the tests need and prepares the test nodes. Idempotent
# and quick when everything is there; scripts/test.sh and .ci/run call it.
#   redis-server, redis-tools     the integration tests start their own servers (the packaged service
#                                 is not used)
#   libclang-dev, nettle-dev, pkg-config   sequoia-openpgp's nettle backend (module-signing)
#   debootstrap, systemd-container, binutils, iproute2   the real systemd nodes of tests/node
#   wireguard-go, wireguard-tools, iputils-ping   tests/tests/vpn.rs: userspace WireGuard (these
#                                 machines have no wireguard kernel module), `wg show`, ping through
#                                 the tunnel (--no-install-recommends: wireguard-tools would pull in
#                                 a kernel image)
#   caddy                         tests/tests/edge.rs: the edge proxy, driven through its admin socket
#                                 (the tests start their own; the packaged service is not used)
#   pebble                        tests/tests/acme.rs: a real ACME server (and its pebble-challtestsrv
#                                 as the DNS it resolves names with), trusted only by the tests
#   wrk                           the edge benchmark (scripts/bench-edge.sh): requests/s through it
#   dpkg-dev                      dpkg-shlibdeps, with which cargo-deb computes the package's library
#                                 dependencies; cargo-deb itself comes from crates.io (scripts/package.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
packages=(redis-server redis-tools libclang-dev nettle-dev pkg-config debootstrap systemd-container binutils iproute2 dpkg-dev wireguard-go wireguard-tools iputils-ping caddy pebble wrk)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Caddy binds a reloaded configuration's listeners beside the old ones (SO_REUSEPORT) and closes the
# old ones; without this the kernel resets the connections still in their accept queue, and the
# edge test that reloads 50 times under load sees failed requests. The package sets it on a node
# (/usr/lib/sysctl.d/60-agent-edge.conf); this machine runs the edge tests too.
sysctl -q -w net.ipv4.tcp_migrate_req=1
# The Debian package (what every test node installs) is built with cargo-deb: one pinned version,
# installed once per machine into ~/.cargo/bin, outside the clone.
scripts/package.sh --install-tool
# Test nodes: build (or reuse) the cached base rootfs (/var/cache/agent-test-nodes, outside the clone;
# about a minute the first time on a machine).
tests/node/node.sh rootfs >/dev/null
