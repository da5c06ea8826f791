#!/usr/bin/env bash
# The edge benchmark of issue 14 (release build; root not needed): requests/s and p99 latency
# through the edge proxy (a real Caddy driven by a real node-agent) against the same backend
# straight, with wrk, in the same run; and route add → serving.
# Usage: scripts/bench-edge.sh [--secs N] [--connections N] [--routes N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --quiet
exec target/release/edge-bench "$@"
