//! The thread that owns the node's netlink connection.
//!
//! An rtnetlink socket is bound to the network namespace of the thread that
//! created it, and `setns()` changes only the calling thread. So every
//! operation of a [`crate::NodeNetwork`] runs here: a dedicated OS thread
//! that entered the node's namespace once, with a current-thread tokio
//! runtime. Tokio worker threads never change namespace. Jobs run one at a
//! time, which also serialises changes to one node's network. A caller that
//! stops waiting does not cancel a job half-way.
//!
//! Sockets in a container's namespace are made here too: the thread enters
//! the container's namespace, opens the socket, and returns to the node's
//! before anything else runs (no `.await` in between).

use std::cell::Cell;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;

use tokio::sync::{mpsc, oneshot};

use crate::error::NetError;
use crate::netns::{enter, open_netns};

type Job = Box<dyn FnOnce(Rc<Ctx>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// What a job gets: the node's netlink handle and a way to reach other
/// namespaces.
pub(crate) struct Ctx {
    pub handle: rtnetlink::Handle,
    node_ns: File,
    node_ns_path: PathBuf,
    poisoned: Cell<bool>,
}

/// A netlink connection inside another namespace; its task ends on drop.
pub(crate) struct ForeignConn {
    pub handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ForeignConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Ctx {
    /// Opens a netlink connection inside the namespace at `path`.
    pub(crate) fn connect_in(&self, path: &Path) -> Result<ForeignConn, NetError> {
        let f = open_netns(path)?;
        enter(&f, path)?;
        let conn = rtnetlink::new_connection();
        if let Err(e) = enter(&self.node_ns, &self.node_ns_path) {
            // This thread is now in the wrong namespace: stop serving.
            self.poisoned.set(true);
            tracing::error!(netns = %self.node_ns_path.display(), error = %e, "cannot return to the node network namespace");
            return Err(e);
        }
        let (conn, handle, _) = conn.map_err(|source| NetError::Netns {
            path: path.to_path_buf(),
            op: "opening a netlink socket",
            source,
        })?;
        let task = tokio::spawn(conn);
        Ok(ForeignConn { handle, task })
    }
}

/// Handle to the worker thread; dropping it ends the thread after the
/// queued jobs.
pub(crate) struct Worker {
    tx: mpsc::UnboundedSender<Job>,
}

impl Worker {
    /// Starts the thread in `netns` (`None`: the namespace of the process).
    pub(crate) async fn start(netns: Option<PathBuf>) -> Result<Worker, NetError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), NetError>>();
        let spawned = std::thread::Builder::new()
            .name("flotilla-net".into())
            .spawn(move || {
                let setup = || -> Result<(tokio::runtime::Runtime, File, PathBuf), NetError> {
                    let (f, p) = match &netns {
                        Some(p) => {
                            let f = open_netns(p)?;
                            enter(&f, p)?;
                            (f, p.clone())
                        }
                        None => {
                            let p = PathBuf::from("/proc/thread-self/ns/net");
                            (open_netns(&p)?, p)
                        }
                    };
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|source| NetError::Netns {
                            path: p.clone(),
                            op: "starting the worker runtime",
                            source,
                        })?;
                    Ok((rt, f, p))
                };
                let (rt, node_ns, node_ns_path) = match setup() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (conn, handle, _) = match rtnetlink::new_connection() {
                        Ok(c) => c,
                        Err(source) => {
                            let _ = ready_tx.send(Err(NetError::Netns {
                                path: node_ns_path,
                                op: "opening a netlink socket",
                                source,
                            }));
                            return;
                        }
                    };
                    let conn_task = tokio::spawn(conn);
                    let ctx = Rc::new(Ctx {
                        handle,
                        node_ns,
                        node_ns_path,
                        poisoned: Cell::new(false),
                    });
                    let _ = ready_tx.send(Ok(()));
                    while let Some(job) = rx.recv().await {
                        job(ctx.clone()).await;
                        if ctx.poisoned.get() {
                            break;
                        }
                    }
                    conn_task.abort();
                });
            });
        if let Err(source) = spawned {
            return Err(NetError::Netns {
                path: PathBuf::from("/proc/thread-self/ns/net"),
                op: "spawning the worker thread",
                source,
            });
        }
        ready_rx.await.map_err(|_| NetError::Worker {
            op: "exited during start-up",
        })??;
        Ok(Worker { tx })
    }

    /// Runs `f` on the worker thread and returns its result.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, NetError>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Ctx>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, NetError>> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            Box::pin(async move {
                let _ = tx.send(f(ctx).await);
            })
        });
        self.tx
            .send(job)
            .map_err(|_| NetError::Worker { op: "has stopped" })?;
        rx.await.map_err(|_| NetError::Worker {
            op: "stopped during the operation",
        })?
    }
}
