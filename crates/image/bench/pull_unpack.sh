#!/usr/bin/env bash
# Pull and unpack of a ~100 MB image from a local docker-registry (127.0.0.1, own config and
# storage in a temporary directory): Flotilla's image store against `skopeo copy docker://...
# oci:DIR` + `umoci unpack`, in the same run, median of N runs (default 5), alternating order.
#
# Usage: crates/image/bench/pull_unpack.sh [--size-mb 100] [--runs 5]
# Needs: docker-registry, skopeo, umoci, busybox-static (deploy/install-deps.sh), root for the
# store's whiteout/ownership handling.
set -euo pipefail
cd "$(dirname "$0")/../../.."
for tool in docker-registry skopeo umoci; do
    command -v "$tool" >/dev/null || { echo "pull_unpack.sh: $tool missing (run deploy/install-deps.sh)" >&2; exit 1; }
done
echo "== versions: $(skopeo --version), $(umoci --version), docker-registry $(dpkg-query -W -f='${Version}' docker-registry 2>/dev/null || echo '?')"
echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release -q -p flotilla-image --features test-support --example pull_unpack
exec target/release/examples/pull_unpack "$@"
