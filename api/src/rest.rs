//! Wire types of the controller's REST API (`/v1`) that are not Raft state: request bodies,
//! list envelopes, cluster views, tokens, joins, watch events and the problem document.
//!
//! Request bodies refuse unknown fields (`deny_unknown_fields`) at every level, so they are
//! separate from the Raft types in `cluster`, which must stay lenient for log replay across
//! upgrades. `into_spec` converts a request into the Raft type once the API layer has
//! validated it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::{
    Capacity, ConstraintOp, ControllerAddr, Event, ExitReason, InstanceRecord, LabelConstraint,
    MemberRole, MigrationPolicy, MigrationRecord, NodeRecord, ObservedState, Placement,
    PlacementStrategy, PortSpec, Probe, ProbeAction, Protocol, RestartPolicy, ServicePort,
    ServiceRecord, ServiceSpec, TokenRole, UpdateStrategy, WorkloadRecord, WorkloadResources,
    WorkloadSpec,
};

/// Content type of every error response (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Header carrying the applied Raft index a read was served at (for blocking queries).
pub const INDEX_HEADER: &str = "x-flotilla-index";

// ---------------------------------------------------------------------------------------------
// Problem details (RFC 9457)
// ---------------------------------------------------------------------------------------------

/// An error response. `field` names the request element that is wrong: a JSON path into the
/// body (`ports[1].containerPort`), a query parameter, a path parameter or a header.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// `urn:flotilla:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Stable machine-readable code (`invalid-field`, `revision-mismatch`, ...).
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The object's current revision, on a refused conditional request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

/// Body of `PUT /v1/workloads/{name}`. `name`, when given, must equal the path's.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadWrite {
    #[serde(default)]
    pub name: Option<String>,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: ResourcesWrite,
    #[serde(default)]
    pub replicas: u32,
    #[serde(default)]
    pub ports: Vec<PortWrite>,
    #[serde(default)]
    pub placement: PlacementWrite,
    #[serde(default)]
    pub migration_policy: MigrationPolicy,
    #[serde(default)]
    pub update_strategy: Option<UpdateStrategyWrite>,
    #[serde(default)]
    pub liveness: Option<ProbeWrite>,
    #[serde(default)]
    pub readiness: Option<ProbeWrite>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Grace period between SIGTERM and SIGKILL on stop (default 10 s).
    #[serde(default)]
    pub stop_grace_ms: Option<u64>,
}

/// A health check: exactly one of `exec`, `tcp`, `http`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProbeWrite {
    #[serde(default)]
    pub exec: Option<ExecProbeWrite>,
    #[serde(default)]
    pub tcp: Option<TcpProbeWrite>,
    #[serde(default)]
    pub http: Option<HttpProbeWrite>,
    #[serde(default)]
    pub initial_delay_ms: Option<u64>,
    #[serde(default)]
    pub period_ms: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    #[serde(default)]
    pub success_threshold: Option<u32>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecProbeWrite {
    pub command: Vec<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpProbeWrite {
    pub port: u16,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbeWrite {
    pub port: u16,
    #[serde(default = "default_http_path")]
    pub path: String,
}

fn default_http_path() -> String {
    "/".to_owned()
}

impl ProbeWrite {
    /// The Raft probe; `None` unless exactly one action is set (the API layer refuses that
    /// first, naming the field).
    pub fn into_probe(self) -> Option<Probe> {
        let action = match (self.exec, self.tcp, self.http) {
            (Some(e), None, None) => ProbeAction::Exec { command: e.command },
            (None, Some(t), None) => ProbeAction::Tcp { port: t.port },
            (None, None, Some(h)) => ProbeAction::Http {
                port: h.port,
                path: h.path,
            },
            _ => return None,
        };
        let d = Probe {
            action,
            initial_delay_ms: 0,
            period_ms: 10_000,
            timeout_ms: 1_000,
            failure_threshold: 3,
            success_threshold: 1,
        };
        Some(Probe {
            initial_delay_ms: self.initial_delay_ms.unwrap_or(d.initial_delay_ms),
            period_ms: self.period_ms.unwrap_or(d.period_ms),
            timeout_ms: self.timeout_ms.unwrap_or(d.timeout_ms),
            failure_threshold: self.failure_threshold.unwrap_or(d.failure_threshold),
            success_threshold: self.success_threshold.unwrap_or(d.success_threshold),
            ..d
        })
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourcesWrite {
    #[serde(default)]
    pub cpu_millis: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortWrite {
    pub name: String,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlacementWrite {
    #[serde(default)]
    pub constraints: Vec<ConstraintWrite>,
    #[serde(default)]
    pub strategy: PlacementStrategy,
    #[serde(default)]
    pub anti_affinity: bool,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConstraintWrite {
    pub key: String,
    pub op: ConstraintOp,
    #[serde(default)]
    pub values: Vec<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateStrategyWrite {
    pub max_unavailable: u32,
    pub max_surge: u32,
}

impl WorkloadWrite {
    /// The Raft spec for workload `name` (validated by the API layer first).
    pub fn into_spec(self, name: String) -> WorkloadSpec {
        WorkloadSpec {
            name,
            image: self.image,
            command: self.command,
            env: self.env,
            resources: WorkloadResources {
                cpu_millis: self.resources.cpu_millis,
                memory_bytes: self.resources.memory_bytes,
            },
            replicas: self.replicas,
            ports: self
                .ports
                .into_iter()
                .map(|p| PortSpec {
                    name: p.name,
                    container_port: p.container_port,
                    protocol: p.protocol,
                })
                .collect(),
            placement: Placement {
                constraints: self
                    .placement
                    .constraints
                    .into_iter()
                    .map(|c| LabelConstraint {
                        key: c.key,
                        op: c.op,
                        values: c.values,
                    })
                    .collect(),
                strategy: self.placement.strategy,
                anti_affinity: self.placement.anti_affinity,
            },
            migration_policy: self.migration_policy,
            update_strategy: self
                .update_strategy
                .map(|u| UpdateStrategy {
                    max_unavailable: u.max_unavailable,
                    max_surge: u.max_surge,
                })
                .unwrap_or_default(),
            liveness: self.liveness.and_then(ProbeWrite::into_probe),
            readiness: self.readiness.and_then(ProbeWrite::into_probe),
            restart_policy: self.restart_policy,
            stop_grace_ms: self
                .stop_grace_ms
                .unwrap_or(WorkloadSpec::default().stop_grace_ms),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Services and nodes
// ---------------------------------------------------------------------------------------------

/// Body of `PUT /v1/services/{name}`. `name`, when given, must equal the path's.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceWrite {
    #[serde(default)]
    pub name: Option<String>,
    /// The workload whose instances back the service.
    pub workload: String,
    #[serde(default)]
    pub ports: Vec<ServicePortWrite>,
    /// Virtual IP (IPv4 or IPv6); allocated later when absent.
    #[serde(default)]
    pub vip: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePortWrite {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl ServiceWrite {
    pub fn into_spec(self, name: String) -> ServiceSpec {
        ServiceSpec {
            name,
            workload: self.workload,
            ports: self
                .ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    port: p.port,
                    target_port: p.target_port,
                    protocol: p.protocol,
                })
                .collect(),
            vip: self.vip,
        }
    }
}

/// Body of `PATCH /v1/nodes/{id}`: the operator-writable fields of a node; absent fields stay.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodePatch {
    /// False cordons the node.
    #[serde(default)]
    pub schedulable: Option<bool>,
    /// Replaces all labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Body of `POST /v1/workloads/{name}/scale`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScaleRequest {
    pub replicas: u32,
}

// ---------------------------------------------------------------------------------------------
// List envelopes: `index` is the applied Raft index the list was read at
// ---------------------------------------------------------------------------------------------

macro_rules! list {
    ($name:ident, $item:ty) => {
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            pub index: u64,
            pub items: Vec<$item>,
        }
    };
}

list!(WorkloadList, WorkloadRecord);
list!(ServiceList, ServiceRecord);
list!(NodeList, NodeRecord);
list!(InstanceList, InstanceRecord);
list!(MigrationList, MigrationRecord);
list!(EventList, Event);
list!(TokenList, TokenView);

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// One controller as `GET /v1/cluster/members` shows it. Health and lag are known to the
/// leader only; other members answer `null` (ask the leader, named in the response).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
    pub role: MemberRole,
    /// True for the leader and the other voters.
    pub voter: bool,
    #[serde(default)]
    pub matched_index: Option<u64>,
    /// Entries the member is behind the leader's log.
    #[serde(default)]
    pub lag: Option<u64>,
    /// Replicating and at most `HEALTHY_LAG` entries behind (leader's view).
    #[serde(default)]
    pub healthy: Option<bool>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembersResponse {
    /// The controller that answered.
    pub served_by: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<MemberStatus>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderResponse {
    pub served_by: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub addr: Option<ControllerAddr>,
}

/// Raft metrics of the controller that answered.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RaftMetricsView {
    pub id: u64,
    pub state: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Leader only: time since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Leader only: member id → last log index known replicated there.
    pub replication: Option<BTreeMap<String, Option<u64>>>,
}

/// The log index of a committed membership change.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipChanged {
    pub index: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotTriggered {
    /// The applied index when the snapshot was requested; the snapshot covers at least it.
    pub applied_index: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub id: u64,
    /// `ok` or `not_ready`.
    pub status: String,
    pub leader: Option<u64>,
    pub applied_index: u64,
}

// ---------------------------------------------------------------------------------------------
// Tokens and joins
// ---------------------------------------------------------------------------------------------

/// Body of `POST /v1/tokens`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenCreate {
    pub role: TokenRole,
    /// Lifetime; join tokens default to 1 h and live at most 24 h.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A new token: `token` (`<id>.<secret>`) is shown once and never stored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub id: String,
    pub token: String,
    pub role: TokenRole,
    pub expires_at_ms: Option<u64>,
    /// `sha256:<hex>` of the cluster CA certificate (DER), for pinning when joining.
    pub ca_cert_hash: Option<String>,
    pub revision: u64,
}

/// A stored token without its hash.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub id: String,
    pub role: TokenRole,
    pub description: String,
    pub expires_at_ms: Option<u64>,
    pub revoked: bool,
    pub created_at_ms: u64,
    pub revision: u64,
}

/// Body of `POST /v1/cluster/join`: a new controller asks for its certificate with a join
/// token (role `controller_join`, single use) and a PKCS#10 CSR.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JoinRequest {
    pub token: String,
    /// The joining controller's Raft id.
    pub id: u64,
    pub addr: ControllerAddr,
    /// PEM-encoded certificate signing request.
    pub csr: String,
}

/// The answer to a join: the signed certificate, the CA (and its key, so that every
/// controller can admit the next one) and the members to ask for admission over mTLS.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub certificate: String,
    pub ca_certificate: String,
    pub ca_key: String,
    pub leader: Option<u64>,
    pub members: Vec<MemberStatus>,
}

// ---------------------------------------------------------------------------------------------
// Agents (nodes): join, heartbeat, status reports. See docs/cluster-protocol.md.
// ---------------------------------------------------------------------------------------------

/// Body of `POST /v1/nodes/join` (public path; the token is in the body): an agent asks for
/// its node identity with a join token (role `node_join`, single use) and a PKCS#10 CSR.
/// The agent pins the controller's CA by hash before sending it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeJoinRequest {
    pub token: String,
    /// The node's name: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`, unique in the cluster.
    pub node_id: String,
    /// `host:port` of the agent's TLS API (logs, exec), reachable from the controllers.
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
    #[serde(default)]
    pub features: BTreeMap<String, String>,
    /// PEM CSR; the certificate is issued with CN `node-<nodeId>` and the node's IP as SAN.
    pub csr: String,
}

/// The answer to a node join. `apiToken` (role `node`) authenticates every later call of
/// this agent; it is shown only here and the agent keeps it in its data directory.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeJoinResponse {
    pub node_id: String,
    pub certificate: String,
    pub ca_certificate: String,
    pub api_token: String,
    /// API endpoints of every controller (`https://host:port`), for failover of the agent.
    pub controllers: Vec<String>,
    pub heartbeat_interval_ms: u64,
    pub lease_ttl_ms: u64,
}

/// Body of `POST /v1/nodes/{id}/heartbeat` (node token of that node): renews the lease and
/// refreshes what changed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeHeartbeatRequest {
    /// Strictly increasing per agent process start (with `bootId`); a replayed or reordered
    /// heartbeat is refused.
    pub seq: u64,
    /// Random per agent start, so a restarted agent's seq may begin again at 1.
    #[serde(default)]
    pub boot_id: String,
    #[serde(default)]
    pub capacity: Option<Capacity>,
    #[serde(default)]
    pub features: Option<BTreeMap<String, String>>,
    /// Instances the agent runs right now (ids), for the controller's view of the node.
    #[serde(default)]
    pub running: Vec<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHeartbeatResponse {
    pub revision: u64,
    pub heartbeat_interval_ms: u64,
    pub lease_ttl_ms: u64,
}

/// Body of `PUT /v1/instances/{id}/status` (node token of the owner): the agent's
/// observation. Refused with 409 `stale-epoch` unless `epoch` is the instance's current one
/// and the caller owns it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstanceStatusReport {
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
}

// ---------------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------------

/// What a watch event reports.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchEventType {
    /// The object was created or changed; `object` is its new state.
    Put,
    /// The object is gone.
    Delete,
    /// A cluster event was recorded; `object` is the event.
    Event,
}

/// The data of one server-sent event of `/v1/watch`; its SSE id is `revision`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub type_: WatchEventType,
    /// `node`, `workload`, `instance`, `service`, `migration` or `event`.
    pub kind: String,
    pub key: String,
    pub revision: u64,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub object: Option<serde_json::Value>,
}

/// The answer to a delete: the revision (log index) of the deletion.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    pub revision: u64,
}
