//! Object endpoints: workloads and services (read, put, delete), nodes (read, patch, delete),
//! instances, migrations and events (read), and the raw command endpoint.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use flotilla_api::cluster::{
    Command, DeleteService, DeleteWorkload, Event, InstanceRecord, MigrationRecord, NodeRecord,
    ObjectKey, PutService, PutWorkload, RemoveNode, ServiceRecord, SetNodeDraining, UpdateNode,
    VersionedCommand, WorkloadRecord, WriteResponse,
};
use flotilla_api::rest::{
    Deleted, EventList, InstanceList, MigrationList, NodeList, NodePatch, Problem, ScaleRequest,
    ServiceList, ServiceWrite, WorkloadList, WorkloadWrite,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Precondition, ReadQuery, StrictQuery, WriteQuery};
use super::problem::ApiError;
use super::{json_at, now_ms, validate, watch, ApiState};
use crate::state::ClusterState;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_workloads))
        .routes(routes!(get_workload, put_workload, delete_workload))
        .routes(routes!(scale_workload))
        .routes(routes!(list_services))
        .routes(routes!(get_service, put_service, delete_service))
        .routes(routes!(list_nodes))
        .routes(routes!(get_node, patch_node, delete_node))
        .routes(routes!(drain_node))
        .routes(routes!(list_instances))
        .routes(routes!(get_instance))
        .routes(routes!(list_migrations))
        .routes(routes!(get_migration))
        .routes(routes!(list_events))
        .routes(routes!(raw_command))
}

/// Records that carry a revision.
trait Revisioned: Clone {
    fn revision(&self) -> u64;
}

macro_rules! revisioned {
    ($($t:ty),*) => {$(
        impl Revisioned for $t {
            fn revision(&self) -> u64 {
                self.revision
            }
        }
    )*};
}
revisioned!(
    WorkloadRecord,
    ServiceRecord,
    NodeRecord,
    InstanceRecord,
    MigrationRecord
);

type Digest = Vec<(String, u64)>;

/// A collection's items, its digest (keys and revisions) and its highest revision.
fn collection<R: Revisioned>(m: &BTreeMap<String, R>) -> (Vec<R>, Digest, u64) {
    let digest: Digest = m.iter().map(|(k, v)| (k.clone(), v.revision())).collect();
    let max = digest.iter().map(|(_, r)| *r).max().unwrap_or(0);
    (m.values().cloned().collect(), digest, max)
}

/// One object, its revision as the digest (`None`: absent).
fn one<R: Revisioned>(m: &BTreeMap<String, R>, key: &str) -> (Option<R>, Option<u64>, u64) {
    let r = m.get(key).cloned();
    let rev = r.as_ref().map(|r| r.revision());
    (r, rev, rev.unwrap_or(0))
}

fn found<R: Revisioned + serde::Serialize>(
    index: u64,
    item: Option<R>,
    what: impl std::fmt::Display,
) -> Result<Response, ApiError> {
    let item = item.ok_or_else(|| ApiError::not_found(what))?;
    Ok(json_at(StatusCode::OK, index, Some(item.revision()), &item))
}

/// Whether the command at `revision` created `key` (its event says so).
fn created(s: &ClusterState, key: &ObjectKey, revision: u64) -> bool {
    s.events
        .iter()
        .rev()
        .take_while(|e| e.revision >= revision)
        .any(|e| e.revision == revision && &e.subject == key && e.reason == "created")
}

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

/// List workloads.
#[utoipa::path(get, path = "/v1/workloads", tag = "objects", params(ReadQuery),
    responses(
        (status = 200, description = "answered", body = WorkloadList, headers(("x-flotilla-index" = u64, description = "applied index of the read"))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_workloads(
    State(st): State<ApiState>,
    StrictQuery(q): StrictQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let (index, items) = watch::read(&st, &q, |s| collection(&s.workloads)).await?;
    Ok(json_at(
        StatusCode::OK,
        index,
        None,
        &WorkloadList { index, items },
    ))
}

/// Read one workload.
#[utoipa::path(get, path = "/v1/workloads/{name}", tag = "objects",
    params(("name" = String, Path, description = "DNS-1123 label"), ReadQuery),
    responses(
        (status = 200, description = "answered", body = WorkloadRecord, headers(("x-flotilla-index" = u64), ("etag" = String, description = "\"<revision>\""))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_workload(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    StrictQuery(q): StrictQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    validate::path_label("name", &name)?;
    let (index, item) = watch::read(&st, &q, |s| one(&s.workloads, &name)).await?;
    found(index, item, format!("workload {name}"))
}

/// Create or replace a workload. 201 when created, 200 when replaced.
#[utoipa::path(put, path = "/v1/workloads/{name}", tag = "objects",
    params(
        ("name" = String, Path, description = "DNS-1123 label"),
        ("If-Match" = Option<String>, Header, description = "\"<revision>\": replace only at this revision (412 otherwise)"),
        ("If-None-Match" = Option<String>, Header, description = "*: create only (412 otherwise)"),
        WriteQuery,
    ),
    request_body = WorkloadWrite,
    responses(
        (status = 200, description = "answered", body = WorkloadRecord, description = "replaced"),
        (status = 201, body = WorkloadRecord, description = "created"),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_workload(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    StrictQuery(q): StrictQuery<WriteQuery>,
    JsonBody(body): JsonBody<WorkloadWrite>,
) -> Result<Response, ApiError> {
    validate::path_label("name", &name)?;
    let pre = Precondition::from_request(&headers, &q)?;
    validate::workload(&body, &name)?;
    st.precheck(&pre, None, |s| {
        s.workloads.get(&name).map_or(0, |w| w.revision)
    })
    .await?;
    let command = Command::PutWorkload(PutWorkload {
        spec: body.into_spec(name.clone()),
        expect_revision: pre.expect,
        at_ms: now_ms(),
    });
    let revision = st.propose(command, &pre).await?;
    let key = ObjectKey::Workload(name.clone());
    let (index, (item, was_created)) =
        st.snapshot(|s| (s.workloads.get(&name).cloned(), created(s, &key, revision)));
    let item =
        item.ok_or_else(|| ApiError::conflict(format!("workload {name} was deleted meanwhile")))?;
    let status = if was_created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_at(status, index, Some(item.revision), &item))
}

/// Set a workload's replica count (the rest of its spec stays; no rollout).
#[utoipa::path(post, path = "/v1/workloads/{name}/scale", tag = "objects",
    params(("name" = String, Path, description = "DNS-1123 label")),
    request_body = ScaleRequest,
    responses(
        (status = 200, description = "answered", body = WorkloadRecord),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn scale_workload(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<ScaleRequest>,
) -> Result<Response, ApiError> {
    validate::path_label("name", &name)?;
    validate::replicas("replicas", body.replicas)?;
    // Read-modify-write by compare-and-set on the revision; a concurrent change (a status
    // commit, another writer) makes us read again.
    for _ in 0..10 {
        let current = st
            .node
            .read_linearizable(|s| s.workloads.get(&name).cloned())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("workload {name}")))?;
        if current.deleting {
            return Err(ApiError::conflict(format!(
                "workload {name} is being deleted"
            )));
        }
        let mut spec = current.spec.clone();
        spec.replicas = body.replicas;
        let command = Command::PutWorkload(PutWorkload {
            spec,
            expect_revision: Some(current.revision),
            at_ms: now_ms(),
        });
        let resp = st.node.propose(command).await?;
        match resp.result {
            flotilla_api::cluster::CommandResult::Conflict { .. } => continue,
            flotilla_api::cluster::CommandResult::Applied { revision } => {
                st.wait_applied(revision).await?;
                let (index, item) = st.snapshot(|s| s.workloads.get(&name).cloned());
                return found(index, item, format!("workload {name}"));
            }
            flotilla_api::cluster::CommandResult::Rejected { reason } => {
                return Err(ApiError::conflict(reason))
            }
            other => return Err(ApiError::conflict(format!("{other:?}"))),
        }
    }
    Err(ApiError::conflict(format!(
        "workload {name} kept changing; try again"
    )))
}

/// Delete a workload.
#[utoipa::path(delete, path = "/v1/workloads/{name}", tag = "objects",
    params(
        ("name" = String, Path, description = "DNS-1123 label"),
        ("If-Match" = Option<String>, Header, description = "\"<revision>\": delete only at this revision"),
        WriteQuery,
    ),
    responses(
        (status = 200, description = "answered", body = Deleted),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_workload(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    StrictQuery(q): StrictQuery<WriteQuery>,
) -> Result<Response, ApiError> {
    validate::path_label("name", &name)?;
    let pre = Precondition::from_request(&headers, &q)?;
    let what = format!("workload {name}");
    st.precheck(&pre, Some(&what), |s| {
        s.workloads.get(&name).map_or(0, |w| w.revision)
    })
    .await?;
    let command = Command::DeleteWorkload(DeleteWorkload {
        name: name.clone(),
        expect_revision: pre.expect,
        at_ms: now_ms(),
    });
    let revision = st.propose(command, &pre).await?;
    Ok(json_at(
        StatusCode::OK,
        revision,
        None,
        &Deleted { revision },
    ))
}

// ---------------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------------

/// List services.
#[utoipa::path(get, path = "/v1/services", tag = "objects", params(ReadQuery),
    responses(
        (status = 200, description = "answered", body = ServiceList, headers(("x-flotilla-index" = u64))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_services(
    State(st): State<ApiState>,
    StrictQuery(q): StrictQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let (index, items) = watch::read(&st, &q, |s| collection(&s.services)).await?;
    Ok(json_at(
        StatusCode::OK,
        index,
        None,
        &ServiceList { index, items },
    ))
}

/// Read one service.
#[utoipa::path(get, path = "/v1/services/{name}", tag = "objects",
    params(("name" = String, Path, description = "DNS-1123 label"), ReadQuery),
    responses(
        (status = 200, description = "answered", body = ServiceRecord, headers(("x-flotilla-index" = u64), ("etag" = String))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_service(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    StrictQuery(q): StrictQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    validate::path_label("name", &name)?;
    let (index, item) = watch::read(&st, &q, |s| one(&s.services, &name)).await?;
    found(index, item, format!("service {name}"))
}

/// Create or replace a service. 201 when created, 200 when replaced.
#[utoipa::path(put, path = "/v1/services/{name}", tag = "objects",
    params(
        ("name" = String, Path, description = "DNS-1123 label"),
        ("If-Match" = Option<String>, Header, description = "\"<revision>\": replace only at this revision (412 otherwise)"),
        ("If-None-Match" = Option<String>, Header, description = "*: create only (412 otherwise)"),
        WriteQuery,
    ),
    request_body = ServiceWrite,
    responses(
        (status = 200, description = "answered", body = ServiceRecord, description = "replaced"),
        (status = 201, body = ServiceRecord, description = "created"),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_service(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    StrictQuery(q): StrictQuery<WriteQuery>,
    JsonBody(body): JsonBody<ServiceWrite>,
) -> Result<Response, ApiError> {
    validate::path_label("name", &name)?;
    let pre = Precondition::from_request(&headers, &q)?;
    validate::service(&body, &name)?;
    st.precheck(&pre, None, |s| {
        s.services.get(&name).map_or(0, |w| w.revision)
    })
    .await?;
    let command = Command::PutService(PutService {
        service: body.into_spec(name.clone()),
        expect_revision: pre.expect,
        at_ms: now_ms(),
    });
    let revision = st.propose(command, &pre).await?;
    let key = ObjectKey::Service(name.clone());
    let (index, (item, was_created)) =
        st.snapshot(|s| (s.services.get(&name).cloned(), created(s, &key, revision)));
    let item =
        item.ok_or_else(|| ApiError::conflict(format!("service {name} was deleted meanwhile")))?;
    let status = if was_created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_at(status, index, Some(item.revision), &item))
}

/// Delete a service.
#[utoipa::path(delete, path = "/v1/services/{name}", tag = "objects",
    params(
        ("name" = String, Path, description = "DNS-1123 label"),
        ("If-Match" = Option<String>, Header, description = "\"<revision>\": delete only at this revision"),
        WriteQuery,
    ),
    responses(
        (status = 200, description = "answered", body = Deleted),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_service(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    StrictQuery(q): StrictQuery<WriteQuery>,
) -> Result<Response, ApiError> {
    validate::path_label("name", &name)?;
    let pre = Precondition::from_request(&headers, &q)?;
    let what = format!("service {name}");
    st.precheck(&pre, Some(&what), |s| {
        s.services.get(&name).map_or(0, |w| w.revision)
    })
    .await?;
    let command = Command::DeleteService(DeleteService {
        name: name.clone(),
        expect_revision: pre.expect,
        at_ms: now_ms(),
    });
    let revision = st.propose(command, &pre).await?;
    Ok(json_at(
        StatusCode::OK,
        revision,
        None,
        &Deleted { revision },
    ))
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

/// List nodes.
#[utoipa::path(get, path = "/v1/nodes", tag = "objects", params(ReadQuery),
    responses(
        (status = 200, description = "answered", body = NodeList, headers(("x-flotilla-index" = u64))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_nodes(
    State(st): State<ApiState>,
    StrictQuery(q): StrictQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let (index, mut items) = watch::read(&st, &q, |s| collection(&s.nodes)).await?;
    let now = now_ms();
    for n in &mut items {
        with_readiness(n, now);
    }
    Ok(json_at(
        StatusCode::OK,
        index,
        None,
        &NodeList { index, items },
    ))
}

/// Read one node.
#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "objects",
    params(("id" = String, Path, description = "DNS-1123 subdomain"), ReadQuery),
    responses(
        (status = 200, description = "answered", body = NodeRecord, headers(("x-flotilla-index" = u64), ("etag" = String))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_node(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    StrictQuery(q): StrictQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    validate::path_subdomain("id", &id)?;
    let (index, mut item) = watch::read(&st, &q, |s| one(&s.nodes, &id)).await?;
    if let Some(n) = &mut item {
        with_readiness(n, now_ms());
    }
    found(index, item, format!("node {id}"))
}

/// Cordon, uncordon or relabel a node.
#[utoipa::path(patch, path = "/v1/nodes/{id}", tag = "objects",
    params(
        ("id" = String, Path, description = "DNS-1123 subdomain"),
        ("If-Match" = Option<String>, Header, description = "\"<revision>\": change only at this revision"),
        WriteQuery,
    ),
    request_body = NodePatch,
    responses(
        (status = 200, description = "answered", body = NodeRecord),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn patch_node(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    StrictQuery(q): StrictQuery<WriteQuery>,
    JsonBody(body): JsonBody<NodePatch>,
) -> Result<Response, ApiError> {
    validate::path_subdomain("id", &id)?;
    let pre = Precondition::from_request(&headers, &q)?;
    validate::node_patch(&body)?;
    let what = format!("node {id}");
    st.precheck(&pre, Some(&what), |s| {
        s.nodes.get(&id).map_or(0, |n| n.revision)
    })
    .await?;
    let command = Command::UpdateNode(UpdateNode {
        id: id.clone(),
        address: None,
        labels: body.labels,
        capacity: None,
        features: None,
        schedulable: body.schedulable,
        expect_revision: pre.expect,
        at_ms: now_ms(),
    });
    st.propose(command, &pre).await?;
    let (index, mut item) = st.snapshot(|s| s.nodes.get(&id).cloned());
    if let Some(n) = &mut item {
        with_readiness(n, now_ms());
    }
    found(index, item, what)
}

/// Fill in `ready` (the lease is valid on this controller's clock).
fn with_readiness(n: &mut NodeRecord, now: u64) {
    n.ready = Some(n.lease_valid(now));
}

/// Drain a node: no new placements (it is cordoned), its instances are replaced elsewhere
/// first, then stopped. An uncordon (`PATCH {"schedulable": true}`) ends the drain.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "objects",
    params(("id" = String, Path, description = "DNS-1123 subdomain")),
    responses(
        (status = 200, description = "answered", body = NodeRecord),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn drain_node(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    StrictQuery(q): StrictQuery<WriteQuery>,
) -> Result<Response, ApiError> {
    validate::path_subdomain("id", &id)?;
    let pre = Precondition::from_request(&HeaderMap::new(), &q)?;
    let what = format!("node {id}");
    st.precheck(&pre, Some(&what), |s| {
        s.nodes.get(&id).map_or(0, |n| n.revision)
    })
    .await?;
    let command = Command::SetNodeDraining(SetNodeDraining {
        id: id.clone(),
        draining: true,
        at_ms: now_ms(),
    });
    st.propose(command, &pre).await?;
    let (index, mut item) = st.snapshot(|s| s.nodes.get(&id).cloned());
    if let Some(n) = &mut item {
        with_readiness(n, now_ms());
    }
    found(index, item, what)
}

/// Remove a node from the cluster state.
#[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "objects",
    params(
        ("id" = String, Path, description = "DNS-1123 subdomain"),
        ("If-Match" = Option<String>, Header, description = "\"<revision>\": delete only at this revision"),
        WriteQuery,
    ),
    responses(
        (status = 200, description = "answered", body = Deleted),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_node(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    StrictQuery(q): StrictQuery<WriteQuery>,
) -> Result<Response, ApiError> {
    validate::path_subdomain("id", &id)?;
    let pre = Precondition::from_request(&headers, &q)?;
    let what = format!("node {id}");
    st.precheck(&pre, Some(&what), |s| {
        s.nodes.get(&id).map_or(0, |n| n.revision)
    })
    .await?;
    let command = Command::RemoveNode(RemoveNode {
        id: id.clone(),
        expect_revision: pre.expect,
        at_ms: now_ms(),
    });
    let revision = st.propose(command, &pre).await?;
    Ok(json_at(
        StatusCode::OK,
        revision,
        None,
        &Deleted { revision },
    ))
}

// ---------------------------------------------------------------------------------------------
// Instances, migrations, events (read-only)
// ---------------------------------------------------------------------------------------------

/// List instances (`node`: only those the node owns, an agent's assignments).
#[utoipa::path(get, path = "/v1/instances", tag = "objects", params(super::agents::InstanceListQuery),
    responses(
        (status = 200, description = "answered", body = InstanceList, headers(("x-flotilla-index" = u64))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_instances(
    State(st): State<ApiState>,
    StrictQuery(q): StrictQuery<super::agents::InstanceListQuery>,
) -> Result<Response, ApiError> {
    let (q, node) = q.split()?;
    let (index, items) = watch::read(&st, &q, |s| match &node {
        None => collection(&s.instances),
        Some(n) => {
            let mine = s
                .instances
                .iter()
                .filter(|(_, i)| i.owner_node.as_ref() == Some(n));
            let digest: Digest = mine.clone().map(|(k, v)| (k.clone(), v.revision)).collect();
            let max = digest.iter().map(|(_, r)| *r).max().unwrap_or(0);
            (mine.map(|(_, v)| v.clone()).collect(), digest, max)
        }
    })
    .await?;
    Ok(json_at(
        StatusCode::OK,
        index,
        None,
        &InstanceList { index, items },
    ))
}

/// Read one instance.
#[utoipa::path(get, path = "/v1/instances/{id}", tag = "objects",
    params(("id" = String, Path, description = "DNS-1123 subdomain"), ReadQuery),
    responses(
        (status = 200, description = "answered", body = InstanceRecord, headers(("x-flotilla-index" = u64), ("etag" = String))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_instance(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    StrictQuery(q): StrictQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    validate::path_subdomain("id", &id)?;
    let (index, item) = watch::read(&st, &q, |s| one(&s.instances, &id)).await?;
    found(index, item, format!("instance {id}"))
}

/// List migrations.
#[utoipa::path(get, path = "/v1/migrations", tag = "objects", params(ReadQuery),
    responses(
        (status = 200, description = "answered", body = MigrationList, headers(("x-flotilla-index" = u64))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_migrations(
    State(st): State<ApiState>,
    StrictQuery(q): StrictQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let (index, items) = watch::read(&st, &q, |s| collection(&s.migrations)).await?;
    Ok(json_at(
        StatusCode::OK,
        index,
        None,
        &MigrationList { index, items },
    ))
}

/// Read one migration.
#[utoipa::path(get, path = "/v1/migrations/{id}", tag = "objects",
    params(("id" = String, Path, description = "DNS-1123 subdomain"), ReadQuery),
    responses(
        (status = 200, description = "answered", body = MigrationRecord, headers(("x-flotilla-index" = u64), ("etag" = String))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_migration(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    StrictQuery(q): StrictQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    validate::path_subdomain("id", &id)?;
    let (index, item) = watch::read(&st, &q, |s| one(&s.migrations, &id)).await?;
    found(index, item, format!("migration {id}"))
}

/// The cluster's recent events (a bounded ring, oldest first).
#[utoipa::path(get, path = "/v1/events", tag = "objects", params(ReadQuery),
    responses(
        (status = 200, description = "answered", body = EventList, headers(("x-flotilla-index" = u64))),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_events(
    State(st): State<ApiState>,
    StrictQuery(q): StrictQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let (index, items) = watch::read(&st, &q, |s| {
        let items: Vec<Event> = s.events.iter().cloned().collect();
        let max = items.last().map_or(0, |e| e.revision);
        (items, s.last_event_seq, max)
    })
    .await?;
    Ok(json_at(
        StatusCode::OK,
        index,
        None,
        &EventList { index, items },
    ))
}

// ---------------------------------------------------------------------------------------------
// Raw commands
// ---------------------------------------------------------------------------------------------

/// The first key path of `input` that `output` (its re-serialization) lacks: a field the
/// lenient Raft types ignored.
fn ignored_field(
    input: &serde_json::Value,
    output: &serde_json::Value,
    path: &str,
) -> Option<String> {
    match (input, output) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            a.iter().find_map(|(k, v)| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None => Some(p),
                    Some(w) => ignored_field(v, w, &p),
                }
            })
        }
        (serde_json::Value::Array(a), serde_json::Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| ignored_field(v, w, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Propose a raw versioned Raft command (administration and benchmarks). The answer is the
/// apply result, whatever it is; token commands are refused (use the token endpoints).
#[utoipa::path(post, path = "/v1/commands", tag = "objects",
    request_body = VersionedCommand,
    responses(
        (status = 200, description = "answered", body = WriteResponse),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn raw_command(
    State(st): State<ApiState>,
    JsonBody(value): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let command: VersionedCommand = super::extract::decode_json(value.to_string().as_bytes())?;
    let back = serde_json::to_value(&command).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(field) = ignored_field(&value, &back, "") {
        return Err(ApiError::invalid(
            field.clone(),
            format!("unknown field `{field}`"),
        ));
    }
    if matches!(
        command.command,
        Command::PutToken(_) | Command::RevokeToken(_)
    ) {
        return Err(
            ApiError::forbidden("token commands go through /v1/tokens").with_field("command.type")
        );
    }
    let resp = st.node.write(command).await?;
    st.wait_applied(resp.index).await?;
    Ok(json_at(StatusCode::OK, resp.index, None, &resp))
}
