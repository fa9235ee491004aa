//! `flotilla-controller`: one controller replica. Wiring only: arguments, tracing, listeners,
//! joining, signals; the work is in the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use flotilla_api::cluster::{AddMemberRequest, ControllerAddr};
use flotilla_controller::network::{self, HttpNetwork};
use flotilla_controller::node::{ControllerConfig, ControllerNode, RaftTimings};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Flotilla controller: one replica of the Raft-replicated cluster state"
)]
struct Args {
    /// This controller's Raft id (unique in the cluster, never reused).
    #[arg(long)]
    id: u64,
    /// Directory for the Raft log, vote and state machine.
    #[arg(long)]
    data_dir: PathBuf,
    /// Internal listener for controller-to-controller Raft traffic (host:port).
    #[arg(long)]
    raft_addr: String,
    /// Public API listener (host:port).
    #[arg(long)]
    api_addr: String,
    /// API address of a running controller to join through (when this one's store is empty).
    #[arg(long)]
    join: Option<String>,
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = 500)]
    election_min_ms: u64,
    #[arg(long, default_value_t = 1000)]
    election_max_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn join(via: &str, request: &AddMemberRequest) -> Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("cannot build the join client")?;
    let url = format!("http://{via}/v1/cluster/members");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = client
            .post(&url)
            .json(request)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(%status, %body, via, "join refused, retrying");
            }
            Err(e) => tracing::warn!(error = %e, via, "join request failed, retrying"),
        }
        if Instant::now() > deadline {
            bail!("could not join the cluster through {via} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);
    network::install_crypto_provider();

    let raft_listener = TcpListener::bind(&args.raft_addr)
        .await
        .with_context(|| format!("cannot listen on raft address {}", args.raft_addr))?;
    let api_listener = TcpListener::bind(&args.api_addr)
        .await
        .with_context(|| format!("cannot listen on api address {}", args.api_addr))?;
    let addr = ControllerAddr {
        raft_addr: args.raft_addr.clone(),
        api_addr: args.api_addr.clone(),
    };
    let mut config = ControllerConfig::new(args.id, &args.data_dir, addr.clone());
    config.bootstrap = args.join.is_none();
    config.timings = RaftTimings {
        heartbeat_ms: args.heartbeat_ms,
        election_min_ms: args.election_min_ms,
        election_max_ms: args.election_max_ms,
        snapshot_every: args.snapshot_every,
        ..RaftTimings::default()
    };
    let net = HttpNetwork::new(None)?;
    let node = ControllerNode::start(config, net.clone(), Arc::new(net))
        .await
        .context("cannot start the controller")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let raft_server = tokio::spawn(network::serve(
        raft_listener,
        network::raft_router(node.clone()),
        None,
        stopped(stop_rx.clone()),
    ));
    let api_server = tokio::spawn(network::serve(
        api_listener,
        flotilla_controller::api::router(node.clone()),
        None,
        stopped(stop_rx),
    ));
    tracing::info!(node_id = args.id, raft = %args.raft_addr, api = %args.api_addr, "serving");

    if let Some(via) = &args.join {
        if !node.raft().is_initialized().await? {
            let request = AddMemberRequest {
                id: args.id,
                addr,
                voter: true,
            };
            join(via, &request).await?;
            tracing::info!(node_id = args.id, via, "joined the cluster");
        }
    }

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    node.shutdown().await;
    for server in [raft_server, api_server] {
        server.await?.context("server failed")?;
    }
    Ok(())
}
