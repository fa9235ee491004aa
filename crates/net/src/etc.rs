//! `/etc/hosts` and `/etc/resolv.conf` content for a container. The agent
//! writes these files into the container; this module only renders them.

use std::fmt::Write;
use std::net::IpAddr;

/// `/etc/hosts`: loopback names plus the container's own hostname on its IP.
pub fn etc_hosts(hostname: &str, ip: IpAddr) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    let host = hostname.trim();
    if !host.is_empty() {
        // A dotted hostname also answers to its first label.
        match host.split_once('.') {
            Some((short, _)) if !short.is_empty() => {
                let _ = writeln!(s, "{ip}\t{host} {short}");
            }
            _ => {
                let _ = writeln!(s, "{ip}\t{host}");
            }
        }
    }
    s
}

/// `/etc/resolv.conf` with the given nameservers (at most three are used, the
/// resolver's limit) and optional search domains.
pub fn resolv_conf(nameservers: &[IpAddr], search: &[String]) -> String {
    let mut s = String::new();
    if !search.is_empty() {
        let _ = writeln!(s, "search {}", search.join(" "));
    }
    for ns in nameservers.iter().take(3) {
        let _ = writeln!(s, "nameserver {ns}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file() {
        let h = etc_hosts("web-1", "198.19.1.2".parse().unwrap());
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(h.ends_with("198.19.1.2\tweb-1\n"), "{h}");
        let h = etc_hosts("web-1.prod.local", "198.19.1.2".parse().unwrap());
        assert!(h.ends_with("198.19.1.2\tweb-1.prod.local web-1\n"), "{h}");
        let h = etc_hosts("", "198.19.1.2".parse().unwrap());
        assert!(!h.contains("198.19.1.2"), "{h}");
    }

    #[test]
    fn resolv_file() {
        let ns: Vec<IpAddr> = ["198.19.1.1", "198.18.0.53", "198.18.0.54", "198.18.0.55"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let r = resolv_conf(&ns, &["svc.local".into()]);
        assert_eq!(
            r,
            "search svc.local\nnameserver 198.19.1.1\nnameserver 198.18.0.53\nnameserver 198.18.0.54\n"
        );
        assert_eq!(resolv_conf(&[], &[]), "");
    }
}
