//! `ControllerNode`: one controller replica, the handle an API layer sits on.
//!
//! It owns the openraft instance and the applied state, and answers every request on any
//! member: writes are proposed locally on the leader or forwarded to it (`PeerRequest::Write`),
//! linearizable reads use openraft's read-index on the leader (`ensure_linearizable`) or ask the
//! leader for its read index and wait until the local replica has applied it, stale reads read
//! the local replica. Membership changes are forwarded to the leader the same way.
//!
//! The transport to other controllers is a trait object (`PeerTransport`) so the same node runs
//! over HTTP (`network`) and over the in-process router of the test harness (`testing`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use flotilla_api::cluster::{
    AddMemberRequest, ClusterStatus, Command, ControllerAddr, MemberInfo, MemberRole,
    VersionedCommand, WriteResponse,
};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::network::RaftNetworkFactory;
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::batch::{BatchConfig, Batcher, Submitted};
use crate::eager;
use crate::raft::types::{NodeId, Raft, RaftMetrics, TypeConfig};
use crate::state::ClusterState;
use crate::store::{self, SmData, StoreError};

/// Raft timings. Defaults suit real processes on one machine; tests shorten them.
#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (for slow followers).
    pub keep_after_snapshot: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            snapshot_every: 10_000,
            keep_after_snapshot: 1_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// Addresses other controllers and clients use to reach this one.
    pub addr: ControllerAddr,
    /// Initialize a one-member cluster when the store is empty (the first controller). A
    /// controller that joins an existing cluster sets this to false.
    pub bootstrap: bool,
    pub timings: RaftTimings,
    /// How long a write or read may wait for a leader and its answer.
    pub request_timeout: Duration,
    /// How the leader groups concurrent writes into one entry (`batch`).
    pub batching: BatchConfig,
    /// Send new entries to followers while the leader's own fsync runs (`eager`).
    pub eager_replication: bool,
}

impl ControllerConfig {
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>, addr: ControllerAddr) -> Self {
        Self {
            id,
            data_dir: data_dir.into(),
            addr,
            bootstrap: true,
            timings: RaftTimings::default(),
            request_timeout: Duration::from_secs(5),
            batching: BatchConfig::default(),
            eager_replication: true,
        }
    }

    fn raft_config(&self) -> Result<Config, ControllerError> {
        let t = &self.timings;
        let config = Config {
            cluster_name: "flotilla".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every),
            max_in_snapshot_log_to_keep: t.keep_after_snapshot,
            // Must exceed the snapshot interval, or a snapshot may not fix a lagging follower.
            replication_lag_threshold: t.snapshot_every.saturating_mul(2),
            // A request to a dead peer must not hold replication for long.
            install_snapshot_timeout: 2_000,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| ControllerError::Config(Box::new(e)))
    }
}

/// Requests one controller sends another outside the Raft protocol. The receiver answers from
/// its own state only and never forwards again, so a request crosses at most one hop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerRequest {
    Write { command: Box<VersionedCommand> },
    ReadIndex,
    AddMember { request: AddMemberRequest },
    RemoveMember { id: NodeId },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerResponse {
    Written { response: WriteResponse },
    ReadIndex { index: u64 },
    MembershipChanged { index: u64 },
    NotLeader { leader: Option<NodeId> },
    Failed { message: String },
}

/// Why a request to another controller failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("controller {target} is unreachable")]
    Unreachable {
        target: NodeId,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("request to controller {target} timed out")]
    Timeout { target: NodeId },
    #[error("controller {target} answered with status {status}")]
    Status { target: NodeId, status: u16 },
    #[error("controller {target} sent a malformed answer")]
    Decode {
        target: NodeId,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a controller reaches the others for `PeerRequest`s.
pub trait PeerTransport: Send + Sync + 'static {
    fn send(
        &self,
        target: NodeId,
        addr: ControllerAddr,
        request: PeerRequest,
    ) -> BoxFuture<'static, Result<PeerResponse, TransportError>>;
}

/// Why a controller request failed. `Timeout` and `Forward` leave a write's outcome unknown.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("invalid raft configuration")]
    Config(#[source] Box<openraft::ConfigError>),
    #[error("cannot open the raft store")]
    Store(#[from] StoreError),
    #[error("raft stopped")]
    Fatal(#[source] Box<openraft::error::Fatal<NodeId>>),
    #[error("no leader known after {waited_ms} ms")]
    NoLeader { waited_ms: u64 },
    #[error("no answer within {timeout_ms} ms; a write may or may not have been applied")]
    Timeout { timeout_ms: u64 },
    #[error("cannot reach leader {leader}")]
    Forward {
        leader: NodeId,
        #[source]
        source: TransportError,
    },
    #[error("leader cannot reach a quorum")]
    QuorumNotEnough,
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("leader {leader} failed the request: {message}")]
    Remote { leader: NodeId, message: String },
}

impl From<openraft::error::Fatal<NodeId>> for ControllerError {
    fn from(e: openraft::error::Fatal<NodeId>) -> Self {
        ControllerError::Fatal(Box::new(e))
    }
}

enum Attempt<T> {
    Done(T),
    /// Not (or no longer) the leader: retry against this one.
    Redirect(Option<NodeId>),
}

/// One controller replica.
pub struct ControllerNode {
    id: NodeId,
    addr: ControllerAddr,
    data_dir: std::path::PathBuf,
    raft: Raft,
    /// The leader's write queue: concurrent writes share log entries.
    batcher: Batcher,
    sm: Arc<RwLock<SmData>>,
    peers: Arc<dyn PeerTransport>,
    request_timeout: Duration,
    election_max: Duration,
    /// Early appends followers accepted (`eager`).
    eager_accepted: Arc<AtomicU64>,
}

impl ControllerNode {
    /// Open the store in `config.data_dir`, start Raft and, for a bootstrap controller with an
    /// empty store, initialize a one-member cluster. A restarted controller resumes from disk.
    pub async fn start<N>(
        config: ControllerConfig,
        network: N,
        peers: Arc<dyn PeerTransport>,
    ) -> Result<Arc<Self>, ControllerError>
    where
        N: RaftNetworkFactory<TypeConfig> + Clone,
    {
        let raft_config = Arc::new(config.raft_config()?);
        let data_dir = config.data_dir.clone();
        let (log, sm) = tokio::task::spawn_blocking(move || store::open(&data_dir))
            .await
            .map_err(StoreError::from)??;
        let sm_data = sm.data();
        let log_handle = log.clone();
        let raft = Raft::new(config.id, raft_config, network.clone(), log, sm).await?;
        let eager_accepted = if config.eager_replication {
            let (tx, accepted) = eager::start(config.id, &raft, network);
            log_handle.attach_eager(config.id, tx);
            accepted
        } else {
            Arc::default()
        };
        let node = Arc::new(Self {
            id: config.id,
            addr: config.addr.clone(),
            data_dir: config.data_dir.clone(),
            batcher: Batcher::start(raft.clone(), config.batching),
            raft,
            sm: sm_data,
            peers,
            request_timeout: config.request_timeout,
            election_max: Duration::from_millis(config.timings.election_max_ms),
            eager_accepted,
        });
        if config.bootstrap && !node.raft.is_initialized().await? {
            let members = BTreeMap::from([(config.id, config.addr.clone())]);
            match node.raft.initialize(members).await {
                Ok(()) => tracing::info!(node_id = config.id, "initialized a one-member cluster"),
                Err(RaftError::APIError(e)) => {
                    tracing::info!(node_id = config.id, error = %e, "already initialized")
                }
                Err(RaftError::Fatal(e)) => return Err(e.into()),
            }
        }
        tracing::info!(node_id = config.id, addr = %config.addr, "controller started");
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn addr(&self) -> &ControllerAddr {
        &self.addr
    }

    /// Where this controller keeps its store and TLS material.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The openraft handle, for the Raft RPC server and tests.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// How many early appends (`eager`) followers have accepted from this controller.
    pub fn eager_appends_accepted(&self) -> u64 {
        self.eager_accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// Wait until some leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ControllerError> {
        let start = Instant::now();
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|_| ControllerError::NoLeader {
                waited_ms: start.elapsed().as_millis() as u64,
            })?;
        m.current_leader.ok_or(ControllerError::NoLeader {
            waited_ms: start.elapsed().as_millis() as u64,
        })
    }

    fn member_addr(&self, id: NodeId) -> Option<ControllerAddr> {
        self.metrics()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    /// Run `attempt` against the leader, following redirects, until it is done or the request
    /// timeout passes.
    async fn with_leader<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, ControllerError>
    where
        F: FnMut(Option<NodeId>) -> Fut,
        Fut: Future<Output = Result<Attempt<T>, ControllerError>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        // Borrow, not `metrics()`: cloning the whole metrics on every write is measurable.
        let mut hint = self.raft.metrics().borrow().current_leader;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ControllerError::Timeout {
                    timeout_ms: self.request_timeout.as_millis() as u64,
                });
            }
            let leader = match hint {
                Some(l) => l,
                None => self.wait_for_leader(remaining).await?,
            };
            let target = (leader != self.id).then_some(leader);
            let outcome = tokio::time::timeout(remaining, attempt(target)).await;
            match outcome {
                Err(_) => {
                    return Err(ControllerError::Timeout {
                        timeout_ms: self.request_timeout.as_millis() as u64,
                    })
                }
                Ok(Ok(Attempt::Done(v))) => return Ok(v),
                Ok(Ok(Attempt::Redirect(next))) => {
                    tracing::debug!(node_id = self.id, leader, ?next, what, "redirected");
                    // Give an election time to settle instead of spinning on a stale hint.
                    if next.is_none() || next == Some(leader) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        hint = self
                            .metrics()
                            .current_leader
                            .filter(|l| Some(*l) != Some(leader));
                        if hint.is_none() {
                            // Wait for a change of leader or term, bounded by the deadline.
                            let term = self.metrics().current_term;
                            let _ = self
                                .raft
                                .wait(Some(remaining.min(self.election_max * 2)))
                                .metrics(
                                    |m| m.current_term > term || m.current_leader.is_some(),
                                    "leader change",
                                )
                                .await;
                            hint = self.metrics().current_leader;
                        }
                    } else {
                        hint = next;
                    }
                }
                Ok(Err(ControllerError::Forward { leader, source })) => {
                    // The leader we knew is gone or cut off; wait for the next one.
                    tracing::debug!(node_id = self.id, leader, error = %source, what, "forward failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    hint = self.metrics().current_leader.filter(|l| *l != leader);
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    async fn send_to(
        &self,
        leader: NodeId,
        request: PeerRequest,
    ) -> Result<PeerResponse, ControllerError> {
        let addr = self
            .member_addr(leader)
            .ok_or(ControllerError::NoLeader { waited_ms: 0 })?;
        self.peers
            .send(leader, addr, request)
            .await
            .map_err(|source| ControllerError::Forward { leader, source })
    }

    /// Propose a command and wait until it is committed and applied; any member accepts it.
    pub async fn write(
        &self,
        command: impl Into<VersionedCommand>,
    ) -> Result<WriteResponse, ControllerError> {
        let command = command.into();
        self.with_leader("write", |target| {
            let command = command.clone();
            async move {
                match target {
                    None => self.write_local(command).await,
                    Some(leader) => {
                        match self
                            .send_to(
                                leader,
                                PeerRequest::Write {
                                    command: Box::new(command),
                                },
                            )
                            .await?
                        {
                            PeerResponse::Written { response } => Ok(Attempt::Done(response)),
                            PeerResponse::NotLeader { leader } => Ok(Attempt::Redirect(leader)),
                            PeerResponse::Failed { message } => {
                                Err(ControllerError::Remote { leader, message })
                            }
                            other => Err(ControllerError::Remote {
                                leader,
                                message: format!("unexpected answer {other:?}"),
                            }),
                        }
                    }
                }
            }
        })
        .await
    }

    /// Convenience for `write(Command)`.
    pub async fn propose(&self, command: Command) -> Result<WriteResponse, ControllerError> {
        self.write(VersionedCommand::new(command)).await
    }

    async fn write_local(
        &self,
        command: VersionedCommand,
    ) -> Result<Attempt<WriteResponse>, ControllerError> {
        match self.batcher.write(command).await {
            Submitted::Done { index, result } => Ok(Attempt::Done(WriteResponse { index, result })),
            Submitted::NotLeader(leader) => Ok(Attempt::Redirect(leader)),
            Submitted::Membership(e) => Err(ControllerError::Membership(e)),
            Submitted::Fatal(e) => Err(ControllerError::Fatal(e)),
        }
    }

    /// The leader's read index, confirmed by a quorum (read-index).
    async fn read_index_local(&self) -> Result<Attempt<u64>, ControllerError> {
        // A heartbeat round can miss its deadline on a loaded host without any fault: try the
        // round again a few times before telling the client the quorum is gone.
        let mut backoff = std::time::Duration::from_millis(50);
        for attempt in 0.. {
            match self.raft.ensure_linearizable().await {
                Ok(log_id) => return Ok(Attempt::Done(log_id.map_or(0, |l| l.index))),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    return Ok(Attempt::Redirect(f.leader_id))
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) if attempt < 3 => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    return Err(ControllerError::QuorumNotEnough)
                }
                Err(RaftError::Fatal(e)) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    /// Read the state linearizably: the result reflects every write acknowledged before the
    /// call started.
    pub async fn read_linearizable<T>(
        &self,
        f: impl FnOnce(&ClusterState) -> T,
    ) -> Result<T, ControllerError> {
        let index = self
            .with_leader("read", |target| async move {
                match target {
                    None => self.read_index_local().await,
                    Some(leader) => match self.send_to(leader, PeerRequest::ReadIndex).await? {
                        PeerResponse::ReadIndex { index } => Ok(Attempt::Done(index)),
                        PeerResponse::NotLeader { leader } => Ok(Attempt::Redirect(leader)),
                        PeerResponse::Failed { message } => {
                            Err(ControllerError::Remote { leader, message })
                        }
                        other => Err(ControllerError::Remote {
                            leader,
                            message: format!("unexpected answer {other:?}"),
                        }),
                    },
                }
            })
            .await?;
        self.raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(Some(index), "read index applied locally")
            .await
            .map_err(|_| ControllerError::Timeout {
                timeout_ms: self.request_timeout.as_millis() as u64,
            })?;
        Ok(self.read_stale(f))
    }

    /// Read this replica's applied state, which may lag the leader.
    pub fn read_stale<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        let data = self.sm.read().unwrap_or_else(PoisonError::into_inner);
        f(&data.state)
    }

    /// Read this replica's applied state together with the index it is at (one lock).
    pub fn read_stale_at<T>(&self, f: impl FnOnce(u64, &ClusterState) -> T) -> T {
        let data = self.sm.read().unwrap_or_else(PoisonError::into_inner);
        f(data.last_applied.map_or(0, |l| l.index), &data.state)
    }

    /// The last log index applied on this replica.
    pub fn applied_index(&self) -> u64 {
        let data = self.sm.read().unwrap_or_else(PoisonError::into_inner);
        data.last_applied.map_or(0, |l| l.index)
    }

    /// Add a controller: as a learner (it catches up, from a snapshot if needed), then as a
    /// voter when asked.
    pub async fn add_member(&self, request: AddMemberRequest) -> Result<u64, ControllerError> {
        self.membership(PeerRequest::AddMember { request }).await
    }

    /// Remove a controller (voter or learner) from the cluster.
    pub async fn remove_member(&self, id: NodeId) -> Result<u64, ControllerError> {
        self.membership(PeerRequest::RemoveMember { id }).await
    }

    async fn membership(&self, request: PeerRequest) -> Result<u64, ControllerError> {
        self.with_leader("membership", |target| {
            let request = request.clone();
            async move {
                match target {
                    None => self.membership_local(request).await,
                    Some(leader) => match self.send_to(leader, request).await? {
                        PeerResponse::MembershipChanged { index } => Ok(Attempt::Done(index)),
                        PeerResponse::NotLeader { leader } => Ok(Attempt::Redirect(leader)),
                        PeerResponse::Failed { message } => {
                            Err(ControllerError::Remote { leader, message })
                        }
                        other => Err(ControllerError::Remote {
                            leader,
                            message: format!("unexpected answer {other:?}"),
                        }),
                    },
                }
            }
        })
        .await
    }

    async fn membership_local(
        &self,
        request: PeerRequest,
    ) -> Result<Attempt<u64>, ControllerError> {
        let result = match request {
            PeerRequest::AddMember { request } => {
                tracing::info!(node_id = self.id, member = request.id, addr = %request.addr, "adding member");
                let res = self.raft.add_learner(request.id, request.addr, true).await;
                match res {
                    Ok(r) if !request.voter => Ok(r),
                    Ok(_) => {
                        self.raft
                            .change_membership(
                                ChangeMembers::AddVoterIds(BTreeSet::from([request.id])),
                                false,
                            )
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            PeerRequest::RemoveMember { id } => {
                tracing::info!(node_id = self.id, member = id, "removing member");
                let m = self.metrics();
                let voter = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id);
                let change = if voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.raft.change_membership(change, false).await
            }
            other => {
                return Err(ControllerError::Membership(format!(
                    "not a membership request: {other:?}"
                )))
            }
        };
        match result {
            Ok(r) => Ok(Attempt::Done(r.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(Attempt::Redirect(f.leader_id))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ControllerError::Membership(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(e.into()),
        }
    }

    /// Serve a request from another controller: answer locally, never forward.
    pub async fn handle_peer(&self, request: PeerRequest) -> PeerResponse {
        let outcome = match request {
            PeerRequest::Write { command } => self.write_local(*command).await.map(|a| match a {
                Attempt::Done(response) => PeerResponse::Written { response },
                Attempt::Redirect(leader) => PeerResponse::NotLeader { leader },
            }),
            PeerRequest::ReadIndex => self.read_index_local().await.map(|a| match a {
                Attempt::Done(index) => PeerResponse::ReadIndex { index },
                Attempt::Redirect(leader) => PeerResponse::NotLeader { leader },
            }),
            r @ (PeerRequest::AddMember { .. } | PeerRequest::RemoveMember { .. }) => {
                self.membership_local(r).await.map(|a| match a {
                    Attempt::Done(index) => PeerResponse::MembershipChanged { index },
                    Attempt::Redirect(leader) => PeerResponse::NotLeader { leader },
                })
            }
        };
        outcome.unwrap_or_else(|e| PeerResponse::Failed {
            message: error_chain(&e),
        })
    }

    /// Status of this replica and the members it knows.
    pub fn status(&self) -> ClusterStatus {
        let m = self.metrics();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        ClusterStatus {
            id: self.id,
            state: state.into(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members: Self::members_of(&m),
        }
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        Self::members_of(&self.metrics())
    }

    fn members_of(m: &RaftMetrics) -> Vec<MemberInfo> {
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let replication = m.replication.as_ref();
        membership
            .nodes()
            .map(|(id, addr)| MemberInfo {
                id: *id,
                addr: addr.clone(),
                role: if m.current_leader == Some(*id) {
                    MemberRole::Leader
                } else if voters.contains(id) {
                    MemberRole::Voter
                } else {
                    MemberRole::Learner
                },
                matched_index: replication
                    .and_then(|r| r.get(id))
                    .and_then(|l| l.as_ref())
                    .map(|l| l.index),
            })
            .collect()
    }

    /// Build a snapshot now (log compaction follows by policy).
    pub async fn trigger_snapshot(&self) -> Result<(), ControllerError> {
        Ok(self.raft.trigger().snapshot().await?)
    }

    /// Stop Raft; the store is closed when its tasks end.
    pub async fn shutdown(&self) {
        tracing::info!(node_id = self.id, "controller shutting down");
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(node_id = self.id, error = %e, "raft shutdown failed");
        }
    }
}

/// Print an error and its sources on one line: "a: b: c".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
