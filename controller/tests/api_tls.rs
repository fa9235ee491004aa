//! Transport security and trust over real TLS sockets on 127.0.0.1: the API refuses clients
//! that do not trust the cluster CA, the Raft listener refuses client certificates of
//! another CA (and none at all), join tokens are single-use, expire and pin the CA, and API
//! tokens are required.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_api::cluster::{ControllerAddr, TokenRole};
use flotilla_api::rest::{JoinRequest, JoinResponse, Problem};
use flotilla_controller::api::{self, ApiState};
use flotilla_controller::auth;
use flotilla_controller::network;
use flotilla_controller::testing::TestCluster;
use flotilla_controller::tls::{self, ClusterCa, Identity};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Tls {
    _dir: TempDir,
    cluster: TestCluster,
    ca: Arc<ClusterCa>,
    identity: Identity,
    api: String,
    raft: String,
    admin: String,
    _stop: watch::Sender<bool>,
}

/// One in-process controller whose API and Raft routers are served over TLS.
async fn tls_controller() -> Result<Tls> {
    network::install_crypto_provider();
    let dir = TempDir::new()?;
    let cluster = TestCluster::new(dir.path());
    cluster.start_voters(1).await?;
    let node = cluster.node(1);
    node.wait_for_leader(Duration::from_secs(10)).await?;
    let ca = Arc::new(ClusterCa::create("test")?);
    let identity = ca.issue(1, &["127.0.0.1".into()])?;
    let admin = auth::create_token(&node, TokenRole::Admin, None, "test".into(), now_ms()).await?;
    let (stop, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api_l = TcpListener::bind("127.0.0.1:0").await?;
    let raft_l = TcpListener::bind("127.0.0.1:0").await?;
    let (api, raft) = (
        api_l.local_addr()?.to_string(),
        raft_l.local_addr()?.to_string(),
    );
    let state = ApiState {
        node: node.clone(),
        ca: Some(ca.clone()),
    };
    tokio::spawn(network::serve(
        api_l,
        api::router_and_spec(state).0,
        Some(identity.api_server_config()?),
        stopped(rx.clone()),
    ));
    tokio::spawn(network::serve(
        raft_l,
        network::raft_router(node),
        Some(identity.raft_server_config()?),
        stopped(rx),
    ));
    Ok(Tls {
        _dir: dir,
        cluster,
        ca,
        identity,
        api,
        raft,
        admin: admin.token,
        _stop: stop,
    })
}

fn client(config: rustls::ClientConfig) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(config)
        .build()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tls_a_client_without_the_cluster_ca_is_refused() -> Result<()> {
    let t = tls_controller().await?;
    let other = ClusterCa::create("other")?;
    let stranger = client(tls::ca_client_config(other.cert_pem())?)?;
    let err = stranger
        .get(format!("https://{}/v1/health", t.api))
        .send()
        .await
        .err()
        .context("a client trusting another ca connected")?;
    println!(
        "client without the ca: {}",
        flotilla_controller::node::error_chain(&err)
    );
    let plain = reqwest::Client::builder().no_proxy().build()?;
    let served_plain = plain
        .get(format!("http://{}/v1/health", t.api))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    ensure!(!served_plain, "plaintext http was served");
    let trusting = client(tls::ca_client_config(t.ca.cert_pem())?)?;
    let r = trusting
        .get(format!("https://{}/v1/health", t.api))
        .send()
        .await?;
    ensure!(r.status() == 200, "health over tls: {}", r.status());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tls_raft_listener_refuses_client_certificates_of_another_ca() -> Result<()> {
    let t = tls_controller().await?;
    let url = format!("https://{}/raft/peer", t.raft);
    let body = serde_json::json!({"type": "read_index"});

    // A certificate of the cluster CA: served.
    let member = client(t.identity.raft_client_config()?)?;
    let r = member.post(&url).json(&body).send().await?;
    ensure!(r.status() == 200, "member: {}", r.status());
    let v: Value = r.json().await?;
    ensure!(v["type"] == "read_index", "{v}");

    // A certificate of another CA, presented while trusting the cluster CA: refused.
    let rogue_ca = ClusterCa::create("rogue")?;
    let rogue = rogue_ca.issue(9, &["127.0.0.1".into()])?;
    let impostor = Identity {
        ca_pem: t.ca.cert_pem().to_owned(),
        cert_pem: rogue.cert_pem,
        key_pem: rogue.key_pem,
    };
    let err = client(impostor.raft_client_config()?)?
        .post(&url)
        .json(&body)
        .send()
        .await
        .err()
        .context("a certificate of another ca was accepted")?;
    println!(
        "rogue client certificate: {}",
        flotilla_controller::node::error_chain(&err)
    );

    // A certificate of the cluster CA that names no controller (a future node): refused.
    let node_cert = t.ca.issue_named("node-n1".into(), &["127.0.0.1".into()])?;
    let err = client(node_cert.raft_client_config()?)?
        .post(&url)
        .json(&body)
        .send()
        .await
        .err()
        .context("a non-controller certificate was accepted on the raft listener")?;
    println!(
        "non-controller certificate: {}",
        flotilla_controller::node::error_chain(&err)
    );

    // No client certificate at all: refused.
    let anonymous = client(tls::ca_client_config(t.ca.cert_pem())?)?;
    ensure!(
        anonymous.post(&url).json(&body).send().await.is_err(),
        "a client without a certificate was accepted"
    );
    Ok(())
}

async fn join(
    c: &reqwest::Client,
    api: &str,
    token: &str,
    id: u64,
) -> Result<(u16, Option<JoinResponse>, Option<Problem>)> {
    let sans = vec!["127.0.0.1".to_owned()];
    let (csr, _key) = tls::generate_csr(id, &sans)?;
    let r = c
        .post(format!("https://{api}/v1/cluster/join"))
        .json(&JoinRequest {
            token: token.to_owned(),
            id,
            addr: ControllerAddr {
                raft_addr: format!("127.0.0.1:{}", 7000 + id),
                api_addr: format!("127.0.0.1:{}", 8000 + id),
            },
            csr,
        })
        .send()
        .await?;
    let status = r.status().as_u16();
    if status == 200 {
        Ok((status, Some(r.json().await?), None))
    } else {
        Ok((status, None, r.json().await.ok()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tls_join_tokens_are_single_use_expire_and_pin_the_ca() -> Result<()> {
    let t = tls_controller().await?;
    let node = t.cluster.node(1);
    let pinned = client(tls::pinned_client_config(&t.ca.hash())?)?;

    // A valid join token: a certificate of the cluster CA for the CSR's key.
    let tok = auth::create_token(
        &node,
        TokenRole::ControllerJoin,
        Some(auth::DEFAULT_JOIN_TTL),
        "c2".into(),
        now_ms(),
    )
    .await?;
    ensure!(
        tok.token.len() == 23 && tok.token.as_bytes()[6] == b'.',
        "shape {}",
        tok.token
    );
    let (status, resp, p) = join(&pinned, &t.api, &tok.token, 2).await?;
    ensure!(status == 200, "join: {status} {p:?}");
    let resp = resp.context("join answer")?;
    ensure!(resp.ca_certificate == t.ca.cert_pem(), "ca differs");
    let signed = ClusterCa::from_pem(&resp.ca_certificate, &resp.ca_key)?;
    ensure!(signed.hash() == t.ca.hash(), "ca key for another ca");

    // Replayed: refused, and nothing else changed.
    let applied = node.applied_index();
    let (status, _, p) = join(&pinned, &t.api, &tok.token, 3).await?;
    ensure!(status == 401, "replay: {status} {p:?}");
    ensure!(
        p.as_ref().and_then(|p| p.field.as_deref()) == Some("token"),
        "{p:?}"
    );
    ensure!(
        node.applied_index() == applied,
        "a refused join changed the state"
    );

    // Expired: refused.
    let short = auth::create_token(
        &node,
        TokenRole::ControllerJoin,
        Some(Duration::from_millis(1)),
        "c4".into(),
        now_ms(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, _, p) = join(&pinned, &t.api, &short.token, 4).await?;
    ensure!(status == 401, "expired: {status} {p:?}");
    ensure!(
        p.and_then(|p| p.detail)
            .unwrap_or_default()
            .contains("expired"),
        "detail names the expiry"
    );

    // Forged secret, an admin token, a malformed token: refused.
    let (id, _) = tok.token.split_once('.').context("token")?;
    for bad in [
        format!("{id}.{}", "0".repeat(16)),
        t.admin.clone(),
        "x".into(),
    ] {
        let (status, _, p) = join(&pinned, &t.api, &bad, 5).await?;
        ensure!(status == 401, "{bad}: {status} {p:?}");
    }

    // Two joins racing with one token: exactly one wins.
    let race = auth::create_token(
        &node,
        TokenRole::ControllerJoin,
        None,
        "race".into(),
        now_ms(),
    )
    .await?;
    let (a, b) = tokio::join!(
        join(&pinned, &t.api, &race.token, 6),
        join(&pinned, &t.api, &race.token, 7)
    );
    let wins = [a?.0, b?.0].iter().filter(|s| **s == 200).count();
    ensure!(wins == 1, "{wins} joins won with one token");

    // Pinning another CA's hash: the TLS handshake fails before the token is sent.
    let fresh = auth::create_token(
        &node,
        TokenRole::ControllerJoin,
        None,
        "pin".into(),
        now_ms(),
    )
    .await?;
    let wrong = client(tls::pinned_client_config(&ClusterCa::create("x")?.hash())?)?;
    ensure!(
        join(&wrong, &t.api, &fresh.token, 8).await.is_err(),
        "joined with a wrong ca pin"
    );
    let (status, _, _) = join(&pinned, &t.api, &fresh.token, 8).await?;
    ensure!(
        status == 200,
        "the token was burnt by the refused handshake: {status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tls_missing_or_forged_api_token_is_a_401_problem() -> Result<()> {
    let t = tls_controller().await?;
    let c = client(tls::ca_client_config(t.ca.cert_pem())?)?;
    let url = format!("https://{}/v1/cluster/status", t.api);
    let (id, _) = t.admin.split_once('.').context("token")?;
    let forged = format!("Bearer {id}.{}", "1".repeat(32));
    for auth in [None, Some(forged.as_str()), Some("Bearer nonsense")] {
        let mut req = c.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await?;
        ensure!(r.status() == 401, "{auth:?}: {}", r.status());
        ensure!(
            r.headers()["content-type"] == "application/problem+json",
            "problem"
        );
        ensure!(
            r.headers().contains_key("www-authenticate"),
            "www-authenticate"
        );
        let p: Problem = r.json().await?;
        ensure!(
            p.field.as_deref() == Some("Authorization") && p.status == 401,
            "{p:?}"
        );
    }
    let r = c.get(&url).bearer_auth(&t.admin).send().await?;
    ensure!(r.status() == 200, "admin: {}", r.status());
    for public in ["/v1/health", "/v1/ready"] {
        let r = c.get(format!("https://{}{public}", t.api)).send().await?;
        ensure!(r.status() == 200, "{public}: {}", r.status());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tls_sequential_request_latency_over_one_connection() -> Result<()> {
    let t = tls_controller().await?;
    let c = client(tls::ca_client_config(t.ca.cert_pem())?)?;
    let mut put = Vec::new();
    let mut get = Vec::new();
    for i in 0..100 {
        let s = std::time::Instant::now();
        let r = c
            .put(format!("https://{}/v1/workloads/w{i}", t.api))
            .bearer_auth(&t.admin)
            .json(&serde_json::json!({"image": "busybox", "replicas": 1}))
            .send()
            .await?;
        ensure!(r.status() == 201, "put: {}", r.status());
        put.push(s.elapsed());
        let s = std::time::Instant::now();
        let r = c
            .get(format!("https://{}/v1/workloads/w{i}", t.api))
            .bearer_auth(&t.admin)
            .send()
            .await?;
        ensure!(r.status() == 200, "get: {}", r.status());
        get.push(s.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: usize| {
        v.sort();
        v[(v.len() * p / 100).min(v.len() - 1)]
    };
    let (p50, p99) = (pct(&mut put, 50), pct(&mut put, 99));
    let (g50, g99) = (pct(&mut get, 50), pct(&mut get, 99));
    println!(
        "one controller, TLS, keep-alive, debug build: PUT (fsync'd Raft write) p50 {:.2} ms p99 {:.2} ms; linearizable GET p50 {:.2} ms p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        g50.as_secs_f64() * 1e3,
        g99.as_secs_f64() * 1e3
    );
    ensure!(
        p99 < Duration::from_secs(2) && g99 < Duration::from_secs(2),
        "latency out of bounds"
    );
    Ok(())
}
