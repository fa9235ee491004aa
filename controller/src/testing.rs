//! In-process test harness: N controllers in one process, connected by a `Router` that
//! implements the same network traits as HTTP, with composable fault filters per directed pair
//! (tikv's `Filter` idea): drop, delay, partition, isolate.
//!
//! Only test code uses this module; it is compiled into the library so integration tests and
//! benchmarks can share it.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flotilla_api::cluster::{AddMemberRequest, ControllerAddr};
use openraft::error::{
    Fatal, InstallSnapshotError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};

use crate::node::{
    BoxFuture, ControllerConfig, ControllerError, ControllerNode, PeerRequest, PeerResponse,
    PeerTransport, RaftTimings, TransportError,
};
use crate::orchestrator::{Orchestrator, OrchestratorConfig};
use crate::raft::types::{NodeId, Snapshot, TypeConfig, Vote};
use crate::state::ClusterState;

/// What kind of message is crossing a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    Append,
    Vote,
    Snapshot,
    Peer,
}

/// What happens to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    Delay(Duration),
}

/// A fault on the links between controllers.
pub trait Filter: Send + Sync + std::fmt::Debug {
    fn verdict(&self, from: NodeId, to: NodeId, kind: RpcKind) -> Verdict;
}

/// Drop everything between group `a` and group `b`, both ways.
#[derive(Debug, Clone)]
pub struct Partition {
    pub a: Vec<NodeId>,
    pub b: Vec<NodeId>,
}

impl Filter for Partition {
    fn verdict(&self, from: NodeId, to: NodeId, _: RpcKind) -> Verdict {
        let crosses = (self.a.contains(&from) && self.b.contains(&to))
            || (self.b.contains(&from) && self.a.contains(&to));
        if crosses {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    }
}

/// Cut one controller off from all others.
#[derive(Debug, Clone)]
pub struct Isolate(pub NodeId);

impl Filter for Isolate {
    fn verdict(&self, from: NodeId, to: NodeId, _: RpcKind) -> Verdict {
        if from == self.0 || to == self.0 {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    }
}

/// Drop messages on one directed link.
#[derive(Debug, Clone)]
pub struct DropLink {
    pub from: NodeId,
    pub to: NodeId,
}

impl Filter for DropLink {
    fn verdict(&self, from: NodeId, to: NodeId, _: RpcKind) -> Verdict {
        if from == self.from && to == self.to {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    }
}

/// Delay messages on one directed link (`None`: every link).
#[derive(Debug, Clone)]
pub struct DelayLink {
    pub from: Option<NodeId>,
    pub to: Option<NodeId>,
    pub delay: Duration,
}

impl Filter for DelayLink {
    fn verdict(&self, from: NodeId, to: NodeId, _: RpcKind) -> Verdict {
        if self.from.is_none_or(|f| f == from) && self.to.is_none_or(|t| t == to) {
            Verdict::Delay(self.delay)
        } else {
            Verdict::Pass
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("link {from} -> {to} is cut or the target is down")]
pub struct LinkDown {
    from: NodeId,
    to: NodeId,
}

/// The in-process network: live controllers by id, and the active filters.
#[derive(Default)]
pub struct Router {
    nodes: Mutex<BTreeMap<NodeId, Arc<ControllerNode>>>,
    filters: Mutex<Vec<Arc<dyn Filter>>>,
}

impl Router {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn add_filter(&self, f: impl Filter + 'static) {
        tracing::info!(filter = ?f, "fault on");
        self.filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(f));
    }

    /// Remove every filter.
    pub fn heal(&self) {
        tracing::info!("faults healed");
        self.filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn register(&self, node: Arc<ControllerNode>) {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.id(), node);
    }

    fn unregister(&self, id: NodeId) -> Option<Arc<ControllerNode>> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }

    pub fn node(&self, id: NodeId) -> Option<Arc<ControllerNode>> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    pub fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// Apply the filters to one message; `Err` when it is dropped or the target is down.
    async fn pass(
        &self,
        from: NodeId,
        to: NodeId,
        kind: RpcKind,
    ) -> Result<Arc<ControllerNode>, LinkDown> {
        let filters: Vec<_> = self
            .filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut delay = Duration::ZERO;
        for f in &filters {
            match f.verdict(from, to, kind) {
                Verdict::Pass => {}
                Verdict::Drop => return Err(LinkDown { from, to }),
                Verdict::Delay(d) => delay += d,
            }
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.node(to).ok_or(LinkDown { from, to })
    }
}

/// One controller's view of the router (the source of its messages).
#[derive(Clone)]
pub struct RouterNetwork {
    router: Arc<Router>,
    from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for RouterNetwork {
    type Network = RouterConnection;

    async fn new_client(&mut self, target: NodeId, _node: &ControllerAddr) -> RouterConnection {
        RouterConnection {
            net: self.clone(),
            to: target,
        }
    }
}

pub struct RouterConnection {
    net: RouterNetwork,
    to: NodeId,
}

type RpcResult<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, ControllerAddr, E>>;

impl RouterConnection {
    async fn target(&self, kind: RpcKind) -> Result<Arc<ControllerNode>, Unreachable> {
        self.net
            .router
            .pass(self.net.from, self.to, kind)
            .await
            .map_err(|e| Unreachable::new(&e))
    }
}

// The error type is openraft's, fixed by the `RaftNetwork` trait.
#[allow(clippy::result_large_err)]
fn remote<T, E: std::error::Error>(
    to: NodeId,
    r: Result<T, E>,
) -> Result<T, RPCError<NodeId, ControllerAddr, E>> {
    r.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
}

impl RaftNetwork<TypeConfig> for RouterConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let node = self.target(RpcKind::Append).await?;
        remote(self.to, node.raft().append_entries(rpc).await)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let node = self.target(RpcKind::Vote).await?;
        remote(self.to, node.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let node = self.target(RpcKind::Snapshot).await?;
        remote(self.to, node.raft().install_snapshot(rpc).await)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let node = self.target(RpcKind::Snapshot).await?;
        // Copy the bytes as a real transfer would.
        let copy = Snapshot {
            meta: snapshot.meta.clone(),
            snapshot: Box::new(Cursor::new(snapshot.snapshot.get_ref().clone())),
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = node.raft().install_full_snapshot(vote, copy) => {
                r.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.to, e)))
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(50)))
    }
}

impl PeerTransport for RouterNetwork {
    fn send(
        &self,
        target: NodeId,
        _addr: ControllerAddr,
        request: PeerRequest,
    ) -> BoxFuture<'static, Result<PeerResponse, TransportError>> {
        let net = self.clone();
        Box::pin(async move {
            let node = net
                .router
                .pass(net.from, target, RpcKind::Peer)
                .await
                .map_err(|e| TransportError::Unreachable {
                    target,
                    source: Box::new(e),
                })?;
            Ok(node.handle_peer(request).await)
        })
    }
}

/// Raft timings for in-process tests: fast, with margin for a loaded 2-core machine.
pub fn test_timings() -> RaftTimings {
    RaftTimings {
        heartbeat_ms: 50,
        election_min_ms: 300,
        election_max_ms: 600,
        snapshot_every: 500,
        keep_after_snapshot: 50,
    }
}

/// A set of in-process controllers with data directories under `base`.
pub struct TestCluster {
    pub router: Arc<Router>,
    base: PathBuf,
    pub timings: RaftTimings,
    pub request_timeout: Duration,
    /// Run the reconcile loop on every controller started (off by default: tests of the
    /// Raft layer and the API want no writes of their own in the log).
    pub orchestrator: Option<OrchestratorConfig>,
    orchestrators: Mutex<BTreeMap<NodeId, Orchestrator>>,
}

pub fn addr_of(id: NodeId) -> ControllerAddr {
    ControllerAddr {
        raft_addr: format!("in-process-{id}"),
        api_addr: format!("in-process-{id}"),
    }
}

impl TestCluster {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self {
            router: Router::new(),
            base: base.into(),
            timings: test_timings(),
            request_timeout: Duration::from_secs(5),
            orchestrator: None,
            orchestrators: Mutex::new(BTreeMap::new()),
        }
    }

    /// Start (or restart from its data directory) controller `id`.
    pub async fn start(
        &self,
        id: NodeId,
        bootstrap: bool,
    ) -> Result<Arc<ControllerNode>, ControllerError> {
        let mut config = ControllerConfig::new(id, self.base.join(format!("c{id}")), addr_of(id));
        config.bootstrap = bootstrap;
        config.timings = self.timings.clone();
        config.request_timeout = self.request_timeout;
        let net = RouterNetwork {
            router: self.router.clone(),
            from: id,
        };
        // A just-stopped controller's store may still be closing: retry the open briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        let node = loop {
            match ControllerNode::start(config.clone(), net.clone(), Arc::new(net.clone())).await {
                Ok(node) => break node,
                Err(ControllerError::Store(e)) if Instant::now() < deadline => {
                    tracing::debug!(node_id = id, error = %e, "store still busy, retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.router.register(node.clone());
        if let Some(config) = &self.orchestrator {
            let o = Orchestrator::spawn(node.clone(), config.clone());
            let old = self
                .orchestrators
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, o);
            if let Some(old) = old {
                old.stop().await;
            }
        }
        Ok(node)
    }

    /// Start `n` controllers (1 bootstraps, the others join as voters).
    pub async fn start_voters(&self, n: u64) -> Result<(), ControllerError> {
        let first = self.start(1, true).await?;
        first.wait_for_leader(Duration::from_secs(10)).await?;
        for id in 2..=n {
            self.start(id, false).await?;
            first
                .add_member(AddMemberRequest {
                    id,
                    addr: addr_of(id),
                    voter: true,
                })
                .await?;
        }
        Ok(())
    }

    pub fn node(&self, id: NodeId) -> Arc<ControllerNode> {
        self.router
            .node(id)
            .unwrap_or_else(|| panic!("controller {id} is not running"))
    }

    /// Stop controller `id` abruptly (as far as one process allows: Raft stops, nothing else
    /// is flushed) and take it off the network.
    pub async fn kill(&self, id: NodeId) {
        let o = self
            .orchestrators
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(o) = o {
            o.stop().await;
        }
        if let Some(node) = self.router.unregister(id) {
            node.shutdown().await;
        }
    }

    /// Wait until the running controllers among `ids` agree on one leader, and return it.
    pub async fn leader(&self, ids: &[NodeId], timeout: Duration) -> NodeId {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<NodeId>> = ids
                .iter()
                .filter_map(|id| self.router.node(*id))
                .map(|n| n.metrics().current_leader)
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) && ids.contains(l) {
                    let is_leader = self
                        .router
                        .node(*l)
                        .is_some_and(|n| n.metrics().state == openraft::ServerState::Leader);
                    if is_leader {
                        return *l;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {ids:?} within {timeout:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until `ids` have applied the same index as the leader's last log entry, then check
    /// that their state machines are identical. Returns the common applied index.
    pub async fn converged(&self, ids: &[NodeId], timeout: Duration) -> u64 {
        let leader = self.leader(ids, timeout).await;
        let target = self
            .node(leader)
            .metrics()
            .last_log_index
            .expect("leader has a log");
        for id in ids {
            self.node(*id)
                .raft()
                .wait(Some(timeout))
                .applied_index_at_least(Some(target), "converge")
                .await
                .unwrap_or_else(|e| panic!("controller {id} did not apply {target}: {e}"));
        }
        let states: Vec<(NodeId, u64, ClusterState)> = ids
            .iter()
            .map(|id| {
                let n = self.node(*id);
                (*id, n.applied_index(), n.read_stale(|s| s.clone()))
            })
            .collect();
        let (first_id, first_index, first_state) = &states[0];
        for (id, index, state) in &states[1..] {
            assert_eq!(index, first_index, "applied index of {id} vs {first_id}");
            assert!(
                state == first_state,
                "state machine of {id} differs from {first_id}"
            );
        }
        *first_index
    }
}
