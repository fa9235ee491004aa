//! Concurrent clients against an in-process 3-controller cluster while a nemesis partitions,
//! kills and delays; the recorded history must be linearizable, and the run must have done
//! enough work to mean something.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use flotilla_api::cluster::{Command, PutWorkload, WorkloadSpec};
use flotilla_controller::linearizability::{check, History, Outcome, RegisterOp};
use flotilla_controller::node::ControllerError;
use flotilla_controller::testing::{DelayLink, Isolate, Partition, TestCluster};
use tempfile::TempDir;

const T: Duration = Duration::from_secs(20);
const KEYS: [&str; 3] = ["x", "y", "z"];

/// Small deterministic generator (no dependency needed for picking ops).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::PutWorkload(PutWorkload {
        spec: WorkloadSpec {
            name: key.into(),
            image: value.into(),
            ..Default::default()
        },
        expect_revision: None,
        at_ms: 0,
    })
}

/// A read that failed had no effect; a write that failed for any reason may have been
/// proposed, so its outcome is unknown.
fn write_outcome(r: Result<flotilla_api::cluster::WriteResponse, ControllerError>) -> Outcome {
    match r {
        Ok(w) if w.result.is_applied() => Outcome::Ok(None),
        Ok(_) => Outcome::Fail,
        Err(_) => Outcome::Info,
    }
}

async fn client(c: Arc<TestCluster>, h: Arc<History>, id: u64, stop: Arc<AtomicBool>) {
    let mut rng = Lcg(id * 7919 + 1);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let live = c.router.live_ids();
        if live.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let Some(node) = c.router.node(live[rng.next(live.len() as u64) as usize]) else {
            continue;
        };
        let key = KEYS[rng.next(KEYS.len() as u64) as usize];
        if rng.next(2) == 0 {
            n += 1;
            let value = format!("c{id}-{n}");
            let op = h.invoke(id, key, RegisterOp::Write(value.clone()));
            let r = node.propose(put(key, &value)).await;
            h.complete(op, write_outcome(r));
        } else {
            let op = h.invoke(id, key, RegisterOp::Read);
            let r = node
                .read_linearizable(|s| s.workloads.get(key).map(|w| w.spec.image.clone()))
                .await;
            h.complete(op, r.map_or(Outcome::Fail, Outcome::Ok));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_concurrent_history_under_faults_is_linearizable() -> Result<()> {
    let dir = TempDir::new()?;
    let mut cluster = TestCluster::new(dir.path());
    cluster.request_timeout = Duration::from_secs(2);
    let c = Arc::new(cluster);
    c.start_voters(3).await?;
    let all = [1, 2, 3];
    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (1..=4)
        .map(|id| tokio::spawn(client(c.clone(), history.clone(), id, stop.clone())))
        .collect();
    let pause = || tokio::time::sleep(Duration::from_millis(800));

    tracing::info!("--- load without faults");
    pause().await;

    tracing::info!("--- leader isolated (minority of one)");
    let leader = c.leader(&all, T).await;
    c.router.add_filter(Isolate(leader));
    pause().await;
    c.router.heal();
    c.leader(&all, T).await;

    tracing::info!("--- follower killed and restarted");
    let leader = c.leader(&all, T).await;
    let follower = all.into_iter().find(|i| *i != leader).unwrap_or(1);
    c.kill(follower).await;
    pause().await;
    c.start(follower, false).await?;

    tracing::info!("--- leader killed and restarted");
    let leader = c.leader(&all, T).await;
    c.kill(leader).await;
    pause().await;
    c.start(leader, false).await?;
    c.leader(&all, T).await;

    tracing::info!("--- one-way partition and slow links");
    let leader = c.leader(&all, T).await;
    let others: Vec<u64> = all.into_iter().filter(|i| *i != leader).collect();
    c.router.add_filter(Partition {
        a: vec![others[0]],
        b: vec![others[1]],
    });
    c.router.add_filter(DelayLink {
        from: None,
        to: None,
        delay: Duration::from_millis(15),
    });
    pause().await;
    c.router.heal();

    tracing::info!("--- stop the clients, check convergence and the history");
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await?;
    }
    c.converged(&all, T).await;
    let ops = history.operations();
    let summary = check(&ops).map_err(|v| anyhow::anyhow!("{v}: {:#?}", v.history))?;
    println!("history: {summary:?}");
    // A run that did little proves little (etcd's robustness rule).
    ensure!(
        summary.ok_writes >= 30 && summary.ok_reads >= 30,
        "too little load to judge: {summary:?}"
    );
    for id in all {
        c.kill(id).await;
    }
    Ok(())
}

/// The checker against the real system: stale reads from a cut-off replica (what
/// `read_stale` allows) are not linearizable, and the checker says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t61_stale_reads_from_a_cut_off_replica_are_caught() -> Result<()> {
    let dir = TempDir::new()?;
    let c = TestCluster::new(dir.path());
    c.start_voters(3).await?;
    let all = [1, 2, 3];
    let leader = c.leader(&all, T).await;
    let cut = all.into_iter().find(|i| *i != leader).unwrap_or(1);
    let h = History::new();

    for value in ["1", "2"] {
        if value == "2" {
            c.converged(&all, T).await;
            c.router.add_filter(Isolate(cut));
        }
        let op = h.invoke(1, "x", RegisterOp::Write(value.into()));
        let r = c.node(leader).propose(put("x", value)).await;
        h.complete(op, write_outcome(r));
    }
    let op = h.invoke(2, "x", RegisterOp::Read);
    let seen = c
        .node(cut)
        .read_stale(|s| s.workloads.get("x").map(|w| w.spec.image.clone()));
    h.complete(op, Outcome::Ok(seen.clone()));
    assert_eq!(seen.as_deref(), Some("1"), "the cut-off replica should lag");
    let violation = check(&h.operations()).expect_err("stale read must be caught");
    assert_eq!(violation.key, "x");

    tracing::info!("--- the linearizable read on the same replica refuses instead");
    assert!(c
        .node(cut)
        .read_linearizable(|s| s.workloads.len())
        .await
        .is_err());
    c.router.heal();
    for id in all {
        c.kill(id).await;
    }
    Ok(())
}
