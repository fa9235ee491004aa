//! The Raft type configuration and the aliases the rest of the crate uses.
//!
//! The log payload (`VersionedCommand`) is the `api` crate's type: it is persisted, so it
//! follows that crate's compatibility rule. The apply result (`EntryOutcome`: one
//! `CommandResult`, or one per command of a batch) only travels inside the process.

use std::io::Cursor;

use flotilla_api::cluster::{ControllerAddr, VersionedCommand};

use crate::state::EntryOutcome;

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Flotilla's openraft type configuration.
    pub TypeConfig:
        D = VersionedCommand,
        R = EntryOutcome,
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
