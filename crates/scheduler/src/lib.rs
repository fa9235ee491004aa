//! Flotilla's scheduler: pure placement decisions.
//!
//! Given read-only views of the nodes and of one workload, [`place`] decides where new
//! replicas go, or why they cannot go anywhere.
//!
//! **Architecture invariant:** the scheduler does no I/O and cannot fail. It reads no clock,
//! draws no random number and iterates no hash map where order matters: the same input gives
//! the same plan. What cannot be placed comes back as a [`Reason`] for the workload's status.
//! The controller (on the Raft leader) is to build the views from the committed state
//! ([`convert`]), check a plan against the latest state and commit it through Raft.
//!
//! [`NodeIndex`] prepares the nodes once for a batch of plans (and tracks the allocations they
//! make); the free functions build one per call. The decision rule and its cost are described
//! in `place.rs`.

pub mod convert;
mod index;
mod place;
mod reason;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
mod types;

pub use index::NodeIndex;
pub use place::{free_replica_indices, place, place_replicas};
pub use reason::{Bytes, Cpu, DimensionCounts, Reason};
pub use types::{
    AntiAffinity, LabelSelector, NodeView, Placement, PlanResult, ReplicaIndex, Resources,
    SelectorOp, Strategy, Unplaced, WorkloadView,
};
