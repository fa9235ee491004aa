#!/usr/bin/env bash
# Replicated durable writes on 3-member clusters on loopback: Flotilla's controller against etcd
# (Debian's etcd-server), same client (bench/raft_bench.rs), same concurrency, same run.
#
#   controller/bench/run.sh [SECONDS_PER_POINT] [CONCURRENCY...]     (default: 10 s; 1 16 64)
#   MAX_IN_FLIGHT=N controller/bench/run.sh ...   (the leader's group-commit slots; default 2)
#   NO_EAGER=1 controller/bench/run.sh ...        (replicate only after the leader's fsync)
#
# Both clusters run at once (the idle one only heartbeats); the points alternate between the
# two systems so that background load on the machine hits both alike. Writes go to the leader.
# Data directories sit on the same filesystem (TMPDIR); both systems fsync every commit.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
shift || true
CONC=("${@:-1 16 64}")
read -r -a CONC <<<"${CONC[*]}"

command -v etcd >/dev/null || { echo "run.sh: etcd not found (deploy/install-deps.sh installs etcd-server)" >&2; exit 1; }
cargo build --release -q -p flotilla-controller --example raft_bench
BENCH=${CARGO_TARGET_DIR:-target}/release/examples/raft_bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-bench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- Flotilla: three member processes (raft_bench --serve: controller library, Raft over HTTP/2,
# redb with fsync); member 1 initializes the cluster with all three.
declare -a F_RAFT
for i in 1 2 3; do F_RAFT[$i]=127.0.0.1:$(port); done
MEMBERS="1=${F_RAFT[1]},2=${F_RAFT[2]},3=${F_RAFT[3]}"
for i in 1 2 3; do
    RUST_LOG=warn "$BENCH" --serve --id "$i" --data-dir "$WORK/f$i" --members "$MEMBERS" \
        ${MAX_IN_FLIGHT:+--max-in-flight "$MAX_IN_FLIGHT"} ${NO_EAGER:+--no-eager} 2>"$WORK/f$i.log" &
    PIDS+=($!)
done
# The leader answers a read-index request; the others answer not_leader.
F_LEADER=
for _ in $(seq 200); do
    for i in 1 2 3; do
        t=$(curl -sf --http2-prior-knowledge -H 'content-type: application/json' -d '{"type":"read_index"}' \
            "http://${F_RAFT[$i]}/raft/peer" | jq -r '.type' 2>/dev/null || true)
        if [[ $t == read_index ]]; then F_LEADER=${F_RAFT[$i]}; break 2; fi
    done
    sleep 0.1
done
[[ -n $F_LEADER ]] || { echo "run.sh: flotilla cluster did not elect a leader" >&2; exit 1; }

# --- etcd: three members
declare -a E_CLIENT E_PEER
for i in 1 2 3; do E_CLIENT[$i]=127.0.0.1:$(port); E_PEER[$i]=127.0.0.1:$(port); done
INITIAL="e1=http://${E_PEER[1]},e2=http://${E_PEER[2]},e3=http://${E_PEER[3]}"
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/e$i" \
        --listen-client-urls "http://${E_CLIENT[$i]}" --advertise-client-urls "http://${E_CLIENT[$i]}" \
        --listen-peer-urls "http://${E_PEER[$i]}" --initial-advertise-peer-urls "http://${E_PEER[$i]}" \
        --initial-cluster "$INITIAL" --initial-cluster-state new --initial-cluster-token flotilla-bench \
        --log-level warn 2>"$WORK/e$i.log" &
    PIDS+=($!)
done
ENDPOINTS="${E_CLIENT[1]},${E_CLIENT[2]},${E_CLIENT[3]}"
for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
done
E_LEADER=$(ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint status -w json |
    jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint' | sed 's|^http://||')
[[ -n $E_LEADER ]] || { echo "run.sh: etcd has no leader" >&2; exit 1; }

echo "flotilla leader $F_LEADER; etcd leader $E_LEADER; ${SECS}s per point; $(etcd --version | head -1)" >&2
RESULTS=$WORK/results.jsonl
for c in "${CONC[@]}"; do
    "$BENCH" --system flotilla --endpoint "$F_LEADER" --clients "$c" --seconds "$SECS" | tee -a "$RESULTS" >&2
    "$BENCH" --system etcd --endpoint "$E_LEADER" --clients "$c" --seconds "$SECS" | tee -a "$RESULTS" >&2
done

echo "| clients | system | writes/s | p50 ms | p99 ms |"
echo "|---:|---|---:|---:|---:|"
jq -r '"| \(.clients) | \(.system) | \(.writes_per_s | floor) | \(.p50_ms * 100 | round / 100) | \(.p99_ms * 100 | round / 100) |"' "$RESULTS"
