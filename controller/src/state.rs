//! The replicated cluster state and its pure, deterministic apply function.
//!
//! **Invariant:** `ClusterState::apply` reads no clock, draws no random number and does no I/O.
//! Time and ids come inside the command; the only other input is the log index, which becomes
//! the `revision` of everything the command touches. Two replicas that apply the same entries
//! hold equal states and returned equal results.
//!
//! A command modifies only the objects named by `Command::touched` plus the event ring; the
//! store relies on that to persist a change without rewriting the whole state.

use std::collections::{BTreeMap, VecDeque};

use flotilla_api::cluster::{
    AdvanceMigration, ChangeInstanceOwner, Command, CommandResult, DeleteInstance, DeleteInstances,
    DeleteService, DeleteWorkload, Event, InstanceObserved, InstancePhase, InstanceRecord,
    MigrationPhase, MigrationRecord, NodeHeartbeat, NodeRecord, ObjectKey, PlaceInstances,
    PutInstancePlacement, PutService, PutToken, PutWorkload, RegisterNode, RemoveNode,
    ReportInstanceState, RevokeToken, ServiceRecord, SetNodeDraining, SetWorkloadStatus,
    StartMigration, StopInstances, TokenRecord, UpdateNode, VersionedCommand, WorkloadRecord,
    COMMAND_VERSION, EVENTS_CAPACITY,
};
use serde::{Deserialize, Serialize};

/// Everything the controllers agree on. `BTreeMap`s keep iteration and serialization
/// deterministic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeRecord>,
    pub workloads: BTreeMap<String, WorkloadRecord>,
    pub instances: BTreeMap<String, InstanceRecord>,
    pub services: BTreeMap<String, ServiceRecord>,
    pub migrations: BTreeMap<String, MigrationRecord>,
    pub tokens: BTreeMap<String, TokenRecord>,
    /// The newest `EVENTS_CAPACITY` events, oldest first.
    pub events: VecDeque<Event>,
    /// Sequence number of the last event ever recorded.
    pub last_event_seq: u64,
}

/// Refuse unless the object's current revision (0 when absent) is the expected one.
fn check_revision(expect: Option<u64>, current: Option<u64>) -> Result<(), CommandResult> {
    let current = current.unwrap_or(0);
    match expect {
        Some(want) if want != current => Err(CommandResult::Conflict { current }),
        _ => Ok(()),
    }
}

/// Why a batch cannot be applied: it nests a batch, or two of its commands touch the same
/// object (they would give it the same revision, and a client holding that revision could
/// overwrite a change it never saw).
pub fn batch_refusal(commands: &[Command]) -> Option<String> {
    let mut seen = std::collections::BTreeSet::new();
    for c in commands {
        if matches!(c, Command::Batch(_)) {
            return Some("a batch cannot contain a batch".into());
        }
        let own: std::collections::BTreeSet<_> = c.touched().into_iter().collect();
        for key in own {
            if !seen.insert(key.clone()) {
                return Some(format!("two commands of the batch touch {key}"));
            }
        }
    }
    None
}

fn rejected(reason: impl Into<String>) -> CommandResult {
    CommandResult::Rejected {
        reason: reason.into(),
    }
}

type Outcome = Result<CommandResult, CommandResult>;

/// What applying one log entry gave: the command's result, or one result per command of a
/// `Command::Batch`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryOutcome {
    One(CommandResult),
    Batch(Vec<CommandResult>),
}

impl ClusterState {
    /// Apply one versioned log entry that holds a single command (a batch is refused here:
    /// see `apply_entry`).
    pub fn apply_versioned(&mut self, index: u64, cmd: &VersionedCommand) -> CommandResult {
        if matches!(cmd.command, Command::Batch(_)) {
            return rejected("a batch has one result per command");
        }
        match self.apply_entry(index, cmd) {
            EntryOutcome::One(r) => r,
            EntryOutcome::Batch(_) => rejected("a batch has one result per command"),
        }
    }

    /// Apply one versioned log entry: a command, or a batch of them at the same index.
    pub fn apply_entry(&mut self, index: u64, cmd: &VersionedCommand) -> EntryOutcome {
        if cmd.v > COMMAND_VERSION {
            let refusal = rejected(format!(
                "command version {} is newer than this controller's {COMMAND_VERSION}",
                cmd.v
            ));
            return match &cmd.command {
                Command::Batch(b) => EntryOutcome::Batch(vec![refusal; b.commands.len()]),
                _ => EntryOutcome::One(refusal),
            };
        }
        let Command::Batch(batch) = &cmd.command else {
            return EntryOutcome::One(self.apply(index, &cmd.command));
        };
        // Refused whole, before anything changes, so every replica refuses it alike.
        if let Some(reason) = batch_refusal(&batch.commands) {
            return EntryOutcome::Batch(vec![rejected(reason); batch.commands.len()]);
        }
        EntryOutcome::Batch(
            batch
                .commands
                .iter()
                .map(|c| self.apply(index, c))
                .collect(),
        )
    }

    /// Apply one command committed at log `index`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> CommandResult {
        let outcome = match cmd {
            Command::RegisterNode(c) => self.register_node(index, c),
            Command::UpdateNode(c) => self.update_node(index, c),
            Command::RemoveNode(c) => self.remove_node(index, c),
            Command::NodeHeartbeat(c) => self.node_heartbeat(index, c),
            Command::PutWorkload(c) => self.put_workload(index, c),
            Command::DeleteWorkload(c) => self.delete_workload(index, c),
            Command::PutInstancePlacement(c) => self.put_instance_placement(index, c),
            Command::ReportInstanceState(c) => self.report_instance_state(index, c),
            Command::ChangeInstanceOwner(c) => self.change_instance_owner(index, c),
            Command::DeleteInstance(c) => self.delete_instance(index, c),
            Command::PutService(c) => self.put_service(index, c),
            Command::DeleteService(c) => self.delete_service(index, c),
            Command::StartMigration(c) => self.start_migration(index, c),
            Command::AdvanceMigration(c) => self.advance_migration(index, c),
            Command::PutToken(c) => self.put_token(index, c),
            Command::RevokeToken(c) => self.revoke_token(index, c),
            Command::PlaceInstances(c) => self.place_instances(index, c),
            Command::StopInstances(c) => self.stop_instances(index, c),
            Command::DeleteInstances(c) => self.delete_instances(index, c),
            Command::SetWorkloadStatus(c) => self.set_workload_status(index, c),
            Command::SetNodeDraining(c) => self.set_node_draining(index, c),
            Command::Batch(_) => Err(rejected("a batch is a log entry of its own, not a command")),
        };
        match outcome {
            Ok(r) | Err(r) => r,
        }
    }

    fn event(&mut self, index: u64, at_ms: u64, subject: ObjectKey, reason: &str, message: String) {
        self.last_event_seq += 1;
        self.events.push_back(Event {
            seq: self.last_event_seq,
            revision: index,
            at_ms,
            subject,
            reason: reason.to_owned(),
            message,
        });
        while self.events.len() > EVENTS_CAPACITY {
            self.events.pop_front();
        }
    }

    fn register_node(&mut self, index: u64, c: &RegisterNode) -> Outcome {
        let existing = self.nodes.get(&c.node.id);
        check_revision(c.expect_revision, existing.map(|n| n.revision))?;
        let record = match existing {
            Some(old) => NodeRecord {
                info: c.node.clone(),
                updated_at_ms: c.at_ms,
                revision: index,
                ..old.clone()
            },
            None => NodeRecord {
                info: c.node.clone(),
                schedulable: true,
                draining: false,
                ready: None,
                lease: None,
                registered_at_ms: c.at_ms,
                updated_at_ms: c.at_ms,
                revision: index,
            },
        };
        let reason = if existing.is_some() {
            "reregistered"
        } else {
            "registered"
        };
        let message = format!("node {} at {}", c.node.id, c.node.address);
        self.nodes.insert(c.node.id.clone(), record);
        self.event(
            index,
            c.at_ms,
            ObjectKey::Node(c.node.id.clone()),
            reason,
            message,
        );
        Ok(CommandResult::Applied { revision: index })
    }

    fn update_node(&mut self, index: u64, c: &UpdateNode) -> Outcome {
        let key = ObjectKey::Node(c.id.clone());
        let Some(node) = self.nodes.get_mut(&c.id) else {
            return match c.expect_revision {
                Some(r) if r != 0 => Err(CommandResult::Conflict { current: 0 }),
                _ => Err(CommandResult::NotFound { key }),
            };
        };
        check_revision(c.expect_revision, Some(node.revision))?;
        if let Some(a) = &c.address {
            node.info.address.clone_from(a);
        }
        if let Some(l) = &c.labels {
            node.info.labels.clone_from(l);
        }
        if let Some(cap) = &c.capacity {
            node.info.capacity = cap.clone();
        }
        if let Some(f) = &c.features {
            node.info.features.clone_from(f);
        }
        let cordon_change = c.schedulable.filter(|s| *s != node.schedulable);
        if let Some(s) = c.schedulable {
            node.schedulable = s;
            // Uncordoning ends a drain too.
            if s {
                node.draining = false;
            }
        }
        node.updated_at_ms = c.at_ms;
        node.revision = index;
        if let Some(s) = cordon_change {
            let reason = if s { "uncordoned" } else { "cordoned" };
            self.event(index, c.at_ms, key, reason, format!("node {}", c.id));
        }
        Ok(CommandResult::Applied { revision: index })
    }

    fn remove_node(&mut self, index: u64, c: &RemoveNode) -> Outcome {
        let key = ObjectKey::Node(c.id.clone());
        let current = self.nodes.get(&c.id).map(|n| n.revision);
        check_revision(c.expect_revision, current)?;
        if self.nodes.remove(&c.id).is_none() {
            return Err(CommandResult::NotFound { key });
        }
        self.event(index, c.at_ms, key, "removed", format!("node {}", c.id));
        Ok(CommandResult::Applied { revision: index })
    }

    fn node_heartbeat(&mut self, index: u64, c: &NodeHeartbeat) -> Outcome {
        let Some(node) = self.nodes.get_mut(&c.node_id) else {
            return Err(CommandResult::NotFound {
                key: ObjectKey::Node(c.node_id.clone()),
            });
        };
        if let Some(old) = &node.lease {
            if (c.lease.leader_term, c.lease.seq) <= (old.leader_term, old.seq) {
                return Err(rejected(format!(
                    "stale lease renewal ({}, {}) for node {}: current is ({}, {})",
                    c.lease.leader_term, c.lease.seq, c.node_id, old.leader_term, old.seq
                )));
            }
        }
        node.lease = Some(c.lease.clone());
        node.updated_at_ms = c.at_ms;
        node.revision = index;
        Ok(CommandResult::Applied { revision: index })
    }

    fn put_workload(&mut self, index: u64, c: &PutWorkload) -> Outcome {
        let name = &c.spec.name;
        let existing = self.workloads.get(name);
        check_revision(c.expect_revision, existing.map(|w| w.revision))?;
        if existing.is_some_and(|w| w.deleting) {
            return Err(rejected(format!(
                "workload {name} is being deleted; wait until it is gone"
            )));
        }
        let (record, reason) = match existing {
            Some(old) => {
                // The generation tracks what instances run: scaling or retuning the update
                // strategy rolls nothing.
                let template = |s: &flotilla_api::cluster::WorkloadSpec| {
                    let mut s = s.clone();
                    s.replicas = 0;
                    s.update_strategy = Default::default();
                    s
                };
                let generation = if template(&old.spec) == template(&c.spec) {
                    old.generation
                } else {
                    old.generation + 1
                };
                let record = WorkloadRecord {
                    spec: c.spec.clone(),
                    generation,
                    status: old.status.clone(),
                    deleting: false,
                    created_at_ms: old.created_at_ms,
                    updated_at_ms: c.at_ms,
                    revision: index,
                };
                (record, "updated")
            }
            None => {
                let record = WorkloadRecord {
                    spec: c.spec.clone(),
                    generation: 1,
                    status: None,
                    deleting: false,
                    created_at_ms: c.at_ms,
                    updated_at_ms: c.at_ms,
                    revision: index,
                };
                (record, "created")
            }
        };
        let message = format!(
            "workload {name} generation {} ({} replicas of {})",
            record.generation, c.spec.replicas, c.spec.image
        );
        self.workloads.insert(name.clone(), record);
        self.event(
            index,
            c.at_ms,
            ObjectKey::Workload(name.clone()),
            reason,
            message,
        );
        Ok(CommandResult::Applied { revision: index })
    }

    fn delete_workload(&mut self, index: u64, c: &DeleteWorkload) -> Outcome {
        let key = ObjectKey::Workload(c.name.clone());
        check_revision(
            c.expect_revision,
            self.workloads.get(&c.name).map(|w| w.revision),
        )?;
        let Some(workload) = self.workloads.get_mut(&c.name) else {
            return Err(CommandResult::NotFound { key });
        };
        // Instances first: they are stopped gracefully by the leader, then the workload goes.
        let has_instances = self.instances.values().any(|i| i.workload == c.name);
        if has_instances {
            if workload.deleting {
                return Err(rejected(format!(
                    "workload {} is already being deleted",
                    c.name
                )));
            }
            workload.deleting = true;
            workload.updated_at_ms = c.at_ms;
            workload.revision = index;
            self.event(
                index,
                c.at_ms,
                key,
                "deleting",
                format!("workload {}: stopping its instances", c.name),
            );
            return Ok(CommandResult::Applied { revision: index });
        }
        self.workloads.remove(&c.name);
        self.event(
            index,
            c.at_ms,
            key,
            "deleted",
            format!("workload {}", c.name),
        );
        Ok(CommandResult::Applied { revision: index })
    }

    fn put_instance_placement(&mut self, index: u64, c: &PutInstancePlacement) -> Outcome {
        let key = ObjectKey::Instance(c.instance_id.clone());
        let existing = self.instances.get(&c.instance_id);
        check_revision(c.expect_revision, existing.map(|i| i.revision))?;
        let record = match existing {
            Some(old) => {
                if old.workload != c.workload {
                    return Err(rejected(format!(
                        "instance {} belongs to workload {}, not {}",
                        c.instance_id, old.workload, c.workload
                    )));
                }
                let moved = old.owner_node != c.owner_node;
                InstanceRecord {
                    owner_node: c.owner_node.clone(),
                    epoch: if moved { old.epoch + 1 } else { old.epoch },
                    phase: if moved {
                        InstancePhase::Scheduled
                    } else {
                        old.phase
                    },
                    observed: if moved { None } else { old.observed.clone() },
                    updated_at_ms: c.at_ms,
                    revision: index,
                    ..old.clone()
                }
            }
            None => InstanceRecord {
                id: c.instance_id.clone(),
                workload: c.workload.clone(),
                owner_node: c.owner_node.clone(),
                epoch: 1,
                phase: InstancePhase::Scheduled,
                observed: None,
                replica: 0,
                generation: self.workloads.get(&c.workload).map_or(0, |w| w.generation),
                spec: self.workloads.get(&c.workload).map(|w| w.spec.clone()),
                created_at_ms: c.at_ms,
                updated_at_ms: c.at_ms,
                revision: index,
            },
        };
        let message = format!(
            "instance {} of {} on {} at epoch {}",
            c.instance_id,
            c.workload,
            c.owner_node.as_deref().unwrap_or("no node"),
            record.epoch
        );
        self.instances.insert(c.instance_id.clone(), record);
        self.event(index, c.at_ms, key, "placed", message);
        Ok(CommandResult::Applied { revision: index })
    }

    fn report_instance_state(&mut self, index: u64, c: &ReportInstanceState) -> Outcome {
        let Some(inst) = self.instances.get_mut(&c.instance_id) else {
            return Err(CommandResult::NotFound {
                key: ObjectKey::Instance(c.instance_id.clone()),
            });
        };
        if c.epoch != inst.epoch || inst.owner_node.as_deref() != Some(c.node_id.as_str()) {
            return Err(CommandResult::StaleEpoch {
                current: inst.epoch,
            });
        }
        inst.observed = Some(InstanceObserved {
            state: c.state,
            exit: c.exit.clone(),
            ip: c.ip.clone(),
            reported_at_ms: c.at_ms,
            ready: c.ready,
            restarts: c.restarts,
        });
        use flotilla_api::cluster::ObservedState as O;
        // A migrating instance keeps its phase, and so does one being stopped: the leader reads
        // `observed` to see that the stop is done.
        if !matches!(
            inst.phase,
            InstancePhase::Migrating | InstancePhase::Stopping
        ) {
            inst.phase = match c.state {
                O::Pending | O::Starting => inst.phase,
                O::Running => InstancePhase::Running,
                O::Exited | O::Stopped => InstancePhase::Stopped,
                O::Failed => InstancePhase::Failed,
            };
        }
        inst.updated_at_ms = c.at_ms;
        inst.revision = index;
        Ok(CommandResult::Applied { revision: index })
    }

    fn change_instance_owner(&mut self, index: u64, c: &ChangeInstanceOwner) -> Outcome {
        let key = ObjectKey::Instance(c.instance_id.clone());
        let Some(inst) = self.instances.get_mut(&c.instance_id) else {
            return Err(CommandResult::NotFound { key });
        };
        if c.expect_epoch != inst.epoch {
            return Err(CommandResult::StaleEpoch {
                current: inst.epoch,
            });
        }
        let from = inst.owner_node.clone();
        inst.owner_node = c.new_owner.clone();
        inst.epoch += 1;
        inst.phase = c.phase;
        inst.observed = None;
        inst.updated_at_ms = c.at_ms;
        inst.revision = index;
        let message = format!(
            "instance {} from {} to {} at epoch {}",
            c.instance_id,
            from.as_deref().unwrap_or("no node"),
            c.new_owner.as_deref().unwrap_or("no node"),
            inst.epoch
        );
        self.event(index, c.at_ms, key, "owner_changed", message);
        Ok(CommandResult::Applied { revision: index })
    }

    fn delete_instance(&mut self, index: u64, c: &DeleteInstance) -> Outcome {
        let key = ObjectKey::Instance(c.instance_id.clone());
        check_revision(
            c.expect_revision,
            self.instances.get(&c.instance_id).map(|i| i.revision),
        )?;
        if self.instances.remove(&c.instance_id).is_none() {
            return Err(CommandResult::NotFound { key });
        }
        self.event(
            index,
            c.at_ms,
            key,
            "deleted",
            format!("instance {}", c.instance_id),
        );
        Ok(CommandResult::Applied { revision: index })
    }

    fn put_service(&mut self, index: u64, c: &PutService) -> Outcome {
        let name = &c.service.name;
        let existing = self.services.get(name);
        check_revision(c.expect_revision, existing.map(|s| s.revision))?;
        let created_at_ms = existing.map_or(c.at_ms, |s| s.created_at_ms);
        let reason = if existing.is_some() {
            "updated"
        } else {
            "created"
        };
        self.services.insert(
            name.clone(),
            ServiceRecord {
                spec: c.service.clone(),
                created_at_ms,
                updated_at_ms: c.at_ms,
                revision: index,
            },
        );
        self.event(
            index,
            c.at_ms,
            ObjectKey::Service(name.clone()),
            reason,
            format!("service {name} for workload {}", c.service.workload),
        );
        Ok(CommandResult::Applied { revision: index })
    }

    fn delete_service(&mut self, index: u64, c: &DeleteService) -> Outcome {
        let key = ObjectKey::Service(c.name.clone());
        check_revision(
            c.expect_revision,
            self.services.get(&c.name).map(|s| s.revision),
        )?;
        if self.services.remove(&c.name).is_none() {
            return Err(CommandResult::NotFound { key });
        }
        self.event(
            index,
            c.at_ms,
            key,
            "deleted",
            format!("service {}", c.name),
        );
        Ok(CommandResult::Applied { revision: index })
    }

    fn start_migration(&mut self, index: u64, c: &StartMigration) -> Outcome {
        if self.migrations.contains_key(&c.id) {
            return Err(rejected(format!("migration {} already exists", c.id)));
        }
        let Some(inst) = self.instances.get_mut(&c.instance_id) else {
            return Err(CommandResult::NotFound {
                key: ObjectKey::Instance(c.instance_id.clone()),
            });
        };
        if c.expect_epoch != inst.epoch {
            return Err(CommandResult::StaleEpoch {
                current: inst.epoch,
            });
        }
        if inst.owner_node.as_deref() != Some(c.source_node.as_str()) {
            return Err(rejected(format!(
                "instance {} is not owned by {}",
                c.instance_id, c.source_node
            )));
        }
        if inst.phase == InstancePhase::Migrating {
            return Err(rejected(format!(
                "instance {} is already migrating",
                c.instance_id
            )));
        }
        if c.target_node == c.source_node {
            return Err(rejected("migration target is the source node"));
        }
        inst.phase = InstancePhase::Migrating;
        inst.updated_at_ms = c.at_ms;
        inst.revision = index;
        self.migrations.insert(
            c.id.clone(),
            MigrationRecord {
                id: c.id.clone(),
                instance_id: c.instance_id.clone(),
                source_node: c.source_node.clone(),
                target_node: c.target_node.clone(),
                epoch: c.expect_epoch,
                phase: MigrationPhase::Preparing,
                created_at_ms: c.at_ms,
                updated_at_ms: c.at_ms,
                revision: index,
            },
        );
        let message = format!(
            "instance {} from {} to {}",
            c.instance_id, c.source_node, c.target_node
        );
        self.event(
            index,
            c.at_ms,
            ObjectKey::Migration(c.id.clone()),
            "preparing",
            message,
        );
        Ok(CommandResult::Applied { revision: index })
    }

    fn advance_migration(&mut self, index: u64, c: &AdvanceMigration) -> Outcome {
        let key = ObjectKey::Migration(c.id.clone());
        let Some(mig) = self.migrations.get(&c.id) else {
            return Err(CommandResult::NotFound { key });
        };
        if mig.instance_id != c.instance_id {
            return Err(rejected(format!(
                "migration {} is for instance {}, not {}",
                c.id, mig.instance_id, c.instance_id
            )));
        }
        if !mig.phase.can_advance_to(c.phase) {
            return Err(rejected(format!(
                "migration {} cannot go from {:?} to {:?}",
                c.id, mig.phase, c.phase
            )));
        }
        let (target, start_epoch) = (mig.target_node.clone(), mig.epoch);
        let Some(inst) = self.instances.get_mut(&c.instance_id) else {
            return Err(CommandResult::NotFound {
                key: ObjectKey::Instance(c.instance_id.clone()),
            });
        };
        // The instance must still be at the epoch the migration started from, except after the
        // commit, which is what moved it to `start_epoch + 1`.
        let expected = if c.phase == MigrationPhase::Done {
            start_epoch + 1
        } else {
            start_epoch
        };
        if inst.epoch != expected {
            return Err(CommandResult::StaleEpoch {
                current: inst.epoch,
            });
        }
        match c.phase {
            MigrationPhase::Committed => {
                inst.owner_node = Some(target);
                inst.epoch += 1;
                inst.observed = None;
            }
            MigrationPhase::Done | MigrationPhase::Aborted => {
                inst.phase = InstancePhase::Running;
            }
            _ => {}
        }
        inst.updated_at_ms = c.at_ms;
        inst.revision = index;
        let epoch = inst.epoch;
        if let Some(mig) = self.migrations.get_mut(&c.id) {
            mig.phase = c.phase;
            mig.updated_at_ms = c.at_ms;
            mig.revision = index;
        }
        let reason = format!("{:?}", c.phase).to_lowercase();
        let message = format!("instance {} at epoch {epoch}", c.instance_id);
        self.event(index, c.at_ms, key, &reason, message);
        Ok(CommandResult::Applied { revision: index })
    }

    fn put_token(&mut self, index: u64, c: &PutToken) -> Outcome {
        let existing = self.tokens.get(&c.token.id);
        check_revision(c.expect_revision, existing.map(|t| t.revision))?;
        let created_at_ms = existing.map_or(c.at_ms, |t| t.created_at_ms);
        self.tokens.insert(
            c.token.id.clone(),
            TokenRecord {
                token: c.token.clone(),
                revoked: false,
                created_at_ms,
                updated_at_ms: c.at_ms,
                revision: index,
            },
        );
        // The event names the token and its role, never its hash.
        self.event(
            index,
            c.at_ms,
            ObjectKey::Token(c.token.id.clone()),
            "created",
            format!("token {} for {:?}", c.token.id, c.token.role),
        );
        Ok(CommandResult::Applied { revision: index })
    }

    fn place_instances(&mut self, index: u64, c: &PlaceInstances) -> Outcome {
        // Counted per workload for one event each (not one per instance: a batch of thousands
        // would flush the event ring).
        let mut placed: BTreeMap<&str, (u64, u32)> = BTreeMap::new();
        for new in &c.instances {
            if self.instances.contains_key(&new.instance_id) {
                continue;
            }
            let Some(w) = self.workloads.get(&new.workload) else {
                continue;
            };
            if w.generation != new.generation || w.deleting {
                continue;
            }
            if !self.nodes.contains_key(&new.owner_node) {
                continue;
            }
            self.instances.insert(
                new.instance_id.clone(),
                InstanceRecord {
                    id: new.instance_id.clone(),
                    workload: new.workload.clone(),
                    owner_node: Some(new.owner_node.clone()),
                    epoch: 1,
                    phase: InstancePhase::Scheduled,
                    observed: None,
                    replica: new.replica,
                    generation: w.generation,
                    spec: Some(w.spec.clone()),
                    created_at_ms: c.at_ms,
                    updated_at_ms: c.at_ms,
                    revision: index,
                },
            );
            placed
                .entry(new.workload.as_str())
                .or_insert((w.generation, 0))
                .1 += 1;
        }
        if placed.is_empty() {
            return Err(rejected(
                "no instance placed: every one exists already, is stale or names an unknown node",
            ));
        }
        let placed: Vec<(String, u64, u32)> = placed
            .into_iter()
            .map(|(w, (g, n))| (w.to_owned(), g, n))
            .collect();
        for (workload, generation, n) in placed {
            let message = format!("{n} instance(s) of {workload} at generation {generation}");
            self.event(
                index,
                c.at_ms,
                ObjectKey::Workload(workload),
                "placed",
                message,
            );
        }
        Ok(CommandResult::Applied { revision: index })
    }

    fn stop_instances(&mut self, index: u64, c: &StopInstances) -> Outcome {
        let mut stopped: BTreeMap<String, u32> = BTreeMap::new();
        for id in &c.instance_ids {
            let Some(inst) = self.instances.get_mut(id) else {
                continue;
            };
            if !matches!(
                inst.phase,
                InstancePhase::Scheduled | InstancePhase::Running
            ) {
                continue;
            }
            inst.phase = InstancePhase::Stopping;
            inst.updated_at_ms = c.at_ms;
            inst.revision = index;
            *stopped.entry(inst.workload.clone()).or_default() += 1;
        }
        if stopped.is_empty() {
            return Err(rejected("no instance to stop"));
        }
        // One event per workload, not per instance (the ring holds 1,000).
        for (workload, n) in stopped {
            let message = format!("stopping {n} instance(s) of {workload}");
            self.event(
                index,
                c.at_ms,
                ObjectKey::Workload(workload),
                "stopping",
                message,
            );
        }
        Ok(CommandResult::Applied { revision: index })
    }

    fn delete_instances(&mut self, index: u64, c: &DeleteInstances) -> Outcome {
        let mut deleted: BTreeMap<String, u32> = BTreeMap::new();
        for id in &c.instance_ids {
            if let Some(inst) = self.instances.remove(id.as_str()) {
                *deleted.entry(inst.workload).or_default() += 1;
            }
        }
        if deleted.is_empty() {
            return Err(rejected("no instance to delete"));
        }
        for (workload, n) in deleted {
            let message = format!("removed {n} instance(s) of {workload}");
            let key = ObjectKey::Workload(workload);
            self.event(index, c.at_ms, key, "instances_removed", message);
        }
        Ok(CommandResult::Applied { revision: index })
    }

    fn set_workload_status(&mut self, index: u64, c: &SetWorkloadStatus) -> Outcome {
        let mut changed = 0usize;
        for u in &c.statuses {
            let Some(w) = self.workloads.get_mut(&u.workload) else {
                continue;
            };
            if w.status.as_ref() == Some(&u.status) {
                continue;
            }
            w.status = Some(u.status.clone());
            w.revision = index;
            changed += 1;
        }
        if changed == 0 {
            return Err(rejected("no workload status changed"));
        }
        Ok(CommandResult::Applied { revision: index })
    }

    fn set_node_draining(&mut self, index: u64, c: &SetNodeDraining) -> Outcome {
        let key = ObjectKey::Node(c.id.clone());
        let Some(node) = self.nodes.get_mut(&c.id) else {
            return Err(CommandResult::NotFound { key });
        };
        let was = node.draining;
        node.draining = c.draining;
        if c.draining {
            node.schedulable = false;
        }
        node.updated_at_ms = c.at_ms;
        node.revision = index;
        if was != c.draining {
            let reason = if c.draining {
                "draining"
            } else {
                "drain_cancelled"
            };
            self.event(index, c.at_ms, key, reason, format!("node {}", c.id));
        }
        Ok(CommandResult::Applied { revision: index })
    }

    fn revoke_token(&mut self, index: u64, c: &RevokeToken) -> Outcome {
        let key = ObjectKey::Token(c.id.clone());
        let Some(t) = self.tokens.get_mut(&c.id) else {
            return Err(CommandResult::NotFound { key });
        };
        t.revoked = true;
        t.updated_at_ms = c.at_ms;
        t.revision = index;
        self.event(index, c.at_ms, key, "revoked", format!("token {}", c.id));
        Ok(CommandResult::Applied { revision: index })
    }

    /// The serialized form of one object, `None` when it does not exist.
    pub fn object_json(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, serde_json::Error> {
        fn enc<T: Serialize>(v: Option<&T>) -> Result<Option<Vec<u8>>, serde_json::Error> {
            v.map(serde_json::to_vec).transpose()
        }
        match key {
            ObjectKey::Node(id) => enc(self.nodes.get(id)),
            ObjectKey::Workload(id) => enc(self.workloads.get(id)),
            ObjectKey::Instance(id) => enc(self.instances.get(id)),
            ObjectKey::Service(id) => enc(self.services.get(id)),
            ObjectKey::Migration(id) => enc(self.migrations.get(id)),
            ObjectKey::Token(id) => enc(self.tokens.get(id)),
        }
    }

    /// Put back one object read from disk.
    pub fn load_object(&mut self, key: ObjectKey, json: &[u8]) -> Result<(), serde_json::Error> {
        match key {
            ObjectKey::Node(id) => {
                self.nodes.insert(id, serde_json::from_slice(json)?);
            }
            ObjectKey::Workload(id) => {
                self.workloads.insert(id, serde_json::from_slice(json)?);
            }
            ObjectKey::Instance(id) => {
                self.instances.insert(id, serde_json::from_slice(json)?);
            }
            ObjectKey::Service(id) => {
                self.services.insert(id, serde_json::from_slice(json)?);
            }
            ObjectKey::Migration(id) => {
                self.migrations.insert(id, serde_json::from_slice(json)?);
            }
            ObjectKey::Token(id) => {
                self.tokens.insert(id, serde_json::from_slice(json)?);
            }
        }
        Ok(())
    }

    /// Every object key present, in a deterministic order.
    pub fn keys(&self) -> Vec<ObjectKey> {
        let mut keys = Vec::new();
        keys.extend(self.nodes.keys().cloned().map(ObjectKey::Node));
        keys.extend(self.workloads.keys().cloned().map(ObjectKey::Workload));
        keys.extend(self.instances.keys().cloned().map(ObjectKey::Instance));
        keys.extend(self.services.keys().cloned().map(ObjectKey::Service));
        keys.extend(self.migrations.keys().cloned().map(ObjectKey::Migration));
        keys.extend(self.tokens.keys().cloned().map(ObjectKey::Token));
        keys
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use flotilla_api::cluster::*;
    use proptest::prelude::*;

    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: format!("{id}:7000"),
            ..Default::default()
        }
    }

    fn put_workload(name: &str, image: &str, expect: Option<u64>) -> Command {
        Command::PutWorkload(PutWorkload {
            spec: WorkloadSpec {
                name: name.into(),
                image: image.into(),
                replicas: 1,
                ..Default::default()
            },
            expect_revision: expect,
            at_ms: 1000,
        })
    }

    fn place(inst: &str, owner: &str) -> Command {
        Command::PutInstancePlacement(PutInstancePlacement {
            instance_id: inst.into(),
            workload: "w".into(),
            owner_node: Some(owner.into()),
            expect_revision: None,
            at_ms: 5,
        })
    }

    #[test]
    fn revision_is_the_log_index_and_conditional_updates_refuse_lost_updates() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(3, &put_workload("w", "a", Some(0))),
            CommandResult::Applied { revision: 3 }
        );
        assert_eq!(s.workloads["w"].revision, 3);
        // Create-only again: the object exists now.
        assert_eq!(
            s.apply(4, &put_workload("w", "b", Some(0))),
            CommandResult::Conflict { current: 3 }
        );
        // A writer that read revision 3 wins once; the second one with the same read loses.
        assert_eq!(
            s.apply(5, &put_workload("w", "b", Some(3))),
            CommandResult::Applied { revision: 5 }
        );
        assert_eq!(
            s.apply(6, &put_workload("w", "c", Some(3))),
            CommandResult::Conflict { current: 5 }
        );
        assert_eq!(s.workloads["w"].spec.image, "b");
        assert_eq!(s.workloads["w"].generation, 2);
        let del = Command::DeleteWorkload(DeleteWorkload {
            name: "w".into(),
            expect_revision: Some(4),
            at_ms: 0,
        });
        assert_eq!(s.apply(7, &del), CommandResult::Conflict { current: 5 });
        assert!(s.workloads.contains_key("w"));
    }

    #[test]
    fn epoch_is_bumped_on_every_ownership_change_and_stale_reports_are_refused() {
        let mut s = ClusterState::default();
        assert!(s.apply(1, &place("i", "n1")).is_applied());
        assert_eq!(s.instances["i"].epoch, 1);
        assert!(s.apply(2, &place("i", "n1")).is_applied());
        assert_eq!(s.instances["i"].epoch, 1, "same owner keeps the epoch");
        let report = |node: &str, epoch| {
            Command::ReportInstanceState(ReportInstanceState {
                instance_id: "i".into(),
                node_id: node.into(),
                epoch,
                state: ObservedState::Running,
                exit: None,
                ip: Some("10.0.0.2".into()),
                ready: true,
                restarts: 0,
                at_ms: 9,
            })
        };
        assert!(s.apply(3, &report("n1", 1)).is_applied());
        assert_eq!(s.instances["i"].phase, InstancePhase::Running);
        let failover = Command::ChangeInstanceOwner(ChangeInstanceOwner {
            instance_id: "i".into(),
            expect_epoch: 1,
            new_owner: Some("n2".into()),
            phase: InstancePhase::Scheduled,
            at_ms: 10,
        });
        assert!(s.apply(4, &failover).is_applied());
        assert_eq!(s.instances["i"].epoch, 2);
        // The same failover decided twice (e.g. by an old leader) is fenced off.
        assert_eq!(
            s.apply(5, &failover),
            CommandResult::StaleEpoch { current: 2 }
        );
        // The old owner comes back and reports under its old epoch: refused.
        assert_eq!(
            s.apply(6, &report("n1", 1)),
            CommandResult::StaleEpoch { current: 2 }
        );
        // Even at the right epoch, only the owner may report.
        assert_eq!(
            s.apply(7, &report("n1", 2)),
            CommandResult::StaleEpoch { current: 2 }
        );
        assert!(s.apply(8, &report("n2", 2)).is_applied());
        assert_eq!(s.instances["i"].revision, 8);
    }

    #[test]
    fn migration_commit_moves_ownership_once_and_abort_keeps_it() {
        let mut s = ClusterState::default();
        s.apply(1, &place("i", "src"));
        let start = |id: &str, epoch| {
            Command::StartMigration(StartMigration {
                id: id.into(),
                instance_id: "i".into(),
                source_node: "src".into(),
                target_node: "dst".into(),
                expect_epoch: epoch,
                at_ms: 2,
            })
        };
        let step = |id: &str, phase| {
            Command::AdvanceMigration(AdvanceMigration {
                id: id.into(),
                instance_id: "i".into(),
                phase,
                at_ms: 3,
            })
        };
        assert_eq!(
            s.apply(2, &start("m1", 0)),
            CommandResult::StaleEpoch { current: 1 }
        );
        assert!(s.apply(3, &start("m1", 1)).is_applied());
        assert!(matches!(
            s.apply(4, &start("m2", 1)),
            CommandResult::Rejected { .. }
        ));
        assert!(matches!(
            s.apply(5, &step("m1", MigrationPhase::Committed)),
            CommandResult::Rejected { .. }
        ));
        for (i, phase) in [MigrationPhase::Freezing, MigrationPhase::Restored]
            .into_iter()
            .enumerate()
        {
            assert!(s.apply(6 + i as u64, &step("m1", phase)).is_applied());
            assert_eq!(s.instances["i"].owner_node.as_deref(), Some("src"));
        }
        assert!(s
            .apply(8, &step("m1", MigrationPhase::Committed))
            .is_applied());
        assert_eq!(s.instances["i"].owner_node.as_deref(), Some("dst"));
        assert_eq!(s.instances["i"].epoch, 2);
        assert!(matches!(
            s.apply(9, &step("m1", MigrationPhase::Aborted)),
            CommandResult::Rejected { .. }
        ));
        assert!(s.apply(10, &step("m1", MigrationPhase::Done)).is_applied());
        assert_eq!(s.instances["i"].phase, InstancePhase::Running);

        // A second migration back, aborted: ownership and epoch stay.
        let back = Command::StartMigration(StartMigration {
            id: "m3".into(),
            instance_id: "i".into(),
            source_node: "dst".into(),
            target_node: "src".into(),
            expect_epoch: 2,
            at_ms: 11,
        });
        assert!(s.apply(11, &back).is_applied());
        assert!(s
            .apply(12, &step("m3", MigrationPhase::Aborted))
            .is_applied());
        assert_eq!(s.instances["i"].owner_node.as_deref(), Some("dst"));
        assert_eq!(s.instances["i"].epoch, 2);
    }

    #[test]
    fn stale_lease_renewals_are_refused_and_the_event_ring_is_bounded() {
        let mut s = ClusterState::default();
        let reg = Command::RegisterNode(RegisterNode {
            node: node("n1"),
            expect_revision: None,
            at_ms: 1,
        });
        assert!(s.apply(1, &reg).is_applied());
        let hb = |term, seq| {
            Command::NodeHeartbeat(NodeHeartbeat {
                node_id: "n1".into(),
                lease: NodeLease {
                    leader_term: term,
                    seq,
                    ttl_ms: 10_000,
                    renewed_at_ms: 7,
                },
                at_ms: 7,
            })
        };
        assert!(s.apply(2, &hb(2, 5)).is_applied());
        assert!(matches!(
            s.apply(3, &hb(2, 5)),
            CommandResult::Rejected { .. }
        ));
        assert!(matches!(
            s.apply(4, &hb(1, 9)),
            CommandResult::Rejected { .. }
        ));
        assert!(s.apply(5, &hb(3, 1)).is_applied());

        for i in 0..(EVENTS_CAPACITY as u64 + 50) {
            s.apply(10 + i, &put_workload(&format!("w{}", i % 7), "img", None));
        }
        assert_eq!(s.events.len(), EVENTS_CAPACITY);
        assert_eq!(s.events.back().map(|e| e.seq), Some(s.last_event_seq));
        assert_eq!(
            s.events.front().map(|e| e.seq),
            Some(s.last_event_seq - EVENTS_CAPACITY as u64 + 1)
        );
    }

    #[test]
    fn a_newer_command_version_is_refused_not_misread() {
        let mut s = ClusterState::default();
        let mut cmd = VersionedCommand::new(put_workload("w", "a", None));
        cmd.v = COMMAND_VERSION + 1;
        assert!(matches!(
            s.apply_versioned(1, &cmd),
            CommandResult::Rejected { .. }
        ));
        assert!(s.workloads.is_empty());
    }

    #[test]
    fn a_batch_applies_each_command_at_its_index_or_is_refused_whole() {
        let mut s = ClusterState::default();
        let batch = |cmds: Vec<Command>| {
            VersionedCommand::new(Command::Batch(CommandBatch { commands: cmds }))
        };
        let out = s.apply_entry(
            7,
            &batch(vec![
                put_workload("a", "x", Some(0)),
                put_workload("b", "y", Some(3)),
                put_workload("c", "z", None),
            ]),
        );
        assert_eq!(
            out,
            EntryOutcome::Batch(vec![
                CommandResult::Applied { revision: 7 },
                CommandResult::Conflict { current: 0 },
                CommandResult::Applied { revision: 7 },
            ])
        );
        assert_eq!(s.workloads["a"].revision, 7);
        assert!(!s.workloads.contains_key("b"));
        let before = s.clone();
        // Two commands on one object would give it one revision for two changes.
        let out = s.apply_entry(
            8,
            &batch(vec![
                put_workload("d", "x", None),
                put_workload("a", "y", Some(7)),
                put_workload("a", "z", Some(7)),
            ]),
        );
        let EntryOutcome::Batch(results) = out else {
            panic!("one result per command")
        };
        assert_eq!(results.len(), 3);
        for r in &results {
            assert!(
                matches!(r, CommandResult::Rejected { reason } if reason.contains("workload/a")),
                "{r:?}"
            );
        }
        let nested = s.apply_entry(
            8,
            &batch(vec![Command::Batch(CommandBatch { commands: vec![] })]),
        );
        assert!(
            matches!(&nested, EntryOutcome::Batch(r) if matches!(&r[0], CommandResult::Rejected { .. }))
        );
        // A batch applied as a command (not as an entry) is refused too.
        assert!(matches!(
            s.apply_versioned(8, &batch(vec![put_workload("e", "x", None)])),
            CommandResult::Rejected { .. }
        ));
        assert_eq!(s, before);
    }

    #[test]
    fn command_wire_format_is_tagged_and_versioned() {
        let cmd = VersionedCommand::new(put_workload("w", "a", Some(0)));
        let json = serde_json::to_value(&cmd).unwrap();
        assert_eq!(json["v"], COMMAND_VERSION);
        assert_eq!(json["command"]["type"], "put_workload");
        assert_eq!(json["command"]["expectRevision"], 0);
        let back: VersionedCommand = serde_json::from_value(json).unwrap();
        assert_eq!(back, cmd);
    }

    fn new_inst(id: &str, w: &str, generation: u64, replica: u32, node: &str) -> NewInstance {
        NewInstance {
            instance_id: id.into(),
            workload: w.into(),
            generation,
            replica,
            owner_node: node.into(),
        }
    }

    fn register(s: &mut ClusterState, index: u64, id: &str) {
        let reg = Command::RegisterNode(RegisterNode {
            node: node(id),
            expect_revision: None,
            at_ms: 1,
        });
        assert!(s.apply(index, &reg).is_applied());
    }

    #[test]
    fn batched_placement_copies_the_spec_and_skips_stale_and_existing_ones() {
        let mut s = ClusterState::default();
        register(&mut s, 1, "n1");
        s.apply(2, &put_workload("w", "a", None));
        let place = |items: Vec<NewInstance>| {
            Command::PlaceInstances(PlaceInstances {
                instances: items,
                at_ms: 9,
            })
        };
        let r = s.apply(
            3,
            &place(vec![
                new_inst("w-0", "w", 1, 0, "n1"),
                new_inst("w-1", "w", 1, 1, "n1"),
                new_inst("w-2", "w", 1, 2, "nope"),
                new_inst("x-0", "x", 1, 0, "n1"),
            ]),
        );
        assert_eq!(r, CommandResult::Applied { revision: 3 });
        assert_eq!(s.instances.len(), 2);
        let i = &s.instances["w-1"];
        assert_eq!((i.replica, i.generation, i.epoch), (1, 1, 1));
        assert_eq!(i.phase, InstancePhase::Scheduled);
        assert_eq!(i.spec.as_ref().map(|s| s.image.as_str()), Some("a"));
        // The workload moved to generation 2: a plan made for 1 is stale and changes nothing.
        s.apply(4, &put_workload("w", "b", None));
        let before = s.clone();
        assert!(matches!(
            s.apply(5, &place(vec![new_inst("w-3", "w", 1, 3, "n1")])),
            CommandResult::Rejected { .. }
        ));
        assert_eq!(before, s);
        // An existing id is never overwritten.
        assert!(matches!(
            s.apply(6, &place(vec![new_inst("w-0", "w", 2, 0, "n1")])),
            CommandResult::Rejected { .. }
        ));
        assert_eq!(s.instances["w-0"].generation, 1);
    }

    #[test]
    fn stopping_keeps_owner_and_epoch_and_survives_running_reports() {
        let mut s = ClusterState::default();
        register(&mut s, 1, "n1");
        s.apply(2, &put_workload("w", "a", None));
        s.apply(
            3,
            &Command::PlaceInstances(PlaceInstances {
                instances: vec![new_inst("w-0", "w", 1, 0, "n1")],
                at_ms: 3,
            }),
        );
        let report = |state| {
            Command::ReportInstanceState(ReportInstanceState {
                instance_id: "w-0".into(),
                node_id: "n1".into(),
                epoch: 1,
                state,
                exit: None,
                ip: None,
                ready: true,
                restarts: 0,
                at_ms: 4,
            })
        };
        assert!(s.apply(4, &report(ObservedState::Running)).is_applied());
        let stop = Command::StopInstances(StopInstances {
            instance_ids: vec!["w-0".into(), "gone".into()],
            at_ms: 5,
        });
        assert!(s.apply(5, &stop).is_applied());
        let i = &s.instances["w-0"];
        assert_eq!((i.phase, i.epoch), (InstancePhase::Stopping, 1));
        assert_eq!(i.owner_node.as_deref(), Some("n1"));
        assert!(matches!(s.apply(6, &stop), CommandResult::Rejected { .. }));
        // A late "running" report does not undo the stop; "stopped" is recorded as observed.
        assert!(s.apply(7, &report(ObservedState::Running)).is_applied());
        assert_eq!(s.instances["w-0"].phase, InstancePhase::Stopping);
        assert!(s.apply(8, &report(ObservedState::Stopped)).is_applied());
        let i = &s.instances["w-0"];
        assert_eq!(i.phase, InstancePhase::Stopping);
        assert_eq!(
            i.observed.as_ref().map(|o| o.state),
            Some(ObservedState::Stopped)
        );
        // Deleting the workload marks it while the instance exists, removes it after.
        let del = Command::DeleteWorkload(DeleteWorkload {
            name: "w".into(),
            expect_revision: None,
            at_ms: 9,
        });
        assert!(s.apply(9, &del).is_applied());
        assert!(s.workloads["w"].deleting);
        assert!(matches!(
            s.apply(10, &put_workload("w", "c", None)),
            CommandResult::Rejected { .. }
        ));
        let rm = Command::DeleteInstances(DeleteInstances {
            instance_ids: vec!["w-0".into()],
            at_ms: 11,
        });
        assert!(s.apply(11, &rm).is_applied());
        assert!(s.apply(12, &del).is_applied());
        assert!(s.workloads.is_empty() && s.instances.is_empty());
    }

    #[test]
    fn status_commits_only_changes_and_drain_is_cleared_by_uncordon() {
        let mut s = ClusterState::default();
        register(&mut s, 1, "n1");
        s.apply(2, &put_workload("w", "a", None));
        let status = |ready| {
            Command::SetWorkloadStatus(SetWorkloadStatus {
                statuses: vec![WorkloadStatusUpdate {
                    workload: "w".into(),
                    status: WorkloadStatus {
                        ready,
                        ..Default::default()
                    },
                }],
                at_ms: 3,
            })
        };
        assert!(s.apply(3, &status(1)).is_applied());
        assert!(matches!(
            s.apply(4, &status(1)),
            CommandResult::Rejected { .. }
        ));
        assert_eq!(s.workloads["w"].revision, 3);
        // A spec change keeps the status and bumps the generation.
        s.apply(5, &put_workload("w", "b", None));
        assert_eq!(s.workloads["w"].generation, 2);
        assert_eq!(s.workloads["w"].status.as_ref().map(|x| x.ready), Some(1));

        let drain = Command::SetNodeDraining(SetNodeDraining {
            id: "n1".into(),
            draining: true,
            at_ms: 6,
        });
        assert!(s.apply(6, &drain).is_applied());
        assert!(s.nodes["n1"].draining && !s.nodes["n1"].schedulable);
        let uncordon = Command::UpdateNode(UpdateNode {
            id: "n1".into(),
            address: None,
            labels: None,
            capacity: None,
            features: None,
            schedulable: Some(true),
            expect_revision: None,
            at_ms: 7,
        });
        assert!(s.apply(7, &uncordon).is_applied());
        assert!(!s.nodes["n1"].draining && s.nodes["n1"].schedulable);
    }

    // ---- property tests --------------------------------------------------------------------

    fn id(prefix: &'static str) -> impl Strategy<Value = String> {
        (0u8..3).prop_map(move |i| format!("{prefix}{i}"))
    }

    fn expect() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![Just(None), (0u64..12).prop_map(Some)]
    }

    fn phase() -> impl Strategy<Value = MigrationPhase> {
        prop_oneof![
            Just(MigrationPhase::Preparing),
            Just(MigrationPhase::Freezing),
            Just(MigrationPhase::Restored),
            Just(MigrationPhase::Committed),
            Just(MigrationPhase::Done),
            Just(MigrationPhase::Aborted),
        ]
    }

    /// Commands over a tiny id space so that conflicts, epochs and phases interact.
    pub(crate) fn arb_command() -> impl Strategy<Value = Command> {
        let at = 0u64..1_000_000;
        prop_oneof![
            (id("n"), expect(), at.clone()).prop_map(|(id, e, at_ms)| Command::RegisterNode(
                RegisterNode {
                    node: node(&id),
                    expect_revision: e,
                    at_ms
                }
            )),
            (id("n"), any::<Option<bool>>(), expect(), at.clone()).prop_map(
                |(id, schedulable, e, at_ms)| Command::UpdateNode(UpdateNode {
                    id,
                    address: None,
                    labels: None,
                    capacity: Some(Capacity {
                        cpu_millis: at_ms % 4000,
                        memory_bytes: 1 << 30
                    }),
                    features: None,
                    schedulable,
                    expect_revision: e,
                    at_ms
                })
            ),
            (id("n"), expect(), at.clone()).prop_map(|(id, e, at_ms)| Command::RemoveNode(
                RemoveNode {
                    id,
                    expect_revision: e,
                    at_ms
                }
            )),
            (id("n"), 0u64..4, 0u64..4, at.clone()).prop_map(|(id, term, seq, at_ms)| {
                Command::NodeHeartbeat(NodeHeartbeat {
                    node_id: id,
                    lease: NodeLease {
                        leader_term: term,
                        seq,
                        ttl_ms: 1000,
                        renewed_at_ms: at_ms,
                    },
                    at_ms,
                })
            }),
            (id("w"), id("img"), expect()).prop_map(|(w, img, e)| put_workload(&w, &img, e)),
            (id("w"), expect(), at.clone()).prop_map(|(name, e, at_ms)| {
                Command::DeleteWorkload(DeleteWorkload {
                    name,
                    expect_revision: e,
                    at_ms,
                })
            }),
            (id("i"), prop::option::of(id("n")), expect(), at.clone()).prop_map(
                |(i, owner, e, at_ms)| Command::PutInstancePlacement(PutInstancePlacement {
                    instance_id: i,
                    workload: "w".into(),
                    owner_node: owner,
                    expect_revision: e,
                    at_ms
                })
            ),
            (id("i"), id("n"), 0u64..5, at.clone()).prop_map(|(i, n, epoch, at_ms)| {
                Command::ReportInstanceState(ReportInstanceState {
                    instance_id: i,
                    node_id: n,
                    epoch,
                    state: ObservedState::Running,
                    exit: None,
                    ip: None,
                    ready: false,
                    restarts: 0,
                    at_ms,
                })
            }),
            (id("i"), 0u64..5, prop::option::of(id("n")), at.clone()).prop_map(
                |(i, epoch, owner, at_ms)| Command::ChangeInstanceOwner(ChangeInstanceOwner {
                    instance_id: i,
                    expect_epoch: epoch,
                    new_owner: owner,
                    phase: InstancePhase::Scheduled,
                    at_ms
                })
            ),
            (id("i"), expect(), at.clone()).prop_map(|(i, e, at_ms)| Command::DeleteInstance(
                DeleteInstance {
                    instance_id: i,
                    expect_revision: e,
                    at_ms
                }
            )),
            (id("s"), id("w"), expect(), at.clone()).prop_map(|(s, w, e, at_ms)| {
                Command::PutService(PutService {
                    service: ServiceSpec {
                        name: s,
                        workload: w,
                        ..Default::default()
                    },
                    expect_revision: e,
                    at_ms,
                })
            }),
            (id("s"), expect(), at.clone()).prop_map(|(name, e, at_ms)| {
                Command::DeleteService(DeleteService {
                    name,
                    expect_revision: e,
                    at_ms,
                })
            }),
            (id("m"), id("i"), id("n"), id("n"), 0u64..4, at.clone()).prop_map(
                |(m, i, src, dst, epoch, at_ms)| Command::StartMigration(StartMigration {
                    id: m,
                    instance_id: i,
                    source_node: src,
                    target_node: dst,
                    expect_epoch: epoch,
                    at_ms
                })
            ),
            (id("m"), id("i"), phase(), at.clone()).prop_map(|(m, i, phase, at_ms)| {
                Command::AdvanceMigration(AdvanceMigration {
                    id: m,
                    instance_id: i,
                    phase,
                    at_ms,
                })
            }),
            (id("t"), expect(), at.clone()).prop_map(|(t, e, at_ms)| Command::PutToken(PutToken {
                token: TokenInfo {
                    id: t,
                    secret_sha256: "00".repeat(32),
                    role: TokenRole::NodeJoin,
                    description: String::new(),
                    expires_at_ms: Some(at_ms + 1000),
                },
                expect_revision: e,
                at_ms
            })),
            (id("t"), at.clone())
                .prop_map(|(id, at_ms)| Command::RevokeToken(RevokeToken { id, at_ms })),
            (
                prop::collection::vec((id("i"), id("w"), 0u64..3, 0u32..3, id("n")), 0..4),
                at.clone()
            )
                .prop_map(|(items, at_ms)| Command::PlaceInstances(PlaceInstances {
                    instances: items
                        .into_iter()
                        .map(|(instance_id, workload, generation, replica, owner_node)| {
                            NewInstance {
                                instance_id,
                                workload,
                                generation,
                                replica,
                                owner_node,
                            }
                        })
                        .collect(),
                    at_ms,
                })),
            (prop::collection::vec(id("i"), 0..4), at.clone()).prop_map(|(instance_ids, at_ms)| {
                Command::StopInstances(StopInstances {
                    instance_ids,
                    at_ms,
                })
            }),
            (prop::collection::vec(id("i"), 0..4), at.clone()).prop_map(|(instance_ids, at_ms)| {
                Command::DeleteInstances(DeleteInstances {
                    instance_ids,
                    at_ms,
                })
            }),
            (prop::collection::vec((id("w"), 0u32..3), 0..3), at.clone()).prop_map(
                |(items, at_ms)| {
                    Command::SetWorkloadStatus(SetWorkloadStatus {
                        statuses: items
                            .into_iter()
                            .map(|(workload, ready)| WorkloadStatusUpdate {
                                workload,
                                status: WorkloadStatus {
                                    ready,
                                    ..Default::default()
                                },
                            })
                            .collect(),
                        at_ms,
                    })
                }
            ),
            (id("n"), any::<bool>(), at).prop_map(|(id, draining, at_ms)| {
                Command::SetNodeDraining(SetNodeDraining {
                    id,
                    draining,
                    at_ms,
                })
            }),
        ]
    }

    fn epochs(s: &ClusterState) -> BTreeMap<String, u64> {
        s.instances
            .iter()
            .map(|(k, v)| (k.clone(), v.epoch))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Apply is a function of (state, index, command): two replicas agree on every result
        /// and on the final state, and the state survives a snapshot round trip.
        #[test]
        fn replicas_agree_and_snapshots_round_trip(cmds in prop::collection::vec(arb_command(), 1..120)) {
            let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
            for (i, cmd) in cmds.iter().enumerate() {
                let index = i as u64 + 1;
                let ra = a.apply(index, cmd);
                // The command as it travels through the log: serialized and read back.
                let wire: Command = serde_json::from_slice(&serde_json::to_vec(cmd).unwrap()).unwrap();
                let rb = b.apply(index, &wire);
                prop_assert_eq!(ra, rb);
            }
            prop_assert_eq!(&a, &b);
            let snapshot = serde_json::to_vec(&a).unwrap();
            let restored: ClusterState = serde_json::from_slice(&snapshot).unwrap();
            prop_assert_eq!(&restored, &a);
        }

        /// A batch entry of commands on disjoint objects leaves the same state and results as
        /// the same commands applied one by one at that index; one on overlapping objects is
        /// refused whole and changes nothing. Replicas agree either way.
        #[test]
        fn batches_equal_their_commands_applied_at_one_index(
            prefix in prop::collection::vec(arb_command(), 0..40),
            cmds in prop::collection::vec(arb_command(), 1..12),
        ) {
            let mut s = ClusterState::default();
            for (i, c) in prefix.iter().enumerate() {
                s.apply(i as u64 + 1, c);
            }
            let index = prefix.len() as u64 + 1;
            let mut batched = s.clone();
            let entry = VersionedCommand::new(Command::Batch(CommandBatch { commands: cmds.clone() }));
            let wire: VersionedCommand = serde_json::from_slice(&serde_json::to_vec(&entry).unwrap()).unwrap();
            let out = batched.apply_entry(index, &wire);
            let mut replica = s.clone();
            prop_assert_eq!(&replica.apply_entry(index, &entry), &out);
            prop_assert_eq!(&replica, &batched);
            let EntryOutcome::Batch(results) = out else { panic!("a batch has a result per command") };
            prop_assert_eq!(results.len(), cmds.len());
            if batch_refusal(&cmds).is_some() {
                let all_rejected = results.iter().all(|r| matches!(r, CommandResult::Rejected { .. }));
                prop_assert!(all_rejected, "{:?}", results);
                prop_assert_eq!(&batched, &s);
            } else {
                let one_by_one: Vec<_> = cmds.iter().map(|c| s.apply(index, c)).collect();
                prop_assert_eq!(results, one_by_one);
                prop_assert_eq!(&batched, &s);
            }
        }

        /// Every instance a batch creates carries its workload's spec and generation as they
        /// were when it applied, and a replica slot; epochs start at 1.
        #[test]
        fn placed_instances_copy_their_workload(cmds in prop::collection::vec(arb_command(), 1..120)) {
            let mut s = ClusterState::default();
            for (i, cmd) in cmds.iter().enumerate() {
                let before = s.clone();
                let result = s.apply(i as u64 + 1, cmd);
                if let (Command::PlaceInstances(c), true) = (cmd, result.is_applied()) {
                    for new in &c.instances {
                        let Some(inst) = s.instances.get(&new.instance_id) else { continue };
                        if before.instances.contains_key(&new.instance_id) {
                            prop_assert_eq!(inst, &before.instances[&new.instance_id]);
                            continue;
                        }
                        let w = &before.workloads[&inst.workload];
                        prop_assert_eq!(w.generation, inst.generation);
                        prop_assert_eq!(Some(&w.spec), inst.spec.as_ref());
                        prop_assert_eq!(inst.epoch, 1);
                        prop_assert!(before.nodes.contains_key(inst.owner_node.as_deref().unwrap_or("")));
                    }
                }
            }
        }

        /// A command changes only the objects it names (what the store persists), stamps them
        /// with its index, and never lowers an instance's epoch.
        #[test]
        fn apply_touches_only_named_objects(cmds in prop::collection::vec(arb_command(), 1..120)) {
            let mut s = ClusterState::default();
            for (i, cmd) in cmds.iter().enumerate() {
                let index = i as u64 + 1;
                let before = s.clone();
                let result = s.apply(index, cmd);
                let touched = cmd.touched();
                let mut all: Vec<ObjectKey> = before.keys();
                all.extend(s.keys());
                for key in all {
                    let (old, new) = (before.object_json(&key).unwrap(), s.object_json(&key).unwrap());
                    if touched.contains(&key) {
                        if old != new {
                            prop_assert!(result.is_applied(), "{key} changed by a refused command");
                            if new.is_some() {
                                let v: serde_json::Value = serde_json::from_slice(new.as_ref().unwrap()).unwrap();
                                prop_assert_eq!(v["revision"].as_u64(), Some(index));
                            }
                        }
                    } else {
                        prop_assert_eq!(old, new, "{} changed but not named by the command", key);
                    }
                }
                if !result.is_applied() {
                    prop_assert_eq!(&before, &s, "a refused command changed the state");
                }
                for (id, epoch) in epochs(&before) {
                    if let Some(now) = s.instances.get(&id) {
                        prop_assert!(now.epoch >= epoch, "epoch of {} went down", id);
                    }
                }
            }
        }
    }
}
