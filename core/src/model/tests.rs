//! Model tests: every kind of bad input from issue 3 is refused with a reason naming the object;
//! good input gets upstream's defaults; garbage never panics.

use super::fixtures::*;
use super::node::NodeInfo;
use super::service::{ServiceInfo, ServiceType, TargetPort, TrafficDistribution};
use super::slice::SliceInfo;
use super::*;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_plugin_api::model::{IpFamily, IpMode, TrafficPolicy};

fn service_err(s: Service) -> Invalid {
    match ServiceInfo::from_service(&s) {
        Err(e) => e,
        Ok(ok) => panic!("expected invalid, got {ok:?}"),
    }
}

fn service_ok(s: Service) -> ServiceInfo {
    match ServiceInfo::from_service(&s) {
        Ok(Accepted::Valid(v)) => v,
        other => panic!("expected valid, got {other:?}"),
    }
}

fn slice_err(s: EndpointSlice) -> Invalid {
    match SliceInfo::from_slice(&s) {
        Err(e) => e,
        Ok(ok) => panic!("expected invalid, got {ok:?}"),
    }
}

fn slice_ok(s: EndpointSlice) -> SliceInfo {
    match SliceInfo::from_slice(&s) {
        Ok(Accepted::Valid(v)) => v,
        other => panic!("expected valid, got {other:?}"),
    }
}

/// Asserts the error names the object and contains `needle` in its reason.
fn assert_names(e: &Invalid, kind: ObjectKind, ns: &str, name: &str, needle: &str) {
    assert_eq!(e.kind, kind);
    assert_eq!(e.object, NamespacedName::new(ns, name));
    assert!(
        e.reason.contains(needle),
        "reason `{}` should mention `{needle}`",
        e.reason
    );
    let text = e.to_string();
    assert!(
        text.contains(&format!("{kind} {ns}/{name}")),
        "message `{text}` names the object"
    );
}

// ---- Bad input (issue 3): each is refused with a reason naming the object. ----

#[test]
fn service_with_invalid_cluster_ip_is_refused() {
    let e = service_err(svc("ns", "a", &["10.0.0.300"]).port("", "TCP", 80).build());
    assert_names(&e, ObjectKind::Service, "ns", "a", "clusterIPs");
    let e = service_err(svc("ns", "b", &["banana"]).port("", "TCP", 80).build());
    assert_names(&e, ObjectKind::Service, "ns", "b", "banana");
    // Two IPv4 cluster IPs is not dual stack.
    let e = service_err(svc("ns", "c", &["10.0.0.1", "10.0.0.2"]).build());
    assert_names(&e, ObjectKind::Service, "ns", "c", "same family");
}

#[test]
fn service_port_zero_or_too_big_is_refused() {
    let e = service_err(svc("ns", "zero", &["10.0.0.1"]).port("", "TCP", 0).build());
    assert_names(&e, ObjectKind::Service, "ns", "zero", "port 0");
    let e = service_err(
        svc("ns", "big", &["10.0.0.1"])
            .port("", "TCP", 70000)
            .build(),
    );
    assert_names(&e, ObjectKind::Service, "ns", "big", "port 70000");
    let e = service_err(svc("ns", "neg", &["10.0.0.1"]).port("", "TCP", -1).build());
    assert_names(&e, ObjectKind::Service, "ns", "neg", "port -1");
    let e = service_err(
        svc("ns", "np", &["10.0.0.1"])
            .port("", "TCP", 80)
            .node_port(70000)
            .build(),
    );
    assert_names(&e, ObjectKind::Service, "ns", "np", "nodePort 70000");
}

#[test]
fn service_unknown_protocol_is_refused() {
    let e = service_err(
        svc("ns", "icmp", &["10.0.0.1"])
            .port("", "ICMP", 80)
            .build(),
    );
    assert_names(&e, ObjectKind::Service, "ns", "icmp", "protocol \"ICMP\"");
    let e = service_err(
        svc("ns", "lower", &["10.0.0.1"])
            .port("", "tcp", 80)
            .build(),
    );
    assert_names(&e, ObjectKind::Service, "ns", "lower", "protocol");
}

#[test]
fn service_duplicate_ports_are_refused() {
    let e = service_err(
        svc("ns", "dup", &["10.0.0.1"])
            .port("a", "TCP", 80)
            .port("b", "TCP", 80)
            .build(),
    );
    assert_names(
        &e,
        ObjectKind::Service,
        "ns",
        "dup",
        "80/tcp is listed twice",
    );
    let e = service_err(
        svc("ns", "dupname", &["10.0.0.1"])
            .port("a", "TCP", 80)
            .port("a", "TCP", 81)
            .build(),
    );
    assert_names(
        &e,
        ObjectKind::Service,
        "ns",
        "dupname",
        "name is listed twice",
    );
    // Same number, different protocols: fine (DNS does this).
    let ok = service_ok(
        svc("ns", "dns", &["10.0.0.1"])
            .port("dns", "UDP", 53)
            .port("dns-tcp", "TCP", 53)
            .build(),
    );
    assert_eq!(ok.ports.len(), 2);
}

#[test]
fn other_bad_service_fields_are_refused() {
    let base = || svc("ns", "x", &["10.0.0.1"]).port("", "TCP", 80);
    let cases: Vec<(Service, &str)> = vec![
        (base().external_ips(&["1.2.3"]).build(), "externalIPs"),
        (base().lb_ingress("nope", None).build(), "ingress"),
        (
            base().source_ranges(&["10.0.0.0/33"]).build(),
            "loadBalancerSourceRanges",
        ),
        (base().typ("Weird").build(), "spec.type"),
        (base().itp("Sometimes").build(), "internalTrafficPolicy"),
        (base().etp("Global").build(), "externalTrafficPolicy"),
        (base().affinity(Some(0)).build(), "timeoutSeconds"),
        (base().affinity(Some(86401)).build(), "timeoutSeconds"),
        (
            base()
                .annotation("kproxy.io/ipvs-scheduler", "Round Robin!")
                .build(),
            "ipvs-scheduler",
        ),
        (
            base()
                .annotation(service::ANNOTATION_LB_SOURCE_RANGES, "10.0.0.0/8, junk")
                .build(),
            "load-balancer-source-ranges",
        ),
        (
            svc("ns", "x", &["10.0.0.1"])
                .named_target("p", 80, "Not_A_Name")
                .build(),
            "targetPort",
        ),
    ];
    for (s, needle) in cases {
        let e = service_err(s);
        assert_names(&e, ObjectKind::Service, "ns", "x", needle);
    }
}

#[test]
fn one_megabyte_objects_are_refused() {
    let mb = "x".repeat(1 << 20);
    // A huge annotation breaks the API's annotation limit.
    let e = service_err(
        svc("ns", "fat", &["10.0.0.1"])
            .port("", "TCP", 80)
            .annotation("junk", &mb)
            .build(),
    );
    assert_names(&e, ObjectKind::Service, "ns", "fat", "annotations");
    // A huge label (not an annotation) breaks the object size limit.
    let e = service_err(
        svc("ns", "fat2", &["10.0.0.1"])
            .port("", "TCP", 80)
            .label("junk", &mb)
            .build(),
    );
    assert_names(&e, ObjectKind::Service, "ns", "fat2", "over the limit");
    // Many external IPs adding up to more than 1 MiB.
    let ips: Vec<String> = (0..70_000u32)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let e = service_err(
        svc("ns", "fat3", &["10.0.0.1"])
            .port("", "TCP", 80)
            .external_ips(&refs)
            .build(),
    );
    assert_names(&e, ObjectKind::Service, "ns", "fat3", "over the limit");

    let e = slice_err(
        slice("ns", "fatslice", "svc", "IPv4")
            .annotation("junk", &mb)
            .build(),
    );
    assert_names(
        &e,
        ObjectKind::EndpointSlice,
        "ns",
        "fatslice",
        "annotations",
    );
    let mut many = slice("ns", "many", "svc", "IPv4").port("", "TCP", 80);
    for i in 0..1001u32 {
        many = many.ep(ep(&format!("10.1.{}.{}", i >> 8, i & 255)));
    }
    let e = slice_err(many.build());
    assert_names(
        &e,
        ObjectKind::EndpointSlice,
        "ns",
        "many",
        "1001 endpoints",
    );

    let mut n = node("n1", None, None);
    n.metadata.annotations = Some([("junk".to_string(), mb)].into());
    let e = NodeInfo::from_node(&n).unwrap_err();
    assert_eq!(e.kind, ObjectKind::Node);
    assert_eq!(&*e.object.name, "n1");
}

#[test]
fn slice_with_malformed_address_is_refused() {
    let e = slice_err(
        slice("ns", "s1", "svc", "IPv4")
            .port("", "TCP", 80)
            .ep(ep("10.1.1.1"))
            .ep(ep("10.1.1"))
            .build(),
    );
    assert_names(&e, ObjectKind::EndpointSlice, "ns", "s1", "endpoints[1]");
    // An address of the wrong family.
    let e = slice_err(
        slice("ns", "s2", "svc", "IPv4")
            .port("", "TCP", 80)
            .ep(ep("fd00::1"))
            .build(),
    );
    assert_names(&e, ObjectKind::EndpointSlice, "ns", "s2", "is not IPv4");
    let e = slice_err(
        slice("ns", "s3", "svc", "IPv6")
            .port("", "TCP", 80)
            .ep(ep("10.0.0.1"))
            .build(),
    );
    assert_names(&e, ObjectKind::EndpointSlice, "ns", "s3", "is not IPv6");
}

#[test]
fn slice_with_unknown_address_type_is_refused() {
    let e = slice_err(slice("ns", "s", "svc", "IPv5").build());
    assert_names(
        &e,
        ObjectKind::EndpointSlice,
        "ns",
        "s",
        "addressType \"IPv5\"",
    );
}

#[test]
fn slice_without_service_label_is_refused() {
    let mut s = slice("ns", "orphan", "svc", "IPv4").build();
    s.metadata.labels = None;
    let e = slice_err(s);
    assert_names(
        &e,
        ObjectKind::EndpointSlice,
        "ns",
        "orphan",
        "kubernetes.io/service-name",
    );
    let e = slice_err(slice("ns", "empty", "", "IPv4").build());
    assert_names(&e, ObjectKind::EndpointSlice, "ns", "empty", "service-name");
}

#[test]
fn slice_bad_ports_are_refused_or_skipped_as_upstream() {
    let e = slice_err(
        slice("ns", "p", "svc", "IPv4")
            .port("a", "ICMP", 80)
            .build(),
    );
    assert_names(&e, ObjectKind::EndpointSlice, "ns", "p", "protocol");
    let e = slice_err(
        slice("ns", "p", "svc", "IPv4")
            .port("a", "TCP", 70000)
            .build(),
    );
    assert_names(&e, ObjectKind::EndpointSlice, "ns", "p", "port 70000");
    let e = slice_err(
        slice("ns", "p", "svc", "IPv4")
            .port("a", "TCP", 80)
            .port("a", "TCP", 81)
            .build(),
    );
    assert_names(&e, ObjectKind::EndpointSlice, "ns", "p", "listed twice");
    // Upstream skips a port with a nil name or a zero port, keeping the rest of the slice.
    let mut s = slice("ns", "p", "svc", "IPv4")
        .port("ok", "TCP", 80)
        .port("zero", "TCP", 0)
        .build();
    s.ports.as_mut().unwrap().push(Default::default());
    let ok = slice_ok(s);
    assert_eq!(ok.ports.len(), 1);
    assert_eq!(ok.ports[0].name, "ok");
}

// ---- Ignored objects: not warnings. ----

#[test]
fn headless_external_name_and_other_proxy_services_are_ignored() {
    let ignored = |s: Service| match ServiceInfo::from_service(&s) {
        Ok(Accepted::Ignored(why)) => why,
        other => panic!("expected ignored, got {other:?}"),
    };
    assert_eq!(
        ignored(svc("ns", "h", &["None"]).port("", "TCP", 80).build()),
        Ignored::Headless
    );
    assert_eq!(
        ignored(svc("ns", "e", &[]).typ("ExternalName").build()),
        Ignored::ExternalName
    );
    assert_eq!(ignored(svc("ns", "n", &[]).build()), Ignored::NoClusterIp);
    assert_eq!(
        ignored(
            svc("ns", "o", &["10.0.0.1"])
                .port("", "TCP", 80)
                .label("service.kubernetes.io/service-proxy-name", "cilium")
                .build()
        ),
        Ignored::OtherProxy("cilium".into())
    );
    // A headless service is ignored even when its ports would be invalid.
    assert!(matches!(
        ServiceInfo::from_service(&svc("ns", "h", &["None"]).port("", "TCP", 0).build()),
        Ok(Accepted::Ignored(Ignored::Headless))
    ));
}

#[test]
fn fqdn_headless_and_other_proxy_slices_are_ignored() {
    let ignored = |s: EndpointSlice| match SliceInfo::from_slice(&s) {
        Ok(Accepted::Ignored(why)) => why,
        other => panic!("expected ignored, got {other:?}"),
    };
    assert_eq!(
        ignored(
            slice("ns", "f", "svc", "FQDN")
                .ep(ep("example.com"))
                .build()
        ),
        Ignored::FqdnSlice
    );
    assert_eq!(
        ignored(
            slice("ns", "h", "svc", "IPv4")
                .label("service.kubernetes.io/headless", "")
                .build()
        ),
        Ignored::Headless
    );
    assert_eq!(
        ignored(
            slice("ns", "o", "svc", "IPv4")
                .label("service.kubernetes.io/service-proxy-name", "x")
                .build()
        ),
        Ignored::OtherProxy("x".into())
    );
}

// ---- Good input: upstream's defaults. ----

#[test]
fn service_defaults_follow_upstream() {
    let mut s = svc("ns", "d", &["10.0.0.1"]).build();
    s.spec.as_mut().unwrap().ports = Some(vec![k8s_openapi::api::core::v1::ServicePort {
        port: 80,
        ..Default::default()
    }]);
    let info = service_ok(s);
    assert_eq!(info.service_type, ServiceType::ClusterIp);
    assert_eq!(
        info.ports[0].protocol,
        kproxy_plugin_api::model::Protocol::Tcp
    );
    assert_eq!(info.ports[0].name, "");
    assert_eq!(info.ports[0].target_port, TargetPort::Number(80));
    assert!(!info.session_affinity.client_ip);
    assert_eq!(info.session_affinity.timeout_seconds, 0);
    assert_eq!(info.internal_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(info.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(info.health_check_node_port, 0);

    let info = service_ok(
        svc("ns", "a", &["10.0.0.1"])
            .port("", "TCP", 80)
            .affinity(None)
            .build(),
    );
    assert!(info.session_affinity.client_ip);
    assert_eq!(info.session_affinity.timeout_seconds, 10_800);
    let info = service_ok(
        svc("ns", "a", &["10.0.0.1"])
            .port("", "TCP", 80)
            .affinity(Some(60))
            .build(),
    );
    assert_eq!(info.session_affinity.timeout_seconds, 60);
}

#[test]
fn external_traffic_policy_only_when_externally_accessible() {
    // ClusterIP without external IPs: ETP Local means nothing (upstream ExternalPolicyLocal).
    let info = service_ok(
        svc("ns", "a", &["10.0.0.1"])
            .port("", "TCP", 80)
            .etp("Local")
            .build(),
    );
    assert_eq!(info.external_traffic_policy, TrafficPolicy::Cluster);
    // ClusterIP with external IPs: honoured.
    let info = service_ok(
        svc("ns", "a", &["10.0.0.1"])
            .port("", "TCP", 80)
            .etp("Local")
            .external_ips(&["192.0.2.1"])
            .build(),
    );
    assert_eq!(info.external_traffic_policy, TrafficPolicy::Local);
    // NodePort: honoured, but no health check node port (only LoadBalancer gets one).
    let info = service_ok(
        svc("ns", "a", &["10.0.0.1"])
            .typ("NodePort")
            .port("", "TCP", 80)
            .node_port(30080)
            .etp("Local")
            .hc_node_port(32000)
            .build(),
    );
    assert_eq!(info.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(info.ports[0].node_port, 30080);
    assert_eq!(info.health_check_node_port, 0);
    // LoadBalancer + Local: health check node port kept.
    let info = service_ok(
        svc("ns", "a", &["10.0.0.1"])
            .typ("LoadBalancer")
            .port("", "TCP", 80)
            .etp("Local")
            .hc_node_port(32000)
            .build(),
    );
    assert_eq!(info.health_check_node_port, 32000);
    // LoadBalancer + Cluster: not kept.
    let info = service_ok(
        svc("ns", "a", &["10.0.0.1"])
            .typ("LoadBalancer")
            .port("", "TCP", 80)
            .hc_node_port(32000)
            .build(),
    );
    assert_eq!(info.health_check_node_port, 0);
}

#[test]
fn load_balancer_fields_are_parsed() {
    let info = service_ok(
        svc("ns", "lb", &["10.0.0.1", "fd00::1"])
            .typ("LoadBalancer")
            .port("", "TCP", 80)
            .lb_ingress("192.0.2.10", None)
            .lb_ingress("192.0.2.11", Some("Proxy"))
            .lb_ingress("2001:db8::10", Some("VIP"))
            .source_ranges(&[" 10.0.0.0/8 ", "2001:db8::/32"])
            .build(),
    );
    assert_eq!(info.cluster_ips.len(), 2);
    let modes: Vec<_> = info
        .load_balancer_ingress
        .iter()
        .map(|i| (i.ip.to_string(), i.ip_mode))
        .collect();
    assert_eq!(
        modes,
        vec![
            ("192.0.2.10".to_string(), IpMode::Vip),
            ("192.0.2.11".to_string(), IpMode::Proxy),
            ("2001:db8::10".to_string(), IpMode::Vip),
        ]
    );
    let ranges: Vec<String> = info
        .load_balancer_source_ranges
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(ranges, vec!["10.0.0.0/8", "2001:db8::/32"]);

    // The legacy annotation applies only when the field is empty.
    let info = service_ok(
        svc("ns", "lb", &["10.0.0.1"])
            .port("", "TCP", 80)
            .annotation(
                service::ANNOTATION_LB_SOURCE_RANGES,
                "192.168.0.0/16,10.1.0.0/16",
            )
            .build(),
    );
    assert_eq!(info.load_balancer_source_ranges.len(), 2);
    let info = service_ok(
        svc("ns", "lb", &["10.0.0.1"])
            .port("", "TCP", 80)
            .source_ranges(&["172.16.0.0/12"])
            .annotation(service::ANNOTATION_LB_SOURCE_RANGES, "192.168.0.0/16")
            .build(),
    );
    assert_eq!(info.load_balancer_source_ranges.len(), 1);
    assert_eq!(
        info.load_balancer_source_ranges[0].to_string(),
        "172.16.0.0/12"
    );
}

#[test]
fn scheduler_traffic_distribution_and_named_target_are_kept() {
    let info = service_ok(
        svc("ns", "s", &["10.0.0.1"])
            .named_target("http", 80, "web")
            .annotation("kproxy.io/ipvs-scheduler", "wlc")
            .traffic_distribution("PreferSameNode")
            .build(),
    );
    assert_eq!(info.ipvs_scheduler.as_deref(), Some("wlc"));
    assert_eq!(
        info.traffic_distribution,
        Some(TrafficDistribution::PreferSameNode)
    );
    assert_eq!(info.ports[0].target_port, TargetPort::Name("web".into()));
}

#[test]
fn legacy_single_cluster_ip_and_sloppy_addresses_parse() {
    let mut s = svc("ns", "old", &[]).port("", "TCP", 80).build();
    s.spec.as_mut().unwrap().cluster_ip = Some("010.000.000.001".into());
    let info = service_ok(s);
    assert_eq!(info.cluster_ips[0].to_string(), "10.0.0.1");
    assert_eq!(parse_ip("::ffff:10.1.2.3").unwrap().family, IpFamily::V4);
    assert_eq!(parse_ip("::ffff:a01:203").unwrap().family, IpFamily::V6);
    assert!(parse_ip("1.2.3.4.5").is_none());
    assert!(parse_ip("0001.2.3.4").is_none());
}

#[test]
fn slice_conditions_default_as_upstream() {
    let mut nil = ep("10.1.0.1");
    nil.0.conditions = None;
    let mut partial = ep("10.1.0.2");
    partial.0.conditions = Some(k8s_openapi::api::discovery::v1::EndpointConditions {
        ready: Some(false),
        serving: None,
        terminating: None,
    });
    let info = slice_ok(
        slice("ns", "s", "svc", "IPv4")
            .port("", "TCP", 80)
            .ep(nil)
            .ep(partial)
            .ep(ep("10.1.0.3").terminating_serving().node("n1").zone("z1"))
            .ep(ep("10.1.0.4")
                .zone_hints(&["b", "a", "a"])
                .node_hints(&["n2"]))
            .annotation(
                slice::ANNOTATION_LAST_CHANGE_TRIGGER_TIME,
                "2024-05-01T10:00:00Z",
            )
            .build(),
    );
    let e = &info.endpoints;
    assert!(e[0].ready && e[0].serving && !e[0].terminating);
    // serving nil = true, as upstream's endpointslicecache.go and the API documentation say.
    assert!(!e[1].ready && e[1].serving && !e[1].terminating);
    assert!(!e[2].ready && e[2].serving && e[2].terminating);
    assert_eq!(&*e[2].node_name, "n1");
    assert_eq!(&*e[2].zone, "z1");
    let names = |v: &[std::sync::Arc<str>]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(names(&e[3].zone_hints), vec!["a", "b"]);
    assert_eq!(names(&e[3].node_hints), vec!["n2"]);
    assert_eq!(info.service, NamespacedName::new("ns", "svc"));
    assert_eq!(info.family, IpFamily::V4);
    let t = info.trigger_time.unwrap();
    assert_eq!(
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        1_714_557_600
    );
    // A malformed trigger time is ignored, not fatal.
    let info = slice_ok(
        slice("ns", "s", "svc", "IPv4")
            .annotation(slice::ANNOTATION_LAST_CHANGE_TRIGGER_TIME, "yesterday")
            .build(),
    );
    assert_eq!(info.trigger_time, None);
    // An endpoint without addresses is skipped, as upstream does.
    let mut empty = ep("10.0.0.1");
    empty.0.addresses.clear();
    let info = slice_ok(slice("ns", "s", "svc", "IPv4").ep(empty).build());
    assert!(info.endpoints.is_empty());
}

#[test]
fn node_info_reads_zone_addresses_cidrs_and_deletion_signs() {
    let mut n = node("n1", Some("zone-a"), Some("192.0.2.5"));
    n.status
        .as_mut()
        .unwrap()
        .addresses
        .as_mut()
        .unwrap()
        .extend([
            k8s_openapi::api::core::v1::NodeAddress {
                address: "203.0.113.5".into(),
                type_: "ExternalIP".into(),
            },
            k8s_openapi::api::core::v1::NodeAddress {
                address: "n1.example".into(),
                type_: "Hostname".into(),
            },
        ]);
    let info = NodeInfo::from_node(&n).unwrap();
    assert_eq!(info.zone.as_deref(), Some("zone-a"));
    assert!(!info.being_deleted && !info.to_be_deleted_taint);
    let facts = info.facts();
    assert_eq!(facts.name.as_str(), "n1");
    assert_eq!(facts.zone.as_str(), "zone-a");
    let addrs: Vec<String> = facts.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs, vec!["192.0.2.5", "203.0.113.5"]);
    assert_eq!(facts.pod_cidrs[0].to_string(), "10.244.1.0/24");

    n.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    n.spec.as_mut().unwrap().taints = Some(vec![taint("ToBeDeletedByClusterAutoscaler")]);
    let info = NodeInfo::from_node(&n).unwrap();
    assert!(info.being_deleted && info.to_be_deleted_taint);

    let mut bad = node("n2", None, Some("not-an-ip"));
    let e = NodeInfo::from_node(&bad).unwrap_err();
    assert!(e.to_string().contains("Node n2"), "{e}");
    bad.status = None;
    bad.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.0.0.0/99".into()]);
    assert!(NodeInfo::from_node(&bad).is_err());
}

// ---- Garbage never panics. ----

/// A tiny deterministic generator (xorshift) so the garbage is the same on every run.
pub(crate) struct Garbage(u64);

impl Garbage {
    pub(crate) fn new(seed: u64) -> Self {
        Garbage(seed | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
    pub(crate) fn int(&mut self) -> i32 {
        const INTS: [i32; 12] = [
            0,
            1,
            -1,
            80,
            443,
            65535,
            65536,
            70000,
            i32::MAX,
            i32::MIN,
            30000,
            10800,
        ];
        INTS[(self.next() % INTS.len() as u64) as usize]
    }
    pub(crate) fn text(&mut self) -> String {
        const TEXTS: [&str; 22] = [
            "",
            "None",
            "10.0.0.1",
            "fd00::1",
            "10.0.0.300",
            "::ffff:1.2.3.4",
            "1.2.3.4/33",
            "10.0.0.0/8",
            "TCP",
            "UDP",
            "SCTP",
            "ICMP",
            "Local",
            "Cluster",
            "LoadBalancer",
            "NodePort",
            "ExternalName",
            "ClientIP",
            "IPv4",
            "IPv6",
            "FQDN",
            "\u{0}\u{ffff}ü🙂",
        ];
        let mut s = self.pick(&TEXTS).to_string();
        if self.next().is_multiple_of(5) {
            s.push_str(self.pick(&TEXTS));
        }
        s
    }
    fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        (!self.next().is_multiple_of(3)).then(|| f(self))
    }
    fn list<T>(&mut self, mut f: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.next() % 4;
        (0..n).map(|_| f(self)).collect()
    }
    pub(crate) fn service(&mut self) -> Service {
        use k8s_openapi::api::core::v1::*;
        let mut s = svc("ns", &format!("g{}", self.next() % 8), &[]).build();
        let spec = s.spec.as_mut().unwrap();
        spec.cluster_ip = self.maybe(Self::text);
        spec.cluster_ips = self.maybe(|g| g.list(Self::text));
        spec.type_ = self.maybe(Self::text);
        spec.external_ips = self.maybe(|g| g.list(Self::text));
        spec.external_traffic_policy = self.maybe(Self::text);
        spec.internal_traffic_policy = self.maybe(Self::text);
        spec.health_check_node_port = self.maybe(Self::int);
        spec.load_balancer_source_ranges = self.maybe(|g| g.list(Self::text));
        spec.session_affinity = self.maybe(Self::text);
        spec.traffic_distribution = self.maybe(Self::text);
        spec.session_affinity_config = self.maybe(|g| SessionAffinityConfig {
            client_ip: g.maybe(|g| ClientIPConfig {
                timeout_seconds: g.maybe(Self::int),
            }),
        });
        spec.ports = self.maybe(|g| {
            g.list(|g| ServicePort {
                name: g.maybe(Self::text),
                port: g.int(),
                protocol: g.maybe(Self::text),
                node_port: g.maybe(Self::int),
                target_port: g.maybe(|g| {
                    if g.next().is_multiple_of(2) {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(g.int())
                    } else {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(g.text())
                    }
                }),
                app_protocol: None,
            })
        });
        s.status = self.maybe(|g| ServiceStatus {
            load_balancer: g.maybe(|g| LoadBalancerStatus {
                ingress: g.maybe(|g| {
                    g.list(|g| LoadBalancerIngress {
                        ip: g.maybe(Self::text),
                        ip_mode: g.maybe(Self::text),
                        ..Default::default()
                    })
                }),
            }),
            conditions: None,
        });
        if self.next().is_multiple_of(4) {
            s.metadata.namespace = None;
        }
        if self.next().is_multiple_of(9) {
            s.metadata.name = None;
        }
        if self.next().is_multiple_of(5) {
            s.metadata.annotations = Some(
                [
                    ("kproxy.io/ipvs-scheduler".to_string(), self.text()),
                    (
                        service::ANNOTATION_LB_SOURCE_RANGES.to_string(),
                        self.text(),
                    ),
                ]
                .into(),
            );
        }
        s
    }
    pub(crate) fn slice(&mut self) -> EndpointSlice {
        use k8s_openapi::api::discovery::v1::*;
        let svc_name = format!("g{}", self.next() % 8);
        let mut s = slice("ns", &format!("s{}", self.next() % 16), &svc_name, "IPv4").build();
        s.address_type = self.text();
        if self.next().is_multiple_of(6) {
            s.metadata.labels = None;
        }
        s.ports = self.maybe(|g| {
            g.list(|g| EndpointPort {
                name: g.maybe(Self::text),
                port: g.maybe(Self::int),
                protocol: g.maybe(Self::text),
                app_protocol: None,
            })
        });
        s.endpoints = self.list(|g| Endpoint {
            addresses: g.list(Self::text),
            conditions: g.maybe(|g| EndpointConditions {
                ready: g.maybe(|g| g.next().is_multiple_of(2)),
                serving: g.maybe(|g| g.next().is_multiple_of(2)),
                terminating: g.maybe(|g| g.next().is_multiple_of(2)),
            }),
            node_name: g.maybe(Self::text),
            zone: g.maybe(Self::text),
            hints: g.maybe(|g| EndpointHints {
                for_zones: g.maybe(|g| g.list(|g| ForZone { name: g.text() })),
                for_nodes: g.maybe(|g| g.list(|g| ForNode { name: g.text() })),
            }),
            ..Default::default()
        });
        if self.next().is_multiple_of(5) {
            s.metadata.annotations = Some(
                [(
                    slice::ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(),
                    self.text(),
                )]
                .into(),
            );
        }
        s
    }
    /// A service that is usually valid: varied policies and ports, names `g0`–`g7`.
    pub(crate) fn plausible_service(&mut self) -> Service {
        let name = format!("g{}", self.next() % 8);
        let ips: &[&str] = match self.next() % 3 {
            0 => &["10.96.0.1"],
            1 => &["fd00::1"],
            _ => &["10.96.0.1", "fd00::1"],
        };
        let mut b = svc("ns", &name, ips);
        b = match self.next() % 3 {
            0 => b.typ("NodePort").port("http", "TCP", 80).node_port(30080),
            1 => b.port("http", "TCP", 80).port("dns", "UDP", 53),
            _ => b.port("", self.pick(&["TCP", "UDP", "SCTP"]), 80),
        };
        if self.next().is_multiple_of(3) {
            b = b.itp("Local");
        }
        if self.next().is_multiple_of(3) {
            b = b.etp("Local");
        }
        if self.next().is_multiple_of(4) {
            b = b.external_ips(&[self.pick(&["192.0.2.1", "2001:db8::1"])]);
        }
        b.build()
    }
    /// A slice that is usually valid, for services `g0`–`g7`, with varied conditions, nodes
    /// and hints.
    pub(crate) fn plausible_slice(&mut self) -> EndpointSlice {
        let v6 = self.next().is_multiple_of(3);
        let mut s = slice(
            "ns",
            &format!("s{}", self.next() % 16),
            &format!("g{}", self.next() % 8),
            if v6 { "IPv6" } else { "IPv4" },
        )
        .port(
            self.pick(&["http", "", "dns"]),
            self.pick(&["TCP", "UDP"]),
            8080,
        );
        for _ in 0..self.next() % 5 {
            let last = self.next() % 6;
            let addr = if v6 {
                format!("fd00::{last}")
            } else {
                format!("10.0.0.{last}")
            };
            let mut e = ep(&addr).node(self.pick(&["n1", "n2", "n3"]));
            e = match self.next() % 4 {
                0 => e.not_ready(),
                1 => e.terminating_serving(),
                _ => e,
            };
            if self.next().is_multiple_of(3) {
                e = e.zone_hints(&[self.pick(&["za", "zb"])]);
            }
            if self.next().is_multiple_of(4) {
                e = e.node_hints(&[self.pick(&["n1", "n2"])]);
            }
            s = s.ep(e);
        }
        s.build()
    }
    pub(crate) fn node(&mut self, name: &str) -> Node {
        use k8s_openapi::api::core::v1::*;
        let mut n = node(name, None, None);
        n.metadata.labels =
            self.maybe(|g| [("topology.kubernetes.io/zone".to_string(), g.text())].into());
        let spec = n.spec.as_mut().unwrap();
        spec.pod_cidr = self.maybe(Self::text);
        spec.pod_cidrs = self.maybe(|g| g.list(Self::text));
        n.status = self.maybe(|g| NodeStatus {
            addresses: g.maybe(|g| {
                g.list(|g| NodeAddress {
                    address: g.text(),
                    type_: g.pick(&["InternalIP", "ExternalIP", "Hostname", ""]).into(),
                })
            }),
            ..Default::default()
        });
        n
    }
}

#[test]
fn garbage_never_panics() {
    let mut g = Garbage::new(0x5eed);
    let (mut valid, mut invalid) = (0, 0);
    for _ in 0..5000 {
        match ServiceInfo::from_service(&g.service()) {
            Ok(_) => valid += 1,
            Err(e) => {
                invalid += 1;
                assert!(!e.reason.is_empty());
            }
        }
        match SliceInfo::from_slice(&g.slice()) {
            Ok(_) => valid += 1,
            Err(_) => invalid += 1,
        }
        let _ = NodeInfo::from_node(&g.node("n"));
    }
    // The generator produces both kinds, so both paths were exercised.
    assert!(
        valid > 100 && invalid > 100,
        "valid {valid} invalid {invalid}"
    );
}
