//! Authentication and the trust endpoints: the bearer-token middleware, token management
//! (`/v1/tokens`) and the controller join (`/v1/cluster/join`).
//!
//! Join, phase 1 (here): a new controller sends its join token (role `controller_join`, single
//! use, unexpired), its id, addresses and a CSR over TLS pinned to the CA hash. The token is
//! checked from a linearizable read, the CSR is signed, then the token is consumed by a
//! compare-and-set on its revision (`PutToken` with `expect_revision`): of two concurrent
//! joins with one token exactly one gets a certificate. Phase 2 (the joining binary): with its
//! new certificate it asks a member over the mTLS Raft listener to add it (learner, then
//! voter).

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use flotilla_api::cluster::{
    Command, CommandResult, PutToken, RevokeToken, TokenInfo, TokenRecord, TokenRole,
};
use flotilla_api::rest::{
    Deleted, JoinRequest, JoinResponse, Problem, TokenCreate, TokenCreated, TokenList, TokenView,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::JsonBody;
use super::problem::ApiError;
use super::{cluster, json_at, now_ms, validate, ApiState};
use crate::auth::{self, AuthError};
use crate::node::error_chain;
use crate::tls;

/// Paths served without a bearer token.
pub const PUBLIC_PATHS: [&str; 4] = [
    "/v1/health",
    "/v1/ready",
    "/v1/cluster/join",
    "/v1/nodes/join",
];

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(join))
}

/// Who is calling (put into request extensions by `require_token`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub role: TokenRole,
    /// The node a `node` token belongs to (its description is `node:<id>`).
    pub node: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let v = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = v.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

/// Check a token on this replica. Only when its id is not known here does it look again at a
/// linearizable state (a token created a moment ago through another controller may not be
/// applied here yet), so a wrong secret for a known id costs no quorum round.
pub(super) async fn authenticate_fresh(
    st: &ApiState,
    token: &str,
    now: u64,
) -> Result<Result<TokenRecord, AuthError>, ApiError> {
    let (checked, known) = st.node.read_stale(|s| {
        let known = auth::parse_token(token).is_ok_and(|(id, _)| s.tokens.contains_key(id));
        (auth::authenticate(s, token, now), known)
    });
    if checked == Err(AuthError::Forged) && !known {
        return Ok(st
            .node
            .read_linearizable(|s| auth::authenticate(s, token, now))
            .await?);
    }
    Ok(checked)
}

/// Require a valid bearer token whose role allows the request (see `auth`).
pub(super) async fn require_token(
    State(st): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return Ok(next.run(req).await);
    }
    let unauthorized =
        |e: AuthError| ApiError::unauthorized(e.to_string()).with_field("Authorization");
    let token = bearer(req.headers()).map_err(unauthorized)?;
    let now = now_ms();
    let checked = authenticate_fresh(&st, token, now).await?;
    let record = checked.map_err(|e| {
        tracing::info!(path = req.uri().path(), error = %e, "request refused: bad token");
        unauthorized(e)
    })?;
    // A streaming exec is a GET (a WebSocket upgrade) that runs a command: a write.
    let read = (req.method() == Method::GET || req.method() == Method::HEAD)
        && !req.uri().path().ends_with("/exec/stream");
    let node = auth::node_of(&record.token);
    let node_write = record.token.role == TokenRole::Node
        && !read
        && node
            .as_deref()
            .is_some_and(|n| auth::node_may_write(n, req.method().as_str(), req.uri().path()));
    if !node_write {
        auth::authorize(record.token.role, read).map_err(|e| ApiError::forbidden(e.to_string()))?;
    }
    req.extensions_mut().insert(Caller {
        token_id: record.token.id,
        role: record.token.role,
        node,
    });
    Ok(next.run(req).await)
}

/// Create a token. The secret is in the answer only. Join tokens live 1 h by default and
/// 24 h at most.
#[utoipa::path(post, path = "/v1/tokens", tag = "trust", request_body = TokenCreate,
    responses(
        (status = 201, description = "created; `token` is shown only here", body = TokenCreated),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_token(
    State(st): State<ApiState>,
    JsonBody(req): JsonBody<TokenCreate>,
) -> Result<Response, ApiError> {
    let join = matches!(req.role, TokenRole::ControllerJoin | TokenRole::NodeJoin);
    let ttl = match (req.ttl_seconds, join) {
        (Some(0), _) => return Err(ApiError::invalid("ttlSeconds", "must be at least 1")),
        (Some(s), true) if s > auth::MAX_JOIN_TTL.as_secs() => {
            return Err(ApiError::invalid(
                "ttlSeconds",
                format!(
                    "join tokens live at most {} s",
                    auth::MAX_JOIN_TTL.as_secs()
                ),
            ))
        }
        (Some(s), false) if s > 10 * 366 * 24 * 3600 => {
            return Err(ApiError::invalid("ttlSeconds", "at most 10 years"))
        }
        (Some(s), _) => Some(std::time::Duration::from_secs(s)),
        (None, true) => Some(auth::DEFAULT_JOIN_TTL),
        (None, false) => None,
    };
    let description = req.description.unwrap_or_default();
    if description.len() > 256 || description.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "description",
            "at most 256 characters without control characters",
        ));
    }
    let t = auth::create_token(&st.node, req.role, ttl, description, now_ms())
        .await
        .map_err(|e| match e {
            auth::CreateTokenError::Write(c) => ApiError::from(c),
            other => ApiError::internal(error_chain(&other)),
        })?;
    st.wait_applied(t.revision).await?;
    let body = TokenCreated {
        id: t.id,
        token: t.token,
        role: t.role,
        expires_at_ms: t.expires_at_ms,
        ca_cert_hash: st.ca.as_ref().map(|c| c.hash()),
        revision: t.revision,
    };
    Ok(json_at(StatusCode::CREATED, t.revision, None, &body))
}

/// List tokens (never their secrets or hashes).
#[utoipa::path(get, path = "/v1/tokens", tag = "trust",
    responses(
        (status = 200, description = "answered", body = TokenList),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_tokens(State(st): State<ApiState>) -> Result<Response, ApiError> {
    st.sync(false).await?;
    let (index, items) = st.snapshot(|s| {
        s.tokens
            .values()
            .map(|t| TokenView {
                id: t.token.id.clone(),
                role: t.token.role,
                description: t.token.description.clone(),
                expires_at_ms: t.token.expires_at_ms,
                revoked: t.revoked,
                created_at_ms: t.created_at_ms,
                revision: t.revision,
            })
            .collect::<Vec<_>>()
    });
    Ok(json_at(
        StatusCode::OK,
        index,
        None,
        &TokenList { index, items },
    ))
}

/// Revoke a token.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "trust",
    params(("id" = String, Path, description = "the token id (the part before the dot)")),
    responses(
        (status = 200, description = "answered", body = Deleted),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn revoke_token(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if id.len() != auth::ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(ApiError::bad_request(
            "id",
            "a token id is 6 characters of [a-z0-9]",
        ));
    }
    if !st
        .node
        .read_linearizable(|s| s.tokens.contains_key(&id))
        .await?
    {
        return Err(ApiError::not_found(format!("token {id}")));
    }
    let resp = st
        .node
        .propose(Command::RevokeToken(RevokeToken {
            id: id.clone(),
            at_ms: now_ms(),
        }))
        .await?;
    match resp.result {
        CommandResult::Applied { revision } => {
            st.wait_applied(revision).await?;
            Ok(json_at(
                StatusCode::OK,
                revision,
                None,
                &Deleted { revision },
            ))
        }
        CommandResult::NotFound { .. } => Err(ApiError::not_found(format!("token {id}"))),
        other => Err(ApiError::conflict(format!("not revoked: {other:?}"))),
    }
}

/// Join as a controller: trade a join token and a CSR for a certificate of the cluster CA.
#[utoipa::path(post, path = "/v1/cluster/join", tag = "trust", request_body = JoinRequest, security(()),
    responses(
        (status = 200, description = "answered", body = JoinResponse),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn join(
    State(st): State<ApiState>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> Result<Json<JoinResponse>, ApiError> {
    if req.id == 0 {
        return Err(ApiError::invalid("id", "controller ids start at 1"));
    }
    validate::controller_addr("addr", &req.addr)?;
    let refused = |e: AuthError| {
        tracing::warn!(member = req.id, error = %e, "join refused");
        ApiError::unauthorized(format!("join refused: {e}")).with_field("token")
    };
    let now = now_ms();
    let record = authenticate_fresh(&st, &req.token, now)
        .await?
        .map_err(refused)?;
    if record.token.role != TokenRole::ControllerJoin {
        return Err(refused(AuthError::WrongRole {
            role: record.token.role,
            what: "join a controller",
        }));
    }
    if st.node.members().iter().any(|m| m.id == req.id) {
        return Err(
            ApiError::conflict(format!("controller {} is already a member", req.id))
                .with_field("id"),
        );
    }
    let ca = signing_ca(&st)?;
    let sans = tls::sans_for([req.addr.raft_addr.as_str(), req.addr.api_addr.as_str()]);
    let certificate = ca.sign_csr(&req.csr, req.id, &sans).map_err(|e| {
        ApiError::invalid("csr", format!("cannot sign the csr: {}", error_chain(&e)))
    })?;

    consume_join_token(
        &st,
        &record,
        format!("used by controller {} ({})", req.id, req.addr),
        now,
    )
    .await?
    .map_err(refused)?;
    tracing::info!(member = req.id, addr = %req.addr, token_id = %record.token.id, "controller certificate issued");
    let members = cluster::member_statuses(&st);
    Ok(Json(JoinResponse {
        certificate,
        ca_certificate: ca.cert_pem().to_owned(),
        ca_key: ca.key_pem().to_owned(),
        leader: members.leader,
        members: members.members,
    }))
}

/// The cluster CA with its key, to sign a joining member's CSR.
pub(super) fn signing_ca(st: &ApiState) -> Result<std::sync::Arc<tls::ClusterCa>, ApiError> {
    st.ca.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-ca-key",
            "this controller holds no cluster ca key; join through another controller",
        )
    })
}

/// Use up a join token: expire it by a compare-and-set on its revision, so of two joins with
/// one token exactly one wins (the other gets `Revoked`), then mark it revoked.
pub(super) async fn consume_join_token(
    st: &ApiState,
    record: &TokenRecord,
    description: String,
    now: u64,
) -> Result<Result<(), AuthError>, ApiError> {
    let consume = Command::PutToken(PutToken {
        token: TokenInfo {
            expires_at_ms: Some(now),
            description,
            ..record.token.clone()
        },
        expect_revision: Some(record.revision),
        at_ms: now,
    });
    match st.node.propose(consume).await?.result {
        CommandResult::Applied { .. } => {}
        CommandResult::Conflict { .. } => return Ok(Err(AuthError::Revoked)),
        other => {
            return Err(ApiError::conflict(format!(
                "join token not consumed: {other:?}"
            )))
        }
    }
    let revoke = Command::RevokeToken(RevokeToken {
        id: record.token.id.clone(),
        at_ms: now,
    });
    if let Err(e) = st.node.propose(revoke).await {
        tracing::warn!(token_id = %record.token.id, error = %e, "used join token not marked revoked (it is expired)");
    }
    Ok(Ok(()))
}
