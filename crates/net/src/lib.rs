//! Node networking for Flotilla: one bridge per node, a veth pair per
//! container, addresses from the node's subnet (persisted, never handed out
//! twice), `/etc/hosts` and `/etc/resolv.conf` content, and published ports
//! as nftables DNAT. Programmed with rtnetlink and nftables (JSON through
//! `nft -j`), never by running `ip`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flotilla_net::NetError> {
//! use flotilla_net::{NetConfig, NodeNetwork, PortMapping};
//! let cfg = NetConfig::new("flbr0", "198.19.1.0/24".parse()?, "/var/lib/flotilla/net");
//! let net = NodeNetwork::new(cfg).await?;
//! net.ensure().await?;
//! let att = net.attach("web-1", "/run/flotilla/netns/web-1".as_ref()).await?;
//! net.publish("web-1", PortMapping::tcp(8080, 80)).await?;
//! let hosts = flotilla_net::etc_hosts("web-1", att.ip.into());
//! # let _ = hosts;
//! net.detach("web-1").await?;
//! # Ok(()) }
//! ```
//!
//! Design notes:
//! - IPs are explicit (leases in `state_dir/network.json`), never derived from
//!   interface state, and the MAC is a function of the IP (`0a:58:` + the
//!   address), so a container that moves nodes keeps both
//!   ([`NodeNetwork::lease_specific`], then [`NodeNetwork::attach`]).
//! - The container end of the veth pair is created directly inside the
//!   container's namespace (`IFLA_NET_NS_FD` on the peer), named `eth0`: it
//!   never exists under a temporary name in the node's namespace.
//! - The nftables table is re-rendered whole from persisted state on every
//!   change (one `nft` transaction), so restarts and crashes converge.
//!
//! Known limitations:
//! - A container that connects to its *own* published port through a node
//!   address gets no answer: after DNAT the packet's source equals its
//!   destination and the kernel's input routing drops it (seen on 6.18 in
//!   `ip_rcv_finish_core`). Other containers (hairpin masquerade), the node
//!   itself and other machines work.
//! - Published ports on `127.0.0.1` are not forwarded (that needs
//!   `route_localnet`); IPv4 only.
//!
//! Module map: `node` (the [`NodeNetwork`] API), `worker` (the thread that
//! lives in the node's namespace and owns the netlink socket), `nl`
//! (rtnetlink helpers), `nft` (the table, rendered from state), `state`
//! (atomic, locked JSON), and the pure parts `ipam`, `ports`, `names`, `etc`,
//! `subnet`.

#![warn(missing_docs)]

mod error;
mod etc;
pub mod ipam;
mod names;
pub mod netns;
mod nft;
mod nl;
mod node;
mod ports;
mod state;
mod subnet;
mod worker;

pub use error::NetError;
pub use etc::{etc_hosts, resolv_conf};
pub use names::{
    host_veth_name, mac_for_ip, validate_container_id, Mac, CONTAINER_IFNAME, HOST_VETH_PREFIX,
};
pub use node::{Attachment, NetConfig, NodeNetwork, DEFAULT_NFT_TABLE};
pub use ports::{validate_mappings, PortMapping, Protocol};
pub use state::{NodeState, STATE_VERSION};
pub use subnet::Ipv4Net;
