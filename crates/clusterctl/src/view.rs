//! Tables and `describe` texts of cluster objects. Pure functions of the API's records (and
//! the raw JSON, for fields newer than this build, such as a workload's `status`), so they are
//! tested without a server.

use std::fmt::Write as _;

use comfy_table::{presets, Table};
use flotilla_api::cluster::{Event, InstancePhase, InstanceRecord, NodeRecord, WorkloadRecord};
use serde_json::Value;

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.to_vec());
    t
}

pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `5s`, `3m`, `2h`, `4d` since `at_ms`.
pub fn age(now: u64, at_ms: u64) -> String {
    if at_ms == 0 {
        return "-".to_owned();
    }
    let s = now.saturating_sub(at_ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Bytes as `512Mi`, `2Gi`, `23.5Gi` (one decimal when not a round size).
pub fn bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (u, n) in UNITS {
        if b >= n {
            return if b.is_multiple_of(n) {
                format!("{}{u}", b / n)
            } else {
                format!("{:.1}{u}", b as f64 / n as f64)
            };
        }
    }
    b.to_string()
}

pub fn millicores(m: u64) -> String {
    if m.is_multiple_of(1000) {
        format!("{}", m / 1000)
    } else {
        format!("{m}m")
    }
}

fn snake(v: impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// `Ready`, `NotReady`, plus `SchedulingDisabled` / `Draining`. The server's `ready` (its
/// lease check) wins; without it the lease is compared with the local clock.
pub fn node_status(raw: &Value, n: &NodeRecord, now: u64) -> String {
    let mut parts = Vec::new();
    let server = raw
        .get("ready")
        .and_then(Value::as_bool)
        .map(|r| if r { "Ready" } else { "NotReady" }.to_owned())
        .or_else(|| raw.get("status").and_then(Value::as_str).map(str::to_owned));
    match server {
        Some(s) => parts.push(s),
        None => {
            let ready = n
                .lease
                .as_ref()
                .is_some_and(|l| l.renewed_at_ms + l.ttl_ms >= now);
            parts.push(if ready { "Ready" } else { "NotReady" }.to_owned());
        }
    }
    if !n.schedulable {
        parts.push("SchedulingDisabled".into());
    }
    if raw.get("draining").and_then(Value::as_bool) == Some(true) {
        parts.push("Draining".into());
    }
    parts.join(",")
}

fn instances_on<'a>(
    instances: &'a [InstanceRecord],
    node: &'a str,
) -> impl Iterator<Item = &'a InstanceRecord> {
    instances
        .iter()
        .filter(move |i| i.owner_node.as_deref() == Some(node))
}

fn live(i: &InstanceRecord) -> bool {
    matches!(
        i.phase,
        InstancePhase::Scheduled | InstancePhase::Running | InstancePhase::Migrating
    )
}

pub fn nodes_table(
    nodes: &[(Value, NodeRecord)],
    instances: &[InstanceRecord],
    now: u64,
    wide: bool,
) -> String {
    let mut h = vec![
        "NAME",
        "STATUS",
        "ADDRESS",
        "CPU",
        "MEMORY",
        "INSTANCES",
        "AGE",
    ];
    if wide {
        h.extend(["LABELS", "FEATURES"]);
    }
    let mut t = table(&h);
    for (raw, n) in nodes {
        let mut row = vec![
            n.info.id.clone(),
            node_status(raw, n, now),
            n.info.address.clone(),
            millicores(n.info.capacity.cpu_millis),
            bytes(n.info.capacity.memory_bytes),
            instances_on(instances, &n.info.id)
                .filter(|i| live(i))
                .count()
                .to_string(),
            age(now, n.registered_at_ms),
        ];
        if wide {
            row.push(kv(&n.info.labels));
            row.push(kv(&n.info.features));
        }
        t.add_row(row);
    }
    format!("{t}\n")
}

fn kv(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Ready replicas: the server's `status.ready` when it reports one, else counted from the
/// instances.
fn ready_count(raw: &Value, w: &WorkloadRecord, instances: &[InstanceRecord]) -> u64 {
    raw.pointer("/status/ready")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| {
            instances
                .iter()
                .filter(|i| i.workload == w.spec.name && i.phase == InstancePhase::Running)
                .filter(|i| i.observed.as_ref().is_some_and(|o| o.ready))
                .count() as u64
        })
}

/// The workload status note: unplaced replicas and the reason, when the server reports them.
pub fn workload_note(raw: &Value) -> String {
    let mut parts = Vec::new();
    if raw.get("deleting").and_then(Value::as_bool) == Some(true) {
        parts.push("deleting".to_owned());
    }
    let Some(st) = raw.get("status").filter(|s| !s.is_null()) else {
        return if parts.is_empty() {
            "-".into()
        } else {
            parts.join(": ")
        };
    };
    if let Some(n) = st
        .get("unplaced")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
    {
        parts.push(format!("{n} unplaced"));
    }
    for key in ["unplacedReason", "reason", "message"] {
        if let Some(s) = st
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            parts.push(s.to_owned());
            break;
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(": ")
    }
}

pub fn workloads_table(
    workloads: &[(Value, WorkloadRecord)],
    instances: &[InstanceRecord],
    now: u64,
    wide: bool,
) -> String {
    let mut h = vec!["NAME", "READY", "IMAGE", "GENERATION", "AGE"];
    if wide {
        h.extend(["PLACED", "CPU", "MEMORY", "STRATEGY", "STATUS"]);
    }
    let mut t = table(&h);
    for (raw, w) in workloads {
        let mut row = vec![
            w.spec.name.clone(),
            format!("{}/{}", ready_count(raw, w, instances), w.spec.replicas),
            w.spec.image.clone(),
            w.generation.to_string(),
            age(now, w.created_at_ms),
        ];
        if wide {
            let placed = instances
                .iter()
                .filter(|i| i.workload == w.spec.name && live(i) && i.owner_node.is_some())
                .count();
            row.push(placed.to_string());
            row.push(millicores(w.spec.resources.cpu_millis));
            row.push(bytes(w.spec.resources.memory_bytes));
            row.push(snake(w.spec.placement.strategy));
            row.push(workload_note(raw));
        }
        t.add_row(row);
    }
    format!("{t}\n")
}

pub fn instances_table(instances: &[InstanceRecord], now: u64, wide: bool) -> String {
    let mut h = vec![
        "NAME", "WORKLOAD", "NODE", "PHASE", "STATE", "READY", "RESTARTS", "IP", "AGE",
    ];
    if wide {
        h.extend(["REPLICA", "GENERATION", "EPOCH", "EXIT"]);
    }
    let mut t = table(&h);
    for i in instances {
        let o = i.observed.as_ref();
        let mut row = vec![
            i.id.clone(),
            i.workload.clone(),
            opt(i.owner_node.as_deref()),
            snake(i.phase),
            opt(o.map(|o| snake(o.state))),
            opt(o.map(|o| o.ready)),
            opt(o.map(|o| o.restarts)),
            opt(o.and_then(|o| o.ip.clone())),
            age(now, i.created_at_ms),
        ];
        if wide {
            row.push(i.replica.to_string());
            row.push(i.generation.to_string());
            row.push(i.epoch.to_string());
            row.push(opt(o.and_then(|o| o.exit.as_ref()).map(exit_text)));
        }
        t.add_row(row);
    }
    format!("{t}\n")
}

fn exit_text(e: &flotilla_api::cluster::ExitReason) -> String {
    let mut s = match (e.code, e.signal) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "exited".into(),
    };
    if e.oom_killed {
        s.push_str(" (oom)");
    }
    if !e.message.is_empty() {
        s.push_str(&format!(": {}", e.message));
    }
    s
}

pub fn events_table(events: &[Event], now: u64, wide: bool) -> String {
    let mut h = vec!["AGE", "SUBJECT", "REASON", "MESSAGE"];
    if wide {
        h.extend(["SEQ", "REVISION"]);
    }
    let mut t = table(&h);
    for e in events {
        let mut row = vec![
            age(now, e.at_ms),
            e.subject.to_string(),
            e.reason.clone(),
            e.message.clone(),
        ];
        if wide {
            row.push(e.seq.to_string());
            row.push(e.revision.to_string());
        }
        t.add_row(row);
    }
    format!("{t}\n")
}

/// One line of `events -w`.
pub fn event_line(e: &Event) -> String {
    format!("{}  {}  {}  {}", e.seq, e.subject, e.reason, e.message)
}

fn yaml_block(out: &mut String, title: &str, v: &impl serde::Serialize) {
    let text = yaml_serde::to_string(v).unwrap_or_default();
    let _ = writeln!(out, "{title}:");
    for line in text.lines() {
        let _ = writeln!(out, "  {line}");
    }
}

fn events_block(out: &mut String, events: &[&Event], now: u64) {
    let _ = writeln!(out, "Events:");
    if events.is_empty() {
        let _ = writeln!(out, "  <none>");
        return;
    }
    let owned: Vec<Event> = events
        .iter()
        .rev()
        .take(20)
        .rev()
        .map(|e| (*e).clone())
        .collect();
    for line in events_table(&owned, now, false).lines() {
        let _ = writeln!(out, "  {line}");
    }
}

fn subject_is(e: &Event, kind: &str, id: &str) -> bool {
    let s = e.subject.to_string();
    s == format!("{kind}/{id}")
}

pub fn describe_workload(
    raw: &Value,
    w: &WorkloadRecord,
    instances: &[InstanceRecord],
    events: &[Event],
    now: u64,
) -> String {
    let mut out = String::new();
    let mine: Vec<InstanceRecord> = instances
        .iter()
        .filter(|i| i.workload == w.spec.name)
        .cloned()
        .collect();
    let _ = writeln!(out, "Name:        {}", w.spec.name);
    let _ = writeln!(out, "Image:       {}", w.spec.image);
    let _ = writeln!(
        out,
        "Replicas:    {} desired, {} ready",
        w.spec.replicas,
        ready_count(raw, w, instances)
    );
    let _ = writeln!(out, "Generation:  {}", w.generation);
    let _ = writeln!(out, "Revision:    {}", w.revision);
    let _ = writeln!(out, "Age:         {}", age(now, w.created_at_ms));
    let _ = writeln!(out, "Status note: {}", workload_note(raw));
    if let Some(st) = raw.get("status").filter(|s| !s.is_null()) {
        yaml_block(&mut out, "Status", st);
    }
    yaml_block(&mut out, "Spec", &w.spec);
    let _ = writeln!(out, "Instances:");
    if mine.is_empty() {
        let _ = writeln!(out, "  <none>");
    } else {
        for line in instances_table(&mine, now, false).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let ids: Vec<&str> = mine.iter().map(|i| i.id.as_str()).collect();
    let related: Vec<&Event> = events
        .iter()
        .filter(|e| {
            subject_is(e, "workload", &w.spec.name)
                || ids.iter().any(|id| subject_is(e, "instance", id))
        })
        .collect();
    events_block(&mut out, &related, now);
    out
}

pub fn describe_node(
    raw: &Value,
    n: &NodeRecord,
    instances: &[InstanceRecord],
    events: &[Event],
    now: u64,
) -> String {
    let mut out = String::new();
    let on: Vec<InstanceRecord> = instances_on(instances, &n.info.id).cloned().collect();
    let (cpu, mem) = on
        .iter()
        .filter(|i| live(i))
        .fold((0u64, 0u64), |(c, m), i| {
            let r = i.spec.as_ref().map(|s| &s.resources);
            (
                c + r.map_or(0, |r| r.cpu_millis),
                m + r.map_or(0, |r| r.memory_bytes),
            )
        });
    let _ = writeln!(out, "Name:        {}", n.info.id);
    let _ = writeln!(out, "Status:      {}", node_status(raw, n, now));
    let _ = writeln!(out, "Address:     {}", n.info.address);
    let _ = writeln!(out, "Schedulable: {}", n.schedulable);
    let _ = writeln!(
        out,
        "Capacity:    cpu {}, memory {}",
        millicores(n.info.capacity.cpu_millis),
        bytes(n.info.capacity.memory_bytes)
    );
    let _ = writeln!(
        out,
        "Allocated:   cpu {}, memory {}",
        millicores(cpu),
        bytes(mem)
    );
    match &n.lease {
        Some(l) => {
            let _ = writeln!(
                out,
                "Lease:       renewed {} ago, ttl {} ms, term {}, seq {}",
                age(now, l.renewed_at_ms),
                l.ttl_ms,
                l.leader_term,
                l.seq
            );
        }
        None => {
            let _ = writeln!(out, "Lease:       none");
        }
    }
    let _ = writeln!(out, "Registered:  {} ago", age(now, n.registered_at_ms));
    let _ = writeln!(out, "Labels:      {}", kv(&n.info.labels));
    if !n.info.features.is_empty() {
        yaml_block(&mut out, "Features", &n.info.features);
    }
    let _ = writeln!(out, "Instances:");
    if on.is_empty() {
        let _ = writeln!(out, "  <none>");
    } else {
        for line in instances_table(&on, now, false).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let related: Vec<&Event> = events
        .iter()
        .filter(|e| subject_is(e, "node", &n.info.id))
        .collect();
    events_block(&mut out, &related, now);
    out
}

pub fn describe_instance(i: &InstanceRecord, events: &[Event], now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Name:        {}", i.id);
    let _ = writeln!(out, "Workload:    {}", i.workload);
    let _ = writeln!(out, "Node:        {}", opt(i.owner_node.as_deref()));
    let _ = writeln!(out, "Phase:       {}", snake(i.phase));
    let _ = writeln!(out, "Replica:     {}", i.replica);
    let _ = writeln!(out, "Generation:  {}", i.generation);
    let _ = writeln!(out, "Epoch:       {}", i.epoch);
    let _ = writeln!(out, "Age:         {}", age(now, i.created_at_ms));
    match &i.observed {
        Some(o) => {
            let _ = writeln!(out, "State:       {}", snake(o.state));
            let _ = writeln!(out, "Ready:       {}", o.ready);
            let _ = writeln!(out, "Restarts:    {}", o.restarts);
            let _ = writeln!(out, "IP:          {}", opt(o.ip.as_deref()));
            let _ = writeln!(out, "Reported:    {} ago", age(now, o.reported_at_ms));
            if let Some(e) = &o.exit {
                let _ = writeln!(out, "Last exit:   {}", exit_text(e));
            }
        }
        None => {
            let _ = writeln!(out, "State:       not reported yet");
        }
    }
    if let Some(spec) = &i.spec {
        yaml_block(&mut out, "Spec", spec);
    }
    let related: Vec<&Event> = events
        .iter()
        .filter(|e| subject_is(e, "instance", &i.id))
        .collect();
    events_block(&mut out, &related, now);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::cluster::{
        Capacity, InstanceObserved, NodeInfo, NodeLease, ObjectKey, ObservedState, WorkloadSpec,
    };

    const NOW: u64 = 1_800_000_000_000;

    fn node(id: &str, schedulable: bool, renewed_ago_ms: Option<u64>) -> (Value, NodeRecord) {
        let n = NodeRecord {
            info: NodeInfo {
                id: id.into(),
                address: "198.18.70.101:7443".into(),
                labels: [("zone".to_owned(), "a".to_owned())].into(),
                capacity: Capacity {
                    cpu_millis: 2000,
                    memory_bytes: 4 << 30,
                },
                features: Default::default(),
            },
            schedulable,
            lease: renewed_ago_ms.map(|a| NodeLease {
                leader_term: 1,
                seq: 1,
                ttl_ms: 5000,
                renewed_at_ms: NOW - a,
            }),
            registered_at_ms: NOW - 3_600_000,
            updated_at_ms: NOW,
            revision: 3,
            draining: false,
            ready: None,
        };
        (serde_json::to_value(&n).unwrap(), n)
    }

    fn instance(id: &str, wl: &str, node: &str, ready: bool) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            workload: wl.into(),
            owner_node: Some(node.into()),
            epoch: 1,
            phase: InstancePhase::Running,
            observed: Some(InstanceObserved {
                state: ObservedState::Running,
                exit: None,
                ip: Some("198.19.70.2".into()),
                reported_at_ms: NOW,
                ready,
                restarts: 2,
            }),
            replica: 0,
            generation: 1,
            spec: Some(WorkloadSpec {
                resources: flotilla_api::cluster::WorkloadResources {
                    cpu_millis: 250,
                    memory_bytes: 64 << 20,
                },
                ..Default::default()
            }),
            created_at_ms: NOW - 90_000,
            updated_at_ms: NOW,
            revision: 9,
        }
    }

    #[test]
    fn ages_and_sizes() {
        assert_eq!(age(NOW, NOW - 5_000), "5s");
        assert_eq!(age(NOW, NOW - 600_000), "10m");
        assert_eq!(age(NOW, NOW - 3 * 3_600_000), "3h");
        assert_eq!(age(NOW, NOW - 3 * 86_400_000), "3d");
        assert_eq!(age(NOW, 0), "-");
        assert_eq!(bytes(4 << 30), "4Gi");
        assert_eq!(bytes(64 << 20), "64Mi");
        assert_eq!(bytes(1000), "1000");
        assert_eq!(bytes(24_683_656 << 10), "23.5Gi");
        assert_eq!(bytes(1536 << 10), "1.5Mi");
        assert_eq!(millicores(2000), "2");
        assert_eq!(millicores(250), "250m");
    }

    #[test]
    fn node_table_shows_readiness_cordon_and_instances() {
        let nodes = vec![
            node("n1", true, Some(1000)),
            node("n2", false, Some(60_000)),
        ];
        let inst = vec![instance("web-0", "web", "n1", true)];
        let t = nodes_table(&nodes, &inst, NOW, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].contains("NAME") && lines[0].contains("STATUS"),
            "{t}"
        );
        assert!(
            lines[1].contains("n1") && lines[1].contains(" Ready "),
            "{t}"
        );
        assert!(lines[1].contains("60m") && lines[1].contains("4Gi"), "{t}");
        assert!(
            lines[2].contains("NotReady,SchedulingDisabled"),
            "expired lease and cordon: {t}"
        );
        assert!(!t.contains("LABELS"));
        let w = nodes_table(&nodes, &inst, NOW, true);
        assert!(w.contains("LABELS") && w.contains("zone=a"), "{w}");
        // A server-side status wins over the lease.
        let (mut raw, n) = node("n3", true, None);
        raw["ready"] = true.into();
        raw["draining"] = true.into();
        assert_eq!(node_status(&raw, &n, NOW), "Ready,Draining");
        let (mut raw, n) = node("n4", false, Some(0));
        raw["ready"] = false.into();
        assert_eq!(node_status(&raw, &n, NOW), "NotReady,SchedulingDisabled");
    }

    #[test]
    fn workload_table_counts_ready_and_shows_status_note() {
        let spec = WorkloadSpec {
            name: "web".into(),
            image: "busybox:1".into(),
            replicas: 3,
            ..Default::default()
        };
        let w = WorkloadRecord {
            spec,
            generation: 2,
            created_at_ms: NOW - 30_000,
            updated_at_ms: NOW,
            revision: 7,
            status: None,
            deleting: false,
        };
        let mut raw = serde_json::to_value(&w).unwrap();
        let inst = vec![
            instance("web-0", "web", "n1", true),
            instance("web-1", "web", "n2", false),
            instance("db-0", "db", "n2", true),
        ];
        let t = workloads_table(&[(raw.clone(), w.clone())], &inst, NOW, false);
        assert!(
            t.contains("web") && t.contains("1/3") && t.contains("busybox:1"),
            "{t}"
        );
        raw["status"] = serde_json::json!({"ready": 2, "unplaced": 1, "reason": "no node with 4 GiB of free memory"});
        let t = workloads_table(&[(raw.clone(), w.clone())], &inst, NOW, true);
        assert!(t.contains("2/3"), "{t}");
        let mut del = raw.clone();
        del["deleting"] = true.into();
        assert!(
            workload_note(&del).starts_with("deleting: 1 unplaced"),
            "{}",
            workload_note(&del)
        );
        assert!(
            t.contains("1 unplaced: no node with 4 GiB of free memory"),
            "{t}"
        );
        let events = vec![
            Event {
                seq: 1,
                revision: 5,
                at_ms: NOW - 1000,
                subject: ObjectKey::Workload("web".into()),
                reason: "created".into(),
                message: "workload web created".into(),
            },
            Event {
                seq: 2,
                revision: 6,
                at_ms: NOW - 500,
                subject: ObjectKey::Workload("db".into()),
                reason: "created".into(),
                message: "workload db created".into(),
            },
        ];
        let d = describe_workload(&raw, &w, &inst, &events, NOW);
        assert!(d.contains("Replicas:    3 desired, 2 ready"), "{d}");
        assert!(
            d.contains("web-0") && d.contains("web-1") && !d.contains("db-0"),
            "{d}"
        );
        assert!(
            d.contains("workload web created") && !d.contains("db created"),
            "{d}"
        );
        assert!(d.contains("Spec:") && d.contains("image: busybox:1"), "{d}");
    }

    #[test]
    fn instance_and_event_tables() {
        let inst = vec![instance("web-0", "web", "n1", true)];
        let t = instances_table(&inst, NOW, true);
        let row = t.lines().nth(1).unwrap();
        for col in [
            "web-0",
            "web",
            "n1",
            "running",
            "true",
            "198.19.70.2",
            "90s",
        ] {
            assert!(row.contains(col), "{col} in {t}");
        }
        assert!(t.lines().next().unwrap().contains("EPOCH"));
        let (raw, n) = node("n1", true, Some(100));
        let d = describe_node(&raw, &n, &inst, &[], NOW);
        assert!(d.contains("Allocated:   cpu 250m, memory 64Mi"), "{d}");
        assert!(d.contains("Events:\n  <none>"), "{d}");
        let d = describe_instance(&inst[0], &[], NOW);
        assert!(
            d.contains("Restarts:    2") && d.contains("IP:          198.19.70.2"),
            "{d}"
        );
    }
}
