//! The leader's reconcile loop end to end in process: three controllers (real Raft, real redb
//! with fsync) with the orchestrator on, the REST API in process, and agents simulated at the
//! boundary (they heartbeat, start what is scheduled, report ready after a delay, stop what is
//! stopping, fail what the test says) through Raft commands, as the agent endpoints commit
//! them. The real agent is tested by its own suite.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use flotilla_api::cluster::*;
use flotilla_controller::orchestrator::OrchestratorConfig;
use flotilla_controller::testing::TestCluster;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

const GIB: u64 = 1 << 30;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Env {
    _dir: TempDir,
    cluster: Arc<TestCluster>,
    routers: BTreeMap<u64, (Router, String)>,
    /// Instances the simulated agents report as failed.
    fail: Arc<Mutex<BTreeSet<String>>>,
    stop_agents: Arc<std::sync::atomic::AtomicBool>,
}

async fn env(nodes: &[&str]) -> Result<Env> {
    let dir = TempDir::new()?;
    let mut cluster = TestCluster::new(dir.path());
    cluster.orchestrator = Some(OrchestratorConfig {
        tick: Duration::from_millis(200),
        ..OrchestratorConfig::default()
    });
    cluster.start_voters(3).await?;
    let cluster = Arc::new(cluster);
    let mut routers = BTreeMap::new();
    for id in 1..=3 {
        let node = cluster.node(id);
        let admin = flotilla_controller::auth::create_token(
            &node,
            TokenRole::Admin,
            None,
            "test".into(),
            now_ms(),
        )
        .await?;
        routers.insert(
            id,
            (
                flotilla_controller::api::router(node),
                format!("Bearer {}", admin.token),
            ),
        );
    }
    let c = cluster.node(1);
    for id in nodes {
        let r = c
            .propose(Command::RegisterNode(RegisterNode {
                node: NodeInfo {
                    id: (*id).into(),
                    address: format!("198.18.0.10:{}", 7000 + id.len()),
                    labels: BTreeMap::new(),
                    capacity: Capacity {
                        cpu_millis: 4000,
                        memory_bytes: 8 * GIB,
                    },
                    features: BTreeMap::new(),
                },
                expect_revision: None,
                at_ms: now_ms(),
            }))
            .await?;
        ensure!(r.result.is_applied(), "{r:?}");
    }
    let fail = Arc::new(Mutex::new(BTreeSet::new()));
    let stop_agents = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for id in nodes {
        tokio::spawn(agent(
            cluster.clone(),
            (*id).to_owned(),
            fail.clone(),
            stop_agents.clone(),
        ));
    }
    let env = Env {
        _dir: dir,
        cluster,
        routers,
        fail,
        stop_agents,
    };
    // Every simulated agent holds a lease before the test starts placing.
    let count = nodes.len();
    env.until("every node ready", Duration::from_secs(20), |e| {
        e.state(|s| s.nodes.values().filter(|n| n.lease_valid(now_ms())).count()) == count
    })
    .await?;
    Ok(env)
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_agents
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A simulated agent: heartbeats, and reports what the protocol makes a real one report.
/// Instances become ready 300 ms after it first sees them.
async fn agent(
    cluster: Arc<TestCluster>,
    me: String,
    fail: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut seq = 0u64;
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    let mut last_heartbeat = Instant::now() - Duration::from_secs(10);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(id) = cluster.router.live_ids().first().copied() else {
            continue;
        };
        let Some(c) = cluster.router.node(id) else {
            continue;
        };
        let mut commands = Vec::new();
        if last_heartbeat.elapsed() > Duration::from_millis(500) {
            seq += 1;
            last_heartbeat = Instant::now();
            commands.push(Command::NodeHeartbeat(NodeHeartbeat {
                node_id: me.clone(),
                lease: NodeLease {
                    leader_term: c.metrics().current_term,
                    seq,
                    ttl_ms: 5_000,
                    renewed_at_ms: now_ms(),
                },
                at_ms: now_ms(),
            }));
        }
        let mine: Vec<InstanceRecord> = c.read_stale(|s| {
            s.instances
                .values()
                .filter(|i| i.owner_node.as_deref() == Some(me.as_str()))
                .cloned()
                .collect()
        });
        let failing = fail.lock().unwrap().clone();
        for i in mine {
            let seen = *first_seen.entry(i.id.clone()).or_insert_with(Instant::now);
            let (state, ready) = match i.phase {
                InstancePhase::Scheduled | InstancePhase::Running if failing.contains(&i.id) => {
                    (ObservedState::Failed, false)
                }
                InstancePhase::Scheduled | InstancePhase::Running => (
                    ObservedState::Running,
                    seen.elapsed() > Duration::from_millis(300),
                ),
                InstancePhase::Stopping => (ObservedState::Stopped, false),
                _ => continue,
            };
            let same = i
                .observed
                .as_ref()
                .is_some_and(|o| o.state == state && o.ready == ready);
            if !same {
                commands.push(Command::ReportInstanceState(ReportInstanceState {
                    instance_id: i.id.clone(),
                    node_id: me.clone(),
                    epoch: i.epoch,
                    state,
                    exit: None,
                    ip: Some("198.18.100.2".into()),
                    ready,
                    restarts: 0,
                    at_ms: now_ms(),
                }));
            }
        }
        for cmd in commands {
            let _ = c.propose(cmd).await;
        }
    }
}

impl Env {
    fn live(&self) -> Vec<u64> {
        self.cluster.router.live_ids()
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let id = *self.live().first().context("no controller")?;
        let (router, bearer) = &self.routers[&id];
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", bearer);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let resp = router.clone().oneshot(req.body(body)?).await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok((status, v))
    }

    fn state<T>(&self, f: impl FnOnce(&flotilla_controller::state::ClusterState) -> T) -> T {
        let id = self.live()[0];
        self.cluster.node(id).read_stale(f)
    }

    /// Live (not stopping) instances of `w`.
    fn live_instances(&self, w: &str) -> Vec<InstanceRecord> {
        self.state(|s| {
            s.instances
                .values()
                .filter(|i| i.workload == w && i.phase != InstancePhase::Stopping)
                .cloned()
                .collect()
        })
    }

    fn ready(&self, w: &str) -> usize {
        self.live_instances(w)
            .iter()
            .filter(|i| {
                i.phase == InstancePhase::Running && i.observed.as_ref().is_some_and(|o| o.ready)
            })
            .count()
    }

    /// Wait until `cond` holds (checked every 50 ms), calling `during` on every check.
    async fn until(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Exactly `n` instances, all ready, all at the workload's generation, no stopping left.
    async fn settled(&self, w: &str, n: usize) -> Result<()> {
        self.until(
            &format!("{w} settled at {n}"),
            Duration::from_secs(30),
            |e| {
                let generation = e.state(|s| s.workloads.get(w).map(|w| w.generation));
                let all = e.state(|s| s.instances.values().filter(|i| i.workload == w).count());
                let live = e.live_instances(w);
                all == n && e.ready(w) == n && live.iter().all(|i| Some(i.generation) == generation)
            },
        )
        .await
    }
}

fn workload(image: &str, replicas: u32) -> Value {
    json!({
        "image": image,
        "replicas": replicas,
        "resources": {"cpuMillis": 100, "memoryBytes": 256u64 << 20},
        "placement": {"strategy": "spread"},
        "updateStrategy": {"maxUnavailable": 1, "maxSurge": 1},
        "readiness": {"tcp": {"port": 80}, "periodMs": 1000}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orchestrator_places_scales_rolls_drains_and_survives_a_leader_change() -> Result<()> {
    let e = env(&["n1", "n2", "n3"]).await?;

    // Invalid specs are refused naming the field, and nothing is written.
    let before = e.state(|s| s.workloads.len());
    let mut bad = workload("busybox:1", 3);
    bad["liveness"] = json!({"tcp": {"port": 80}, "http": {"port": 80}});
    let (status, body) = e.call(Method::PUT, "/v1/workloads/web", Some(bad)).await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY,
        "{status} {body}"
    );
    ensure!(body["field"] == "liveness", "{body}");
    let mut bad = workload("Busybox", 3);
    bad["readiness"]["periodMs"] = json!(100);
    let (status, body) = e.call(Method::PUT, "/v1/workloads/web", Some(bad)).await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY && body["field"] == "image",
        "{body}"
    );
    let (status, body) = e
        .call(Method::PUT, "/v1/workloads/web", Some(json!({"image": "a", "readiness": {"tcp": {"port": 80}, "timeoutMs": 5000, "periodMs": 1000}})))
        .await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY && body["field"] == "readiness.periodMs",
        "{body}"
    );
    ensure!(e.state(|s| s.workloads.len()) == before);

    // 3 replicas spread over the 3 nodes, running and ready.
    let (status, body) = e
        .call(
            Method::PUT,
            "/v1/workloads/web",
            Some(workload("busybox:1", 3)),
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "{status} {body}");
    e.settled("web", 3).await?;
    let nodes: BTreeSet<String> = e
        .live_instances("web")
        .into_iter()
        .filter_map(|i| i.owner_node)
        .collect();
    ensure!(nodes.len() == 3, "not spread: {nodes:?}");
    let (_, nodes_view) = e.call(Method::GET, "/v1/nodes", None).await?;
    ensure!(
        nodes_view["items"]
            .as_array()
            .is_some_and(|a| a.iter().all(|n| n["ready"] == true)),
        "{nodes_view}"
    );

    // Scale to 6 and back to 2.
    let (status, body) = e
        .call(
            Method::POST,
            "/v1/workloads/web/scale",
            Some(json!({"replicas": 6})),
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    e.settled("web", 6).await?;
    let (status, _) = e
        .call(
            Method::POST,
            "/v1/workloads/web/scale",
            Some(json!({"replicas": 2})),
        )
        .await?;
    ensure!(status == StatusCode::OK);
    e.settled("web", 2).await?;
    let slots: BTreeSet<u32> = e.live_instances("web").iter().map(|i| i.replica).collect();
    ensure!(slots == BTreeSet::from([0, 1]), "{slots:?}");
    let (status, body) = e
        .call(
            Method::POST,
            "/v1/workloads/web/scale",
            Some(json!({"replicas": 20000})),
        )
        .await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY && body["field"] == "replicas",
        "{body}"
    );

    // Rolling update of 3 replicas: never fewer than 3 - maxUnavailable ready.
    e.call(
        Method::POST,
        "/v1/workloads/web/scale",
        Some(json!({"replicas": 3})),
    )
    .await?;
    e.settled("web", 3).await?;
    let (status, _) = e
        .call(
            Method::PUT,
            "/v1/workloads/web",
            Some(workload("busybox:2", 3)),
        )
        .await?;
    ensure!(status == StatusCode::OK);
    let mut min_ready = usize::MAX;
    e.until("rollout done", Duration::from_secs(30), |e| {
        min_ready = min_ready.min(e.ready("web"));
        let live = e.live_instances("web");
        live.len() == 3
            && e.ready("web") == 3
            && live
                .iter()
                .all(|i| i.spec.as_ref().is_some_and(|s| s.image == "busybox:2"))
    })
    .await?;
    ensure!(min_ready >= 2, "rollout dropped to {min_ready} ready");
    e.settled("web", 3).await?;

    // Unplaceable: the status says why.
    let mut big = workload("busybox:1", 1);
    big["resources"]["memoryBytes"] = json!(16 * GIB);
    e.call(Method::PUT, "/v1/workloads/big", Some(big)).await?;
    e.until("unplaced reason", Duration::from_secs(10), |e| {
        e.state(|s| {
            s.workloads["big"].status.as_ref().is_some_and(|st| {
                st.unplaced == 1
                    && st
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("no node with 16 GiB of free memory"))
            })
        })
    })
    .await?;
    let (status, _) = e.call(Method::DELETE, "/v1/workloads/big", None).await?;
    ensure!(status == StatusCode::OK);

    // A failed instance is replaced on another node, in its slot.
    let victim = e.live_instances("web")[0].clone();
    e.fail.lock().unwrap().insert(victim.id.clone());
    e.until("failed replaced", Duration::from_secs(20), |e| {
        let live = e.live_instances("web");
        !live.iter().any(|i| i.id == victim.id)
            && live
                .iter()
                .any(|i| i.replica == victim.replica && i.owner_node != victim.owner_node)
    })
    .await?;
    e.settled("web", 3).await?;

    // Drain n1: everything leaves it, the workload stays ready.
    let (status, body) = e.call(Method::POST, "/v1/nodes/n1/drain", None).await?;
    ensure!(
        status == StatusCode::OK && body["draining"] == true,
        "{body}"
    );
    e.until("n1 drained", Duration::from_secs(20), |e| {
        e.state(|s| {
            !s.instances
                .values()
                .any(|i| i.owner_node.as_deref() == Some("n1"))
        })
    })
    .await?;
    e.settled("web", 3).await?;
    let (status, body) = e
        .call(
            Method::PATCH,
            "/v1/nodes/n1",
            Some(json!({"schedulable": true})),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && body["draining"] == false,
        "{body}"
    );

    // Kill the leader: the new one keeps reconciling.
    let leader = e.cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    e.cluster.kill(leader).await;
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let new_leader = e.cluster.leader(&rest, Duration::from_secs(15)).await;
    ensure!(new_leader != leader);
    let (status, body) = e
        .call(
            Method::POST,
            "/v1/workloads/web/scale",
            Some(json!({"replicas": 5})),
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    e.settled("web", 5).await?;

    // Delete: instances stop gracefully, then the workload goes.
    let (status, _) = e.call(Method::DELETE, "/v1/workloads/web", None).await?;
    ensure!(status == StatusCode::OK);
    e.until("web gone", Duration::from_secs(20), |e| {
        e.state(|s| !s.workloads.contains_key("web") && s.instances.is_empty())
    })
    .await?;
    Ok(())
}
