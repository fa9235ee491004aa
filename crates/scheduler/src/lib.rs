//! Flotilla's scheduler: pure placement decisions.
//!
//! Given read-only views of the nodes and of one workload, the functions here return plans:
//! where new replicas go ([`place`]), which replicas to remove on scale down
//! ([`plan_scale`]), where the replicas of a drained node go ([`plan_drain`]), and the next
//! batch of a rolling update ([`plan_rollout`]).
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
mod drain;
mod index;
mod place;
mod reason;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
mod rollout;
mod scale;
mod types;

pub use drain::{plan_drain, Deployed, DrainPlan, Move, Stuck};
pub use index::NodeIndex;
pub use place::{free_replica_indices, place, place_replicas};
pub use reason::{Bytes, Cpu, DimensionCounts, Reason};
pub use rollout::{plan_rollout, InstanceState, RolloutInstance, RolloutPolicy, RolloutStep};
pub use scale::{choose_removals, plan_scale, ScalePlan};
pub use types::{
    AntiAffinity, LabelSelector, NodeView, Placement, PlanResult, ReplicaIndex, Resources,
    SelectorOp, Strategy, Unplaced, WorkloadView,
};
