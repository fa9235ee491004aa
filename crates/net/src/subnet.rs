//! IPv4 prefixes (`198.19.1.0/24`) without an extra dependency.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::NetError;

/// An IPv4 network: the address is the network address (host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// A network from its address and prefix length; host bits must be zero.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        let bad = |reason: &'static str| NetError::InvalidSubnet {
            value: format!("{addr}/{prefix}"),
            reason,
        };
        if prefix > 32 {
            return Err(bad("prefix length must be at most 32"));
        }
        let net = Self { addr, prefix };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(bad("host bits must be zero"));
        }
        Ok(net)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The broadcast address (last address of the network).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// The first address after the network address (the default gateway).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(1))
    }

    /// Number of addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &'static str| NetError::InvalidSubnet {
            value: s.to_string(),
            reason,
        };
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| bad("prefix length is not a number"))?;
        Self::new(addr, prefix).map_err(|_| {
            if prefix > 32 {
                bad("prefix length must be at most 32")
            } else {
                bad("host bits must be zero")
            }
        })
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = NetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_properties() {
        let n: Ipv4Net = "198.19.3.0/24".parse().unwrap();
        assert_eq!(n.to_string(), "198.19.3.0/24");
        assert_eq!(n.broadcast(), Ipv4Addr::new(198, 19, 3, 255));
        assert_eq!(n.first_host(), Ipv4Addr::new(198, 19, 3, 1));
        assert!(n.contains(Ipv4Addr::new(198, 19, 3, 77)));
        assert!(!n.contains(Ipv4Addr::new(198, 19, 4, 1)));
        assert_eq!(n.size(), 256);
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(all.size(), 1 << 32);
    }

    #[test]
    fn rejects_bad_input_with_the_value() {
        for bad in [
            "198.19.3.1/24",
            "198.19.3.0",
            "198.19.3.0/33",
            "x/24",
            "198.19.3.0/x",
        ] {
            let e = bad.parse::<Ipv4Net>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn serde_as_string() {
        let n: Ipv4Net = "198.19.3.0/24".parse().unwrap();
        let j = serde_json::to_string(&n).unwrap();
        assert_eq!(j, "\"198.19.3.0/24\"");
        assert_eq!(serde_json::from_str::<Ipv4Net>(&j).unwrap(), n);
        assert!(serde_json::from_str::<Ipv4Net>("\"198.19.3.9/24\"").is_err());
    }
}
