//! Self-tests of the namespace lab: its links, routes and servers work as the packet-flow suite
//! assumes, it tells REJECT from DROP, it cleans up, and labs run side by side.
//!
//! Needs root (`CI=true` turns a missing privilege into a failure); the host's namespace is
//! never touched.

use kproxy_plugin_api::{IpFamily, Protocol};
use kproxy_tests::lab::{netns, Lab, LabConfig, Outcome, Place};
use std::net::{IpAddr, SocketAddr};

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];
const PROTOS: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

fn pod(name: &str) -> Place {
    Place::Pod(name.into())
}

/// Asserts that `pod_name` answered and saw `source` as the client address.
#[track_caller]
fn assert_answer(outcome: &Outcome, pod_name: &str, source: IpAddr, port: u16) {
    match outcome {
        Outcome::Answered {
            pod,
            source: seen,
            port: p,
        } => {
            assert_eq!(pod, pod_name, "{outcome}");
            assert_eq!(seen.ip(), source, "{outcome}");
            assert_eq!(*p, port, "{outcome}");
        }
        other => panic!("expected an answer from {pod_name}, got: {other}"),
    }
}

#[test]
fn pods_nodes_and_clients_reach_each_other_in_both_families() {
    let Some(lab) = Lab::start_or_skip(LabConfig::default()) else {
        return;
    };
    let plan = lab.plan().clone();
    let ip = |p: &str, f| plan.pod(p).unwrap().ip.get(f);
    for family in FAMILIES {
        for proto in PROTOS {
            for port in [8080, 9090] {
                // pod <-> pod on the same node
                let o = lab.request(
                    &pod("pod-a"),
                    SocketAddr::new(ip("pod-b", family), port),
                    proto,
                    None,
                );
                assert_answer(&o, "pod-b", ip("pod-a", family), port);
                // node -> pod: the node's source is its underlay address (the route's src)
                let o = lab.request(
                    &Place::Node,
                    SocketAddr::new(ip("pod-c", family), port),
                    proto,
                    None,
                );
                assert_answer(&o, "pod-c", plan.node_underlay.get(family), port);
                // remote pod from the node and from a local pod
                let o = lab.request(
                    &Place::Node,
                    SocketAddr::new(ip("pod-r", family), port),
                    proto,
                    None,
                );
                assert_answer(&o, "pod-r", plan.node_underlay.get(family), port);
                let o = lab.request(
                    &pod("pod-a"),
                    SocketAddr::new(ip("pod-r", family), port),
                    proto,
                    None,
                );
                assert_answer(&o, "pod-r", ip("pod-a", family), port);
                // and back: remote pod -> local pod
                let o = lab.request(
                    &pod("pod-r"),
                    SocketAddr::new(ip("pod-a", family), port),
                    proto,
                    None,
                );
                assert_answer(&o, "pod-a", ip("pod-r", family), port);
                // external client -> pod through the node, with and without the blocked source
                let o = lab.request(
                    &Place::External,
                    SocketAddr::new(ip("pod-a", family), port),
                    proto,
                    None,
                );
                assert_answer(&o, "pod-a", plan.external_client.get(family), port);
                let blocked = plan.blocked_client.get(family);
                let o = lab.request(
                    &Place::External,
                    SocketAddr::new(ip("pod-r", family), port),
                    proto,
                    Some(blocked),
                );
                assert_answer(&o, "pod-r", blocked, port);
            }
        }
    }
}

#[test]
fn external_clients_reach_the_node_addresses() {
    let Some(lab) = Lab::start_or_skip(LabConfig::default()) else {
        return;
    };
    lab.serve(&Place::Node, "node", &[7000]).unwrap();
    let plan = lab.plan().clone();
    for family in FAMILIES {
        for node_ip in [
            plan.node_external.get(family),
            plan.node_underlay.get(family),
        ] {
            for proto in PROTOS {
                let o = lab.request(
                    &Place::External,
                    SocketAddr::new(node_ip, 7000),
                    proto,
                    None,
                );
                assert_answer(&o, "node", plan.external_client.get(family), 7000);
            }
        }
        // A pod reaches the node too, from its own address.
        let o = lab.request(
            &pod("pod-b"),
            SocketAddr::new(plan.node_underlay.get(family), 7000),
            Protocol::Tcp,
            None,
        );
        assert_answer(&o, "node", plan.pod("pod-b").unwrap().ip.get(family), 7000);
    }
}

#[test]
fn refused_and_dropped_are_told_apart() {
    let Some(mut lab) = Lab::start_or_skip(LabConfig::default()) else {
        return;
    };
    let scratch = lab.add_scratch("fw").unwrap();
    lab.serve(&scratch, "scratch", &[8080, 9090]).unwrap();
    // Only this scratch namespace gets a firewall: drop 9090, on both families and protocols.
    lab.exec_ok(
        &scratch,
        &[
            "nft",
            "add table inet lab; add chain inet lab input { type filter hook input priority 0; }; \
             add rule inet lab input meta l4proto { tcp, udp } th dport 9090 drop",
        ],
    )
    .unwrap();
    for (lo, family) in [("127.0.0.1", IpFamily::V4), ("::1", IpFamily::V6)] {
        let lo: IpAddr = lo.parse().unwrap();
        for proto in PROTOS {
            let o = lab.request(&scratch, SocketAddr::new(lo, 8080), proto, None);
            assert_answer(&o, "scratch", lo, 8080);
            assert_eq!(
                lab.request(&scratch, SocketAddr::new(lo, 7777), proto, None),
                Outcome::Refused,
                "{family:?} {proto:?}"
            );
            assert_eq!(
                lab.request(&scratch, SocketAddr::new(lo, 9090), proto, None),
                Outcome::TimedOut,
                "{family:?} {proto:?}"
            );
        }
    }
    // A drop in the sender's own output path shows as a local drop for UDP.
    lab.exec_ok(
        &scratch,
        &[
            "nft",
            "add chain inet lab output { type filter hook output priority 0; }; \
             add rule inet lab output udp dport 8080 drop",
        ],
    )
    .unwrap();
    let o = lab.request(
        &scratch,
        "127.0.0.1:8080".parse().unwrap(),
        Protocol::Udp,
        None,
    );
    assert!(o.is_dropped(), "{o}");
    // The firewall stayed inside the scratch namespace: the node still has no ruleset.
    let node_rules = lab
        .exec_ok(&Place::Node, &["nft", "list", "ruleset"])
        .unwrap();
    assert!(!node_rules.contains("table inet lab"), "{node_rules}");
}

#[test]
fn spread_counts_every_answer() {
    let Some(lab) = Lab::start_or_skip(LabConfig::default()) else {
        return;
    };
    let dst = SocketAddr::new(lab.plan().pod("pod-a").unwrap().ip.v4.into(), 8080);
    let tally = lab.spread(&Place::Node, dst, Protocol::Tcp, 200);
    assert_eq!(tally.sent, 200, "{tally}");
    assert_eq!(tally.answered.get("pod-a"), Some(&200), "{tally}");
    assert_eq!(tally.sources.len(), 1, "{tally}");
    // A closed port: every request refused, and the helper gives up early.
    let closed = SocketAddr::new(dst.ip(), 7777);
    let tally = lab.spread(&Place::Node, closed, Protocol::Udp, 1000);
    assert!(
        tally.stopped_early && tally.refused == tally.sent,
        "{tally}"
    );
}

#[test]
fn commands_and_closures_run_inside_the_namespace() {
    let Some(lab) = Lab::start_or_skip(LabConfig::default()) else {
        return;
    };
    let routes = lab.exec_ok(&Place::Node, &["ip", "route"]).unwrap();
    assert!(routes.contains("10.244.2.0/24 via 10.10.0.2"), "{routes}");
    assert!(routes.contains("10.244.1.10 dev vp0"), "{routes}");
    // A process spawned from a closure inherits the namespace.
    let addrs = lab
        .run_in(&pod("pod-a"), || {
            std::process::Command::new("ip")
                .args(["-br", "addr"])
                .output()
        })
        .unwrap()
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains("10.244.1.10/32"), "{addrs}");
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("60");
    let child = lab.spawn_in(&Place::Node, cmd).unwrap();
    let node_ns = lab.ns(&Place::Node).unwrap().to_string();
    assert!(netns::pids(&node_ns).contains(&(child.id() as i32)));
    // Dropping the lab ends the process it started inside.
    let pid = child.id();
    drop(lab);
    let mut child = child;
    let status = child.wait().unwrap();
    assert!(!status.success(), "sleep {pid} was killed, not finished");
}

#[test]
fn drop_removes_every_namespace_even_after_a_panic() {
    if Lab::start_or_skip(LabConfig::default()).is_none() {
        return;
    }
    let names = std::thread::spawn(|| {
        let lab = Lab::new(LabConfig::default()).unwrap();
        let names = lab.namespaces().to_vec();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _lab = lab;
            panic!("a test failing inside the lab");
        }));
        assert!(result.is_err());
        names
    })
    .join()
    .unwrap();
    assert!(names.len() >= 7, "{names:?}");
    let left = netns::list();
    for name in &names {
        assert!(!left.contains(name), "{name} still exists");
    }
}

#[test]
fn two_labs_run_side_by_side() {
    let Some(one) = Lab::start_or_skip(LabConfig::default()) else {
        return;
    };
    let two = Lab::new(LabConfig {
        local_pods: vec!["other".into()],
        remote_pods: vec![],
        ..LabConfig::default()
    })
    .unwrap();
    assert_ne!(one.prefix(), two.prefix());
    // The same address answers with a different pod in each lab: they are isolated.
    let dst: SocketAddr = "10.244.1.10:8080".parse().unwrap();
    assert_eq!(
        one.request(&Place::Node, dst, Protocol::Tcp, None).pod(),
        Some("pod-a")
    );
    assert_eq!(
        two.request(&Place::Node, dst, Protocol::Tcp, None).pod(),
        Some("other")
    );
}

/// A deliberately tiny dataplane for proving the packet-flow runner: cluster IPs only, random
/// DNAT to ready endpoints, masquerade for sources outside the cluster CIDR — no hairpin, no
/// REJECT. Written as nft text applied in the lab's node namespace.
struct MiniNft<'a> {
    lab: &'a Lab,
}

impl MiniNft<'_> {
    fn ruleset(objects: &[serde_json::Value]) -> String {
        let mut chains = Vec::new();
        let mut rules = Vec::new();
        for svc in objects.iter().filter(|o| o["kind"] == "Service") {
            let name = svc["metadata"]["name"].as_str().unwrap();
            let slices: Vec<&serde_json::Value> = objects
                .iter()
                .filter(|o| {
                    o["kind"] == "EndpointSlice"
                        && o["metadata"]["labels"]["kubernetes.io/service-name"] == name
                })
                .collect();
            for (ci, cip) in svc["spec"]["clusterIPs"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                let cip: IpAddr = cip.as_str().unwrap().parse().unwrap();
                let (fam, addr_type, cluster) = if cip.is_ipv4() {
                    ("ip", "IPv4", "10.244.0.0/16")
                } else {
                    ("ip6", "IPv6", "fd00:10:244::/56")
                };
                for port in svc["spec"]["ports"].as_array().unwrap() {
                    let proto = port["protocol"].as_str().unwrap().to_lowercase();
                    let mut eps = Vec::new();
                    for slice in slices.iter().filter(|s| s["addressType"] == addr_type) {
                        let target = slice["ports"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .find(|p| p["name"] == port["name"])
                            .unwrap()["port"]
                            .clone();
                        for ep in slice["endpoints"].as_array().unwrap() {
                            if ep["conditions"]["ready"] == true {
                                eps.push(SocketAddr::new(
                                    ep["addresses"][0].as_str().unwrap().parse().unwrap(),
                                    target.as_u64().unwrap() as u16,
                                ));
                            }
                        }
                    }
                    if eps.is_empty() {
                        continue;
                    }
                    let chain = format!("svc-{name}-{ci}-{}", port["name"].as_str().unwrap());
                    let mut vmap = Vec::new();
                    for (i, ep) in eps.iter().enumerate() {
                        chains.push(format!(
                            "chain {chain}-{i} {{ meta l4proto {proto} dnat {fam} to {ep}; }}"
                        ));
                        vmap.push(format!("{i} : goto {chain}-{i}"));
                    }
                    chains.push(format!(
                        "chain {chain} {{ numgen random mod {} vmap {{ {} }}; }}",
                        eps.len(),
                        vmap.join(", ")
                    ));
                    let m = format!("{fam} daddr {cip} {proto} dport {}", port["port"]);
                    rules.push(format!("{m} {fam} saddr != {cluster} meta mark set 0x4000"));
                    rules.push(format!("{m} goto {chain}"));
                }
            }
        }
        format!(
            "table inet mini {{}}\ndelete table inet mini\ntable inet mini {{\n\
             chain pre {{ type nat hook prerouting priority dstnat; jump services; }}\n\
             chain out {{ type nat hook output priority -100; jump services; }}\n\
             chain post {{ type nat hook postrouting priority srcnat; meta mark 0x4000 masquerade; }}\n\
             chain services {{\n{}\n}}\n{}\n}}\n",
            rules.join("\n"),
            chains.join("\n")
        )
    }
}

impl kproxy_tests::flows::ServiceDriver for MiniNft<'_> {
    fn dataplane(&self) -> &str {
        "mini-nft"
    }
    fn capabilities(&self) -> kproxy_plugin_api::Capabilities {
        use kproxy_plugin_api::Capabilities as C;
        C::CLUSTER_IP | C::TCP | C::UDP | C::IPV4 | C::IPV6
    }
    fn apply(&mut self, objects: &[serde_json::Value]) -> anyhow::Result<()> {
        let rules = Self::ruleset(objects);
        let out =
            self.lab
                .run_in(&Place::Node, || -> std::io::Result<std::process::Output> {
                    use std::io::Write;
                    let mut child = std::process::Command::new("nft")
                        .args(["-f", "-"])
                        .stdin(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped())
                        .spawn()?;
                    child.stdin.take().unwrap().write_all(rules.as_bytes())?;
                    child.wait_with_output()
                })??;
        anyhow::ensure!(
            out.status.success(),
            "nft: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

#[test]
fn the_flow_runner_passes_a_working_dataplane_and_fails_a_broken_one() {
    use kproxy_tests::flows::{self, Ran};
    let Some(lab) = Lab::start_or_skip(flows::lab_config()) else {
        return;
    };
    let table = flows::table();
    let case = |name: &str| {
        table
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no case {name}"))
    };
    let mut driver = MiniNft { lab: &lab };
    for name in [
        "cluster-ip/tcp-and-udp/ipv4",
        "cluster-ip/tcp-and-udp/ipv6",
        "spreading/1000-over-3/ipv4",
        "spreading/1000-over-3/ipv6",
        "changes/slice-deleted/ipv4",
        "changes/slice-deleted/ipv6",
        "service-cidr/unallocated/ipv4",
    ] {
        assert_eq!(
            flows::run_case(&lab, case(name), &mut driver),
            Ok(Ran::Passed),
            "{name}"
        );
    }
    // Cases needing features the driver does not claim are skipped, with the reason.
    match flows::run_case(&lab, case("node-port/cluster-policy/ipv4"), &mut driver) {
        Ok(Ran::Skipped(why)) => assert!(why.contains("node-port"), "{why}"),
        other => panic!("expected a skip, got {other:?}"),
    }
    // The mini dataplane does not masquerade hairpin traffic (so the pod's answer to itself
    // never finds its way back) and does not reject wrong ports: the runner must notice both
    // and say what it sent and what it saw.
    let failure = flows::run_case(&lab, case("cluster-ip/hairpin/ipv4"), &mut driver).unwrap_err();
    let text = failure.to_string();
    assert!(
        text.contains("tcp from pod pod-a to cluster IP 10.96.1."),
        "{text}"
    );
    assert!(
        text.contains("masqueraded") && text.contains("not every request was answered"),
        "{text}"
    );
    let failure =
        flows::run_case(&lab, case("cluster-ip/wrong-port/ipv6"), &mut driver).unwrap_err();
    assert!(
        failure.got.contains("not every request was refused") && failure.got.contains("dropped"),
        "{failure}"
    );
}
