//! Fixtures for the live network tests: namespaces bound at files in a
//! per-test temporary directory (removed by guards, also on failure), a
//! simulated host with an underlay, and small socket helpers that run
//! inside a namespace on a thread of their own.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use flotilla_net::netns::{create_netns, remove_netns, run_in_netns};
use flotilla_net::{NetConfig, NodeNetwork};
use futures_util::StreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};

/// Live tests need root and `nft`. Outside CI they are skipped when those
/// are missing; under CI=true they fail.
pub fn live() -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    let nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let why = if !root {
        Some("not root")
    } else if !nft {
        Some("nft not found")
    } else {
        None
    };
    match why {
        None => true,
        Some(w) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but this live test cannot run: {w}")
        }
        Some(w) => {
            eprintln!("skipping live test: {w}");
            false
        }
    }
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace bound at a file; unmounted and removed on drop.
pub struct Netns {
    pub path: PathBuf,
}

impl Netns {
    pub fn new(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        create_netns(&path).expect("creating a network namespace");
        let ns = Self { path };
        nl(&ns.path, |h| async move {
            let lo = link(&h, "lo").await.expect("lo");
            h.link()
                .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                .execute()
                .await
                .expect("lo up");
        });
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = remove_netns(&self.path) {
            eprintln!("removing {}: {e}", self.path.display());
        }
    }
}

/// Runs an rtnetlink job inside the namespace (own thread and runtime).
pub fn nl<T, F, Fut>(ns: &Path, f: F) -> T
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    run_in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (conn, h, _) = rtnetlink::new_connection().unwrap();
            let t = tokio::spawn(conn);
            let r = f(h).await;
            t.abort();
            r
        })
    })
    .expect("entering the namespace")
}

pub async fn link(h: &Handle, name: &str) -> Option<LinkMessage> {
    let mut s = h.link().get().match_name(name).execute();
    match s.next().await {
        Some(Ok(m)) => Some(m),
        _ => None,
    }
}

pub async fn link_names(h: &Handle) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = h.link().get().execute();
    while let Some(Ok(m)) = s.next().await {
        for a in &m.attributes {
            if let LinkAttribute::IfName(n) = a {
                out.push(n.clone());
            }
        }
    }
    out
}

/// Whether a link of that name exists in the namespace.
pub fn has_link(ns: &Path, name: &str) -> bool {
    let name = name.to_string();
    nl(ns, |h| async move { link(&h, &name).await.is_some() })
}

/// A veth pair from `a_ns` (name `a`, address `a_ip`/24) to `b_ns` (name
/// `b`, address `b_ip`/24), both up.
pub fn veth_between(a_ns: &Path, a: &str, a_ip: &str, b_ns: &Path, b: &str, b_ip: &str) {
    let b_file = std::fs::File::open(b_ns).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&b_file);
    let (a, b) = (a.to_string(), b.to_string());
    let a_ip: std::net::IpAddr = a_ip.parse().unwrap();
    let b_ip: std::net::IpAddr = b_ip.parse().unwrap();
    let a2 = a.clone();
    let b1 = b.clone();
    nl(a_ns, move |h| async move {
        let peer = LinkUnspec::new_with_name(&b1).setns_by_fd(fd).build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(a2.clone())
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link()
            .add(msg)
            .execute()
            .await
            .expect("creating the underlay veth");
        let l = link(&h, &a2).await.unwrap();
        h.address()
            .add(l.header.index, a_ip, 24)
            .execute()
            .await
            .unwrap();
    });
    drop(b_file);
    let b2 = b.clone();
    nl(b_ns, move |h| async move {
        let l = link(&h, &b2).await.unwrap();
        h.address()
            .add(l.header.index, b_ip, 24)
            .execute()
            .await
            .unwrap();
        h.link()
            .set(LinkUnspec::new_with_index(l.header.index).up().build())
            .execute()
            .await
            .unwrap();
    });
}

/// A simulated host: its own namespace (plus a state directory) with a
/// NodeNetwork configured for `198.19.<n>.0/24` inside it.
pub struct Host {
    // Field order is drop order: the namespace is unmounted before the
    // directory holding its file is removed.
    pub ns: Netns,
    pub cfg: NetConfig,
    pub dir: tempfile::TempDir,
}

impl Host {
    pub fn new(n: u8) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flt-net-")
            .tempdir()
            .unwrap();
        let ns = Netns::new(dir.path(), &unique("flt-t-h"));
        let mut cfg = NetConfig::new(
            "flbr0",
            format!("198.19.{n}.0/24").parse().unwrap(),
            dir.path().join("state"),
        );
        cfg.netns = Some(ns.path.clone());
        Host { ns, cfg, dir }
    }

    pub fn container_ns(&self, name: &str) -> Netns {
        Netns::new(self.dir.path(), &unique(&format!("flt-t-{name}-")))
    }

    pub async fn network(&self) -> NodeNetwork {
        NodeNetwork::new(self.cfg.clone())
            .await
            .expect("NodeNetwork::new")
    }
}

/// A TCP server inside a namespace answering every connection with `reply`.
/// Stopped and joined on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn tcp(ns: &Path, addr: &str, reply: &'static str) -> Self {
        let addr: SocketAddr = addr.parse().unwrap();
        let l = run_in_netns(ns, move || TcpListener::bind(addr))
            .unwrap()
            .expect("bind");
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        c.set_nonblocking(false).unwrap();
                        let _ = c.write_all(format!("{reply} to {peer}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }

    pub fn udp(ns: &Path, addr: &str, reply: &'static str) -> Self {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = run_in_netns(ns, move || UdpSocket::bind(addr))
            .unwrap()
            .expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{reply} to {peer}\n").as_bytes(), peer);
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` to `addr` and reads the greeting.
pub fn tcp_get(ns: &Path, addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    run_in_netns(ns, move || -> std::io::Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })
    .expect("entering the namespace")
}

/// Sends a datagram from inside `ns` and waits for the answer.
pub fn udp_get(ns: &Path, addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    run_in_netns(ns, move || -> std::io::Result<String> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = [0u8; 512];
        for _ in 0..4 {
            s.send_to(b"ping", addr)?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no udp answer",
        ))
    })
    .expect("entering the namespace")
}

/// The rules of the `published` chain in the host's nftables table, as
/// (comment, rule JSON) pairs; `None` if the table does not exist.
pub fn published_rules(ns: &Path) -> Option<Vec<(String, String)>> {
    run_in_netns(ns, || {
        let out = std::process::Command::new("nft")
            .args(["-j", "list", "table", "ip", "flotilla"])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut rules = Vec::new();
        for o in v["nftables"].as_array().unwrap() {
            if let Some(r) = o.get("rule") {
                if r["chain"] == "published" {
                    rules.push((
                        r["comment"].as_str().unwrap_or_default().to_string(),
                        r["expr"].to_string(),
                    ));
                }
            }
        }
        Some(rules)
    })
    .unwrap()
}
