#!/usr/bin/env bash
# Checkpoint/restore benchmark (issue 3: "checkpoint and restore time for containers with 16, 256
# and 1024 MB resident, against runc checkpoint/restore and against plain `criu dump`/`criu
# restore` of the same workload in the same run; goal: within 1.3x of plain CRIU and below runc").
#
# Usage (as root):  tests/bench/checkpoint_restore.sh [--sizes 16,256,1024] [--json PATH] ...
#   RUNS=N   timed cycles per runtime and size (default 5)
# Extra arguments go to `flotilla-bench checkpoint-restore` (see its --help; --keep-logs DIR keeps
# every CRIU log for finding where the time goes). The tables go to stdout, progress to stderr.
# Needs CRIU >= 4.2 (deploy/install-deps.sh; platform.md §4), runc, gcc, busybox and iproute2.
# Images go to /dev/shm (a size that does not fit twice is skipped). Leaves nothing behind: the
# bench removes its processes, runc containers, cgroups, network namespaces, temporary and image
# directories and Flotilla's containers, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ $(id -u) -ne 0 ]]; then
    echo "checkpoint_restore.sh: must be run as root (namespaces, mounts, cgroups, CRIU)" >&2
    exit 1
fi
if [[ -r deploy/env.sh ]]; then
    # shellcheck source=deploy/env.sh
    . deploy/env.sh
fi
command -v cargo >/dev/null || {
    echo "checkpoint_restore.sh: cargo not found" >&2
    exit 1
}

cargo build --release -p flotilla-tests -p flotilla-runtime --bins >&2
exec "${CARGO_TARGET_DIR:-target}/release/flotilla-bench" checkpoint-restore --runs "${RUNS:-5}" "$@"
