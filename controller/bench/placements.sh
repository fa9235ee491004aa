#!/usr/bin/env bash
# Placements per second for 10,000 instances on 1,000 simulated nodes: end to end through the
# leader's reconcile loop on a 3-member cluster (three controllers in one process over the test
# harness's router, real redb stores with fsync, under TMPDIR), then the pure scheduler
# (crates/scheduler/bench/place.sh) in the same run for comparison. Release builds, medians.
#
# Usage: controller/bench/placements.sh [--runs 5]
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, commit $(git rev-parse --short HEAD)"
cargo build --release -q -p flotilla-controller --example placements
RUST_LOG=${RUST_LOG:-error} "${CARGO_TARGET_DIR:-target}"/release/examples/placements "$@"
echo
echo "== pure scheduler (no Raft, no I/O)"
crates/scheduler/bench/place.sh --no-reference
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
