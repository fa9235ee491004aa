//! Errors of the node network. Messages are lowercase, name the interface,
//! address, port or file concerned, and never repeat their `#[source]`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::ports::Protocol;
use crate::subnet::Ipv4Net;

/// Everything that can go wrong in `flotilla-net`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // the fields are what the messages name
pub enum NetError {
    /// A subnet string or prefix was malformed.
    #[error("invalid subnet {value:?}: {reason}")]
    InvalidSubnet { value: String, reason: &'static str },
    /// The gateway is not a host address of the subnet.
    #[error("gateway {gateway} is not a host address of {subnet}")]
    GatewayOutsideSubnet { gateway: Ipv4Addr, subnet: Ipv4Net },
    /// A container id breaks the naming rule.
    #[error(
        "invalid container id {id:?} (1-128 of [A-Za-z0-9_.-], starting with a letter or digit)"
    )]
    InvalidContainerId { id: String },
    /// An interface name breaks the kernel's rule.
    #[error("invalid interface name {name:?} (1-15 bytes, no '/', ':' or whitespace)")]
    InvalidInterfaceName { name: String },
    /// A port number out of range.
    #[error("invalid {field} {port}: must be 1-65535")]
    InvalidPort { field: &'static str, port: u16 },
    /// The host port is already published.
    #[error("host port {port}/{protocol} is already published by container {holder}")]
    PortInUse {
        port: u16,
        protocol: Protocol,
        holder: String,
    },
    /// Two mappings in one request claim the same host port.
    #[error("host port {port}/{protocol} appears twice")]
    DuplicatePort { port: u16, protocol: Protocol },
    /// `unpublish` of a port that is not published for the container.
    #[error("host port {port}/{protocol} is not published by container {id}")]
    NotPublished {
        id: String,
        port: u16,
        protocol: Protocol,
    },
    /// The container has no address on this node.
    #[error("container {id} has no address on this node")]
    NotAttached { id: String },
    /// No free address left.
    #[error("no free address left in {subnet}")]
    SubnetExhausted { subnet: Ipv4Net },
    /// A requested address cannot be leased at all.
    #[error("address {ip} is not a usable container address of {subnet}")]
    AddressOutOfRange { ip: Ipv4Addr, subnet: Ipv4Net },
    /// A requested address is held by another container.
    #[error("address {ip} is already leased to container {holder}")]
    AddressTaken { ip: Ipv4Addr, holder: String },
    /// The container already holds a different address.
    #[error("container {id} already holds address {ip}")]
    AlreadyLeased { id: String, ip: Ipv4Addr },
    /// Reading, writing or locking the state file failed.
    #[error("network state {path}: {op}")]
    State {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The state file does not parse or breaks an invariant.
    #[error("network state {path} is corrupt")]
    CorruptState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The state file was written for another subnet or gateway.
    #[error("network state {path} belongs to subnet {found} (gateway {found_gateway}), not {expected} (gateway {expected_gateway})")]
    SubnetChanged {
        path: PathBuf,
        found: Ipv4Net,
        found_gateway: Ipv4Addr,
        expected: Ipv4Net,
        expected_gateway: Ipv4Addr,
    },
    /// Opening or entering a network namespace failed.
    #[error("network namespace {path}: {op}")]
    Netns {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A netlink operation on an interface failed.
    #[error("interface {name}: {op}")]
    Link {
        name: String,
        op: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// The bridge does not exist (call `ensure` first).
    #[error("bridge {name} does not exist (ensure() creates it)")]
    BridgeMissing { name: String },
    /// The container interface vanished while it was being configured.
    #[error("interface {name} is missing in network namespace {netns}")]
    ContainerInterfaceMissing { name: String, netns: PathBuf },
    /// A host interface vanished while it was being configured.
    #[error("interface {name} vanished while it was being configured")]
    InterfaceVanished { name: String },
    /// The interface exists with another kind than expected.
    #[error("interface {name} exists but is not a {kind}")]
    WrongKind { name: String, kind: &'static str },
    /// The host veth name is in use by another container (hash collision or
    /// a foreign interface).
    #[error("interface {name} already belongs to {owner:?}")]
    InterfaceTaken { name: String, owner: String },
    /// The container's namespace already has an interface of that name that
    /// is not ours.
    #[error(
        "interface {name} already exists in network namespace {netns} and is not this container's"
    )]
    ContainerInterfaceExists { name: String, netns: PathBuf },
    /// An address operation failed.
    #[error("address {addr} on interface {name}: {op}")]
    Address {
        addr: String,
        name: String,
        op: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A route operation failed.
    #[error("route {route} in network namespace {netns}: {op}")]
    Route {
        route: String,
        netns: String,
        op: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Writing a sysctl failed.
    #[error("sysctl {path}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Running `nft` failed or it refused the rule set.
    #[error("nftables table {table}: {op}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Nft {
        table: String,
        op: &'static str,
        stderr: String,
        #[source]
        source: Option<Box<nftables::helper::NftablesError>>,
    },
    /// The worker thread of this node network is gone.
    #[error("node network worker thread {op}")]
    Worker { op: &'static str },
}

/// The errno of a netlink error, if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}
