//! The endpoints agents call (docs/cluster-protocol.md): node join, heartbeats (the node
//! lease) and instance status reports, plus the `?node=` filter of the instance list.
//!
//! * `POST /v1/nodes/join` is public; its join token (role `node_join`) is in the body and is
//!   consumed by a compare-and-set on its revision, like a controller join: of two joins with
//!   one token exactly one succeeds.
//! * Heartbeats and reports need the node's own API token (role `node`, description
//!   `node:<id>`); `require_token` lets a node write only these paths, and the handlers check
//!   that the path's node is the caller (heartbeat) and the state machine that the caller owns
//!   the instance at the reported epoch (report).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use flotilla_api::cluster::{
    Command, CommandResult, NodeHeartbeat, NodeInfo, NodeLease, RegisterNode, ReportInstanceState,
    TokenRole, UpdateNode,
};
use flotilla_api::rest::{
    InstanceStatusReport, NodeHeartbeatRequest, NodeHeartbeatResponse, NodeJoinRequest,
    NodeJoinResponse, Problem,
};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, ReadQuery};
use super::problem::ApiError;
use super::tokens::{authenticate_fresh, Caller};
use super::{json_at, now_ms, validate, ApiState};
use crate::auth::{self, AuthError};
use crate::node::error_chain;

/// How often agents heartbeat.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// How long a lease lasts without renewal (counted by the leader on its own clock).
pub const LEASE_TTL_MS: u64 = 5_000;
/// Features an agent may report, and their longest key and value.
const MAX_FEATURES: usize = 64;
const MAX_FEATURE_LEN: usize = 256;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(join_node))
        .routes(routes!(heartbeat))
        .routes(routes!(report_status))
        .routes(routes!(instance_logs))
        .routes(routes!(instance_exec))
        .routes(routes!(instance_exec_stream))
}

/// Query of `GET /v1/instances`: the read parameters plus `node`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct InstanceListQuery {
    /// Read this controller's replica without the read-index round (may lag).
    #[serde(default)]
    pub stale: bool,
    /// Blocking query: answer once the result changes past this index.
    #[serde(default)]
    pub index: Option<u64>,
    /// How long a blocking query may wait (`30s`, `500ms`, `2m`; at most 10 minutes).
    #[serde(default)]
    pub wait: Option<String>,
    /// Only instances owned by this node (an agent's assignments).
    #[serde(default)]
    pub node: Option<String>,
}

impl InstanceListQuery {
    pub(super) fn split(self) -> Result<(ReadQuery, Option<String>), ApiError> {
        if let Some(n) = &self.node {
            validate::path_subdomain("node", n)?;
        }
        Ok((
            ReadQuery {
                stale: self.stale,
                index: self.index,
                wait: self.wait,
            },
            self.node,
        ))
    }
}

fn features(field: &str, f: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if f.len() > MAX_FEATURES {
        return Err(ApiError::invalid(
            field,
            format!("more than {MAX_FEATURES} features"),
        ));
    }
    for (k, v) in f {
        let bad = |s: &str| s.len() > MAX_FEATURE_LEN || s.chars().any(char::is_control);
        if k.is_empty() || bad(k) || bad(v) {
            return Err(ApiError::invalid(
                format!("{field}.{k}"),
                format!("feature names and values are 1-{MAX_FEATURE_LEN} characters without control characters"),
            ));
        }
    }
    Ok(())
}

fn capacity(field: &str, c: &flotilla_api::cluster::Capacity) -> Result<(), ApiError> {
    if c.cpu_millis == 0 {
        return Err(ApiError::invalid(
            format!("{field}.cpuMillis"),
            "must be at least 1",
        ));
    }
    if c.memory_bytes < (1 << 20) {
        return Err(ApiError::invalid(
            format!("{field}.memoryBytes"),
            "must be at least 1 MiB",
        ));
    }
    Ok(())
}

/// Join as a node: trade a node join token and a CSR for a node certificate and API token.
#[utoipa::path(post, path = "/v1/nodes/join", tag = "agents", request_body = NodeJoinRequest, security(()),
    responses(
        (status = 201, description = "joined", body = NodeJoinResponse),
        (status = "4XX", description = "the request is refused (problem document naming the field); 409 when the node id is taken", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn join_node(
    State(st): State<ApiState>,
    JsonBody(req): JsonBody<NodeJoinRequest>,
) -> Result<Response, ApiError> {
    validate::label("nodeId", &req.node_id)?;
    validate::host_port("address", &req.address)?;
    let (host, _) = req.address.rsplit_once(':').unwrap_or_default();
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            ApiError::invalid(
                "address",
                "the node address must be an IP address and port (it goes into the certificate)",
            )
        })?;
    validate::labels("labels", req.labels.iter())?;
    capacity("capacity", &req.capacity)?;
    features("features", &req.features)?;
    if req.csr.len() > 16 * 1024 {
        return Err(ApiError::invalid("csr", "longer than 16 KiB"));
    }

    let refused = |e: AuthError| {
        tracing::warn!(node = %req.node_id, error = %e, "node join refused");
        ApiError::unauthorized(format!("join refused: {e}")).with_field("token")
    };
    let now = now_ms();
    let record = authenticate_fresh(&st, &req.token, now)
        .await?
        .map_err(refused)?;
    if record.token.role != TokenRole::NodeJoin {
        return Err(refused(AuthError::WrongRole {
            role: record.token.role,
            what: "join a node",
        }));
    }
    let taken = |id: &str| {
        ApiError::conflict(format!("node {id} is already registered")).with_field("nodeId")
    };
    if st
        .node
        .read_linearizable(|s| s.nodes.contains_key(&req.node_id))
        .await?
    {
        return Err(taken(&req.node_id));
    }
    let ca = super::tokens::signing_ca(&st)?;
    let certificate = ca
        .sign_node_csr(&req.csr, &req.node_id, &[ip.to_string()])
        .map_err(|e| {
            ApiError::invalid("csr", format!("cannot sign the csr: {}", error_chain(&e)))
        })?;

    super::tokens::consume_join_token(
        &st,
        &record,
        format!("used by node {} ({})", req.node_id, req.address),
        now,
    )
    .await?
    .map_err(refused)?;

    let register = Command::RegisterNode(RegisterNode {
        node: NodeInfo {
            id: req.node_id.clone(),
            address: req.address.clone(),
            labels: req.labels.clone(),
            capacity: req.capacity.clone(),
            features: req.features.clone(),
        },
        // Two joins racing for one id: the second finds it taken.
        expect_revision: Some(0),
        at_ms: now,
    });
    let revision = match st.node.propose(register).await?.result {
        CommandResult::Applied { revision } => revision,
        CommandResult::Conflict { .. } => return Err(taken(&req.node_id)),
        other => {
            return Err(ApiError::conflict(format!(
                "node not registered: {other:?}"
            )))
        }
    };
    let token = auth::create_token(
        &st.node,
        TokenRole::Node,
        None,
        format!("{}{}", auth::NODE_TOKEN_PREFIX, req.node_id),
        now,
    )
    .await
    .map_err(|e| match e {
        auth::CreateTokenError::Write(c) => ApiError::from(c),
        other => ApiError::internal(error_chain(&other)),
    })?;
    st.wait_applied(token.revision.max(revision)).await?;
    let controllers = st
        .node
        .members()
        .into_iter()
        .map(|m| format!("https://{}", m.addr.api_addr))
        .collect();
    tracing::info!(node = %req.node_id, address = %req.address, token_id = %record.token.id, "node joined");
    let body = NodeJoinResponse {
        node_id: req.node_id,
        certificate,
        ca_certificate: ca.cert_pem().to_owned(),
        api_token: token.token,
        controllers,
        heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
        lease_ttl_ms: LEASE_TTL_MS,
    };
    Ok(json_at(StatusCode::CREATED, token.revision, None, &body))
}

/// The caller's node, which must be `id`.
fn own_node(caller: &Caller, id: &str) -> Result<String, ApiError> {
    match &caller.node {
        Some(n) if n == id => Ok(n.clone()),
        Some(n) => Err(ApiError::forbidden(format!(
            "the token of node {n} cannot act for node {id}"
        ))),
        None => Err(ApiError::forbidden(format!(
            "only the node's own token (role node) may do this; this token has role {:?}",
            caller.role
        ))),
    }
}

/// The last `(bootId, seq)` each node sent to this controller: a replayed or reordered
/// heartbeat is refused here (a replay through another controller only renews the lease
/// again, which is harmless).
static LAST_BEAT: Mutex<BTreeMap<String, (String, u64)>> = Mutex::new(BTreeMap::new());

/// Renew the node's lease; refresh its capacity and features when they changed.
#[utoipa::path(post, path = "/v1/nodes/{id}/heartbeat", tag = "agents", request_body = NodeHeartbeatRequest,
    params(("id" = String, Path, description = "the node id")),
    responses(
        (status = 200, description = "renewed", body = NodeHeartbeatResponse),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn heartbeat(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NodeHeartbeatRequest>,
) -> Result<Response, ApiError> {
    validate::path_subdomain("id", &id)?;
    let node_id = own_node(&caller, &id)?;
    if let Some(c) = &req.capacity {
        capacity("capacity", c)?;
    }
    if let Some(f) = &req.features {
        features("features", f)?;
    }
    {
        let mut last = LAST_BEAT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((boot, seq)) = last.get(&node_id) {
            if *boot == req.boot_id && req.seq <= *seq {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "stale-heartbeat",
                    format!(
                        "heartbeat {} of boot {} is not newer than {seq}",
                        req.seq, req.boot_id
                    ),
                )
                .with_field("seq"));
            }
        }
        last.insert(node_id.clone(), (req.boot_id.clone(), req.seq));
    }
    let mut revision = 0;
    // A concurrent renewal can take the same (term, seq): recompute and try again once.
    for attempt in 0..2 {
        let term = st.node.metrics().current_term;
        let old = st
            .node
            .read_stale(|s| s.nodes.get(&node_id).map(|n| n.lease.clone()));
        let Some(old) = old else {
            return Err(ApiError::not_found(format!("node {node_id}")));
        };
        let (leader_term, seq) = match old {
            Some(l) if l.leader_term >= term => (l.leader_term, l.seq + 1),
            _ => (term, 1),
        };
        let now = now_ms();
        let cmd = Command::NodeHeartbeat(NodeHeartbeat {
            node_id: node_id.clone(),
            lease: NodeLease {
                leader_term,
                seq,
                ttl_ms: LEASE_TTL_MS,
                renewed_at_ms: now,
            },
            at_ms: now,
        });
        match st.node.propose(cmd).await?.result {
            CommandResult::Applied { revision: r } => {
                revision = r;
                break;
            }
            CommandResult::Rejected { reason } if attempt == 0 => {
                tracing::debug!(node = %node_id, reason, "lease renewal raced, retrying");
                st.wait_applied(st.node.applied_index()).await?;
            }
            CommandResult::NotFound { .. } => {
                return Err(ApiError::not_found(format!("node {node_id}")))
            }
            other => return Err(ApiError::conflict(format!("lease not renewed: {other:?}"))),
        }
    }
    let changed = st.node.read_stale(|s| {
        s.nodes.get(&node_id).map(|n| {
            (
                req.capacity.clone().filter(|c| *c != n.info.capacity),
                req.features.clone().filter(|f| *f != n.info.features),
            )
        })
    });
    if let Some((cap, feat)) = changed {
        if cap.is_some() || feat.is_some() {
            let cmd = Command::UpdateNode(UpdateNode {
                id: node_id.clone(),
                address: None,
                labels: None,
                capacity: cap,
                features: feat,
                schedulable: None,
                expect_revision: None,
                at_ms: now_ms(),
            });
            if let CommandResult::Applied { revision: r } = st.node.propose(cmd).await?.result {
                revision = r;
            }
        }
    }
    Ok(json_at(
        StatusCode::OK,
        revision,
        None,
        &NodeHeartbeatResponse {
            revision,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            lease_ttl_ms: LEASE_TTL_MS,
        },
    ))
}

/// Report what the owning agent observes of an instance. 409 `stale-epoch` when the epoch is
/// not the current one or the caller does not own the instance: the agent must stop it.
#[utoipa::path(put, path = "/v1/instances/{id}/status", tag = "agents", request_body = InstanceStatusReport,
    params(("id" = String, Path, description = "the instance id")),
    responses(
        (status = 200, description = "recorded", body = flotilla_api::cluster::InstanceRecord),
        (status = "4XX", description = "the request is refused (problem document naming the field); 409 `stale-epoch` when fenced", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn report_status(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<InstanceStatusReport>,
) -> Result<Response, ApiError> {
    validate::path_subdomain("id", &id)?;
    let node_id = caller.node.clone().ok_or_else(|| {
        ApiError::forbidden("only the owning node's token (role node) reports instance status")
    })?;
    if let Some(ip) = &req.ip {
        ip.parse::<IpAddr>()
            .map_err(|_| ApiError::invalid("ip", format!("{ip:?} is not an IP address")))?;
    }
    if let Some(e) = &req.exit {
        if e.message.len() > 1024 {
            return Err(ApiError::invalid("exit.message", "longer than 1024 bytes"));
        }
    }
    let cmd = Command::ReportInstanceState(ReportInstanceState {
        instance_id: id.clone(),
        node_id: node_id.clone(),
        epoch: req.epoch,
        state: req.state,
        exit: req.exit,
        ip: req.ip,
        ready: req.ready,
        restarts: req.restarts,
        at_ms: now_ms(),
    });
    let revision = match st.node.propose(cmd).await?.result {
        CommandResult::Applied { revision } => revision,
        CommandResult::StaleEpoch { current } => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "stale-epoch",
                format!(
                    "node {node_id} does not own instance {id} at epoch {} (current epoch {current})",
                    req.epoch
                ),
            )
            .with_field("epoch");
            e.current_revision = None;
            return Err(e);
        }
        CommandResult::NotFound { .. } => {
            return Err(ApiError::not_found(format!("instance {id}")))
        }
        other => return Err(ApiError::conflict(format!("report refused: {other:?}"))),
    };
    st.wait_applied(revision).await?;
    let (index, item) = st.snapshot(|s| s.instances.get(&id).cloned());
    let item = item.ok_or_else(|| ApiError::not_found(format!("instance {id}")))?;
    Ok(json_at(StatusCode::OK, index, Some(item.revision), &item))
}

// ---------------------------------------------------------------------------------------------
// Logs and exec: proxied to the owning agent's mTLS API with this controller's certificate
// ---------------------------------------------------------------------------------------------

/// Query of `GET /v1/instances/{id}/logs`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LogsQuery {
    /// Keep the stream open and send new lines as they come.
    #[serde(default)]
    follow: bool,
    /// Only the last N lines.
    #[serde(default)]
    tail: Option<usize>,
}

/// The agent API base URL of the node owning instance `id`.
async fn owner_base(st: &ApiState, id: &str) -> Result<String, ApiError> {
    let owner = st
        .node
        .read_linearizable(|s| {
            s.instances.get(id).map(|i| {
                let node = i.owner_node.clone();
                let addr = node
                    .as_ref()
                    .and_then(|n| s.nodes.get(n))
                    .map(|n| n.info.address.clone());
                (node, addr)
            })
        })
        .await?;
    match owner {
        None => Err(ApiError::not_found(format!("instance {id}"))),
        Some((None, _)) => Err(ApiError::conflict(format!(
            "instance {id} is not placed on a node"
        ))),
        Some((Some(n), None)) => Err(ApiError::conflict(format!(
            "node {n} that owns instance {id} is not registered"
        ))),
        Some((Some(_), Some(addr))) => Ok(format!("https://{addr}")),
    }
}

/// TLS presenting this controller's certificate and trusting the cluster CA only (HTTP/1.1).
fn agent_client_tls(st: &ApiState) -> Result<rustls::ClientConfig, ApiError> {
    let unavailable =
        |detail: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no-agent-client", detail);
    let identity = crate::tls::Identity::load(st.node.data_dir())
        .map_err(|e| {
            unavailable(format!(
                "cannot read this controller's certificate: {}",
                error_chain(&e)
            ))
        })?
        .ok_or_else(|| {
            unavailable("this controller has no certificate to reach agents with".into())
        })?;
    let mut tls = identity
        .raft_client_config()
        .map_err(|e| ApiError::internal(error_chain(&e)))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// A client presenting this controller's certificate and trusting the cluster CA only.
fn agent_client(
    st: &ApiState,
    timeout: Option<std::time::Duration>,
) -> Result<reqwest::Client, ApiError> {
    let tls = agent_client_tls(st)?;
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5))
        .tls_backend_preconfigured(tls);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| ApiError::internal(error_chain(&e)))
}

fn agent_unreachable(e: &reqwest::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "agent-unreachable",
        format!("cannot reach the owning agent: {}", error_chain(e)),
    )
}

/// An agent's error answer, passed on as a problem.
async fn agent_refused(resp: reqwest::Response) -> ApiError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or(text);
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    ApiError::new(
        status,
        "agent-refused",
        format!("the agent answered: {detail}"),
    )
}

/// An instance's output (stdout and stderr lines), from its agent; `follow` streams.
#[utoipa::path(get, path = "/v1/instances/{id}/logs", tag = "agents",
    params(("id" = String, Path, description = "the instance id"), LogsQuery),
    responses(
        (status = 200, description = "the log as text/plain, streamed when following", content_type = "text/plain"),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the owning agent cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
async fn instance_logs(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    super::extract::StrictQuery(q): super::extract::StrictQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    validate::path_subdomain("id", &id)?;
    let base = owner_base(&st, &id).await?;
    let client = agent_client(&st, None)?;
    let mut url = format!("{base}/v1/containers/{id}/logs?follow={}", q.follow);
    if let Some(t) = q.tail {
        url.push_str(&format!("&tail={t}"));
    }
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| agent_unreachable(&e))?;
    if !resp.status().is_success() {
        return Err(agent_refused(resp).await);
    }
    let body = axum::body::Body::from_stream(resp.bytes_stream());
    Ok(axum::response::IntoResponse::into_response((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        body,
    )))
}

/// Run a command inside an instance's container (non-interactive), through its agent.
#[utoipa::path(post, path = "/v1/instances/{id}/exec", tag = "agents",
    params(("id" = String, Path, description = "the instance id")),
    request_body(content = Object, description = "`{\"command\": [...], \"env\": [\"K=V\"], \"cwd\": \"/\"}`"),
    responses(
        (status = 200, description = "`{\"exitCode\", \"stdout\", \"stderr\"}`", body = Object),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the owning agent cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
async fn instance_exec(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    validate::path_subdomain("id", &id)?;
    let cmd = body.get("command").and_then(|c| c.as_array());
    if !cmd.is_some_and(|c| !c.is_empty() && c.iter().all(serde_json::Value::is_string)) {
        return Err(ApiError::invalid(
            "command",
            "a non-empty array of strings is required",
        ));
    }
    let base = owner_base(&st, &id).await?;
    let client = agent_client(&st, Some(std::time::Duration::from_secs(300)))?;
    let resp = client
        .post(format!("{base}/v1/containers/{id}/exec"))
        .json(&body)
        .send()
        .await
        .map_err(|e| agent_unreachable(&e))?;
    if !resp.status().is_success() {
        return Err(agent_refused(resp).await);
    }
    let v: serde_json::Value = resp.json().await.map_err(|e| agent_unreachable(&e))?;
    Ok(json_at(StatusCode::OK, st.node.applied_index(), None, &v))
}

/// Run a command inside an instance's container interactively: a WebSocket (subprotocol
/// `v1.exec.flotilla.dev`) relayed to the owning agent. Messages are binary, the first byte the
/// channel: 0 stdin (empty = end of input), 1 stdout, 2 stderr, 3 the exit status as JSON
/// (`{"exitCode": n}` or `{"error": "..."}`), 4 a terminal resize as JSON
/// (`{"rows": r, "cols": c}`). Running a command is a write: read-only tokens are refused.
#[utoipa::path(get, path = "/v1/instances/{id}/exec/stream", tag = "agents",
    params(
        ("id" = String, Path, description = "the instance id"),
        ("command" = Vec<String>, Query, description = "the command and its arguments, one `command=` each"),
        ("env" = Option<Vec<String>>, Query, description = "extra `KEY=VALUE` entries, one `env=` each"),
        ("cwd" = Option<String>, Query, description = "the working directory (absolute)"),
        ("tty" = Option<bool>, Query, description = "run on a terminal"),
        ("stdin" = Option<bool>, Query, description = "pass the client's input"),
        ("rows" = Option<u16>, Query, description = "the terminal's initial rows (with tty)"),
        ("cols" = Option<u16>, Query, description = "the terminal's initial columns (with tty)"),
    ),
    responses(
        (status = 101, description = "switching to the exec WebSocket"),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the owning agent cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
async fn instance_exec_stream(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response, ApiError> {
    use flotilla_api::exec_stream::{ExecStreamQuery, PROTOCOL};
    validate::path_subdomain("id", &id)?;
    let q = ExecStreamQuery::parse(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid(e.field, e.detail))?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket-required",
            format!("a streaming exec is a WebSocket upgrade: {e}"),
        )
    })?;
    let base = owner_base(&st, &id).await?;
    let addr = base.trim_start_matches("https://").to_owned();
    let agent = exec_stream::connect(&st, &addr, &id, &q).await?;
    Ok(ws
        .protocols([PROTOCOL])
        .on_upgrade(move |client| exec_stream::relay(client, agent)))
}

mod exec_stream {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::extract::ws::{Message, WebSocket};
    use axum::http::StatusCode;
    use flotilla_api::exec_stream::{ExecStreamQuery, PROTOCOL};
    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
    use tokio_tungstenite::WebSocketStream;

    use super::{agent_client_tls, ApiError, ApiState};
    use crate::node::error_chain;

    pub type AgentSocket = WebSocketStream<TlsStream<TcpStream>>;

    fn unreachable(detail: String) -> ApiError {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "agent-unreachable",
            format!("cannot reach the owning agent: {detail}"),
        )
    }

    /// The agent's exec WebSocket, over mTLS with this controller's certificate. An agent's
    /// refusal (no such container, not running, bad query) comes back as its problem.
    pub async fn connect(
        st: &ApiState,
        addr: &str,
        id: &str,
        q: &ExecStreamQuery,
    ) -> Result<AgentSocket, ApiError> {
        let tls = agent_client_tls(st)?;
        let sock: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| unreachable(format!("the node's address {addr:?} is not ip:port")))?;
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(sock))
            .await
            .map_err(|_| unreachable(format!("connecting to {addr} timed out")))?
            .map_err(|e| unreachable(format!("connecting to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::IpAddress(sock.ip().into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("tls with {addr}: {e}")))?;
        let url = format!(
            "wss://{addr}/v1/containers/{id}/exec/stream?{}",
            q.to_query()
        );
        let mut req = url
            .into_client_request()
            .map_err(|e| ApiError::internal(error_chain(&e)))?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            axum::http::HeaderValue::from_static(PROTOCOL),
        );
        match tokio_tungstenite::client_async(req, tls).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status();
                let text = resp
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                let detail = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["detail"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                let status =
                    StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                Err(ApiError::new(
                    status,
                    "agent-refused",
                    format!("the agent answered: {detail}"),
                ))
            }
            Err(e) => Err(unreachable(error_chain(&e))),
        }
    }

    /// Pass messages both ways until either side closes; closing one closes the other (the
    /// agent hangs the command up when its socket closes).
    pub async fn relay(client: WebSocket, agent: AgentSocket) {
        use tungstenite::Message as T;
        let (mut ctx, mut crx) = client.split();
        let (mut atx, mut arx) = agent.split();
        let up = async {
            while let Some(Ok(m)) = crx.next().await {
                let m = match m {
                    Message::Binary(b) => T::Binary(b),
                    Message::Text(t) => T::text(t.as_str()),
                    Message::Close(_) => break,
                    _ => continue,
                };
                if atx.send(m).await.is_err() {
                    return;
                }
            }
            let _ = atx.send(T::Close(None)).await;
        };
        let down = async {
            while let Some(Ok(m)) = arx.next().await {
                let m = match m {
                    T::Binary(b) => Message::Binary(b),
                    T::Text(t) => Message::Text(t.as_str().into()),
                    T::Close(_) => break,
                    _ => continue,
                };
                if ctx.send(m).await.is_err() {
                    return;
                }
            }
            let _ = ctx.send(Message::Close(None)).await;
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_features_are_checked_naming_the_field() {
        let c = flotilla_api::cluster::Capacity {
            cpu_millis: 0,
            memory_bytes: 1 << 30,
        };
        let e = capacity("capacity", &c).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("capacity.cpuMillis"));
        let mut f = BTreeMap::new();
        f.insert("criu".to_owned(), "x\u{7}".to_owned());
        let e = features("features", &f).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("features.criu"));
    }
}
