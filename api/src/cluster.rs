//! Types of the replicated cluster state: the Raft command (`VersionedCommand`), its apply
//! result (`CommandResult`), the objects the state machine holds, and the controller's cluster
//! endpoints.
//!
//! # Compatibility rule
//!
//! Commands are persisted in the Raft log and replayed after upgrades, so this module is a
//! serialization boundary with a version:
//!
//! * **Add new `Command` variants, never change or remove old ones.** A variant's tag and the
//!   meaning of its fields are fixed once released.
//! * A new field on an existing struct must be optional (`#[serde(default)]`) and its absence
//!   must mean the old behaviour.
//! * `VersionedCommand::v` is bumped when a release adds variants; a leader proposes a version
//!   only when every member understands it (checked by the API layer that proposes commands).
//! * Nothing here reads a clock or mints an id: time (`at_ms`, the proposer's wall clock, kept
//!   as data and never compared across machines) and ids come from the proposer.
//!
//! Every object carries `revision`, the Raft log index that last modified it (the commands of
//! one `Command::Batch` share their entry's index and touch pairwise disjoint objects, so an
//! object's revision still names exactly one change). A command with
//! `expect_revision: Some(r)` applies only when the object's current revision is `r` (`0`
//! meaning "does not exist yet"); otherwise the result is `CommandResult::Conflict`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The command schema version this build writes (2 added `Command::Batch`).
pub const COMMAND_VERSION: u16 = 2;

/// How many events the cluster keeps (oldest dropped first).
pub const EVENTS_CAPACITY: usize = 1000;

/// The payload of one Raft log entry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionedCommand {
    pub v: u16,
    pub command: Command,
}

impl VersionedCommand {
    pub fn new(command: Command) -> Self {
        Self {
            v: COMMAND_VERSION,
            command,
        }
    }
}

impl From<Command> for VersionedCommand {
    fn from(command: Command) -> Self {
        Self::new(command)
    }
}

/// Every change to the cluster state. Append variants; never change released ones.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    RegisterNode(RegisterNode),
    UpdateNode(UpdateNode),
    RemoveNode(RemoveNode),
    NodeHeartbeat(NodeHeartbeat),
    PutWorkload(PutWorkload),
    DeleteWorkload(DeleteWorkload),
    PutInstancePlacement(PutInstancePlacement),
    ReportInstanceState(ReportInstanceState),
    ChangeInstanceOwner(ChangeInstanceOwner),
    DeleteInstance(DeleteInstance),
    PutService(PutService),
    DeleteService(DeleteService),
    StartMigration(StartMigration),
    AdvanceMigration(AdvanceMigration),
    PutToken(PutToken),
    RevokeToken(RevokeToken),
    PlaceInstances(PlaceInstances),
    StopInstances(StopInstances),
    DeleteInstances(DeleteInstances),
    SetWorkloadStatus(SetWorkloadStatus),
    SetNodeDraining(SetNodeDraining),
    /// Several commands in one log entry, applied in order at that entry's index. The leader
    /// groups concurrent writes this way so that they share one log append and one
    /// replication round. The commands touch pairwise disjoint objects (`touched`), so no two
    /// of them give the same object the same revision; a batch that breaks this, or contains
    /// a batch, is rejected as a whole.
    Batch(CommandBatch),
}

impl Command {
    /// The proposer's time carried by the command.
    pub fn at_ms(&self) -> u64 {
        match self {
            Command::RegisterNode(c) => c.at_ms,
            Command::UpdateNode(c) => c.at_ms,
            Command::RemoveNode(c) => c.at_ms,
            Command::NodeHeartbeat(c) => c.at_ms,
            Command::PutWorkload(c) => c.at_ms,
            Command::DeleteWorkload(c) => c.at_ms,
            Command::PutInstancePlacement(c) => c.at_ms,
            Command::ReportInstanceState(c) => c.at_ms,
            Command::ChangeInstanceOwner(c) => c.at_ms,
            Command::DeleteInstance(c) => c.at_ms,
            Command::PutService(c) => c.at_ms,
            Command::DeleteService(c) => c.at_ms,
            Command::StartMigration(c) => c.at_ms,
            Command::AdvanceMigration(c) => c.at_ms,
            Command::PutToken(c) => c.at_ms,
            Command::RevokeToken(c) => c.at_ms,
            Command::PlaceInstances(c) => c.at_ms,
            Command::StopInstances(c) => c.at_ms,
            Command::DeleteInstances(c) => c.at_ms,
            Command::SetWorkloadStatus(c) => c.at_ms,
            Command::SetNodeDraining(c) => c.at_ms,
            Command::Batch(b) => b.commands.iter().map(Command::at_ms).max().unwrap_or(0),
        }
    }

    /// The objects this command may modify (besides the event ring). The state machine's store
    /// persists exactly these after applying it.
    pub fn touched(&self) -> Vec<ObjectKey> {
        match self {
            Command::RegisterNode(c) => vec![ObjectKey::Node(c.node.id.clone())],
            Command::UpdateNode(c) => vec![ObjectKey::Node(c.id.clone())],
            Command::RemoveNode(c) => vec![ObjectKey::Node(c.id.clone())],
            Command::NodeHeartbeat(c) => vec![ObjectKey::Node(c.node_id.clone())],
            Command::PutWorkload(c) => vec![ObjectKey::Workload(c.spec.name.clone())],
            Command::DeleteWorkload(c) => vec![ObjectKey::Workload(c.name.clone())],
            Command::PutInstancePlacement(c) => vec![ObjectKey::Instance(c.instance_id.clone())],
            Command::ReportInstanceState(c) => vec![ObjectKey::Instance(c.instance_id.clone())],
            Command::ChangeInstanceOwner(c) => vec![ObjectKey::Instance(c.instance_id.clone())],
            Command::DeleteInstance(c) => vec![ObjectKey::Instance(c.instance_id.clone())],
            Command::PutService(c) => vec![ObjectKey::Service(c.service.name.clone())],
            Command::DeleteService(c) => vec![ObjectKey::Service(c.name.clone())],
            Command::StartMigration(c) => vec![
                ObjectKey::Migration(c.id.clone()),
                ObjectKey::Instance(c.instance_id.clone()),
            ],
            Command::AdvanceMigration(c) => vec![
                ObjectKey::Migration(c.id.clone()),
                ObjectKey::Instance(c.instance_id.clone()),
            ],
            Command::PutToken(c) => vec![ObjectKey::Token(c.token.id.clone())],
            Command::RevokeToken(c) => vec![ObjectKey::Token(c.id.clone())],
            Command::PlaceInstances(c) => c
                .instances
                .iter()
                .map(|i| ObjectKey::Instance(i.instance_id.clone()))
                .collect(),
            Command::StopInstances(c) => c
                .instance_ids
                .iter()
                .cloned()
                .map(ObjectKey::Instance)
                .collect(),
            Command::DeleteInstances(c) => c
                .instance_ids
                .iter()
                .cloned()
                .map(ObjectKey::Instance)
                .collect(),
            Command::SetWorkloadStatus(c) => c
                .statuses
                .iter()
                .map(|s| ObjectKey::Workload(s.workload.clone()))
                .collect(),
            Command::SetNodeDraining(c) => vec![ObjectKey::Node(c.id.clone())],
            Command::Batch(b) => b.commands.iter().flat_map(Command::touched).collect(),
        }
    }
}

/// The commands of one `Command::Batch`, in apply order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandBatch {
    #[cfg_attr(feature = "openapi", schema(no_recursion))]
    pub commands: Vec<Command>,
}

/// Names one object of the cluster state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum ObjectKey {
    Node(String),
    Workload(String),
    Instance(String),
    Service(String),
    Migration(String),
    Token(String),
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKey::Node(id) => write!(f, "node/{id}"),
            ObjectKey::Workload(id) => write!(f, "workload/{id}"),
            ObjectKey::Instance(id) => write!(f, "instance/{id}"),
            ObjectKey::Service(id) => write!(f, "service/{id}"),
            ObjectKey::Migration(id) => write!(f, "migration/{id}"),
            ObjectKey::Token(id) => write!(f, "token/{id}"),
        }
    }
}

/// The outcome of applying one log entry. Refusals are results, not errors: every replica
/// computes the same one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CommandResult {
    /// The command changed the state; `revision` is the entry's log index.
    Applied { revision: u64 },
    /// `expect_revision` did not match; `current` is the object's revision (0: absent).
    Conflict { current: u64 },
    /// The command or report named an epoch that is not the instance's current one.
    StaleEpoch { current: u64 },
    /// The object the command refers to does not exist.
    NotFound { key: ObjectKey },
    /// Refused for a reason that is the same on every replica (invalid phase transition, stale
    /// lease renewal, unknown command version...).
    Rejected { reason: String },
}

impl CommandResult {
    pub fn is_applied(&self) -> bool {
        matches!(self, CommandResult::Applied { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// What an agent reports about its node when it registers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub id: String,
    /// Where the agent's API is reached.
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub capacity: Capacity,
    /// Feature name → version or detail (CRIU version, cgroup mode, overlay modes...).
    #[serde(default)]
    pub features: BTreeMap<String, String>,
}

/// A node lease renewal, ordered by (`leader_term`, `seq`) without any clock.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLease {
    /// Raft term of the leader that granted the renewal.
    pub leader_term: u64,
    /// Renewal counter chosen by that leader, increasing within a term.
    pub seq: u64,
    /// Lease length the leader counts on its own monotonic clock.
    pub ttl_ms: u64,
    /// The leader's wall clock at renewal: information for humans, never compared.
    pub renewed_at_ms: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// False when cordoned.
    pub schedulable: bool,
    /// Being drained: no placements, its instances are replaced elsewhere and then stopped.
    /// Cleared by an uncordon.
    #[serde(default)]
    pub draining: bool,
    pub lease: Option<NodeLease>,
    pub registered_at_ms: u64,
    pub updated_at_ms: u64,
    pub revision: u64,
    /// Whether the lease is valid, computed by the controller that answers a read (its clock);
    /// never set in the replicated state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

impl NodeRecord {
    /// The lease is valid at `now_ms` (the leader's clock): renewed at most `ttlMs` ago.
    pub fn lease_valid(&self, now_ms: u64) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| l.renewed_at_ms.saturating_add(l.ttl_ms) > now_ms)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterNode {
    pub node: NodeInfo,
    #[serde(default)]
    pub expect_revision: Option<u64>,
    pub at_ms: u64,
}

/// Changes the given fields of a registered node; absent fields stay.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateNode {
    pub id: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub capacity: Option<Capacity>,
    #[serde(default)]
    pub features: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub schedulable: Option<bool>,
    #[serde(default)]
    pub expect_revision: Option<u64>,
    pub at_ms: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveNode {
    pub id: String,
    #[serde(default)]
    pub expect_revision: Option<u64>,
    pub at_ms: u64,
}

/// Lease renewal. A renewal not newer than the stored one is refused.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHeartbeat {
    pub node_id: String,
    pub lease: NodeLease,
    pub at_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadResources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    pub name: String,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelConstraint {
    pub key: String,
    pub op: ConstraintOp,
    #[serde(default)]
    pub values: Vec<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    #[default]
    Binpack,
    Spread,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default)]
    pub constraints: Vec<LabelConstraint>,
    #[serde(default)]
    pub strategy: PlacementStrategy,
    /// Never two replicas on one node.
    #[serde(default)]
    pub anti_affinity: bool,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPolicy {
    Live,
    #[default]
    Cold,
    Never,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    pub max_unavailable: u32,
    pub max_surge: u32,
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        Self {
            max_unavailable: 1,
            max_surge: 1,
        }
    }
}

/// A workload as declared. Deep validation belongs to the API layer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: WorkloadResources,
    #[serde(default)]
    pub replicas: u32,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub migration_policy: MigrationPolicy,
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
    /// Restarted by the agent (and replaced elsewhere when it keeps failing) when this fails.
    #[serde(default)]
    pub liveness: Option<Probe>,
    /// Gates "ready": rolling updates count only ready replicas as available.
    #[serde(default)]
    pub readiness: Option<Probe>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// SIGTERM, then SIGKILL after this long, when an instance is stopped.
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
}

fn default_stop_grace_ms() -> u64 {
    10_000
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            image: String::new(),
            command: Vec::new(),
            env: BTreeMap::new(),
            resources: WorkloadResources::default(),
            replicas: 0,
            ports: Vec::new(),
            placement: Placement::default(),
            migration_policy: MigrationPolicy::default(),
            update_strategy: UpdateStrategy::default(),
            liveness: None,
            readiness: None,
            restart_policy: RestartPolicy::default(),
            stop_grace_ms: default_stop_grace_ms(),
        }
    }
}

/// What the agent does when an instance's process exits (liveness failures count as failure).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// A health check run by the owning agent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub action: ProbeAction,
    #[serde(default)]
    pub initial_delay_ms: u64,
    #[serde(default = "default_probe_period_ms")]
    pub period_ms: u64,
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures that make the check fail.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Consecutive successes that make a failed check pass again.
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
}

fn default_probe_period_ms() -> u64 {
    10_000
}
fn default_probe_timeout_ms() -> u64 {
    1_000
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_success_threshold() -> u32 {
    1
}

/// `exec` runs a command inside the container (exit 0 passes); `tcp` connects to the
/// instance's IP; `http` expects a 2xx or 3xx from `GET path` on the instance's IP.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProbeAction {
    Exec { command: Vec<String> },
    Tcp { port: u16 },
    Http { port: u16, path: String },
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRecord {
    pub spec: WorkloadSpec,
    /// Bumped whenever the spec changes other than `replicas` and `updateStrategy` (the
    /// update strategy rolls instances to it).
    pub generation: u64,
    /// What the leader's reconcile loop last observed and decided (committed when it changes).
    #[serde(default)]
    pub status: Option<WorkloadStatus>,
    /// Deleted while instances remained: they are being stopped, then the workload goes.
    #[serde(default)]
    pub deleting: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub revision: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutWorkload {
    pub spec: WorkloadSpec,
    #[serde(default)]
    pub expect_revision: Option<u64>,
    pub at_ms: u64,
}

/// Removes a workload without instances. A workload that still has instances is marked
/// `deleting` instead: the leader stops its instances gracefully, deletes them, then deletes
/// the workload again.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteWorkload {
    pub name: String,
    #[serde(default)]
    pub expect_revision: Option<u64>,
    pub at_ms: u64,
}

/// The observed state of a workload, as the leader's reconcile loop computes it. Contains no
/// time, so an unchanged situation gives an equal status and commits nothing.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// The generation this status was computed for.
    pub observed_generation: u64,
    /// Instances (not being stopped) whose readiness passes.
    pub ready: u32,
    /// Instances (not being stopped) whose process runs.
    pub running: u32,
    /// Instances placed on a node and not being stopped.
    pub placed: u32,
    /// Of those, instances at the current generation.
    pub updated: u32,
    /// Instances being stopped.
    pub stopping: u32,
    /// Replicas that no node can take now.
    pub unplaced: u32,
    /// Why (the scheduler's sentence, e.g. "no node with 4 GiB of free memory (...)").
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub conditions: Vec<WorkloadCondition>,
}

/// `Available` (at least replicas - maxUnavailable ready), `Placed` (every replica has a
/// node), `Updated` (every replica at the current generation and ready).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: bool,
    #[serde(default)]
    pub message: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatusUpdate {
    pub workload: String,
    pub status: WorkloadStatus,
}

/// Statuses of several workloads in one entry; each applies only if it differs from the
/// stored one (a workload that is gone is skipped).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetWorkloadStatus {
    pub statuses: Vec<WorkloadStatusUpdate>,
    pub at_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Instances (reliability.md §2.3: owner, epoch, phase)
// ---------------------------------------------------------------------------------------------

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstancePhase {
    #[default]
    Scheduled,
    Running,
    Migrating,
    Stopping,
    Stopped,
    Failed,
    Lost,
}

/// What the owning agent observed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedState {
    Pending,
    Starting,
    Running,
    Exited,
    Failed,
    Stopped,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitReason {
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub message: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceObserved {
    pub state: ObservedState,
    pub exit: Option<ExitReason>,
    pub ip: Option<String>,
    pub reported_at_ms: u64,
    /// Readiness probe passing (true when the workload has none and the process runs).
    #[serde(default)]
    pub ready: bool,
    /// Restarts the agent made on this node (exits and liveness failures).
    #[serde(default)]
    pub restarts: u32,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub id: String,
    pub workload: String,
    pub owner_node: Option<String>,
    /// Bumped on every ownership change; reports carrying another epoch are refused.
    pub epoch: u64,
    pub phase: InstancePhase,
    pub observed: Option<InstanceObserved>,
    /// Replica slot within the workload (0-based; reused when a replica is replaced).
    #[serde(default)]
    pub replica: u32,
    /// The workload generation this instance runs.
    #[serde(default)]
    pub generation: u64,
    /// The workload spec at that generation, copied by apply when the instance is placed, so
    /// an agent can run it (and a rolling update can keep old replicas) without the workload.
    #[serde(default)]
    pub spec: Option<WorkloadSpec>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub revision: u64,
}

/// Scheduler decision: create the instance (epoch 1) or move it to `owner_node` (epoch + 1 when
/// the owner changes).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutInstancePlacement {
    pub instance_id: String,
    pub workload: String,
    pub owner_node: Option<String>,
    #[serde(default)]
    pub expect_revision: Option<u64>,
    pub at_ms: u64,
}

/// An agent's report; refused unless `epoch` is current and `node_id` owns the instance.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportInstanceState {
    pub instance_id: String,
    pub node_id: String,
    pub epoch: u64,
    pub state: ObservedState,
    #[serde(default)]
    pub exit: Option<ExitReason>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restarts: u32,
    pub at_ms: u64,
}

/// Fenced ownership change (failover): applies only at `expect_epoch`, then bumps the epoch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeInstanceOwner {
    pub instance_id: String,
    pub expect_epoch: u64,
    pub new_owner: Option<String>,
    pub phase: InstancePhase,
    pub at_ms: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteInstance {
    pub instance_id: String,
    #[serde(default)]
    pub expect_revision: Option<u64>,
    pub at_ms: u64,
}

/// One instance of a batched placement.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewInstance {
    pub instance_id: String,
    pub workload: String,
    /// The workload generation the plan was made for; the instance is skipped when the
    /// workload has moved on (or is gone, or is being deleted) by the time this applies.
    pub generation: u64,
    pub replica: u32,
    pub owner_node: String,
}

/// The scheduler's decisions of one round: many new instances in one log entry. Each is
/// created at epoch 1, phase `scheduled`, with the workload's spec copied; ids that exist
/// already, stale generations and unknown nodes are skipped. Applied when at least one is
/// created, `Rejected` (and nothing changes) otherwise.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceInstances {
    pub instances: Vec<NewInstance>,
    pub at_ms: u64,
}

/// Set the desired phase of instances to `stopping` (owner and epoch stay; the agent stops the
/// container gracefully and reports `stopped`). Instances that are gone, already stopping or
/// no longer running (`stopped`, `failed`, `lost`) or migrating are skipped. Applied when at
/// least one changes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopInstances {
    pub instance_ids: Vec<String>,
    pub at_ms: u64,
}

/// Delete several instance records (absent ones are skipped). Applied when at least one goes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteInstances {
    pub instance_ids: Vec<String>,
    pub at_ms: u64,
}

/// Mark a node draining (and unschedulable) or clear the mark.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetNodeDraining {
    pub id: String,
    pub draining: bool,
    pub at_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------------

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    pub name: String,
    /// The workload whose instances back the service.
    pub workload: String,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Virtual IP, allocated by the proposer.
    #[serde(default)]
    pub vip: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    pub spec: ServiceSpec,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub revision: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutService {
    pub service: ServiceSpec,
    #[serde(default)]
    pub expect_revision: Option<u64>,
    pub at_ms: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteService {
    pub name: String,
    #[serde(default)]
    pub expect_revision: Option<u64>,
    pub at_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Migrations (reliability.md §2.5: the Raft commit is the point of no return)
// ---------------------------------------------------------------------------------------------

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    Preparing,
    Freezing,
    Restored,
    Committed,
    Done,
    Aborted,
}

impl MigrationPhase {
    /// Whether `self → next` is a legal step: forward one phase at a time, or abort before the
    /// commit.
    pub fn can_advance_to(self, next: MigrationPhase) -> bool {
        use MigrationPhase::*;
        matches!(
            (self, next),
            (Preparing, Freezing)
                | (Freezing, Restored)
                | (Restored, Committed)
                | (Committed, Done)
                | (Preparing | Freezing | Restored, Aborted)
        )
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationRecord {
    pub id: String,
    pub instance_id: String,
    pub source_node: String,
    pub target_node: String,
    /// The instance's epoch when the migration started; the commit makes it `epoch + 1`.
    pub epoch: u64,
    pub phase: MigrationPhase,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub revision: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartMigration {
    pub id: String,
    pub instance_id: String,
    pub source_node: String,
    pub target_node: String,
    pub expect_epoch: u64,
    pub at_ms: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdvanceMigration {
    pub id: String,
    pub instance_id: String,
    pub phase: MigrationPhase,
    pub at_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Lets an agent join as a node.
    NodeJoin,
    /// Lets a controller join the Raft group.
    ControllerJoin,
    Admin,
    ReadOnly,
    /// An agent's own credential (issued at node join): heartbeats, reports and reads of its
    /// own assignments only. The token's description holds the node id (`node:<id>`).
    Node,
}

/// A token as stored: only the hash of its secret, never the secret.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    /// Hex SHA-256 of the secret, computed by the proposer.
    pub secret_sha256: String,
    pub role: TokenRole,
    #[serde(default)]
    pub description: String,
    /// Proposer's wall clock; compared by the API layer, never inside apply.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub token: TokenInfo,
    pub revoked: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub revision: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutToken {
    pub token: TokenInfo,
    #[serde(default)]
    pub expect_revision: Option<u64>,
    pub at_ms: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokeToken {
    pub id: String,
    pub at_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Position in the ring's history, starting at 1.
    pub seq: u64,
    /// Log index of the command that produced it.
    pub revision: u64,
    pub at_ms: u64,
    pub subject: ObjectKey,
    /// Short machine-readable reason (`registered`, `owner_changed`, ...).
    pub reason: String,
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Controller cluster endpoints
// ---------------------------------------------------------------------------------------------

/// Where a controller is reached: the Raft node type stored in the membership.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerAddr {
    /// host:port of the internal Raft listener.
    pub raft_addr: String,
    /// host:port of the public API listener.
    pub api_addr: String,
}

impl fmt::Display for ControllerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Leader,
    Voter,
    Learner,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    pub id: u64,
    pub addr: ControllerAddr,
    pub role: MemberRole,
    /// Last log index the leader knows this member has (leader only).
    #[serde(default)]
    pub matched_index: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<MemberInfo>,
}

/// Ask the cluster to add a controller (as a learner, then as a voter when `voter`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddMemberRequest {
    pub id: u64,
    pub addr: ControllerAddr,
    #[serde(default = "yes")]
    pub voter: bool,
}

fn yes() -> bool {
    true
}

/// The outcome of a committed write.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteResponse {
    pub index: u64,
    pub result: CommandResult,
}
