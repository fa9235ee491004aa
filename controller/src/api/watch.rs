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
//! the difference to the previous state (`put`, `delete`). Events go out in one order (revision,
//! then objects by `kind/id`, then cluster events by sequence number), and the SSE id names an
//! event's place in it: `<revision>:0:<kind>/<id>` or `<revision>:1:<seq>`. A reconnecting
//! client's `Last-Event-ID` replaces `from` and resumes right after that event, so the rest of
//! a revision it saw only part of (one entry can change many objects) is not lost; a plain
//! revision number resumes after the whole revision. Changes that happen between two
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

    /// The watch events between the known state and `look`, in stream order (see the module
    /// doc): after `from` when given, else what changed since the last look.
    fn diff(&mut self, look: Look, from: Option<&Resume>) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        for (key, (rev, obj)) in &look.objects {
            let newer = match from {
                Some(f) => f.precedes(&Place::object(*rev, key)),
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
            if from.is_none_or(|f| f.precedes(&Place::event(e.revision, e.seq))) {
                out.push(WatchEvent {
                    type_: WatchEventType::Event,
                    kind: "event".to_owned(),
                    key: e.seq.to_string(),
                    revision: e.revision,
                    object: serde_json::to_value(e).ok(),
                });
            }
        }
        out.sort_by_cached_key(place_of);
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

/// An event's place in the stream order: revision, objects (0) before cluster events (1), then
/// `kind/id` or the zero-padded sequence number. Its text form is the SSE id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    revision: u64,
    class: u8,
    sub: String,
}

impl Place {
    fn object(revision: u64, key: &ObjectKey) -> Self {
        Self {
            revision,
            class: 0,
            sub: format!("{}/{}", kind_of(key), id_of(key)),
        }
    }

    fn event(revision: u64, seq: u64) -> Self {
        Self {
            revision,
            class: 1,
            sub: format!("{seq:020}"),
        }
    }

    fn id(&self) -> String {
        format!("{}:{}:{}", self.revision, self.class, self.sub)
    }
}

fn place_of(e: &WatchEvent) -> Place {
    match e.type_ {
        WatchEventType::Event => Place::event(e.revision, e.key.parse().unwrap_or(0)),
        WatchEventType::Put | WatchEventType::Delete => Place {
            revision: e.revision,
            class: 0,
            sub: format!("{}/{}", e.kind, e.key),
        },
    }
}

/// Where a stream starts: after a whole revision (`from`, or a numeric `Last-Event-ID`), or
/// right after one event (an id this stream sent).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resume {
    AfterRevision(u64),
    After(Place),
}

impl Resume {
    /// Parse a `Last-Event-ID`.
    fn parse(id: &str) -> Option<Self> {
        let id = id.trim();
        if let Ok(r) = id.parse::<u64>() {
            return Some(Self::AfterRevision(r));
        }
        let mut parts = id.splitn(3, ':');
        let revision = parts.next()?.parse().ok()?;
        let class = parts.next()?.parse().ok().filter(|c| *c <= 1)?;
        let sub = parts.next().filter(|s| !s.is_empty())?.to_owned();
        Some(Self::After(Place {
            revision,
            class,
            sub,
        }))
    }

    /// Whether the event at `place` comes after this starting point.
    fn precedes(&self, place: &Place) -> bool {
        match self {
            Self::AfterRevision(r) => place.revision > *r,
            Self::After(p) => place > p,
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
        .id(place_of(e).id())
        .json_data(e)
        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"))
}

/// Stream changes as server-sent events (`put`, `delete`, `event`; data: `WatchEvent`).
#[utoipa::path(get, path = "/v1/watch", tag = "watch", params(WatchQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume right after this event (an id the stream sent), or after this whole revision (a number); replaces from")),
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
        Some(v) => Some(v.to_str().ok().and_then(Resume::parse).ok_or_else(|| {
            ApiError::bad_request(
                "Last-Event-ID",
                "neither a revision number nor an event id of this stream (revision:class:key)",
            )
        })?),
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
    let from = last_id.unwrap_or(Resume::AfterRevision(q.from.unwrap_or(look.index)));
    let first = w.diff(look, Some(&from));
    tracing::debug!(?from, kind = ?q.kind, initial = first.len(), "watch started");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_order_the_stream() {
        let a = Place::object(7, &ObjectKey::Workload("a".into()));
        let b = Place::object(7, &ObjectKey::Workload("b".into()));
        let e = Place::event(7, 12);
        let next = Place::object(8, &ObjectKey::Node("n:1".into()));
        assert!(a < b && b < e && e < next);
        for p in [&a, &b, &e, &next] {
            assert_eq!(Resume::parse(&p.id()), Some(Resume::After(p.clone())));
        }
        // Resuming after `a` keeps the rest of revision 7.
        let after_a = Resume::After(a.clone());
        assert!(!after_a.precedes(&a) && after_a.precedes(&b) && after_a.precedes(&e));
        // A plain revision means the whole revision was seen.
        let after_7 = Resume::parse("7").unwrap();
        assert!(!after_7.precedes(&b) && !after_7.precedes(&e) && after_7.precedes(&next));
        for bad in ["", "x", "7:", "7:2:x", "7:0:", "-1", "7:a:b"] {
            assert_eq!(Resume::parse(bad), None, "{bad:?}");
        }
    }
}
