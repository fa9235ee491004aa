//! Tokens: bearer tokens for the API and join tokens for new controllers.
//!
//! A token is `<id>.<secret>` (kubeadm's shape: `[a-z0-9]{6}.[a-z0-9]{16}` for join tokens,
//! a 32-character secret for API tokens). The cluster state keeps only the SHA-256 of the
//! secret, the role and the expiry (`TokenInfo`); the secret is shown once. Expiry is compared
//! with the wall clock by the controller that checks the token, never inside apply.
//!
//! Roles: `admin` may do everything; `read_only` may read (GET, HEAD); `controller_join` and
//! `node_join` are no API credentials: they admit a controller or a node once.

use std::time::Duration;

use flotilla_api::cluster::{Command, CommandResult, PutToken, TokenInfo, TokenRecord, TokenRole};

use crate::node::{ControllerError, ControllerNode};
use crate::state::ClusterState;

/// Length of the id part.
pub const ID_LEN: usize = 6;
/// Secret length of join tokens (kubeadm's 16: 82 bits).
pub const JOIN_SECRET_LEN: usize = 16;
/// Secret length of API tokens (165 bits).
pub const API_SECRET_LEN: usize = 32;
/// Join tokens live at most this long.
pub const MAX_JOIN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Join tokens live this long unless asked otherwise.
pub const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(3600);

/// Why a token was refused. The variants after `Forged` are only reported to a caller that
/// knew the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token given (Authorization: Bearer <id>.<secret>)")]
    Missing,
    #[error("the token is not of the form <id>.<secret>")]
    Malformed,
    #[error("the token is unknown or its secret is wrong")]
    Forged,
    #[error("the token was revoked")]
    Revoked,
    #[error("the token expired")]
    Expired,
    #[error("the token has role {role:?}, which cannot {what}")]
    WrongRole { role: TokenRole, what: &'static str },
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateTokenError {
    #[error("cannot draw random bytes")]
    Random,
    #[error("cannot store the token")]
    Write(#[from] ControllerError),
    #[error("the token was not stored: {0:?}")]
    Refused(CommandResult),
}

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `n` characters of `[a-z0-9]`, uniformly (rejection sampling over random bytes).
fn random_chars(n: usize) -> Result<String, CreateTokenError> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        rng.fill(&mut buf).map_err(|_| CreateTokenError::Random)?;
        for b in buf {
            // 252 = 7 * 36: bytes above it would bias the draw.
            if b < 252 && out.len() < n {
                out.push(ALPHABET[(b % 36) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// Hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    crate::tls::hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Split `<id>.<secret>` and check the alphabet and lengths.
pub fn parse_token(token: &str) -> Result<(&str, &str), AuthError> {
    let (id, secret) = token.split_once('.').ok_or(AuthError::Malformed)?;
    let ok = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if id.len() != ID_LEN || !(16..=64).contains(&secret.len()) || !ok(id) || !ok(secret) {
        return Err(AuthError::Malformed);
    }
    Ok((id, secret))
}

/// Equality in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Check `token` against the cluster state at wall-clock time `now_ms`.
pub fn authenticate(
    state: &ClusterState,
    token: &str,
    now_ms: u64,
) -> Result<TokenRecord, AuthError> {
    let (id, secret) = parse_token(token)?;
    let record = state.tokens.get(id).ok_or(AuthError::Forged)?;
    let want = record.token.secret_sha256.as_bytes();
    if !constant_time_eq(hash_secret(secret).as_bytes(), want) {
        return Err(AuthError::Forged);
    }
    if record.revoked {
        return Err(AuthError::Revoked);
    }
    if record.token.expires_at_ms.is_some_and(|e| e <= now_ms) {
        return Err(AuthError::Expired);
    }
    Ok(record.clone())
}

/// Whether `role` may call an endpoint with this method (`read`: GET or HEAD).
pub fn authorize(role: TokenRole, read: bool) -> Result<(), AuthError> {
    match role {
        TokenRole::Admin => Ok(()),
        TokenRole::ReadOnly | TokenRole::Node if read => Ok(()),
        // Node writes are limited to the node's own heartbeat and reports, checked by path.
        TokenRole::Node => Err(AuthError::WrongRole {
            role,
            what: "change the cluster",
        }),
        TokenRole::ReadOnly => Err(AuthError::WrongRole {
            role,
            what: "change the cluster",
        }),
        TokenRole::ControllerJoin | TokenRole::NodeJoin => Err(AuthError::WrongRole {
            role,
            what: "call the api (it only joins)",
        }),
    }
}

/// Description prefix of a node's API token (`node:<id>`).
pub const NODE_TOKEN_PREFIX: &str = "node:";

/// The node a `node` token belongs to.
pub fn node_of(token: &TokenInfo) -> Option<String> {
    if token.role != TokenRole::Node {
        return None;
    }
    token
        .description
        .strip_prefix(NODE_TOKEN_PREFIX)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// The writes a node token may make: its own heartbeat and status reports of instances (the
/// handler and the state machine check that the node owns the instance at the current epoch).
pub fn node_may_write(node: &str, method: &str, path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["v1", "nodes", id, "heartbeat"]) => *id == node,
        ("PUT", ["v1", "instances", id, "status"]) => !id.is_empty(),
        _ => false,
    }
}

/// A token just created: the full `<id>.<secret>` is only here.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    pub token: String,
    pub role: TokenRole,
    pub expires_at_ms: Option<u64>,
    pub revision: u64,
}

/// Create and store a token with `role`, valid for `ttl` from `now_ms` (`None`: no expiry).
pub async fn create_token(
    node: &ControllerNode,
    role: TokenRole,
    ttl: Option<Duration>,
    description: String,
    now_ms: u64,
) -> Result<NewToken, CreateTokenError> {
    let secret_len = match role {
        TokenRole::ControllerJoin | TokenRole::NodeJoin => JOIN_SECRET_LEN,
        TokenRole::Admin | TokenRole::ReadOnly | TokenRole::Node => API_SECRET_LEN,
    };
    let id = random_chars(ID_LEN)?;
    let secret = random_chars(secret_len)?;
    let expires_at_ms = ttl.map(|t| now_ms.saturating_add(t.as_millis() as u64));
    let command = Command::PutToken(PutToken {
        token: TokenInfo {
            id: id.clone(),
            secret_sha256: hash_secret(&secret),
            role,
            description,
            expires_at_ms,
        },
        // A fresh id: refuse rather than overwrite in the (2^-31) case of a collision.
        expect_revision: Some(0),
        at_ms: now_ms,
    });
    let resp = node.propose(command).await?;
    match resp.result {
        CommandResult::Applied { revision } => {
            tracing::info!(token_id = %id, ?role, revision, "token created");
            Ok(NewToken {
                token: format!("{id}.{secret}"),
                id,
                role,
                expires_at_ms,
                revision,
            })
        }
        other => Err(CreateTokenError::Refused(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_kubeadm_shape_and_verify_only_with_their_secret() {
        let id = random_chars(ID_LEN).unwrap();
        let secret = random_chars(JOIN_SECRET_LEN).unwrap();
        let token = format!("{id}.{secret}");
        let re_ok = token.len() == 23
            && token.bytes().enumerate().all(|(i, b)| {
                if i == 6 {
                    b == b'.'
                } else {
                    b.is_ascii_lowercase() || b.is_ascii_digit()
                }
            });
        assert!(re_ok, "{token}");
        let mut state = ClusterState::default();
        state.apply(
            1,
            &Command::PutToken(PutToken {
                token: TokenInfo {
                    id: id.clone(),
                    secret_sha256: hash_secret(&secret),
                    role: TokenRole::Admin,
                    description: String::new(),
                    expires_at_ms: Some(1000),
                },
                expect_revision: None,
                at_ms: 0,
            }),
        );
        assert!(authenticate(&state, &token, 999).is_ok());
        assert_eq!(authenticate(&state, &token, 1000), Err(AuthError::Expired));
        let forged = format!("{id}.{}", "a".repeat(16));
        assert_eq!(authenticate(&state, &forged, 0), Err(AuthError::Forged));
        assert_eq!(authenticate(&state, "nope", 0), Err(AuthError::Malformed));
        assert_eq!(
            authenticate(&state, "abcdef.ABCDEFGHIJKLMNOP", 0),
            Err(AuthError::Malformed)
        );
        assert!(authorize(TokenRole::ReadOnly, true).is_ok());
        assert!(authorize(TokenRole::ReadOnly, false).is_err());
        assert!(authorize(TokenRole::ControllerJoin, true).is_err());
        assert!(node_may_write("n1", "POST", "/v1/nodes/n1/heartbeat"));
        assert!(!node_may_write("n1", "POST", "/v1/nodes/n2/heartbeat"));
        assert!(!node_may_write("n1", "POST", "/v1/nodes/n1/heartbeat/x"));
        assert!(node_may_write("n1", "PUT", "/v1/instances/i1/status"));
        assert!(!node_may_write("n1", "PUT", "/v1/workloads/w"));
        assert!(!node_may_write("n1", "DELETE", "/v1/nodes/n1"));
    }
}
