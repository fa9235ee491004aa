//! Live node-network tests: a simulated host namespace running a
//! `NodeNetwork`, container namespaces, and an underlay namespace, all made
//! by the test and removed by guards (also on failure). Root required; under
//! CI=true a test that cannot run fails. Every address is inside
//! 198.18.0.0/15: underlay 198.18.0.0/24, containers 198.19.<n>.0/24.

mod common;

use std::net::Ipv4Addr;

use common::{has_link, live, published_rules, tcp_get, udp_get, veth_between, Host, Server};
use flotilla_net::{host_veth_name, mac_for_ip, NetError, NodeNetwork, PortMapping, Protocol};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_two_containers_reach_each_other() {
    if !live() {
        return;
    }
    let host = Host::new(11);
    let (c1, c2) = (host.container_ns("c1"), host.container_ns("c2"));
    let net = host.network().await;
    net.ensure().await.unwrap();
    net.ensure().await.expect("ensure is idempotent");

    tracing_phase("attach two containers");
    let a1 = net.attach("c1", &c1.path).await.unwrap();
    let a2 = net.attach("c2", &c2.path).await.unwrap();
    assert_eq!(a1.ip, ip("198.19.11.2"));
    assert_eq!(a2.ip, ip("198.19.11.3"));
    assert_eq!((a1.prefix, a1.gateway), (24, ip("198.19.11.1")));
    assert_eq!(a1.mac, mac_for_ip(a1.ip));
    assert_eq!(a1.host_veth, host_veth_name("c1"));
    assert!(has_link(&host.ns.path, &a1.host_veth));
    assert!(has_link(&host.ns.path, "flbr0"));
    assert!(has_link(&c1.path, "eth0"));
    assert_eq!(
        net.attach("c1", &c1.path).await.unwrap(),
        a1,
        "attach is idempotent"
    );

    tracing_phase("c2 reaches c1 by IP, c1 reaches its own loopback and the gateway's side");
    let _srv = Server::tcp(&c1.path, "0.0.0.0:8080", "hello from c1");
    let got = tcp_get(&c2.path, "198.19.11.2:8080").expect("c2 -> c1");
    assert!(got.starts_with("hello from c1 to 198.19.11.3:"), "{got}");
    let got = tcp_get(&c1.path, "127.0.0.1:8080").expect("loopback in c1");
    assert!(got.starts_with("hello from c1 to 127.0.0.1:"), "{got}");
    let got = tcp_get(&host.ns.path, "198.19.11.2:8080").expect("host -> c1");
    assert!(got.starts_with("hello from c1 to 198.19.11.1:"), "{got}");

    tracing_phase("detach removes the veth and frees the address");
    net.detach("c1").await.unwrap();
    net.detach("c1").await.expect("detach is idempotent");
    assert!(!has_link(&host.ns.path, &a1.host_veth));
    assert!(!has_link(&c1.path, "eth0"));
    assert!(net.attachment("c1").await.unwrap().is_none());
    assert!(tcp_get(&c2.path, "198.19.11.2:8080").is_err(), "c1 is gone");
    let leases = net.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases["c2"], a2.ip);

    net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_leases_survive_a_new_instance_and_reconcile_frees_dead_ones() {
    if !live() {
        return;
    }
    let host = Host::new(12);
    let (ca, cb, cc) = (
        host.container_ns("a"),
        host.container_ns("b"),
        host.container_ns("c"),
    );
    let (ia, ib) = {
        let net = host.network().await;
        net.ensure().await.unwrap();
        let a = net.attach("a", &ca.path).await.unwrap();
        let b = net.attach("b", &cb.path).await.unwrap();
        net.publish("b", PortMapping::tcp(18080, 80)).await.unwrap();
        (a.ip, b.ip)
    };
    // Simulated agent restart: a fresh instance on the same state directory.
    let net = host.network().await;
    net.ensure().await.unwrap();
    let leases = net.leases().await.unwrap();
    assert_eq!((leases["a"], leases["b"]), (ia, ib));
    assert_eq!(
        net.publications().await.unwrap()["b"],
        vec![PortMapping::tcp(18080, 80)]
    );
    assert_eq!(
        published_rules(&host.ns.path).unwrap().len(),
        1,
        "ensure re-renders published ports"
    );
    let c = net.attach("c", &cc.path).await.unwrap();
    assert!(c.ip != ia && c.ip != ib, "never handed out twice");
    assert_eq!(
        net.attach("a", &ca.path).await.unwrap().ip,
        ia,
        "same address after restart"
    );

    // A state file for another subnet is refused, naming the file.
    let mut other = host.cfg.clone();
    other.subnet = "198.19.99.0/24".parse().unwrap();
    let e = NodeNetwork::new(other).await.unwrap_err().to_string();
    assert!(
        e.contains("network.json") && e.contains("198.19.12.0/24"),
        "{e}"
    );

    // An orphaned veth on the bridge (say, from a crash after a lease was
    // freed) is deleted by reconcile too.
    let freed = net.reconcile(&["a".to_string()]).await.unwrap();
    let mut ids: Vec<_> = freed.iter().map(|(i, _)| i.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["b", "c"]);
    assert!(!has_link(&host.ns.path, &host_veth_name("b")));
    assert!(!has_link(&host.ns.path, &host_veth_name("c")));
    assert!(has_link(&host.ns.path, &host_veth_name("a")));
    assert!(net.publications().await.unwrap().is_empty());
    assert!(published_rules(&host.ns.path).unwrap().is_empty());
    net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_published_port_answers_from_the_host_side() {
    if !live() {
        return;
    }
    let host = Host::new(13);
    let (c1, c2) = (host.container_ns("c1"), host.container_ns("c2"));
    let ul = host.container_ns("ul");
    // Underlay: the host is 198.18.0.1, a client machine 198.18.0.9.
    veth_between(
        &host.ns.path,
        "eth0",
        "198.18.0.1",
        &ul.path,
        "eth0",
        "198.18.0.9",
    );
    let net = host.network().await;
    net.ensure().await.unwrap();
    let a1 = net.attach("c1", &c1.path).await.unwrap();
    net.attach("c2", &c2.path).await.unwrap();
    let _tcp = Server::tcp(&c1.path, "0.0.0.0:8080", "tcp from c1");
    let _udp = Server::udp(&c1.path, "0.0.0.0:5353", "udp from c1");

    // Not published yet: nothing listens on the host.
    assert!(tcp_get(&ul.path, "198.18.0.1:18080").is_err());

    net.publish("c1", PortMapping::tcp(18080, 8080))
        .await
        .unwrap();
    net.publish("c1", PortMapping::tcp(18080, 8080))
        .await
        .expect("same mapping twice is a no-op");
    net.publish("c1", PortMapping::udp(15353, 5353))
        .await
        .unwrap();
    let specific = PortMapping {
        host_ip: Some(ip("198.18.0.1")),
        ..PortMapping::tcp(18081, 8080)
    };
    net.publish("c1", specific).await.unwrap();

    // From another machine on the underlay: DNAT in prerouting; the
    // container sees the client's real address.
    let got = tcp_get(&ul.path, "198.18.0.1:18080").expect("underlay -> published tcp port");
    assert!(got.starts_with("tcp from c1 to 198.18.0.9:"), "{got}");
    let got = udp_get(&ul.path, "198.18.0.1:15353").expect("underlay -> published udp port");
    assert!(got.starts_with("udp from c1 to 198.18.0.9:"), "{got}");
    let got = tcp_get(&ul.path, "198.18.0.1:18081").expect("host_ip-specific mapping");
    assert!(got.starts_with("tcp from c1"), "{got}");
    // From the node itself (output chain).
    let got = tcp_get(&host.ns.path, "198.18.0.1:18080").expect("node -> its own published port");
    assert!(got.starts_with("tcp from c1"), "{got}");
    // Hairpin: a neighbour container through the node's address, masqueraded
    // to the gateway so the reply returns through the node. (A container
    // reaching its *own* published port this way is dropped by the kernel's
    // input routing once DNAT makes source == destination; see the crate
    // docs. It reaches itself directly instead.)
    let got = tcp_get(&c2.path, "198.18.0.1:18080").expect("c2 -> host port -> c1");
    assert!(got.starts_with("tcp from c1 to 198.19.13.1:"), "{got}");

    // Conflicts and bad ports are refused, naming the port.
    let e = net
        .publish("c2", PortMapping::tcp(18080, 80))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            NetError::PortInUse {
                port: 18080,
                protocol: Protocol::Tcp,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("18080") && e.to_string().contains("c1"),
        "{e}"
    );
    let e = net
        .publish("c2", PortMapping::tcp(0, 80))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("host_port 0"), "{e}");
    let e = net
        .publish("nobody", PortMapping::tcp(18090, 80))
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::NotAttached { .. }), "{e}");
    let rules = published_rules(&host.ns.path).unwrap();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert!(rules.iter().all(|(c, _)| c == "c1"), "{rules:?}");
    assert!(
        rules.iter().any(|(_, r)| r.contains(&a1.ip.to_string())),
        "{rules:?}"
    );

    // Unpublish stops it; the others stay.
    net.unpublish("c1", PortMapping::tcp(18080, 8080))
        .await
        .unwrap();
    assert!(
        tcp_get(&ul.path, "198.18.0.1:18080").is_err(),
        "unpublished port still answers"
    );
    assert!(udp_get(&ul.path, "198.18.0.1:15353").is_ok());
    let e = net
        .unpublish("c1", PortMapping::tcp(18080, 8080))
        .await
        .unwrap_err();
    assert!(
        matches!(e, NetError::NotPublished { port: 18080, .. }),
        "{e}"
    );

    // Detach removes the container's rules.
    net.detach("c1").await.unwrap();
    assert!(published_rules(&host.ns.path).unwrap().is_empty());
    assert!(udp_get(&ul.path, "198.18.0.1:15353").is_err());

    net.teardown().await.unwrap();
    assert!(
        published_rules(&host.ns.path).is_none(),
        "table removed by teardown"
    );
    assert!(!has_link(&host.ns.path, "flbr0"));
    assert!(!host.cfg.state_dir.join("network.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_lease_specific_keeps_the_address() {
    if !live() {
        return;
    }
    let host = Host::new(14);
    let (cm, cn) = (host.container_ns("m"), host.container_ns("n"));
    let net = host.network().await;
    net.ensure().await.unwrap();
    net.lease_specific("m", ip("198.19.14.77")).await.unwrap();
    net.lease_specific("m", ip("198.19.14.77"))
        .await
        .expect("idempotent");
    let a = net.attach("m", &cm.path).await.unwrap();
    assert_eq!(a.ip, ip("198.19.14.77"));
    let e = net
        .lease_specific("n", ip("198.19.14.77"))
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::AddressTaken { .. }), "{e}");
    assert!(e.to_string().contains("198.19.14.77"), "{e}");
    for bad in ["198.19.14.1", "198.19.14.255", "198.19.15.7"] {
        let e = net
            .lease_specific("n", ip(bad))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(bad), "{e}");
    }
    let b = net.attach("n", &cn.path).await.unwrap();
    assert_ne!(b.ip, a.ip);
    let _srv = Server::tcp(&cm.path, "198.19.14.77:9000", "m");
    assert!(tcp_get(&cn.path, "198.19.14.77:9000")
        .unwrap()
        .starts_with("m to "));
    net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_attach_failure_rolls_back() {
    if !live() {
        return;
    }
    let host = Host::new(15);
    let c = host.container_ns("c");
    let net = host.network().await;

    // Before ensure(): no bridge, so attach fails and keeps no lease.
    let e = net.attach("c", &c.path).await.unwrap_err();
    assert!(matches!(e, NetError::BridgeMissing { .. }), "{e}");
    assert!(net.leases().await.unwrap().is_empty());

    net.ensure().await.unwrap();
    // The container namespace already has an eth0 that is not ours.
    let x = host.container_ns("x"); // kept alive: its end of the pair holds c's eth0
    veth_between(
        &c.path,
        "eth0",
        "198.18.0.50",
        &x.path,
        "eth0",
        "198.18.0.51",
    );
    let e = net.attach("c", &c.path).await.unwrap_err();
    assert!(
        matches!(e, NetError::ContainerInterfaceExists { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("eth0"), "{e}");
    assert!(
        !has_link(&host.ns.path, &host_veth_name("c")),
        "no veth left"
    );
    assert!(net.leases().await.unwrap().is_empty(), "no lease left");

    // A namespace path that does not exist.
    let e = net
        .attach("d", &host.dir.path().join("missing"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    assert!(net.leases().await.unwrap().is_empty());

    // Invalid ids never reach the kernel.
    let e = net.attach("../x", &c.path).await.unwrap_err();
    assert!(matches!(e, NetError::InvalidContainerId { .. }), "{e}");
    net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reattach_into_a_recreated_namespace_keeps_the_address() {
    if !live() {
        return;
    }
    let host = Host::new(16);
    let peer = host.container_ns("peer");
    let net = host.network().await;
    net.ensure().await.unwrap();
    net.attach("peer", &peer.path).await.unwrap();
    let path = host.dir.path().join("restored");
    let first = {
        let ns = common::Netns { path: path.clone() };
        flotilla_net::netns::create_netns(&ns.path).unwrap();
        let a = net.attach("r", &ns.path).await.unwrap();
        drop(ns); // the namespace goes away (checkpoint): its veth pair dies with it
        a
    };
    // Restore: a new namespace at the same path, same container.
    let ns = common::Netns::new(host.dir.path(), "restored");
    let again = net.attach("r", &ns.path).await.unwrap();
    assert_eq!(again, first);
    let _srv = Server::tcp(&ns.path, "0.0.0.0:7000", "restored");
    assert!(tcp_get(&peer.path, &format!("{}:7000", first.ip))
        .unwrap()
        .starts_with("restored"));
    net.teardown().await.unwrap();
}

fn tracing_phase(what: &str) {
    eprintln!("--- {what}");
}
