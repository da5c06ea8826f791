#!/usr/bin/env bash
# The edge benchmark of issue 14 (release build; root not needed): requests/s and p99 latency
# through the edge proxy (a real Caddy driven by a real node-agent) against the same backend
# straight, with wrk, in the same run; route add → serving; route add → HTTPS with a certificate
# issued by pebble (a real ACME server on loopback).
# Usage: scripts/bench-edge.sh [--secs N] [--connections N] [--routes N] [--certs N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --quiet
exec target/release/edge-bench "$@"
