//! The object commands: `apply`, `get`, `describe`, `delete`, `scale`, `cordon`, `uncordon`,
//! `drain`, `logs`, `exec`, `events`. Reads print the server's JSON unchanged for `-o json|yaml`
//! (so fields newer than this build are shown) and the tables of `view` otherwise.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;
use flotilla_api::cluster::{
    Event, InstancePhase, InstanceRecord, NodeRecord, ProbeAction, WorkloadRecord, WorkloadSpec,
};
use flotilla_api::rest::{
    ConstraintWrite, EventList, ExecProbeWrite, HttpProbeWrite, InstanceList, NodePatch,
    PlacementWrite, PortWrite, ProbeWrite, ResourcesWrite, TcpProbeWrite, UpdateStrategyWrite,
    WatchEvent, WorkloadWrite,
};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::client::{seg, ApiFailure, Client, Req};
use crate::manifest::{self, Manifest};
use crate::view;
use crate::{print, Output};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetKind {
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "workload", alias = "wl")]
    Workloads,
    #[value(alias = "instance", alias = "inst")]
    Instances,
    #[value(alias = "event", alias = "ev")]
    Events,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DescribeKind {
    Workload,
    Node,
    Instance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeleteKind {
    Workload,
    Service,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScaleKind {
    Workload,
}

fn decode<T: DeserializeOwned>(v: &Value, what: &str) -> Result<T> {
    serde_json::from_value(v.clone()).with_context(|| format!("malformed {what} in the answer"))
}

fn items(v: &Value) -> Vec<Value> {
    v.get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

async fn list_instances(client: &Client) -> Result<Vec<InstanceRecord>> {
    Ok(client.get::<InstanceList>("/v1/instances").await?.items)
}

async fn list_events(client: &Client) -> Result<Vec<Event>> {
    Ok(client.get::<EventList>("/v1/events").await?.items)
}

/// Read `text` of `-f` (a file or stdin).
fn read_input(f: &PathBuf) -> Result<(String, String)> {
    if f.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read stdin")?;
        return Ok(("stdin".into(), s));
    }
    let s = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
    Ok((f.display().to_string(), s))
}

pub async fn apply(client: &Client, files: &[PathBuf], output: Output) -> Result<()> {
    // Decode everything first: a typo anywhere sends nothing.
    let mut docs = Vec::new();
    for f in files {
        let (source, text) = read_input(f)?;
        docs.extend(manifest::parse(&source, &text)?);
    }
    let mut results = Vec::new();
    for m in &docs {
        let (path, req) = match m {
            Manifest::Workload { name, body } => {
                let path = format!("/v1/workloads/{}", seg(name));
                (path, serde_json::to_value(body)?)
            }
            Manifest::Service { name, body } => {
                let path = format!("/v1/services/{}", seg(name));
                (path, serde_json::to_value(body)?)
            }
        };
        let r = Req {
            method: Method::PUT,
            path: &path,
            body: Some(req),
            headers: Vec::new(),
        };
        let (status, v) = client
            .send_json(&r)
            .await
            .with_context(|| format!("{}/{} refused", m.kind(), m.name()))?;
        let verb = if status == 201 {
            "created"
        } else {
            "configured"
        };
        if matches!(output, Output::Table | Output::Wide) {
            println!("{}/{} {verb}", m.kind(), m.name());
        }
        results.push(v);
    }
    if matches!(output, Output::Json | Output::Yaml) {
        print(output, &results, String::new)?;
    }
    Ok(())
}

pub async fn get(client: &Client, kind: GetKind, name: Option<&str>, output: Output) -> Result<()> {
    let now = view::now_ms();
    let wide = output == Output::Wide;
    match kind {
        GetKind::Nodes => {
            let (raw, list) = match name {
                Some(n) => {
                    let v: Value = client.get(&format!("/v1/nodes/{}", seg(n))).await?;
                    (v.clone(), vec![v])
                }
                None => {
                    let v: Value = client.get("/v1/nodes").await?;
                    let i = items(&v);
                    (v, i)
                }
            };
            if matches!(output, Output::Json | Output::Yaml) {
                return print(output, &raw, String::new);
            }
            let nodes = list
                .into_iter()
                .map(|v| Ok((v.clone(), decode::<NodeRecord>(&v, "node")?)))
                .collect::<Result<Vec<_>>>()?;
            let inst = list_instances(client).await?;
            print(output, &raw, || view::nodes_table(&nodes, &inst, now, wide))
        }
        GetKind::Workloads => {
            let (raw, list) = match name {
                Some(n) => {
                    let v: Value = client.get(&format!("/v1/workloads/{}", seg(n))).await?;
                    (v.clone(), vec![v])
                }
                None => {
                    let v: Value = client.get("/v1/workloads").await?;
                    let i = items(&v);
                    (v, i)
                }
            };
            if matches!(output, Output::Json | Output::Yaml) {
                return print(output, &raw, String::new);
            }
            let wls = list
                .into_iter()
                .map(|v| Ok((v.clone(), decode::<WorkloadRecord>(&v, "workload")?)))
                .collect::<Result<Vec<_>>>()?;
            let inst = list_instances(client).await?;
            print(output, &raw, || {
                view::workloads_table(&wls, &inst, now, wide)
            })
        }
        GetKind::Instances => {
            let raw: Value = match name {
                Some(n) => client.get(&format!("/v1/instances/{}", seg(n))).await?,
                None => client.get("/v1/instances").await?,
            };
            if matches!(output, Output::Json | Output::Yaml) {
                return print(output, &raw, String::new);
            }
            let list = if name.is_some() {
                vec![decode::<InstanceRecord>(&raw, "instance")?]
            } else {
                decode::<InstanceList>(&raw, "instance list")?.items
            };
            print(output, &raw, || view::instances_table(&list, now, wide))
        }
        GetKind::Events => {
            let raw: Value = client.get("/v1/events").await?;
            let mut list = decode::<EventList>(&raw, "event list")?.items;
            // NAME filters by subject: `workload/web`, or any subject id `web`.
            if let Some(n) = name {
                list.retain(|e| {
                    let s = e.subject.to_string();
                    s == n || s.split_once('/').is_some_and(|(_, id)| id == n)
                });
                return print(output, &list, || view::events_table(&list, now, wide));
            }
            print(output, &raw, || view::events_table(&list, now, wide))
        }
    }
}

pub async fn describe(
    client: &Client,
    kind: DescribeKind,
    name: &str,
    output: Output,
) -> Result<()> {
    let now = view::now_ms();
    match kind {
        DescribeKind::Workload => {
            let raw: Value = client.get(&format!("/v1/workloads/{}", seg(name))).await?;
            let w: WorkloadRecord = decode(&raw, "workload")?;
            let inst = list_instances(client).await?;
            let events = list_events(client).await?;
            print(output, &raw, || {
                view::describe_workload(&raw, &w, &inst, &events, now)
            })
        }
        DescribeKind::Node => {
            let raw: Value = client.get(&format!("/v1/nodes/{}", seg(name))).await?;
            let n: NodeRecord = decode(&raw, "node")?;
            let inst = list_instances(client).await?;
            let events = list_events(client).await?;
            print(output, &raw, || {
                view::describe_node(&raw, &n, &inst, &events, now)
            })
        }
        DescribeKind::Instance => {
            let raw: Value = client.get(&format!("/v1/instances/{}", seg(name))).await?;
            let i: InstanceRecord = decode(&raw, "instance")?;
            let events = list_events(client).await?;
            print(output, &raw, || view::describe_instance(&i, &events, now))
        }
    }
}

pub async fn delete(client: &Client, kind: DeleteKind, name: &str, output: Output) -> Result<()> {
    let (what, path) = match kind {
        DeleteKind::Workload => ("workload", format!("/v1/workloads/{}", seg(name))),
        DeleteKind::Service => ("service", format!("/v1/services/{}", seg(name))),
    };
    let v: Value = client
        .call(Method::DELETE, &path, None::<&()>, None)
        .await?;
    print(output, &v, || {
        format!(
            "{what}/{name} deleted (revision {})\n",
            view::opt(v.get("revision").and_then(Value::as_u64))
        )
    })
}

/// The write body that reproduces `spec` (for read-modify-write).
pub fn spec_to_write(spec: &WorkloadSpec) -> WorkloadWrite {
    let probe = |p: &flotilla_api::cluster::Probe| {
        let mut w = ProbeWrite {
            initial_delay_ms: Some(p.initial_delay_ms),
            period_ms: Some(p.period_ms),
            timeout_ms: Some(p.timeout_ms),
            failure_threshold: Some(p.failure_threshold),
            success_threshold: Some(p.success_threshold),
            ..Default::default()
        };
        match &p.action {
            ProbeAction::Exec { command } => {
                w.exec = Some(ExecProbeWrite {
                    command: command.clone(),
                })
            }
            ProbeAction::Tcp { port } => w.tcp = Some(TcpProbeWrite { port: *port }),
            ProbeAction::Http { port, path } => {
                w.http = Some(HttpProbeWrite {
                    port: *port,
                    path: path.clone(),
                })
            }
        }
        w
    };
    WorkloadWrite {
        name: Some(spec.name.clone()),
        image: spec.image.clone(),
        command: spec.command.clone(),
        env: spec.env.clone(),
        resources: ResourcesWrite {
            cpu_millis: spec.resources.cpu_millis,
            memory_bytes: spec.resources.memory_bytes,
        },
        replicas: spec.replicas,
        ports: spec
            .ports
            .iter()
            .map(|p| PortWrite {
                name: p.name.clone(),
                container_port: p.container_port,
                protocol: p.protocol,
            })
            .collect(),
        placement: PlacementWrite {
            constraints: spec
                .placement
                .constraints
                .iter()
                .map(|c| ConstraintWrite {
                    key: c.key.clone(),
                    op: c.op,
                    values: c.values.clone(),
                })
                .collect(),
            strategy: spec.placement.strategy,
            anti_affinity: spec.placement.anti_affinity,
        },
        migration_policy: spec.migration_policy,
        update_strategy: Some(UpdateStrategyWrite {
            max_unavailable: spec.update_strategy.max_unavailable,
            max_surge: spec.update_strategy.max_surge,
        }),
        liveness: spec.liveness.as_ref().map(probe),
        readiness: spec.readiness.as_ref().map(probe),
        restart_policy: spec.restart_policy,
        stop_grace_ms: Some(spec.stop_grace_ms),
    }
}

fn route_missing(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>()
        .is_some_and(ApiFailure::no_such_route)
}

pub async fn scale(client: &Client, name: &str, replicas: u32, output: Output) -> Result<()> {
    let path = format!("/v1/workloads/{}/scale", seg(name));
    let body = serde_json::json!({ "replicas": replicas });
    let direct = client
        .call::<Value>(Method::POST, &path, Some(&body), None)
        .await;
    let v = match direct {
        Ok(v) => v,
        // A controller without the scale endpoint: read, change, write at that revision.
        Err(e) if route_missing(&e) => scale_by_put(client, name, replicas).await?,
        Err(e) => return Err(e),
    };
    print(output, &v, || {
        format!("workload/{name} scaled to {replicas}\n")
    })
}

async fn scale_by_put(client: &Client, name: &str, replicas: u32) -> Result<Value> {
    let path = format!("/v1/workloads/{}", seg(name));
    for _ in 0..5 {
        let (raw, etag) = client.get_with_etag(&path).await?;
        let w: WorkloadRecord = decode(&raw, "workload")?;
        let mut body = spec_to_write(&w.spec);
        body.replicas = replicas;
        let etag = etag.unwrap_or_else(|| format!("\"{}\"", w.revision));
        let req = Req::new(Method::PUT, &path)
            .json(&body)?
            .header("if-match", etag);
        match client.send_json(&req).await {
            Ok((_, v)) => return Ok(v),
            // Someone else wrote in between: read again.
            Err(e)
                if e.downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.status == 412) => {}
            Err(e) => return Err(e),
        }
    }
    bail!("workload {name} kept changing while scaling it; try again")
}

pub async fn set_schedulable(
    client: &Client,
    node: &str,
    schedulable: bool,
    output: Output,
) -> Result<()> {
    let patch = NodePatch {
        schedulable: Some(schedulable),
        labels: None,
    };
    let v: Value = client
        .call(
            Method::PATCH,
            &format!("/v1/nodes/{}", seg(node)),
            Some(&patch),
            None,
        )
        .await?;
    let verb = if schedulable {
        "uncordoned"
    } else {
        "cordoned"
    };
    print(output, &v, || format!("node/{node} {verb}\n"))
}

fn live_on(inst: &[InstanceRecord], node: &str) -> usize {
    inst.iter()
        .filter(|i| i.owner_node.as_deref() == Some(node))
        .filter(|i| {
            !matches!(
                i.phase,
                InstancePhase::Stopped | InstancePhase::Failed | InstancePhase::Lost
            )
        })
        .count()
}

pub async fn drain(
    client: &Client,
    node: &str,
    wait: bool,
    timeout: Duration,
    output: Output,
) -> Result<()> {
    set_schedulable(client, node, false, Output::Table).await?;
    let path = format!("/v1/nodes/{}/drain", seg(node));
    let v = match client
        .call::<Value>(Method::POST, &path, Some(&serde_json::json!({})), None)
        .await
    {
        Ok(v) => v,
        Err(e) if route_missing(&e) => bail!(
            "node {node} is cordoned, but this controller has no drain endpoint (POST {path}): its instances were not moved"
        ),
        Err(e) => return Err(e),
    };
    if wait {
        let deadline = Instant::now() + timeout;
        loop {
            let left = live_on(&list_instances(client).await?, node);
            if left == 0 {
                break;
            }
            if Instant::now() >= deadline {
                bail!("node {node} still has {left} instances after {timeout:?}; the drain goes on in the cluster");
            }
            eprintln!("node/{node}: {left} instances left");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    print(output, &v, || {
        if wait {
            format!("node/{node} drained\n")
        } else {
            format!("node/{node} drain requested\n")
        }
    })
}

pub async fn logs(
    client: &Client,
    instance: &str,
    follow: bool,
    tail: Option<usize>,
) -> Result<()> {
    let mut path = format!("/v1/instances/{}/logs?follow={follow}", seg(instance));
    if let Some(t) = tail {
        path.push_str(&format!("&tail={t}"));
    }
    let mut resp = match client.send(&Req::new(Method::GET, &path), None, true).await {
        Ok(r) => r,
        Err(e) if route_missing(&e) => bail!(
            "this controller has no instance logs endpoint (GET /v1/instances/{{id}}/logs): {e}"
        ),
        Err(e) => return Err(e),
    };
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = resp.chunk().await.context("the log stream broke off")? {
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}

/// Run `command` in the instance; prints its output and returns its exit code.
pub async fn exec(client: &Client, instance: &str, command: Vec<String>) -> Result<i32> {
    let req = flotilla_api::ExecRequest {
        command,
        ..Default::default()
    };
    let r: flotilla_api::ExecResult = match client
        .call(
            Method::POST,
            &format!("/v1/instances/{}/exec", seg(instance)),
            Some(&req),
            None,
        )
        .await
    {
        Ok(r) => r,
        Err(e) if route_missing(&e) => bail!(
            "this controller has no instance exec endpoint (POST /v1/instances/{{id}}/exec): {e}"
        ),
        Err(e) => return Err(e),
    };
    std::io::stdout().write_all(r.stdout.as_bytes())?;
    std::io::stderr().write_all(r.stderr.as_bytes())?;
    Ok(r.exit_code)
}

/// Parse one SSE frame (lines up to a blank line) into its `data`.
pub fn sse_data(frame: &str) -> Option<String> {
    let data: Vec<&str> = frame
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        None
    } else {
        Some(data.join("\n"))
    }
}

pub async fn events(client: &Client, watch: bool, output: Output) -> Result<()> {
    let now = view::now_ms();
    let raw: Value = client.get("/v1/events").await?;
    let list = decode::<EventList>(&raw, "event list")?;
    if !watch {
        return print(output, &raw, || {
            view::events_table(&list.items, now, output == Output::Wide)
        });
    }
    let emit = |e: &Event| -> Result<()> {
        let line = match output {
            Output::Json => serde_json::to_string(e)?,
            Output::Yaml => format!("---\n{}", yaml_serde::to_string(e)?.trim_end()),
            Output::Table | Output::Wide => view::event_line(e),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    };
    for e in &list.items {
        emit(e)?;
    }
    // Then the stream of new ones, from the index the list was read at. A broken stream (the
    // controller went away) is resumed from the last revision seen, through any endpoint.
    let mut from = list.index;
    let mut last_seq = list.items.last().map_or(0, |e| e.seq);
    let mut failing_since: Option<Instant> = None;
    loop {
        let path = format!("/v1/watch?kind=event&from={from}");
        let broke = match client.send(&Req::new(Method::GET, &path), None, true).await {
            Ok(mut resp) => {
                failing_since = None;
                let mut buf = String::new();
                loop {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            buf.push_str(&String::from_utf8_lossy(&chunk));
                            while let Some(end) = buf.find("\n\n") {
                                let frame: String = buf.drain(..end + 2).collect();
                                let Some(data) = sse_data(&frame) else {
                                    continue;
                                };
                                let w: WatchEvent =
                                    serde_json::from_str(&data).context("malformed watch event")?;
                                // One entry can record several events: resume at the
                                // revision before, the seq filter drops repeats.
                                from = from.max(w.revision.saturating_sub(1));
                                if let Some(obj) = w.object {
                                    let e: Event =
                                        serde_json::from_value(obj).context("malformed event")?;
                                    if e.seq > last_seq {
                                        last_seq = e.seq;
                                        emit(&e)?;
                                    }
                                }
                            }
                        }
                        Ok(None) => break "the controller closed the stream".to_owned(),
                        Err(e) => break format!("the stream broke off: {e}"),
                    }
                }
            }
            // A refusal (bad token, bad query) does not get better by retrying.
            Err(e) if e.downcast_ref::<ApiFailure>().is_some() => return Err(e),
            Err(e) => format!("{e:#}"),
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > Duration::from_secs(60) {
            bail!("the event stream is gone for a minute: {broke}");
        }
        eprintln!("events: {broke}; resuming from revision {from}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames() {
        assert_eq!(
            sse_data("event: event\nid: 7\ndata: {\"a\":1}\n\n").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(sse_data(": keep-alive\n\n"), None);
    }

    #[test]
    fn spec_round_trips_through_the_write_body() {
        let text = "name: web\nimage: x:1\nreplicas: 2\nports: [{name: http, containerPort: 80}]\nliveness: {exec: {command: [true]}, periodMs: 500}\nreadiness: {http: {port: 80, path: /r}}\nplacement: {strategy: spread}\nstopGraceMs: 3000\n";
        let Manifest::Workload { body, .. } = manifest::parse("t", text).unwrap().remove(0) else {
            panic!()
        };
        let spec = body.clone().into_spec("web".into());
        let back = spec_to_write(&spec);
        assert_eq!(back.clone().into_spec("web".into()), spec);
        assert_eq!(back.replicas, 2);
        assert_eq!(back.liveness.unwrap().period_ms, Some(500));
    }
}
