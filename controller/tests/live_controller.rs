//! Three real `flotilla-controller` processes on 127.0.0.1: kill -9 the leader during a stream
//! of writes; every acknowledged write must be present afterwards, and a new leader must
//! serve within the election timeout.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use flotilla_api::cluster::{
    ClusterStatus, Command as RaftCommand, PutWorkload, VersionedCommand, WorkloadRecord,
    WorkloadSpec, WriteResponse,
};
use flotilla_api::rest::WorkloadList;
use tempfile::TempDir;

const ELECTION_MIN_MS: u64 = 300;
const ELECTION_MAX_MS: u64 = 600;
const HEARTBEAT_MS: u64 = 50;

/// The controller processes; killed by PID when dropped, whatever happened.
struct Procs {
    children: BTreeMap<u64, Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Member {
    id: u64,
    raft: String,
    api: String,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How a controller joins: through this API address, with this token and CA hash.
struct Join<'a> {
    via: &'a str,
    token: &'a str,
    ca_hash: &'a str,
}

fn spawn(m: &Member, dir: &Path, join: Option<Join<'_>>) -> Result<Child> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla-controller"));
    cmd.args(["--id", &m.id.to_string()])
        .arg("--data-dir")
        .arg(dir.join(format!("c{}", m.id)))
        .args(["--raft-addr", &m.raft, "--api-addr", &m.api])
        .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string()])
        .args(["--election-min-ms", &ELECTION_MIN_MS.to_string()])
        .args(["--election-max-ms", &ELECTION_MAX_MS.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(j) = join {
        cmd.args([
            "--join",
            j.via,
            "--token",
            j.token,
            "--ca-cert-hash",
            j.ca_hash,
        ]);
    }
    cmd.spawn().context("cannot spawn flotilla-controller")
}

async fn status(client: &reqwest::Client, api: &str) -> Option<ClusterStatus> {
    let r = client
        .get(format!("https://{api}/v1/cluster/status"))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn put(key: &str) -> VersionedCommand {
    VersionedCommand::new(RaftCommand::PutWorkload(PutWorkload {
        spec: WorkloadSpec {
            name: key.into(),
            image: format!("value-of-{key}"),
            ..Default::default()
        },
        expect_revision: None,
        at_ms: 0,
    }))
}

async fn write(client: &reqwest::Client, api: &str, key: &str) -> Result<WriteResponse> {
    let r = client
        .post(format!("https://{api}/v1/commands"))
        .json(&put(key))
        .timeout(Duration::from_secs(3))
        .send()
        .await?;
    ensure!(r.status().is_success(), "status {}", r.status());
    Ok(r.json().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_controller_kill_9_leader_loses_no_acknowledged_write() -> Result<()> {
    let dir = TempDir::new()?;
    let members: Vec<Member> = (1..=3)
        .map(|id| {
            Ok(Member {
                id,
                raft: format!("127.0.0.1:{}", free_port()?),
                api: format!("127.0.0.1:{}", free_port()?),
            })
        })
        .collect::<Result<_>>()?;
    flotilla_controller::network::install_crypto_provider();
    let mut procs = Procs {
        children: BTreeMap::new(),
    };

    // --- phase: one bootstraps (CA, admin token), two join through it with join tokens
    procs
        .children
        .insert(1, spawn(&members[0], dir.path(), None)?);
    let c1 = dir.path().join("c1");
    wait_for("the admin token file", Duration::from_secs(20), || async {
        c1.join("admin.token").exists()
    })
    .await?;
    let ca_pem = std::fs::read_to_string(c1.join("tls/ca.crt"))?;
    let admin = std::fs::read_to_string(c1.join("admin.token"))?
        .trim()
        .to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {admin}").parse()?);
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(flotilla_controller::tls::ca_client_config(&ca_pem)?)
        .default_headers(headers)
        .build()?;
    let ca_hash = flotilla_controller::tls::Identity::load(&c1)?
        .context("controller 1 identity")?
        .ca_hash()?;
    wait_for("controller 1 to lead", Duration::from_secs(20), || async {
        status(&client, &members[0].api)
            .await
            .is_some_and(|s| s.leader == Some(1))
    })
    .await?;
    for m in &members[1..] {
        let created: serde_json::Value = client
            .post(format!("https://{}/v1/tokens", members[0].api))
            .json(&serde_json::json!({"role": "controller_join", "description": format!("controller {}", m.id)}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = created["token"].as_str().context("join token")?;
        let join = Join {
            via: &members[0].api,
            token,
            ca_hash: &ca_hash,
        };
        procs
            .children
            .insert(m.id, spawn(m, dir.path(), Some(join))?);
    }
    wait_for("three voters", Duration::from_secs(30), || async {
        status(&client, &members[0].api)
            .await
            .is_some_and(|s| s.members.len() == 3)
    })
    .await?;

    // --- phase: a stream of writes from 4 clients to every member; kill -9 the leader mid-way
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let dead: Arc<Mutex<Option<String>>> = Arc::default();
    let first_ack_after_kill: Arc<Mutex<Option<Instant>>> = Arc::default();
    let kill_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let apis: Vec<String> = members.iter().map(|m| m.api.clone()).collect();
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (client, acked, stop, dead, apis) = (
            client.clone(),
            acked.clone(),
            stop.clone(),
            dead.clone(),
            apis.clone(),
        );
        let (first, kill_at) = (first_ack_after_kill.clone(), kill_at.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("w{w}-{n}");
                let target = &apis[((n + w) % 3) as usize];
                if dead.lock().unwrap().as_deref() == Some(target.as_str()) {
                    continue;
                }
                let sent = Instant::now();
                if let Ok(r) = write(&client, target, &key).await {
                    assert!(r.result.is_applied(), "{key}: {:?}", r.result);
                    acked.lock().unwrap().push(key);
                    let killed = *kill_at.lock().unwrap();
                    if killed.is_some_and(|k| sent > k) {
                        first.lock().unwrap().get_or_insert(Instant::now());
                    }
                }
            }
        }));
    }
    wait_for(
        "writes before the kill",
        Duration::from_secs(30),
        || async { acked.lock().unwrap().len() >= 100 },
    )
    .await?;
    let before = status(&client, &members[0].api)
        .await
        .context("status before kill")?;
    let leader = before.leader.context("a leader before the kill")?;
    let leader_api = members[(leader - 1) as usize].api.clone();
    *dead.lock().unwrap() = Some(leader_api.clone());
    let t_kill = Instant::now();
    *kill_at.lock().unwrap() = Some(t_kill);
    let mut child = procs.children.remove(&leader).context("leader process")?;
    child.kill()?; // SIGKILL
    child.wait()?;
    let acked_at_kill = acked.lock().unwrap().len();

    // --- phase: a new leader is elected and serves
    let survivors: Vec<&Member> = members.iter().filter(|m| m.id != leader).collect();
    wait_for("a new leader", Duration::from_secs(20), || async {
        for m in &survivors {
            if let Some(s) = status(&client, &m.api).await {
                if s.state == "leader" && s.term > before.term {
                    return true;
                }
            }
        }
        false
    })
    .await?;
    let elected = t_kill.elapsed();
    wait_for(
        "a write acknowledged after the kill",
        Duration::from_secs(20),
        || async { first_ack_after_kill.lock().unwrap().is_some() },
    )
    .await?;
    let serving = first_ack_after_kill
        .lock()
        .unwrap()
        .context("ack time")?
        .duration_since(t_kill);
    println!(
        "leader {leader} killed after {acked_at_kill} acknowledged writes; new leader elected after {} ms, \
         first write acknowledged after {} ms (election timeout {ELECTION_MIN_MS}-{ELECTION_MAX_MS} ms, heartbeat {HEARTBEAT_MS} ms)",
        elected.as_millis(),
        serving.as_millis()
    );
    // openraft 0.9: a follower that saw a committed leader campaigns only after the leader
    // lease (= election_timeout_max) plus its own election timeout (drawn once per process
    // from [min, max)), checked on a tick of 1.5 heartbeats. A candidate whose log is shorter
    // than a peer's waits 2 x max more before its next try (`smaller_log_timeout`). Add 250 ms
    // for the vote, the new leader's first commit (fsync) and the write's round trip.
    let bound = Duration::from_millis(4 * ELECTION_MAX_MS + 3 * HEARTBEAT_MS + 250);
    ensure!(
        serving < bound,
        "new leader served only after {serving:?} (bound {bound:?})"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // --- phase: restart the killed controller; it rejoins from its disk
    let killed = &members[(leader - 1) as usize];
    procs
        .children
        .insert(leader, spawn(killed, dir.path(), None)?);
    *dead.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }

    // --- phase: every acknowledged write is on every member (linearizable read on each)
    let acked = acked.lock().unwrap().clone();
    for m in &members {
        let deadline = Instant::now() + Duration::from_secs(20);
        let all: BTreeMap<String, WorkloadRecord> = loop {
            let r = client
                .get(format!("https://{}/v1/workloads", m.api))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    let list: WorkloadList = r.json().await?;
                    break list
                        .items
                        .into_iter()
                        .map(|w| (w.spec.name.clone(), w))
                        .collect();
                }
            }
            ensure!(
                Instant::now() < deadline,
                "no linearizable read from {}",
                m.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let missing: Vec<&String> = acked.iter().filter(|k| !all.contains_key(*k)).collect();
        ensure!(
            missing.is_empty(),
            "controller {} lacks {} of {} acknowledged writes, e.g. {:?}",
            m.id,
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
    }
    println!(
        "{} acknowledged writes present on all 3 controllers",
        acked.len()
    );
    Ok(())
}
