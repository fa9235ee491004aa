//! Replicated durable write benchmark: the same HTTP/JSON client drives Flotilla's controllers
//! (a write proposed through the leader's internal endpoint, `POST /raft/peer`) or etcd's gRPC
//! gateway (`POST /v3/kv/put`) with N concurrent clients for a fixed time and prints throughput
//! and latency percentiles as one JSON line.
//!
//! `raft_bench --system flotilla|etcd --endpoint HOST:PORT --clients N --seconds S`
//!
//! `raft_bench --serve --id N --data-dir D --members 1=HOST:PORT,2=...,3=...` runs one
//! controller member (Raft over HTTP/2 on its address, redb store, fsync on); member 1
//! initializes the three-member cluster. This keeps the benchmark independent of the public
//! API's TLS and tokens: what is measured is replication and storage.
//!
//! `--system inprocess` starts three controllers in this process (the test harness's router,
//! no HTTP, real redb stores under TMPDIR) and proposes directly: the cost of Raft and storage
//! alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use clap::Parser;
use flotilla_api::cluster::{Command, ControllerAddr, PutWorkload, VersionedCommand, WorkloadSpec};
use flotilla_controller::network::{self, HttpNetwork};
use flotilla_controller::node::{ControllerConfig, ControllerNode, PeerRequest, PeerResponse};

/// One member: serve Raft on its address until killed.
async fn serve(args: &Args) -> Result<()> {
    let mut members = std::collections::BTreeMap::new();
    for m in args.members.split(',') {
        let (id, addr) = m
            .split_once('=')
            .context("--members takes id=host:port,...")?;
        let addr = ControllerAddr {
            raft_addr: addr.into(),
            api_addr: addr.into(),
        };
        members.insert(id.parse::<u64>()?, addr);
    }
    let me = members
        .get(&args.id)
        .context("--id is not in --members")?
        .clone();
    let listener = tokio::net::TcpListener::bind(&me.raft_addr).await?;
    let mut config = ControllerConfig::new(args.id, &args.data_dir, me);
    config.bootstrap = false;
    if let Some(n) = args.max_in_flight {
        config.batching.max_in_flight = n;
    }
    config.eager_replication = !args.no_eager;
    let net = HttpNetwork::new(None)?;
    let node = ControllerNode::start(config, net.clone(), Arc::new(net)).await?;
    if args.id == 1 && !node.raft().is_initialized().await? {
        node.raft().initialize(members).await?;
    }
    network::serve(
        listener,
        network::raft_router(node),
        None,
        std::future::pending(),
    )
    .await?;
    Ok(())
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "")]
    system: String,
    /// Run one controller member instead of clients.
    #[arg(long)]
    serve: bool,
    #[arg(long, default_value_t = 0)]
    id: u64,
    #[arg(long, default_value = "")]
    data_dir: String,
    /// `id=host:port,...` of the three members (with --serve).
    #[arg(long, default_value = "")]
    members: String,
    /// The endpoint writes go to (the leader's client address).
    #[arg(long, default_value = "")]
    endpoint: String,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Group commit: entries in flight before writes queue (with --serve; default: the
    /// controller's).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Replicate only after the leader's own fsync (with --serve; openraft's order).
    #[arg(long)]
    no_eager: bool,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
}

fn request(
    args: &Args,
    client: &reqwest::Client,
    key: &str,
    value: &str,
) -> Result<reqwest::RequestBuilder> {
    Ok(match args.system.as_str() {
        "flotilla" => {
            let command = VersionedCommand::new(Command::PutWorkload(PutWorkload {
                spec: WorkloadSpec {
                    name: key.into(),
                    image: value.into(),
                    ..Default::default()
                },
                expect_revision: None,
                at_ms: 0,
            }));
            client
                .post(format!("http://{}/raft/peer", args.endpoint))
                .json(&PeerRequest::Write {
                    command: Box::new(command),
                })
        }
        "etcd" => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let body = serde_json::json!({ "key": b64.encode(key), "value": b64.encode(value) });
            client
                .post(format!("http://{}/v3/kv/put", args.endpoint))
                .json(&body)
        }
        other => bail!("unknown system {other}"),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    flotilla_controller::network::install_crypto_provider();
    if args.serve {
        return serve(&args).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let value = "v".repeat(args.value_size);
    let mut tasks = Vec::new();
    let dir = tempfile::TempDir::new()?;
    let cluster = if args.system == "inprocess" {
        let mut c = flotilla_controller::testing::TestCluster::new(dir.path());
        c.timings = flotilla_controller::node::RaftTimings::default();
        c.start_voters(3).await?;
        Some(Arc::new(c))
    } else {
        None
    };
    let start = Instant::now();
    for c in 0..args.clients {
        let (args, stop, value) = (args.clone(), stop.clone(), value.clone());
        if let Some(cluster) = cluster.clone() {
            tasks.push(tokio::spawn(async move {
                let leader = cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
                let node = cluster.node(leader);
                let mut lat = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let t = Instant::now();
                    let r = node
                        .propose(Command::PutWorkload(PutWorkload {
                            spec: WorkloadSpec {
                                name: format!("bench/{c}/{n}"),
                                image: value.clone(),
                                ..Default::default()
                            },
                            expect_revision: None,
                            at_ms: 0,
                        }))
                        .await?;
                    ensure!(r.result.is_applied(), "refused: {:?}", r.result);
                    lat.push(t.elapsed().as_micros() as u64);
                }
                anyhow::Ok(lat)
            }));
            continue;
        }
        tasks.push(tokio::spawn(async move {
            // One connection per client, as separate client processes would have.
            let client = reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(10))
                .build()?;
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("bench/{c}/{n}");
                let t = Instant::now();
                let resp = request(&args, &client, &key, &value)?.send().await?;
                ensure!(resp.status().is_success(), "status {}", resp.status());
                let body = resp.bytes().await?;
                lat.push(t.elapsed().as_micros() as u64);
                if args.system == "flotilla" {
                    let answer: PeerResponse = serde_json::from_slice(&body)?;
                    ensure!(
                        matches!(&answer, PeerResponse::Written { response } if response.result.is_applied()),
                        "write not applied: {answer:?}"
                    );
                } else {
                    ensure!(!body.is_empty(), "empty answer");
                }
            }
            anyhow::Ok(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?.context("client failed")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "system": args.system,
            "clients": args.clients,
            "writes": all.len(),
            "seconds": elapsed,
            "writes_per_s": all.len() as f64 / elapsed,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        })
    );
    Ok(())
}
