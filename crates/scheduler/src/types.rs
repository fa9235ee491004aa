//! The scheduler's inputs (read-only views of nodes and workloads) and outputs (plans).
//!
//! These are internal types: nothing here is serialized. The controller builds them from the
//! replicated cluster state (see [`crate::convert`]) and turns plans into Raft commands.

use std::collections::BTreeMap;
use std::fmt;

use crate::reason::Reason;

/// The index of one replica of a workload (`0..replicas`).
pub type ReplicaIndex = u32;

/// An amount of the two scheduled resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
    };

    pub const fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
        }
    }

    pub const fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    pub const fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    /// Whether `self` fits in `room` in both dimensions.
    pub const fn fits_in(self, room: Resources) -> bool {
        self.cpu_millis <= room.cpu_millis && self.memory_bytes <= room.memory_bytes
    }
}

/// What the scheduler knows about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Unique among the nodes given to one call; ties between equal scores go to the smallest.
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// What the instances already placed on the node (of every workload, this one's included)
    /// request. May exceed `capacity` (the scheduler then adds nothing to the node).
    pub allocated: Resources,
    /// False when cordoned.
    pub schedulable: bool,
    /// The node's lease is valid.
    pub ready: bool,
}

impl NodeView {
    /// A ready, schedulable node without labels or allocations.
    pub fn new(id: impl Into<String>, capacity: Resources) -> Self {
        Self {
            id: id.into(),
            labels: BTreeMap::new(),
            capacity,
            allocated: Resources::ZERO,
            schedulable: true,
            ready: true,
        }
    }

    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn with_allocated(mut self, allocated: Resources) -> Self {
        self.allocated = allocated;
        self
    }

    /// What is left of the capacity.
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(self.allocated)
    }
}

/// A label selector on nodes (Kubernetes semantics: `NotIn` and `DoesNotExist` match a node
/// without the label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    pub key: String,
    pub op: SelectorOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorOp {
    Equals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn equals(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            op: SelectorOp::Equals(value.into()),
        }
    }

    pub fn is_in<S: Into<String>>(
        key: impl Into<String>,
        values: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            key: key.into(),
            op: SelectorOp::In(values.into_iter().map(Into::into).collect()),
        }
    }

    pub fn not_in<S: Into<String>>(
        key: impl Into<String>,
        values: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            key: key.into(),
            op: SelectorOp::NotIn(values.into_iter().map(Into::into).collect()),
        }
    }

    pub fn exists(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            op: SelectorOp::Exists,
        }
    }

    pub fn does_not_exist(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            op: SelectorOp::DoesNotExist,
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            SelectorOp::Equals(v) => value == Some(v),
            SelectorOp::In(vs) => value.is_some_and(|x| vs.contains(x)),
            SelectorOp::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
            SelectorOp::Exists => value.is_some(),
            SelectorOp::DoesNotExist => value.is_none(),
        }
    }
}

/// Kubernetes selector syntax: `zone=b`, `zone in (a, b)`, `zone notin (a)`, `gpu`, `!gpu`.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match &self.op {
            SelectorOp::Equals(v) => write!(f, "{key}={v}"),
            SelectorOp::In(vs) => write!(f, "{key} in ({})", vs.join(", ")),
            SelectorOp::NotIn(vs) => write!(f, "{key} notin ({})", vs.join(", ")),
            SelectorOp::Exists => write!(f, "{key}"),
            SelectorOp::DoesNotExist => write!(f, "!{key}"),
        }
    }
}

/// How to choose among feasible nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// The node most allocated after the placement (cpu and memory balanced): fills nodes one
    /// after the other and keeps others empty.
    #[default]
    Binpack,
    /// The node with the fewest replicas of this workload, then the least allocated.
    Spread,
}

/// Whether replicas of one workload may share a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AntiAffinity {
    #[default]
    None,
    /// Prefer a node without a replica; stack only when no such node fits.
    Soft,
    /// Never two replicas on one node.
    Hard,
}

/// What the scheduler knows about one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadView {
    pub name: String,
    /// Requested by each replica.
    pub resources: Resources,
    pub replicas: u32,
    /// All must match (hard).
    pub constraints: Vec<LabelSelector>,
    pub strategy: Strategy,
    pub anti_affinity: AntiAffinity,
    /// A node label (for example `zone`): replicas are balanced across its values before the
    /// strategy chooses a node inside the value. Nodes without the label form one more group.
    pub spread_key: Option<String>,
}

impl WorkloadView {
    /// Binpack, no constraints, no anti-affinity, no spread key.
    pub fn new(name: impl Into<String>, resources: Resources, replicas: u32) -> Self {
        Self {
            name: name.into(),
            resources,
            replicas,
            constraints: Vec::new(),
            strategy: Strategy::Binpack,
            anti_affinity: AntiAffinity::None,
            spread_key: None,
        }
    }
}

/// One replica on one node: an existing instance, or a decision of a plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placement {
    pub replica: ReplicaIndex,
    pub node_id: String,
}

impl Placement {
    pub fn new(replica: ReplicaIndex, node_id: impl Into<String>) -> Self {
        Self {
            replica,
            node_id: node_id.into(),
        }
    }
}

/// A replica the plan could not place, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub replica: ReplicaIndex,
    pub reason: Reason,
}

/// The outcome of placing replicas: every requested replica is in exactly one of the lists, in
/// the order requested.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanResult {
    pub placements: Vec<Placement>,
    pub unplaced: Vec<Unplaced>,
}
