//! End-to-end placements per second: 10,000 instances on 1,000 simulated nodes through the
//! leader's reconcile loop on a 3-member cluster.
//!
//! Three controllers run in this process over the test harness's router (no HTTP, no TLS) with
//! their real redb stores (the log fsynced per group commit) under `TMPDIR`. Setup (not timed):
//! 1,000 nodes registered and heartbeaten, the workloads committed, no orchestrator running.
//! Timed: from starting the leader's orchestrator until every member has applied the entries
//! that hold all instances: read-index round, plan (scheduler), Raft replication with fsync on
//! a quorum, apply on all three (instance records with their spec copies written to redb).
//!
//! Usage: `placements [--runs N] [--nodes N] [--instances N]` (through
//! `controller/bench/placements.sh` for a release build). Prints the median of N runs per
//! shape (1,000 x 10 and 100 x 100).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_api::cluster::*;
use flotilla_controller::orchestrator::{Orchestrator, OrchestratorConfig};
use flotilla_controller::testing::TestCluster;

const GIB: u64 = 1 << 30;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    secs: f64,
    entries: u64,
}

async fn one_run(nodes: usize, workloads: usize, replicas: u32) -> anyhow::Result<Run> {
    let dir = tempfile::TempDir::new()?;
    let mut cluster = TestCluster::new(dir.path());
    cluster.timings = flotilla_controller::node::RaftTimings {
        heartbeat_ms: 100,
        election_min_ms: 1000,
        election_max_ms: 2000,
        ..Default::default()
    };
    cluster.request_timeout = Duration::from_secs(60);
    cluster.start_voters(3).await?;
    let leader_id = cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let leader = cluster.node(leader_id);

    // Setup, proposed concurrently in chunks (Raft batches them).
    let mut setup: Vec<Command> = Vec::new();
    for i in 0..nodes {
        let (cpu, mem) = match i % 4 {
            0 => (8_000, 32 * GIB),
            3 => (32_000, 128 * GIB),
            _ => (16_000, 64 * GIB),
        };
        setup.push(Command::RegisterNode(RegisterNode {
            node: NodeInfo {
                id: format!("node-{i:04}"),
                address: format!("198.18.{}.{}:7000", 1 + i / 250, 1 + i % 250),
                labels: BTreeMap::from([("zone".to_string(), ["a", "b", "c"][i % 3].to_string())]),
                capacity: Capacity {
                    cpu_millis: cpu,
                    memory_bytes: mem,
                },
                features: BTreeMap::new(),
            },
            expect_revision: None,
            at_ms: now_ms(),
        }));
    }
    for chunk in setup.chunks(200) {
        let writes = chunk.iter().cloned().map(|c| leader.propose(c));
        for r in futures_util::future::join_all(writes).await {
            anyhow::ensure!(r?.result.is_applied());
        }
    }
    let term = leader.metrics().current_term;
    let beats: Vec<Command> = (0..nodes)
        .map(|i| {
            Command::NodeHeartbeat(NodeHeartbeat {
                node_id: format!("node-{i:04}"),
                lease: NodeLease {
                    leader_term: term,
                    seq: 1,
                    ttl_ms: 3_600_000,
                    renewed_at_ms: now_ms(),
                },
                at_ms: now_ms(),
            })
        })
        .collect();
    for chunk in beats.chunks(200) {
        let writes = chunk.iter().cloned().map(|c| leader.propose(c));
        for r in futures_util::future::join_all(writes).await {
            anyhow::ensure!(r?.result.is_applied());
        }
    }
    let specs: Vec<Command> = (0..workloads)
        .map(|j| {
            Command::PutWorkload(PutWorkload {
                spec: WorkloadSpec {
                    name: format!("w{j:04}"),
                    image: "198.18.0.1:5000/test/busybox:1".into(),
                    command: vec!["sleep".into(), "3600".into()],
                    replicas,
                    resources: WorkloadResources {
                        cpu_millis: [100, 250, 500, 1000][j % 4],
                        memory_bytes: [128u64, 256, 512, 1024][(j / 4) % 4] << 20,
                    },
                    placement: Placement {
                        strategy: if j % 2 == 0 {
                            PlacementStrategy::Binpack
                        } else {
                            PlacementStrategy::Spread
                        },
                        ..Default::default()
                    },
                    ..Default::default()
                },
                expect_revision: None,
                at_ms: now_ms(),
            })
        })
        .collect();
    for chunk in specs.chunks(200) {
        let writes = chunk.iter().cloned().map(|c| leader.propose(c));
        for r in futures_util::future::join_all(writes).await {
            anyhow::ensure!(r?.result.is_applied());
        }
    }
    let want = workloads * replicas as usize;
    let start_index = leader.metrics().last_log_index.unwrap_or(0);

    // Timed part.
    let start = Instant::now();
    let orchestrator = Orchestrator::spawn(leader.clone(), OrchestratorConfig::default());
    loop {
        let placed = leader.read_stale(|s| s.instances.len());
        if placed >= want {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "only {placed} of {want} placed after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every member has applied them.
    let target = leader.applied_index();
    for id in [1, 2, 3] {
        cluster
            .node(id)
            .raft()
            .wait(Some(Duration::from_secs(60)))
            .applied_index_at_least(Some(target), "bench")
            .await?;
    }
    let secs = start.elapsed().as_secs_f64();
    orchestrator.stop().await;
    let entries = target.saturating_sub(start_index);
    for id in [1, 2, 3] {
        let n = cluster.node(id).read_stale(|s| s.instances.len());
        anyhow::ensure!(n == want, "member {id} has {n} instances, not {want}");
    }
    for id in [1, 2, 3] {
        cluster.kill(id).await;
    }
    Ok(Run { secs, entries })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let runs = arg("--runs", 5);
    let nodes = arg("--nodes", 1000);
    let instances = arg("--instances", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "end to end: {instances} instances on {nodes} nodes, 3 in-process controllers, redb with fsync, median of {runs}"
    );
    println!("| shape | placements/s (median) | min | max | seconds (median) | entries |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (workloads, replicas) in [(instances / 10, 10u32), (instances / 100, 100)] {
        let mut rates = Vec::new();
        let mut secs = Vec::new();
        let mut entries = 0;
        for _ in 0..runs {
            let r = rt.block_on(one_run(nodes, workloads, replicas))?;
            rates.push(instances as f64 / r.secs);
            secs.push(r.secs);
            entries = r.entries;
        }
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        println!(
            "| {workloads} x {replicas} | {:.0} | {min:.0} | {max:.0} | {:.3} | {entries} |",
            median(rates),
            median(secs)
        );
    }
    Ok(())
}
