//! openraft's storage conformance suite against the redb store, plus restart recovery.

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::{open, LogStore, StateMachineStore};
use crate::raft::types::{StorageError, TypeConfig};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = open(dir.path()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_conformance_suite() {
    Suite::test_all(RedbBuilder).expect("storage suite");
}

mod restart {
    use flotilla_api::cluster::{
        Command, CommandResult, PutWorkload, VersionedCommand, WorkloadSpec,
    };
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};

    use super::*;
    use crate::raft::types::{Entry, LogId};

    fn entry(index: u64, name: &str) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(VersionedCommand::new(Command::PutWorkload(
                PutWorkload {
                    spec: WorkloadSpec {
                        name: name.into(),
                        image: format!("img-{index}"),
                        ..Default::default()
                    },
                    expect_revision: None,
                    at_ms: index,
                },
            ))),
        }
    }

    /// What was applied is on disk after a reopen, without replaying the log; a snapshot built
    /// on one store and installed on another gives the same state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_machine_survives_reopen_and_snapshot_transfer() {
        let dir = TempDir::new().unwrap();
        let before = {
            let (_log, mut sm) = open(dir.path()).unwrap();
            let results = sm
                .apply((1..=30).map(|i| entry(i, &format!("w{}", i % 4))))
                .await
                .unwrap();
            assert_eq!(results[29], CommandResult::Applied { revision: 30 });
            let data = sm.data();
            let guard = data.read().unwrap();
            assert_eq!(guard.state.workloads.len(), 4);
            guard.clone()
        };
        let (_log, mut sm) = open(dir.path()).unwrap();
        let after = sm.data().read().unwrap().clone();
        assert_eq!(after, before);
        assert_eq!(after.last_applied.map(|l| l.index), Some(30));

        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let dir2 = TempDir::new().unwrap();
        let (log2, mut sm2) = open(dir2.path()).unwrap();
        sm2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        drop((log2, sm2));
        let (_log2, sm2) = open(dir2.path()).unwrap();
        assert_eq!(sm2.data().read().unwrap().state, before.state);
    }

    /// The log and vote persist; purge leaves no hole and is remembered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_survives_reopen_and_purge_is_remembered() {
        let dir = TempDir::new().unwrap();
        {
            let (mut log, _sm) = open(dir.path()).unwrap();
            log.save_vote(&openraft::Vote::new(3, 1)).await.unwrap();
            log.write_entries((1..=10).map(|i| entry(i, "w")))
                .await
                .unwrap();
            log.purge(LogId::new(CommittedLeaderId::new(1, 1), 4))
                .await
                .unwrap();
        }
        let (mut log, _sm) = open(dir.path()).unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(openraft::Vote::new(3, 1))
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(10));
        let entries = log.try_get_log_entries(0..100).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (5..=10).collect::<Vec<_>>());
    }
}
