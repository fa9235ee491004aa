//! Controller-to-controller transport over HTTP/JSON: openraft's RPCs (`/raft/append`,
//! `/raft/vote`, `/raft/snapshot`) and the peer requests of `node` (`/raft/peer`), served on the
//! internal listener.
//!
//! Both sides take an optional rustls configuration: with one, the client speaks HTTPS (HTTP/2
//! by ALPN) and the server terminates TLS itself (the certificates and mTLS policy come from
//! the caller). Without one they speak plaintext HTTP/2 (prior knowledge).
//!
//! Connect errors and timeouts map to `Unreachable`, so openraft backs off instead of
//! hammering a dead peer.

use std::future::Future;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flotilla_api::cluster::ControllerAddr;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::append_stream;
use crate::node::{
    BoxFuture, ControllerNode, PeerRequest, PeerResponse, PeerTransport, TransportError,
};
use crate::raft::types::{NodeId, Snapshot, SnapshotMeta, TypeConfig, Vote};

/// Largest Raft request body the server accepts (snapshots included).
const MAX_BODY: usize = 256 << 20;

/// Install ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkSetupError {
    #[error("cannot build the http client")]
    Client(#[source] reqwest::Error),
    #[error("cannot serve the raft listener")]
    Serve(#[source] std::io::Error),
}

/// HTTP client side: the openraft network factory and the peer transport in one.
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
    scheme: &'static str,
    /// TLS for the append stream (HTTP/1.1 by ALPN, to upgrade); `None` for plaintext.
    stream_tls: Option<Arc<rustls::ClientConfig>>,
}

impl HttpNetwork {
    /// `tls`: a rustls client configuration (CA pinning, client certificate for mTLS); `None`
    /// for plaintext.
    pub fn new(tls: Option<rustls::ClientConfig>) -> Result<Self, NetworkSetupError> {
        install_crypto_provider();
        let builder = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30));
        let stream_tls = tls.as_ref().map(|config| {
            let mut config = config.clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        });
        let (builder, scheme) = match tls {
            Some(config) => (builder.tls_backend_preconfigured(config), "https"),
            None => (builder.http2_prior_knowledge(), "http"),
        };
        Ok(Self {
            client: builder.build().map_err(NetworkSetupError::Client)?,
            scheme,
            stream_tls,
        })
    }

    fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }
}

fn classify(target: NodeId, e: reqwest::Error) -> TransportError {
    if e.is_timeout() {
        TransportError::Timeout { target }
    } else {
        TransportError::Unreachable {
            target,
            source: Box::new(e),
        }
    }
}

async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
    client: &reqwest::Client,
    target: NodeId,
    url: impl reqwest::IntoUrl,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, TransportError> {
    let resp = client
        .post(url)
        .json(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| classify(target, e))?;
    decode(target, resp).await
}

async fn decode<Resp: DeserializeOwned>(
    target: NodeId,
    resp: reqwest::Response,
) -> Result<Resp, TransportError> {
    let status = resp.status();
    if !status.is_success() {
        return Err(TransportError::Status {
            target,
            status: status.as_u16(),
        });
    }
    let bytes = resp.bytes().await.map_err(|e| classify(target, e))?;
    serde_json::from_slice(&bytes).map_err(|e| TransportError::Decode {
        target,
        source: Box::new(e),
    })
}

impl PeerTransport for HttpNetwork {
    fn send(
        &self,
        target: NodeId,
        addr: ControllerAddr,
        request: PeerRequest,
    ) -> BoxFuture<'static, Result<PeerResponse, TransportError>> {
        let client = self.client.clone();
        let url = self.url(&addr.raft_addr, "/raft/peer");
        Box::pin(
            async move { post_json(&client, target, url, &request, Duration::from_secs(10)).await },
        )
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpConnection;

    async fn new_client(&mut self, target: NodeId, node: &ControllerAddr) -> HttpConnection {
        HttpConnection {
            net: self.clone(),
            target,
            addr: node.raft_addr.clone(),
            stream: None,
            buf: Vec::new(),
        }
    }
}

/// One peer as openraft sees it.
pub struct HttpConnection {
    net: HttpNetwork,
    target: NodeId,
    addr: String,
    /// The append stream to the peer, opened on first use and dropped on any error.
    stream: Option<append_stream::Stream>,
    /// Frame buffer, reused.
    buf: Vec<u8>,
}

type RpcResult<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, ControllerAddr, E>>;

impl HttpConnection {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = self.net.url(&self.addr, path);
        let res = post_json(&self.net.client, self.target, url, req, option.hard_ttl()).await;
        rpc_result(self.target, res)
    }

    /// One AppendEntries over the append stream; a reused stream that fails is replaced once
    /// (the peer may have restarted; a repeated AppendEntries is harmless).
    async fn append_over_stream(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>, TransportError> {
        let body = serde_json::to_vec(rpc).map_err(|e| TransportError::Decode {
            target: self.target,
            source: Box::new(e),
        })?;
        let target = self.target;
        let attempt = async {
            loop {
                let reused = self.stream.is_some();
                let stream = match &mut self.stream {
                    Some(s) => s,
                    None => {
                        let s = append_stream::connect(&self.addr, self.net.stream_tls.as_ref())
                            .await
                            .map_err(|e| TransportError::Unreachable {
                                target,
                                source: Box::new(e),
                            })?;
                        self.stream.insert(s)
                    }
                };
                let exchanged = async {
                    append_stream::write_frame(stream, &body).await?;
                    if append_stream::read_frame(stream, &mut self.buf).await? {
                        Ok(())
                    } else {
                        Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
                    }
                }
                .await;
                match exchanged {
                    Ok(()) => break,
                    Err(e) => {
                        self.stream = None;
                        if !reused {
                            return Err(TransportError::Unreachable {
                                target,
                                source: Box::new(e),
                            });
                        }
                        tracing::debug!(target_id = target, error = %e, "append stream broke, reconnecting");
                    }
                }
            }
            serde_json::from_slice(&self.buf).map_err(|e| TransportError::Decode {
                target,
                source: Box::new(e),
            })
        };
        match tokio::time::timeout(ttl, attempt).await {
            Ok(r) => r,
            Err(_) => {
                // Mid-exchange: what the stream holds next is unknown.
                self.stream = None;
                Err(TransportError::Timeout { target })
            }
        }
    }
}

// The error type is openraft's, fixed by the `RaftNetwork` trait.
#[allow(clippy::result_large_err)]
fn rpc_result<Resp, E: std::error::Error>(
    target: NodeId,
    res: Result<Result<Resp, E>, TransportError>,
) -> RpcResult<Resp, E> {
    match res {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(target, remote))),
        Err(e @ (TransportError::Unreachable { .. } | TransportError::Timeout { .. })) => {
            Err(RPCError::Unreachable(Unreachable::new(&e)))
        }
        Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
    }
}

/// Body of `/raft/snapshot`: a JSON header then the raw snapshot bytes.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: Vote,
    meta: SnapshotMeta,
}

fn encode_snapshot(header: &SnapshotHeader, data: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let head = serde_json::to_vec(header)?;
    let mut body = Vec::with_capacity(4 + head.len() + data.len());
    body.extend_from_slice(&(head.len() as u32).to_be_bytes());
    body.extend_from_slice(&head);
    body.extend_from_slice(data);
    Ok(body)
}

fn decode_snapshot(body: &[u8]) -> Option<(SnapshotHeader, Vec<u8>)> {
    let len = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let head = body.get(4..4 + len)?;
    let header = serde_json::from_slice(head).ok()?;
    Some((header, body[4 + len..].to_vec()))
}

impl RaftNetwork<TypeConfig> for HttpConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let res = self.append_over_stream(&rpc, option.hard_ttl()).await;
        rpc_result(self.target, res)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.rpc("/raft/vote", &rpc, &option).await
    }

    /// Chunked transfer; unused because `full_snapshot` below sends the snapshot whole, but
    /// served for peers that use it.
    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.rpc("/raft/snapshot-chunk", &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
        };
        let body = encode_snapshot(&header, snapshot.snapshot.get_ref())
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let url = self.net.url(&self.addr, "/raft/snapshot");
        let send = self
            .net
            .client
            .post(url)
            .header("content-type", "application/octet-stream")
            .body(body)
            .timeout(option.hard_ttl())
            .send();
        let resp = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            resp = send => resp,
        };
        let resp = resp.map_err(|e| classify(self.target, e));
        let res: Result<Result<SnapshotResponse<NodeId>, Fatal<NodeId>>, TransportError> =
            match resp {
                Ok(r) => decode(self.target, r).await,
                Err(e) => Err(e),
            };
        match res {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                fatal,
            ))),
            Err(e @ (TransportError::Unreachable { .. } | TransportError::Timeout { .. })) => {
                Err(StreamingError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

type Node = Arc<ControllerNode>;

/// The internal Raft router: mount it on the internal listener only.
pub fn raft_router(node: Node) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route(append_stream::PATH, get(append_stream_upgrade))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/snapshot-chunk", post(snapshot_chunk))
        .route("/raft/peer", post(peer))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}

async fn append(
    State(node): State<Node>,
    Json(rpc): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(node.raft().append_entries(rpc).await)
}

/// Upgrade to the append stream and serve it until the peer closes it.
async fn append_stream_upgrade(State(node): State<Node>, req: axum::extract::Request) -> Response {
    use axum::http::header::{CONNECTION, UPGRADE};
    if req.headers().get(UPGRADE).and_then(|v| v.to_str().ok()) != Some(append_stream::PROTOCOL) {
        return (
            StatusCode::BAD_REQUEST,
            format!("expected an upgrade to {}", append_stream::PROTOCOL),
        )
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(upgraded) => hyper_util::rt::TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "append stream upgrade failed");
                return;
            }
        };
        if let Err(e) = serve_append_stream(&node, io).await {
            tracing::debug!(error = %e, "append stream ended with an error");
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, append_stream::PROTOCOL)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn serve_append_stream<S>(node: &ControllerNode, io: S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut io = tokio::io::BufReader::new(io);
    let mut buf = Vec::new();
    while append_stream::read_frame(&mut io, &mut buf).await? {
        let rpc: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let result = node.raft().append_entries(rpc).await;
        let reply = serde_json::to_vec(&result).map_err(std::io::Error::other)?;
        append_stream::write_frame(&mut io, &reply).await?;
        if let Err(RaftError::Fatal(_)) = result {
            // This Raft has stopped: close, so the peer reconnects to whatever serves the
            // address next (a restarted controller) instead of talking to this one forever.
            return Ok(());
        }
    }
    Ok(())
}

async fn vote(
    State(node): State<Node>,
    Json(rpc): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(node.raft().vote(rpc).await)
}

async fn snapshot_chunk(
    State(node): State<Node>,
    Json(rpc): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(node.raft().install_snapshot(rpc).await)
}

async fn snapshot(State(node): State<Node>, body: Bytes) -> Response {
    let Some((header, data)) = decode_snapshot(&body) else {
        return (StatusCode::BAD_REQUEST, "malformed snapshot body").into_response();
    };
    let snapshot = Snapshot {
        meta: header.meta,
        snapshot: Box::new(Cursor::new(data)),
    };
    Json(
        node.raft()
            .install_full_snapshot(header.vote, snapshot)
            .await,
    )
    .into_response()
}

async fn peer(State(node): State<Node>, Json(req): Json<PeerRequest>) -> Json<PeerResponse> {
    Json(node.handle_peer(req).await)
}

/// Serve `router` on `listener` until `shutdown` resolves; with `tls`, every connection is a
/// TLS connection (the config decides whether client certificates are required).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NetworkSetupError> {
    match tls {
        None => {
            use axum::serve::ListenerExt;
            // Small request/response pairs: never let Nagle hold a segment back.
            let listener = listener.tap_io(|stream| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(NetworkSetupError::Serve)
        }
        Some(config) => serve_tls(listener, router, config, shutdown).await,
    }
}

async fn serve_tls(
    listener: TcpListener,
    router: Router,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NetworkSetupError> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted.map_err(NetworkSetupError::Serve)?,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
            };
            if let Err(e) = Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
