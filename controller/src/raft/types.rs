//! The Raft type configuration and the aliases the rest of the crate uses.
//!
//! The log payload (`VersionedCommand`) and the apply result (`CommandResult`) are the `api`
//! crate's types: they are persisted and cross the API, so they follow its compatibility rule.

use std::io::Cursor;

use flotilla_api::cluster::{CommandResult, ControllerAddr, VersionedCommand};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Flotilla's openraft type configuration.
    pub TypeConfig:
        D = VersionedCommand,
        R = CommandResult,
        NodeId = NodeId,
        Node = ControllerAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, ControllerAddr>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ControllerAddr>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, ControllerAddr>;
