//! `flotilla-controller`: one controller replica. Wiring only: arguments, tracing, trust
//! material, listeners, joining, signals; the work is in the library.
//!
//! * First controller (no `--join`): creates the cluster CA and its own certificate in
//!   `<data dir>/tls/`, bootstraps a one-member cluster, creates an admin token, writes it to
//!   `<data dir>/admin.token` (0600) and prints it with the CA hash.
//! * New controller (`--join <api addr> --token <join token> --ca-cert-hash sha256:<hex>`):
//!   sends a CSR over TLS pinned to the CA hash, receives its certificate, starts its
//!   listeners, then asks a member over the mTLS Raft listener to add it as a voter.
//! * Restart: everything comes from the data directory; `--join` is then ignored.
//!
//! Both listeners always speak TLS; the Raft listener requires client certificates of the
//! cluster CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use flotilla_api::cluster::{AddMemberRequest, ControllerAddr, TokenRole};
use flotilla_api::rest::{JoinRequest, JoinResponse, MemberStatus, Problem};
use flotilla_controller::api::{self, ApiState};
use flotilla_controller::auth;
use flotilla_controller::network::{self, HttpNetwork};
use flotilla_controller::node::{
    ControllerConfig, ControllerNode, PeerRequest, PeerResponse, PeerTransport, RaftTimings,
};
use flotilla_controller::tls::{self, ClusterCa, Identity};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The admin token file in the data directory.
const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The join answer (without the CA key), kept until this controller is a member, so that a
/// restart between receiving the certificate and being added resumes the join.
const PENDING_JOIN_FILE: &str = "tls/join.json";

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Flotilla controller: one replica of the Raft-replicated cluster state"
)]
struct Args {
    /// This controller's Raft id (unique in the cluster, never reused).
    #[arg(long)]
    id: u64,
    /// Directory for the Raft log, vote, state machine and TLS material.
    #[arg(long)]
    data_dir: PathBuf,
    /// Internal mTLS listener for controller-to-controller Raft traffic (host:port).
    #[arg(long)]
    raft_addr: String,
    /// Public API listener, TLS (host:port).
    #[arg(long)]
    api_addr: String,
    /// API address of a running controller to join through (when this one's store is empty).
    #[arg(long, requires_all = ["token", "ca_cert_hash"])]
    join: Option<String>,
    /// Join token (`<id>.<secret>`, role controller_join), with --join.
    #[arg(long, env = "FLOTILLA_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// `sha256:<hex>` of the cluster CA certificate, with --join.
    #[arg(long)]
    ca_cert_hash: Option<String>,
    /// Extra subject alternative names (DNS names or IPs) for this controller's certificate.
    #[arg(long)]
    san: Vec<String>,
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
    /// Do not run the leader's reconcile loop (placements then come only from the raw command
    /// endpoint: for testing agents against hand-made assignments).
    #[arg(long)]
    no_orchestrator: bool,
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

/// Join phase 1: trade the join token and a CSR for a certificate.
async fn request_certificate(
    via: &str,
    token: &str,
    ca_hash: &str,
    id: u64,
    addr: &ControllerAddr,
    sans: &[String],
) -> Result<(Identity, ClusterCa, JoinResponse)> {
    let (csr, key_pem) = tls::generate_csr(id, sans).context("cannot create a csr")?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls::pinned_client_config(ca_hash)?)
        .build()
        .context("cannot build the join client")?;
    let url = format!("https://{via}/v1/cluster/join");
    let body = JoinRequest {
        token: token.to_owned(),
        id,
        addr: addr.clone(),
        csr,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let resp: JoinResponse = loop {
        let res = client
            .post(&url)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                break r.json().await.context("malformed join answer")?
            }
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let detail = r
                    .json::<Problem>()
                    .await
                    .ok()
                    .and_then(|p| p.detail)
                    .unwrap_or_default();
                bail!("{via} refused the join ({status}): {detail}");
            }
            Ok(r) => tracing::warn!(status = %r.status(), via, "join failed, retrying"),
            Err(e) => {
                tracing::warn!(error = %network_error(&e), via, "join request failed, retrying")
            }
        }
        ensure!(
            Instant::now() < deadline,
            "could not join through {via} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ca = ClusterCa::from_pem(&resp.ca_certificate, &resp.ca_key)
        .context("the join answer carries a malformed ca")?;
    ensure!(
        ca.hash() == ca_hash.to_ascii_lowercase(),
        "the join answer's ca does not match --ca-cert-hash"
    );
    let identity = Identity {
        ca_pem: resp.ca_certificate.clone(),
        cert_pem: resp.certificate.clone(),
        key_pem: key_pem.clone(),
    };
    Ok((identity, ca, resp))
}

fn network_error(e: &reqwest::Error) -> String {
    flotilla_controller::node::error_chain(e)
}

/// Join phase 2: ask the members, over the mTLS Raft listener, to add this controller.
async fn request_membership(
    net: &HttpNetwork,
    request: AddMemberRequest,
    leader: Option<u64>,
    members: &[MemberStatus],
) -> Result<u64> {
    let addr_of = |id: u64| {
        members.iter().find(|m| m.id == id).map(|m| ControllerAddr {
            raft_addr: m.raft_addr.clone(),
            api_addr: m.api_addr.clone(),
        })
    };
    let others: Vec<u64> = members
        .iter()
        .map(|m| m.id)
        .filter(|i| *i != request.id)
        .collect();
    ensure!(!others.is_empty(), "the join answer names no members");
    let mut target = leader.filter(|l| others.contains(l)).unwrap_or(others[0]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempt = 0usize;
    loop {
        attempt += 1;
        let addr = addr_of(target).context("member address")?;
        let res = net
            .send(
                target,
                addr,
                PeerRequest::AddMember {
                    request: request.clone(),
                },
            )
            .await;
        match res {
            Ok(PeerResponse::MembershipChanged { index }) => return Ok(index),
            Ok(PeerResponse::NotLeader { leader: Some(l) }) if others.contains(&l) => target = l,
            Ok(other) => {
                tracing::warn!(target, answer = ?other, "membership not changed yet, retrying");
                target = others[attempt % others.len()];
            }
            Err(e) => {
                tracing::warn!(target, error = %e, "membership request failed, retrying");
                target = others[attempt % others.len()];
            }
        }
        ensure!(
            Instant::now() < deadline,
            "not added to the cluster within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// On the first start of the first controller: create the admin token and write it out.
async fn bootstrap_admin_token(node: &ControllerNode, data_dir: &Path) -> Result<()> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        return Ok(());
    }
    node.wait_for_leader(Duration::from_secs(30)).await?;
    let has_admin = node
        .read_linearizable(|s| {
            s.tokens
                .values()
                .any(|t| t.token.role == TokenRole::Admin && !t.revoked)
        })
        .await?;
    if has_admin {
        // A restarted member of an existing cluster: the admin token was made elsewhere.
        return Ok(());
    }
    let t = auth::create_token(
        node,
        TokenRole::Admin,
        None,
        "bootstrap admin".into(),
        api_now_ms(),
    )
    .await
    .context("cannot create the admin token")?;
    tls::write_private(&path, format!("{}\n", t.token).as_bytes())?;
    println!("admin token: {}", t.token);
    println!("admin token file: {}", path.display());
    Ok(())
}

fn api_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let mut sans = tls::sans_for([args.raft_addr.as_str(), args.api_addr.as_str()]);
    sans.extend(args.san.iter().cloned());

    // Trust material: from disk, from a join, or a new CA.
    let pending_path = args.data_dir.join(PENDING_JOIN_FILE);
    let mut joined: Option<JoinResponse> = None;
    let (identity, ca) = match Identity::load(&args.data_dir)? {
        Some(identity) => {
            if args.join.is_some() && pending_path.exists() {
                let text = std::fs::read_to_string(&pending_path)?;
                joined = Some(serde_json::from_str(&text).context("malformed pending join file")?);
            }
            (identity, ClusterCa::load(&args.data_dir)?)
        }
        None => match &args.join {
            None => {
                let ca = ClusterCa::create("flotilla").context("cannot create the cluster ca")?;
                ca.save(&args.data_dir)?;
                let identity = ca.issue(args.id, &sans)?;
                identity.save(&args.data_dir)?;
                tracing::info!(ca_cert_hash = %ca.hash(), "created the cluster ca");
                (identity, Some(ca))
            }
            Some(via) => {
                let token = args.token.as_deref().context("--join needs --token")?;
                let hash = args
                    .ca_cert_hash
                    .as_deref()
                    .context("--join needs --ca-cert-hash")?;
                let (identity, ca, resp) =
                    request_certificate(via, token, hash, args.id, &addr, &sans).await?;
                ca.save(&args.data_dir)?;
                identity.save(&args.data_dir)?;
                let pending = JoinResponse {
                    ca_key: String::new(),
                    ..resp
                };
                tls::write_private(&pending_path, &serde_json::to_vec(&pending)?)?;
                tracing::info!(via, "received this controller's certificate");
                joined = Some(pending);
                (identity, Some(ca))
            }
        },
    };
    let ca_hash = identity.ca_hash()?;

    let mut config = ControllerConfig::new(args.id, &args.data_dir, addr.clone());
    config.bootstrap = args.join.is_none();
    config.timings = RaftTimings {
        heartbeat_ms: args.heartbeat_ms,
        election_min_ms: args.election_min_ms,
        election_max_ms: args.election_max_ms,
        snapshot_every: args.snapshot_every,
        ..RaftTimings::default()
    };
    let net = HttpNetwork::new(Some(identity.raft_client_config()?))?;
    let node = ControllerNode::start(config, net.clone(), Arc::new(net.clone()))
        .await
        .context("cannot start the controller")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let raft_server = tokio::spawn(network::serve(
        raft_listener,
        network::raft_router(node.clone()),
        Some(identity.raft_server_config()?),
        stopped(stop_rx.clone()),
    ));
    let state = ApiState {
        node: node.clone(),
        ca: ca.map(Arc::new),
    };
    let api_server = tokio::spawn(network::serve(
        api_listener,
        api::router_and_spec(state).0,
        Some(identity.api_server_config()?),
        stopped(stop_rx),
    ));
    tracing::info!(node_id = args.id, raft = %args.raft_addr, api = %args.api_addr, ca_cert_hash = %ca_hash, "serving over tls");
    println!("ca cert hash: {ca_hash}");

    if args.join.is_none() {
        bootstrap_admin_token(&node, &args.data_dir).await?;
    } else if let Some(resp) = joined {
        if !node.raft().is_initialized().await? {
            let request = AddMemberRequest {
                id: args.id,
                addr: addr.clone(),
                voter: true,
            };
            let index = request_membership(&net, request, resp.leader, &resp.members).await?;
            tracing::info!(node_id = args.id, index, "joined the cluster as a voter");
        }
        let _ = std::fs::remove_file(&pending_path);
    }

    // The reconcile loop runs on every controller and acts only while it leads.
    let orchestrator = (!args.no_orchestrator).then(|| {
        flotilla_controller::orchestrator::Orchestrator::spawn(
            node.clone(),
            flotilla_controller::orchestrator::OrchestratorConfig::default(),
        )
    });

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    if let Some(o) = orchestrator {
        o.stop().await;
    }
    node.shutdown().await;
    for server in [raft_server, api_server] {
        server.await?.context("server failed")?;
    }
    Ok(())
}
