#!/usr/bin/env bash
# Runs every test of the project: unit and property tests, then the integration tests, which start their
# own redis-server, the real agent binaries and real systemd nodes (systemd-nspawn). Run as root on a
# Debian 12 machine: missing packages are installed first (scripts/test-deps.sh).
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
# Integration tests run the binaries from target/debug, so build them first.
cargo build --workspace --bins
cargo test --workspace "$@"
