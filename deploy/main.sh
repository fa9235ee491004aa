#!/usr/bin/env bash
# The project's main job (README): install dependencies, build release binaries, start a local
# cluster (3 controllers and 3 agents, each in its own network-namespace host), deploy a sample
# workload with three replicas and show them running. The cluster stays up for you to use;
# `clusterctl dev down --name demo` removes it. Running this again replaces it.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh
# shellcheck source=deploy/env.sh
. deploy/env.sh
# FLOTILLA_PROFILE=dev uses a debug build (faster to build, slower to run).
PROFILE=${FLOTILLA_PROFILE:-release}
cargo build --profile "$PROFILE" --workspace --locked
OUT=$PROFILE
[ "$PROFILE" = dev ] && OUT=debug
BIN="${CARGO_TARGET_DIR:-$PWD/target}/$OUT"
ctl() { "$BIN/clusterctl" "$@"; }

NAME=${FLOTILLA_DEMO_NAME:-demo}
ctl dev down --name "$NAME" >/dev/null 2>&1 || true
ctl dev up --controllers 3 --agents 3 --name "$NAME"
REGISTRY=$(ctl dev registry --name "$NAME")

echo
echo "== clusterctl get nodes"
ctl get nodes
echo
echo "== clusterctl apply -f deploy/sample-workload.yaml (image from $REGISTRY)"
sed "s|@REGISTRY@|$REGISTRY|" deploy/sample-workload.yaml | ctl apply -f -

# Wait until the three replicas run and answer their readiness check.
for _ in $(seq 1 120); do
    ready=$(ctl get workloads hello -o json | sed -n 's/.*"ready": *\([0-9]*\).*/\1/p' | head -n1)
    [ "${ready:-0}" = 3 ] && break
    sleep 1
done
echo
echo "== clusterctl get instances -o wide"
ctl get instances -o wide
echo
first=$(ctl get instances -o json | sed -n 's/.*"id": *"\(hello-[^"]*\)".*/\1/p' | head -n1)
echo "== clusterctl exec $first -- wget -qO- http://127.0.0.1:8080/index.html"
ctl exec "$first" -- wget -qO- http://127.0.0.1:8080/index.html
echo
echo "== clusterctl logs $first"
ctl logs "$first" || true
if [ "${ready:-0}" != 3 ]; then
    echo "main.sh: the sample workload did not become ready (clusterctl describe workload hello)" >&2
    exit 1
fi
echo
echo "The cluster '$NAME' is running. Try: $BIN/clusterctl get instances -o wide;"
echo "$BIN/clusterctl scale workload hello --replicas 6; $BIN/clusterctl dev down --name $NAME"
