//! In-process multi-controller tests: membership, restarts, kills and partitions. Each test is
//! a linear sequence of phases that wait on conditions (openraft's `wait`), never on sleeps.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_api::cluster::{AddMemberRequest, Command, CommandResult, PutWorkload, WorkloadSpec};
use flotilla_controller::node::ControllerNode;
use flotilla_controller::testing::{addr_of, Isolate, Partition, TestCluster};
use tempfile::TempDir;

const T: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn put(key: &str, value: &str) -> Command {
    Command::PutWorkload(PutWorkload {
        spec: WorkloadSpec {
            name: key.into(),
            image: value.into(),
            replicas: 1,
            ..Default::default()
        },
        expect_revision: None,
        at_ms: 0,
    })
}

async fn write(node: &ControllerNode, key: &str, value: &str) -> Result<u64> {
    let r = node.propose(put(key, value)).await?;
    ensure!(
        r.result.is_applied(),
        "write {key}={value} refused: {:?}",
        r.result
    );
    Ok(r.index)
}

async fn read(node: &ControllerNode, key: &str) -> Result<Option<String>> {
    Ok(node
        .read_linearizable(|s| s.workloads.get(key).map(|w| w.spec.image.clone()))
        .await?)
}

fn voters(node: &ControllerNode) -> Vec<u64> {
    node.metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_single_controller_bootstraps_and_restarts_from_disk() -> Result<()> {
    init_tracing();
    let dir = TempDir::new()?;
    let c = TestCluster::new(dir.path());

    tracing::info!("--- a lone controller with an empty store initializes itself");
    let n1 = c.start(1, true).await?;
    n1.wait_for_leader(T).await?;
    let i1 = write(&n1, "a", "1").await?;
    assert_eq!(read(&n1, "a").await?.as_deref(), Some("1"));

    tracing::info!("--- conditional update: the second writer with the same revision loses");
    let cas = |expect| {
        Command::PutWorkload(PutWorkload {
            spec: WorkloadSpec {
                name: "a".into(),
                image: "2".into(),
                ..Default::default()
            },
            expect_revision: Some(expect),
            at_ms: 1,
        })
    };
    let r = n1.propose(cas(i1)).await?;
    assert_eq!(r.result, CommandResult::Applied { revision: r.index });
    let r2 = n1.propose(cas(i1)).await?;
    assert_eq!(r2.result, CommandResult::Conflict { current: r.index });

    tracing::info!("--- restart: the state comes back from disk and writes go on");
    c.kill(1).await;
    let n1 = c.start(1, true).await?;
    n1.wait_for_leader(T).await?;
    assert_eq!(read(&n1, "a").await?.as_deref(), Some("2"));
    assert!(n1.applied_index() >= r2.index);
    write(&n1, "b", "3").await?;
    assert_eq!(voters(&n1), vec![1]);
    c.kill(1).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_grow_to_three_and_five_replace_a_member_and_catch_up_from_snapshot() -> Result<()> {
    init_tracing();
    let dir = TempDir::new()?;
    let mut c = TestCluster::new(dir.path());
    c.timings.snapshot_every = 40;
    c.timings.keep_after_snapshot = 5;

    tracing::info!("--- grow 1 -> 3");
    c.start_voters(3).await?;
    let n1 = c.node(1);
    assert_eq!(voters(&n1), vec![1, 2, 3]);

    tracing::info!("--- enough writes that the log is compacted behind a snapshot");
    for i in 0..120 {
        write(&n1, &format!("k{}", i % 10), &i.to_string()).await?;
    }
    n1.raft()
        .wait(Some(T))
        .metrics(|m| m.purged.is_some(), "leader purged its log")
        .await?;

    tracing::info!("--- grow 3 -> 5: the new members start from the snapshot");
    for id in [4, 5] {
        c.start(id, false).await?;
        // Ask a follower: membership changes are forwarded to the leader.
        c.node(2)
            .add_member(AddMemberRequest {
                id,
                addr: addr_of(id),
                voter: true,
            })
            .await?;
    }
    assert_eq!(voters(&n1), vec![1, 2, 3, 4, 5]);
    let n5 = c.node(5);
    assert!(
        n5.metrics().snapshot.is_some(),
        "controller 5 should have installed a snapshot"
    );
    assert_eq!(read(&n5, "k9").await?.as_deref(), Some("119"));

    tracing::info!("--- replace 5 by 6");
    n1.remove_member(5).await?;
    c.kill(5).await;
    c.start(6, false).await?;
    n1.add_member(AddMemberRequest {
        id: 6,
        addr: addr_of(6),
        voter: true,
    })
    .await?;
    assert_eq!(voters(&n1), vec![1, 2, 3, 4, 6]);
    write(&c.node(6), "after", "replace").await?;
    c.converged(&[1, 2, 3, 4, 6], T).await;

    tracing::info!("--- shrink back to 3");
    c.node(3).remove_member(6).await?;
    c.node(3).remove_member(4).await?;
    assert_eq!(voters(&n1), vec![1, 2, 3]);
    write(&n1, "after", "shrink").await?;
    c.converged(&[1, 2, 3], T).await;
    for id in [1, 2, 3, 4, 6] {
        c.kill(id).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_leader_killed_then_follower_killed() -> Result<()> {
    init_tracing();
    let dir = TempDir::new()?;
    let c = TestCluster::new(dir.path());
    c.start_voters(3).await?;
    let all = [1, 2, 3];

    tracing::info!("--- kill the leader: the others elect a new one and keep serving");
    let old = c.leader(&all, T).await;
    let acked = write(&c.node(old), "before", "kill").await?;
    c.kill(old).await;
    let rest: Vec<u64> = all.iter().copied().filter(|i| *i != old).collect();
    let new = c.leader(&rest, T).await;
    assert_ne!(new, old);
    let other = rest[0];
    assert_eq!(
        read(&c.node(other), "before").await?.as_deref(),
        Some("kill")
    );
    write(&c.node(other), "during", "leader-down").await?;

    tracing::info!("--- the old leader restarts from disk and catches up");
    c.start(old, false).await?;
    let index = c.converged(&all, T).await;
    assert!(index > acked);
    assert_eq!(
        c.node(old)
            .read_stale(|s| s.workloads["during"].spec.image.clone()),
        "leader-down"
    );

    tracing::info!("--- kill a follower: the leader keeps a quorum");
    let leader = c.leader(&all, T).await;
    let follower = all
        .iter()
        .copied()
        .find(|i| *i != leader)
        .context("a follower")?;
    c.kill(follower).await;
    write(&c.node(leader), "follower", "down").await?;
    c.start(follower, false).await?;
    c.converged(&all, T).await;
    assert_eq!(
        read(&c.node(follower), "follower").await?.as_deref(),
        Some("down")
    );
    for id in all {
        c.kill(id).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_leader_in_minority_partition_loses_no_acknowledged_write() -> Result<()> {
    init_tracing();
    let dir = TempDir::new()?;
    let mut c = TestCluster::new(dir.path());
    c.request_timeout = Duration::from_secs(2);
    c.start_voters(5).await?;
    let all = [1, 2, 3, 4, 5];

    tracing::info!("--- cut the leader and one follower off from the other three");
    let old = c.leader(&all, T).await;
    let buddy = all.iter().copied().find(|i| *i != old).context("buddy")?;
    let minority = vec![old, buddy];
    let majority: Vec<u64> = all
        .iter()
        .copied()
        .filter(|i| !minority.contains(i))
        .collect();
    c.router.add_filter(Partition {
        a: minority.clone(),
        b: majority.clone(),
    });

    tracing::info!("--- the majority elects a leader and accepts writes");
    let new = c.leader(&majority, T).await;
    write(&c.node(new), "side", "majority").await?;

    tracing::info!("--- the minority cannot commit or serve a linearizable read");
    let stale_write = c.node(old).propose(put("side", "minority")).await;
    assert!(
        stale_write.is_err(),
        "minority write acknowledged: {stale_write:?}"
    );
    let stale_read = read(&c.node(buddy), "side").await;
    assert!(stale_read.is_err(), "minority read served: {stale_read:?}");

    tracing::info!("--- heal: one history, the majority's");
    c.router.heal();
    c.converged(&all, T).await;
    for id in all {
        assert_eq!(
            read(&c.node(id), "side").await?.as_deref(),
            Some("majority")
        );
    }
    write(&c.node(old), "after", "heal").await?;
    c.converged(&all, T).await;
    for id in all {
        c.kill(id).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_leader_in_majority_partition_keeps_serving() -> Result<()> {
    init_tracing();
    let dir = TempDir::new()?;
    let mut c = TestCluster::new(dir.path());
    c.request_timeout = Duration::from_secs(2);
    c.start_voters(5).await?;
    let all = [1, 2, 3, 4, 5];

    tracing::info!("--- cut two followers off; the leader keeps three of five");
    let leader = c.leader(&all, T).await;
    let minority: Vec<u64> = all
        .iter()
        .copied()
        .filter(|i| *i != leader)
        .take(2)
        .collect();
    let majority: Vec<u64> = all
        .iter()
        .copied()
        .filter(|i| !minority.contains(i))
        .collect();
    c.router.add_filter(Partition {
        a: minority.clone(),
        b: majority.clone(),
    });
    for i in 0..20 {
        write(&c.node(leader), "k", &i.to_string()).await?;
    }
    assert_eq!(c.leader(&majority, T).await, leader);
    assert!(read(&c.node(minority[0]), "k").await.is_err());

    tracing::info!("--- heal: the minority catches up");
    c.router.heal();
    c.converged(&all, T).await;
    assert_eq!(
        read(&c.node(minority[1]), "k").await?.as_deref(),
        Some("19")
    );
    for id in all {
        c.kill(id).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_membership_change_during_a_partition() -> Result<()> {
    init_tracing();
    let dir = TempDir::new()?;
    let mut c = TestCluster::new(dir.path());
    c.request_timeout = Duration::from_secs(3);
    c.start_voters(3).await?;
    let all = [1, 2, 3];

    tracing::info!("--- isolate a follower, then replace it while it cannot hear about it");
    let leader = c.leader(&all, T).await;
    let cut = all
        .iter()
        .copied()
        .find(|i| *i != leader)
        .context("follower")?;
    c.router.add_filter(Isolate(cut));
    write(&c.node(leader), "x", "1").await?;
    c.start(4, false).await?;
    c.node(leader)
        .add_member(AddMemberRequest {
            id: 4,
            addr: addr_of(4),
            voter: true,
        })
        .await?;
    c.node(leader).remove_member(cut).await?;
    let members: Vec<u64> = all
        .iter()
        .copied()
        .filter(|i| *i != cut)
        .chain([4])
        .collect();
    assert_eq!(voters(&c.node(leader)), members);
    write(&c.node(4), "x", "2").await?;

    tracing::info!("--- heal: the members agree; the removed controller serves nothing new");
    c.router.heal();
    c.converged(&members, T).await;
    for id in &members {
        assert_eq!(read(&c.node(*id), "x").await?.as_deref(), Some("2"));
    }
    c.kill(cut).await;
    write(&c.node(4), "x", "3").await?;
    c.converged(&members, T).await;
    for id in members {
        c.kill(id).await;
    }
    Ok(())
}

/// Concurrent writes share log entries (group commit) without ever losing an update: 24
/// clients each add to one counter with read-modify-write under `expect_revision`, retrying on
/// conflict, while 24 others write their own workloads. Every increment that was acknowledged
/// is in the final counter, and some writes were committed in a shared entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_concurrent_writes_share_entries_and_lose_no_update() -> Result<()> {
    init_tracing();
    let dir = TempDir::new()?;
    let mut c = TestCluster::new(dir.path());
    c.timings = flotilla_controller::node::RaftTimings::default();
    c.start_voters(3).await?;
    let leader = c.leader(&[1, 2, 3], T).await;
    let n = c.node(leader);
    write(&n, "counter", "0").await?;
    let cas = |value: u64, expect: u64| {
        Command::PutWorkload(PutWorkload {
            spec: WorkloadSpec {
                name: "counter".into(),
                image: value.to_string(),
                ..Default::default()
            },
            expect_revision: Some(expect),
            at_ms: 0,
        })
    };
    let mut tasks = Vec::new();
    for client in 0..24u64 {
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let mut indexes = Vec::new();
            for _ in 0..5 {
                loop {
                    let (value, revision) = n
                        .read_linearizable(|s| {
                            let w = &s.workloads["counter"];
                            (w.spec.image.parse::<u64>().unwrap(), w.revision)
                        })
                        .await?;
                    let r = n.propose(cas(value + 1, revision)).await?;
                    match r.result {
                        CommandResult::Applied { .. } => break,
                        CommandResult::Conflict { .. } => continue,
                        other => anyhow::bail!("increment refused: {other:?}"),
                    }
                }
            }
            for i in 0..5 {
                indexes.push(write(&n, &format!("own-{client}-{i}"), "x").await?);
            }
            anyhow::Ok(indexes)
        }));
    }
    let mut indexes = Vec::new();
    for t in tasks {
        indexes.extend(t.await??);
    }
    assert_eq!(read(&n, "counter").await?.as_deref(), Some("120"));
    let distinct: std::collections::BTreeSet<_> = indexes.iter().collect();
    ensure!(
        distinct.len() < indexes.len(),
        "120 concurrent writes from 24 clients never shared an entry"
    );
    for client in 0..24 {
        assert_eq!(
            read(&n, &format!("own-{client}-4")).await?.as_deref(),
            Some("x")
        );
    }
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
    Ok(())
}
