//! Deterministic names and hardware addresses.
//!
//! Everything here is a pure function of the container id or of the IP, so a
//! restarted agent (or the node a container migrates to) derives the same
//! values without consulting interface state.

use std::fmt;
use std::net::Ipv4Addr;

use crate::error::NetError;

/// Prefix of every host-side container veth.
pub const HOST_VETH_PREFIX: &str = "fl";
/// Name of the container's interface inside its network namespace.
pub const CONTAINER_IFNAME: &str = "eth0";

/// Container ids follow the runtime's rule: 1-128 of `[A-Za-z0-9_.-]`,
/// starting with a letter or digit (safe as a file name, nft comment and
/// interface alias).
pub fn validate_container_id(id: &str) -> Result<(), NetError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidContainerId { id: id.to_string() })
    }
}

/// Linux interface names: 1-15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidInterfaceName {
            name: name.to_string(),
        })
    }
}

/// 64-bit FNV-1a: stable across Rust versions and processes (unlike
/// `DefaultHasher`), which the name must be.
fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Host-side veth of a container: `fl` + 12 hex digits of a hash of the id
/// (14 bytes, under the 15-byte limit). The id is also stored as the
/// interface alias, so a hash collision is detected, not silently shared.
pub fn host_veth_name(container_id: &str) -> String {
    let h = fnv1a64(container_id.as_bytes()) & 0xffff_ffff_ffff;
    format!("{HOST_VETH_PREFIX}{h:012x}")
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The MAC of an address on a Flotilla bridge: `0a:58:` + the four IPv4
/// bytes (locally administered, unicast; the same convention as Kubernetes'
/// bridge plugins). Used for container interfaces and for the bridge itself
/// (with the gateway address), so a migrated container keeps its MAC too and
/// the gateway's MAC is known to every node without asking.
pub fn mac_for_ip(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    Mac([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_short_stable_and_distinct() {
        let a = host_veth_name("web-1");
        assert_eq!(a, host_veth_name("web-1"));
        assert!(a.starts_with("fl") && a.len() == 14, "{a}");
        validate_ifname(&a).unwrap();
        let long = "x".repeat(128);
        assert_eq!(host_veth_name(&long).len(), 14);
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            assert!(seen.insert(host_veth_name(&format!("c-{i}"))));
        }
        // Pinned so a change of the hash (which would orphan veths of running
        // containers after an upgrade) fails loudly.
        assert_eq!(
            host_veth_name("web-1"),
            format!("fl{:012x}", fnv1a64(b"web-1") & 0xffff_ffff_ffff)
        );
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn container_ids() {
        for ok in ["a", "web-1.a_b", &"x".repeat(128)] {
            validate_container_id(ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "a\n", &"x".repeat(129), "ä"] {
            let e = validate_container_id(bad).unwrap_err().to_string();
            assert!(e.contains("container id"), "{e}");
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["flbr0", "br-x", "a23456789012345"] {
            validate_ifname(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a234567890123456"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macs_from_ips() {
        let m = mac_for_ip(Ipv4Addr::new(198, 19, 1, 7));
        assert_eq!(m.to_string(), "0a:58:c6:13:01:07");
        // locally administered, unicast
        assert_eq!(m.0[0] & 0b11, 0b10);
    }
}
