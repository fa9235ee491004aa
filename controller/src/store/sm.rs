//! The state machine (`RaftStateMachine`) and its snapshots.
//!
//! The state lives in memory (`SmData`, shared with the controller for reads). Applying a batch
//! touches memory only: like etcd, only the log is fsynced on the write path, and the applied
//! state is rebuilt from the log after a restart. The state reaches redb (tables and the
//! current snapshot, one durable transaction) when a snapshot is built or installed, so the
//! state on disk is always exactly the current snapshot's. On open, the state machine reports
//! that snapshot's last applied id, and openraft re-applies the committed log entries after it
//! (`save_committed` is implemented); openraft purges the log only up to a snapshot that is
//! already durable, so those entries are always there.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use flotilla_api::cluster::{CommandResult, ObjectKey};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{blocking, StoreError, EVENTS, OBJECTS, SM_META, SNAPSHOT};
use crate::raft::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{ClusterState, EntryOutcome};

const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
const LAST_EVENT_SEQ: &str = "last_event_seq";
const SNAPSHOT_META: &str = "meta";
const SNAPSHOT_DATA: &str = "data";

/// Snapshot format version, independent of the release.
const SNAPSHOT_FORMAT: u16 = 1;

/// The applied state, as the controller reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub state: ClusterState,
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    format: u16,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    state: ClusterState,
}

/// The state-machine half of the store.
pub struct StateMachineStore {
    db: Arc<Database>,
    data: Arc<RwLock<SmData>>,
    snapshot_seq: Arc<AtomicU64>,
}

fn parse_key(s: &str) -> Result<ObjectKey, StoreError> {
    let bad = || StoreError::BadObjectKey(s.to_owned());
    let (kind, id) = s.split_once('/').ok_or_else(bad)?;
    let id = id.to_owned();
    Ok(match kind {
        "node" => ObjectKey::Node(id),
        "workload" => ObjectKey::Workload(id),
        "instance" => ObjectKey::Instance(id),
        "service" => ObjectKey::Service(id),
        "migration" => ObjectKey::Migration(id),
        "token" => ObjectKey::Token(id),
        _ => return Err(bad()),
    })
}

fn read_sm_meta<T: serde::de::DeserializeOwned + Default>(
    txn: &ReadTransaction,
    key: &str,
) -> Result<T, StoreError> {
    let table = txn.open_table(SM_META)?;
    let v = table.get(key)?;
    Ok(match v {
        Some(v) => serde_json::from_slice(v.value())?,
        None => T::default(),
    })
}

/// Read the whole applied state from one read transaction.
fn read_payload(txn: &ReadTransaction) -> Result<SnapshotPayload, StoreError> {
    let mut state = ClusterState::default();
    for item in txn.open_table(OBJECTS)?.iter()? {
        let (k, v) = item?;
        state.load_object(parse_key(k.value())?, v.value())?;
    }
    for item in txn.open_table(EVENTS)?.iter()? {
        let (_, v) = item?;
        state.events.push_back(serde_json::from_slice(v.value())?);
    }
    state.last_event_seq = read_sm_meta(txn, LAST_EVENT_SEQ)?;
    Ok(SnapshotPayload {
        format: SNAPSHOT_FORMAT,
        last_applied: read_sm_meta(txn, LAST_APPLIED)?,
        last_membership: read_sm_meta(txn, MEMBERSHIP)?,
        state,
    })
}

impl StateMachineStore {
    pub(super) fn load(db: Arc<Database>) -> Result<Self, StoreError> {
        let payload = read_payload(&db.begin_read()?)?;
        tracing::info!(
            applied = payload.last_applied.map(|l| l.index),
            objects = payload.state.keys().len(),
            "state machine loaded from disk"
        );
        Ok(Self {
            db,
            data: Arc::new(RwLock::new(SmData {
                last_applied: payload.last_applied,
                last_membership: payload.last_membership,
                state: payload.state,
            })),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The shared applied state (read it with `read()`; never hold the guard across an await).
    pub fn data(&self) -> Arc<RwLock<SmData>> {
        self.data.clone()
    }

    fn write_data(&self) -> RwLockWriteGuard<'_, SmData> {
        self.data.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_data(&self) -> RwLockReadGuard<'_, SmData> {
        self.data.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Apply entries to the in-memory state and return their results.
    fn apply_in_memory(&self, entries: impl Iterator<Item = Entry>) -> Vec<EntryOutcome> {
        let mut data = self.write_data();
        let mut results = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            data.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => {
                    EntryOutcome::One(CommandResult::Applied { revision: index })
                }
                EntryPayload::Normal(cmd) => data.state.apply_entry(index, &cmd),
                EntryPayload::Membership(m) => {
                    data.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    EntryOutcome::One(CommandResult::Applied { revision: index })
                }
            };
            results.push(result);
        }
        results
    }
}

fn sm_read_err(e: StoreError) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn snapshot_err(e: StoreError) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

/// Replace the whole state machine (tables and current snapshot) in one durable transaction,
/// unless the stored snapshot is already newer (a build that finished after an install).
fn install_payload(
    db: &Database,
    payload: &SnapshotPayload,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<bool, StoreError> {
    let txn = db.begin_write()?;
    {
        let stored: Option<LogId> = {
            let sm_meta = txn.open_table(SM_META)?;
            let v = sm_meta.get(LAST_APPLIED)?;
            match v {
                Some(v) => serde_json::from_slice(v.value())?,
                None => None,
            }
        };
        if stored > payload.last_applied {
            txn.abort()?;
            return Ok(false);
        }
        let mut objects = txn.open_table(OBJECTS)?;
        objects.retain(|_, _| false)?;
        for key in payload.state.keys() {
            if let Some(json) = payload.state.object_json(&key)? {
                objects.insert(key.to_string().as_str(), json.as_slice())?;
            }
        }
        let mut events = txn.open_table(EVENTS)?;
        events.retain(|_, _| false)?;
        for e in &payload.state.events {
            events.insert(e.seq, serde_json::to_vec(e)?.as_slice())?;
        }
        let mut sm_meta = txn.open_table(SM_META)?;
        sm_meta.insert(
            LAST_APPLIED,
            serde_json::to_vec(&payload.last_applied)?.as_slice(),
        )?;
        sm_meta.insert(
            MEMBERSHIP,
            serde_json::to_vec(&payload.last_membership)?.as_slice(),
        )?;
        sm_meta.insert(
            LAST_EVENT_SEQ,
            serde_json::to_vec(&payload.state.last_event_seq)?.as_slice(),
        )?;
        let mut snap = txn.open_table(SNAPSHOT)?;
        snap.insert(SNAPSHOT_META, serde_json::to_vec(meta)?.as_slice())?;
        snap.insert(SNAPSHOT_DATA, data)?;
    }
    txn.commit()?;
    Ok(true)
}

fn read_current_snapshot(db: &Database) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let (Some(meta), Some(data)) = (table.get(SNAPSHOT_META)?, table.get(SNAPSHOT_DATA)?) else {
        return Ok(None);
    };
    let meta: SnapshotMeta = serde_json::from_slice(meta.value())?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data.value().to_vec())),
    }))
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let data = self.read_data();
        Ok((data.last_applied, data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EntryOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.apply_in_memory(entries.into_iter()))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Called by openraft between applies: the copy is one consistent applied state.
        let data = self.read_data().clone();
        SnapshotBuilder {
            db: self.db.clone(),
            seq: self.snapshot_seq.clone(),
            data: Some(data),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        tracing::info!(
            index = meta.last_log_id.map(|l| l.index),
            snapshot_id = %meta.snapshot_id,
            "installing snapshot"
        );
        let bytes = snapshot.into_inner();
        let payload: SnapshotPayload = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let db = self.db.clone();
        let meta_owned = meta.clone();
        let payload = blocking(move || {
            install_payload(&db, &payload, &meta_owned, &bytes)?;
            Ok(payload)
        })
        .await
        .map_err(snapshot_err)?;
        let mut data = self.write_data();
        // The metadata is authoritative for what the snapshot covers.
        data.last_applied = meta.last_log_id;
        data.last_membership = meta.last_membership.clone();
        data.state = payload.state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_current_snapshot(&db))
            .await
            .map_err(sm_read_err)
    }
}

/// Builds a snapshot from a copy of the applied state taken between two applies, and makes it
/// (tables and snapshot) durable before openraft may purge the log behind it.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    seq: Arc<AtomicU64>,
    data: Option<SmData>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let data = self.data.take().unwrap_or_default();
        let snapshot: Snapshot<TypeConfig> = blocking(move || {
            let payload = SnapshotPayload {
                format: SNAPSHOT_FORMAT,
                last_applied: data.last_applied,
                last_membership: data.last_membership,
                state: data.state,
            };
            let bytes = serde_json::to_vec(&payload)?;
            let snapshot_id = match payload.last_applied {
                Some(l) => format!(
                    "{}-{}-{}-{seq}",
                    l.leader_id.term, l.leader_id.node_id, l.index
                ),
                None => format!("none-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: payload.last_applied,
                last_membership: payload.last_membership.clone(),
                snapshot_id,
            };
            if !install_payload(&db, &payload, &meta, &bytes)? {
                tracing::info!(
                    index = meta.last_log_id.map(|l| l.index),
                    "a newer snapshot was stored meanwhile; keeping it"
                );
            }
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            })
        })
        .await
        .map_err(snapshot_err)?;
        tracing::info!(
            index = snapshot.meta.last_log_id.map(|l| l.index),
            bytes = snapshot.snapshot.get_ref().len(),
            "snapshot built"
        );
        Ok(snapshot)
    }
}
