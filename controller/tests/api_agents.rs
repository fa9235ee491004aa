//! The agent-facing endpoints in process (`tower::ServiceExt::oneshot`) on a one-controller
//! cluster with a CA: node join (single-use token, wrong token, duplicate id, bad CSR),
//! heartbeat authorization (node A cannot heartbeat as B), report fencing (owner and epoch)
//! and the `?node=` filter of the instance list, also as a blocking query.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use flotilla_api::cluster::TokenRole;
use flotilla_controller::api::{self, ApiState};
use flotilla_controller::testing::TestCluster;
use flotilla_controller::tls::{self, ClusterCa};
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

struct Api {
    _dir: TempDir,
    _cluster: TestCluster,
    router: Router,
    admin: String,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn api() -> Result<Api> {
    let dir = TempDir::new()?;
    let cluster = TestCluster::new(dir.path());
    cluster.start_voters(1).await?;
    let node = cluster.node(1);
    node.wait_for_leader(Duration::from_secs(10)).await?;
    let admin = flotilla_controller::auth::create_token(
        &node,
        TokenRole::Admin,
        None,
        "test".into(),
        now_ms(),
    )
    .await?;
    let ca = Arc::new(ClusterCa::create("test")?);
    let router = api::router_and_spec(ApiState { node, ca: Some(ca) }).0;
    Ok(Api {
        _dir: dir,
        _cluster: cluster,
        router,
        admin: admin.token,
    })
}

impl Api {
    /// Call with `token` as the bearer (`None`: no Authorization header).
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self.router.clone().oneshot(req.body(body)?).await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{uri}: {}", String::from_utf8_lossy(&bytes)))?
        };
        Ok((status, v))
    }

    async fn join_token(&self) -> Result<String> {
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/tokens",
                Some(&self.admin),
                Some(json!({"role": "node_join"})),
            )
            .await?;
        ensure!(s == StatusCode::CREATED, "token: {s} {v}");
        Ok(v["token"].as_str().context("token")?.to_owned())
    }

    async fn join(&self, token: &str, id: &str, csr: &str) -> Result<(StatusCode, Value)> {
        self.call(
            Method::POST,
            "/v1/nodes/join",
            None,
            Some(json!({
                "token": token,
                "nodeId": id,
                "address": "198.18.0.10:7443",
                "labels": {"zone": "a"},
                "capacity": {"cpuMillis": 2000, "memoryBytes": 1u64 << 30},
                "features": {"cgroup": "v1"},
                "csr": csr,
            })),
        )
        .await
    }

    /// Join node `id` with a fresh token; its API token.
    async fn joined(&self, id: &str) -> Result<String> {
        let token = self.join_token().await?;
        let (csr, _) = tls::generate_csr(0, &[])?;
        let (s, v) = self.join(&token, id, &csr).await?;
        ensure!(s == StatusCode::CREATED, "join {id}: {s} {v}");
        Ok(v["apiToken"].as_str().context("apiToken")?.to_owned())
    }

    async fn place(&self, instance: &str, node: &str) -> Result<()> {
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/commands",
                Some(&self.admin),
                Some(json!({"v": 1, "command": {"type": "put_instance_placement",
                    "instanceId": instance, "workload": "web", "ownerNode": node, "atMs": now_ms()}})),
            )
            .await?;
        ensure!(
            s == StatusCode::OK && v["result"]["outcome"] == "applied",
            "place: {s} {v}"
        );
        Ok(())
    }
}

fn field(v: &Value) -> &str {
    v["field"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_agents_node_join_is_single_use_and_refuses_bad_tokens_ids_and_csrs() -> Result<()> {
    let api = api().await?;
    let token = api.join_token().await?;
    let (csr, _key) = tls::generate_csr(0, &["10.9.9.9".into()])?;

    // Bad inputs first: each names its field and consumes nothing.
    let (s, v) = api.join(&token, "Bad_Id", &csr).await?;
    ensure!(s == 422 && field(&v) == "nodeId", "bad id: {s} {v}");
    let (s, v) = api.join(&token, "n1", "not a csr").await?;
    ensure!(s == 422 && field(&v) == "csr", "bad csr: {s} {v}");
    let (s, v) = api
        .join(&format!("{}x", &token[..token.len() - 1]), "n1", &csr)
        .await?;
    ensure!(s == 401 && field(&v) == "token", "forged token: {s} {v}");
    let (s, v) = api.join(&api.admin, "n1", &csr).await?;
    ensure!(s == 401 && field(&v) == "token", "admin token: {s} {v}");

    let (s, v) = api.join(&token, "n1", &csr).await?;
    ensure!(s == StatusCode::CREATED, "join: {s} {v}");
    ensure!(
        v["nodeId"] == "n1" && v["heartbeatIntervalMs"] == 1000,
        "{v}"
    );
    ensure!(v["leaseTtlMs"] == 5000, "{v}");
    ensure!(
        v["controllers"].as_array().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    let pem = v["certificate"].as_str().context("certificate")?;
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|d: rustls::pki_types::CertificateDer<'static>| d)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    ensure!(
        cert.subject().to_string().contains("CN=node-n1"),
        "{}",
        cert.subject()
    );
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name()?.context("san")?.value
    );
    ensure!(
        sans.contains("[198, 18, 0, 10]") && !sans.contains("[10, 9, 9, 9]"),
        "the certificate names what the node asked for: {sans}"
    );

    // The token is used up.
    let (s, v) = api.join(&token, "n2", &csr).await?;
    ensure!(s == 401 && field(&v) == "token", "reused token: {s} {v}");
    // A registered id is refused, naming it.
    let fresh = api.join_token().await?;
    let (s, v) = api.join(&fresh, "n1", &csr).await?;
    ensure!(s == 409 && field(&v) == "nodeId", "duplicate id: {s} {v}");
    // The refused join did not consume the fresh token.
    let (s, v) = api.join(&fresh, "n2", &csr).await?;
    ensure!(s == StatusCode::CREATED, "join n2: {s} {v}");

    // The node's token reads; it may not change the cluster.
    let node_token = v["apiToken"].as_str().context("apiToken")?;
    let (s, v) = api
        .call(Method::GET, "/v1/nodes", Some(node_token), None)
        .await?;
    ensure!(s == 200, "node reads: {s} {v}");
    let ids: Vec<&str> = v["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    ensure!(ids == ["n1", "n2"], "{ids:?}");
    let (s, v) = api
        .call(
            Method::PUT,
            "/v1/workloads/x",
            Some(node_token),
            Some(json!({"image": "busybox"})),
        )
        .await?;
    ensure!(s == 403, "node writes a workload: {s} {v}");
    let (s, _) = api
        .call(Method::DELETE, "/v1/nodes/n1", Some(node_token), None)
        .await?;
    ensure!(s == 403, "node deletes a node: {s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_agents_heartbeat_renews_only_the_callers_own_lease() -> Result<()> {
    let api = api().await?;
    let a = api.joined("node-a").await?;
    let b = api.joined("node-b").await?;
    let beat = |seq: u64| json!({"seq": seq, "bootId": "boot1", "running": []});

    let (s, v) = api
        .call(
            Method::POST,
            "/v1/nodes/node-a/heartbeat",
            Some(&a),
            Some(beat(1)),
        )
        .await?;
    ensure!(s == 200, "heartbeat: {s} {v}");
    ensure!(v["leaseTtlMs"] == 5000, "{v}");
    let (_, n) = api
        .call(Method::GET, "/v1/nodes/node-a", Some(&a), None)
        .await?;
    let lease1 = n["lease"].clone();
    ensure!(
        lease1["ttlMs"] == 5000 && lease1["leaderTerm"].as_u64() >= Some(1),
        "{n}"
    );

    // Node B's token cannot renew A's lease; nor can an admin token pose as a node.
    let (s, v) = api
        .call(
            Method::POST,
            "/v1/nodes/node-a/heartbeat",
            Some(&b),
            Some(beat(2)),
        )
        .await?;
    ensure!(s == 403, "b as a: {s} {v}");
    let (s, v) = api
        .call(
            Method::POST,
            "/v1/nodes/node-a/heartbeat",
            Some(&api.admin),
            Some(beat(3)),
        )
        .await?;
    ensure!(s == 403, "admin as a: {s} {v}");
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/nodes/node-a/heartbeat",
            None,
            Some(beat(3)),
        )
        .await?;
    ensure!(s == 401, "no token: {s}");

    // A replay is refused; a newer one renews, and a changed capacity is recorded.
    let (s, v) = api
        .call(
            Method::POST,
            "/v1/nodes/node-a/heartbeat",
            Some(&a),
            Some(beat(1)),
        )
        .await?;
    ensure!(s == 409 && field(&v) == "seq", "replay: {s} {v}");
    let (s, v) = api
        .call(
            Method::POST,
            "/v1/nodes/node-a/heartbeat",
            Some(&a),
            Some(json!({"seq": 2, "bootId": "boot1",
                "capacity": {"cpuMillis": 4000, "memoryBytes": 2u64 << 30}})),
        )
        .await?;
    ensure!(s == 200, "second heartbeat: {s} {v}");
    let (_, n) = api
        .call(Method::GET, "/v1/nodes/node-a", Some(&a), None)
        .await?;
    ensure!(n["capacity"]["cpuMillis"] == 4000, "{n}");
    ensure!(
        n["lease"]["seq"].as_u64() > lease1["seq"].as_u64()
            || n["lease"]["leaderTerm"] != lease1["leaderTerm"],
        "lease not renewed: {lease1} -> {}",
        n["lease"]
    );
    // A restarted agent (new boot id) may start its seq again.
    let (s, v) = api
        .call(
            Method::POST,
            "/v1/nodes/node-a/heartbeat",
            Some(&a),
            Some(json!({"seq": 1, "bootId": "boot2"})),
        )
        .await?;
    ensure!(s == 200, "new boot: {s} {v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_agents_reports_are_fenced_by_owner_and_epoch() -> Result<()> {
    let api = api().await?;
    let a = api.joined("node-a").await?;
    let b = api.joined("node-b").await?;
    api.place("web-0", "node-a").await?;
    let report = |epoch: u64| json!({"epoch": epoch, "state": "running", "ip": "198.19.1.2", "ready": true, "restarts": 0});

    let (s, v) = api
        .call(
            Method::PUT,
            "/v1/instances/web-0/status",
            Some(&a),
            Some(report(1)),
        )
        .await?;
    ensure!(s == 200, "owner report: {s} {v}");
    ensure!(
        v["phase"] == "running" && v["observed"]["ip"] == "198.19.1.2",
        "{v}"
    );
    let (s, v) = api
        .call(
            Method::PUT,
            "/v1/instances/web-0/status",
            Some(&b),
            Some(report(1)),
        )
        .await?;
    ensure!(
        s == 409 && v["code"] == "stale-epoch",
        "not the owner: {s} {v}"
    );
    let (s, v) = api
        .call(
            Method::PUT,
            "/v1/instances/web-0/status",
            Some(&a),
            Some(report(2)),
        )
        .await?;
    ensure!(
        s == 409 && v["code"] == "stale-epoch",
        "wrong epoch: {s} {v}"
    );
    // Moving the instance bumps the epoch: the old owner is fenced.
    api.place("web-0", "node-b").await?;
    let (s, v) = api
        .call(
            Method::PUT,
            "/v1/instances/web-0/status",
            Some(&a),
            Some(report(1)),
        )
        .await?;
    ensure!(s == 409 && v["code"] == "stale-epoch", "old owner: {s} {v}");
    let (s, v) = api
        .call(
            Method::PUT,
            "/v1/instances/web-0/status",
            Some(&b),
            Some(report(2)),
        )
        .await?;
    ensure!(s == 200, "new owner: {s} {v}");
    let (s, v) = api
        .call(
            Method::PUT,
            "/v1/instances/web-0/status",
            Some(&b),
            Some(json!({"epoch": 2, "state": "running", "ip": "nope"})),
        )
        .await?;
    ensure!(s == 422 && field(&v) == "ip", "bad ip: {s} {v}");
    let (s, v) = api
        .call(
            Method::PUT,
            "/v1/instances/web-0/status",
            Some(&api.admin),
            Some(report(2)),
        )
        .await?;
    ensure!(s == 403, "admin report: {s} {v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_agents_instance_list_filters_by_node_and_blocks_until_the_nodes_set_changes(
) -> Result<()> {
    let api = api().await?;
    let a = api.joined("node-a").await?;
    api.place("web-0", "node-a").await?;
    api.place("web-1", "node-b").await?;
    let (s, v) = api
        .call(Method::GET, "/v1/instances?node=node-a", Some(&a), None)
        .await?;
    ensure!(s == 200, "{s} {v}");
    let ids: Vec<&str> = v["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    ensure!(ids == ["web-0"], "{ids:?}");
    let index = v["index"].as_u64().context("index")?;
    let (s, v) = api
        .call(Method::GET, "/v1/instances?node=Bad_Node", Some(&a), None)
        .await?;
    ensure!(s == 400 && field(&v) == "node", "{s} {v}");
    let (s, v) = api
        .call(Method::GET, "/v1/instances", Some(&a), None)
        .await?;
    ensure!(
        s == 200 && v["items"].as_array().map(Vec::len) == Some(2),
        "{v}"
    );

    // A change to another node's instance does not answer the blocking query; one to ours does.
    let started = Instant::now();
    let uri = format!("/v1/instances?node=node-a&index={index}&wait=5s");
    let waiter = {
        let router = api.router.clone();
        let a = a.clone();
        tokio::spawn(async move {
            let req = Request::builder()
                .uri(uri)
                .header("authorization", format!("Bearer {a}"))
                .body(Body::empty())?;
            let resp = router.oneshot(req).await?;
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
            anyhow::Ok(serde_json::from_slice::<Value>(&bytes)?)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.place("web-2", "node-b").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !waiter.is_finished(),
        "another node's change woke the query"
    );
    api.place("web-3", "node-a").await?;
    let v = tokio::time::timeout(Duration::from_secs(4), waiter).await???;
    ensure!(
        started.elapsed() < Duration::from_secs(4),
        "answered only at the timeout"
    );
    let ids: Vec<&str> = v["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    ensure!(ids == ["web-0", "web-3"], "{ids:?}");
    ensure!(v["index"].as_u64() > Some(index), "{v}");
    Ok(())
}
