#!/usr/bin/env bash
# The scale simulation of issue 13 (release build; no root needed): N module-agents as plain
# processes against one redis-server, beside the same Redis with one agent and with none.
# Usage: scripts/bench-scale.sh [--agents N] [--samples N] [--idle-secs N] [--bursts N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --quiet
exec target/release/scale-bench "$@"
