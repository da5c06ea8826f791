#!/bin/sh
# Builds the example module images locally (no registry needed), with podman:
#   localhost/agent-busybox:latest   base image: a static busybox (Debian's busybox-static), used by
#                                    the modules' containers (httpd, wget, sh)
#   localhost/hello:latest           the hello module (FROM scratch: its imageroot/ and labels only)
#   localhost/pair:latest            the pair module
# Usage: build.sh [--save DIR] [--rebuild-base]
#   --save DIR       also write DIR/<name>.oci.tar, OCI archives of the module images
#   --rebuild-base   import the base image again even when it exists
# Idempotent; a few seconds. Needs podman and busybox-static (/bin/busybox). See docs/MODULES.md.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
save=
rebuild_base=0
while [ $# -gt 0 ]; do
  case $1 in
    --save) save=${2:?--save needs a directory}; mkdir -p "$save"; shift 2 ;;
    --rebuild-base) rebuild_base=1; shift ;;
    *) echo "usage: build.sh [--save DIR] [--rebuild-base]" >&2; exit 2 ;;
  esac
done
busybox=$(command -v busybox || true)
if [ -z "$busybox" ]; then
  echo "build.sh: busybox is missing (apt-get install busybox-static)" >&2
  exit 69
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The base image: busybox and its applet links, a /tmp and an empty /www. Kept when it exists (a new
# import would give it a new id, and every module would copy it again): --rebuild-base to force.
if [ "$rebuild_base" = 1 ] || ! podman image exists localhost/agent-busybox:latest; then
  mkdir -p "$tmp/base/bin" "$tmp/base/tmp" "$tmp/base/www"
  cp "$busybox" "$tmp/base/bin/busybox"
  for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$tmp/base/bin/$applet"
  done
  chmod 1777 "$tmp/base/tmp"
  tar -C "$tmp/base" -cf "$tmp/base.tar" .
  podman import --quiet --change 'CMD ["/bin/sh"]' "$tmp/base.tar" localhost/agent-busybox:latest >/dev/null
  echo "built localhost/agent-busybox:latest"
else
  echo "kept localhost/agent-busybox:latest"
fi
for module in hello pair; do
  [ -f "$here/$module/Containerfile" ] || continue
  podman build --quiet --tag "localhost/$module:latest" --file "$here/$module/Containerfile" "$here/$module" >/dev/null
  echo "built localhost/$module:latest"
  if [ -n "$save" ]; then
    rm -f "$save/$module.oci.tar"
    podman save --quiet --format oci-archive --output "$save/$module.oci.tar" "localhost/$module:latest"
    echo "saved $save/$module.oci.tar"
  fi
done
