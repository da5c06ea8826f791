#!/usr/bin/env bash
# Benchmarks of the engine (release build), printed as ratios to floors measured in the same run.
# Run as root: the latency benchmark reads the kernel's process events to time the step's exec.
# Usage: scripts/bench.sh [--samples N] [--events N] [--agents N] [--appendfsync always|everysec|no]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --quiet
exec target/release/agent-bench "$@"
