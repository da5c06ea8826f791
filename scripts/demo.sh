#!/usr/bin/env bash
# One-command demo on a fresh machine of this kind (as root): a real systemd node (tests/node/node.sh:
# systemd-nspawn, its own network namespace, Redis) with the project's Debian package installed —
# its postinst runs `agentctl node setup`: Redis durable, ACL users on —, the example module images
# built inside it, then module hello0 installed the seed-compatible way (redis-cli as the admin) —
#     redis-cli HSET module/hello0/module.env EVENTS_IMAGE localhost/hello:latest PORT 8080
#     redis-cli PUBLISH demo:module.init hello0
# — and its page shown through the node's edge proxy; then a `configure` event, and a second module
# through `agentctl module add` at its own host name, served over HTTPS with a certificate from an
# ACME server (Debian's pebble, started inside the node for the demo).
# The node stays up for you to look around (it says how); `scripts/demo.sh --down` removes it.
# Without root or systemd-nspawn, scripts/demo-engine.sh shows the engine alone (plain processes).
set -euo pipefail
cd "$(dirname "$0")/.."
node=${DEMO_NODE:-demo}
if [ "${1:-}" = --down ]; then
  exec tests/node/node.sh down "$node"
fi
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it boots a systemd-nspawn node); scripts/demo-engine.sh needs no root" >&2; exit 1; }
say() { printf '\n== %s\n' "$*"; }
show() { printf '   $ %s\n' "$*"; }

say "installing what is missing (Redis, debootstrap, systemd-container, …) and the node rootfs (a minute, once)"
scripts/test-deps.sh
say "building"
cargo build --workspace --bins --quiet

if tests/node/node.sh status "$node" >/dev/null 2>&1; then
  say "removing the node '$node' of an earlier demo"
  tests/node/node.sh down "$node"
fi
say "booting node '$node' (systemd, redis-server), then: apt-get install ./agent_….deb (scripts/package.sh)"
tests/node/node.sh up "$node" >/dev/null
in_node() { tests/node/node.sh exec "$node" "$@"; }
say "what the package's postinst printed (agentctl node setup: Redis durable, ACL users, node-agent)"
grep -E '^(changed|in place|node )' "${AGENT_NODE_RUN:-/run/agent-test-nodes}/$node/install.log" | sed 's/^/   /'
in_node systemctl is-active redis-server node-agent
show "agentctl node setup      # again: nothing to do"
in_node agentctl node setup | tail -n 1
show "redis-cli SET x y        # without credentials: NOAUTH (the default user is locked)"
in_node redis-cli SET x y
# redis-cli as the admin: its credentials come from /etc/agent/admin.env (0600), never argv.
admin_cli() {
  in_node sh -c '. /etc/agent/admin.env && REDISCLI_AUTH=$REDIS_PASSWORD exec redis-cli --no-auth-warning --user "$REDIS_USER" "$@"' sh "$@"
}

say "building the example module images inside the node (podman, busybox-static; no registry)"
in_node /usr/share/agent/examples/modules/build.sh

say "installing module hello0, the seed-compatible way (redis-cli as the admin: . /etc/agent/admin.env; REDISCLI_AUTH=\$REDIS_PASSWORD redis-cli --user \$REDIS_USER …)"
show "redis-cli HSET module/hello0/module.env EVENTS_IMAGE localhost/hello:latest PORT 8080"
admin_cli HSET module/hello0/module.env EVENTS_IMAGE localhost/hello:latest PORT 8080 >/dev/null
show "redis-cli PUBLISH $node:module.init hello0"
admin_cli PUBLISH "$node:module.init" hello0
# Wait for the run to end: the module is registered, or a module.init run failed.
for _ in $(seq 1 600); do
  [ "$(admin_cli HEXISTS "node/$node/modules" hello0)" = 1 ] && break
  if in_node agentctl journal "node/$node" --json -n 5 | grep '"event":"module.init"' | grep -q '"status":"failed"'; then
    in_node agentctl journal "node/$node"
    echo "demo.sh: module.init of hello0 failed (see above; tests/node/node.sh shell $node to look)" >&2
    exit 1
  fi
  sleep 0.2
done
show "agentctl journal node/$node"
in_node agentctl journal "node/$node" -n 4
show "curl http://127.0.0.1:8080/"
in_node curl -sS http://127.0.0.1:8080/
say "the same page through the node's edge proxy (Caddy): hello's module.init asked for the route /hello0"
for _ in $(seq 1 100); do
  in_node curl -sf http://127.0.0.1/hello0/ >/dev/null && break
  sleep 0.1
done
show "REDIS_URL=… module-sdk route list --all; curl http://127.0.0.1/hello0/"
# The admin's credentials through the environment, never argv.
in_node sh -c '. /etc/agent/admin.env && REDIS_URL="redis://$REDIS_USER:$REDIS_PASSWORD@127.0.0.1:6379" exec module-sdk route list --all' || true
in_node curl -sS http://127.0.0.1/hello0/
show "systemctl --user -M hello0@ status hello-httpd"
in_node systemctl --user -M hello0@ --no-pager status hello-httpd | head -n 4 || true

say "changing the page: an event for the module's own agent"
show "redis-cli PUBLISH hello0:configure 'Hello from the demo'"
admin_cli PUBLISH hello0:configure "Hello from the demo"
for _ in $(seq 1 100); do
  in_node curl -s http://127.0.0.1:8080/ | grep -q "Hello from the demo" && break
  sleep 0.1
done
show "curl http://127.0.0.1:8080/"
in_node curl -sS http://127.0.0.1:8080/

say "HTTPS: the cluster's certificates from an ACME server — here Debian's pebble (a test ACME server) inside the node, on 127.0.0.1:14000, resolving every name to 127.0.0.1"
# pebble's own API needs a certificate: a throwaway CA and a certificate it signs for 127.0.0.1,
# the CA trusted only by the settings below.
in_node sh -c 'set -e; mkdir -p /root/pebble && cd /root/pebble
  ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
  openssl req -x509 $ec -days 7 -subj "/CN=demo ACME API CA" -keyout ca.key -out ca.pem 2>/dev/null
  openssl req $ec -subj /CN=localhost -keyout api.key -out api.csr 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" > api.ext
  openssl x509 -req -in api.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 -extfile api.ext -out api.pem 2>/dev/null'
in_node sh -c 'cat > /root/pebble/config.json' <<'JSON'
{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
  "certificate": "/root/pebble/api.pem", "privateKey": "/root/pebble/api.key",
  "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
in_node systemctl stop demo-acme demo-acme-dns >/dev/null 2>&1 || true
in_node systemd-run -q --unit demo-acme-dns pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" \
  -dns01 127.0.0.1:8053 -http01 "" -https01 "" -tlsalpn01 "" -management 127.0.0.1:8055
in_node systemd-run -q --unit demo-acme -E PEBBLE_VA_NOSLEEP=1 pebble -config /root/pebble/config.json -dnsserver 127.0.0.1:8053
for _ in $(seq 1 100); do
  in_node curl -sf --cacert /root/pebble/ca.pem https://127.0.0.1:14000/dir >/dev/null && break
  sleep 0.1
done
show "redis-cli HSET cluster/edge acme_directory https://127.0.0.1:14000/dir acme_email admin@example.org acme_ca \"\$(cat ca.pem)\""
admin_cli HSET cluster/edge acme_directory https://127.0.0.1:14000/dir acme_email admin@example.org \
  acme_ca "$(in_node cat /root/pebble/ca.pem)" >/dev/null

say "a second module with agentctl (the id comes from the image name and a counter), published at its own host name: its route gets a certificate"
show "agentctl module add --env PORT=8081 --env HOST=hello.demo.test localhost/hello:latest"
in_node agentctl module add --env PORT=8081 --env HOST=hello.demo.test localhost/hello:latest
show "curl http://127.0.0.1:8081/"
in_node curl -sS http://127.0.0.1:8081/
# The root that signs what pebble issues (made at its start), for curl to verify the page with.
in_node sh -c 'curl -sS --cacert /root/pebble/ca.pem https://127.0.0.1:15000/roots/0 > /root/pebble/root.pem'
for _ in $(seq 1 300); do
  in_node curl -sf --cacert /root/pebble/root.pem --resolve hello.demo.test:443:127.0.0.1 https://hello.demo.test/ >/dev/null && break
  sleep 0.1
done
show "curl --cacert root.pem --resolve hello.demo.test:443:127.0.0.1 https://hello.demo.test/"
in_node curl -sS --cacert /root/pebble/root.pem --resolve hello.demo.test:443:127.0.0.1 https://hello.demo.test/
show "curl -sI --resolve hello.demo.test:80:127.0.0.1 http://hello.demo.test/   # plain HTTP redirects to it"
in_node curl -sI --resolve hello.demo.test:80:127.0.0.1 http://hello.demo.test/ | head -n 2
show "agentctl cert list"
in_node agentctl cert list

show "agentctl node status"
in_node agentctl node status

cat <<EOF

== done. The node '$node' is still up:
   tests/node/node.sh shell $node       a root shell inside (redis-cli, agentctl, systemctl, podman)
   agentctl module remove hello0        (inside) removes a module: user, units, containers, keys
   scripts/demo.sh --down               removes the node
EOF
