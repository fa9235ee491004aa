#!/usr/bin/env bash
# The project's main job (README): install dependencies, build release binaries, run the demo.
# Extra arguments go to `flotilla-agent demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh
# shellcheck source=deploy/env.sh
. deploy/env.sh
cargo build --release --workspace --locked
exec "${CARGO_TARGET_DIR:-./target}/release/flotilla-agent" demo "$@"
