//! Health checks of an instance: `exec` inside the container (the runtime's exec helper),
//! `tcp` and `http` to the instance's address from inside the node's network namespace.
//! A prober task runs one probe every `periodMs` and flips its verdict after
//! `failureThreshold` consecutive failures or `successThreshold` consecutive successes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::cluster::{Probe, ProbeAction};
use flotilla_runtime::runtime::{ExecOptions, Runtime};
use tokio::sync::Notify;

/// Where a probe runs.
#[derive(Clone)]
pub struct Target {
    pub rt: Runtime,
    pub container: String,
    pub ip: Option<std::net::Ipv4Addr>,
    /// The node's network namespace, when the agent runs outside it.
    pub node_netns: Option<PathBuf>,
}

/// Run one probe; `Ok(())` passes.
pub async fn run_once(action: &ProbeAction, t: &Target, timeout: Duration) -> Result<(), String> {
    match action {
        ProbeAction::Exec { command } => {
            let opts = ExecOptions {
                args: command.clone(),
                env: vec![],
                cwd: None,
                uid: None,
                gid: None,
            };
            let rt = t.rt.clone();
            let id = t.container.clone();
            let cmd = tokio::task::spawn_blocking(move || rt.exec_command(&id, &opts))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let mut cmd = tokio::process::Command::from(cmd);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let status = tokio::time::timeout(timeout, cmd.status())
                .await
                .map_err(|_| format!("timed out after {timeout:?}"))?
                .map_err(|e| format!("cannot run the exec helper: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("exited with {status}"))
            }
        }
        ProbeAction::Tcp { port } => {
            let addr = SocketAddr::new(t.ip.ok_or("the instance has no address")?.into(), *port);
            in_netns(t.node_netns.clone(), move || {
                TcpStream::connect_timeout(&addr, timeout)
                    .map(|_| ())
                    .map_err(|e| format!("connect {addr}: {e}"))
            })
            .await
        }
        ProbeAction::Http { port, path } => {
            let addr = SocketAddr::new(t.ip.ok_or("the instance has no address")?.into(), *port);
            let path = path.clone();
            in_netns(t.node_netns.clone(), move || http_get(addr, &path, timeout)).await
        }
    }
}

/// `GET path` with HTTP/1.0; 2xx and 3xx pass.
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    // One write: a server that answers after the first segment and closes must not see a
    // second one (EPIPE).
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: flotilla-probe\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).map_err(|e| format!("read: {e}"))?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an http answer: {head:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("http status {code}"))
    }
}

/// Run `f` on a fresh thread inside the network namespace at `ns` (never on a pooled thread:
/// the namespace would stick to it).
async fn in_netns<T: Send + 'static>(
    ns: Option<PathBuf>,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let Some(ns) = ns else {
        return tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| e.to_string())?;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("probe-netns".into())
        .spawn(move || {
            let r = (|| {
                let file =
                    std::fs::File::open(&ns).map_err(|e| format!("open {}: {e}", ns.display()))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns {}: {e}", ns.display()))?;
                f()
            })();
            let _ = tx.send(r);
        })
        .map_err(|e| e.to_string())?;
    rx.await.map_err(|_| "probe thread died".to_owned())?
}

/// The verdicts of one instance's probes, shared with the reconciler.
#[derive(Default)]
pub struct Health {
    /// Readiness passes (true when there is no readiness probe).
    pub ready: AtomicBool,
    /// Liveness failed `failureThreshold` times in a row.
    pub dead: AtomicBool,
}

/// Probe forever (until aborted). `set` records the verdict; `changed` wakes the reconciler.
pub async fn prober(
    probe: Probe,
    target: Target,
    health: Arc<Health>,
    liveness: bool,
    changed: Arc<Notify>,
) {
    tokio::time::sleep(Duration::from_millis(probe.initial_delay_ms)).await;
    let (mut fails, mut oks) = (0u32, 0u32);
    let period = Duration::from_millis(probe.period_ms.max(100));
    let timeout = Duration::from_millis(probe.timeout_ms.max(50));
    loop {
        let r = run_once(&probe.action, &target, timeout).await;
        match &r {
            Ok(()) => {
                oks += 1;
                fails = 0;
            }
            Err(e) => {
                fails += 1;
                oks = 0;
                tracing::debug!(container = %target.container, liveness, error = %e, fails, "probe failed");
            }
        }
        if liveness {
            if fails >= probe.failure_threshold.max(1) && !health.dead.swap(true, Ordering::SeqCst)
            {
                tracing::warn!(container = %target.container, error = ?r.err(), "liveness probe failed");
                changed.notify_one();
                return;
            }
        } else {
            let was = health.ready.load(Ordering::SeqCst);
            if !was && oks >= probe.success_threshold.max(1) {
                health.ready.store(true, Ordering::SeqCst);
                changed.notify_one();
            } else if was && fails >= probe.failure_threshold.max(1) {
                health.ready.store(false, Ordering::SeqCst);
                changed.notify_one();
            }
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_probe_reads_the_status_line() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for (i, s) in l.incoming().take(2).enumerate() {
                let mut s = s.unwrap();
                let mut got = Vec::new();
                let mut b = [0u8; 256];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&b[..n]),
                    }
                }
                let line = if i == 0 {
                    "HTTP/1.0 204 No Content\r\n\r\n"
                } else {
                    "HTTP/1.0 503 Busy\r\n\r\n"
                };
                let _ = s.write_all(line.as_bytes());
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(
            tokio::task::spawn_blocking(move || http_get(addr, "/", t))
                .await
                .unwrap(),
            Ok(())
        );
        let e = tokio::task::spawn_blocking(move || http_get(addr, "/", t))
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.contains("503"), "{e}");
    }
}
