#!/usr/bin/env bash
# Placements per second of the pure scheduler (no Raft, no I/O): 10,000 instances on 1,000
# simulated nodes, as 1,000 workloads x 10 replicas and as 100 x 100, for binpack, spread and a
# mix (constraints, spread keys, anti-affinity); the mix also with the naive O(nodes x
# placements) planner as a baseline. Release build, median of N runs (default 7).
#
# Usage: crates/scheduler/bench/place.sh [--runs 7] [--nodes 1000] [--no-reference]
set -euo pipefail
cd "$(dirname "$0")/../../.."
echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, commit $(git rev-parse --short HEAD)"
cargo build --release -q -p flotilla-scheduler --example place_bench
"${CARGO_TARGET_DIR:-target}"/release/examples/place_bench "$@"
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
