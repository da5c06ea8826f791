#!/usr/bin/env bash
# Runs every test of the project: unit and property tests, then the integration tests, which start their
# own redis-server (from Debian's redis-server package) and the real agent binaries.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install -y redis-server redis-tools" >&2; exit 1; }
# Integration tests run the binaries from target/debug, so build them first.
cargo build --workspace --bins
cargo test --workspace "$@"
