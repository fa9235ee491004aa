//! `apply -f` input: one or more YAML documents (JSON is YAML too), each a `Workload` or a
//! `Service`. A document is the REST body (`WorkloadWrite`, `ServiceWrite`) in camelCase plus
//! `kind` (default `Workload`) and a required `name`:
//!
//! ```yaml
//! kind: Workload
//! name: web
//! image: registry.example/web:1
//! replicas: 3
//! ports: [{name: http, containerPort: 8080}]
//! ---
//! kind: Service
//! name: web
//! workload: web
//! ports: [{name: http, port: 80, targetPort: 8080}]
//! ```
//!
//! Every document is decoded before anything is sent, so a typo in the third document sends
//! nothing. Errors name the document, the field and the line.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use flotilla_api::cluster::{MigrationPolicy, RestartPolicy};
use flotilla_api::rest::{
    PlacementWrite, PortWrite, ProbeWrite, ResourcesWrite, ServicePortWrite, ServiceWrite,
    UpdateStrategyWrite, WorkloadWrite,
};
use serde::Deserialize;

/// One decoded document.
#[allow(clippy::large_enum_variant)] // a handful per apply
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Workload { name: String, body: WorkloadWrite },
    Service { name: String, body: ServiceWrite },
}

impl Manifest {
    pub fn kind(&self) -> &'static str {
        match self {
            Manifest::Workload { .. } => "workload",
            Manifest::Service { .. } => "service",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Manifest::Workload { name, .. } | Manifest::Service { name, .. } => name,
        }
    }
}

/// `WorkloadWrite` plus `kind` (a unit test keeps the two in step).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WorkloadDoc {
    #[serde(default)]
    #[allow(dead_code)]
    kind: Option<String>,
    name: String,
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    resources: ResourcesWrite,
    #[serde(default)]
    replicas: u32,
    #[serde(default)]
    ports: Vec<PortWrite>,
    #[serde(default)]
    placement: PlacementWrite,
    #[serde(default)]
    migration_policy: MigrationPolicy,
    #[serde(default)]
    update_strategy: Option<UpdateStrategyWrite>,
    #[serde(default)]
    liveness: Option<ProbeWrite>,
    #[serde(default)]
    readiness: Option<ProbeWrite>,
    #[serde(default)]
    restart_policy: RestartPolicy,
    #[serde(default)]
    stop_grace_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceDoc {
    #[serde(default)]
    #[allow(dead_code)]
    kind: Option<String>,
    name: String,
    workload: String,
    #[serde(default)]
    ports: Vec<ServicePortWrite>,
    #[serde(default)]
    vip: Option<String>,
}

/// Only `kind`, to choose the type of the second, strict pass.
#[derive(Deserialize)]
struct KindOnly {
    #[serde(default)]
    kind: Option<yaml_serde::Value>,
}

/// Decode every document of `text`; `source` names the input in errors (a file name or
/// `stdin`).
pub fn parse(source: &str, text: &str) -> Result<Vec<Manifest>> {
    let mut kinds = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = match yaml_serde::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => bail!("{source}: document {n}: malformed yaml: {e}"),
        };
        if value.is_null() {
            // An empty document (a trailing `---`, comments only): nothing to apply.
            kinds.push(None);
            continue;
        }
        if !value.is_mapping() {
            bail!("{source}: document {n}: expected a mapping with kind, name and the spec fields");
        }
        let k: KindOnly = match yaml_serde::from_value(value) {
            Ok(k) => k,
            Err(e) => bail!("{source}: document {n}: {e}"),
        };
        let kind = match k.kind {
            None => "Workload".to_owned(),
            Some(yaml_serde::Value::String(s)) => s,
            Some(other) => bail!(
                "{source}: document {n}: field kind: expected a string, found {}",
                yaml_serde::to_string(&other).unwrap_or_default().trim()
            ),
        };
        match kind.as_str() {
            "Workload" | "workload" => kinds.push(Some(true)),
            "Service" | "service" => kinds.push(Some(false)),
            other => {
                bail!("{source}: document {n}: field kind: {other:?} is not Workload or Service")
            }
        }
    }
    let mut out = Vec::new();
    for (i, (doc, kind)) in yaml_serde::Deserializer::from_str(text)
        .zip(kinds)
        .enumerate()
    {
        let n = i + 1;
        let m = match kind {
            None => continue,
            Some(true) => match WorkloadDoc::deserialize(doc) {
                Ok(d) => Manifest::Workload {
                    name: d.name.clone(),
                    body: WorkloadWrite {
                        name: Some(d.name),
                        image: d.image,
                        command: d.command,
                        env: d.env,
                        resources: d.resources,
                        replicas: d.replicas,
                        ports: d.ports,
                        placement: d.placement,
                        migration_policy: d.migration_policy,
                        update_strategy: d.update_strategy,
                        liveness: d.liveness,
                        readiness: d.readiness,
                        restart_policy: d.restart_policy,
                        stop_grace_ms: d.stop_grace_ms,
                    },
                },
                Err(e) => bail!("{source}: document {n} (Workload): {e}"),
            },
            Some(false) => match ServiceDoc::deserialize(doc) {
                Ok(d) => Manifest::Service {
                    name: d.name.clone(),
                    body: ServiceWrite {
                        name: Some(d.name),
                        workload: d.workload,
                        ports: d.ports,
                        vip: d.vip,
                    },
                },
                Err(e) => bail!("{source}: document {n} (Service): {e}"),
            },
        };
        if m.name().is_empty() {
            bail!("{source}: document {n}: field name is empty");
        }
        out.push(m);
    }
    if out.is_empty() {
        bail!("{source}: no document to apply");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_and_service_documents() {
        let text = r#"
kind: Workload
name: web
image: busybox:1
command: [httpd, -f]
env: {A: "1"}
resources: {cpuMillis: 250, memoryBytes: 67108864}
replicas: 3
ports:
  - name: http
    containerPort: 8080
placement: {strategy: spread, antiAffinity: true, constraints: [{key: zone, op: in, values: [a]}]}
updateStrategy: {maxUnavailable: 0, maxSurge: 1}
liveness: {http: {port: 8080, path: /healthz}, periodMs: 1000}
restartPolicy: on_failure
stopGraceMs: 2000
---
kind: Service
name: web
workload: web
ports: [{name: http, port: 80, targetPort: 8080}]
---
# trailing empty document
"#;
        let m = parse("t.yaml", text).unwrap();
        assert_eq!(m.len(), 2);
        let Manifest::Workload { name, body } = &m[0] else {
            panic!("{m:?}")
        };
        assert_eq!(name, "web");
        assert_eq!(body.name.as_deref(), Some("web"));
        assert_eq!(body.replicas, 3);
        assert_eq!(body.ports[0].container_port, 8080);
        assert_eq!(body.resources.memory_bytes, 64 << 20);
        assert!(body.placement.anti_affinity);
        assert_eq!(
            body.liveness.as_ref().unwrap().http.as_ref().unwrap().path,
            "/healthz"
        );
        assert_eq!(body.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(m[1].kind(), "service");
    }

    #[test]
    fn json_and_default_kind() {
        let m = parse("-", r#"{"name": "api", "image": "x:1", "replicas": 2}"#).unwrap();
        assert_eq!(m[0].kind(), "workload");
        assert_eq!(m[0].name(), "api");
    }

    #[test]
    fn errors_name_document_field_and_line() {
        let text = "name: ok\nimage: x\n---\nname: bad\nimage: x\nports:\n  - name: http\n    containerPort: eighty\n";
        let e = parse("w.yaml", text).unwrap_err().to_string();
        assert!(e.contains("w.yaml: document 2"), "{e}");
        assert!(e.contains("ports[0].containerPort"), "{e}");
        assert!(e.contains("line 8"), "{e}");

        let e = parse("w.yaml", "name: a\nimage: x\nreplica: 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `replica`") && e.contains("line 3"),
            "{e}"
        );

        let e = parse("w.yaml", "name: a\nimage: [x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed yaml") && e.contains("line"), "{e}");

        let e = parse("w.yaml", "kind: Pod\nname: a\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("field kind") && e.contains("Pod"), "{e}");

        let e = parse("w.yaml", "image: x\n").unwrap_err().to_string();
        assert!(e.contains("missing field `name`"), "{e}");

        let e = parse("w.yaml", "# nothing\n").unwrap_err().to_string();
        assert!(e.contains("no document"), "{e}");

        let e = parse("w.yaml", "- a\n- b\n").unwrap_err().to_string();
        assert!(e.contains("expected a mapping"), "{e}");
    }

    /// Every field of the REST bodies is accepted in a document (fails when the API grows a
    /// field this mirror lacks).
    #[test]
    fn documents_accept_every_rest_field() {
        let mut w = serde_json::to_value(WorkloadWrite {
            name: Some("a".into()),
            image: "x".into(),
            update_strategy: Some(UpdateStrategyWrite {
                max_unavailable: 1,
                max_surge: 1,
            }),
            liveness: Some(ProbeWrite::default()),
            readiness: Some(ProbeWrite::default()),
            stop_grace_ms: Some(1),
            ..Default::default()
        })
        .unwrap();
        w["kind"] = "Workload".into();
        let text = serde_json::to_string(&w).unwrap();
        parse("w", &text).unwrap();
        let mut s = serde_json::to_value(ServiceWrite {
            name: Some("a".into()),
            workload: "a".into(),
            vip: Some("198.18.0.1".into()),
            ..Default::default()
        })
        .unwrap();
        s["kind"] = "Service".into();
        parse("s", &serde_json::to_string(&s).unwrap()).unwrap();
    }
}
