//! The controller's REST API under `/v1` (axum), on top of an `Arc<ControllerNode>`.
//!
//! * Objects: nodes, workloads, instances, services, migrations, events; workloads and
//!   services are user-writable, nodes accept operator patches, the rest is read-only.
//! * Cluster: status, members (roles and health), leader, Raft metrics, add/remove member,
//!   snapshot.
//! * Every object carries `revision` (the Raft index that last changed it) and reads answer
//!   `X-Flotilla-Index` (the applied index they were served at). Writes take a precondition
//!   (`If-Match: "<revision>"`, `If-None-Match: *` or `?checkIndex=N`) and refuse lost updates.
//! * Reads are linearizable (read-index) unless `?stale=true`; `?index=N&wait=30s` makes a read
//!   a blocking query; `/v1/watch?from=N` streams changes as server-sent events.
//! * Any controller accepts every request: writes go to the leader through `ControllerNode`.
//! * Errors are `application/problem+json` naming the field (`problem`, `extract`, `validate`).
//!
//! The OpenAPI document is built from the handlers (utoipa) and served at `/v1/openapi.json`;
//! `docs/openapi.json` is its checked-in copy.

mod agents;
mod cluster;
mod extract;
mod objects;
pub mod problem;
pub mod tokens;
pub mod validate;
mod watch;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use flotilla_api::cluster::{Command, CommandResult};
use flotilla_api::rest::{INDEX_HEADER, PROBLEM_JSON};
use serde::Serialize;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use self::extract::Precondition;
use self::problem::{ApiError, LoggedError};
use crate::node::ControllerNode;
use crate::state::ClusterState;
use crate::tls::ClusterCa;

/// Largest request body the API accepts (413 beyond).
pub const MAX_BODY: usize = 1 << 20;

/// How long a blocking query waits when `wait` is not given.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub node: Arc<ControllerNode>,
    /// The cluster CA with its key: this controller can admit joining controllers.
    pub ca: Option<Arc<ClusterCa>>,
}

/// The bearer-token security scheme of the document.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("<id>.<secret>")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Flotilla controller API",
        description = "The cluster state of Flotilla, replicated by Raft. Errors are RFC 9457 problem documents.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "objects", description = "Nodes, workloads, instances, services, migrations and events"),
        (name = "watch", description = "Blocking queries and server-sent events"),
        (name = "cluster", description = "The controllers' Raft group"),
        (name = "trust", description = "Tokens and controller joins"),
        (name = "agents", description = "Node join, heartbeats and instance reports (docs/cluster-protocol.md)"),
    )
)]
struct ApiDoc;

/// The router and the OpenAPI document, built together from the handlers.
pub fn router_and_spec(state: ApiState) -> (Router, utoipa::openapi::OpenApi) {
    let (router, spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(objects::routes())
        .merge(cluster::routes())
        .merge(watch::routes())
        .merge(tokens::routes())
        .merge(agents::routes())
        .split_for_parts();
    let doc = spec.clone();
    let router = router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc) }
            }),
        )
        .with_state(state.clone())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state, tokens::require_token))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(middleware::map_response(problemize))
        .layer(middleware::from_fn(log_errors))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    (router, spec)
}

/// The API router for `node` (bearer tokens required; no CA, so no joins).
pub fn router(node: Arc<ControllerNode>) -> Router {
    router_and_spec(ApiState { node, ca: None }).0
}

/// The OpenAPI document (the same one the router serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    OpenApiRouter::<ApiState>::with_openapi(ApiDoc::openapi())
        .merge(objects::routes())
        .merge(cluster::routes())
        .merge(watch::routes())
        .merge(tokens::routes())
        .merge(agents::routes())
        .into_openapi()
}

/// The checked-in form of the document: pretty JSON with a trailing newline.
pub fn openapi_json() -> String {
    let mut s = openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("path {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("method {method} is not allowed here; see the Allow header"),
    )
}

/// Make every error response a problem document, including those axum and tower-http build
/// themselves (413 from the body limit, 400 from a path that does not decode).
async fn problemize(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if is_problem {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::NOT_FOUND => "not-found",
        s if s.is_server_error() => "internal",
        _ => "bad-request",
    };
    let detail = if detail.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        detail
    };
    let mut e = ApiError::new(status, code, detail);
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        e = e.with_field("body");
    }
    let mut out = e.into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// Log server errors inside the request span; client errors at debug.
async fn log_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    if let Some(e) = resp.extensions().get::<LoggedError>() {
        if status.is_server_error() {
            tracing::warn!(%method, path, status = status.as_u16(), code = e.code, error = %e.detail, "request failed");
        } else {
            tracing::debug!(%method, path, status = status.as_u16(), code = e.code, error = %e.detail, "request refused");
        }
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the handlers
// ---------------------------------------------------------------------------------------------

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A JSON answer with `X-Flotilla-Index` (and `ETag` for one object).
pub(crate) fn json_at<T: Serialize>(
    status: StatusCode,
    index: u64,
    etag: Option<u64>,
    body: &T,
) -> Response {
    let mut resp = (status, Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(INDEX_HEADER, HeaderValue::from(index));
    if let Some(rev) = etag {
        if let Ok(v) = HeaderValue::from_str(&extract::etag(rev)) {
            h.insert(header::ETAG, v);
        }
    }
    resp
}

impl ApiState {
    /// Make the local replica current unless the client asked for a stale read.
    pub(crate) async fn sync(&self, stale: bool) -> Result<(), ApiError> {
        if !stale {
            self.node.read_linearizable(|_| ()).await?;
        }
        Ok(())
    }

    /// Read the local replica with the applied index taken first, so that the state read is at
    /// least as new as the index reported.
    pub(crate) fn snapshot<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> (u64, T) {
        let index = self.node.applied_index();
        (index, self.node.read_stale(f))
    }

    /// Wait until this replica has applied `index` (read-your-writes after a forwarded write).
    pub(crate) async fn wait_applied(&self, index: u64) -> Result<(), ApiError> {
        self.node
            .raft()
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(index), "write applied locally")
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "outcome-unknown",
                    format!("the write committed at {index} is not applied here yet"),
                )
            })?;
        Ok(())
    }

    /// Propose `command`; `Applied` gives its revision, refusals become problems.
    pub(crate) async fn propose(
        &self,
        command: Command,
        pre: &Precondition,
    ) -> Result<u64, ApiError> {
        let resp = self.node.propose(command).await?;
        let revision = result_to_revision(resp.result, pre)?;
        self.wait_applied(revision).await?;
        Ok(revision)
    }

    /// Refuse a write before proposing it when its precondition fails or its object is
    /// missing, so that an invalid request leaves no log entry. `current` reads the object's
    /// revision (0: absent). A refusal seen on the local replica is confirmed linearizably
    /// first; the state machine checks again when the command applies.
    pub(crate) async fn precheck(
        &self,
        pre: &Precondition,
        must_exist: Option<&str>,
        current: impl Fn(&ClusterState) -> u64,
    ) -> Result<(), ApiError> {
        let refuse = |rev: u64| -> Option<ApiError> {
            match pre.expect {
                Some(want) if want != rev => Some(pre.failed(rev)),
                None if rev == 0 => must_exist.map(ApiError::not_found),
                _ => None,
            }
        };
        if refuse(self.node.read_stale(&current)).is_none() {
            return Ok(());
        }
        let rev = self.node.read_linearizable(&current).await?;
        match refuse(rev) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn result_to_revision(result: CommandResult, pre: &Precondition) -> Result<u64, ApiError> {
    match result {
        CommandResult::Applied { revision } => Ok(revision),
        CommandResult::Conflict { current } => Err(pre.failed(current)),
        CommandResult::NotFound { key } => Err(ApiError::not_found(key)),
        CommandResult::StaleEpoch { current } => Err(ApiError::conflict(format!(
            "stale epoch; the current epoch is {current}"
        ))),
        CommandResult::Rejected { reason } => Err(ApiError::conflict(reason)),
    }
}
