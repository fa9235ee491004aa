//! Cluster endpoints: status, members with roles and health, leader, Raft metrics, add and
//! remove member, snapshot, and the unauthenticated health and readiness probes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_api::cluster::{AddMemberRequest, ClusterStatus, MemberRole};
use flotilla_api::rest::{
    Health, LeaderResponse, MemberStatus, MembersResponse, MembershipChanged, Problem,
    RaftMetricsView, SnapshotTriggered,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::JsonBody;
use super::problem::ApiError;
use super::{validate, ApiState};
use crate::raft::types::RaftMetrics;

/// A member at most this many entries behind the leader counts as healthy.
pub const HEALTHY_LAG: u64 = 1_000;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(members, add_member))
        .routes(routes!(remove_member))
        .routes(routes!(leader))
        .routes(routes!(raft_metrics))
        .routes(routes!(snapshot))
        .routes(routes!(health))
        .routes(routes!(ready))
}

fn state_name(m: &RaftMetrics) -> &'static str {
    match m.state {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    }
}

/// The members as this controller sees them; lag and health on the leader only.
pub(crate) fn member_statuses(st: &ApiState) -> MembersResponse {
    let m = st.node.metrics();
    let last = m.last_log_index.unwrap_or(0);
    let leader_here = m.current_leader == Some(m.id) && m.state == openraft::ServerState::Leader;
    let members = st
        .node
        .members()
        .into_iter()
        .map(|info| {
            let (lag, healthy) = if !leader_here {
                (None, None)
            } else if info.id == m.id {
                let quorum_ok = m.millis_since_quorum_ack.is_some_and(|ms| ms < 5_000);
                (Some(0), Some(quorum_ok))
            } else {
                match info.matched_index {
                    Some(i) => {
                        let lag = last.saturating_sub(i);
                        (Some(lag), Some(lag <= HEALTHY_LAG))
                    }
                    None => (None, Some(false)),
                }
            };
            MemberStatus {
                id: info.id,
                raft_addr: info.addr.raft_addr,
                api_addr: info.addr.api_addr,
                voter: info.role != MemberRole::Learner,
                role: info.role,
                matched_index: info.matched_index,
                lag,
                healthy,
            }
        })
        .collect();
    MembersResponse {
        served_by: m.id,
        leader: m.current_leader,
        term: m.current_term,
        members,
    }
}

/// This controller's Raft status and the members it knows.
#[utoipa::path(get, path = "/v1/cluster/status", tag = "cluster",
    responses((status = 200, description = "answered", body = ClusterStatus), (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json")))]
async fn status(State(st): State<ApiState>) -> Json<ClusterStatus> {
    Json(st.node.status())
}

/// The members with their roles; health and lag when the leader answers.
#[utoipa::path(get, path = "/v1/cluster/members", tag = "cluster",
    responses((status = 200, description = "answered", body = MembersResponse), (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json")))]
async fn members(State(st): State<ApiState>) -> Json<MembersResponse> {
    Json(member_statuses(&st))
}

/// Add a controller (learner, then voter when `voter`); it must already run with a
/// certificate of the cluster CA.
#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster", request_body = AddMemberRequest,
    responses(
        (status = 200, description = "answered", body = MembershipChanged),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn add_member(
    State(st): State<ApiState>,
    JsonBody(req): JsonBody<AddMemberRequest>,
) -> Result<Json<MembershipChanged>, ApiError> {
    if req.id == 0 {
        return Err(ApiError::invalid("id", "controller ids start at 1"));
    }
    validate::controller_addr("addr", &req.addr)?;
    let index = st.node.add_member(req).await?;
    Ok(Json(MembershipChanged { index }))
}

/// Remove a controller (voter or learner).
#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "the controller's Raft id")),
    responses(
        (status = 200, description = "answered", body = MembershipChanged),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn remove_member(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<MembershipChanged>, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("id", format!("{id:?} is not a controller id")))?;
    let members = st.node.members();
    if !members.iter().any(|m| m.id == id) {
        return Err(ApiError::not_found(format!("controller {id}")));
    }
    let voters = members
        .iter()
        .filter(|m| m.role != MemberRole::Learner)
        .count();
    let is_voter = members
        .iter()
        .any(|m| m.id == id && m.role != MemberRole::Learner);
    if is_voter && voters == 1 {
        return Err(ApiError::conflict("cannot remove the last voter"));
    }
    let index = st.node.remove_member(id).await?;
    Ok(Json(MembershipChanged { index }))
}

/// The current leader as this controller knows it.
#[utoipa::path(get, path = "/v1/cluster/leader", tag = "cluster",
    responses((status = 200, description = "answered", body = LeaderResponse), (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json")))]
async fn leader(State(st): State<ApiState>) -> Json<LeaderResponse> {
    let m = st.node.metrics();
    let addr = m
        .current_leader
        .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
    Json(LeaderResponse {
        served_by: m.id,
        leader: m.current_leader,
        term: m.current_term,
        addr,
    })
}

/// Raft metrics of this controller.
#[utoipa::path(get, path = "/v1/cluster/raft", tag = "cluster",
    responses((status = 200, description = "answered", body = RaftMetricsView), (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json")))]
async fn raft_metrics(State(st): State<ApiState>) -> Json<RaftMetricsView> {
    let m = st.node.metrics();
    Json(RaftMetricsView {
        id: m.id,
        state: state_name(&m).to_owned(),
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        millis_since_quorum_ack: m.millis_since_quorum_ack,
        replication: m.replication.as_ref().map(|r| {
            r.iter()
                .map(|(id, l)| (id.to_string(), l.map(|l| l.index)))
                .collect()
        }),
    })
}

/// Build a snapshot of this controller's state now (log compaction follows by policy).
#[utoipa::path(post, path = "/v1/cluster/snapshot", tag = "cluster",
    responses(
        (status = 202, description = "answered", body = SnapshotTriggered),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn snapshot(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let applied_index = st.node.applied_index();
    st.node.trigger_snapshot().await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SnapshotTriggered { applied_index }),
    )
        .into_response())
}

fn health_of(st: &ApiState) -> (bool, Health) {
    let m = st.node.metrics();
    let ready = m.current_leader.is_some() && m.running_state.is_ok();
    let h = Health {
        id: m.id,
        status: if ready { "ok" } else { "not_ready" }.to_owned(),
        leader: m.current_leader,
        applied_index: st.node.applied_index(),
    };
    (ready, h)
}

/// Liveness: the process answers (no token needed).
#[utoipa::path(get, path = "/v1/health", tag = "cluster", security(()),
    responses((status = 200, description = "answered", body = Health)))]
async fn health(State(st): State<ApiState>) -> Json<Health> {
    Json(health_of(&st).1)
}

/// Readiness: a leader is known and Raft runs (503 otherwise; no token needed).
#[utoipa::path(get, path = "/v1/ready", tag = "cluster", security(()),
    responses((status = 200, description = "answered", body = Health), (status = 503, description = "answered", body = Health)))]
async fn ready(State(st): State<ApiState>) -> Response {
    let (ok, h) = health_of(&st);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(h)).into_response()
}
