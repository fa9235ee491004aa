//! Eager replication: the leader sends new entries to its followers while it is still writing
//! them to its own disk.
//!
//! openraft 0.9 runs the leader's log append inside RaftCore and starts replication only after
//! the leader's fsync, so one write waits for the leader's fsync and then the follower's, in
//! series. Raft allows the leader to write its log in parallel with replicating (Raft thesis
//! §10.2.1; etcd does it): the leader counts itself toward a quorum only once its own write is
//! durable, which openraft still does.
//!
//! When the log store queues entries that this node proposed as leader (their leader id is the
//! vote it has durably saved, committed), it hands a copy to this module, which sends them to
//! as many followers as a commit needs (`choose_targets`) as an ordinary AppendEntries request
//! of that leader: the leader's vote, the log id before the first entry (from the leader's own
//! log) and no commit index. The follower's openraft checks and appends it like any other
//! request, and its fsync overlaps the leader's. When openraft's own replication then sends the
//! same entries, the follower already holds them and answers at once without writing.
//!
//! Why this is safe: every request sent here is one the leader could have sent itself at that
//! moment. A leader never rewrites its log during its term, so entries of its term and the
//! log id before them stay what they were; a request that arrives late, twice, or after the
//! leader was deposed is rejected or ignored by the follower exactly as a delayed replication
//! request would be. Nothing here touches openraft's state on the leader: the answers are only
//! logged, and commit still needs openraft's replication to report the follower's match.
//!
//! It is best effort: a full queue, a lagging or unreachable follower, or a changed
//! membership just skip the early send, and openraft's replication carries the entries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::cluster::ControllerAddr;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::AppendEntriesRequest;
use openraft::ServerState;
use tokio::sync::{mpsc, watch};

use crate::raft::types::{Entry, LogId, NodeId, Raft, RaftMetrics, TypeConfig, Vote};

/// Entries the leader has just queued for its own log.
#[derive(Debug)]
pub struct EagerAppend {
    pub vote: Vote,
    pub prev_log_id: Option<LogId>,
    pub entries: Vec<Entry>,
}

impl EagerAppend {
    fn last_log_id(&self) -> Option<LogId> {
        self.entries.last().map(|e| e.log_id).or(self.prev_log_id)
    }
}

/// Where the log store hands entries over.
pub type EagerSender = mpsc::UnboundedSender<EagerAppend>;

/// Early sends queued per follower before more are dropped.
const PER_FOLLOWER_QUEUE: usize = 64;

/// A follower whose match trails the new entries by more than this is catching up through
/// openraft's replication; early sends would only be refused.
const MAX_LAG: u64 = 64;

/// How long one early send may take.
const SEND_TIMEOUT: Duration = Duration::from_millis(1000);

/// Whether `append` is a request this node may send as leader right now: the entries are its
/// own (proposed under the vote it has durably saved), and that vote is committed, that is,
/// granted by a quorum.
pub fn is_own_leader_append(me: NodeId, vote: &Vote, entries: &[Entry]) -> bool {
    vote.is_committed()
        && vote.leader_id().node_id == me
        && !entries.is_empty()
        && entries
            .iter()
            .all(|e| e.log_id.leader_id == *vote.leader_id())
}

/// The followers an early send goes to: as many as a commit needs besides the leader (one of
/// three voters, two of five), the most up to date first, ties by id, so the same ones are
/// chosen write after write. A follower not yet heard from, or lagging by more than `MAX_LAG`,
/// is left to openraft. The others get the entries from openraft's replication after the
/// leader's fsync: sending them early too would only put a third fsync on the critical path
/// when members share a disk, and cost CPU.
pub fn choose_targets(
    me: NodeId,
    voters: &[(NodeId, Option<u64>)],
    first_index: u64,
) -> Vec<NodeId> {
    let need = (voters.len() / 2 + 1).saturating_sub(1);
    let mut candidates: Vec<(u64, NodeId)> = voters
        .iter()
        .filter(|(id, _)| *id != me)
        .filter_map(|(id, matched)| {
            let matched = (*matched)?;
            (matched + MAX_LAG >= first_index).then_some((matched, *id))
        })
        .collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    candidates
        .into_iter()
        .take(need)
        .map(|(_, id)| id)
        .collect()
}

/// Start the fan-out task. It ends when every sender is dropped (with the log store). It
/// watches `raft`'s metrics only: holding the handle would keep Raft, and so the log store and
/// this task, alive in a cycle.
pub fn start<N>(me: NodeId, raft: &Raft, network: N) -> (EagerSender, Arc<AtomicU64>)
where
    N: RaftNetworkFactory<TypeConfig> + Clone,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicU64::new(0));
    tokio::spawn(fan_out(me, raft.metrics(), network, rx, accepted.clone()));
    (tx, accepted)
}

struct Follower {
    addr: ControllerAddr,
    tx: mpsc::Sender<Arc<EagerAppend>>,
}

async fn fan_out<N>(
    me: NodeId,
    metrics: watch::Receiver<RaftMetrics>,
    mut network: N,
    mut rx: mpsc::UnboundedReceiver<EagerAppend>,
    accepted: Arc<AtomicU64>,
) where
    N: RaftNetworkFactory<TypeConfig> + Clone,
{
    let mut followers: BTreeMap<NodeId, Follower> = BTreeMap::new();
    while let Some(append) = rx.recv().await {
        let append = Arc::new(append);
        // The voters of the current membership with their match, while this node leads.
        let voters: Vec<(NodeId, Option<ControllerAddr>, Option<u64>)> = {
            let m = metrics.borrow();
            if m.state != ServerState::Leader || m.current_leader != Some(me) {
                continue;
            }
            let membership = m.membership_config.membership();
            membership
                .voter_ids()
                .map(|id| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&id).copied().flatten())
                        .map(|l| l.index);
                    (id, membership.get_node(&id).cloned(), matched)
                })
                .collect()
        };
        let first_index = append.prev_log_id.map_or(0, |p| p.index + 1);
        let progress: Vec<(NodeId, Option<u64>)> =
            voters.iter().map(|(id, _, m)| (*id, *m)).collect();
        let targets = choose_targets(me, &progress, first_index);
        // Connections stay while the node is a voter: the target may move between followers.
        followers.retain(|id, _| voters.iter().any(|(v, _, _)| v == id));
        for (id, addr, _) in voters {
            let Some(addr) = addr.filter(|_| targets.contains(&id)) else {
                continue;
            };
            let follower = match followers.get(&id) {
                Some(f) if f.addr == addr => f,
                _ => {
                    let conn = network.new_client(id, &addr).await;
                    let (ftx, frx) = mpsc::channel(PER_FOLLOWER_QUEUE);
                    tokio::spawn(send_loop(id, conn, frx, accepted.clone()));
                    followers.insert(id, Follower { addr, tx: ftx });
                    &followers[&id]
                }
            };
            if follower.tx.try_send(append.clone()).is_err() {
                tracing::trace!(target_id = id, "eager append queue full, skipped");
            }
        }
    }
}

/// Send one follower's early appends in order, merging queued ones that follow each other.
async fn send_loop<C>(
    target: NodeId,
    mut conn: C,
    mut rx: mpsc::Receiver<Arc<EagerAppend>>,
    accepted: Arc<AtomicU64>,
) where
    C: RaftNetwork<TypeConfig>,
{
    while let Some(first) = rx.recv().await {
        let mut req = request(&first);
        let mut last = first.last_log_id();
        while let Ok(next) = rx.try_recv() {
            if next.vote == req.vote && next.prev_log_id == last {
                req.entries.extend(next.entries.iter().cloned());
            } else {
                send(
                    target,
                    &mut conn,
                    std::mem::replace(&mut req, request(&next)),
                    &accepted,
                )
                .await;
            }
            last = next.last_log_id();
        }
        send(target, &mut conn, req, &accepted).await;
    }
}

fn request(append: &EagerAppend) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: append.vote,
        prev_log_id: append.prev_log_id,
        entries: append.entries.clone(),
        // The commit index travels with openraft's own replication only.
        leader_commit: None,
    }
}

async fn send<C: RaftNetwork<TypeConfig>>(
    target: NodeId,
    conn: &mut C,
    req: AppendEntriesRequest<TypeConfig>,
    accepted: &AtomicU64,
) {
    let entries = req.entries.len();
    match conn.append_entries(req, RPCOption::new(SEND_TIMEOUT)).await {
        Ok(resp) => {
            if resp.is_success() {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            tracing::trace!(target_id = target, entries, ?resp, "eager append answered")
        }
        Err(e) => tracing::debug!(target_id = target, entries, error = %e, "eager append failed"),
    }
}

#[cfg(test)]
mod tests {
    use openraft::{EntryPayload, LeaderId};

    use super::*;

    fn entry(term: u64, node: NodeId, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(LeaderId::new(term, node), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn early_sends_go_to_as_many_followers_as_a_commit_needs() {
        // Three voters: one follower besides the leader, the most up to date.
        assert_eq!(
            choose_targets(1, &[(1, Some(9)), (2, Some(8)), (3, Some(9))], 10),
            vec![3]
        );
        // Equal progress: the lowest id, every time.
        assert_eq!(
            choose_targets(1, &[(1, None), (2, Some(9)), (3, Some(9))], 10),
            vec![2]
        );
        // Five voters: two followers.
        let five = [
            (1, Some(9)),
            (2, Some(3)),
            (3, Some(9)),
            (4, None),
            (5, Some(8)),
        ];
        assert_eq!(choose_targets(1, &five, 10), vec![3, 5]);
        // Not heard from, or too far behind: none.
        assert!(
            choose_targets(1, &[(1, None), (2, None), (3, Some(1))], 1 + MAX_LAG + 2).is_empty()
        );
        // One voter: nobody to send to.
        assert!(choose_targets(1, &[(1, Some(3))], 4).is_empty());
    }

    #[test]
    fn only_own_entries_under_a_committed_vote_are_sent_early() {
        let committed = Vote::new_committed(3, 1);
        assert!(is_own_leader_append(
            1,
            &committed,
            &[entry(3, 1, 7), entry(3, 1, 8)]
        ));
        // Not yet granted by a quorum.
        assert!(!is_own_leader_append(
            1,
            &Vote::new(3, 1),
            &[entry(3, 1, 7)]
        ));
        // Another node's vote: this node follows.
        assert!(!is_own_leader_append(2, &committed, &[entry(3, 1, 7)]));
        // Entries of an older term (replicated to this node as a follower once).
        assert!(!is_own_leader_append(1, &committed, &[entry(2, 1, 7)]));
        assert!(!is_own_leader_append(
            1,
            &committed,
            &[entry(3, 1, 7), entry(2, 1, 8)]
        ));
        assert!(!is_own_leader_append(1, &committed, &[]));
    }
}
