//! [`NodeNetwork`]: the bridge, container veths, addresses and published
//! ports of one node.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use netlink_packet_route::link::InfoKind;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{errno, NetError};
use crate::ipam::Ipam;
use crate::names::{
    host_veth_name, mac_for_ip, validate_container_id, validate_ifname, Mac, CONTAINER_IFNAME,
    HOST_VETH_PREFIX,
};
use crate::netns::open_netns;
use crate::nft::{self, Plan, Publication};
use crate::nl;
use crate::ports::{check_new_mapping, PortMapping};
use crate::state::{NodeState, StateFile};
use crate::subnet::Ipv4Net;
use crate::worker::{Ctx, Worker};

/// Name of the nftables table (family `ip`) the node network owns.
pub const DEFAULT_NFT_TABLE: &str = "flotilla";

/// Configuration of one node's container network.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Bridge every container veth is attached to (≤ 15 bytes).
    pub bridge_name: String,
    /// The node's container subnet, e.g. `198.19.1.0/24`.
    pub subnet: Ipv4Net,
    /// Gateway (the bridge's address); `None` = the subnet's first address.
    pub gateway: Option<Ipv4Addr>,
    /// Where `network.json` (leases, published ports) lives.
    pub state_dir: PathBuf,
    /// The node's own network namespace; `None` = the process's. Tests pass
    /// a simulated host's namespace file.
    pub netns: Option<PathBuf>,
    /// Nameservers for containers' `resolv.conf`; empty = the gateway.
    pub nameservers: Vec<IpAddr>,
    /// Search domains for containers' `resolv.conf`.
    pub search: Vec<String>,
    /// MTU of the bridge and veths; `None` = kernel default (1500). An
    /// overlay (VXLAN: 1450) sets this.
    pub mtu: Option<u32>,
    /// Masquerade container traffic leaving the node (not to the subnet, not
    /// to `no_masquerade`).
    pub masquerade: bool,
    /// Destinations reached without masquerade (e.g. the cluster's pod
    /// range, so pod-to-pod traffic keeps its source address).
    pub no_masquerade: Vec<Ipv4Net>,
    /// nftables table name (family `ip`).
    pub nft_table: String,
    /// The `nft` binary.
    pub nft_program: PathBuf,
}

impl NetConfig {
    /// A configuration with defaults for everything else: gateway = first
    /// address, current namespace, masquerade on, table `flotilla`.
    pub fn new(
        bridge_name: impl Into<String>,
        subnet: Ipv4Net,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            bridge_name: bridge_name.into(),
            subnet,
            gateway: None,
            state_dir: state_dir.into(),
            netns: None,
            nameservers: Vec::new(),
            search: Vec::new(),
            mtu: None,
            masquerade: true,
            no_masquerade: Vec::new(),
            nft_table: DEFAULT_NFT_TABLE.to_string(),
            nft_program: PathBuf::from("nft"),
        }
    }

    /// The gateway in effect.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway.unwrap_or_else(|| self.subnet.first_host())
    }
}

/// A container's network identity on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The container.
    pub container_id: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Prefix length of the node subnet.
    pub prefix: u8,
    /// Default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// MAC of the container's interface (derived from the IP).
    pub mac: Mac,
    /// Host-side veth.
    pub host_veth: String,
    /// Interface name inside the container.
    pub ifname: String,
}

/// One node's container network: bridge, veths, IPAM, published ports.
///
/// All kernel work runs on a dedicated thread inside the node's network
/// namespace (see `worker.rs`); the methods are `async` and cheap to call
/// from any tokio task. State is persisted in `state_dir/network.json`, so a
/// new instance (agent restart) continues where the last one stopped.
pub struct NodeNetwork {
    cfg: Arc<NetConfig>,
    worker: Worker,
}

impl std::fmt::Debug for NodeNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeNetwork")
            .field("cfg", &self.cfg)
            .finish()
    }
}

fn attachment(cfg: &NetConfig, id: &str, ip: Ipv4Addr) -> Attachment {
    Attachment {
        container_id: id.to_string(),
        ip,
        prefix: cfg.subnet.prefix(),
        gateway: cfg.gateway(),
        mac: mac_for_ip(ip),
        host_veth: host_veth_name(id),
        ifname: CONTAINER_IFNAME.to_string(),
    }
}

/// Everything a job needs from the configuration, owned.
struct Op {
    cfg: Arc<NetConfig>,
    state: StateFile,
}

impl Op {
    fn new(cfg: &Arc<NetConfig>) -> Self {
        Self {
            cfg: cfg.clone(),
            state: StateFile::new(&cfg.state_dir),
        }
    }

    fn init(&self) -> NodeState {
        NodeState::new(
            Ipam::new(self.cfg.subnet, self.cfg.gateway()).expect("validated in NodeNetwork::new"),
        )
    }

    fn check(&self, st: &NodeState) -> Result<(), NetError> {
        check_state(&self.cfg, &self.state, st)
    }

    /// Load, change, write under the state lock.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut NodeState) -> Result<T, NetError>,
    ) -> Result<T, NetError> {
        self.state.update(|| self.init(), |s| self.check(s), f)
    }

    fn snapshot(&self) -> Result<NodeState, NetError> {
        match self.state.read()? {
            Some(s) => {
                self.check(&s)?;
                Ok(s)
            }
            None => Ok(self.init()),
        }
    }

    /// Renders the nftables table from `st` and applies it.
    fn sync_nft(&self, st: &NodeState, op: &'static str) -> Result<(), NetError> {
        let mut pubs = Vec::new();
        for (id, maps) in &st.ports {
            let Some(ip) = st.ipam.get(id) else {
                tracing::warn!(container_id = %id, "published ports without an address; skipped");
                continue;
            };
            pubs.extend(maps.iter().map(|m| Publication {
                container_id: id.clone(),
                container_ip: ip,
                mapping: *m,
            }));
        }
        let doc = nft::render(&Plan {
            table: &self.cfg.nft_table,
            bridge: &self.cfg.bridge_name,
            subnet: self.cfg.subnet,
            no_masquerade: &self.cfg.no_masquerade,
            masquerade: self.cfg.masquerade,
            publications: &pubs,
        });
        nft::apply(
            self.cfg.nft_program.as_os_str(),
            &self.cfg.nft_table,
            op,
            &doc,
        )?;
        tracing::debug!(table = %self.cfg.nft_table, publications = pubs.len(), "nftables table applied");
        Ok(())
    }

    async fn bridge_index(&self, h: &Handle) -> Result<u32, NetError> {
        match nl::link_by_name(h, &self.cfg.bridge_name).await? {
            Some(m) => Ok(m.header.index),
            None => Err(NetError::BridgeMissing {
                name: self.cfg.bridge_name.clone(),
            }),
        }
    }

    async fn ensure_bridge(&self, h: &Handle) -> Result<u32, NetError> {
        let name = &self.cfg.bridge_name;
        let gw = self.cfg.gateway();
        let mac = mac_for_ip(gw);
        let existing = nl::link_by_name(h, name).await?;
        let index = match existing {
            Some(m) => {
                if nl::kind(&m) != Some(&InfoKind::Bridge) {
                    return Err(NetError::WrongKind {
                        name: name.clone(),
                        kind: "bridge",
                    });
                }
                m.header.index
            }
            None => {
                let mut b = LinkBridge::new(name).address(mac.0.to_vec());
                if let Some(mtu) = self.cfg.mtu {
                    b = b.mtu(mtu);
                }
                match h.link().add(b.build()).execute().await {
                    Ok(()) => tracing::info!(bridge = %name, mac = %mac, "bridge created"),
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(source) => {
                        return Err(NetError::Link {
                            name: name.clone(),
                            op: "creating the bridge",
                            source: Box::new(source),
                        })
                    }
                }
                nl::link_by_name(h, name)
                    .await?
                    .ok_or_else(|| NetError::BridgeMissing { name: name.clone() })?
                    .header
                    .index
            }
        };
        let mut set = LinkUnspec::new_with_index(index)
            .address(mac.0.to_vec())
            .up();
        if let Some(mtu) = self.cfg.mtu {
            set = set.mtu(mtu);
        }
        h.link()
            .set(set.build())
            .execute()
            .await
            .map_err(|source| NetError::Link {
                name: name.clone(),
                op: "setting address and state",
                source: Box::new(source),
            })?;
        h.address()
            .add(index, IpAddr::V4(gw), self.cfg.subnet.prefix())
            .replace()
            .execute()
            .await
            .map_err(|source| NetError::Address {
                addr: format!("{gw}/{}", self.cfg.subnet.prefix()),
                name: name.clone(),
                op: "adding",
                source: Box::new(source),
            })?;
        Ok(index)
    }

    /// Deletes the host veth of `id` if it exists and is ours.
    async fn delete_host_veth(&self, h: &Handle, id: &str) -> Result<bool, NetError> {
        let host = host_veth_name(id);
        let Some(m) = nl::link_by_name(h, &host).await? else {
            return Ok(false);
        };
        match nl::alias(&m) {
            Some(a) if !a.is_empty() && a != id => {
                tracing::warn!(host_veth = %host, owner = %a, container_id = %id, "veth belongs to another container; left alone");
                Ok(false)
            }
            _ => {
                nl::delete_link(h, m.header.index, &host).await?;
                Ok(true)
            }
        }
    }

    /// The kernel part of `attach`. On error, whatever this call created is
    /// removed again.
    async fn plumb(
        &self,
        ctx: &Ctx,
        id: &str,
        netns: &Path,
        ip: Ipv4Addr,
    ) -> Result<Attachment, NetError> {
        let att = attachment(&self.cfg, id, ip);
        let h = &ctx.handle;
        let bridge = self.bridge_index(h).await?;
        let ns_file = open_netns(netns)?;
        let cns = ctx.connect_in(netns)?;
        let ch = &cns.handle;

        let mut host = nl::link_by_name(h, &att.host_veth).await?;
        let eth0 = nl::link_by_name(ch, CONTAINER_IFNAME).await?;
        if let Some(m) = &host {
            match nl::alias(m) {
                Some(a) if !a.is_empty() && a != id => {
                    return Err(NetError::InterfaceTaken {
                        name: att.host_veth.clone(),
                        owner: a.to_string(),
                    });
                }
                _ => {}
            }
            let reusable = eth0.as_ref().is_some_and(|e| nl::mac(e) == Some(att.mac));
            if !reusable {
                // The peer is elsewhere (an older namespace of this container,
                // or a half-made earlier attempt): start over.
                tracing::info!(container_id = %id, host_veth = %att.host_veth, "replacing stale veth");
                nl::delete_link(h, m.header.index, &att.host_veth).await?;
                host = None;
            }
        }
        let created = host.is_none();
        if created {
            if eth0.is_some() {
                return Err(NetError::ContainerInterfaceExists {
                    name: CONTAINER_IFNAME.into(),
                    netns: netns.to_path_buf(),
                });
            }
            let msg = nl::veth_message(
                &att.host_veth,
                bridge,
                self.cfg.mtu,
                CONTAINER_IFNAME,
                att.mac,
                ns_file.as_raw_fd(),
            );
            h.link()
                .add(msg)
                .execute()
                .await
                .map_err(|source| NetError::Link {
                    name: att.host_veth.clone(),
                    op: "creating the veth pair",
                    source: Box::new(source),
                })?;
        }
        let r = self.configure(h, ch, &att, bridge, netns).await;
        if r.is_err() && created {
            if let Ok(Some(m)) = nl::link_by_name(h, &att.host_veth).await {
                let _ = nl::delete_link(h, m.header.index, &att.host_veth).await;
            }
        }
        r.map(|()| att)
    }

    async fn configure(
        &self,
        h: &Handle,
        ch: &Handle,
        att: &Attachment,
        bridge: u32,
        netns: &Path,
    ) -> Result<(), NetError> {
        let host = nl::link_by_name(h, &att.host_veth).await?.ok_or_else(|| {
            NetError::InterfaceVanished {
                name: att.host_veth.clone(),
            }
        })?;
        h.link()
            .set(
                LinkUnspec::new_with_index(host.header.index)
                    .alias(att.container_id.clone())
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| NetError::Link {
                name: att.host_veth.clone(),
                op: "attaching to the bridge",
                source: Box::new(source),
            })?;

        let eth0 = nl::link_by_name(ch, CONTAINER_IFNAME)
            .await?
            .ok_or_else(|| NetError::ContainerInterfaceMissing {
                name: CONTAINER_IFNAME.into(),
                netns: netns.to_path_buf(),
            })?;
        let idx = eth0.header.index;
        ch.address()
            .add(idx, IpAddr::V4(att.ip), att.prefix)
            .replace()
            .execute()
            .await
            .map_err(|source| NetError::Address {
                addr: format!("{}/{}", att.ip, att.prefix),
                name: CONTAINER_IFNAME.into(),
                op: "adding",
                source: Box::new(source),
            })?;
        nl::set_up(ch, idx, CONTAINER_IFNAME).await?;
        if let Some(lo) = nl::link_by_name(ch, "lo").await? {
            nl::set_up(ch, lo.header.index, "lo").await?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(att.gateway)
            .output_interface(idx)
            .build();
        ch.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|source| NetError::Route {
                route: format!("default via {} dev {CONTAINER_IFNAME}", att.gateway),
                netns: netns.display().to_string(),
                op: "adding",
                source: Box::new(source),
            })?;
        Ok(())
    }
}

fn check_state(cfg: &NetConfig, sf: &StateFile, st: &NodeState) -> Result<(), NetError> {
    if st.ipam.subnet() != cfg.subnet || st.ipam.gateway() != cfg.gateway() {
        return Err(NetError::SubnetChanged {
            path: sf.path(),
            found: st.ipam.subnet(),
            found_gateway: st.ipam.gateway(),
            expected: cfg.subnet,
            expected_gateway: cfg.gateway(),
        });
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    let cur = std::fs::read_to_string(path).map_err(|source| NetError::Sysctl {
        path: path.into(),
        source,
    })?;
    if cur.trim() == value {
        return Ok(());
    }
    std::fs::write(path, value).map_err(|source| NetError::Sysctl {
        path: path.into(),
        source,
    })
}

impl NodeNetwork {
    /// Validates the configuration and the persisted state (if any) and
    /// starts the worker thread in the node's namespace. Changes nothing in
    /// the kernel: call [`NodeNetwork::ensure`] next.
    pub async fn new(cfg: NetConfig) -> Result<Self, NetError> {
        validate_ifname(&cfg.bridge_name)?;
        Ipam::new(cfg.subnet, cfg.gateway())?;
        if let Some(st) = StateFile::new(&cfg.state_dir).read()? {
            check_state(&cfg, &StateFile::new(&cfg.state_dir), &st)?;
        }
        let worker = Worker::start(cfg.netns.clone()).await?;
        Ok(Self {
            cfg: Arc::new(cfg),
            worker,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Idempotently makes the node ready: the bridge exists with its fixed
    /// MAC (derived from the gateway), is up and has the gateway address;
    /// `net.ipv4.ip_forward=1`; the nftables table is rendered from the
    /// persisted published ports.
    pub async fn ensure(&self) -> Result<(), NetError> {
        let op = Op::new(&self.cfg);
        self.worker
            .run(move |ctx| async move {
                let idx = op.ensure_bridge(&ctx.handle).await?;
                write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
                let st = op.snapshot()?;
                op.sync_nft(&st, "applying")?;
                tracing::info!(bridge = %op.cfg.bridge_name, index = idx, subnet = %op.cfg.subnet, gateway = %op.cfg.gateway(), "node network ready");
                Ok(())
            })
            .await
    }

    /// Gives the container an interface `eth0` in the namespace at `netns`,
    /// with its leased address (a new one if it has none), loopback up and a
    /// default route via the gateway. Idempotent: calling it again returns
    /// the same attachment and repairs what is missing. If the container's
    /// namespace was replaced (restore), the old veth is replaced. On error
    /// nothing this call created is left (no veth, no new lease).
    pub async fn attach(&self, container_id: &str, netns: &Path) -> Result<Attachment, NetError> {
        validate_container_id(container_id)?;
        let op = Op::new(&self.cfg);
        let id = container_id.to_string();
        let netns = netns.to_path_buf();
        self.worker
            .run(move |ctx: Rc<Ctx>| async move {
                let (ip, new) = op.update(|s| s.ipam.allocate(&id))?;
                match op.plumb(&ctx, &id, &netns, ip).await {
                    Ok(att) => {
                        tracing::info!(container_id = %id, ip = %ip, host_veth = %att.host_veth, netns = %netns.display(), new_lease = new, "container attached");
                        Ok(att)
                    }
                    Err(e) => {
                        if new {
                            if let Err(e2) = op.update(|s| Ok(s.ipam.release(&id))) {
                                tracing::error!(container_id = %id, ip = %ip, error = %e2, "releasing the lease after a failed attach");
                            }
                        }
                        tracing::warn!(container_id = %id, ip = %ip, error = %e, "attach failed; rolled back");
                        Err(e)
                    }
                }
            })
            .await
    }

    /// Leases exactly `ip` to the container (one that moved here keeps its
    /// address); `attach` then uses it. Errors if the address is outside the
    /// usable range, leased to another container, or the container holds a
    /// different address.
    pub async fn lease_specific(&self, container_id: &str, ip: Ipv4Addr) -> Result<(), NetError> {
        validate_container_id(container_id)?;
        let op = Op::new(&self.cfg);
        let id = container_id.to_string();
        self.worker
            .run(move |_| async move {
                let new = op.update(|s| s.ipam.lease_specific(&id, ip))?;
                tracing::info!(container_id = %id, ip = %ip, new_lease = new, "specific address leased");
                Ok(())
            })
            .await
    }

    /// Removes the container's veth (its `eth0` goes with it), its published
    /// ports and its lease. Idempotent.
    pub async fn detach(&self, container_id: &str) -> Result<(), NetError> {
        validate_container_id(container_id)?;
        let op = Op::new(&self.cfg);
        let id = container_id.to_string();
        self.worker
            .run(move |ctx| async move {
                let deleted = op.delete_host_veth(&ctx.handle, &id).await?;
                let ip = op.update(|s| {
                    let had_ports = s.ports.remove(&id).is_some();
                    let ip = s.ipam.release(&id);
                    if had_ports {
                        op.sync_nft(s, "removing published ports")?;
                    }
                    Ok(ip)
                })?;
                tracing::info!(container_id = %id, ip = ?ip, veth_deleted = deleted, "container detached");
                Ok(())
            })
            .await
    }

    /// Forwards `mapping.host_port` on the node to the container's
    /// `container_port` (DNAT for traffic arriving from outside and for the
    /// node's own traffic, masquerade for hairpin). The container must hold
    /// an address. Publishing the same mapping twice is a no-op; a host port
    /// already published (by anyone) is an error naming the port.
    pub async fn publish(&self, container_id: &str, mapping: PortMapping) -> Result<(), NetError> {
        validate_container_id(container_id)?;
        let op = Op::new(&self.cfg);
        let id = container_id.to_string();
        let mapping = mapping.normalized();
        self.worker
            .run(move |_| async move {
                let new = op.update(|s| {
                    if s.ipam.get(&id).is_none() {
                        return Err(NetError::NotAttached { id: id.clone() });
                    }
                    if !check_new_mapping(&id, &mapping, &s.ports)? {
                        return Ok(false);
                    }
                    s.ports.entry(id.clone()).or_default().push(mapping);
                    op.sync_nft(s, "publishing a port")?;
                    Ok(true)
                })?;
                tracing::info!(container_id = %id, mapping = %mapping, new, "port published");
                Ok(())
            })
            .await
    }

    /// Stops forwarding a published port (matched by protocol, host port and
    /// host address).
    pub async fn unpublish(
        &self,
        container_id: &str,
        mapping: PortMapping,
    ) -> Result<(), NetError> {
        validate_container_id(container_id)?;
        let op = Op::new(&self.cfg);
        let id = container_id.to_string();
        self.worker
            .run(move |_| async move {
                op.update(|s| {
                    let maps = s.ports.entry(id.clone()).or_default();
                    let before = maps.len();
                    maps.retain(|m| !m.same_key(&mapping));
                    let removed = maps.len() != before;
                    if maps.is_empty() {
                        s.ports.remove(&id);
                    }
                    if !removed {
                        return Err(NetError::NotPublished {
                            id: id.clone(),
                            port: mapping.host_port,
                            protocol: mapping.protocol,
                        });
                    }
                    op.sync_nft(s, "unpublishing a port")
                })?;
                tracing::info!(container_id = %id, mapping = %mapping, "port unpublished");
                Ok(())
            })
            .await
    }

    /// Frees the leases and published ports of every container not in
    /// `live_container_ids`, deletes their veths, and deletes any `fl*` veth
    /// on the bridge that belongs to no lease. Returns the freed leases.
    pub async fn reconcile(
        &self,
        live_container_ids: &[String],
    ) -> Result<Vec<(String, Ipv4Addr)>, NetError> {
        let op = Op::new(&self.cfg);
        let live: HashSet<String> = live_container_ids.iter().cloned().collect();
        self.worker
            .run(move |ctx| async move {
                let h = &ctx.handle;
                let dead: Vec<String> = op.snapshot()?.ipam.leases().keys().filter(|id| !live.contains(*id)).cloned().collect();
                for id in &dead {
                    op.delete_host_veth(h, id).await?;
                }
                let (freed, leased) = op.update(|s| {
                    let freed = s.ipam.reconcile(live.iter().map(String::as_str));
                    let before = s.ports.len();
                    s.ports.retain(|id, _| live.contains(id));
                    if s.ports.len() != before {
                        op.sync_nft(s, "removing published ports")?;
                    }
                    let leased: HashSet<String> = s.ipam.leases().keys().cloned().collect();
                    Ok((freed, leased))
                })?;
                // Orphans: our veths on our bridge that no lease explains.
                if let Ok(bridge) = op.bridge_index(h).await {
                    for l in nl::all_links(h).await? {
                        let name = nl::name(&l).unwrap_or_default();
                        let ours = name.starts_with(HOST_VETH_PREFIX) && nl::controller(&l) == Some(bridge);
                        let explained = nl::alias(&l).is_some_and(|a| leased.contains(a) && host_veth_name(a) == name);
                        if ours && !explained {
                            tracing::info!(host_veth = %name, alias = ?nl::alias(&l), "deleting orphaned veth");
                            nl::delete_link(h, l.header.index, name).await?;
                        }
                    }
                }
                for (id, ip) in &freed {
                    tracing::info!(container_id = %id, ip = %ip, "lease of a vanished container freed");
                }
                Ok(freed)
            })
            .await
    }

    /// The attachment of a container, from the persisted lease (no kernel
    /// access).
    pub async fn attachment(&self, container_id: &str) -> Result<Option<Attachment>, NetError> {
        let op = Op::new(&self.cfg);
        let id = container_id.to_string();
        self.worker
            .run(move |_| async move {
                Ok(op
                    .snapshot()?
                    .ipam
                    .get(&id)
                    .map(|ip| attachment(&op.cfg, &id, ip)))
            })
            .await
    }

    /// All leases by container id.
    pub async fn leases(&self) -> Result<BTreeMap<String, Ipv4Addr>, NetError> {
        let op = Op::new(&self.cfg);
        self.worker
            .run(move |_| async move { Ok(op.snapshot()?.ipam.leases().clone()) })
            .await
    }

    /// Published ports by container id.
    pub async fn publications(&self) -> Result<BTreeMap<String, Vec<PortMapping>>, NetError> {
        let op = Op::new(&self.cfg);
        self.worker
            .run(move |_| async move { Ok(op.snapshot()?.ports) })
            .await
    }

    /// `/etc/resolv.conf` for containers on this node: the configured
    /// nameservers, or the gateway.
    pub fn resolv_conf(&self) -> String {
        let gw = [IpAddr::V4(self.cfg.gateway())];
        let ns: &[IpAddr] = if self.cfg.nameservers.is_empty() {
            &gw
        } else {
            &self.cfg.nameservers
        };
        crate::etc::resolv_conf(ns, &self.cfg.search)
    }

    /// Removes everything this node network made: container veths on the
    /// bridge, the bridge, the nftables table and the state files. For tests
    /// and node decommissioning.
    pub async fn teardown(&self) -> Result<(), NetError> {
        let op = Op::new(&self.cfg);
        self.worker
            .run(move |ctx| async move {
                let h = &ctx.handle;
                if let Some(br) = nl::link_by_name(h, &op.cfg.bridge_name).await? {
                    for l in nl::all_links(h).await? {
                        let name = nl::name(&l).unwrap_or_default();
                        if name.starts_with(HOST_VETH_PREFIX) && nl::controller(&l) == Some(br.header.index) {
                            nl::delete_link(h, l.header.index, name).await?;
                        }
                    }
                    nl::delete_link(h, br.header.index, &op.cfg.bridge_name).await?;
                }
                let st = op.state.read().ok().flatten();
                if let Some(st) = st {
                    for id in st.ipam.leases().keys() {
                        op.delete_host_veth(h, id).await?;
                    }
                }
                nft::apply(op.cfg.nft_program.as_os_str(), &op.cfg.nft_table, "deleting", &nft::render_delete(&op.cfg.nft_table))?;
                op.state.remove()?;
                tracing::info!(bridge = %op.cfg.bridge_name, table = %op.cfg.nft_table, "node network torn down");
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent spawns these futures on a multi-threaded runtime: they must
    /// be `Send`, and the handle shareable. (Compile-time check.)
    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures_are_send(n: &NodeNetwork) {
        fn send<T: Send>(_: T) {}
        fn shared<T: Send + Sync>() {}
        shared::<NodeNetwork>();
        send(n.ensure());
        send(n.attach("a", Path::new("/x")));
        send(n.detach("a"));
        send(n.publish("a", PortMapping::tcp(1, 1)));
        send(n.unpublish("a", PortMapping::tcp(1, 1)));
        send(n.reconcile(&[]));
        send(n.lease_specific("a", Ipv4Addr::LOCALHOST));
        send(n.teardown());
        send(NodeNetwork::new(NetConfig::new(
            "b",
            "198.19.0.0/24".parse().unwrap(),
            "/x",
        )));
    }

    #[test]
    fn config_defaults() {
        let c = NetConfig::new("flbr0", "198.19.4.0/24".parse().unwrap(), "/tmp/x");
        assert_eq!(c.gateway(), Ipv4Addr::new(198, 19, 4, 1));
        assert_eq!(c.nft_table, "flotilla");
        assert!(c.masquerade && c.netns.is_none());
        let a = attachment(&c, "web-1", Ipv4Addr::new(198, 19, 4, 9));
        assert_eq!(a.mac.to_string(), "0a:58:c6:13:04:09");
        assert_eq!(
            (a.prefix, a.gateway, a.ifname.as_str()),
            (24, Ipv4Addr::new(198, 19, 4, 1), "eth0")
        );
        assert_eq!(a.host_veth, host_veth_name("web-1"));
    }

    #[tokio::test]
    async fn new_validates_before_touching_anything() {
        let d = tempfile::tempdir().unwrap();
        let mut c = NetConfig::new(
            "this-name-is-too-long",
            "198.19.4.0/24".parse().unwrap(),
            d.path(),
        );
        let e = NodeNetwork::new(c.clone()).await.unwrap_err().to_string();
        assert!(e.contains("this-name-is-too-long"), "{e}");
        c.bridge_name = "flbr0".into();
        c.gateway = Some(Ipv4Addr::new(198, 19, 5, 1));
        let e = NodeNetwork::new(c.clone()).await.unwrap_err().to_string();
        assert!(
            e.contains("198.19.5.1") && e.contains("198.19.4.0/24"),
            "{e}"
        );
        c.gateway = None;
        c.netns = Some(d.path().join("missing"));
        let e = NodeNetwork::new(c).await.unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
