//! The agent's API for controllers over mTLS on the advertise address: container logs,
//! exec, inspect and list (the local API's handlers), for `clusterctl logs` / `exec` through
//! the controller's proxy. Only clients with a cluster certificate named `controller-<n>` get
//! past the handshake.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::server::AppState;

/// Bind `addr`, inside the node's network namespace when the agent runs outside it (the
/// socket keeps the namespace it was made in).
pub fn bind(addr: SocketAddr, netns: Option<PathBuf>) -> Result<tokio::net::TcpListener> {
    let make = move || -> Result<std::net::TcpListener> {
        if let Some(ns) = &netns {
            let f = std::fs::File::open(ns).with_context(|| format!("open {}", ns.display()))?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns {}", ns.display()))?;
        }
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    // A thread of its own: setns must not touch a thread that runs anything else.
    let l = std::thread::spawn(make)
        .join()
        .map_err(|_| anyhow::anyhow!("bind thread panicked"))??;
    Ok(tokio::net::TcpListener::from_std(l)?)
}

struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, peer) = match self.inner.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "agent api accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "agent api refused a tls client"),
                Err(_) => tracing::info!(%peer, "agent api tls handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Serve the container endpoints controllers use.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    st: AppState,
) {
    let l = TlsListener {
        inner: listener,
        acceptor: TlsAcceptor::from(tls),
    };
    let router = crate::server::remote_router(st);
    if let Err(e) = axum::serve(l, router).await {
        tracing::error!(error = %e, "agent api stopped");
    }
}
