//! Flotilla's controller: the Raft-replicated cluster state.
//!
//! * `state`: the pure, deterministic state machine (`ClusterState::apply`).
//! * `store`: redb storage for openraft (log, vote, state machine, snapshots).
//! * `batch`: the leader's group commit (concurrent writes share one log entry).
//! * `eager`: the leader sends new entries to followers while its own fsync runs.
//! * `raft`: the openraft type configuration; openraft types stay behind this crate's modules.
//! * `orchestrator`: the leader's reconcile loop (placements, rollouts, drains, status).

pub mod api;
pub mod append_stream;
pub mod auth;
pub mod batch;
pub mod eager;
pub mod linearizability;
pub mod network;
pub mod node;
pub mod orchestrator;
pub mod raft;
pub mod state;
pub mod store;
pub mod testing;
pub mod tls;
