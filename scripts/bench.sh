#!/usr/bin/env bash
# Benchmarks of the engine (release build), printed as ratios to floors measured in the same run.
# Usage: scripts/bench.sh [--samples N] [--events N] [--agents N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --quiet
exec target/release/agent-bench "$@"
