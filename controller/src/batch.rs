//! Group commit of client writes on the leader: concurrent writes share one log entry.
//!
//! openraft 0.9 runs each log append inside its core task and waits for the store's flush
//! before it looks at the next write, so one write per entry means one fsync per write, one
//! after the other, however many clients wait. The leader's writes therefore go through one
//! `Batcher`: while `max_in_flight` entries are being committed, new writes queue; when a slot
//! frees, everything queued (up to `max_commands`) is proposed as one `Command::Batch` entry
//! and each caller gets its own command's result. An idle leader proposes a lone write as
//! itself, so a single client sees no batching at all.
//!
//! `take_batch` is the whole grouping rule (pure, property-tested): a FIFO prefix of the queue
//! whose commands touch pairwise disjoint objects (`state::batch_refusal` refuses anything
//! else), so that no two writes of one entry give an object the same revision.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use flotilla_api::cluster::{Command, CommandBatch, CommandResult, VersionedCommand};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::raft::types::{NodeId, Raft};
use crate::state::EntryOutcome;

/// How the leader groups writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Entries proposed and not yet committed at once; writes arriving meanwhile queue.
    pub max_in_flight: usize,
    /// Most commands in one entry.
    pub max_commands: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 2,
            max_commands: 256,
        }
    }
}

/// The answer to one queued write.
#[derive(Debug, Clone)]
pub enum Submitted {
    Done {
        index: u64,
        result: CommandResult,
    },
    /// This member is not (or no longer) the leader.
    NotLeader(Option<NodeId>),
    Membership(String),
    Fatal(Box<openraft::error::Fatal<NodeId>>),
}

struct Job {
    command: VersionedCommand,
    /// The objects the command touches, computed once.
    keys: BTreeSet<flotilla_api::cluster::ObjectKey>,
    reply: oneshot::Sender<Submitted>,
}

/// Something `take_batch` can group: its touched objects, and whether it may share an entry.
pub trait Batchable {
    fn keys(&self) -> &BTreeSet<flotilla_api::cluster::ObjectKey>;
    fn shareable(&self) -> bool;
}

impl Batchable for Job {
    fn keys(&self) -> &BTreeSet<flotilla_api::cluster::ObjectKey> {
        &self.keys
    }
    fn shareable(&self) -> bool {
        shareable(&self.command)
    }
}

/// A command may share an entry when it is a plain command of this build's version.
fn shareable(c: &VersionedCommand) -> bool {
    c.v == flotilla_api::cluster::COMMAND_VERSION && !matches!(c.command, Command::Batch(_))
}

/// Take the next entry's jobs from the front of `queue`: the longest prefix (at most `max`) of
/// shareable jobs with pairwise disjoint keys, or the first job alone when it is not
/// shareable. Order is kept: a job never overtakes one queued before it. Never empty when
/// `queue` is not.
pub fn take_batch<T: Batchable>(queue: &mut VecDeque<T>, max: usize) -> Vec<T> {
    let mut batch = Vec::new();
    let mut seen = BTreeSet::new();
    while let Some(next) = queue.front() {
        if batch.len() >= max.max(1) {
            break;
        }
        if !next.shareable() {
            if batch.is_empty() {
                batch.extend(queue.pop_front());
            }
            break;
        }
        if next.keys().iter().any(|k| seen.contains(k)) {
            break;
        }
        seen.extend(next.keys().iter().cloned());
        batch.extend(queue.pop_front());
    }
    batch
}

/// The leader-side write queue of one controller.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
    raft: Raft,
    slots: Arc<Semaphore>,
    /// Jobs sent to the grouping task and not yet proposed.
    waiting: Arc<AtomicUsize>,
}

impl Batcher {
    /// Start the grouping task (it ends when the `Batcher` is dropped).
    pub fn start(raft: Raft, config: BatchConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        let waiting = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(
            raft.clone(),
            config,
            rx,
            slots.clone(),
            waiting.clone(),
        ));
        Self {
            tx,
            raft,
            slots,
            waiting,
        }
    }

    /// Propose a write (grouped with others that wait) and wait for its entry to be committed
    /// and applied.
    pub async fn write(&self, command: VersionedCommand) -> Submitted {
        let (reply, answer) = oneshot::channel();
        let keys = command.command.touched().into_iter().collect();
        let job = Job {
            command,
            keys,
            reply,
        };
        // Nobody waiting and a slot free: propose from here, without a hop through the task.
        // (A slot released while the task waits for one goes to the task first.)
        let direct = if self.waiting.load(Ordering::Acquire) == 0 {
            self.slots.clone().try_acquire_owned().ok()
        } else {
            None
        };
        if let Some(slot) = direct {
            propose(&self.raft, vec![job]).await;
            drop(slot);
        } else {
            self.waiting.fetch_add(1, Ordering::AcqRel);
            if let Err(e) = self.tx.send(job) {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                drop(e);
                return Submitted::Fatal(Box::new(openraft::error::Fatal::Stopped));
            }
        }
        answer
            .await
            .unwrap_or(Submitted::Fatal(Box::new(openraft::error::Fatal::Stopped)))
    }
}

async fn run(
    raft: Raft,
    config: BatchConfig,
    mut rx: mpsc::UnboundedReceiver<Job>,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
) {
    let mut queue = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(job) => queue.push_back(job),
                None => return,
            }
        }
        // Wait for a free slot; writes that arrive meanwhile join this entry.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        while let Ok(job) = rx.try_recv() {
            queue.push_back(job);
        }
        let jobs = take_batch(&mut queue, config.max_commands);
        waiting.fetch_sub(jobs.len(), Ordering::AcqRel);
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, jobs).await;
            drop(slot);
        });
    }
}

/// Propose `jobs` as one entry (a lone job as itself) and answer each.
async fn propose(raft: &Raft, mut jobs: Vec<Job>) {
    let entry = if jobs.len() == 1 {
        jobs[0].command.clone()
    } else {
        VersionedCommand::new(Command::Batch(CommandBatch {
            commands: jobs.iter().map(|j| j.command.command.clone()).collect(),
        }))
    };
    let answers: Vec<Submitted> = match raft.client_write(entry).await {
        Ok(resp) => {
            let index = resp.log_id.index;
            match resp.data {
                EntryOutcome::One(result) => vec![Submitted::Done { index, result }],
                EntryOutcome::Batch(results) => results
                    .into_iter()
                    .map(|result| Submitted::Done { index, result })
                    .collect(),
            }
        }
        Err(e) => {
            let answer = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    Submitted::NotLeader(f.leader_id)
                }
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                    Submitted::Membership(e.to_string())
                }
                RaftError::Fatal(e) => Submitted::Fatal(Box::new(e)),
            };
            vec![answer; jobs.len()]
        }
    };
    if answers.len() != jobs.len() {
        // An entry always yields one result per command; anything else is a bug, reported
        // to every caller rather than leaving them waiting.
        tracing::error!(
            commands = jobs.len(),
            results = answers.len(),
            "a batch entry returned the wrong number of results"
        );
        let bug = CommandResult::Rejected {
            reason: "the batch entry returned the wrong number of results".into(),
        };
        for job in jobs.drain(..) {
            let _ = job.reply.send(Submitted::Done {
                index: 0,
                result: bug.clone(),
            });
        }
        return;
    }
    for (job, answer) in jobs.into_iter().zip(answers) {
        let _ = job.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::cluster::ObjectKey;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Item {
        id: usize,
        keys: BTreeSet<ObjectKey>,
        shareable: bool,
    }

    impl Batchable for Item {
        fn keys(&self) -> &BTreeSet<ObjectKey> {
            &self.keys
        }
        fn shareable(&self) -> bool {
            self.shareable
        }
    }

    fn items() -> impl Strategy<Value = Vec<Item>> {
        prop::collection::vec(
            (
                prop::collection::btree_set(0u8..6, 0..3),
                prop::bool::weighted(0.9),
            ),
            0..40,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(id, (keys, shareable))| Item {
                    id,
                    keys: keys
                        .into_iter()
                        .map(|k| ObjectKey::Workload(format!("w{k}")))
                        .collect(),
                    shareable,
                })
                .collect()
        })
    }

    proptest! {
        /// Draining the queue batch by batch hands out every item once, in queue order; each
        /// batch is non-empty, at most `max` long, a lone item when unshareable, and its items
        /// touch pairwise disjoint keys.
        #[test]
        fn batches_keep_order_and_never_share_a_key(input in items(), max in 1usize..8) {
            let mut queue: VecDeque<Item> = input.iter().cloned().collect();
            let mut order = Vec::new();
            while !queue.is_empty() {
                let batch = take_batch(&mut queue, max);
                prop_assert!(!batch.is_empty());
                prop_assert!(batch.len() <= max);
                if batch.iter().any(|i| !i.shareable) {
                    prop_assert_eq!(batch.len(), 1);
                }
                let mut seen = BTreeSet::new();
                for i in &batch {
                    for k in &i.keys {
                        prop_assert!(seen.insert(k.clone()), "key {k} twice in a batch");
                    }
                }
                order.extend(batch.iter().map(|i| i.id));
            }
            prop_assert_eq!(order, (0..input.len()).collect::<Vec<_>>());
        }

        /// A batch ends only where it must: at `max`, before an unshareable item, or before an
        /// item whose keys meet the batch's.
        #[test]
        fn batches_are_as_long_as_allowed(input in items(), max in 1usize..8) {
            let mut queue: VecDeque<Item> = input.iter().cloned().collect();
            let batch = take_batch(&mut queue, max);
            if let Some(next) = queue.front() {
                let keys: BTreeSet<_> = batch.iter().flat_map(|i| i.keys.iter().cloned()).collect();
                let lone_unshareable = batch.len() == 1 && !batch[0].shareable;
                prop_assert!(
                    batch.len() == max
                        || lone_unshareable
                        || !next.shareable
                        || next.keys.iter().any(|k| keys.contains(k))
                );
            }
        }
    }
}
