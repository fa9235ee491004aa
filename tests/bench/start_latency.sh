#!/usr/bin/env bash
# Start latency benchmark (issue: "create to exit of `true`, median and p95 over >= 100 runs, for
# Flotilla's runtime, runc and crun on the same rootfs in the same run, reported as ratios").
#
# Usage (as root):  tests/bench/start_latency.sh [--limits] [--warmup N] [--json PATH] ...
#   RUNS=N   timed runs per runtime (default 200)
# Extra arguments go to `flotilla-bench start-latency` (see its --help). The table goes to stdout.
# Needs runc, crun and busybox (deploy/install-deps.sh). Leaves nothing behind: the bench removes
# its temporary directory, mounts, runtime state and cgroups, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ $(id -u) -ne 0 ]]; then
    echo "start_latency.sh: must be run as root (namespaces, mounts, cgroups)" >&2
    exit 1
fi
if [[ -r deploy/env.sh ]]; then
    # shellcheck source=deploy/env.sh
    . deploy/env.sh
fi
command -v cargo >/dev/null || {
    echo "start_latency.sh: cargo not found" >&2
    exit 1
}

cargo build --release -p flotilla-tests -p flotilla-runtime --bins >&2
exec "${CARGO_TARGET_DIR:-target}/release/flotilla-bench" start-latency --runs "${RUNS:-200}" "$@"
