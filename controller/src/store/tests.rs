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

    /// Applying touches memory only: after a reopen the state machine is at its last snapshot
    /// (durable tables), and re-applying the log entries after it gives exactly the state
    /// before the reopen. A snapshot built on one store and installed on another gives the
    /// same state, also after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_machine_reopens_at_its_snapshot_and_replays_to_the_same_state() {
        let dir = TempDir::new().unwrap();
        let entries =
            |range: std::ops::RangeInclusive<u64>| range.map(|i| entry(i, &format!("w{}", i % 4)));
        let (before, snap_index) = {
            let (_log, mut sm) = open(dir.path()).unwrap();
            let results = sm.apply(entries(1..=20)).await.unwrap();
            assert_eq!(
                results[19],
                crate::state::EntryOutcome::One(CommandResult::Applied { revision: 20 })
            );
            let snap = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            sm.apply(entries(21..=30)).await.unwrap();
            let data = sm.data();
            let guard = data.read().unwrap();
            assert_eq!(guard.state.workloads.len(), 4);
            assert_eq!(guard.last_applied.map(|l| l.index), Some(30));
            (guard.clone(), snap.meta.last_log_id)
        };
        assert_eq!(snap_index.map(|l| l.index), Some(20));

        // Reopen (as after kill -9): the state is the snapshot's, not the applied one.
        let (_log, mut sm) = open(dir.path()).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, snap_index);
        assert_ne!(sm.data().read().unwrap().state, before.state);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, snap_index);
        // What openraft does on start-up: re-apply the committed entries after it.
        sm.apply(entries(21..=30)).await.unwrap();
        let after = sm.data().read().unwrap().clone();
        assert_eq!(after, before);

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
        assert_eq!(sm2.data().read().unwrap().state, before.state);
        drop((log2, sm2));
        let (_log2, mut sm2) = open(dir2.path()).unwrap();
        assert_eq!(sm2.data().read().unwrap().state, before.state);
        assert_eq!(
            sm2.applied_state().await.unwrap().0.map(|l| l.index),
            Some(30)
        );
    }

    /// A snapshot build that finishes after a newer one was stored does not replace it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = TempDir::new().unwrap();
        let (log, mut sm) = open(dir.path()).unwrap();
        sm.apply((1..=5).map(|i| entry(i, "w"))).await.unwrap();
        let mut old_builder = sm.get_snapshot_builder().await;
        sm.apply((6..=9).map(|i| entry(i, "w"))).await.unwrap();
        let new = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let old = old_builder.build_snapshot().await.unwrap();
        assert_eq!(old.meta.last_log_id.map(|l| l.index), Some(5));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, new.meta.last_log_id);
        drop((log, sm, old_builder));
        let (_log, mut sm) = open(dir.path()).unwrap();
        assert_eq!(
            sm.applied_state().await.unwrap().0.map(|l| l.index),
            Some(9)
        );
    }

    /// The committed index is written with the next log write, not on its own, and survives
    /// a clean close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_index_rides_with_the_next_write_and_survives_close() {
        let dir = TempDir::new().unwrap();
        let c = |i| Some(LogId::new(CommittedLeaderId::new(1, 1), i));
        {
            let (mut log, _sm) = open(dir.path()).unwrap();
            log.write_entries((1..=3).map(|i| entry(i, "w")))
                .await
                .unwrap();
            log.save_committed(c(2)).await.unwrap();
            assert_eq!(log.read_committed().await.unwrap(), c(2));
            log.save_committed(c(3)).await.unwrap();
        }
        let (mut log, _sm) = open(dir.path()).unwrap();
        assert_eq!(log.read_committed().await.unwrap(), c(3));
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
