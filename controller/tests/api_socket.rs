//! The REST API over real sockets on 127.0.0.1, in front of three in-process controllers:
//! writes through a follower reach the leader, reads on another follower see them, and the
//! body limit holds for declared and chunked bodies.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_controller::testing::TestCluster;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

async fn serve(
    node: std::sync::Arc<flotilla_controller::node::ControllerNode>,
    stop: watch::Receiver<bool>,
) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let router = flotilla_controller::api::router(node);
    tokio::spawn(flotilla_controller::network::serve(
        listener,
        router,
        None,
        async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        },
    ));
    Ok(addr)
}

/// Send raw bytes and return the status line's code.
async fn raw(addr: &str, request: &[u8]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    // The server may answer (and close) before the whole body is written.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    Ok((code, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_socket_any_controller_serves_reads_and_writes_and_limits_bodies() -> Result<()> {
    let dir = TempDir::new()?;
    let cluster = TestCluster::new(dir.path());
    cluster.start_voters(3).await?;
    let leader = cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let (stop_tx, stop) = watch::channel(false);
    let a = serve(cluster.node(followers[0]), stop.clone()).await?;
    let b = serve(cluster.node(followers[1]), stop.clone()).await?;
    flotilla_controller::network::install_crypto_provider();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let admin = flotilla_controller::auth::create_token(
        &cluster.node(leader),
        flotilla_api::cluster::TokenRole::Admin,
        None,
        "test".into(),
        now,
    )
    .await?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {}", admin.token).parse()?);
    let client = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()?;

    // A write through one follower, a linearizable read on the other.
    let r = client
        .put(format!("http://{a}/v1/workloads/web"))
        .json(&json!({"image": "busybox", "replicas": 3}))
        .send()
        .await?;
    ensure!(r.status() == 201, "put via follower: {}", r.status());
    let written: Value = r.json().await?;
    let rev = written["revision"].as_u64().context("revision")?;
    let r = client
        .get(format!("http://{b}/v1/workloads/web"))
        .send()
        .await?;
    ensure!(r.status() == 200, "get via other follower: {}", r.status());
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let read: Value = r.json().await?;
    ensure!(
        read["revision"] == rev && etag == format!("\"{rev}\""),
        "{read} {etag}"
    );
    let r = client
        .get(format!("http://{b}/v1/workloads?stale=true"))
        .send()
        .await?;
    ensure!(r.status() == 200, "stale list");

    // Bad input over the wire: problem documents, no state change.
    let applied = cluster.node(leader).applied_index();
    let r = client
        .put(format!("http://{a}/v1/workloads/web"))
        .header("content-type", "application/json")
        .body(r#"{"image": 5}"#)
        .send()
        .await?;
    ensure!(r.status() == 422, "{}", r.status());
    ensure!(
        r.headers()["content-type"] == "application/problem+json",
        "content type"
    );
    let p: Value = r.json().await?;
    ensure!(p["field"] == "image", "{p}");

    // Declared too large: 413 before the body is read.
    let head = format!(
        "PUT /v1/workloads/web HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        admin.token,
        4 << 20
    );
    let (code, text) = raw(&a, head.as_bytes()).await?;
    ensure!(
        code == 413 && text.contains("application/problem+json"),
        "declared: {text}"
    );
    // Chunked and too large: 413 (or the connection is closed) once the limit is crossed.
    let mut req = format!("PUT /v1/workloads/web HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n", admin.token).into_bytes();
    let chunk = vec![b' '; 64 << 10];
    for _ in 0..40 {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    match raw(&a, &req).await {
        Ok((code, text)) => ensure!(code == 413, "chunked: {text}"),
        Err(e) => println!("chunked oversize: connection closed ({e})"),
    }
    // Oversized and too many headers: 431 (or the connection is closed).
    let huge = format!(
        "GET /v1/workloads HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(512 << 10)
    );
    match raw(&a, huge.as_bytes()).await {
        Ok((code, text)) => ensure!(code == 431, "huge header: {}", &text[..text.len().min(200)]),
        Err(e) => println!("huge header: connection closed ({e})"),
    }
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /v1/workloads HTTP/1.1\r\nhost: x\r\n{many}connection: close\r\n\r\n");
    match raw(&a, many.as_bytes()).await {
        Ok((code, text)) => ensure!(
            code == 431,
            "many headers: {}",
            &text[..text.len().min(200)]
        ),
        Err(e) => println!("many headers: connection closed ({e})"),
    }
    ensure!(
        cluster.node(leader).applied_index() == applied,
        "bad input changed the state"
    );
    let _ = stop_tx.send(true);
    Ok(())
}
