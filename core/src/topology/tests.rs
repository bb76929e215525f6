//! The rule table: each case sets up one service on node `n1` (zone `za`) and states which
//! endpoints must serve cluster traffic and which node-local traffic. Every case fails if the
//! rule it names is broken. Then the change-tracking tests (deltas) and property tests.

use super::*;
use crate::model::fixtures::*;
use crate::model::slice::ANNOTATION_LAST_CHANGE_TRIGGER_TIME;
use crate::source::SourceEvent;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_plugin_api::model::{IpFamily, TrafficPolicy};
use std::time::{Duration, UNIX_EPOCH};

const NODE: &str = "n1";
const ZONE: &str = "za";

fn topo_with(ipv4: bool, ipv6: bool, zone: Option<&str>) -> Topology {
    let mut t = Topology::new(TopologyConfig::new(NODE, ipv4, ipv6));
    let skipped = t.apply(SourceEvent::Node(ResourceEvent::Applied(node(
        NODE,
        zone,
        Some("192.0.2.1"),
    ))));
    assert!(skipped.is_empty());
    t
}

fn topo() -> Topology {
    topo_with(true, true, Some(ZONE))
}

fn apply_svc(t: &mut Topology, s: Service) {
    let skipped = t.apply(SourceEvent::Service(ResourceEvent::Applied(s)));
    assert!(skipped.is_empty(), "{skipped:?}");
}

fn apply_slice(t: &mut Topology, s: EndpointSlice) {
    let skipped = t.apply(SourceEvent::Slice(ResourceEvent::Applied(s)));
    assert!(skipped.is_empty(), "{skipped:?}");
}

fn key(name: &str, port: &str, proto: Protocol) -> ServicePortKey {
    ServicePortKey::new("ns", name, port, proto)
}

/// `ip:port` of the endpoints of `port` with the flag chosen by `pick`.
fn chosen(
    port: &ServicePort,
    pick: fn(&kproxy_plugin_api::model::Endpoint) -> bool,
) -> Vec<String> {
    port.endpoints
        .iter()
        .filter(|e| pick(e))
        .map(|e| match e.ip.family {
            IpFamily::V4 => format!("{}:{}", e.ip, e.port),
            IpFamily::V6 => format!("[{}]:{}", e.ip, e.port),
        })
        .collect()
}

fn cluster(port: &ServicePort) -> Vec<String> {
    chosen(port, |e| e.for_cluster)
}

fn local(port: &ServicePort) -> Vec<String> {
    chosen(port, |e| e.for_local)
}

/// One row of the rule table.
struct Case {
    name: &'static str,
    svc: Service,
    slices: Vec<EndpointSlice>,
    /// The node's zone label (`None`: no label).
    zone: Option<&'static str>,
    /// The port to check (service port name and protocol).
    port: (&'static str, Protocol),
    /// Expected `for_cluster` endpoints, sorted by address.
    cluster: &'static [&'static str],
    /// Expected `for_local` endpoints, sorted by address.
    local: &'static [&'static str],
}

fn base() -> crate::model::fixtures::Svc {
    svc("ns", "web", &["10.96.0.10"]).port("http", "TCP", 80)
}

fn sl(name: &str) -> crate::model::fixtures::Slice {
    slice("ns", name, "web", "IPv4").port("http", "TCP", 8080)
}

fn nodeport() -> crate::model::fixtures::Svc {
    svc("ns", "web", &["10.96.0.10"])
        .typ("NodePort")
        .port("http", "TCP", 80)
        .node_port(30080)
}

const TCP: Protocol = Protocol::Tcp;

fn table() -> Vec<Case> {
    let a = || ep("10.0.0.1").node(NODE);
    let b = || ep("10.0.0.2").node("n2");
    let c = || ep("10.0.0.3").node("n3");
    vec![
        // ---- ready vs serving+terminating, cluster traffic ----
        Case {
            name: "cluster: only ready endpoints serve",
            svc: base().build(),
            slices: vec![sl("s1")
                .ep(a())
                .ep(b())
                .ep(c().not_ready())
                .ep(ep("10.0.0.4").terminating_serving())
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &[],
        },
        Case {
            name: "cluster: no ready endpoint falls back to serving+terminating only",
            svc: base().build(),
            slices: vec![sl("s1")
                .ep(a().terminating_serving())
                .ep(b().cond(false, false, true)) // terminating, not serving
                .ep(c().not_ready())
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080"],
            local: &[],
        },
        Case {
            name: "cluster: no usable endpoint at all gives none",
            svc: base().build(),
            slices: vec![sl("s1").ep(a().not_ready()).ep(b().cond(false, false, true)).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &[],
            local: &[],
        },
        // ---- internalTrafficPolicy: Local ----
        Case {
            name: "ITP Local: only local ready endpoints, no cluster list",
            svc: base().itp("Local").build(),
            slices: vec![sl("s1").ep(a()).ep(b()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &[],
            local: &["10.0.0.1:8080"],
        },
        Case {
            name: "ITP Local: no local ready endpoint falls back to local serving+terminating",
            svc: base().itp("Local").build(),
            slices: vec![sl("s1")
                .ep(a().terminating_serving())
                .ep(ep("10.0.0.9").node(NODE).not_ready())
                .ep(b())
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &[],
            local: &["10.0.0.1:8080"],
        },
        Case {
            name: "ITP Local: no local endpoint gives an empty local list",
            svc: base().itp("Local").build(),
            slices: vec![sl("s1").ep(b()).ep(c()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &[],
            local: &[],
        },
        Case {
            name: "ITP Local on an externally accessible service also keeps the cluster list",
            svc: nodeport().itp("Local").build(),
            slices: vec![sl("s1").ep(a()).ep(b()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &["10.0.0.1:8080"],
        },
        // ---- externalTrafficPolicy: Local ----
        Case {
            name: "ETP Local on a NodePort service: cluster list for short-circuit, local list",
            svc: nodeport().etp("Local").build(),
            slices: vec![sl("s1").ep(a()).ep(b()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &["10.0.0.1:8080"],
        },
        Case {
            name: "ready/terminating decided separately: cluster uses remote ready, local uses local terminating",
            svc: nodeport().etp("Local").build(),
            slices: vec![sl("s1").ep(a().terminating_serving()).ep(b()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.2:8080"],
            local: &["10.0.0.1:8080"],
        },
        Case {
            name: "ready/terminating decided separately: local ready even when cluster falls back",
            svc: nodeport().etp("Local").build(),
            slices: vec![sl("s1")
                .ep(a().not_ready())
                .ep(b().terminating_serving())
                .ep(ep("10.0.0.5").node(NODE))
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.5:8080"],
            local: &["10.0.0.5:8080"],
        },
        Case {
            name: "ETP Local is ignored on a ClusterIP service without external IPs",
            svc: base().etp("Local").build(),
            slices: vec![sl("s1").ep(a()).ep(b()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &[],
        },
        Case {
            name: "ETP Local applies to a ClusterIP service with external IPs",
            svc: base().etp("Local").external_ips(&["192.0.2.50"]).build(),
            slices: vec![sl("s1").ep(a()).ep(b()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &["10.0.0.1:8080"],
        },
        Case {
            name: "ETP Local: a LoadBalancer reached only through Proxy-mode IPs is not externally accessible",
            svc: svc("ns", "web", &["10.96.0.10"])
                .typ("LoadBalancer")
                .port("http", "TCP", 80)
                .etp("Local")
                .lb_ingress("192.0.2.60", Some("Proxy"))
                .build(),
            slices: vec![sl("s1").ep(a()).ep(b()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &[],
        },
        Case {
            name: "ETP Local: a LoadBalancer with a VIP-mode IP is externally accessible",
            svc: svc("ns", "web", &["10.96.0.10"])
                .typ("LoadBalancer")
                .port("http", "TCP", 80)
                .etp("Local")
                .lb_ingress("192.0.2.60", None)
                .build(),
            slices: vec![sl("s1").ep(a()).ep(b()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &["10.0.0.1:8080"],
        },
        // ---- topology hints by zone ----
        Case {
            name: "zone hints: every ready endpoint hinted, some for this zone -> only those",
            svc: base().build(),
            slices: vec![sl("s1")
                .ep(a().zone_hints(&[ZONE]))
                .ep(b().zone_hints(&["zb"]))
                .ep(c().zone_hints(&["zb", ZONE]))
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.3:8080"],
            local: &[],
        },
        Case {
            name: "zone hints: one ready endpoint without hints -> all endpoints",
            svc: base().build(),
            slices: vec![sl("s1")
                .ep(a().zone_hints(&[ZONE]))
                .ep(b().zone_hints(&["zb"]))
                .ep(c())
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"],
            local: &[],
        },
        Case {
            name: "zone hints: none for this zone -> all endpoints",
            svc: base().build(),
            slices: vec![sl("s1")
                .ep(a().zone_hints(&["zb"]))
                .ep(b().zone_hints(&["zc"]))
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &[],
        },
        Case {
            name: "zone hints: node without a zone label -> all endpoints",
            svc: base().build(),
            slices: vec![sl("s1")
                .ep(a().zone_hints(&[ZONE]))
                .ep(b().zone_hints(&["zb"]))
                .build()],
            zone: None,
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &[],
        },
        Case {
            name: "zone hints: only ready endpoints count (an unhinted not-ready one does not disable hints)",
            svc: base().build(),
            slices: vec![sl("s1")
                .ep(a().zone_hints(&[ZONE]))
                .ep(b().zone_hints(&["zb"]))
                .ep(c().not_ready())
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080"],
            local: &[],
        },
        Case {
            name: "zone hints do not filter the local list",
            svc: nodeport().etp("Local").build(),
            slices: vec![sl("s1")
                .ep(a().zone_hints(&["zb"]))
                .ep(b().zone_hints(&[ZONE]))
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.2:8080"],
            local: &["10.0.0.1:8080"],
        },
        // ---- topology hints by node ----
        Case {
            name: "node hints: every ready endpoint hinted, one for this node -> only it",
            svc: base().build(),
            slices: vec![sl("s1")
                .ep(a().node_hints(&[NODE]).zone_hints(&[ZONE]))
                .ep(b().node_hints(&["n2"]).zone_hints(&[ZONE]))
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080"],
            local: &[],
        },
        Case {
            name: "node hints: none for this node -> falls back to zone hints",
            svc: base().build(),
            slices: vec![sl("s1")
                .ep(a().node_hints(&["n2"]).zone_hints(&[ZONE]))
                .ep(b().node_hints(&["n3"]).zone_hints(&["zb"]))
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080"],
            local: &[],
        },
        Case {
            name: "node hints: one ready endpoint without node hints -> zone hints decide",
            svc: base().build(),
            slices: vec![sl("s1")
                .ep(a().node_hints(&[NODE]).zone_hints(&["zb"]))
                .ep(b().zone_hints(&[ZONE]))
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.2:8080"],
            local: &[],
        },
        // ---- trafficDistribution: upstream's proxy follows the hints the controller writes ----
        Case {
            name: "trafficDistribution PreferClose: zone hints restrict to this zone",
            svc: base().traffic_distribution("PreferClose").build(),
            slices: vec![sl("s1")
                .ep(a().zone_hints(&["zb"]))
                .ep(b().zone_hints(&[ZONE]))
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.2:8080"],
            local: &[],
        },
        Case {
            name: "trafficDistribution PreferSameZone: zone hints restrict to this zone",
            svc: base().traffic_distribution("PreferSameZone").build(),
            slices: vec![sl("s1")
                .ep(a().zone_hints(&[ZONE]))
                .ep(b().zone_hints(&["zb"]))
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080"],
            local: &[],
        },
        Case {
            name: "trafficDistribution PreferSameNode: node hints restrict to this node",
            svc: base().traffic_distribution("PreferSameNode").build(),
            slices: vec![sl("s1")
                .ep(a().node_hints(&[NODE]).zone_hints(&[ZONE]))
                .ep(b().node_hints(&["n2"]).zone_hints(&[ZONE]))
                .ep(c().node_hints(&["n3"]).zone_hints(&["zb"]))
                .build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080"],
            local: &[],
        },
        Case {
            name: "trafficDistribution without hints changes nothing (the proxy reads hints, not the field)",
            svc: base().traffic_distribution("PreferSameNode").build(),
            slices: vec![sl("s1").ep(a()).ep(b()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &[],
        },
        // ---- slices, ports, duplicates ----
        Case {
            name: "several slices are merged",
            svc: base().build(),
            slices: vec![sl("s1").ep(a()).build(), sl("s2").ep(b()).ep(c()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"],
            local: &[],
        },
        Case {
            name: "the same endpoint in two slices counts once, the non-terminating copy wins (first slice terminating)",
            svc: base().build(),
            slices: vec![
                sl("s1").ep(a().terminating_serving()).build(),
                sl("s2").ep(a()).ep(b()).build(),
            ],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &[],
        },
        Case {
            name: "the same endpoint in two slices counts once, the non-terminating copy wins (second slice terminating)",
            svc: base().build(),
            slices: vec![
                sl("s1").ep(a()).ep(b()).build(),
                sl("s2").ep(a().terminating_serving()).build(),
            ],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &[],
        },
        Case {
            name: "named targetPort resolves per slice to different numbers",
            svc: svc("ns", "web", &["10.96.0.10"])
                .named_target("http", 80, "web")
                .build(),
            slices: vec![
                slice("ns", "s1", "web", "IPv4").port("http", "TCP", 8080).ep(a()).build(),
                slice("ns", "s2", "web", "IPv4").port("http", "TCP", 9090).ep(b()).build(),
            ],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.2:9090"],
            local: &[],
        },
        Case {
            name: "the same address under two port numbers is two endpoints",
            svc: base().build(),
            slices: vec![
                sl("s1").ep(a()).build(),
                slice("ns", "s2", "web", "IPv4").port("http", "TCP", 9090).ep(a()).build(),
            ],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "10.0.0.1:9090"],
            local: &[],
        },
        Case {
            name: "a slice port with the same name but another protocol does not match",
            svc: svc("ns", "web", &["10.96.0.10"]).port("dns", "UDP", 53).build(),
            slices: vec![slice("ns", "s1", "web", "IPv4").port("dns", "TCP", 53).ep(a()).build()],
            zone: Some(ZONE),
            port: ("dns", Protocol::Udp),
            cluster: &[],
            local: &[],
        },
        Case {
            name: "a slice port with another name does not match",
            svc: base().build(),
            slices: vec![slice("ns", "s1", "web", "IPv4").port("https", "TCP", 8443).ep(a()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &[],
            local: &[],
        },
        Case {
            name: "slices of another service are not used",
            svc: base().build(),
            slices: vec![slice("ns", "s1", "other", "IPv4").port("http", "TCP", 8080).ep(a()).build()],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &[],
            local: &[],
        },
        // ---- dual stack ----
        Case {
            name: "dual stack: endpoints of both families are kept",
            svc: svc("ns", "web", &["10.96.0.10", "fd00:96::10"]).port("http", "TCP", 80).build(),
            slices: vec![
                sl("s4").ep(a()).build(),
                slice("ns", "s6", "web", "IPv6").port("http", "TCP", 8080).ep(ep("fd00::1").node("n2")).build(),
            ],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "[fd00::1]:8080"],
            local: &[],
        },
        Case {
            name: "dual stack: the terminating fallback is decided per family",
            svc: svc("ns", "web", &["10.96.0.10", "fd00:96::10"]).port("http", "TCP", 80).build(),
            slices: vec![
                sl("s4").ep(a()).ep(b().terminating_serving()).build(),
                slice("ns", "s6", "web", "IPv6")
                    .port("http", "TCP", 8080)
                    .ep(ep("fd00::1").terminating_serving())
                    .build(),
            ],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080", "[fd00::1]:8080"],
            local: &[],
        },
        Case {
            name: "single-stack IPv4 service ignores IPv6 slices",
            svc: base().build(),
            slices: vec![
                sl("s4").ep(a()).build(),
                slice("ns", "s6", "web", "IPv6").port("http", "TCP", 8080).ep(ep("fd00::1")).build(),
            ],
            zone: Some(ZONE),
            port: ("http", TCP),
            cluster: &["10.0.0.1:8080"],
            local: &[],
        },
        Case {
            name: "dual stack: externally accessible per family (external IP only in IPv4)",
            svc: svc("ns", "web", &["10.96.0.10", "fd00:96::10"])
                .port("http", "TCP", 80)
                .itp("Local")
                .external_ips(&["192.0.2.50"])
                .build(),
            slices: vec![
                sl("s4").ep(a()).ep(b()).build(),
                slice("ns", "s6", "web", "IPv6")
                    .port("http", "TCP", 8080)
                    .ep(ep("fd00::1").node(NODE))
                    .ep(ep("fd00::2").node("n2"))
                    .build(),
            ],
            zone: Some(ZONE),
            port: ("http", TCP),
            // IPv4 is externally accessible (uses cluster endpoints); IPv6 is not.
            cluster: &["10.0.0.1:8080", "10.0.0.2:8080"],
            local: &["10.0.0.1:8080", "[fd00::1]:8080"],
        },
    ]
}

#[test]
fn rule_table() {
    let mut failures = Vec::new();
    for case in table() {
        let mut t = topo_with(true, true, case.zone);
        for s in case.slices {
            apply_slice(&mut t, s);
        }
        apply_svc(&mut t, case.svc);
        let k = key("web", case.port.0, case.port.1);
        let Some(port) = t.get(&k) else {
            failures.push(format!("{}: no service port {k}", case.name));
            continue;
        };
        let (got_c, got_l) = (cluster(&port), local(&port));
        if got_c != case.cluster || got_l != case.local {
            failures.push(format!(
                "{}:\n  cluster want {:?} got {:?}\n  local   want {:?} got {:?}",
                case.name, case.cluster, got_c, case.local, got_l
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_table_does_not_depend_on_arrival_order() {
    // Service first, then slices: same answers as slices first (the table's order).
    for case in table() {
        let mut t = topo_with(true, true, case.zone);
        apply_svc(&mut t, case.svc);
        for s in case.slices.into_iter().rev() {
            apply_slice(&mut t, s);
        }
        let port = t.get(&key("web", case.port.0, case.port.1)).unwrap();
        assert_eq!(cluster(&port), case.cluster, "{}", case.name);
        assert_eq!(local(&port), case.local, "{}", case.name);
    }
}

#[test]
fn endpoint_fields_locality_and_order() {
    let mut t = topo();
    apply_svc(&mut t, base().build());
    apply_slice(
        &mut t,
        sl("s1")
            .ep(ep("10.0.0.20").node("n2").zone("zb"))
            .ep(ep("10.0.0.3").node(NODE).zone(ZONE).terminating_serving())
            .ep(ep("10.0.0.100"))
            .build(),
    );
    let port = t.get(&key("web", "http", TCP)).unwrap();
    let ips: Vec<String> = port.endpoints.iter().map(|e| e.ip.to_string()).collect();
    // Sorted by address (numerically), not by text.
    assert_eq!(ips, vec!["10.0.0.3", "10.0.0.20", "10.0.0.100"]);
    let e = &port.endpoints[0];
    assert!(e.is_local && !e.ready && e.serving && e.terminating);
    assert_eq!((e.node_name.as_str(), e.zone.as_str()), (NODE, ZONE));
    assert!(
        !e.for_cluster,
        "a terminating endpoint is not used while ready ones exist"
    );
    assert!(!port.endpoints[1].is_local);
    assert!(!port.endpoints[2].is_local, "no nodeName: not local");
    assert_eq!(port.port, 80);
    assert_eq!(port.cluster_ips[0].to_string(), "10.96.0.10");
}

#[test]
fn without_a_node_name_nothing_is_local() {
    let mut t = Topology::new(TopologyConfig::new("", true, false));
    apply_svc(&mut t, base().itp("Local").build());
    apply_slice(
        &mut t,
        sl("s1")
            .ep(ep("10.0.0.1"))
            .ep(ep("10.0.0.2").node(NODE))
            .build(),
    );
    let port = t.get(&key("web", "http", TCP)).unwrap();
    assert!(port.endpoints.iter().all(|e| !e.is_local && !e.for_local));
}

#[test]
fn service_fields_reach_the_service_port() {
    let mut t = topo();
    apply_svc(
        &mut t,
        svc("ns", "lb", &["10.96.0.11", "fd00:96::11"])
            .typ("LoadBalancer")
            .port("http", "TCP", 80)
            .node_port(30080)
            .etp("Local")
            .hc_node_port(32100)
            .external_ips(&["192.0.2.7", "2001:db8::7"])
            .lb_ingress("192.0.2.8", None)
            .lb_ingress("192.0.2.9", Some("Proxy"))
            .source_ranges(&["203.0.113.0/24"])
            .affinity(Some(600))
            .annotation("kproxy.io/ipvs-scheduler", "sh")
            .build(),
    );
    let p = t
        .get(&ServicePortKey::new("ns", "lb", "http", TCP))
        .unwrap();
    assert_eq!(p.cluster_ips.len(), 2);
    assert_eq!(p.node_port, 30080);
    assert_eq!(p.health_check_node_port, 32100);
    assert_eq!(p.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(p.internal_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(p.external_ips.len(), 2);
    assert_eq!(p.load_balancer_ingress.len(), 2);
    assert_eq!(p.load_balancer_source_ranges.len(), 1);
    assert!(p.session_affinity.client_ip);
    assert_eq!(p.session_affinity.timeout_seconds, 600);
    assert_eq!(p.ipvs_scheduler.as_str(), "sh");
    assert!(p.external_policy_local());
}

#[test]
fn disabled_family_is_dropped() {
    let mut t = topo_with(true, false, Some(ZONE));
    apply_svc(
        &mut t,
        svc("ns", "web", &["fd00:96::10", "10.96.0.10"])
            .port("http", "TCP", 80)
            .external_ips(&["192.0.2.1", "2001:db8::1"])
            .build(),
    );
    apply_slice(&mut t, sl("s4").ep(ep("10.0.0.1")).build());
    apply_slice(
        &mut t,
        slice("ns", "s6", "web", "IPv6")
            .port("http", "TCP", 8080)
            .ep(ep("fd00::1"))
            .build(),
    );
    let p = t.get(&key("web", "http", TCP)).unwrap();
    assert_eq!(p.cluster_ips.len(), 1);
    assert!(p.cluster_ips[0].is_v4());
    assert_eq!(p.external_ips.len(), 1);
    assert_eq!(p.endpoints.len(), 1);

    // An IPv6-only service on an IPv4-only node yields nothing.
    apply_svc(
        &mut t,
        svc("ns", "v6", &["fd00:96::20"])
            .port("", "TCP", 80)
            .build(),
    );
    assert!(t.snapshot().iter().all(|p| p.key.name.as_str() != "v6"));
    assert_eq!(t.service_count(), 2);
}

// ---- change tracking ----

fn ready_slice(svc: &str, slice_name: &str, ips: &[&str]) -> EndpointSlice {
    let mut s = slice("ns", slice_name, svc, "IPv4").port("http", "TCP", 8080);
    for ip in ips {
        s = s.ep(ep(ip));
    }
    s.build()
}

fn simple_svc(name: &str, ip: &str) -> Service {
    svc("ns", name, &[ip]).port("http", "TCP", 80).build()
}

#[test]
fn first_delta_has_node_and_everything() {
    let mut t = topo();
    apply_svc(&mut t, simple_svc("a", "10.96.0.1"));
    apply_svc(&mut t, simple_svc("b", "10.96.0.2"));
    let d = t.take_delta().unwrap();
    let node = d.node.unwrap();
    assert_eq!(node.name.as_str(), NODE);
    assert_eq!(node.zone.as_str(), ZONE);
    let keys: Vec<_> = d.upserts.iter().map(|p| p.key.name.to_string()).collect();
    assert_eq!(keys, vec!["a", "b"]);
    assert!(d.removed.is_empty());
    assert_eq!(t.take_delta(), None, "nothing changed since");
}

#[test]
fn delta_holds_only_changed_keys() {
    let mut t = topo();
    for i in 0..20 {
        apply_svc(
            &mut t,
            simple_svc(&format!("s{i}"), &format!("10.96.0.{}", i + 1)),
        );
        apply_slice(
            &mut t,
            ready_slice(&format!("s{i}"), &format!("s{i}-1"), &["10.0.0.1"]),
        );
    }
    t.take_delta().unwrap();
    apply_slice(&mut t, ready_slice("s7", "s7-1", &["10.0.0.1", "10.0.0.2"]));
    let d = t.take_delta().unwrap();
    assert_eq!(d.node, None);
    assert_eq!(d.upserts.len(), 1);
    assert_eq!(d.upserts[0].key, key("s7", "http", TCP));
    assert_eq!(d.upserts[0].endpoints.len(), 2);
    assert!(d.removed.is_empty());
}

#[test]
fn no_op_updates_give_no_delta() {
    let mut t = topo();
    apply_svc(&mut t, simple_svc("a", "10.96.0.1"));
    apply_slice(&mut t, ready_slice("a", "a-1", &["10.0.0.1"]));
    t.take_delta().unwrap();
    // Same content, new resourceVersion: nothing to do.
    let mut s = simple_svc("a", "10.96.0.1");
    s.metadata.resource_version = Some("999".into());
    apply_svc(&mut t, s);
    let mut sl = ready_slice("a", "a-1", &["10.0.0.1"]);
    sl.metadata.resource_version = Some("1000".into());
    apply_slice(&mut t, sl);
    // A change to a field that does not alter the resolved form (the selector).
    let mut s = simple_svc("a", "10.96.0.1");
    s.spec.as_mut().unwrap().selector = Some([("app".to_string(), "x".to_string())].into());
    apply_svc(&mut t, s);
    assert_eq!(t.take_delta(), None);
    // Changed and changed back between takes: no delta either.
    apply_slice(&mut t, ready_slice("a", "a-1", &["10.0.0.9"]));
    apply_slice(&mut t, ready_slice("a", "a-1", &["10.0.0.1"]));
    assert_eq!(t.take_delta(), None);
}

#[test]
fn deleting_a_service_removes_its_keys_and_keeps_its_slices() {
    let mut t = topo();
    apply_svc(
        &mut t,
        svc("ns", "a", &["10.96.0.1"])
            .port("http", "TCP", 80)
            .port("dns", "UDP", 53)
            .build(),
    );
    apply_svc(&mut t, simple_svc("b", "10.96.0.2"));
    apply_slice(&mut t, ready_slice("a", "a-1", &["10.0.0.1"]));
    t.take_delta().unwrap();

    let gone = simple_svc("a", "10.96.0.1");
    t.apply(SourceEvent::Service(ResourceEvent::Deleted(gone.clone())));
    let d = t.take_delta().unwrap();
    assert!(d.upserts.is_empty());
    assert_eq!(
        d.removed,
        vec![key("a", "dns", Protocol::Udp), key("a", "http", TCP)]
    );
    assert_eq!(t.slice_count(), 1);
    assert_eq!(t.service_port_count(), 1);

    // The service comes back and finds its slice.
    apply_svc(&mut t, gone);
    let d = t.take_delta().unwrap();
    assert_eq!(d.upserts.len(), 1);
    assert_eq!(cluster(&d.upserts[0]), vec!["10.0.0.1:8080"]);
}

#[test]
fn slices_before_their_service_and_slice_deletion() {
    let mut t = topo();
    apply_slice(&mut t, ready_slice("a", "a-1", &["10.0.0.1"]));
    apply_slice(&mut t, ready_slice("a", "a-2", &["10.0.0.2"]));
    assert_eq!(t.service_port_count(), 0);
    apply_svc(&mut t, simple_svc("a", "10.96.0.1"));
    let p = t.get(&key("a", "http", TCP)).unwrap();
    assert_eq!(p.endpoints.len(), 2);
    t.take_delta();
    t.apply(SourceEvent::Slice(ResourceEvent::Deleted(ready_slice(
        "a",
        "a-1",
        &[],
    ))));
    let d = t.take_delta().unwrap();
    assert_eq!(d.upserts.len(), 1);
    assert_eq!(cluster(&d.upserts[0]), vec!["10.0.0.2:8080"]);
    assert_eq!(t.endpoint_count(), 1);
}

#[test]
fn ports_added_and_removed() {
    let mut t = topo();
    apply_svc(&mut t, simple_svc("a", "10.96.0.1"));
    t.take_delta();
    apply_svc(
        &mut t,
        svc("ns", "a", &["10.96.0.1"])
            .port("http", "TCP", 80)
            .port("https", "TCP", 443)
            .build(),
    );
    let d = t.take_delta().unwrap();
    assert_eq!(d.upserts.len(), 1, "only the new port");
    assert_eq!(d.upserts[0].key, key("a", "https", TCP));
    apply_svc(
        &mut t,
        svc("ns", "a", &["10.96.0.1"])
            .port("https", "TCP", 443)
            .build(),
    );
    let d = t.take_delta().unwrap();
    assert!(d.upserts.is_empty());
    assert_eq!(d.removed, vec![key("a", "http", TCP)]);
    // A port number change is an upsert of the same key.
    apply_svc(
        &mut t,
        svc("ns", "a", &["10.96.0.1"])
            .port("https", "TCP", 8443)
            .build(),
    );
    let d = t.take_delta().unwrap();
    assert_eq!(d.upserts[0].port, 8443);
    assert!(d.removed.is_empty());
}

#[test]
fn replaced_swaps_atomically() {
    let mut t = topo();
    for name in ["a", "b", "c"] {
        apply_svc(&mut t, simple_svc(name, "10.96.0.1"));
        apply_slice(
            &mut t,
            ready_slice(name, &format!("{name}-1"), &["10.0.0.1"]),
        );
    }
    t.take_delta();
    // Relist: b is gone, c changed, a is the same, d is new.
    t.apply(SourceEvent::Service(ResourceEvent::Replaced(vec![
        simple_svc("a", "10.96.0.1"),
        simple_svc("c", "10.96.0.3"),
        simple_svc("d", "10.96.0.4"),
    ])));
    t.apply(SourceEvent::Slice(ResourceEvent::Replaced(vec![
        ready_slice("a", "a-1", &["10.0.0.1"]),
        ready_slice("c", "c-1", &["10.0.0.1"]),
    ])));
    let d = t.take_delta().unwrap();
    let up: Vec<_> = d.upserts.iter().map(|p| p.key.name.to_string()).collect();
    assert_eq!(up, vec!["c", "d"]);
    assert_eq!(d.removed, vec![key("b", "http", TCP)]);
    assert_eq!(t.slice_count(), 2);
    assert_eq!(t.service_count(), 3);
}

#[test]
fn invalid_objects_are_skipped_and_the_rest_keep_working() {
    let mut t = topo();
    apply_svc(&mut t, simple_svc("good", "10.96.0.1"));
    apply_svc(&mut t, simple_svc("soon-bad", "10.96.0.2"));
    t.take_delta();
    let skipped = t.apply(SourceEvent::Service(ResourceEvent::Replaced(vec![
        simple_svc("good", "10.96.0.1"),
        svc("ns", "soon-bad", &["10.96.0.2"])
            .port("http", "TCP", 70000)
            .build(),
        simple_svc("new", "10.96.0.3"),
        svc("ns", "bad-ip", &["10.96.0.999"])
            .port("http", "TCP", 80)
            .build(),
    ])));
    let names: Vec<String> = skipped.iter().map(|s| s.object.to_string()).collect();
    assert_eq!(names, vec!["ns/soon-bad", "ns/bad-ip"]);
    assert!(skipped[0].to_string().contains("Service ns/soon-bad"));
    let d = t.take_delta().unwrap();
    // The now-invalid service counts as absent; the new one arrives; `good` is untouched.
    assert_eq!(d.removed, vec![key("soon-bad", "http", TCP)]);
    assert_eq!(d.upserts.len(), 1);
    assert_eq!(d.upserts[0].key.name.as_str(), "new");

    // A bad slice is skipped and does not disturb the service's other slices.
    apply_slice(&mut t, ready_slice("good", "g-1", &["10.0.0.1"]));
    let mut bad = ready_slice("good", "g-2", &["10.0.0.2"]);
    bad.endpoints[0].addresses = vec!["10.0.0.2.5".into()];
    let skipped = t.apply(SourceEvent::Slice(ResourceEvent::Applied(bad)));
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].object.to_string(), "ns/g-2");
    assert_eq!(t.get(&key("good", "http", TCP)).unwrap().endpoints.len(), 1);
}

#[test]
fn ignored_objects_are_not_reported_but_removed() {
    let mut t = topo();
    apply_svc(&mut t, simple_svc("a", "10.96.0.1"));
    t.take_delta();
    // The service becomes another proxy's: it goes away, without a warning.
    let skipped = t.apply(SourceEvent::Service(ResourceEvent::Applied(
        svc("ns", "a", &["10.96.0.1"])
            .port("http", "TCP", 80)
            .label("service.kubernetes.io/service-proxy-name", "other")
            .build(),
    )));
    assert!(skipped.is_empty());
    assert_eq!(t.take_delta().unwrap().removed, vec![key("a", "http", TCP)]);
    // Headless and ExternalName services never appear.
    apply_svc(
        &mut t,
        svc("ns", "h", &["None"]).port("http", "TCP", 80).build(),
    );
    apply_svc(&mut t, svc("ns", "e", &[]).typ("ExternalName").build());
    assert_eq!(t.take_delta(), None);
}

#[test]
fn node_zone_change_reresolves_hinted_services_only() {
    let mut t = topo();
    apply_svc(&mut t, simple_svc("hinted", "10.96.0.1"));
    apply_svc(&mut t, simple_svc("plain", "10.96.0.2"));
    apply_slice(
        &mut t,
        slice("ns", "h-1", "hinted", "IPv4")
            .port("http", "TCP", 8080)
            .ep(ep("10.0.0.1").zone_hints(&["za"]))
            .ep(ep("10.0.0.2").zone_hints(&["zb"]))
            .build(),
    );
    apply_slice(&mut t, ready_slice("plain", "p-1", &["10.0.0.3"]));
    assert_eq!(
        cluster(&t.get(&key("hinted", "http", TCP)).unwrap()),
        vec!["10.0.0.1:8080"]
    );
    t.take_delta();
    let before = t.resolutions;

    t.apply(SourceEvent::Node(ResourceEvent::Applied(node(
        NODE,
        Some("zb"),
        Some("192.0.2.1"),
    ))));
    assert_eq!(
        t.resolutions - before,
        1,
        "only the hinted service is re-resolved"
    );
    let d = t.take_delta().unwrap();
    assert_eq!(d.node.unwrap().zone.as_str(), "zb");
    assert_eq!(d.upserts.len(), 1);
    assert_eq!(cluster(&d.upserts[0]), vec!["10.0.0.2:8080"]);

    // The Node goes away: the zone is unknown, hints are not used.
    t.apply(SourceEvent::Node(ResourceEvent::Deleted(node(
        NODE, None, None,
    ))));
    let d = t.take_delta().unwrap();
    assert_eq!(d.node.unwrap().zone.as_str(), "");
    assert_eq!(
        cluster(&d.upserts[0]),
        vec!["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    // Another node's object is not ours.
    t.apply(SourceEvent::Node(ResourceEvent::Applied(node(
        "n9",
        Some("zq"),
        None,
    ))));
    assert_eq!(t.take_delta(), None);
    assert!(t.node().is_none());
}

#[test]
fn node_facts_fall_back_to_host_facts() {
    let mut config = TopologyConfig::new(NODE, true, false);
    config.host_facts.addresses =
        vec!["198.51.100.1".parse::<std::net::IpAddr>().unwrap().into()].into();
    let mut t = Topology::new(config);
    let facts = t.node_facts();
    assert_eq!(facts.name.as_str(), NODE);
    assert_eq!(facts.addresses.len(), 1);
    // A Node without addresses keeps the host's; one with addresses wins.
    t.apply(SourceEvent::Node(ResourceEvent::Applied(node(
        NODE,
        Some("za"),
        None,
    ))));
    assert_eq!(t.node_facts().addresses[0].to_string(), "198.51.100.1");
    t.apply(SourceEvent::Node(ResourceEvent::Applied(node(
        NODE,
        Some("za"),
        Some("192.0.2.9"),
    ))));
    assert_eq!(t.node_facts().addresses[0].to_string(), "192.0.2.9");
    assert_eq!(t.node_facts().pod_cidrs.len(), 1);
}

#[test]
fn trigger_times_travel_with_their_changes() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut config = TopologyConfig::new(NODE, true, true);
    config.ignore_trigger_times_before = Some(t0);
    let mut t = Topology::new(config);
    apply_svc(&mut t, simple_svc("a", "10.96.0.1"));
    t.take_delta();
    let stamped = |ips: &[&str], when: &str| {
        let mut s = slice("ns", "a-1", "a", "IPv4")
            .port("http", "TCP", 8080)
            .annotation(ANNOTATION_LAST_CHANGE_TRIGGER_TIME, when);
        for ip in ips {
            s = s.ep(ep(ip));
        }
        s.build()
    };
    apply_slice(&mut t, stamped(&["10.0.0.1"], "2023-11-14T22:13:21Z"));
    apply_slice(
        &mut t,
        stamped(&["10.0.0.1", "10.0.0.2"], "2023-11-14T22:13:22Z"),
    );
    let d = t.take_delta().unwrap();
    assert_eq!(
        d.trigger_times,
        vec![t0 + Duration::from_secs(1), t0 + Duration::from_secs(2)]
    );
    // Older than the start: not reported.
    apply_slice(&mut t, stamped(&["10.0.0.3"], "2023-11-14T22:13:19Z"));
    assert!(t.take_delta().unwrap().trigger_times.is_empty());
    // A change that alters nothing programmed gives no delta, and its time is dropped.
    apply_slice(&mut t, stamped(&["10.0.0.3"], "2023-11-14T22:13:30Z"));
    assert_eq!(t.take_delta(), None);
    apply_svc(
        &mut t,
        svc("ns", "a", &["10.96.0.1"])
            .port("http", "TCP", 81)
            .build(),
    );
    assert!(t.take_delta().unwrap().trigger_times.is_empty());
}

#[test]
fn one_change_among_many_services_resolves_one_service() {
    let mut t = topo();
    let n = 3000;
    let services: Vec<Service> = (0..n)
        .map(|i| {
            simple_svc(
                &format!("s{i}"),
                &format!("10.96.{}.{}", i / 250, i % 250 + 1),
            )
        })
        .collect();
    let slices: Vec<EndpointSlice> = (0..n)
        .map(|i| ready_slice(&format!("s{i}"), &format!("s{i}-1"), &["10.0.0.1"]))
        .collect();
    t.apply(SourceEvent::Service(ResourceEvent::Replaced(services)));
    t.apply(SourceEvent::Slice(ResourceEvent::Replaced(slices)));
    assert_eq!(t.service_port_count(), n);
    assert_eq!(t.endpoint_count(), n);
    t.take_delta();
    let before = t.resolutions;
    apply_slice(
        &mut t,
        ready_slice("s1234", "s1234-1", &["10.0.0.1", "10.0.0.2"]),
    );
    assert_eq!(t.resolutions - before, 1);
    let d = t.take_delta().unwrap();
    assert_eq!(d.upserts.len(), 1);
    assert_eq!(t.endpoint_count(), n + 1);
}

#[test]
fn a_slice_moving_to_another_service_updates_both() {
    let mut t = topo();
    apply_svc(&mut t, simple_svc("a", "10.96.0.1"));
    apply_svc(&mut t, simple_svc("b", "10.96.0.2"));
    apply_slice(&mut t, ready_slice("a", "x", &["10.0.0.1"]));
    t.take_delta();
    apply_slice(&mut t, ready_slice("b", "x", &["10.0.0.1"]));
    let d = t.take_delta().unwrap();
    let eps: Vec<(String, usize)> = d
        .upserts
        .iter()
        .map(|p| (p.key.name.to_string(), p.endpoints.len()))
        .collect();
    assert_eq!(eps, vec![("a".to_string(), 0), ("b".to_string(), 1)]);
}

/// Random events (mostly garbage): nothing panics, and the state stays consistent — the
/// snapshot equals the deltas replayed, and equals a fresh topology given the final objects
/// as one relist.
#[test]
fn garbage_events_keep_the_state_consistent() {
    use crate::model::tests::Garbage;
    let mut g = Garbage::new(0xfeed);
    let mut t = topo();
    let mut replayed: BTreeMap<ServicePortKey, ServicePort> = BTreeMap::new();
    let mut services: BTreeMap<NamespacedName, Service> = BTreeMap::new();
    let mut slices: BTreeMap<NamespacedName, EndpointSlice> = BTreeMap::new();
    let (mut max_ports, mut max_endpoints) = (0, 0);
    let replay = |t: &mut Topology, replayed: &mut BTreeMap<_, _>| {
        if let Some(d) = t.take_delta() {
            for k in d.removed {
                assert!(replayed.remove(&k).is_some(), "removed key was never sent");
            }
            for p in d.upserts {
                replayed.insert(p.key.clone(), p);
            }
        }
    };
    for round in 0..4000u32 {
        match g.next() % 7 {
            0 | 1 => {
                let s = if g.next().is_multiple_of(2) {
                    g.service()
                } else {
                    g.plausible_service()
                };
                services.insert(NamespacedName::of(&s.metadata), s.clone());
                t.apply(SourceEvent::Service(ResourceEvent::Applied(s)));
            }
            2 | 3 => {
                let s = if g.next().is_multiple_of(3) {
                    g.slice()
                } else {
                    g.plausible_slice()
                };
                slices.insert(NamespacedName::of(&s.metadata), s.clone());
                t.apply(SourceEvent::Slice(ResourceEvent::Applied(s)));
            }
            4 => {
                if let Some(id) = services.keys().nth((g.next() % 8) as usize).cloned() {
                    let s = services.remove(&id).unwrap();
                    t.apply(SourceEvent::Service(ResourceEvent::Deleted(s)));
                }
            }
            5 => {
                if let Some(id) = slices.keys().nth((g.next() % 16) as usize).cloned() {
                    let s = slices.remove(&id).unwrap();
                    t.apply(SourceEvent::Slice(ResourceEvent::Deleted(s)));
                }
            }
            _ => {
                t.apply(SourceEvent::Node(ResourceEvent::Applied(g.node(NODE))));
            }
        }
        if round.is_multiple_of(3) {
            replay(&mut t, &mut replayed);
        }
        max_ports = max_ports.max(t.service_port_count());
        max_endpoints = max_endpoints.max(t.endpoint_count());
    }
    replay(&mut t, &mut replayed);
    let snapshot = t.snapshot();
    assert!(
        snapshot.windows(2).all(|w| w[0].key < w[1].key),
        "sorted, unique"
    );
    assert_eq!(
        t.endpoint_count(),
        snapshot.iter().map(|p| p.endpoints.len()).sum::<usize>()
    );
    let replayed: Vec<ServicePort> = replayed.into_values().collect();
    assert_eq!(snapshot, replayed, "deltas replayed give the snapshot");

    let mut fresh = Topology::new(TopologyConfig::new(NODE, true, true));
    if let Some(n) = t.node() {
        // Give the fresh topology the same node (its last valid form).
        let mut node_obj = node(NODE, n.zone.as_deref(), None);
        node_obj.spec = None;
        fresh.apply(SourceEvent::Node(ResourceEvent::Applied(node_obj)));
    }
    fresh.apply(SourceEvent::Slice(ResourceEvent::Replaced(
        slices.into_values().collect(),
    )));
    fresh.apply(SourceEvent::Service(ResourceEvent::Replaced(
        services.into_values().collect(),
    )));
    assert_eq!(fresh.snapshot(), snapshot, "a relist gives the same state");
    assert!(
        max_ports > 0 && max_endpoints > 0,
        "the generator produced valid services with endpoints"
    );
}
