//! A minimal public API over `ControllerNode`, enough for the binary's tests and benchmarks:
//! cluster status and membership, a snapshot trigger, a raw command write path and workload
//! reads. The full REST API (OpenAPI, problem+json, TLS, tokens) replaces it; it shows how an
//! axum layer sits on an `Arc<ControllerNode>`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use flotilla_api::cluster::{AddMemberRequest, VersionedCommand};
use serde::Deserialize;

use crate::node::{error_chain, ControllerError, ControllerNode};

type Node = Arc<ControllerNode>;

pub fn router(node: Node) -> Router {
    Router::new()
        .route("/v1/cluster/status", get(status))
        .route("/v1/cluster/members", get(members).post(add_member))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .route("/v1/cluster/snapshot", post(snapshot))
        .route("/v1/commands", post(write))
        .route("/v1/workloads", get(workloads))
        .route("/v1/workloads/{name}", get(workload))
        .with_state(node)
}

struct ApiError(ControllerError);

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ControllerError::NoLeader { .. }
            | ControllerError::Timeout { .. }
            | ControllerError::QuorumNotEnough
            | ControllerError::Forward { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ControllerError::Membership(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = serde_json::json!({ "error": error_chain(&self.0) });
        (status, Json(body)).into_response()
    }
}

#[derive(Deserialize)]
struct ReadParams {
    #[serde(default)]
    stale: bool,
}

async fn status(State(node): State<Node>) -> impl IntoResponse {
    Json(node.status())
}

async fn members(State(node): State<Node>) -> impl IntoResponse {
    Json(node.members())
}

async fn add_member(
    State(node): State<Node>,
    Json(req): Json<AddMemberRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let index = node.add_member(req).await?;
    Ok(Json(serde_json::json!({ "index": index })))
}

async fn remove_member(
    State(node): State<Node>,
    Path(id): Path<u64>,
) -> Result<impl IntoResponse, ApiError> {
    let index = node.remove_member(id).await?;
    Ok(Json(serde_json::json!({ "index": index })))
}

async fn snapshot(State(node): State<Node>) -> Result<impl IntoResponse, ApiError> {
    node.trigger_snapshot().await?;
    Ok(StatusCode::ACCEPTED)
}

async fn write(
    State(node): State<Node>,
    Json(cmd): Json<VersionedCommand>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.write(cmd).await?))
}

async fn workloads(
    State(node): State<Node>,
    Query(p): Query<ReadParams>,
) -> Result<impl IntoResponse, ApiError> {
    let read = |s: &crate::state::ClusterState| s.workloads.clone();
    let all = if p.stale {
        node.read_stale(read)
    } else {
        node.read_linearizable(read).await?
    };
    Ok(Json(all))
}

async fn workload(
    State(node): State<Node>,
    Path(name): Path<String>,
    Query(p): Query<ReadParams>,
) -> Result<Response, ApiError> {
    let read = |s: &crate::state::ClusterState| s.workloads.get(&name).cloned();
    let found = if p.stale {
        node.read_stale(read)
    } else {
        node.read_linearizable(read).await?
    };
    Ok(match found {
        Some(w) => Json(w).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}
