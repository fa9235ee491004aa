//! Field rules of the request bodies and path parameters. Every error names the field by its
//! JSON path (`ports[1].containerPort`) or parameter name, and is raised before anything is
//! proposed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use flotilla_api::cluster::{ConstraintOp, ControllerAddr};
use flotilla_api::rest::{NodePatch, ProbeWrite, ServiceWrite, WorkloadWrite};

use super::problem::ApiError;

pub const MAX_REPLICAS: u32 = 10_000;
/// 4096 cores.
pub const MAX_CPU_MILLIS: u64 = 4_096_000;
/// 64 TiB.
pub const MAX_MEMORY_BYTES: u64 = 64 << 40;
const MAX_ARGS: usize = 1024;
const MAX_ARG_LEN: usize = 16 << 10;
const MAX_ENV: usize = 1024;
const MAX_LABELS: usize = 64;
const MAX_PORTS: usize = 128;
/// Longest stop grace period and probe timing: one hour.
pub const MAX_DURATION_MS: u64 = 3_600_000;

type Result<T = ()> = std::result::Result<T, ApiError>;

fn invalid(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
    ApiError::invalid(field, detail)
}

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn show(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    format!("{short:?}")
}

/// A name in a path or body that must be a DNS-1123 label (workloads, services, ports).
pub fn label(field: &str, s: &str) -> Result {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{} is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)",
                show(s)
            ),
        ))
    }
}

/// An id that must be a DNS-1123 subdomain (nodes, instances, migrations).
pub fn subdomain(field: &str, s: &str) -> Result {
    if is_dns_subdomain(s) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{} is not a DNS-1123 subdomain (at most 253)", show(s)),
        ))
    }
}

/// Path parameters are client syntax: a bad one is a 400, not a 422.
pub fn path_label(field: &str, s: &str) -> Result {
    label(field, s).map_err(|mut e| {
        e.status = axum::http::StatusCode::BAD_REQUEST;
        e.code = "bad-request";
        e
    })
}

pub fn path_subdomain(field: &str, s: &str) -> Result {
    subdomain(field, s).map_err(|mut e| {
        e.status = axum::http::StatusCode::BAD_REQUEST;
        e.code = "bad-request";
        e
    })
}

fn no_controls(field: &str, s: &str) -> Result {
    if s.chars().any(|c| c.is_control()) {
        return Err(invalid(
            field,
            "contains a control character (NUL, CR, LF...)",
        ));
    }
    Ok(())
}

fn label_key(field: &str, k: &str) -> Result {
    // Kubernetes-style label keys: optional DNS prefix, then a name of [A-Za-z0-9._-].
    let name = k.rsplit_once('/').map_or(
        k,
        |(prefix, name)| {
            if is_dns_subdomain(prefix) {
                name
            } else {
                ""
            }
        },
    );
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{} is not a valid label key", show(k)),
        ))
    }
}

fn label_value(field: &str, v: &str) -> Result {
    let ok = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{} is not a valid label value", show(v)),
        ))
    }
}

pub fn labels<'a>(
    field: &str,
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result {
    if labels.len() > MAX_LABELS {
        return Err(invalid(field, format!("more than {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        label_key(&format!("{field}.{k}"), k)?;
        label_value(&format!("{field}.{k}"), v)?;
    }
    Ok(())
}

/// An image reference as Docker and OCI distribution parse it:
/// `[host[:port]/]path[:tag][@algorithm:hex]`, path components lowercase
/// `[a-z0-9]+([._-]|__)...`, tag `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn image_ref(field: &str, s: &str) -> Result {
    if s.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if s.len() > 512 {
        return Err(invalid(field, "longer than 512 characters"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(field, "contains whitespace or a control character"));
    }
    let bad = |why: &str| {
        invalid(
            field,
            format!("{} is not an image reference: {why}", show(s)),
        )
    };
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let (algo, hex) = d
            .split_once(':')
            .ok_or_else(|| bad("a digest is algorithm:hex"))?;
        let hex_ok = match algo {
            "sha256" => hex.len() == 64,
            "sha512" => hex.len() == 128,
            _ => return Err(bad("digest algorithm must be sha256 or sha512")),
        } && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_ok {
            return Err(bad("digest is not lowercase hex of the right length"));
        }
    }
    // The tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(bad("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let (host, port) = match first.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (first, None),
            };
            let host_ok = !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
            if !host_ok || !port_ok {
                return Err(bad("registry must be host[:port]"));
            }
            parts.remove(0);
        }
    }
    for part in parts {
        let b = part.as_bytes();
        let ok = !b.is_empty()
            && b.iter().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
            })
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && !part.contains("..")
            && !part.contains("___");
        if !ok {
            return Err(bad("repository path components are lowercase letters and digits separated by '.', '_', '__' or '-'"));
        }
    }
    Ok(())
}

/// A replica count within bounds.
pub fn replicas(field: &str, n: u32) -> Result {
    if n > MAX_REPLICAS {
        return Err(invalid(
            field,
            format!("{n} is more than the maximum {MAX_REPLICAS}"),
        ));
    }
    Ok(())
}

fn duration(field: &str, ms: u64, min: u64) -> Result {
    if ms < min || ms > MAX_DURATION_MS {
        return Err(invalid(
            field,
            format!("{ms} ms is outside {min}..={MAX_DURATION_MS} ms"),
        ));
    }
    Ok(())
}

/// A health check: exactly one action, ports in range, thresholds at least 1, a period at
/// least as long as the timeout.
pub fn probe(field: &str, p: &ProbeWrite) -> Result {
    let actions = [p.exec.is_some(), p.tcp.is_some(), p.http.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if actions != 1 {
        return Err(invalid(
            field,
            format!("give exactly one of exec, tcp, http (found {actions})"),
        ));
    }
    if let Some(e) = &p.exec {
        if e.command.is_empty() {
            return Err(invalid(
                format!("{field}.exec.command"),
                "must not be empty",
            ));
        }
        for (i, a) in e.command.iter().enumerate() {
            if a.contains('\0') || a.len() > MAX_ARG_LEN {
                return Err(invalid(
                    format!("{field}.exec.command[{i}]"),
                    format!("contains NUL or is longer than {MAX_ARG_LEN} bytes"),
                ));
            }
        }
    }
    if let Some(t) = &p.tcp {
        port(&format!("{field}.tcp.port"), t.port)?;
    }
    if let Some(h) = &p.http {
        port(&format!("{field}.http.port"), h.port)?;
        no_controls(&format!("{field}.http.path"), &h.path)?;
        if !h.path.starts_with('/') || h.path.len() > 2048 || h.path.contains(' ') {
            return Err(invalid(
                format!("{field}.http.path"),
                format!("{} is not an absolute path without spaces", show(&h.path)),
            ));
        }
    }
    let period = p.period_ms.unwrap_or(10_000);
    let timeout = p.timeout_ms.unwrap_or(1_000);
    if let Some(d) = p.initial_delay_ms {
        duration(&format!("{field}.initialDelayMs"), d, 0)?;
    }
    duration(&format!("{field}.periodMs"), period, 1)?;
    duration(&format!("{field}.timeoutMs"), timeout, 1)?;
    if period < timeout {
        return Err(invalid(
            format!("{field}.periodMs"),
            format!("{period} ms is shorter than timeoutMs {timeout} ms"),
        ));
    }
    for (name, v) in [
        ("failureThreshold", p.failure_threshold),
        ("successThreshold", p.success_threshold),
    ] {
        if let Some(v) = v {
            if v == 0 || v > 1000 {
                return Err(invalid(
                    format!("{field}.{name}"),
                    format!("{v} is outside 1..=1000"),
                ));
            }
        }
    }
    Ok(())
}

fn port(field: &str, p: u16) -> Result {
    if p == 0 {
        return Err(invalid(field, "port 0 is not a port (1-65535)"));
    }
    Ok(())
}

fn port_name(field: &str, s: &str) -> Result {
    label(field, s)?;
    if s.len() > 15 {
        return Err(invalid(field, "port names are at most 15 characters"));
    }
    Ok(())
}

pub fn workload(w: &WorkloadWrite, path_name: &str) -> Result {
    if let Some(n) = &w.name {
        if n != path_name {
            return Err(invalid(
                "name",
                format!(
                    "{} differs from the name in the path {}",
                    show(n),
                    show(path_name)
                ),
            ));
        }
    }
    image_ref("image", &w.image)?;
    if w.command.len() > MAX_ARGS {
        return Err(invalid(
            "command",
            format!("more than {MAX_ARGS} arguments"),
        ));
    }
    for (i, a) in w.command.iter().enumerate() {
        let f = format!("command[{i}]");
        if a.len() > MAX_ARG_LEN {
            return Err(invalid(f, format!("longer than {MAX_ARG_LEN} bytes")));
        }
        if a.contains('\0') {
            return Err(invalid(f, "contains NUL"));
        }
    }
    if w.env.len() > MAX_ENV {
        return Err(invalid("env", format!("more than {MAX_ENV} variables")));
    }
    for (k, v) in &w.env {
        let f = format!("env.{k}");
        let ok = !k.is_empty()
            && k.len() <= 256
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !ok {
            return Err(invalid(
                f,
                format!(
                    "{} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    show(k)
                ),
            ));
        }
        if v.contains('\0') {
            return Err(invalid(f, "contains NUL"));
        }
        if v.len() > MAX_ARG_LEN {
            return Err(invalid(f, format!("longer than {MAX_ARG_LEN} bytes")));
        }
    }
    replicas("replicas", w.replicas)?;
    if w.resources.cpu_millis > MAX_CPU_MILLIS {
        return Err(invalid(
            "resources.cpuMillis",
            format!(
                "{} is more than the maximum {MAX_CPU_MILLIS}",
                w.resources.cpu_millis
            ),
        ));
    }
    if w.resources.memory_bytes > MAX_MEMORY_BYTES {
        return Err(invalid(
            "resources.memoryBytes",
            format!(
                "{} is more than the maximum {MAX_MEMORY_BYTES}",
                w.resources.memory_bytes
            ),
        ));
    }
    if w.ports.len() > MAX_PORTS {
        return Err(invalid("ports", format!("more than {MAX_PORTS} ports")));
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in w.ports.iter().enumerate() {
        port_name(&format!("ports[{i}].name"), &p.name)?;
        port(&format!("ports[{i}].containerPort"), p.container_port)?;
        if !names.insert(&p.name) {
            return Err(invalid(
                format!("ports[{i}].name"),
                format!("duplicate port name {}", show(&p.name)),
            ));
        }
        if !numbers.insert((p.container_port, p.protocol as u8)) {
            return Err(invalid(
                format!("ports[{i}].containerPort"),
                format!("duplicate port {}", p.container_port),
            ));
        }
    }
    for (i, c) in w.placement.constraints.iter().enumerate() {
        label_key(&format!("placement.constraints[{i}].key"), &c.key)?;
        let needs_values = matches!(c.op, ConstraintOp::In | ConstraintOp::NotIn);
        if needs_values && c.values.is_empty() {
            return Err(invalid(
                format!("placement.constraints[{i}].values"),
                "in and not_in need at least one value",
            ));
        }
        if !needs_values && !c.values.is_empty() {
            return Err(invalid(
                format!("placement.constraints[{i}].values"),
                "exists and does_not_exist take no values",
            ));
        }
        for (j, v) in c.values.iter().enumerate() {
            label_value(&format!("placement.constraints[{i}].values[{j}]"), v)?;
        }
    }
    if let Some(p) = &w.liveness {
        probe("liveness", p)?;
    }
    if let Some(p) = &w.readiness {
        probe("readiness", p)?;
    }
    if let Some(g) = w.stop_grace_ms {
        duration("stopGraceMs", g, 0)?;
    }
    if let Some(u) = &w.update_strategy {
        if u.max_unavailable == 0 && u.max_surge == 0 {
            return Err(invalid(
                "updateStrategy",
                "maxUnavailable and maxSurge cannot both be 0",
            ));
        }
        if u.max_unavailable > MAX_REPLICAS || u.max_surge > MAX_REPLICAS {
            return Err(invalid(
                "updateStrategy",
                format!("values above {MAX_REPLICAS} are not allowed"),
            ));
        }
    }
    Ok(())
}

pub fn service(s: &ServiceWrite, path_name: &str) -> Result {
    if let Some(n) = &s.name {
        if n != path_name {
            return Err(invalid(
                "name",
                format!(
                    "{} differs from the name in the path {}",
                    show(n),
                    show(path_name)
                ),
            ));
        }
    }
    label("workload", &s.workload)?;
    if s.ports.len() > MAX_PORTS {
        return Err(invalid("ports", format!("more than {MAX_PORTS} ports")));
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        port_name(&format!("ports[{i}].name"), &p.name)?;
        port(&format!("ports[{i}].port"), p.port)?;
        port(&format!("ports[{i}].targetPort"), p.target_port)?;
        if !names.insert(&p.name) {
            return Err(invalid(
                format!("ports[{i}].name"),
                format!("duplicate port name {}", show(&p.name)),
            ));
        }
        if !numbers.insert((p.port, p.protocol as u8)) {
            return Err(invalid(
                format!("ports[{i}].port"),
                format!("duplicate port {}", p.port),
            ));
        }
    }
    if let Some(vip) = &s.vip {
        no_controls("vip", vip)?;
        vip.parse::<IpAddr>()
            .map_err(|_| invalid("vip", format!("{} is not an IP address", show(vip))))?;
    }
    Ok(())
}

pub fn node_patch(p: &NodePatch) -> Result {
    if p.schedulable.is_none() && p.labels.is_none() {
        return Err(invalid("body", "give schedulable, labels or both"));
    }
    if let Some(l) = &p.labels {
        labels("labels", l.iter())?;
    }
    Ok(())
}

/// `host:port` with a port in 1-65535 and a host that is an IP address or a DNS name.
pub fn host_port(field: &str, s: &str) -> Result {
    let bad = || invalid(field, format!("{} is not host:port", show(s)));
    let (host, port_s) = s.rsplit_once(':').ok_or_else(bad)?;
    let port_n: u16 = port_s.parse().map_err(|_| bad())?;
    port(field, port_n)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.parse::<IpAddr>().is_err() && !is_dns_subdomain(&host.to_ascii_lowercase()) {
        return Err(bad());
    }
    Ok(())
}

pub fn controller_addr(field: &str, a: &ControllerAddr) -> Result {
    host_port(&format!("{field}.raftAddr"), &a.raft_addr)?;
    host_port(&format!("{field}.apiAddr"), &a.api_addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "web", "web-1", "0abc", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "../x",
            "a\0",
            &"a".repeat(64),
            "é",
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("node-1.rack-2"));
        assert!(!is_dns_subdomain("node..1"));
    }

    #[test]
    fn image_references() {
        for ok in [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "198.18.0.1:5000/test/busybox:v1",
            "localhost/a_b/c__d/e-f.g:T_1.0-x",
            "registry.example/ns/img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            image_ref("image", ok).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "-a/b",
            "a/b-",
            "host:0/a",
            "a@sha256:xyz",
            "a@md5:00",
            "a b",
        ] {
            assert!(image_ref("image", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probes_need_one_action_sane_ports_and_timings() {
        use flotilla_api::rest::{ExecProbeWrite, HttpProbeWrite, TcpProbeWrite};
        let tcp = |port| ProbeWrite {
            tcp: Some(TcpProbeWrite { port }),
            ..Default::default()
        };
        probe("liveness", &tcp(80)).unwrap();
        let field = |r: Result| r.unwrap_err().field;
        assert_eq!(
            field(probe("liveness", &ProbeWrite::default())).as_deref(),
            Some("liveness")
        );
        let two = ProbeWrite {
            exec: Some(ExecProbeWrite {
                command: vec!["true".into()],
            }),
            ..tcp(80)
        };
        assert_eq!(field(probe("liveness", &two)).as_deref(), Some("liveness"));
        assert_eq!(
            field(probe("readiness", &tcp(0))).as_deref(),
            Some("readiness.tcp.port")
        );
        let slow = ProbeWrite {
            period_ms: Some(500),
            timeout_ms: Some(1000),
            ..tcp(80)
        };
        assert_eq!(
            field(probe("liveness", &slow)).as_deref(),
            Some("liveness.periodMs")
        );
        let zero = ProbeWrite {
            failure_threshold: Some(0),
            ..tcp(80)
        };
        assert_eq!(
            field(probe("liveness", &zero)).as_deref(),
            Some("liveness.failureThreshold")
        );
        let path = ProbeWrite {
            http: Some(HttpProbeWrite {
                port: 80,
                path: "x".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            field(probe("liveness", &path)).as_deref(),
            Some("liveness.http.path")
        );
        let empty = ProbeWrite {
            exec: Some(ExecProbeWrite { command: vec![] }),
            ..Default::default()
        };
        assert_eq!(
            field(probe("liveness", &empty)).as_deref(),
            Some("liveness.exec.command")
        );
    }

    #[test]
    fn host_ports() {
        for ok in ["127.0.0.1:80", "[::1]:7000", "ctl-1.example:65535"] {
            host_port("a", ok).unwrap();
        }
        for bad in ["127.0.0.1", "x:0", "x:70000", ":80", "a b:80"] {
            assert!(host_port("a", bad).is_err(), "{bad}");
        }
    }
}
