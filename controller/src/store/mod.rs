//! redb-backed Raft storage in two database files: `raft-log.redb` (log, vote) and
//! `raft-sm.redb` (state machine, current snapshot).
//!
//! | file  | table       | key            | value                                   |
//! |-------|-------------|----------------|-----------------------------------------|
//! | log   | `log`       | index (`u64`)  | JSON `Entry`                            |
//! | log   | `meta`      | name           | JSON `vote`, `committed`, `last_purged` |
//! | sm    | `sm_meta`   | name           | JSON `last_applied`, `membership`, `last_event_seq` |
//! | sm    | `objects`   | `kind/id`      | JSON object record                      |
//! | sm    | `events`    | seq (`u64`)    | JSON `Event`                            |
//! | sm    | `snapshot`  | `meta`, `data` | the current snapshot                    |
//!
//! Durability: log appends, truncation, purge and the vote commit with
//! `Durability::Immediate` (fsync) before openraft is told they are done; they go through one
//! writer thread that commits whatever is queued as one group (see `log`). The committed index
//! is not acknowledged and rides with a later group, at most once a second (a stale one only
//! means re-applying less before the leader reports the commit). Applies touch memory only; the `sm` tables
//! and `snapshot` are replaced together, durably, when a snapshot is built or installed, so the
//! state machine on disk is exactly the last snapshot. After a crash the state machine starts
//! there and openraft re-applies the committed entries after it (`save_committed` is
//! implemented); openraft purges the log only behind a built (durable) snapshot, so those
//! entries are always in the log.
//!
//! All state-machine redb work runs on tokio's blocking pool: a commit that fsyncs never
//! stalls a runtime worker.

mod log;
mod sm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, TableDefinition};

pub use self::log::LogStore;
pub use self::sm::{SmData, StateMachineStore};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// File names of the databases inside the data directory.
pub const LOG_FILE: &str = "raft-log.redb";
pub const SM_FILE: &str = "raft-sm.redb";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open raft database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("raft database operation failed")]
    Db(#[from] redb::Error),
    #[error("cannot encode or decode a stored record")]
    Codec(#[from] serde_json::Error),
    #[error("malformed object key {0:?} in the objects table")]
    BadObjectKey(String),
    #[error("a storage task panicked or was cancelled")]
    Join(#[from] tokio::task::JoinError),
    #[error("the raft log writer thread has stopped")]
    WriterGone,
    #[error("the raft log writer failed: {0}")]
    Write(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Open (or create) the database in `data_dir` and return the two halves openraft needs.
pub fn open(data_dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let open_db = |name: &str| {
        let path = data_dir.join(name);
        Database::create(&path).map_err(|source| StoreError::Open { path, source })
    };
    let log_db = open_db(LOG_FILE)?;
    let sm_db = open_db(SM_FILE)?;
    // Create every table so that read transactions never see a missing one.
    let txn = log_db.begin_write()?;
    {
        txn.open_table(LOG)?;
        txn.open_table(META)?;
    }
    txn.commit()?;
    let txn = sm_db.begin_write()?;
    {
        txn.open_table(SM_META)?;
        txn.open_table(OBJECTS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(SNAPSHOT)?;
    }
    txn.commit()?;
    let sm = StateMachineStore::load(Arc::new(sm_db))?;
    let db = Arc::new(log_db);
    Ok((LogStore::new(db)?, sm))
}

/// Run redb work on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

#[cfg(test)]
mod tests;
