//! Real packets through the plugin's rules, in a pair of scratch namespaces: a "node" where the
//! plugin runs and a "pod" namespace on a veth pair holding two endpoint addresses, each served
//! by a tiny TCP/UDP server that answers with its name. (The shared lab in `tests/` runs the
//! full packet-flow table; this is the plugin's own smoke proof.)

mod support;

use kproxy_plugin_api::{ChangeSet, Plugin, Protocol, ProxyState};
use kproxy_plugin_nftables::sample::{self, PortBuilder};
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};
use support::{changes, dataplane, Netns};

const POD_A: &str = "10.244.1.5";
const POD_B: &str = "10.244.1.6";

/// The node and pod namespaces, wired: node `vp0` 10.244.1.1/24 <-> pod `eth0` with both pod
/// addresses; services (10.96.0.0/16) are routed towards the pod side so connects can start.
fn lab() -> Option<(Netns, Netns)> {
    let node = Netns::create()?;
    let pod = Netns::create().expect("second namespace");
    let veth_node = format!("v{}", &node.name[node.name.len().min(6)..]);
    let veth_node: String = veth_node.chars().take(12).collect();
    let veth_pod = format!("{veth_node}p");
    node.exec(&[
        "ip", "link", "add", &veth_node, "type", "veth", "peer", "name", &veth_pod,
    ]);
    node.exec(&["ip", "link", "set", &veth_pod, "netns", &pod.name]);
    node.exec(&["ip", "addr", "add", "10.244.1.1/24", "dev", &veth_node]);
    node.exec(&["ip", "link", "set", &veth_node, "up"]);
    node.exec(&["ip", "route", "add", "10.96.0.0/16", "dev", &veth_node]);
    // IPv6 only as far as the node: enough to see how a rejected connection is answered.
    for cmd in [
        format!("ip -6 addr add fd00:244:0:1::1/64 dev {veth_node} nodad"),
        format!("ip -6 route add fd00:96::/112 dev {veth_node}"),
    ] {
        node.exec(&cmd.split(' ').collect::<Vec<_>>());
    }
    pod.exec(&["ip", "link", "set", &veth_pod, "name", "eth0"]);
    pod.exec(&["ip", "addr", "add", &format!("{POD_A}/24"), "dev", "eth0"]);
    pod.exec(&["ip", "addr", "add", &format!("{POD_B}/24"), "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    pod.exec(&["ip", "route", "add", "default", "via", "10.244.1.1"]);
    Some((node, pod))
}

fn state(endpoints: &[&str]) -> ProxyState {
    let mut web = PortBuilder::new("default", "web", "", Protocol::Tcp, "10.96.0.10", 80);
    let mut dns = PortBuilder::new("default", "dns", "", Protocol::Udp, "10.96.0.53", 53);
    for ep in endpoints {
        web = web.endpoint(ep, 8080, true);
        dns = dns.endpoint(ep, 5353, true);
    }
    let empty = PortBuilder::new("default", "empty", "", Protocol::Tcp, "10.96.0.40", 80);
    let empty6 = PortBuilder::new("default", "empty6", "", Protocol::Tcp, "fd00:96::40", 80);
    sample::state(vec![
        web.build(),
        dns.build(),
        empty.build(),
        empty6.build(),
    ])
}

/// What a TCP request to `addr` got.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Answered(String),
    Refused,
    TimedOut,
}

fn request(addr: &str) -> Outcome {
    let addr: SocketAddr = addr.parse().unwrap();
    match TcpStream::connect_timeout(&addr, Duration::from_millis(700)) {
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).expect("read answer");
            Outcome::Answered(answer)
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            Outcome::TimedOut
        }
        Err(e) => panic!("connect {addr}: {e}"),
    }
}

/// Serves TCP 8080 and UDP 5353 on both pod addresses until `stop`; each answers
/// `<name> <peer address>`.
fn serve(stop: &AtomicBool) {
    std::thread::scope(|s| {
        for (name, ip) in [("pod-a", POD_A), ("pod-b", POD_B)] {
            let tcp = TcpListener::bind((ip, 8080)).expect("bind tcp");
            tcp.set_nonblocking(true).unwrap();
            let udp = UdpSocket::bind((ip, 5353)).expect("bind udp");
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match tcp.accept() {
                        Ok((mut conn, peer)) => {
                            let _ = conn.write_all(format!("{name} {}", peer.ip()).as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
            s.spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(name.as_bytes(), peer);
                    }
                }
            });
        }
    });
}

#[test]
fn packets_follow_the_rules() {
    let Some((node, pod)) = lab() else { return };
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| pod.run(|| serve(&stop)));
        std::thread::sleep(Duration::from_millis(200));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            node.run(|| {
                let mut dp = dataplane(sample::settings(), "");
                let full = ChangeSet {
                    full: true,
                    changed: Default::default(),
                };
                let two = state(&[POD_A, POD_B]);
                dp.sync(&two, &full).expect("full sync");

                // A cluster IP spreads over both endpoints.
                let mut seen = std::collections::BTreeMap::new();
                for _ in 0..60 {
                    match request("10.96.0.10:80") {
                        Outcome::Answered(a) => {
                            *seen
                                .entry(a.split(' ').next().unwrap().to_string())
                                .or_insert(0) += 1
                        }
                        other => panic!("cluster IP: {other:?}"),
                    }
                }
                assert_eq!(seen.len(), 2, "both endpoints answer: {seen:?}");
                assert!(seen.values().all(|n| *n >= 10), "roughly even: {seen:?}");

                // No endpoints: rejected. A port the service lacks: rejected. An unallocated
                // address in the service CIDR: dropped.
                assert_eq!(request("10.96.0.40:80"), Outcome::Refused);
                assert_eq!(request("10.96.0.10:81"), Outcome::Refused);
                assert_eq!(request("10.96.7.7:80"), Outcome::TimedOut);
                // IPv6 too, at once: an ICMPv6 error that reaches the connecting socket while
                // connect() still holds it is ignored, so TCP must be answered with a reset.
                for _ in 0..3 {
                    assert_eq!(request("[fd00:96::40]:80"), Outcome::Refused);
                }

                // UDP: one flow, then its endpoint goes away; the stale conntrack entry must
                // be deleted so the same client socket reaches the remaining endpoint.
                let one_a = state(&[POD_A]);
                dp.sync(&one_a, &changes(false, &two, &one_a)).unwrap();
                let client = UdpSocket::bind("10.244.1.1:40053").unwrap();
                client
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .unwrap();
                let ask = |client: &UdpSocket| {
                    client.send_to(b"hi", "10.96.0.53:53").unwrap();
                    let mut buf = [0u8; 64];
                    let (n, _) = client.recv_from(&mut buf).expect("UDP answer");
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                };
                assert_eq!(ask(&client), "pod-a");
                let one_b = state(&[POD_B]);
                dp.sync(&one_b, &changes(false, &one_a, &one_b)).unwrap();
                assert_eq!(
                    ask(&client),
                    "pod-b",
                    "stale conntrack entry was not cleaned"
                );
                assert!(dp.counters().conntrack_deleted >= 1);

                // Back to the previous state in one incremental sync: traffic still flows.
                dp.sync(&two, &changes(false, &one_b, &two)).unwrap();
                assert!(matches!(request("10.96.0.10:80"), Outcome::Answered(_)));
            })
        }));
        stop.store(true, Ordering::SeqCst);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    });
}
