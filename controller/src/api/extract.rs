//! Extractors that answer bad input with a problem naming the field: JSON bodies (content
//! type, size, syntax, then the JSON path of a wrong type, unknown or missing field through
//! `serde_path_to_error`), query strings (unknown parameters refused) and preconditions
//! (`If-Match`, `If-None-Match`, `checkIndex`).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::problem::ApiError;

/// A JSON request body; see the module doc.
pub struct JsonBody<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Turn a `serde_path_to_error` path into the field name the problem reports: `.` (the root)
/// becomes the missing field named in the message, when there is one.
fn field_of(path: &str, message: &str) -> String {
    let missing = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(f)) => f.to_owned(),
        (".", None) => "body".to_owned(),
        (p, Some(f)) => format!("{p}.{f}"),
        (p, None) => p.to_owned(),
    }
}

/// Decode `bytes` as `T`, mapping errors to problems: syntax → 400, data → 422 naming the path.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = inner.to_string();
                ApiError::invalid(field_of(&path, &message), message)
            }
            _ => ApiError::bad_request("body", format!("malformed json: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request("body", format!("malformed json: {e}")))?;
    Ok(value)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "the body must be application/json",
            )
            .with_field("content-type"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    format!("the body exceeds {} bytes", super::MAX_BODY),
                )
                .with_field("body")
            } else {
                ApiError::bad_request("body", format!("cannot read the body: {}", r.body_text()))
            }
        })?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(ApiError::invalid("body", "the body must be a JSON object"));
        }
        decode_json(&bytes).map(JsonBody)
    }
}

/// A query string decoded strictly: unknown parameters and bad values name the parameter.
pub struct StrictQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(StrictQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                let field = match path.as_str() {
                    "." => message
                        .strip_prefix("unknown field `")
                        .and_then(|r| r.split('`').next())
                        .unwrap_or("query")
                        .to_owned(),
                    p => p.to_owned(),
                };
                ApiError::bad_request(field, format!("bad query parameter: {message}"))
            })
    }
}

/// Query parameters of reads.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReadQuery {
    /// Read this controller's replica without the read-index round (may lag).
    #[serde(default)]
    pub stale: bool,
    /// Blocking query: answer once the result changes past this index.
    #[serde(default)]
    pub index: Option<u64>,
    /// How long a blocking query may wait (`30s`, `500ms`, `2m`; at most 10 minutes).
    #[serde(default)]
    pub wait: Option<String>,
}

/// Query parameters of writes.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WriteQuery {
    /// Apply only if the object's revision is this one (0: only if absent); 409 otherwise.
    #[serde(default)]
    pub check_index: Option<u64>,
}

/// Parse a duration like `30s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_wait(field: &str, s: &str) -> Result<std::time::Duration, ApiError> {
    use std::time::Duration;
    let bad = || {
        ApiError::bad_request(
            field,
            format!("{s:?} is not a duration like 30s, 500ms or 2m"),
        )
    };
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if d > Duration::from_secs(600) {
        return Err(ApiError::bad_request(
            field,
            format!("{s} is longer than the 10 minute maximum"),
        ));
    }
    Ok(d)
}

/// Which precondition the client gave, and so which status a lost race answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precondition {
    /// `Some(0)`: the object must not exist; `Some(r)`: it must be at revision `r`.
    pub expect: Option<u64>,
    pub status: StatusCode,
}

impl Precondition {
    /// From `If-Match: "<revision>"`, `If-None-Match: *` or `?checkIndex=N` (one at most).
    pub fn from_request(headers: &HeaderMap, query: &WriteQuery) -> Result<Self, ApiError> {
        let if_match = header_str(headers, header::IF_MATCH, "If-Match")?;
        let if_none = header_str(headers, header::IF_NONE_MATCH, "If-None-Match")?;
        let given = [
            if_match.is_some(),
            if_none.is_some(),
            query.check_index.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given > 1 {
            return Err(ApiError::bad_request(
                "If-Match",
                "give at most one of If-Match, If-None-Match and checkIndex",
            ));
        }
        if let Some(v) = if_match {
            return Ok(Self {
                expect: Some(parse_etag("If-Match", v)?),
                status: StatusCode::PRECONDITION_FAILED,
            });
        }
        if let Some(v) = if_none {
            if v.trim() != "*" {
                return Err(ApiError::bad_request(
                    "If-None-Match",
                    "only If-None-Match: * (create only) is supported",
                ));
            }
            return Ok(Self {
                expect: Some(0),
                status: StatusCode::PRECONDITION_FAILED,
            });
        }
        Ok(Self {
            expect: query.check_index,
            status: StatusCode::CONFLICT,
        })
    }

    /// The error for a lost race, given the object's current revision.
    pub fn failed(&self, current: u64) -> ApiError {
        ApiError::revision_mismatch(self.status, self.expect.unwrap_or(0), current)
    }
}

fn header_str<'a>(
    headers: &'a HeaderMap,
    name: header::HeaderName,
    shown: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(&name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(shown, "give the header once"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| ApiError::bad_request(shown, "the header is not visible ascii"))
}

/// `"12"` → 12. Weak tags, lists and `*` are refused: a revision is exact.
fn parse_etag(field: &str, v: &str) -> Result<u64, ApiError> {
    let v = v.trim();
    let inner = v
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .ok_or_else(|| {
            ApiError::bad_request(field, format!("{v:?} is not a quoted revision like \"12\""))
        })?;
    let rev: u64 = inner
        .parse()
        .map_err(|_| ApiError::bad_request(field, format!("{v:?} is not a revision number")))?;
    if rev == 0 {
        return Err(ApiError::bad_request(
            field,
            "revision 0 never exists; use If-None-Match: * to create only",
        ));
    }
    Ok(rev)
}

/// The strong entity tag of a revision.
pub fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}
