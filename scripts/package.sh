#!/usr/bin/env bash
# Builds the Debian package of the whole product (docs/PACKAGING.md): the four binaries, the unit
# files, the node's event tree, the example modules, the docs, man pages and shell completions.
#
#   scripts/package.sh [--profile release|dev] [--no-build] [--version V] [--out DIR] [--fast]
#   scripts/package.sh --install-tool     only install cargo-deb (pinned) when it is missing
#
#   --profile   release (default): the optimised binaries (a long build: fat LTO). dev: the
#               target/debug binaries, stripped; what the test nodes install (tests/node/node.sh).
#   --no-build  package the binaries already built for that profile.
#   --version   the package version. Default: the workspace version plus the commit that built it,
#               0.1.0+git<commits>.g<hash>[.dirty] (newer commits sort higher).
#   --out       where the .deb goes (default target/debian); its path is printed on stdout.
#   --fast      quicker, larger compression (xz -1).
#   --maintainer "NAME <MAIL>"  the package's Maintainer field (default: node-agent/Cargo.toml's).
#
# Needs cargo-deb (installed from crates.io with --install-tool, or by scripts/test-deps.sh) and
# dpkg-dev (dpkg-shlibdeps). The package targets Debian 13; build it on Debian 12 or 13.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
export PATH="$HOME/.cargo/bin:$PATH"

install_tool() {
  if [ "$(cargo-deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    echo "package.sh: installing cargo-deb $CARGO_DEB_VERSION from crates.io (once per machine)" >&2
    cargo install --quiet --locked --version "$CARGO_DEB_VERSION" cargo-deb
  fi
}

profile=release build=1 version= out=target/debian fast=() maintainer=()
while [ $# -gt 0 ]; do
  case $1 in
    --install-tool) install_tool; exit 0 ;;
    --profile) profile=${2:?--profile needs release or dev}; shift 2 ;;
    --no-build) build=0; shift ;;
    --version) version=${2:?--version needs a version}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --fast) fast=(--fast); shift ;;
    --maintainer) maintainer=(--maintainer "${2:?--maintainer needs NAME <MAIL>}"); shift 2 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
done
case $profile in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "package.sh: --profile is release or dev, not $profile" >&2; exit 2 ;;
esac
install_tool

tools=(-p node-agent -p module-agent -p agentctl -p module-sdk -p agent-docgen)
if [ "$build" = 1 ]; then
  cargo build --profile "$profile" "${tools[@]}" >&2
fi
target=${CARGO_TARGET_DIR:-target}
for b in node-agent module-agent agentctl module-sdk agent-docgen; do
  [ -x "$target/$dir/$b" ] || { echo "package.sh: $target/$dir/$b is missing: cargo build --profile $profile ${tools[*]}" >&2; exit 1; }
done

# The workspace version and the default Maintainer, from node-agent's manifest.
read -r base default_maintainer < <(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
p = next(p for p in json.load(sys.stdin)["packages"] if p["name"] == "node-agent")
print(p["version"], p["metadata"]["deb"]["maintainer"])')
[ ${#maintainer[@]} -gt 0 ] || maintainer=(--maintainer "$default_maintainer")
if [ -z "$version" ]; then
  if git rev-parse --git-dir >/dev/null 2>&1; then
    version="$base+git$(git rev-list --count HEAD).g$(git rev-parse --short=12 HEAD)"
    git diff --quiet HEAD -- 2>/dev/null || version="$version.dirty"
  else
    version=$base
  fi
fi

# Man pages and completions from the binaries' own command definitions (agent-docgen), in the
# one directory the asset list names: one packaging at a time.
mkdir -p target
exec 9>target/package.lock
flock 9
gen=target/package
rm -rf "$gen"
"$target/$dir/agent-docgen" "$gen"
gzip -9n "$gen"/man/*.1
# A Debian changelog naming the commit (cargo-deb installs it as changelog.gz).
commit=$(git rev-parse HEAD 2>/dev/null || echo "unknown")
cat >"$gen/changelog" <<CHANGELOG
agent ($version) unstable; urgency=medium

  * Built from commit $commit.

 -- ${maintainer[1]}  $(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")
CHANGELOG

mkdir -p "$out"
# cargo-deb finds binaries under target/release/ in the asset list and maps them to the profile.
cargo deb -p node-agent --no-build --profile "$profile" --deb-version "$version" "${fast[@]}" "${maintainer[@]}" \
  --quiet --output "$out" >/dev/null
deb="$out/agent_${version}_$(dpkg --print-architecture).deb"
[ -f "$deb" ] || { echo "package.sh: cargo-deb wrote no $deb" >&2; exit 1; }
echo "package.sh: $deb ($(du -h "$deb" | cut -f1))" >&2
echo "$deb"
