//! Published ports: types and the pure validation rules.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::NetError;

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The nftables / `/etc/services` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host port forwarded to a container port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortMapping {
    /// Port on the node (1-65535).
    pub host_port: u16,
    /// Port inside the container (1-65535).
    pub container_port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Only traffic to this node address is forwarded; `None` (or 0.0.0.0)
    /// means every non-loopback address of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
}

impl PortMapping {
    /// A TCP mapping on every node address.
    pub fn tcp(host_port: u16, container_port: u16) -> Self {
        Self {
            host_port,
            container_port,
            protocol: Protocol::Tcp,
            host_ip: None,
        }
    }

    /// A UDP mapping on every node address.
    pub fn udp(host_port: u16, container_port: u16) -> Self {
        Self {
            host_port,
            container_port,
            protocol: Protocol::Udp,
            host_ip: None,
        }
    }

    /// `0.0.0.0` is the same as no address.
    pub(crate) fn normalized(mut self) -> Self {
        if self.host_ip == Some(Ipv4Addr::UNSPECIFIED) {
            self.host_ip = None;
        }
        self
    }

    /// Whether both would claim the same packets.
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        let (a, b) = (self.normalized(), other.normalized());
        a.protocol == b.protocol
            && a.host_port == b.host_port
            && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
    }

    /// Same publication (what `unpublish` matches on).
    pub(crate) fn same_key(&self, other: &PortMapping) -> bool {
        let (a, b) = (self.normalized(), other.normalized());
        a.protocol == b.protocol && a.host_port == b.host_port && a.host_ip == b.host_ip
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(ip) => write!(f, "{ip}:{}", self.host_port)?,
            None => write!(f, "{}", self.host_port)?,
        }
        write!(f, "->{}/{}", self.container_port, self.protocol)
    }
}

/// Checks one mapping against the ports already published on the node (all
/// containers). Returns `Ok(true)` if it is new, `Ok(false)` if the same
/// container already publishes exactly this mapping.
pub fn check_new_mapping(
    container_id: &str,
    m: &PortMapping,
    published: &BTreeMap<String, Vec<PortMapping>>,
) -> Result<bool, NetError> {
    if m.host_port == 0 {
        return Err(NetError::InvalidPort {
            field: "host_port",
            port: m.host_port,
        });
    }
    if m.container_port == 0 {
        return Err(NetError::InvalidPort {
            field: "container_port",
            port: m.container_port,
        });
    }
    let m = m.normalized();
    for (holder, maps) in published {
        for p in maps {
            if holder == container_id && *p == m {
                return Ok(false);
            }
            if p.conflicts_with(&m) {
                return Err(NetError::PortInUse {
                    port: m.host_port,
                    protocol: m.protocol,
                    holder: holder.clone(),
                });
            }
        }
    }
    Ok(true)
}

/// Validates a whole set of mappings for one container (e.g. from a container
/// spec) before anything is applied: each port in range, no two conflicting.
pub fn validate_mappings(maps: &[PortMapping]) -> Result<(), NetError> {
    for (i, m) in maps.iter().enumerate() {
        if m.host_port == 0 {
            return Err(NetError::InvalidPort {
                field: "host_port",
                port: 0,
            });
        }
        if m.container_port == 0 {
            return Err(NetError::InvalidPort {
                field: "container_port",
                port: 0,
            });
        }
        if let Some(d) = maps[..i].iter().find(|o| o.conflicts_with(m)) {
            return Err(NetError::DuplicatePort {
                port: d.host_port,
                protocol: d.protocol,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts() {
        let a = PortMapping::tcp(8080, 80);
        let mut b = PortMapping::tcp(8080, 81);
        assert!(a.conflicts_with(&b));
        b.protocol = Protocol::Udp;
        assert!(!a.conflicts_with(&b));
        let mut c = PortMapping::tcp(8080, 80);
        c.host_ip = Some("198.18.0.1".parse().unwrap());
        assert!(a.conflicts_with(&c));
        let mut d = c;
        d.host_ip = Some("198.18.0.2".parse().unwrap());
        assert!(!c.conflicts_with(&d));
        let mut z = a;
        z.host_ip = Some(Ipv4Addr::UNSPECIFIED);
        assert!(z.same_key(&a));
    }

    #[test]
    fn checks_name_the_port() {
        let mut pubs = BTreeMap::new();
        pubs.insert("a".to_string(), vec![PortMapping::tcp(8080, 80)]);
        assert!(!check_new_mapping("a", &PortMapping::tcp(8080, 80), &pubs).unwrap());
        assert!(check_new_mapping("a", &PortMapping::udp(8080, 80), &pubs).unwrap());
        let e = check_new_mapping("b", &PortMapping::tcp(8080, 90), &pubs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("8080") && e.contains("tcp") && e.contains('a'),
            "{e}"
        );
        let e = check_new_mapping("a", &PortMapping::tcp(8080, 81), &pubs).unwrap_err();
        assert!(matches!(e, NetError::PortInUse { port: 8080, .. }));
        let e = check_new_mapping("b", &PortMapping::tcp(0, 80), &pubs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("host_port") && e.contains('0'), "{e}");
        let e = check_new_mapping("b", &PortMapping::tcp(1, 0), &pubs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("container_port"), "{e}");
    }

    #[test]
    fn validate_a_set() {
        validate_mappings(&[
            PortMapping::tcp(80, 80),
            PortMapping::udp(80, 80),
            PortMapping::tcp(443, 443),
        ])
        .unwrap();
        let e = validate_mappings(&[PortMapping::tcp(80, 80), PortMapping::tcp(80, 81)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("80/tcp"), "{e}");
        assert!(validate_mappings(&[PortMapping::tcp(65535, 1)]).is_ok());
    }

    #[test]
    fn serde_shape() {
        let m = PortMapping::tcp(8080, 80);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"host_port":8080,"container_port":80,"protocol":"tcp"}"#
        );
    }
}
