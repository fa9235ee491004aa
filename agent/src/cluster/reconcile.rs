//! The reconcile loop: containers follow the node's assignments (the table in
//! docs/cluster-protocol.md). It runs after every watch answer, when a probe or a stop task
//! says something changed, and every second; each pass reads the runtime's state from disk
//! (never from memory), so it is idempotent and a restarted agent picks up where the old one
//! was.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::cluster::{
    ExitReason, InstancePhase, InstanceRecord, ObservedState, RestartPolicy,
};
use flotilla_api::rest::InstanceStatusReport;
use flotilla_api::ContainerRequest;
use flotilla_runtime::runtime::{ContainerState, Status};
use reqwest::Method;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::client::Refused;
use super::probe::{self, Health};
use super::{Member, EPOCH_LABEL, INSTANCE_LABEL, WORKLOAD_LABEL};
use crate::server;

/// Restarts allowed within `RESTART_WINDOW` before the instance is reported failed.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(300);
/// A report is repeated at least this often while nothing changes.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// The agent's memory of one instance (all of it can be lost: it only paces restarts and
/// reports).
#[derive(Default)]
struct Local {
    epoch: u64,
    restarts: u32,
    recent: VecDeque<Instant>,
    not_before: Option<Instant>,
    gave_up: bool,
    /// The controller refused a report at this epoch: the node no longer owns it.
    fenced: Option<u64>,
    /// Probers of the container with this init pid.
    probes: Option<(i32, Arc<Health>, Vec<JoinHandle<()>>)>,
    last_report: Option<(String, Instant)>,
    last_error: Option<String>,
    /// A stop or removal in progress.
    busy: Option<JoinHandle<()>>,
}

impl Local {
    fn stop_probes(&mut self) {
        if let Some((_, _, handles)) = self.probes.take() {
            for h in handles {
                h.abort();
            }
        }
    }

    fn busy(&self) -> bool {
        self.busy.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Count a restart; false when the budget is spent (then the instance has failed).
    fn note_restart(&mut self) -> bool {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= MAX_RESTARTS {
            self.gave_up = true;
            return false;
        }
        self.recent.push_back(now);
        self.restarts += 1;
        // 0.5 s, 1 s, 2 s, ... at most 10 s.
        let exp = (self.recent.len() as u32).saturating_sub(1).min(5);
        let delay = Duration::from_millis(500 * (1u64 << exp)).min(Duration::from_secs(10));
        self.not_before = Some(now + delay);
        true
    }
}

fn exit_reason(c: &ContainerState, message: &str) -> Option<ExitReason> {
    c.exit.as_ref().map(|e| ExitReason {
        code: e.exit_code,
        signal: e.signal,
        oom_killed: e.oom_killed,
        message: message.to_owned(),
    })
}

fn succeeded(c: &ContainerState) -> bool {
    c.exit
        .as_ref()
        .is_some_and(|e| e.exit_code == Some(0) && e.signal.is_none() && !e.oom_killed)
}

struct Reconciler {
    m: Arc<Member>,
    locals: BTreeMap<String, Local>,
    changed: Arc<Notify>,
}

/// Run the loop forever. `rx` carries the latest assignments (`None` until the first answer:
/// nothing is removed before the agent knows what it should run).
pub async fn run(m: Arc<Member>, mut rx: watch::Receiver<Option<Vec<InstanceRecord>>>) {
    let mut r = Reconciler {
        m,
        locals: BTreeMap::new(),
        changed: Arc::new(Notify::new()),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let desired = rx.borrow_and_update().clone();
        r.pass(desired.as_deref()).await;
        tokio::select! {
            _ = rx.changed() => {}
            _ = r.changed.notified() => {}
            _ = tick.tick() => {}
        }
    }
}

impl Reconciler {
    async fn containers(&self) -> BTreeMap<String, ContainerState> {
        let rt = self.m.st.rt.clone();
        match tokio::task::spawn_blocking(move || rt.list()).await {
            Ok(Ok(v)) => v
                .into_iter()
                .filter_map(|c| {
                    let id = c.record.labels.get(INSTANCE_LABEL)?.clone();
                    Some((id, c))
                })
                .collect(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot list containers");
                BTreeMap::new()
            }
            Err(_) => BTreeMap::new(),
        }
    }

    async fn pass(&mut self, desired: Option<&[InstanceRecord]>) {
        let containers = self.containers().await;
        let node = self.m.node_id.clone();
        let mine: BTreeMap<&str, &InstanceRecord> = desired
            .unwrap_or_default()
            .iter()
            .filter(|i| i.owner_node.as_deref() == Some(node.as_str()))
            .map(|i| (i.id.as_str(), i))
            .collect();
        for (id, inst) in &mine {
            let c = containers.get(*id);
            self.instance(inst, c).await;
        }
        if desired.is_some() {
            // Containers of instances this node no longer owns: stop and remove them.
            for (id, c) in &containers {
                if !mine.contains_key(id.as_str()) {
                    let grace = Duration::from_secs(10);
                    self.stop_in_background(id, c, grace, "no longer assigned to this node");
                }
            }
            self.locals.retain(|id, l| {
                let keep =
                    mine.contains_key(id.as_str()) || containers.contains_key(id) || l.busy();
                if !keep {
                    l.stop_probes();
                }
                keep
            });
        }
    }

    async fn instance(&mut self, inst: &InstanceRecord, c: Option<&ContainerState>) {
        let l = self.locals.entry(inst.id.clone()).or_default();
        if l.epoch != inst.epoch {
            // A new ownership term: restart budget and fencing start over.
            l.epoch = inst.epoch;
            l.restarts = 0;
            l.recent.clear();
            l.gave_up = false;
            l.fenced = None;
            l.last_report = None;
            l.not_before = None;
        }
        if l.busy() {
            return;
        }
        let grace = Duration::from_millis(
            inst.spec
                .as_ref()
                .map_or(10_000, |s| s.stop_grace_ms)
                .min(3_600_000),
        );
        if l.fenced == Some(inst.epoch) {
            if let Some(c) = c {
                self.stop_in_background(
                    &inst.id,
                    c,
                    grace,
                    "fenced: the controller refused this node's report",
                );
            }
            return;
        }
        match inst.phase {
            InstancePhase::Scheduled | InstancePhase::Running => self.ensure_running(inst, c).await,
            // A migration drives the container itself (a later issue); leave it alone.
            InstancePhase::Migrating => {}
            InstancePhase::Stopping => match c {
                Some(c) if c.status != Status::Stopped => {
                    self.stop_in_background(&inst.id, c, grace, "instance is stopping");
                }
                Some(c) => {
                    let c = c.clone();
                    self.remove(&inst.id).await;
                    let exit = exit_reason(&c, "stopped");
                    self.report(inst, ObservedState::Stopped, exit, None, false)
                        .await;
                }
                None => {
                    let exit = Some(ExitReason {
                        message: "stopped".into(),
                        ..Default::default()
                    });
                    self.report(inst, ObservedState::Stopped, exit, None, false)
                        .await;
                }
            },
            InstancePhase::Stopped | InstancePhase::Failed | InstancePhase::Lost => {
                if let Some(c) = c {
                    self.stop_in_background(&inst.id, c, grace, "instance is no longer running");
                }
            }
        }
    }

    async fn ensure_running(&mut self, inst: &InstanceRecord, c: Option<&ContainerState>) {
        let policy = inst
            .spec
            .as_ref()
            .map(|s| s.restart_policy)
            .unwrap_or_default();
        let l = self.locals.entry(inst.id.clone()).or_default();
        if l.gave_up {
            if let Some(c) = c {
                if c.status != Status::Stopped {
                    self.stop_in_background(
                        &inst.id,
                        c,
                        Duration::from_secs(1),
                        "restart budget spent",
                    );
                    return;
                }
            }
            let msg = format!(
                "restarted {MAX_RESTARTS} times within {} s; gave up",
                RESTART_WINDOW.as_secs()
            );
            let exit = c.and_then(|c| exit_reason(c, &msg)).or(Some(ExitReason {
                message: msg,
                ..Default::default()
            }));
            self.report(inst, ObservedState::Failed, exit, None, false)
                .await;
            return;
        }
        let Some(c) = c else {
            if l.not_before.is_some_and(|t| Instant::now() < t) {
                return;
            }
            self.create(inst).await;
            return;
        };
        match c.status {
            Status::Created => {
                let rt = self.m.st.rt.clone();
                let id = inst.id.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || rt.start(&id)).await {
                    tracing::warn!(instance = %inst.id, error = %e, "cannot start an adopted container; recreating it");
                    self.remove(&inst.id).await;
                }
            }
            Status::Paused => {}
            Status::Running => {
                let health = self.ensure_probes(inst, c).await;
                if health.dead.load(Ordering::SeqCst) {
                    tracing::warn!(instance = %inst.id, "liveness failed: restarting");
                    let l = self.locals.entry(inst.id.clone()).or_default();
                    l.stop_probes();
                    let again = policy != RestartPolicy::Never && l.note_restart();
                    if !again {
                        l.gave_up = true;
                    }
                    self.remove(&inst.id).await;
                    let state = if again {
                        ObservedState::Starting
                    } else {
                        ObservedState::Failed
                    };
                    let exit = Some(ExitReason {
                        message: "liveness probe failed".into(),
                        ..Default::default()
                    });
                    self.report(inst, state, exit, None, false).await;
                    return;
                }
                let ready = health.ready.load(Ordering::SeqCst);
                let ip = server::container_ip(&self.m.st, &inst.id)
                    .await
                    .map(|i| i.to_string());
                self.report(inst, ObservedState::Running, None, ip.clone(), ready)
                    .await;
            }
            Status::Stopped => {
                let ok = succeeded(c);
                let restart = match policy {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => !ok,
                    RestartPolicy::Never => false,
                };
                let exit = exit_reason(c, if ok { "exited" } else { "failed" });
                let l = self.locals.entry(inst.id.clone()).or_default();
                l.stop_probes();
                if !restart {
                    let state = if ok {
                        ObservedState::Exited
                    } else {
                        ObservedState::Failed
                    };
                    self.report(inst, state, exit, None, false).await;
                    return;
                }
                let again = l.note_restart();
                tracing::info!(instance = %inst.id, exit = ?c.exit, restart = again, "container exited");
                self.remove(&inst.id).await;
                let state = if again {
                    ObservedState::Starting
                } else {
                    ObservedState::Failed
                };
                self.report(inst, state, exit, None, false).await;
            }
        }
    }

    /// Probers for the container's current process (new ones after a restart).
    async fn ensure_probes(&mut self, inst: &InstanceRecord, c: &ContainerState) -> Arc<Health> {
        let pid = c.record.init_pid;
        let ip = server::container_ip(&self.m.st, &inst.id).await;
        let l = self.locals.entry(inst.id.clone()).or_default();
        if let Some((p, h, _)) = &l.probes {
            if *p == pid {
                return h.clone();
            }
        }
        l.stop_probes();
        let health = Arc::new(Health::default());
        let spec = inst.spec.clone().unwrap_or_default();
        if spec.readiness.is_none() {
            health.ready.store(true, Ordering::SeqCst);
        }
        let target = probe::Target {
            rt: self.m.st.rt.clone(),
            container: inst.id.clone(),
            ip,
            node_netns: self.m.node_netns.clone(),
        };
        let mut handles = vec![];
        for (p, liveness) in [(spec.liveness, true), (spec.readiness, false)] {
            if let Some(p) = p {
                handles.push(tokio::spawn(probe::prober(
                    p,
                    target.clone(),
                    health.clone(),
                    liveness,
                    self.changed.clone(),
                )));
            }
        }
        l.probes = Some((pid, health.clone(), handles));
        health
    }

    async fn create(&mut self, inst: &InstanceRecord) {
        let r = self.try_create(inst).await;
        match r {
            Ok(info) => {
                tracing::info!(instance = %inst.id, epoch = inst.epoch, ip = ?info.ip, "instance started");
                let l = self.locals.entry(inst.id.clone()).or_default();
                l.last_error = None;
                // The next pass reports it running, with its probes.
                self.changed.notify_one();
            }
            Err(e) => {
                tracing::warn!(instance = %inst.id, error = %e, "cannot start instance");
                let l = self.locals.entry(inst.id.clone()).or_default();
                let delay = if l.last_error.is_some() { 5 } else { 1 };
                l.not_before = Some(Instant::now() + Duration::from_secs(delay));
                l.last_error = Some(e.clone());
                let exit = Some(ExitReason {
                    message: e,
                    ..Default::default()
                });
                self.report(inst, ObservedState::Pending, exit, None, false)
                    .await;
            }
        }
    }

    async fn try_create(
        &self,
        inst: &InstanceRecord,
    ) -> Result<flotilla_api::ContainerInfo, String> {
        let spec = inst
            .spec
            .as_ref()
            .ok_or("the instance carries no workload spec")?;
        self.ensure_image(&spec.image).await?;
        let mut labels = BTreeMap::new();
        labels.insert(INSTANCE_LABEL.to_owned(), inst.id.clone());
        labels.insert(EPOCH_LABEL.to_owned(), inst.epoch.to_string());
        labels.insert(WORKLOAD_LABEL.to_owned(), inst.workload.clone());
        let req = ContainerRequest {
            name: inst.id.clone(),
            image: Some(spec.image.clone()),
            command: spec.command.clone(),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            hostname: Some(inst.id.clone()),
            resources: flotilla_api::ResourceSpec {
                memory_bytes: (spec.resources.memory_bytes > 0)
                    .then(|| spec.resources.memory_bytes.min(i64::MAX as u64) as i64),
                cpu_millis: (spec.resources.cpu_millis > 0).then_some(spec.resources.cpu_millis),
                ..Default::default()
            },
            start: true,
            labels,
            ..Default::default()
        };
        server::create_container(&self.m.st, req)
            .await
            .map_err(|e| e.detail().to_owned())
    }

    async fn ensure_image(&self, reference: &str) -> Result<(), String> {
        let store = self.m.st.images.clone();
        let r = reference.to_owned();
        let have = tokio::task::spawn_blocking(move || store.get(&r).is_ok())
            .await
            .unwrap_or(false);
        if have {
            return Ok(());
        }
        let host = reference.split('/').next().unwrap_or_default();
        let mut opts = flotilla_image::PullOptions::default();
        opts.registry.plain_http =
            reference.contains('/') && self.m.registry_insecure.iter().any(|h| h == host);
        tracing::info!(
            reference,
            plain_http = opts.registry.plain_http,
            "pulling image"
        );
        self.m
            .st
            .images
            .pull(reference, &opts)
            .await
            .map(|_| ())
            .map_err(|e| format!("image {reference}: {}", flotilla_image::error_chain(&e)))
    }

    async fn remove(&mut self, id: &str) {
        if let Err(e) = server::remove_container(&self.m.st, id, true).await {
            if e.status() != axum::http::StatusCode::NOT_FOUND {
                tracing::warn!(container = %id, error = %e.detail(), "cannot remove container");
            }
        }
    }

    /// SIGTERM, SIGKILL after `grace`, then remove; the next pass reports.
    fn stop_in_background(&mut self, id: &str, c: &ContainerState, grace: Duration, why: &str) {
        let l = self.locals.entry(id.to_owned()).or_default();
        if l.busy() {
            return;
        }
        l.stop_probes();
        tracing::info!(container = %id, why, status = %c.status, "stopping container");
        let st = self.m.st.clone();
        let id = id.to_owned();
        let running = c.status == Status::Running;
        let changed = self.changed.clone();
        l.busy = Some(tokio::spawn(async move {
            if running {
                let rt = st.rt.clone();
                let id2 = id.clone();
                let r = tokio::task::spawn_blocking(move || rt.stop(&id2, grace)).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!(container = %id, error = %e, "stop failed; removing by force");
                }
            }
            if let Err(e) = server::remove_container(&st, &id, true).await {
                tracing::warn!(container = %id, error = %e.detail(), "cannot remove container");
            }
            changed.notify_one();
        }));
    }

    /// Send a report when it differs from the last one sent, or every `REPORT_EVERY`.
    async fn report(
        &mut self,
        inst: &InstanceRecord,
        state: ObservedState,
        exit: Option<ExitReason>,
        ip: Option<String>,
        ready: bool,
    ) {
        let l = self.locals.entry(inst.id.clone()).or_default();
        let body = InstanceStatusReport {
            epoch: inst.epoch,
            state,
            exit,
            ip,
            ready,
            restarts: l.restarts,
        };
        let key = serde_json::to_string(&body).unwrap_or_default();
        let same_as_recorded = inst.observed.as_ref().is_some_and(|o| {
            o.state == body.state
                && o.ip == body.ip
                && o.ready == body.ready
                && o.restarts == body.restarts
                && o.exit == body.exit
        });
        if let Some((k, at)) = &l.last_report {
            if *k == key && same_as_recorded && at.elapsed() < REPORT_EVERY {
                return;
            }
            if *k == key && !same_as_recorded && at.elapsed() < Duration::from_secs(2) {
                // Sent a moment ago; the watch has not shown it yet.
                return;
            }
        }
        let path = format!("/v1/instances/{}/status", inst.id);
        let r: anyhow::Result<serde_json::Value> = self
            .m
            .client
            .call(Method::PUT, &path, Some(&body), Duration::from_secs(10))
            .await;
        let l = self.locals.entry(inst.id.clone()).or_default();
        match r {
            Ok(_) => {
                tracing::debug!(instance = %inst.id, ?state, ready, restarts = l.restarts, "reported");
                l.last_report = Some((key, Instant::now()));
            }
            Err(e) => match e.downcast_ref::<Refused>() {
                Some(r) if r.code == "stale-epoch" => {
                    tracing::warn!(instance = %inst.id, epoch = inst.epoch, detail = %r.detail, "report refused: this node is fenced off the instance");
                    l.fenced = Some(inst.epoch);
                    self.changed.notify_one();
                }
                Some(r) if r.status == reqwest::StatusCode::NOT_FOUND => {}
                _ => tracing::warn!(instance = %inst.id, error = %e, "report failed"),
            },
        }
    }
}
