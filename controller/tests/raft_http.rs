//! Three controllers replicating over real sockets on 127.0.0.1 with the HTTP transport
//! (plaintext; the TLS variant runs in `live_controller`): AppendEntries travel on the append
//! stream, followers accept the leader's early appends, a restarted follower is reached again
//! over a fresh stream and catches up, and bad input on the stream endpoint is refused without
//! harming the controller behind it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use flotilla_api::cluster::{Command, ControllerAddr, PutWorkload, WorkloadSpec};
use flotilla_controller::append_stream;
use flotilla_controller::network::{self, HttpNetwork};
use flotilla_controller::node::{ControllerConfig, ControllerNode};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Member {
    node: Arc<ControllerNode>,
    stop: watch::Sender<bool>,
}

async fn start(
    id: u64,
    dir: &std::path::Path,
    members: &BTreeMap<u64, ControllerAddr>,
    listener: TcpListener,
) -> Result<Member> {
    let mut config = ControllerConfig::new(id, dir.join(id.to_string()), members[&id].clone());
    config.bootstrap = false;
    let net = HttpNetwork::new(None)?;
    let node = ControllerNode::start(config, net.clone(), Arc::new(net)).await?;
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(network::serve(
        listener,
        network::raft_router(node.clone()),
        None,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    Ok(Member { node, stop })
}

fn put(name: &str) -> Command {
    Command::PutWorkload(PutWorkload {
        spec: WorkloadSpec {
            name: name.into(),
            image: "busybox".into(),
            ..Default::default()
        },
        expect_revision: None,
        at_ms: 0,
    })
}

async fn applied(node: &ControllerNode, index: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while node.applied_index() < index {
        if Instant::now() > deadline {
            bail!(
                "controller {} applied {} of {index}",
                node.id(),
                node.applied_index()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn leader_of(members: &BTreeMap<u64, Member>) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for m in members.values() {
            let metrics = m.node.metrics();
            if metrics.current_leader == Some(m.node.id())
                && metrics.state == openraft::ServerState::Leader
            {
                return Ok(m.node.id());
            }
        }
        ensure!(Instant::now() < deadline, "no leader after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_over_http_append_stream_replicates_reconnects_and_refuses_bad_frames() -> Result<()> {
    network::install_crypto_provider();
    let dir = TempDir::new()?;
    let mut listeners = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let a = l.local_addr()?.to_string();
        addrs.insert(
            id,
            ControllerAddr {
                raft_addr: a.clone(),
                api_addr: a,
            },
        );
        listeners.insert(id, l);
    }
    let mut members = BTreeMap::new();
    for (id, l) in listeners {
        members.insert(id, start(id, dir.path(), &addrs, l).await?);
    }
    members[&1].node.raft().initialize(addrs.clone()).await?;
    let leader = leader_of(&members).await?;
    let lnode = members[&leader].node.clone();

    // Writes commit; both followers apply them.
    let mut last = 0;
    for i in 0..30 {
        let r = lnode.propose(put(&format!("w{i}"))).await?;
        ensure!(r.result.is_applied(), "write {i}: {:?}", r.result);
        last = r.index;
    }
    for m in members.values() {
        applied(&m.node, last, Duration::from_secs(10)).await?;
    }
    // One client writing in turn: the leader sends each entry early to one follower.
    ensure!(
        lnode.eager_appends_accepted() > 0,
        "no early append was accepted"
    );

    // Restart a follower on the same address and data: the leader's stream to the old one is
    // closed when it stops, and a new stream reaches the new one.
    let f = *members
        .keys()
        .find(|id| **id != leader)
        .context("follower")?;
    let old = members.remove(&f).context("follower")?;
    let _ = old.stop.send(true);
    old.node.shutdown().await;
    drop(old);
    for i in 30..50 {
        let r = lnode.propose(put(&format!("w{i}"))).await?;
        ensure!(r.result.is_applied(), "write {i} with a follower down");
        last = r.index;
    }
    let listener = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpListener::bind(&addrs[&f].raft_addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "address still in use");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e).context("rebind the follower's address"),
            }
        }
    };
    members.insert(f, start(f, dir.path(), &addrs, listener).await?);
    applied(&members[&f].node, last, Duration::from_secs(10)).await?;

    // Bad input on the stream endpoint of a follower.
    let target = &addrs[&f].raft_addr;
    // No upgrade asked: a 400 that names the protocol.
    let mut s = TcpStream::connect(target).await?;
    s.write_all(
        format!(
            "GET {} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            append_stream::PATH
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await??;
    ensure!(
        answer.starts_with("HTTP/1.1 400") && answer.contains(append_stream::PROTOCOL),
        "{answer}"
    );
    // A frame that is not an AppendEntries request, and a length over the limit: the stream is
    // closed, with no answer.
    for bad in [
        {
            let mut f = 5u32.to_be_bytes().to_vec();
            f.extend_from_slice(b"nope!");
            f
        },
        (append_stream::MAX_FRAME as u32 + 1).to_be_bytes().to_vec(),
    ] {
        let mut s = append_stream::connect(target, None).await?;
        s.write_all(&bad).await?;
        s.flush().await?;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await??;
        ensure!(n == 0, "an answer to a bad frame: {rest:?}");
    }
    // The follower still replicates.
    let r = lnode.propose(put("after-bad-input")).await?;
    ensure!(r.result.is_applied());
    for m in members.values() {
        applied(&m.node, r.index, Duration::from_secs(10)).await?;
    }

    for m in members.values() {
        let _ = m.stop.send(true);
        m.node.shutdown().await;
    }
    Ok(())
}
