//! Address management for one node's container subnet: pure logic, no I/O.
//!
//! Invariants (property-tested below): no two containers hold the same
//! address; every lease is inside the subnet and is never the network,
//! gateway or broadcast address. Allocation is next-fit from a persisted
//! cursor, so a released address is handed out again only after the rest of
//! the subnet was used (stale ARP and conntrack entries age out meanwhile).

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::subnet::Ipv4Net;

/// The address pool of one subnet with its leases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "IpamRaw", into = "IpamRaw")]
pub struct Ipam {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    cursor: u32,
    leases: BTreeMap<String, Ipv4Addr>,
    by_ip: BTreeMap<Ipv4Addr, String>,
}

/// On-disk form: the reverse index is rebuilt (and checked) on load.
#[derive(Serialize, Deserialize)]
struct IpamRaw {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    #[serde(default)]
    cursor: u32,
    #[serde(default)]
    leases: BTreeMap<String, Ipv4Addr>,
}

impl TryFrom<IpamRaw> for Ipam {
    type Error = NetError;
    fn try_from(r: IpamRaw) -> Result<Self, NetError> {
        let mut ipam = Ipam::new(r.subnet, r.gateway)?;
        ipam.cursor = r.cursor;
        for (id, ip) in r.leases {
            ipam.lease_specific(&id, ip)?;
        }
        Ok(ipam)
    }
}

impl From<Ipam> for IpamRaw {
    fn from(i: Ipam) -> Self {
        IpamRaw {
            subnet: i.subnet,
            gateway: i.gateway,
            cursor: i.cursor,
            leases: i.leases,
        }
    }
}

impl Ipam {
    /// An empty pool. The subnet must leave room for at least one container
    /// (prefix length at most 30) and contain the gateway as a host address.
    pub fn new(subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<Self, NetError> {
        if subnet.prefix() > 30 {
            return Err(NetError::InvalidSubnet {
                value: subnet.to_string(),
                reason: "prefix length must be at most 30",
            });
        }
        if !subnet.contains(gateway) || gateway == subnet.network() || gateway == subnet.broadcast()
        {
            return Err(NetError::GatewayOutsideSubnet { gateway, subnet });
        }
        Ok(Self {
            subnet,
            gateway,
            cursor: 0,
            leases: BTreeMap::new(),
            by_ip: BTreeMap::new(),
        })
    }

    /// The subnet addresses come from.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The gateway (never leased).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Whether `ip` may be leased to a container at all.
    pub fn is_usable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(ip)
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
            && ip != self.gateway
    }

    /// The lease of `id`, if any.
    pub fn get(&self, id: &str) -> Option<Ipv4Addr> {
        self.leases.get(id).copied()
    }

    /// The holder of `ip`, if any.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    /// All leases, by container id.
    pub fn leases(&self) -> &BTreeMap<String, Ipv4Addr> {
        &self.leases
    }

    /// The address of `id`: its existing lease, or the next free address.
    /// Returns the address and whether it was newly leased.
    pub fn allocate(&mut self, id: &str) -> Result<(Ipv4Addr, bool), NetError> {
        if let Some(ip) = self.get(id) {
            return Ok((ip, false));
        }
        let base = u32::from(self.subnet.network());
        // Host offsets are 1..=size-2 (network and broadcast excluded).
        let hosts = (self.subnet.size() - 2) as u32;
        let start = self.cursor.clamp(1, hosts);
        for step in 1..=hosts {
            let off = (start - 1 + step) % hosts + 1;
            let ip = Ipv4Addr::from(base + off);
            if ip != self.gateway && !self.by_ip.contains_key(&ip) {
                self.cursor = off;
                self.insert(id, ip);
                return Ok((ip, true));
            }
        }
        Err(NetError::SubnetExhausted {
            subnet: self.subnet,
        })
    }

    /// Leases exactly `ip` to `id` (a container that moves here keeps its
    /// address). Idempotent for the same pair; an error if the address is
    /// unusable, held by another container, or `id` already holds another.
    pub fn lease_specific(&mut self, id: &str, ip: Ipv4Addr) -> Result<bool, NetError> {
        if !self.is_usable(ip) {
            return Err(NetError::AddressOutOfRange {
                ip,
                subnet: self.subnet,
            });
        }
        match (self.get(id), self.holder(ip)) {
            (Some(have), _) if have == ip => Ok(false),
            (Some(have), _) => Err(NetError::AlreadyLeased {
                id: id.to_string(),
                ip: have,
            }),
            (None, Some(other)) => Err(NetError::AddressTaken {
                ip,
                holder: other.to_string(),
            }),
            (None, None) => {
                self.insert(id, ip);
                Ok(true)
            }
        }
    }

    fn insert(&mut self, id: &str, ip: Ipv4Addr) {
        self.leases.insert(id.to_string(), ip);
        self.by_ip.insert(ip, id.to_string());
    }

    /// Frees the lease of `id`, returning its address.
    pub fn release(&mut self, id: &str) -> Option<Ipv4Addr> {
        let ip = self.leases.remove(id)?;
        self.by_ip.remove(&ip);
        Some(ip)
    }

    /// Frees every lease whose container is not in `live`; returns them.
    pub fn reconcile<'a>(
        &mut self,
        live: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(String, Ipv4Addr)> {
        let live: HashSet<&str> = live.into_iter().collect();
        let dead: Vec<String> = self
            .leases
            .keys()
            .filter(|id| !live.contains(id.as_str()))
            .cloned()
            .collect();
        dead.into_iter()
            .filter_map(|id| self.release(&id).map(|ip| (id, ip)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(s: &str) -> Ipam {
        let n: Ipv4Net = s.parse().unwrap();
        Ipam::new(n, n.first_host()).unwrap()
    }

    #[test]
    fn allocates_in_order_skipping_gateway_and_is_idempotent() {
        let mut p = pool("198.19.1.0/24");
        assert_eq!(
            p.allocate("a").unwrap(),
            ("198.19.1.2".parse().unwrap(), true)
        );
        assert_eq!(
            p.allocate("b").unwrap(),
            ("198.19.1.3".parse().unwrap(), true)
        );
        assert_eq!(
            p.allocate("a").unwrap(),
            ("198.19.1.2".parse().unwrap(), false)
        );
    }

    #[test]
    fn released_address_is_not_reused_until_the_pool_wraps() {
        let mut p = pool("198.19.1.0/29"); // hosts .1-.6, gateway .1: 5 usable
        let a = p.allocate("a").unwrap().0;
        p.release("a");
        let b = p.allocate("b").unwrap().0;
        assert_ne!(a, b);
        for i in 0..4 {
            p.allocate(&format!("x{i}")).unwrap();
        }
        // b..x3 hold all five usable addresses now.
        let e = p.allocate("y").unwrap_err();
        assert!(e.to_string().contains("198.19.1.0/29"), "{e}");
        p.release("x0");
        assert!(p.allocate("y").is_ok());
    }

    #[test]
    fn lease_specific_rules() {
        let mut p = pool("198.19.1.0/24");
        let ip: Ipv4Addr = "198.19.1.50".parse().unwrap();
        assert!(p.lease_specific("m", ip).unwrap());
        assert!(!p.lease_specific("m", ip).unwrap());
        let e = p.lease_specific("n", ip).unwrap_err().to_string();
        assert!(e.contains("198.19.1.50") && e.contains('m'), "{e}");
        let e = p
            .lease_specific("m", "198.19.1.51".parse().unwrap())
            .unwrap_err();
        assert!(matches!(e, NetError::AlreadyLeased { .. }));
        for bad in ["198.19.1.0", "198.19.1.1", "198.19.1.255", "198.19.2.5"] {
            let e = p
                .lease_specific("z", bad.parse().unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad), "{e}");
        }
        // allocate never hands out the specific lease
        for i in 0..252 {
            let (got, _) = p.allocate(&format!("c{i}")).unwrap();
            assert_ne!(got, ip);
        }
        assert!(p.allocate("full").is_err());
    }

    #[test]
    fn reconcile_frees_dead_containers() {
        let mut p = pool("198.19.1.0/24");
        p.allocate("a").unwrap();
        p.allocate("b").unwrap();
        p.allocate("c").unwrap();
        let freed = p.reconcile(["b"]);
        let ids: Vec<_> = freed.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(p.leases().len(), 1);
        assert!(p.get("b").is_some());
    }

    #[test]
    fn serde_round_trip_and_corrupt_state_refused() {
        let mut p = pool("198.19.1.0/24");
        p.allocate("a").unwrap();
        p.allocate("b").unwrap();
        let j = serde_json::to_string(&p).unwrap();
        let q: Ipam = serde_json::from_str(&j).unwrap();
        assert_eq!(p, q);
        let dup = r#"{"subnet":"198.19.1.0/24","gateway":"198.19.1.1","cursor":3,
            "leases":{"a":"198.19.1.2","b":"198.19.1.2"}}"#;
        assert!(serde_json::from_str::<Ipam>(dup).is_err());
        let outside =
            r#"{"subnet":"198.19.1.0/24","gateway":"198.19.1.1","leases":{"a":"198.19.9.2"}}"#;
        assert!(serde_json::from_str::<Ipam>(outside).is_err());
    }

    #[test]
    fn new_validates() {
        let n: Ipv4Net = "198.19.1.0/31".parse().unwrap();
        assert!(Ipam::new(n, "198.19.1.1".parse().unwrap()).is_err());
        let n: Ipv4Net = "198.19.1.0/24".parse().unwrap();
        for gw in ["198.19.1.0", "198.19.1.255", "198.19.2.1"] {
            let e = Ipam::new(n, gw.parse().unwrap()).unwrap_err().to_string();
            assert!(e.contains(gw), "{e}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u8),
        Release(u8),
        Specific(u8, u8),
        Reconcile(Vec<u8>),
        Reload,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..40).prop_map(Op::Alloc),
            2 => (0u8..40).prop_map(Op::Release),
            1 => (0u8..40, any::<u8>()).prop_map(|(i, b)| Op::Specific(i, b)),
            1 => proptest::collection::vec(0u8..40, 0..20).prop_map(Op::Reconcile),
            1 => Just(Op::Reload),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any sequence of operations keeps the invariants; a model of which
        /// ids hold leases agrees with the pool.
        #[test]
        fn never_duplicates_never_leaves_the_subnet(
            prefix in 26u8..=30,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let subnet = Ipv4Net::new(Ipv4Addr::new(198, 19, 7, 0), prefix).unwrap();
            let mut p = Ipam::new(subnet, subnet.first_host()).unwrap();
            let capacity = (subnet.size() - 3) as usize;
            let mut model: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Alloc(i) => {
                        let id = format!("c{i}");
                        match p.allocate(&id) {
                            Ok((ip, new)) => {
                                prop_assert_eq!(new, !model.contains_key(&id));
                                if let Some(old) = model.get(&id) { prop_assert_eq!(*old, ip); }
                                model.insert(id, ip);
                            }
                            Err(NetError::SubnetExhausted { .. }) => {
                                prop_assert!(!model.contains_key(&id));
                                prop_assert_eq!(model.len(), capacity);
                            }
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Release(i) => {
                        let id = format!("c{i}");
                        prop_assert_eq!(p.release(&id), model.remove(&id));
                    }
                    Op::Specific(i, b) => {
                        let id = format!("c{i}");
                        let ip = Ipv4Addr::from(u32::from(subnet.network()) + u32::from(b));
                        let taken_by_other = model.iter().any(|(k, v)| *v == ip && *k != id);
                        let r = p.lease_specific(&id, ip);
                        if !p.is_usable(ip) || taken_by_other || model.get(&id).is_some_and(|v| *v != ip) {
                            prop_assert!(r.is_err());
                        } else {
                            prop_assert!(r.is_ok());
                            model.insert(id, ip);
                        }
                    }
                    Op::Reconcile(live) => {
                        let live: Vec<String> = live.iter().map(|i| format!("c{i}")).collect();
                        p.reconcile(live.iter().map(String::as_str));
                        model.retain(|k, _| live.contains(k));
                    }
                    Op::Reload => {
                        let j = serde_json::to_string(&p).unwrap();
                        p = serde_json::from_str(&j).unwrap();
                    }
                }
                prop_assert_eq!(p.leases(), &model);
                let ips: HashSet<Ipv4Addr> = p.leases().values().copied().collect();
                prop_assert_eq!(ips.len(), p.leases().len(), "duplicate address");
                for ip in ips {
                    prop_assert!(subnet.contains(ip));
                    prop_assert!(ip != subnet.network() && ip != subnet.broadcast() && ip != subnet.first_host());
                }
            }
        }
    }
}
