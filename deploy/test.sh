#!/usr/bin/env bash
# The project's test command (README; CI runs it through .ci/run): install what the tests need,
# build every target, then run the whole suite. Extra arguments go to the test runner.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh
# shellcheck source=deploy/env.sh
. deploy/env.sh
command -v cargo >/dev/null || {
    echo "test.sh: cargo not found (see install-deps.sh output)" >&2
    exit 1
}
echo "FLOTILLA_CRIU=${FLOTILLA_CRIU:-} FLOTILLA_BUSYBOX=$FLOTILLA_BUSYBOX"

cargo build --workspace --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
    # Grouping of privileged live_ tests and timeouts: .config/nextest.toml.
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    echo "test.sh: cargo-nextest missing, falling back to cargo test" >&2
    cargo test --workspace --locked --no-fail-fast "$@"
fi
