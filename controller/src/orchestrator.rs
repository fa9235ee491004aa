//! The leader's reconcile loop: compares every workload with its instances and commits the
//! difference through Raft (placements, stops, deletions, workload status).
//!
//! The decisions are a pure function ([`plan`]) of the committed state, the leader's clock
//! (only to tell which node leases are valid) and the applied index (to name new instances);
//! [`run`] is the I/O around it: wake on an applied-index change or every tick, act only while
//! this controller is the leader, read the state after a read-index round (a new leader thus
//! never plans from a state that misses its predecessor's commits), propose the plan in a few
//! batched entries, wait for them, and plan again.
//!
//! Per workload, every case reduces to one rolling-update step of `flotilla-scheduler`
//! ([`plan_rollout`]) over the replica slots `0..replicas`:
//!
//! * scale up: empty slots are placed (the surge budget is `replicas + maxSurge - live`);
//! * scale down: instances in slots `>= replicas` are stopped;
//! * rolling update: instances of an older generation are replaced within `maxSurge` and
//!   `maxUnavailable`, only `ready` instances counting as available;
//! * drain: instances on a draining node count as out of date, with `maxUnavailable` 0 when no
//!   generation change is under way, so each replacement runs before its original stops;
//! * `failed`, `lost`, exited under `restartPolicy: always`, or on a node that is gone: deleted,
//!   and the slot is placed again on another node;
//! * `stopping` instances whose agent reported them stopped are deleted; a workload marked
//!   `deleting` stops all its instances and goes when none is left.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::cluster::{
    Command, DeleteInstances, DeleteWorkload, InstancePhase, InstanceRecord, NewInstance,
    ObservedState, PlaceInstances, RestartPolicy, SetWorkloadStatus, StopInstances,
    WorkloadCondition, WorkloadRecord, WorkloadStatus, WorkloadStatusUpdate,
};
use flotilla_scheduler::{
    convert::holds_resources, plan_rollout, InstanceState, NodeView, Resources, RolloutInstance,
    RolloutPolicy, WorkloadView,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::node::{ControllerError, ControllerNode};
use crate::state::ClusterState;

/// Tuning of the loop.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// A round runs at least this often while leader (lease expiries are seen this way).
    pub tick: Duration,
    /// Most instances (placed, stopped or deleted) per log entry: bounds the entry size.
    pub max_batch: usize,
    /// After a round that changed nothing, the next one waits at least this long: node
    /// heartbeats and agent reports change the applied index all the time, and a full plan
    /// per entry would keep a core busy on a large cluster.
    pub idle_gap: Duration,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            max_batch: 2_000,
            idle_gap: Duration::from_millis(50),
        }
    }
}

/// What one round decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Instances to delete (stopped, failed, lost, or on a node that is gone).
    pub delete: Vec<String>,
    /// Instances to stop gracefully.
    pub stop: Vec<String>,
    pub place: Vec<NewInstance>,
    /// Only workloads whose status changed.
    pub statuses: Vec<WorkloadStatusUpdate>,
    /// Workloads marked deleting whose last instance this plan deletes.
    pub delete_workloads: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty()
            && self.stop.is_empty()
            && self.place.is_empty()
            && self.statuses.is_empty()
            && self.delete_workloads.is_empty()
    }

    /// The plan as Raft commands, in the stages they must apply in: deletions and stops, then
    /// placements, then statuses and workload deletions (which need their instances gone).
    /// Commands within a stage are independent.
    pub fn into_stages(self, max_batch: usize, at_ms: u64) -> Vec<Vec<Command>> {
        let max_batch = max_batch.max(1);
        let mut first = Vec::new();
        for chunk in self.delete.chunks(max_batch) {
            first.push(Command::DeleteInstances(DeleteInstances {
                instance_ids: chunk.to_vec(),
                at_ms,
            }));
        }
        for chunk in self.stop.chunks(max_batch) {
            first.push(Command::StopInstances(StopInstances {
                instance_ids: chunk.to_vec(),
                at_ms,
            }));
        }
        let second = self
            .place
            .chunks(max_batch)
            .map(|chunk| {
                Command::PlaceInstances(PlaceInstances {
                    instances: chunk.to_vec(),
                    at_ms,
                })
            })
            .collect();
        let mut third: Vec<Command> = self
            .statuses
            .chunks(max_batch)
            .map(|chunk| {
                Command::SetWorkloadStatus(SetWorkloadStatus {
                    statuses: chunk.to_vec(),
                    at_ms,
                })
            })
            .collect();
        third.extend(self.delete_workloads.into_iter().map(|name| {
            Command::DeleteWorkload(DeleteWorkload {
                name,
                expect_revision: None,
                at_ms,
            })
        }));
        [first, second, third]
            .into_iter()
            .filter(|s: &Vec<Command>| !s.is_empty())
            .collect()
    }
}

/// The id of a new instance: `<workload>-<replica>-<applied index of the plan>`. Unique because
/// a plan is made once per applied index (a retry at the same index repeats the same plan, and
/// the state machine skips ids that exist).
pub fn instance_id(workload: &str, replica: u32, index: u64) -> String {
    format!("{workload}-{replica}-{index}")
}

/// The resources an instance requests (its own spec copy, else its workload's).
fn request(inst: &InstanceRecord, workloads: &BTreeMap<String, WorkloadRecord>) -> Resources {
    inst.spec
        .as_ref()
        .map(|s| Resources::from(&s.resources))
        .or_else(|| {
            workloads
                .get(&inst.workload)
                .map(|w| Resources::from(&w.spec.resources))
        })
        .unwrap_or(Resources::ZERO)
}

/// The scheduler's view of every node: usable when its lease is valid at `now_ms` and it is
/// neither cordoned nor draining; allocated is what its instances holding resources request.
pub fn node_views(state: &ClusterState, now_ms: u64) -> Vec<NodeView> {
    let mut allocated: HashMap<&str, Resources> = HashMap::with_capacity(state.nodes.len());
    for inst in state.instances.values() {
        let Some(node) = inst.owner_node.as_deref() else {
            continue;
        };
        if !holds_resources(inst.phase) {
            continue;
        }
        let slot = allocated.entry(node).or_default();
        *slot = slot.saturating_add(request(inst, &state.workloads));
    }
    state
        .nodes
        .values()
        .map(|n| {
            let alloc = allocated
                .get(n.info.id.as_str())
                .copied()
                .unwrap_or_default();
            let mut view = NodeView::from_record(n, n.lease_valid(now_ms), alloc);
            view.schedulable = n.schedulable && !n.draining;
            view
        })
        .collect()
}

/// What to do with one instance, before the rollout step.
enum Disposition {
    /// Counts for its slot.
    Live,
    /// Being stopped, not done yet.
    Stopping,
    /// Remove the record (and, unless the workload shrank, place its slot again).
    Delete { avoid_node: Option<String> },
    /// Exited on its own under a restart policy that keeps it so: holds its slot.
    Completed,
}

fn disposition(inst: &InstanceRecord, state: &ClusterState, restart: RestartPolicy) -> Disposition {
    let node_gone = inst
        .owner_node
        .as_deref()
        .is_none_or(|n| !state.nodes.contains_key(n));
    match inst.phase {
        InstancePhase::Stopping => {
            let done = inst.observed.as_ref().is_some_and(|o| {
                matches!(
                    o.state,
                    ObservedState::Stopped | ObservedState::Exited | ObservedState::Failed
                )
            });
            if done || node_gone {
                Disposition::Delete { avoid_node: None }
            } else {
                Disposition::Stopping
            }
        }
        InstancePhase::Failed | InstancePhase::Lost => Disposition::Delete {
            avoid_node: inst.owner_node.clone(),
        },
        InstancePhase::Stopped if restart == RestartPolicy::Always => Disposition::Delete {
            avoid_node: inst.owner_node.clone(),
        },
        InstancePhase::Stopped => Disposition::Completed,
        _ if node_gone => Disposition::Delete { avoid_node: None },
        InstancePhase::Scheduled | InstancePhase::Running | InstancePhase::Migrating => {
            Disposition::Live
        }
    }
}

/// One reconcile round over the whole state: a pure function of `(state, now_ms, index)`.
///
/// `now_ms` is the leader's clock, compared with node leases only; `index` is the applied
/// index the state is at, used to name new instances.
pub fn plan(state: &ClusterState, now_ms: u64, index: u64) -> Plan {
    let mut out = Plan::default();
    let mut views = node_views(state, now_ms);
    let positions: HashMap<String, usize> = views
        .iter()
        .enumerate()
        .map(|(i, v)| (v.id.clone(), i))
        .collect();
    let mut by_workload: HashMap<&str, Vec<&InstanceRecord>> = HashMap::new();
    for inst in state.instances.values() {
        by_workload
            .entry(inst.workload.as_str())
            .or_default()
            .push(inst);
    }
    // Instances of workloads that no longer exist (deleted by an older controller): stop,
    // then delete.
    for (workload, instances) in &by_workload {
        if state.workloads.contains_key(*workload) {
            continue;
        }
        for inst in instances {
            match disposition(inst, state, RestartPolicy::Never) {
                Disposition::Live => out.stop.push(inst.id.clone()),
                Disposition::Stopping => {}
                Disposition::Delete { .. } | Disposition::Completed => {
                    out.delete.push(inst.id.clone())
                }
            }
        }
    }
    for (name, w) in &state.workloads {
        let instances = by_workload.remove(name.as_str()).unwrap_or_default();
        plan_workload(
            state, w, &instances, index, &mut views, &positions, &mut out,
        );
    }
    out.delete.sort();
    out.stop.sort();
    out
}

fn plan_workload(
    state: &ClusterState,
    w: &WorkloadRecord,
    instances: &[&InstanceRecord],
    index: u64,
    views: &mut [NodeView],
    positions: &HashMap<String, usize>,
    out: &mut Plan,
) {
    let spec = &w.spec;
    let name = spec.name.as_str();
    if w.deleting {
        let mut remaining = 0;
        for inst in instances {
            match disposition(inst, state, RestartPolicy::Never) {
                Disposition::Live => {
                    out.stop.push(inst.id.clone());
                    remaining += 1;
                }
                Disposition::Stopping => remaining += 1,
                Disposition::Delete { .. } | Disposition::Completed => {
                    out.delete.push(inst.id.clone())
                }
            }
        }
        if remaining == 0 {
            out.delete_workloads.push(name.to_owned());
        }
        return;
    }

    let mut live: Vec<RolloutInstance> = Vec::new();
    let mut live_records: HashMap<&str, &InstanceRecord> = HashMap::new();
    let mut avoid: Vec<String> = Vec::new();
    let mut stopping = 0u32;
    let mut any_outdated_generation = false;
    let ready_node = |node: &str| positions.get(node).is_some_and(|&p| views[p].ready);
    for inst in instances {
        match disposition(inst, state, spec.restart_policy) {
            Disposition::Delete { avoid_node } => {
                out.delete.push(inst.id.clone());
                avoid.extend(avoid_node);
            }
            Disposition::Stopping => {
                stopping += 1;
                // Holds its node for spreading until it is gone.
                live.push(RolloutInstance {
                    id: inst.id.clone(),
                    replica: inst.replica,
                    node_id: inst.owner_node.clone().unwrap_or_default(),
                    up_to_date: false,
                    state: InstanceState::Stopping,
                });
            }
            Disposition::Completed | Disposition::Live => {
                let node = inst.owner_node.clone().unwrap_or_default();
                let draining = state.nodes.get(&node).is_some_and(|n| n.draining);
                let current = inst.generation == w.generation;
                any_outdated_generation |= !current;
                let completed = matches!(inst.phase, InstancePhase::Stopped);
                let ready = completed
                    || (inst.phase == InstancePhase::Running
                        && inst.observed.as_ref().is_some_and(|o| o.ready)
                        && ready_node(&node));
                live.push(RolloutInstance {
                    id: inst.id.clone(),
                    replica: inst.replica,
                    node_id: node,
                    up_to_date: current && !draining,
                    state: if ready {
                        InstanceState::Ready
                    } else {
                        InstanceState::NotReady
                    },
                });
                live_records.insert(inst.id.as_str(), inst);
            }
        }
    }

    let view = WorkloadView::from(spec);
    let mut policy = RolloutPolicy {
        max_unavailable: spec.update_strategy.max_unavailable,
        max_surge: spec.update_strategy.max_surge,
    };
    if !any_outdated_generation {
        // Only drains (or nothing) to do: replacements first, then the originals stop.
        policy = RolloutPolicy {
            max_unavailable: 0,
            max_surge: policy.max_surge.max(1),
        };
    }
    // A replacement of a failed instance goes elsewhere: hide the nodes it failed on.
    let mut hidden: Vec<(usize, bool)> = Vec::new();
    for node in &avoid {
        if let Some(&p) = positions.get(node) {
            hidden.push((p, views[p].ready));
            views[p].ready = false;
        }
    }
    let step = plan_rollout(views, &view, &live, policy);
    for (p, ready) in hidden.into_iter().rev() {
        views[p].ready = ready;
    }

    // Stops: a completed instance is not running, so it is deleted instead.
    let mut stops = 0u32;
    for id in &step.stop {
        match live_records.get(id.as_str()) {
            Some(r) if r.phase == InstancePhase::Stopped => out.delete.push(id.clone()),
            _ => {
                out.stop.push(id.clone());
                stops += 1;
            }
        }
    }
    for p in &step.start.placements {
        if let Some(&pos) = positions.get(&p.node_id) {
            views[pos].allocated = views[pos].allocated.saturating_add(view.resources);
        }
        out.place.push(NewInstance {
            instance_id: instance_id(name, p.replica, index),
            workload: name.to_owned(),
            generation: w.generation,
            replica: p.replica,
            owner_node: p.node_id.clone(),
        });
    }

    // Status as it will be once this plan applies.
    let stopped_now: std::collections::HashSet<&str> =
        step.stop.iter().map(String::as_str).collect();
    let mut status = WorkloadStatus {
        observed_generation: w.generation,
        stopping: stopping + stops,
        unplaced: step.start.unplaced.len() as u32,
        reason: step.start.unplaced.first().map(|u| u.reason.to_string()),
        ..Default::default()
    };
    for inst in live.iter().filter(|i| i.state != InstanceState::Stopping) {
        if stopped_now.contains(inst.id.as_str()) {
            continue;
        }
        let rec = live_records.get(inst.id.as_str());
        status.placed += 1;
        if rec.is_some_and(|r| r.generation == w.generation) {
            status.updated += 1;
        }
        if inst.state == InstanceState::Ready {
            status.ready += 1;
        }
        if rec.is_some_and(|r| r.phase == InstancePhase::Running) {
            status.running += 1;
        }
    }
    status.placed += step.start.placements.len() as u32;
    status.updated += step.start.placements.len() as u32;
    let replicas = spec.replicas;
    let min_available = replicas.saturating_sub(spec.update_strategy.max_unavailable);
    status.conditions = vec![
        WorkloadCondition {
            type_: "Available".into(),
            status: status.ready >= min_available,
            message: format!(
                "{} of {replicas} ready (at least {min_available})",
                status.ready
            ),
        },
        WorkloadCondition {
            type_: "Placed".into(),
            status: status.unplaced == 0,
            message: status
                .reason
                .clone()
                .unwrap_or_else(|| format!("{} of {replicas} placed", status.placed)),
        },
        WorkloadCondition {
            type_: "Updated".into(),
            status: status.updated == replicas
                && status.ready == replicas
                && status.placed == replicas
                && status.stopping == 0,
            message: format!(
                "{} of {replicas} at generation {}",
                status.updated, w.generation
            ),
        },
    ];
    if w.status.as_ref() != Some(&status) {
        out.statuses.push(WorkloadStatusUpdate {
            workload: name.to_owned(),
            status,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------------

/// A running reconcile loop; dropping the handle does not stop it, [`Self::stop`] does.
pub struct Orchestrator {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Orchestrator {
    /// Start the loop for `node` (it acts only while `node` is the leader).
    pub fn spawn(node: Arc<ControllerNode>, config: OrchestratorConfig) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(node, config, stopped));
        Self { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The loop: one round per applied-index change (and per tick) while leader.
pub async fn run(
    node: Arc<ControllerNode>,
    config: OrchestratorConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut metrics = node.raft().metrics();
    let mut last_applied = None;
    let mut last_round = Instant::now() - config.tick;
    let mut idle = false;
    loop {
        if idle {
            let gap = config.idle_gap.saturating_sub(last_round.elapsed());
            if !gap.is_zero() {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(gap) => {}
                }
            }
        }
        let wait = config.tick.saturating_sub(last_round.elapsed());
        tokio::select! {
            _ = stop.changed() => break,
            changed = metrics.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(wait) => {}
        }
        if *stop.borrow() {
            break;
        }
        let (leader, applied) = {
            let m = metrics.borrow();
            (
                m.state == openraft::ServerState::Leader,
                m.last_applied.map(|l| l.index),
            )
        };
        if !leader || (applied == last_applied && last_round.elapsed() < config.tick) {
            continue;
        }
        last_round = Instant::now();
        match round(&node, &config).await {
            Ok(stats) => {
                last_applied = applied;
                idle = stats.commands == 0;
                if stats.commands > 0 {
                    tracing::debug!(
                        node_id = node.id(),
                        placed = stats.placed,
                        stopped = stats.stopped,
                        deleted = stats.deleted,
                        commands = stats.commands,
                        "reconciled"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(node_id = node.id(), error = %crate::node::error_chain(&e), "reconcile round failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundStats {
    pub placed: usize,
    pub stopped: usize,
    pub deleted: usize,
    pub commands: usize,
}

/// One round: a read-index round, the plan, its commands (stage by stage, the commands of a
/// stage proposed together so Raft batches them).
pub async fn round(
    node: &ControllerNode,
    config: &OrchestratorConfig,
) -> Result<RoundStats, ControllerError> {
    node.read_linearizable(|_| ()).await?;
    let now = now_ms();
    let plan = node.read_stale_at(|index, s| plan(s, now, index));
    let stats = RoundStats {
        placed: plan.place.len(),
        stopped: plan.stop.len(),
        deleted: plan.delete.len(),
        commands: 0,
    };
    let mut commands = 0;
    for stage in plan.into_stages(config.max_batch, now) {
        commands += stage.len();
        let writes = stage.into_iter().map(|c| node.propose(c));
        for result in futures_util::future::join_all(writes).await {
            result?;
        }
    }
    Ok(RoundStats { commands, ..stats })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use flotilla_api::cluster::*;
    use proptest::prelude::*;

    use super::*;

    const GIB: u64 = 1 << 30;
    pub(crate) const NOW: u64 = 1_000_000;

    /// A state driven only through `apply`, with agents simulated at the boundary.
    pub(crate) struct Sim {
        pub state: ClusterState,
        pub index: u64,
    }

    impl Sim {
        pub fn new() -> Self {
            Self {
                state: ClusterState::default(),
                index: 0,
            }
        }

        pub fn apply(&mut self, cmd: Command) -> CommandResult {
            self.index += 1;
            self.state.apply(self.index, &cmd)
        }

        pub fn node(&mut self, id: &str, cpu: u64, mem: u64, labels: &[(&str, &str)]) {
            let r = self.apply(Command::RegisterNode(RegisterNode {
                node: NodeInfo {
                    id: id.into(),
                    address: format!("{id}:7000"),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    capacity: Capacity {
                        cpu_millis: cpu,
                        memory_bytes: mem,
                    },
                    features: BTreeMap::new(),
                },
                expect_revision: None,
                at_ms: 1,
            }));
            assert!(r.is_applied());
            self.heartbeat(id, NOW);
        }

        pub fn heartbeat(&mut self, id: &str, at: u64) {
            let seq = self.index;
            self.apply(Command::NodeHeartbeat(NodeHeartbeat {
                node_id: id.into(),
                lease: NodeLease {
                    leader_term: 1,
                    seq,
                    ttl_ms: 5_000,
                    renewed_at_ms: at,
                },
                at_ms: at,
            }));
        }

        pub fn workload(&mut self, spec: WorkloadSpec) {
            let r = self.apply(Command::PutWorkload(PutWorkload {
                spec,
                expect_revision: None,
                at_ms: 2,
            }));
            assert!(r.is_applied(), "{r:?}");
        }

        /// One reconcile round at `now`; returns the plan it applied.
        pub fn round(&mut self, now: u64) -> Plan {
            let plan = plan(&self.state, now, self.index);
            for stage in plan.clone().into_stages(1000, now) {
                for cmd in stage {
                    self.apply(cmd);
                }
            }
            plan
        }

        /// Every agent does what the protocol says: starts what is scheduled (ready when
        /// `ready` says so) and stops what is stopping.
        pub fn agents(&mut self, ready: impl Fn(&InstanceRecord) -> bool) {
            let reports: Vec<Command> = self
                .state
                .instances
                .values()
                .filter_map(|i| {
                    let state = match i.phase {
                        InstancePhase::Scheduled | InstancePhase::Running => ObservedState::Running,
                        InstancePhase::Stopping
                            if i.observed.as_ref().map(|o| o.state)
                                != Some(ObservedState::Stopped) =>
                        {
                            ObservedState::Stopped
                        }
                        _ => return None,
                    };
                    let ready = state == ObservedState::Running && ready(i);
                    let same = i
                        .observed
                        .as_ref()
                        .is_some_and(|o| o.state == state && o.ready == ready);
                    (!same).then(|| {
                        Command::ReportInstanceState(ReportInstanceState {
                            instance_id: i.id.clone(),
                            node_id: i.owner_node.clone().unwrap_or_default(),
                            epoch: i.epoch,
                            state,
                            exit: None,
                            ip: None,
                            ready,
                            restarts: 0,
                            at_ms: 3,
                        })
                    })
                })
                .collect();
            for r in reports {
                assert!(self.apply(r).is_applied());
            }
        }

        /// Rounds and agent reports until nothing changes (at most `max` rounds).
        pub fn settle(&mut self, max: usize) {
            for _ in 0..max {
                let before = self.index;
                self.round(NOW);
                self.agents(|_| true);
                if self.index == before {
                    return;
                }
            }
            panic!("no fixpoint after {max} rounds");
        }

        pub fn live(&self, workload: &str) -> Vec<&InstanceRecord> {
            self.state
                .instances
                .values()
                .filter(|i| i.workload == workload && i.phase != InstancePhase::Stopping)
                .collect()
        }

        pub fn status(&self, workload: &str) -> WorkloadStatus {
            self.state.workloads[workload]
                .status
                .clone()
                .unwrap_or_default()
        }
    }

    pub(crate) fn spec(name: &str, replicas: u32, cpu: u64, mem: u64) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            image: "busybox:1".into(),
            replicas,
            resources: WorkloadResources {
                cpu_millis: cpu,
                memory_bytes: mem,
            },
            ..Default::default()
        }
    }

    fn three_nodes() -> Sim {
        let mut sim = Sim::new();
        for n in ["n1", "n2", "n3"] {
            sim.node(n, 4000, 8 * GIB, &[]);
        }
        sim
    }

    #[test]
    fn three_replicas_spread_over_three_nodes_and_status_follows() {
        let mut sim = three_nodes();
        let mut s = spec("web", 3, 100, GIB);
        s.placement.strategy = PlacementStrategy::Spread;
        sim.workload(s);
        let plan = sim.round(NOW);
        assert_eq!(plan.place.len(), 3);
        let nodes: BTreeSet<_> = plan.place.iter().map(|p| p.owner_node.clone()).collect();
        assert_eq!(nodes.len(), 3);
        let slots: BTreeSet<_> = plan.place.iter().map(|p| p.replica).collect();
        assert_eq!(slots, BTreeSet::from([0, 1, 2]));
        assert_eq!(sim.status("web").placed, 3);
        assert_eq!(sim.status("web").ready, 0);
        // Nothing more to do until agents report.
        assert!(sim.round(NOW).is_empty());
        sim.settle(10);
        let st = sim.status("web");
        assert_eq!((st.ready, st.running, st.placed, st.updated), (3, 3, 3, 3));
        assert!(st.conditions.iter().all(|c| c.status), "{st:?}");
    }

    #[test]
    fn scale_six_to_two_stops_the_highest_slots_then_deletes_them() {
        let mut sim = three_nodes();
        sim.workload(spec("web", 6, 100, GIB));
        sim.settle(10);
        assert_eq!(sim.live("web").len(), 6);
        sim.workload(spec("web", 2, 100, GIB));
        let plan = sim.round(NOW);
        let stopped: BTreeSet<u32> = plan
            .stop
            .iter()
            .map(|id| sim.state.instances[id].replica)
            .collect();
        assert_eq!(stopped, BTreeSet::from([2, 3, 4, 5]));
        assert!(plan.place.is_empty() && plan.delete.is_empty());
        // Stopping ones stay until their agent reports them stopped.
        assert!(sim.round(NOW).is_empty());
        assert_eq!(sim.state.instances.len(), 6);
        sim.settle(10);
        assert_eq!(sim.state.instances.len(), 2);
        let slots: BTreeSet<u32> = sim.live("web").iter().map(|i| i.replica).collect();
        assert_eq!(slots, BTreeSet::from([0, 1]));
        // And back up: the freed slots are reused.
        sim.workload(spec("web", 4, 100, GIB));
        sim.settle(10);
        let slots: BTreeSet<u32> = sim.live("web").iter().map(|i| i.replica).collect();
        assert_eq!(slots, BTreeSet::from([0, 1, 2, 3]));
    }

    #[test]
    fn unplaceable_replicas_say_why_and_bad_nodes_get_nothing() {
        let mut sim = Sim::new();
        sim.node("small", 4000, 2 * GIB, &[]);
        sim.node("cordoned", 4000, 16 * GIB, &[]);
        sim.node("expired", 4000, 16 * GIB, &[]);
        sim.apply(Command::UpdateNode(UpdateNode {
            id: "cordoned".into(),
            address: None,
            labels: None,
            capacity: None,
            features: None,
            schedulable: Some(false),
            expect_revision: None,
            at_ms: 1,
        }));
        sim.workload(spec("big", 2, 100, 4 * GIB));
        // The lease of "expired" (renewed at NOW, 5 s) has run out 10 s later; the others
        // renewed theirs.
        sim.heartbeat("small", NOW + 10_000);
        sim.heartbeat("cordoned", NOW + 10_000);
        let plan = sim.round(NOW + 10_000);
        assert!(plan.place.is_empty(), "{plan:?}");
        let st = sim.status("big");
        assert_eq!(st.unplaced, 2);
        let reason = st.reason.unwrap();
        assert!(
            reason.starts_with("no node with 4 GiB of free memory"),
            "{reason}"
        );
        assert!(
            reason.contains("1 cordoned") && reason.contains("1 not ready"),
            "{reason}"
        );
        // Once the expired node renews its lease, it takes both.
        sim.heartbeat("expired", NOW + 10_000);
        let plan = sim.round(NOW + 10_000);
        assert_eq!(plan.place.len(), 2);
        assert!(plan.place.iter().all(|p| p.owner_node == "expired"));
        assert_eq!(sim.status("big").unplaced, 0);
        assert_eq!(sim.status("big").reason, None);
    }

    #[test]
    fn a_failed_instance_is_replaced_on_another_node_in_its_slot() {
        let mut sim = three_nodes();
        sim.workload(spec("web", 1, 100, GIB));
        sim.settle(10);
        let first = sim.live("web")[0].clone();
        sim.apply(Command::ReportInstanceState(ReportInstanceState {
            instance_id: first.id.clone(),
            node_id: first.owner_node.clone().unwrap(),
            epoch: first.epoch,
            state: ObservedState::Failed,
            exit: None,
            ip: None,
            ready: false,
            restarts: 5,
            at_ms: 4,
        }));
        let plan = sim.round(NOW);
        assert_eq!(plan.delete, vec![first.id.clone()]);
        assert_eq!(plan.place.len(), 1);
        assert_ne!(Some(&plan.place[0].owner_node), first.owner_node.as_ref());
        assert_eq!(plan.place[0].replica, first.replica);
        sim.settle(10);
        assert_eq!(sim.live("web").len(), 1);
    }

    #[test]
    fn drain_places_replacements_before_stopping_originals() {
        let mut sim = three_nodes();
        let mut s = spec("web", 3, 100, GIB);
        s.placement.strategy = PlacementStrategy::Spread;
        sim.workload(s);
        sim.settle(10);
        let on_n1: Vec<String> = sim
            .live("web")
            .iter()
            .filter(|i| i.owner_node.as_deref() == Some("n1"))
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(on_n1.len(), 1);
        sim.apply(Command::SetNodeDraining(SetNodeDraining {
            id: "n1".into(),
            draining: true,
            at_ms: 5,
        }));
        let plan = sim.round(NOW);
        assert_eq!(plan.place.len(), 1);
        assert_ne!(plan.place[0].owner_node, "n1");
        assert!(
            plan.stop.is_empty(),
            "the original runs until its replacement is ready"
        );
        // Replacement scheduled but not ready: still nothing stops.
        sim.agents(|i| !i.id.ends_with(&format!("-{}", sim_index_suffix(&plan))));
        assert!(sim.round(NOW).stop.is_empty());
        sim.settle(10);
        assert!(sim
            .state
            .instances
            .values()
            .all(|i| i.owner_node.as_deref() != Some("n1")));
        assert_eq!(sim.live("web").len(), 3);
        assert_eq!(sim.status("web").ready, 3);
    }

    fn sim_index_suffix(plan: &Plan) -> String {
        plan.place[0]
            .instance_id
            .rsplit('-')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn deleting_a_workload_stops_everything_then_removes_it() {
        let mut sim = three_nodes();
        sim.workload(spec("web", 3, 100, GIB));
        sim.settle(10);
        assert!(sim
            .apply(Command::DeleteWorkload(DeleteWorkload {
                name: "web".into(),
                expect_revision: None,
                at_ms: 9,
            }))
            .is_applied());
        assert!(sim.state.workloads["web"].deleting);
        let plan = sim.round(NOW);
        assert_eq!(plan.stop.len(), 3);
        assert!(plan.delete_workloads.is_empty());
        sim.settle(10);
        assert!(sim.state.instances.is_empty());
        assert!(sim.state.workloads.is_empty());
    }

    #[test]
    fn ten_thousand_placements_fit_in_a_few_entries() {
        let mut sim = Sim::new();
        for n in 0..100 {
            sim.node(&format!("n{n:03}"), 64_000, 256 * GIB, &[]);
        }
        for w in 0..100 {
            sim.workload(spec(&format!("w{w:02}"), 100, 100, GIB));
        }
        let plan = plan(&sim.state, NOW, sim.index);
        assert_eq!(plan.place.len(), 10_000);
        let stages = plan.into_stages(2_000, NOW);
        let entries: usize = stages.iter().map(Vec::len).sum();
        // 5 placement entries and 1 status entry.
        assert_eq!(entries, 6);
    }

    // ---- property test: a simulated cluster under random changes -----------------------------

    #[derive(Debug, Clone)]
    enum Change {
        Scale(usize, u32),
        Image(usize),
        Cordon(usize, bool),
        Drain(usize),
        Fail(usize),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0usize..3, 0u32..7).prop_map(|(w, r)| Change::Scale(w, r)),
            (0usize..3).prop_map(Change::Image),
            (0usize..4, any::<bool>()).prop_map(|(n, c)| Change::Cordon(n, c)),
            (0usize..4).prop_map(Change::Drain),
            (0usize..40).prop_map(Change::Fail),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever happens: new placements go only to usable nodes and never over-commit
        /// them, live replica slots are unique and below `replicas`, a rolling update never
        /// leaves fewer than `replicas - maxUnavailable` ready when it started full, and with
        /// enough room the cluster converges to exactly `replicas` ready, up-to-date instances
        /// per workload.
        #[test]
        fn reconcile_keeps_invariants_and_converges(
            changes in prop::collection::vec(change(), 1..12),
            strategies in prop::collection::vec(any::<bool>(), 3),
        ) {
            let mut sim = Sim::new();
            let nodes = ["a", "b", "c", "d"];
            for n in nodes {
                sim.node(n, 2000, 8 * GIB, &[]);
            }
            for (w, spread) in strategies.iter().enumerate() {
                let mut s = spec(&format!("w{w}"), 2, 100, GIB / 2);
                if *spread {
                    s.placement.strategy = PlacementStrategy::Spread;
                }
                s.update_strategy = UpdateStrategy { max_unavailable: 1, max_surge: 1 };
                sim.workload(s);
            }
            sim.settle(20);
            for ch in changes {
                match ch {
                    Change::Scale(w, r) => {
                        let mut s = sim.state.workloads[&format!("w{w}")].spec.clone();
                        s.replicas = r;
                        sim.workload(s);
                    }
                    Change::Image(w) => {
                        let mut s = sim.state.workloads[&format!("w{w}")].spec.clone();
                        s.image = format!("busybox:{}", sim.index);
                        sim.workload(s);
                    }
                    Change::Cordon(n, c) => {
                        sim.apply(Command::UpdateNode(UpdateNode {
                            id: nodes[n].into(), address: None, labels: None, capacity: None,
                            features: None, schedulable: Some(!c), expect_revision: None, at_ms: 1,
                        }));
                    }
                    Change::Drain(n) => {
                        sim.apply(Command::SetNodeDraining(SetNodeDraining {
                            id: nodes[n].into(), draining: true, at_ms: 1,
                        }));
                    }
                    Change::Fail(k) => {
                        let victim = sim.state.instances.values()
                            .filter(|i| i.phase == InstancePhase::Running)
                            .nth(k)
                            .cloned();
                        if let Some(i) = victim {
                            sim.apply(Command::ReportInstanceState(ReportInstanceState {
                                instance_id: i.id, node_id: i.owner_node.unwrap_or_default(),
                                epoch: i.epoch, state: ObservedState::Failed, exit: None,
                                ip: None, ready: false, restarts: 5, at_ms: 4,
                            }));
                        }
                    }
                }
                // Run to a fixpoint, checking the invariants after every round.
                let full_before: BTreeMap<String, bool> = sim.state.workloads.iter()
                    .map(|(n, w)| (n.clone(), sim.live(n).iter().filter(|i| ready_of(i)).count() as u32 >= w.spec.replicas))
                    .collect();
                for _ in 0..40 {
                    let before = sim.index;
                    let views = node_views(&sim.state, NOW);
                    let plan = sim.round(NOW);
                    check_placements(&sim, &views, &plan)?;
                    check_slots(&sim)?;
                    for (name, w) in &sim.state.workloads {
                        if full_before[name] && w.spec.update_strategy.max_unavailable < w.spec.replicas {
                            let ready = sim.live(name).iter().filter(|i| ready_of(i)).count() as u32;
                            let floor = w.spec.replicas - w.spec.update_strategy.max_unavailable;
                            // Failures and drains of unready nodes can take more away; the
                            // floor holds for updates and scale changes.
                            if !matches!(ch, Change::Fail(_) | Change::Drain(_) | Change::Cordon(..)) {
                                prop_assert!(ready >= floor.min(ready_target(&sim, name)),
                                    "{name}: {ready} ready < {floor} after {ch:?}");
                            }
                        }
                    }
                    sim.agents(|_| true);
                    if sim.index == before {
                        break;
                    }
                }
            }
            // Converged: with room on the usable nodes, every workload has exactly its replicas.
            let usable = sim.state.nodes.values().filter(|n| n.schedulable && !n.draining).count() as u64;
            let wanted: u64 = sim.state.workloads.values().map(|w| u64::from(w.spec.replicas)).sum();
            if usable * 4 >= wanted {
                for (name, w) in &sim.state.workloads {
                    let live = sim.live(name);
                    prop_assert_eq!(live.len() as u32, w.spec.replicas, "{} live", name);
                    prop_assert!(live.iter().all(|i| ready_of(i) && i.generation == w.generation));
                    prop_assert_eq!(sim.status(name).unplaced, 0);
                }
            }
        }
    }

    fn ready_of(i: &InstanceRecord) -> bool {
        i.phase == InstancePhase::Running && i.observed.as_ref().is_some_and(|o| o.ready)
    }

    fn ready_target(sim: &Sim, name: &str) -> u32 {
        sim.state.workloads[name].spec.replicas
    }

    fn check_placements(sim: &Sim, views: &[NodeView], plan: &Plan) -> Result<(), TestCaseError> {
        let mut added: BTreeMap<&str, Resources> = BTreeMap::new();
        for p in &plan.place {
            let view = views.iter().find(|v| v.id == p.owner_node);
            prop_assert!(
                view.is_some_and(|v| v.ready && v.schedulable),
                "placed on unusable {}",
                p.owner_node
            );
            let req = Resources::from(&sim.state.workloads[&p.workload].spec.resources);
            let slot = added.entry(p.owner_node.as_str()).or_default();
            *slot = slot.saturating_add(req);
        }
        for (node, add) in added {
            let v = views.iter().find(|v| v.id == node).unwrap();
            prop_assert!(
                v.allocated.saturating_add(add).fits_in(v.capacity),
                "{} over-committed",
                node
            );
        }
        Ok(())
    }

    fn check_slots(sim: &Sim) -> Result<(), TestCaseError> {
        for (name, w) in &sim.state.workloads {
            let mut seen = BTreeMap::new();
            for i in sim.live(name) {
                if i.phase == InstancePhase::Failed {
                    continue;
                }
                // Two live instances share a slot only while one replaces the other.
                let n = seen.entry(i.replica).or_insert(0u32);
                *n += 1;
                prop_assert!(*n <= 2, "{name}: slot {} used {} times", i.replica, n);
                let _ = w;
            }
        }
        Ok(())
    }
}
