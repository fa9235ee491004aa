//! redb-backed Raft storage: the log, the vote and the state machine in one database file.
//!
//! Layout (all tables in `raft.redb`):
//!
//! | table       | key            | value                                   |
//! |-------------|----------------|-----------------------------------------|
//! | `log`       | index (`u64`)  | JSON `Entry`                            |
//! | `meta`      | name           | JSON `vote`, `committed`, `last_purged` |
//! | `sm_meta`   | name           | JSON `last_applied`, `membership`, `last_event_seq` |
//! | `objects`   | `kind/id`      | JSON object record                      |
//! | `events`    | seq (`u64`)    | JSON `Event`                            |
//! | `snapshot`  | `meta`, `data` | the current snapshot                    |
//!
//! Durability: log appends, truncation, purge, the vote, snapshots and snapshot installs commit
//! with `Durability::Immediate` (fsync) before openraft is told they are done. State-machine
//! applies commit with `Durability::None`: they are visible at once and become durable with the
//! next immediate commit (the next append). A crash can therefore roll the state machine back
//! to an older applied index, never past the last snapshot (a snapshot save is immediate), and
//! openraft re-applies the committed entries from the log (`save_committed` is implemented), so
//! no purged entry is ever needed again.
//!
//! All redb work runs on tokio's blocking pool: a commit that fsyncs never stalls a runtime
//! worker.

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

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "raft.redb";

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
    let path = data_dir.join(DB_FILE);
    let db = Database::create(&path).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    // Create every table so that read transactions never see a missing one.
    let txn = db.begin_write()?;
    {
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.open_table(SM_META)?;
        txn.open_table(OBJECTS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(SNAPSHOT)?;
    }
    txn.commit()?;
    let db = Arc::new(db);
    let sm = StateMachineStore::load(db.clone())?;
    Ok((LogStore::new(db), sm))
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
