//! The Raft log and vote (`RaftLogStorage`), written by one writer thread with group commit.
//!
//! Every log and vote write goes, in call order, through one channel to one writer thread. The
//! thread drains whatever is queued, applies it in that order inside one redb transaction,
//! commits it with `Durability::Immediate` (one fsync for the whole group) and only then
//! reports completion: `log_io_completed` for appends, the awaited answer for the vote,
//! truncation and purge. So vote and log I/O are never reordered, and nothing is acknowledged
//! before it is on disk.
//!
//! `append` returns as soon as its entries are queued, as openraft asks, so Raft keeps
//! accepting and replicating entries while the previous group is being fsynced. Queued entries
//! are readable at once from an in-memory `pending` map that readers overlay on the table;
//! an entry leaves `pending` only after the commit that wrote it, and the newest written ones
//! stay there too (`KEEP_WRITTEN`), so replication and apply rarely decode from redb.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::{StoreError, LOG, META};
use crate::eager::{self, EagerAppend, EagerSender};
use crate::raft::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Most operations written in one transaction.
const MAX_GROUP: usize = 1024;

/// Unacknowledged metadata is written at most this often (see `writer`).
const META_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Written entries kept in memory after their commit (the newest ones).
const KEEP_WRITTEN: u64 = 256;

type Done = oneshot::Sender<Result<(), String>>;

enum Op {
    Append {
        rows: Vec<(LogId, Vec<u8>)>,
        done: AppendDone,
    },
    Truncate {
        from: u64,
        done: Done,
    },
    Purge {
        upto: LogId,
        bytes: Vec<u8>,
        done: Done,
    },
    Meta {
        key: &'static str,
        bytes: Vec<u8>,
        done: Option<Done>,
    },
    /// Write deferred metadata now; done when everything queued before it is written.
    Flush {
        done: Done,
    },
}

/// Who waits for an append: openraft's callback, or a test.
enum AppendDone {
    Raft(LogFlushed<TypeConfig>),
    #[cfg_attr(not(test), allow(dead_code))]
    Wait(Done),
}

/// An entry in memory: queued for writing, or written and kept (see `KEEP_WRITTEN`).
struct Cached {
    entry: Entry,
    written: bool,
}

type Pending = Arc<Mutex<BTreeMap<u64, Cached>>>;

/// The latest committed index not yet written (encoded).
type Committed = Arc<Mutex<Option<Vec<u8>>>>;

struct Shared {
    db: Arc<Database>,
    /// The vote as last made durable (what an early send may claim, see `eager`).
    saved_vote: Mutex<Option<Vote>>,
    /// This node's id and the eager replicator, once attached.
    eager: Mutex<Option<(NodeId, EagerSender)>>,
    /// Entries queued for writing, readable until their commit is done.
    pending: Pending,
    committed: Committed,
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Shared {
    /// Close the queue and wait for the writer: when the store is dropped, the database is
    /// closed and every queued write is done.
    fn drop(&mut self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}

/// The log half of the store. Cheap to clone: clones are the log readers replication uses.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

fn writer(db: Arc<Database>, pending: Pending, committed: Committed, rx: mpsc::Receiver<Op>) {
    // The committed index is not sent here: `save_committed` leaves its latest value in
    // `committed` (no thread wake per commit), and it is written with a group that is written
    // anyway, at most every `META_EVERY` (or when a `Flush` asks): each write of it adds a page
    // to that group's fsync, on every member.
    let take_committed = || {
        lock(&committed).take().map(|bytes| Op::Meta {
            key: COMMITTED,
            bytes,
            done: None,
        })
    };
    let mut meta_written = std::time::Instant::now();
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let flush = ops.iter().any(|op| matches!(op, Op::Flush { .. }));
        if flush || meta_written.elapsed() >= META_EVERY {
            // Saved before the ops of this group were queued; none of them writes this key.
            if let Some(op) = take_committed() {
                ops.insert(0, op);
                meta_written = std::time::Instant::now();
            }
        }
        write_and_report(&db, &pending, ops);
    }
    // Closed: a clean shutdown keeps the committed index.
    if let Some(op) = take_committed() {
        write_and_report(&db, &pending, vec![op]);
    }
}

fn write_and_report(db: &Database, pending: &Pending, group: Vec<Op>) {
    let started = std::time::Instant::now();
    let result = write_group(db, &group).map_err(|e| e.to_string());
    tracing::debug!(
        ops = group.len(),
        micros = started.elapsed().as_micros() as u64,
        "raft log group written"
    );
    if let Err(e) = &result {
        tracing::error!(error = %e, ops = group.len(), "cannot write to the raft log");
    }
    // Written: the entries are readable from the table now. The newest `KEEP_WRITTEN` stay in
    // memory as well: replication and apply read an entry right after it is written (openraft
    // replicates only after the leader's flush), and decoding it back from redb for each
    // follower and for the apply cost more than keeping it.
    if result.is_ok() {
        let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
        let mut last = None;
        for (log_id, _) in group.iter().flat_map(|op| match op {
            Op::Append { rows, .. } => rows.as_slice(),
            _ => &[],
        }) {
            last = last.max(Some(log_id.index));
            // Not if a truncation replaced it meanwhile: the new one is not written.
            if let Some(c) = pending
                .get_mut(&log_id.index)
                .filter(|c| c.entry.log_id == *log_id)
            {
                c.written = true;
            }
        }
        if let Some(last) = last {
            let keep_from = (last + 1).saturating_sub(KEEP_WRITTEN);
            while pending
                .first_key_value()
                .is_some_and(|(k, c)| *k < keep_from && c.written)
            {
                pending.pop_first();
            }
        }
    }
    for op in group {
        let r = result.clone();
        match op {
            Op::Append {
                done: AppendDone::Raft(cb),
                ..
            } => {
                cb.log_io_completed(r.map_err(std::io::Error::other));
            }
            Op::Append {
                done: AppendDone::Wait(done),
                ..
            }
            | Op::Truncate { done, .. }
            | Op::Purge { done, .. }
            | Op::Flush { done }
            | Op::Meta {
                done: Some(done), ..
            } => {
                let _ = done.send(r);
            }
            Op::Meta { done: None, .. } => {}
        }
    }
}

fn write_group(db: &Database, group: &[Op]) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for op in group {
            match op {
                Op::Append { rows, .. } => {
                    for (log_id, bytes) in rows {
                        log.insert(log_id.index, bytes.as_slice())?;
                    }
                }
                Op::Truncate { from, .. } => {
                    log.retain_in::<u64, _>(*from.., |_, _| false)?;
                }
                Op::Purge { upto, bytes, .. } => {
                    // The purge point and the removal commit together: never a hole.
                    meta.insert(LAST_PURGED, bytes.as_slice())?;
                    log.retain_in::<u64, _>(..=upto.index, |_, _| false)?;
                }
                Op::Meta { key, bytes, .. } => {
                    meta.insert(*key, bytes.as_slice())?;
                }
                Op::Flush { .. } => {}
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Whether `entries` holds every index of the bounded range `start..end`.
fn covers(entries: &BTreeMap<u64, Entry>, start: Bound<u64>, end: Bound<u64>) -> bool {
    let lo = match start {
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => return false,
    };
    let hi = match end {
        Bound::Excluded(e) => e,
        Bound::Included(e) => e.saturating_add(1),
        Bound::Unbounded => return false,
    };
    // Keys are distinct and inside the range, so the count says whether none is missing.
    hi <= lo || entries.len() as u64 == hi - lo
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let pending: Pending = Arc::default();
        let committed: Committed = Arc::default();
        let thread = {
            let (db, pending, committed) = (db.clone(), pending.clone(), committed.clone());
            std::thread::Builder::new()
                .name("raft-log-writer".into())
                .spawn(move || writer(db, pending, committed, rx))
                .expect("spawn the raft log writer thread")
        };
        let store = Self {
            shared: Arc::new(Shared {
                db,
                saved_vote: Mutex::new(None),
                eager: Mutex::new(None),
                pending,
                committed,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(thread)),
            }),
        };
        let vote = store.read_meta::<Vote>(VOTE)?;
        *lock(&store.shared.saved_vote) = vote;
        Ok(store)
    }

    /// Hand the entries this node proposes as leader to `eager` as soon as they are queued.
    pub fn attach_eager(&self, me: NodeId, tx: EagerSender) {
        *lock(&self.shared.eager) = Some((me, tx));
    }

    /// The log id at `index`, from memory, the table or the purge point.
    fn log_id_at(&self, index: u64) -> Result<Option<LogId>, StoreError> {
        if let Some(c) = lock(&self.shared.pending).get(&index) {
            return Ok(Some(c.entry.log_id));
        }
        let txn = self.shared.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        if let Some(v) = table.get(index)? {
            return Ok(Some(serde_json::from_slice::<Entry>(v.value())?.log_id));
        }
        Ok(self
            .read_meta::<LogId>(LAST_PURGED)?
            .filter(|p| p.index == index))
    }

    /// The early send of `entries` (see `eager`), if this node proposed them as leader.
    fn eager_append(&self, entries: &[Entry]) -> Option<(EagerSender, EagerAppend)> {
        let (me, tx) = lock(&self.shared.eager).clone()?;
        // Only when the writer has nothing else queued: under load, groups follow each other
        // anyway and the extra requests would only cost CPU (measured: lower throughput at 16
        // and 64 clients with every append sent early).
        if lock(&self.shared.pending)
            .last_key_value()
            .is_some_and(|(_, c)| !c.written)
        {
            return None;
        }
        let vote = (*lock(&self.shared.saved_vote))?;
        if !eager::is_own_leader_append(me, &vote, entries) {
            return None;
        }
        let first = entries.first()?.log_id.index;
        let prev_log_id = match first.checked_sub(1) {
            None => None,
            // Not found: nothing to send that a follower could check; leave it to openraft.
            Some(i) => Some(self.log_id_at(i).ok().flatten()?),
        };
        Some((
            tx,
            EagerAppend {
                vote,
                prev_log_id,
                entries: entries.to_vec(),
            },
        ))
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.shared
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .send(op)
            .map_err(|_| StoreError::WriterGone)
    }

    async fn send_and_wait(&self, make: impl FnOnce(Done) -> Op) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(make(done))?;
        wait.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::Write)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.shared.db.begin_read()?;
        let table = txn.open_table(META)?;
        let value = table.get(key)?;
        Ok(match value {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    fn pending_range(&self, start: Bound<u64>, end: Bound<u64>) -> BTreeMap<u64, Entry> {
        let pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending
            .range((start, end))
            .map(|(k, c)| (*k, c.entry.clone()))
            .collect()
    }

    fn read_entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, StoreError> {
        // Pending first, then the table: an entry written in between is in the second.
        let mut entries = self.pending_range(start, end);
        if covers(&entries, start, end) {
            return Ok(entries.into_values().collect());
        }
        let txn = self.shared.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        for item in table.range::<u64>((start, end))? {
            let (k, v) = item?;
            if let std::collections::btree_map::Entry::Vacant(slot) = entries.entry(k.value()) {
                slot.insert(serde_json::from_slice(v.value())?);
            }
        }
        Ok(entries.into_values().collect())
    }

    /// Append entries and wait until they are durable (tests).
    #[cfg(test)]
    pub(crate) async fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(), StoreError> {
        let rows = self.queue(entries)?;
        self.send_and_wait(|done| Op::Append {
            rows,
            done: AppendDone::Wait(done),
        })
        .await
    }

    /// Serialize entries and make them readable as pending.
    fn queue(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Vec<(LogId, Vec<u8>)>, StoreError> {
        let mut rows = Vec::new();
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for entry in entries {
            rows.push((entry.log_id, serde_json::to_vec(&entry)?));
            pending.insert(
                entry.log_id.index,
                Cached {
                    entry,
                    written: false,
                },
            );
        }
        Ok(rows)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let pending_last = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_key_value()
            .map(|(_, c)| c.entry.log_id);
        let last_purged: Option<LogId> = self.read_meta(LAST_PURGED)?;
        let txn = self.shared.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let stored_last = match table.last()? {
            Some((_, v)) => Some(serde_json::from_slice::<Entry>(v.value())?.log_id),
            None => None,
        };
        let last = pending_last.max(stored_last);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_err(e: StoreError) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: StoreError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(range.start_bound().cloned(), range.end_bound().cloned())
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.log_state().map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        tracing::debug!(term = vote.leader_id.term, "saving vote");
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.send_and_wait(|done| Op::Meta {
            key: VOTE,
            bytes,
            done: Some(done),
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        *lock(&self.shared.saved_vote) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not awaited and not fsynced on its own: losing it only means re-applying less on
        // restart; a later group writes it (at most once a second, see `writer`).
        let bytes = serde_json::to_vec(&committed).map_err(|e| write_err(e.into()))?;
        *lock(&self.shared.committed) = Some(bytes);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        // Write the deferred value and wait, so a just-saved value is seen.
        self.send_and_wait(|done| Op::Flush { done })
            .await
            .map_err(read_err)?;
        Ok(self
            .read_meta::<Option<LogId>>(COMMITTED)
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Before queueing, so the prev log id is looked up among entries already queued.
        let early = self.eager_append(&entries);
        let rows = self.queue(entries).map_err(write_err)?;
        if let Some((tx, append)) = early {
            // The fan-out task is gone only at shutdown.
            let _ = tx.send(append);
        }
        // The writer calls back once the group holding these rows is committed.
        self.send(Op::Append {
            rows,
            done: AppendDone::Raft(callback),
        })
        .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(index = log_id.index, "truncating raft log");
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| *k < log_id.index);
        self.send_and_wait(|done| Op::Truncate {
            from: log_id.index,
            done,
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(index = log_id.index, "purging raft log");
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| *k > log_id.index);
        let bytes = serde_json::to_vec(&log_id).map_err(|e| write_err(e.into()))?;
        self.send_and_wait(|done| Op::Purge {
            upto: log_id,
            bytes,
            done,
        })
        .await
        .map_err(write_err)
    }
}
