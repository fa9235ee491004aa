//! `ApiError`: every error the API answers, rendered as an RFC 9457 problem document
//! (`application/problem+json`) that names the wrong field. 5xx causes are logged by the
//! `log_errors` middleware inside the request span and never exposed beyond their message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_api::rest::{Problem, PROBLEM_JSON};

use crate::node::{error_chain, ControllerError};

/// An API error: a status, a stable code, a message and optionally the field at fault.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
    pub current_revision: Option<u64>,
    /// Extra headers (`WWW-Authenticate`, `Allow`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
            current_revision: None,
            headers: Vec::new(),
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400: the request is malformed (syntax, a bad header, query or path parameter).
    pub fn bad_request(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail).with_field(field)
    }

    /// 422: well-formed but invalid (wrong type, unknown field, value out of range).
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", detail).with_field(field)
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("{what} not found"),
        )
    }

    /// A conditional request lost: 412 for `If-Match`/`If-None-Match`, 409 for `checkIndex`.
    pub fn revision_mismatch(status: StatusCode, expected: u64, current: u64) -> Self {
        let detail = if current == 0 {
            format!("expected revision {expected} but the object does not exist")
        } else if expected == 0 {
            format!("expected the object to be absent but it exists at revision {current}")
        } else {
            format!("expected revision {expected} but the object is at revision {current}")
        };
        let mut e = Self::new(status, "revision-mismatch", detail);
        e.current_revision = Some(current);
        e
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
        e.headers.push((
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"flotilla\""),
        ));
        e
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("urn:flotilla:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: Some(self.detail.clone()),
            instance: None,
            code: self.code.to_owned(),
            field: self.field.clone(),
            current_revision: self.current_revision,
        }
    }
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
        let (status, code) = match &e {
            ControllerError::NoLeader { .. } | ControllerError::QuorumNotEnough => {
                (StatusCode::SERVICE_UNAVAILABLE, "no-quorum")
            }
            ControllerError::Forward { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "leader-unreachable")
            }
            ControllerError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "outcome-unknown"),
            ControllerError::Membership(_) => (StatusCode::CONFLICT, "membership-refused"),
            ControllerError::Remote { .. } => (StatusCode::BAD_GATEWAY, "leader-failed"),
            ControllerError::Config(_) | ControllerError::Store(_) | ControllerError::Fatal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Self::new(status, code, error_chain(&e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        // Let the logging middleware see what went wrong without parsing the body.
        resp.extensions_mut().insert(LoggedError {
            code: self.code,
            detail: self.detail,
        });
        resp
    }
}

/// What the `log_errors` middleware logs for a 5xx.
#[derive(Debug, Clone)]
pub struct LoggedError {
    pub code: &'static str,
    pub detail: String,
}
