//! Blocking queries and server-sent events, both driven by the applied index (openraft's data
//! metrics channel changes when an entry is applied).
//!
//! **Blocking query** (`?index=N&wait=30s` on any read): when the replica has applied past
//! `N` the read answers at once (the client is behind; the answer may be unchanged, as in
//! Consul). Otherwise the read waits until the result's digest (keys and revisions) differs
//! from the one at the start, or until `wait` passes. `X-Flotilla-Index` is at least the
//! applied index of the state the answer was read from: passing it back as `index` never
//! misses a change.
//!
//! **SSE** (`/v1/watch?from=N[&kind=workload]`): first every object whose revision is above
//! `N` (`put`) and every cluster event above `N` (`event`); then, at every applied change,
//! the difference to the previous state (`put`, `delete`). The SSE id is the revision, and a
//! reconnecting client's `Last-Event-ID` replaces `from`. Changes that happen between two
//! looks coalesce (a put then a delete shows as the delete); deletions before the stream
//! started are not replayed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use flotilla_api::cluster::ObjectKey;
use flotilla_api::rest::{Problem, WatchEvent, WatchEventType};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{parse_wait, ReadQuery, StrictQuery};
use super::problem::ApiError;
use super::{ApiState, DEFAULT_WAIT};
use crate::state::ClusterState;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(watch))
}

/// Read `f` from the replica, as a plain or blocking query (see the module doc). `f` returns
/// the answer, its digest and the highest revision in it.
pub(super) async fn read<T, D: PartialEq>(
    st: &ApiState,
    q: &ReadQuery,
    f: impl Fn(&ClusterState) -> (T, D, u64),
) -> Result<(u64, T), ApiError> {
    let wait = match &q.wait {
        Some(w) => parse_wait("wait", w)?,
        None => DEFAULT_WAIT,
    };
    st.sync(q.stale).await?;
    let (index, (value, digest, max)) = st.snapshot(&f);
    let Some(n) = q.index else {
        return Ok((index.max(max), value));
    };
    if index > n {
        return Ok((index.max(max), value));
    }
    let deadline = Instant::now() + wait;
    let mut applied = st.node.raft().data_metrics();
    let mut seen = index;
    loop {
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Ok(Ok(())) => {}
            // Timed out, or Raft stopped: answer with what there is.
            Ok(Err(_)) | Err(_) => break,
        }
        let now = st.node.applied_index();
        if now == seen {
            continue;
        }
        seen = now;
        let (index, (value, d, max)) = st.snapshot(&f);
        if d != digest {
            return Ok((index.max(max), value));
        }
    }
    let (index, (value, _, max)) = st.snapshot(&f);
    Ok((index.max(max), value))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WatchQuery {
    /// Send changes above this revision (default: the current index, i.e. only new changes).
    #[serde(default)]
    from: Option<u64>,
    /// Only this kind: `node`, `workload`, `instance`, `service`, `migration` or `event`.
    #[serde(default)]
    kind: Option<String>,
    /// Start from this replica's state without a read-index round.
    #[serde(default)]
    stale: bool,
}

const KINDS: [&str; 6] = [
    "node",
    "workload",
    "instance",
    "service",
    "migration",
    "event",
];

fn kind_of(key: &ObjectKey) -> &'static str {
    match key {
        ObjectKey::Node(_) => "node",
        ObjectKey::Workload(_) => "workload",
        ObjectKey::Instance(_) => "instance",
        ObjectKey::Service(_) => "service",
        ObjectKey::Migration(_) => "migration",
        ObjectKey::Token(_) => "token",
    }
}

fn id_of(key: &ObjectKey) -> &str {
    match key {
        ObjectKey::Node(id)
        | ObjectKey::Workload(id)
        | ObjectKey::Instance(id)
        | ObjectKey::Service(id)
        | ObjectKey::Migration(id)
        | ObjectKey::Token(id) => id,
    }
}

/// Every watched object with its revision and JSON (tokens are never watched).
fn objects(s: &ClusterState, kind: Option<&str>) -> BTreeMap<ObjectKey, (u64, serde_json::Value)> {
    fn add<R: serde::Serialize>(
        out: &mut BTreeMap<ObjectKey, (u64, serde_json::Value)>,
        m: &BTreeMap<String, R>,
        key: fn(String) -> ObjectKey,
        rev: fn(&R) -> u64,
    ) {
        for (id, r) in m {
            let v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
            out.insert(key(id.clone()), (rev(r), v));
        }
    }
    let mut out = BTreeMap::new();
    let want = |k: &str| kind.is_none_or(|w| w == k);
    if want("node") {
        add(&mut out, &s.nodes, ObjectKey::Node, |r| r.revision);
    }
    if want("workload") {
        add(&mut out, &s.workloads, ObjectKey::Workload, |r| r.revision);
    }
    if want("instance") {
        add(&mut out, &s.instances, ObjectKey::Instance, |r| r.revision);
    }
    if want("service") {
        add(&mut out, &s.services, ObjectKey::Service, |r| r.revision);
    }
    if want("migration") {
        add(&mut out, &s.migrations, ObjectKey::Migration, |r| {
            r.revision
        });
    }
    out
}

/// What one look at the state gives the stream.
struct Look {
    objects: BTreeMap<ObjectKey, (u64, serde_json::Value)>,
    events: Vec<flotilla_api::cluster::Event>,
    last_event_seq: u64,
    index: u64,
}

struct Watcher {
    st: ApiState,
    kind: Option<String>,
    known: BTreeMap<ObjectKey, u64>,
    last_event_seq: u64,
    applied: tokio::sync::watch::Receiver<openraft::metrics::RaftDataMetrics<u64>>,
    seen_index: u64,
}

impl Watcher {
    fn look(&self) -> Look {
        let kind = self.kind.as_deref();
        let with_events = kind.is_none_or(|k| k == "event");
        let last_seq = self.last_event_seq;
        let (index, (objects, events, last_event_seq)) = self.st.snapshot(|s| {
            let events = if with_events {
                s.events
                    .iter()
                    .filter(|e| e.seq > last_seq)
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            (
                objects(s, kind.filter(|k| *k != "event")),
                events,
                s.last_event_seq,
            )
        });
        let objects = if kind == Some("event") {
            BTreeMap::new()
        } else {
            objects
        };
        Look {
            objects,
            events,
            last_event_seq,
            index,
        }
    }

    /// The watch events between the known state and `look`, oldest revision first.
    fn diff(&mut self, look: Look, from: Option<u64>) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        for (key, (rev, obj)) in &look.objects {
            let newer = match from {
                Some(f) => *rev > f,
                None => self.known.get(key) != Some(rev),
            };
            if newer {
                out.push(WatchEvent {
                    type_: WatchEventType::Put,
                    kind: kind_of(key).to_owned(),
                    key: id_of(key).to_owned(),
                    revision: *rev,
                    object: Some(obj.clone()),
                });
            }
        }
        if from.is_none() {
            for key in self.known.keys() {
                if !look.objects.contains_key(key) {
                    // The deletion's own revision, from the event ring when it is still there.
                    let revision = look
                        .events
                        .iter()
                        .rev()
                        .find(|e| &e.subject == key)
                        .map_or(look.index, |e| e.revision);
                    out.push(WatchEvent {
                        type_: WatchEventType::Delete,
                        kind: kind_of(key).to_owned(),
                        key: id_of(key).to_owned(),
                        revision,
                        object: None,
                    });
                }
            }
        }
        for e in &look.events {
            if from.is_none_or(|f| e.revision > f) {
                out.push(WatchEvent {
                    type_: WatchEventType::Event,
                    kind: "event".to_owned(),
                    key: e.seq.to_string(),
                    revision: e.revision,
                    object: serde_json::to_value(e).ok(),
                });
            }
        }
        out.sort_by_key(|e| e.revision);
        self.known = look
            .objects
            .iter()
            .map(|(k, (r, _))| (k.clone(), *r))
            .collect();
        self.last_event_seq = look.last_event_seq;
        out
    }

    /// Wait for the next applied change; `None` when Raft stopped.
    async fn next_batch(&mut self) -> Option<Vec<WatchEvent>> {
        loop {
            self.applied.changed().await.ok()?;
            let now = self.st.node.applied_index();
            if now == self.seen_index {
                continue;
            }
            self.seen_index = now;
            let look = self.look();
            let batch = self.diff(look, None);
            if !batch.is_empty() {
                return Some(batch);
            }
        }
    }
}

fn to_sse(e: &WatchEvent) -> SseEvent {
    let name = match e.type_ {
        WatchEventType::Put => "put",
        WatchEventType::Delete => "delete",
        WatchEventType::Event => "event",
    };
    SseEvent::default()
        .event(name)
        .id(e.revision.to_string())
        .json_data(e)
        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"))
}

/// Stream changes as server-sent events (`put`, `delete`, `event`; data: `WatchEvent`).
#[utoipa::path(get, path = "/v1/watch", tag = "watch", params(WatchQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this revision (replaces from)")),
    responses(
        (status = 200, description = "text/event-stream of WatchEvent", content_type = "text/event-stream", body = WatchEvent),
        (status = "4XX", description = "the request is refused (problem document naming the field)", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the cluster cannot answer now (no quorum, timeout)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn watch(
    State(st): State<ApiState>,
    headers: HeaderMap,
    StrictQuery(q): StrictQuery<WatchQuery>,
) -> Result<Response, ApiError> {
    if let Some(k) = &q.kind {
        if !KINDS.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                "kind",
                format!("{k:?} is not one of {}", KINDS.join(", ")),
            ));
        }
    }
    let last_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID", "not a revision number"))?,
        ),
        None => None,
    };
    st.sync(q.stale).await?;
    let mut w = Watcher {
        applied: st.node.raft().data_metrics(),
        st: st.clone(),
        kind: q.kind.clone(),
        known: BTreeMap::new(),
        last_event_seq: 0,
        seen_index: 0,
    };
    let look = w.look();
    w.seen_index = look.index;
    let from = last_id.or(q.from).unwrap_or(look.index);
    let first = w.diff(look, Some(from));
    tracing::debug!(from, kind = ?q.kind, initial = first.len(), "watch started");
    let rest = stream::unfold(w, |mut w| async move {
        let batch = w.next_batch().await?;
        Some((batch, w))
    });
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        Box::pin(stream::iter(vec![first]).chain(rest).flat_map(|batch| {
            stream::iter(batch.iter().map(|e| Ok(to_sse(e))).collect::<Vec<_>>())
        }));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
