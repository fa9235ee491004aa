//! Cluster mode (docs/cluster-protocol.md): the agent joins as a node, renews its lease by
//! heartbeats, watches its assignments with a blocking query (failing over across the
//! controllers), reconciles containers to them, probes their health and reports their state.
//! It also serves logs and exec over mTLS to controllers on its advertise address.
//!
//! Containers of instances are named after the instance and labelled `flotilla.instance`,
//! `flotilla.epoch`: the runtime's on-disk state is the truth, so a restarted agent adopts
//! them and never starts a duplicate.

pub mod client;
pub mod identity;
pub mod probe;
pub mod reconcile;
pub mod tls;
pub mod tls_api;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_api::cluster::Capacity;
use flotilla_api::rest::{InstanceList, MembersResponse, NodeHeartbeatRequest};
use flotilla_runtime::runtime::Runtime;
use reqwest::Method;

use self::client::{ControllerClient, Refused};
use self::identity::{JoinArgs, NodeIdentity};
use crate::server::AppState;

/// Label naming the instance a container runs.
pub const INSTANCE_LABEL: &str = "flotilla.instance";
/// Label with the instance's epoch when the container was made.
pub const EPOCH_LABEL: &str = "flotilla.epoch";
pub const WORKLOAD_LABEL: &str = "flotilla.workload";

/// The cluster flags of `serve`.
#[derive(Debug, Clone, Default)]
pub struct ClusterArgs {
    pub root: PathBuf,
    pub join: Option<String>,
    pub token: Option<String>,
    pub ca_cert_hash: Option<String>,
    pub node_id: Option<String>,
    pub advertise: Option<SocketAddr>,
    pub labels: BTreeMap<String, String>,
    pub registry_insecure: Vec<String>,
    pub node_netns: Option<PathBuf>,
    /// What the node offers the scheduler instead of the whole machine (a reservation for the
    /// host, or several agents sharing one machine); `None` reports the machine's own.
    pub capacity: CapacityOverride,
}

/// `--capacity-cpu-millis` / `--capacity-memory-bytes`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapacityOverride {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

impl CapacityOverride {
    /// The capacity to report: the override where given, checked against the machine's own
    /// (a node cannot offer more than it has); errors name the flag.
    pub fn apply(&self, machine: &Capacity) -> Result<Capacity> {
        let pick = |flag: &str, want: Option<u64>, have: u64| -> Result<u64> {
            match want {
                None => Ok(have),
                Some(0) => bail!("{flag}: must be greater than 0"),
                Some(w) if w > have => {
                    bail!("{flag} {w}: more than this machine has ({have})")
                }
                Some(w) => Ok(w),
            }
        };
        Ok(Capacity {
            cpu_millis: pick("--capacity-cpu-millis", self.cpu_millis, machine.cpu_millis)?,
            memory_bytes: pick(
                "--capacity-memory-bytes",
                self.memory_bytes,
                machine.memory_bytes,
            )?,
        })
    }
}

impl ClusterArgs {
    /// Whether the agent runs as a cluster member (flags given or joined before).
    pub fn enabled(&self) -> bool {
        self.join.is_some() || identity::dir(&self.root).join("identity.json").exists()
    }
}

/// What the node reports about itself.
pub fn node_facts(rt: &Runtime) -> (Capacity, BTreeMap<String, String>) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let mut f = BTreeMap::new();
    f.insert(
        "cgroup".to_owned(),
        format!("{:?}", rt.cgroup_mode()).to_lowercase(),
    );
    match rt.criu_info() {
        Ok(c) => {
            f.insert("criu".to_owned(), c.version.clone());
            let flags = [
                ("mem_dirty_track", c.mem_dirty_track),
                ("uffd", c.uffd),
                ("uffd_noncoop", c.uffd_noncoop),
                ("network_lock_nftables", c.network_lock_nftables),
                ("timens", c.timens),
            ];
            let on: Vec<&str> = flags.iter().filter(|(_, b)| *b).map(|(n, _)| *n).collect();
            f.insert("criu.features".to_owned(), on.join(","));
        }
        Err(e) => {
            tracing::info!(error = %e, "no criu on this node");
        }
    }
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.trim_end().ends_with("overlay")))
        .unwrap_or(false);
    if overlay {
        let mut modes = vec!["overlay".to_owned()];
        for p in ["redirect_dir", "metacopy", "index"] {
            let v = std::fs::read_to_string(format!("/sys/module/overlay/parameters/{p}"))
                .unwrap_or_default();
            if v.trim() == "Y" {
                modes.push(p.to_owned());
            }
        }
        f.insert("overlay".to_owned(), modes.join(","));
    }
    (
        Capacity {
            cpu_millis: cpus * 1000,
            memory_bytes: mem,
        },
        f,
    )
}

/// Load the node identity, or join with the flags. Runs before the agent serves, so a
/// refused join ends the process with the controller's reason.
pub async fn prepare(args: &ClusterArgs, rt: &Runtime) -> Result<NodeIdentity> {
    if args.capacity.cpu_millis.is_some() || args.capacity.memory_bytes.is_some() {
        // A bad override ends the agent here, naming the flag, not in every heartbeat.
        let rt2 = rt.clone();
        let (machine, _) = tokio::task::spawn_blocking(move || node_facts(&rt2)).await?;
        args.capacity.apply(&machine)?;
    }
    if let Some(id) = NodeIdentity::load(&args.root)? {
        if let Some(want) = &args.node_id {
            if *want != id.file.node_id {
                bail!(
                    "--node-id {want}: this agent's data directory belongs to node {} ({})",
                    id.file.node_id,
                    identity::dir(&args.root).display()
                );
            }
        }
        tracing::info!(node = %id.file.node_id, "node identity loaded");
        return Ok(id);
    }
    let url = args
        .join
        .clone()
        .context("this node has not joined yet: give --join, --token and --ca-cert-hash")?;
    let join = JoinArgs {
        url,
        token: args.token.clone().context("--join needs --token")?,
        ca_cert_hash: args
            .ca_cert_hash
            .clone()
            .context("--join needs --ca-cert-hash")?,
    };
    tls::parse_hash(&join.ca_cert_hash)?;
    let node_id = args.node_id.clone().context("--join needs --node-id")?;
    let advertise = args.advertise.context("--join needs --advertise IP:PORT")?;
    let rt2 = rt.clone();
    let (machine, features) = tokio::task::spawn_blocking(move || node_facts(&rt2)).await?;
    let capacity = args.capacity.apply(&machine)?;
    let id = NodeIdentity::join(
        &join,
        &node_id,
        advertise,
        args.labels.clone(),
        capacity,
        features,
    )
    .await?;
    id.save(&args.root)?;
    tracing::info!(node = %node_id, controllers = ?id.file.controllers, "joined the cluster");
    Ok(id)
}

/// A running member: what its tasks share.
pub struct Member {
    pub st: AppState,
    pub node_id: String,
    pub client: Arc<ControllerClient>,
    pub registry_insecure: Vec<String>,
    pub node_netns: Option<PathBuf>,
    pub heartbeat_every: Duration,
    pub capacity: CapacityOverride,
}

/// Start the member's tasks on the current tokio runtime.
pub fn start(id: NodeIdentity, args: &ClusterArgs, st: AppState) -> Result<()> {
    let client = Arc::new(ControllerClient::new(
        tls::ca_client_config(&id.ca_pem)?,
        id.file.controllers.clone(),
        Some(id.file.api_token.clone()),
    )?);
    let member = Arc::new(Member {
        st,
        node_id: id.file.node_id.clone(),
        client,
        registry_insecure: args.registry_insecure.clone(),
        node_netns: args.node_netns.clone(),
        heartbeat_every: Duration::from_millis(id.file.heartbeat_interval_ms.clamp(100, 60_000)),
        capacity: args.capacity,
    });
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(heartbeat_loop(member.clone()));
    tokio::spawn(watch_loop(member.clone(), tx));
    tokio::spawn(reconcile::run(member.clone(), rx));
    let addr: SocketAddr = id
        .file
        .address
        .parse()
        .with_context(|| format!("malformed node address {:?}", id.file.address))?;
    let tls = tls::api_server_config(&id.ca_pem, &id.cert_pem, &id.key_pem)?;
    let listener = tls_api::bind(addr, args.node_netns.clone())
        .with_context(|| format!("cannot listen on the advertise address {addr}"))?;
    tokio::spawn(tls_api::serve(listener, tls, member.st.clone()));
    eprintln!("ready");
    tracing::info!(node = %member.node_id, %addr, "cluster member ready");
    Ok(())
}

fn boot_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Renew the lease every interval; refresh the controller list now and then.
async fn heartbeat_loop(m: Arc<Member>) {
    let boot = boot_id();
    let mut seq = 0u64;
    let rt = m.st.rt.clone();
    let facts = tokio::task::spawn_blocking(move || node_facts(&rt))
        .await
        .ok()
        .and_then(|(machine, f)| match m.capacity.apply(&machine) {
            Ok(c) => Some((c, f)),
            Err(e) => {
                tracing::error!(error = %e, "capacity not reported");
                None
            }
        });
    let mut failures = 0u32;
    loop {
        seq += 1;
        let rt = m.st.rt.clone();
        let running = tokio::task::spawn_blocking(move || rt.list())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.status == flotilla_runtime::runtime::Status::Running)
            .filter_map(|c| c.record.labels.get(INSTANCE_LABEL).cloned())
            .collect();
        let body = NodeHeartbeatRequest {
            seq,
            boot_id: boot.clone(),
            capacity: facts.as_ref().map(|f| f.0.clone()),
            features: facts.as_ref().map(|f| f.1.clone()),
            running,
        };
        let path = format!("/v1/nodes/{}/heartbeat", m.node_id);
        let r: Result<serde_json::Value> = m
            .client
            .call(Method::POST, &path, Some(&body), Duration::from_secs(5))
            .await;
        match r {
            Ok(_) => {
                if failures > 0 {
                    tracing::info!(node = %m.node_id, after = failures, "heartbeats accepted again");
                }
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(node = %m.node_id, error = %e, failures, "heartbeat failed");
                }
                if let Some(r) = e.downcast_ref::<Refused>() {
                    if r.status == reqwest::StatusCode::UNAUTHORIZED {
                        tracing::error!("the controllers refuse this node's token; re-join with a fresh data directory");
                    }
                }
            }
        }
        if seq % 30 == 1 || seq == 2 {
            refresh_controllers(&m).await;
        }
        tokio::time::sleep(m.heartbeat_every).await;
    }
}

/// Learn the controllers' API endpoints from the membership (new controllers, moved ones).
async fn refresh_controllers(m: &Member) {
    let r: Result<MembersResponse> = m
        .client
        .call(
            Method::GET,
            "/v1/cluster/members",
            None::<&()>,
            Duration::from_secs(5),
        )
        .await;
    if let Ok(members) = r {
        let list: Vec<String> = members
            .members
            .iter()
            .map(|x| format!("https://{}", x.api_addr))
            .collect();
        m.client.set_endpoints(list);
    }
}

/// Blocking query on the node's assignments, resuming from the last index; on an error it
/// backs off and asks the next controller.
async fn watch_loop(
    m: Arc<Member>,
    tx: tokio::sync::watch::Sender<Option<Vec<flotilla_api::cluster::InstanceRecord>>>,
) {
    let mut index = 0u64;
    let mut backoff = Duration::from_millis(200);
    loop {
        let path = if index == 0 {
            format!("/v1/instances?node={}", m.node_id)
        } else {
            format!("/v1/instances?node={}&index={index}&wait=30s", m.node_id)
        };
        let r: Result<InstanceList> = m
            .client
            .call(Method::GET, &path, None::<&()>, Duration::from_secs(40))
            .await;
        match r {
            Ok(list) => {
                backoff = Duration::from_millis(200);
                // An index going back means another controller with an older replica (or a
                // restored cluster): start over rather than wait for a future index.
                index = list.index;
                tx.send_replace(Some(list.items));
            }
            Err(e) => {
                // The client already moved on to the next controller unless this one refused.
                tracing::warn!(node = %m.node_id, error = %e, ?backoff, "assignment watch failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                index = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_overrides_replace_what_is_given_and_name_the_flag_when_wrong() {
        let machine = Capacity {
            cpu_millis: 2000,
            memory_bytes: 8 << 30,
        };
        let none = CapacityOverride::default().apply(&machine).unwrap();
        assert_eq!(
            (none.cpu_millis, none.memory_bytes),
            (machine.cpu_millis, machine.memory_bytes)
        );
        let c = CapacityOverride {
            cpu_millis: Some(500),
            memory_bytes: None,
        }
        .apply(&machine)
        .unwrap();
        assert_eq!((c.cpu_millis, c.memory_bytes), (500, 8 << 30));
        let e = CapacityOverride {
            cpu_millis: None,
            memory_bytes: Some(16 << 30),
        }
        .apply(&machine)
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--capacity-memory-bytes") && e.contains("more than"),
            "{e}"
        );
        let e = CapacityOverride {
            cpu_millis: Some(0),
            memory_bytes: None,
        }
        .apply(&machine)
        .unwrap_err()
        .to_string();
        assert!(e.contains("--capacity-cpu-millis"), "{e}");
    }
}
