//! Small rtnetlink helpers: lookups that treat "no such device" as `None`,
//! and attribute accessors.

use futures_util::StreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};

use crate::error::{errno, NetError};
use crate::names::Mac;

/// The link called `name`, if it exists.
pub(crate) async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let mut s = h.link().get().match_name(name).execute();
    match s.next().await {
        None => Ok(None),
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Some(Err(source)) => Err(NetError::Link {
            name: name.to_string(),
            op: "looking up",
            source: Box::new(source),
        }),
    }
}

/// Every link in the namespace.
pub(crate) async fn all_links(h: &Handle) -> Result<Vec<LinkMessage>, NetError> {
    let mut out = Vec::new();
    let mut s = h.link().get().execute();
    while let Some(m) = s.next().await {
        out.push(m.map_err(|source| NetError::Link {
            name: "*".into(),
            op: "listing",
            source: Box::new(source),
        })?);
    }
    Ok(out)
}

pub(crate) fn name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub(crate) fn alias(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.as_str()),
        _ => None,
    })
}

pub(crate) fn controller(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

pub(crate) fn mac(m: &LinkMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            let mut x = [0u8; 6];
            x.copy_from_slice(b);
            Some(Mac(x))
        }
        _ => None,
    })
}

pub(crate) fn kind(m: &LinkMessage) -> Option<&InfoKind> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// A veth pair: `host` in the node's namespace (bridge port, up; the
/// kernel ignores IFLA_IFALIAS on RTM_NEWLINK, so the alias is set
/// afterwards), the peer created directly inside the namespace behind `peer_ns_fd`, named
/// `peer_name` with `peer_mac`. The kernel creates both ends in one request,
/// so no half-made pair can exist and the peer never appears under a
/// temporary name in the node's namespace.
pub(crate) fn veth_message(
    host: &str,
    bridge_index: u32,
    mtu: Option<u32>,
    peer_name: &str,
    peer_mac: Mac,
    peer_ns_fd: std::os::fd::RawFd,
) -> LinkMessage {
    let mut peer = LinkUnspec::new_with_name(peer_name)
        .address(peer_mac.0.to_vec())
        .setns_by_fd(peer_ns_fd);
    if let Some(m) = mtu {
        peer = peer.mtu(m);
    }
    let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host)
        .controller(bridge_index)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
    if let Some(m) = mtu {
        b = b.mtu(m);
    }
    b.build()
}

/// Deletes a link by index; "no such device" is success.
pub(crate) async fn delete_link(h: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(source) => Err(NetError::Link {
            name: name.to_string(),
            op: "deleting",
            source: Box::new(source),
        }),
    }
}

/// Sets a link up by index.
pub(crate) async fn set_up(h: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|source| NetError::Link {
            name: name.to_string(),
            op: "setting up",
            source: Box::new(source),
        })
}
