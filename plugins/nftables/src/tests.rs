//! Unit tests of the renderer and the planner: what a service port becomes, and that an
//! incremental sync ends where a full sync of the same state does.

use crate::{
    plan::{self, AffinitySnapshot, FamilyProgram},
    render::{
        policy_chains, render_globals, render_port, Container, FamilyCtx, NoEndpoint, PortObjects,
    },
    rule::ElemKey,
    sample::{self, PortBuilder},
    script::{Script, Sink as _},
    slots::SlotIds,
};
use kproxy_plugin_api::{
    IpFamily, IpMode, LocalDetectMode, NodeFacts, Protocol, ProxySettings, ProxyState, ServicePort,
    ServicePortKey,
};

fn ctx<'a>(family: IpFamily, settings: &'a ProxySettings, node: &'a NodeFacts) -> FamilyCtx<'a> {
    FamilyCtx {
        family,
        table: "kproxy",
        settings,
        node,
    }
}

/// Renders `sp` with slot blocks assigned as the planner assigns them.
fn render(ctx: &FamilyCtx<'_>, sp: &ServicePort) -> Option<PortObjects> {
    let mut ids = SlotIds::default();
    for chain in policy_chains(&sp.key) {
        ids.ensure(&chain);
    }
    render_port(ctx, &ids, sp)
}

/// The slot elements of `objs` as `first-last : value`, with slots counted from the start of
/// their block.
fn slots(objs: &PortObjects, container_prefix: &str) -> Vec<String> {
    objs.slots
        .iter()
        .filter(|e| e.container.name().starts_with(container_prefix))
        .map(|e| match (&e.key, &e.value) {
            (ElemKey::Slots(first, last), Some(v)) => {
                let start = first - first % crate::slots::SLOTS;
                format!("{}-{} : {v}", first - start, last - start)
            }
            other => panic!("not a slot element: {other:?}"),
        })
        .collect()
}

/// The rules of the `services` chain (the dispatch, and the masquerade rule for cluster IPs)
/// as `render_globals` writes them for `family` under `settings`.
fn services_rules(family: IpFamily, settings: &ProxySettings) -> Vec<String> {
    let node = sample::node();
    let mut text = String::new();
    let mut s = Script::empty(&mut text);
    s.begin(family, "kproxy");
    render_globals(&ctx(family, settings, &node), &mut s);
    let prefix = format!("add rule {} kproxy services ", crate::rule::ip_word(family));
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::to_string)
        .collect()
}

fn render4(sp: &ServicePort) -> PortObjects {
    let settings = sample::settings();
    let node = sample::node();
    render(&ctx(IpFamily::V4, &settings, &node), sp).expect("has an IPv4 cluster IP")
}

/// The element `key` (as nft writes it) of container `c`, its verdict as text.
fn element(objs: &PortObjects, c: Container, key: &str) -> Option<Option<String>> {
    objs.elements
        .iter()
        .find(|e| e.container == c && e.key.to_string() == key)
        .map(|e| e.value.as_ref().map(|v| v.to_string()))
}

/// The rules of the first chain whose name starts with `prefix`, as text.
fn chain(objs: &PortObjects, prefix: &str) -> Vec<String> {
    objs.chains
        .iter()
        .find(|c| c.name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no chain {prefix}… in {objs:#?}"))
        .rules
        .iter()
        .map(|r| r.to_string())
        .collect()
}

fn web() -> PortBuilder {
    PortBuilder::new("default", "web", "http", Protocol::Tcp, "10.96.0.10", 80)
}

#[test]
fn cluster_ip_spreads_over_endpoints_and_masquerades_off_cluster_traffic() {
    let objs = render4(
        &web()
            .endpoint("10.244.1.5", 8080, true)
            .endpoint("10.244.2.6", 8080, false)
            .build(),
    );
    assert_eq!(
        element(&objs, Container::ClusterIps, "10.96.0.10"),
        Some(None)
    );
    let verdict = element(&objs, Container::ServiceIps, "10.96.0.10 . tcp . 80")
        .unwrap()
        .unwrap();
    assert!(verdict.starts_with("goto service-"), "{verdict}");
    assert!(verdict.ends_with("-default/web/tcp/http"), "{verdict}");
    let rules = chain(&objs, "service-");
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert!(
        rules[0].starts_with("meta l4proto tcp dnat ip to numgen random mod 16384 offset ")
            && rules[0].contains(" map @endpoints-tcp-"),
        "the choice is a slot block of a shared map: {}",
        rules[0]
    );
    // Off-cluster traffic to any cluster IP is masqueraded, before the dispatch.
    assert_eq!(
        services_rules(IpFamily::V4, &sample::settings())[0],
        "ip daddr @cluster-ips ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    );
    assert_eq!(
        slots(&objs, "endpoints-tcp-"),
        [
            "0-8191 : 10.244.1.5 . 8080",
            "8192-16383 : 10.244.2.6 . 8080"
        ]
    );
    let map = objs
        .slots
        .iter()
        .find(|e| matches!(e.key, ElemKey::Slots(..)))
        .unwrap()
        .container;
    assert_eq!(
        map.spec(IpFamily::V4, &map.name()).body(),
        "typeof numgen random mod 16384 : ip daddr . tcp dport ; flags interval ;"
    );
    assert!(
        !objs.chains.iter().any(|c| c.name.starts_with("endpoint-")),
        "endpoints need no chain without affinity: {objs:#?}"
    );
    // Each endpoint reaching itself through the service is masqueraded (hairpin).
    for ep in ["10.244.1.5", "10.244.2.6"] {
        assert_eq!(
            element(&objs, Container::HairpinEndpoints, &format!("{ep} . {ep}")),
            Some(None)
        );
    }
    // Nothing is rejected or dropped for a service with endpoints.
    assert!(!objs.elements.iter().any(|e| matches!(
        e.container,
        Container::NoEndpointServices(_) | Container::NoEndpointNodePorts(_)
    )));
}

#[test]
fn masquerade_all_marks_every_cluster_ip_connection() {
    let mut settings = sample::settings();
    settings.masquerade_all = true;
    assert_eq!(
        services_rules(IpFamily::V4, &settings)[0],
        "ip daddr @cluster-ips jump mark-for-masquerade"
    );
}

#[test]
fn local_detection_modes_become_matches() {
    let mut settings = sample::settings();
    settings.local_detect.mode = LocalDetectMode::InterfaceNamePrefix;
    settings.local_detect.interface = "veth".into();
    assert!(services_rules(IpFamily::V4, &settings)[0].contains("iifname != \"veth*\" jump"));
    settings.local_detect.mode = LocalDetectMode::NodeCidr;
    assert!(services_rules(IpFamily::V4, &settings)[0].contains("ip saddr != 10.244.1.0/24 jump"));
    settings.local_detect.mode = LocalDetectMode::None;
    assert!(
        services_rules(IpFamily::V4, &settings)[0].contains(" vmap @service-ips"),
        "no masquerade rule: {:?}",
        services_rules(IpFamily::V4, &settings)
    );
}

#[test]
fn no_endpoints_rejects_and_local_policy_without_local_endpoints_drops() {
    let reject = Container::NoEndpointServices(NoEndpoint::Reject);
    let objs = render4(&web().node_port(30080).external_ip("203.0.113.7").build());
    for key in ["10.96.0.10 . tcp . 80", "203.0.113.7 . tcp . 80"] {
        assert_eq!(element(&objs, reject, key), Some(None));
    }
    assert_eq!(
        element(
            &objs,
            Container::NoEndpointNodePorts(NoEndpoint::Reject),
            "tcp . 30080"
        ),
        Some(None)
    );
    assert!(objs.slots.is_empty());

    // The last endpoint going (or coming back) changes only plain data: the same chains, rules
    // and verdict elements, so the kernel need not re-validate the table.
    let one = render4(
        &web()
            .node_port(30080)
            .external_ip("203.0.113.7")
            .endpoint("10.244.1.5", 8080, true)
            .build(),
    );
    assert_eq!(one.chains, objs.chains);
    let verdicts = |o: &PortObjects| {
        o.elements
            .iter()
            .filter(|e| e.value.is_some())
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(verdicts(&one), verdicts(&objs));
    assert_eq!(element(&one, reject, "10.96.0.10 . tcp . 80"), None);
    assert_eq!(slots(&one, "endpoints-tcp-").len(), 1);

    let objs = render4(
        &web()
            .internal_local()
            .endpoint("10.244.2.6", 80, false)
            .build(),
    );
    assert_eq!(
        element(
            &objs,
            Container::NoEndpointServices(NoEndpoint::Drop),
            "10.96.0.10 . tcp . 80"
        ),
        Some(None)
    );
    let to_local = element(&objs, Container::ServiceIps, "10.96.0.10 . tcp . 80");
    assert!(
        to_local
            .as_ref()
            .is_some_and(|v| v.as_ref().unwrap().starts_with("goto local-")),
        "the cluster IP goes to the (empty) local chain: {to_local:?}"
    );
}

#[test]
fn external_policy_local_keeps_sources_and_short_circuits_pods_and_the_node() {
    let objs = render4(
        &web()
            .node_port(30080)
            .external_local(32000)
            .endpoint("10.244.1.5", 8080, true)
            .endpoint("10.244.2.6", 8080, false)
            .build(),
    );
    let np = element(&objs, Container::ServiceNodePorts, "tcp . 30080")
        .unwrap()
        .unwrap();
    assert!(np.starts_with("goto external-"), "{np}");
    assert_eq!(
        element(&objs, Container::HealthCheckNodePorts, "32000"),
        Some(None)
    );
    let ext = chain(&objs, "external-");
    assert_eq!(ext.len(), 4, "{ext:#?}");
    assert!(
        ext[0].starts_with("ip saddr 10.244.0.0/16 goto service-"),
        "{}",
        ext[0]
    );
    assert!(ext[1].starts_with("fib saddr type local jump mark-for-masquerade"));
    assert!(ext[2].starts_with("fib saddr type local goto service-"));
    assert!(ext[3].starts_with("goto local-"), "{}", ext[3]);
    // The local chain only has the local endpoint; the cluster chain has both.
    // Three slot elements: the local chain's block has the local endpoint, the cluster
    // chain's both.
    let mut all = slots(&objs, "endpoints-tcp-");
    all.sort();
    assert_eq!(
        all,
        [
            "0-16383 : 10.244.1.5 . 8080",
            "0-8191 : 10.244.1.5 . 8080",
            "8192-16383 : 10.244.2.6 . 8080"
        ]
    );

    // No local endpoint: external traffic is dropped unless short-circuited.
    let objs = render4(
        &web()
            .node_port(30080)
            .external_local(32000)
            .endpoint("10.244.2.6", 8080, false)
            .build(),
    );
    assert_eq!(
        element(
            &objs,
            Container::NoEndpointNodePorts(NoEndpoint::Drop),
            "tcp . 30080"
        ),
        Some(None)
    );
    assert!(element(&objs, Container::ServiceNodePorts, "tcp . 30080").is_some());
    assert!(
        slots(&objs, "endpoints-tcp-").len() == 1,
        "only the cluster chain has a slot element"
    );
}

#[test]
fn external_policy_cluster_masquerades_external_traffic() {
    let objs = render4(
        &web()
            .lb_ip("198.51.100.1", IpMode::Vip)
            .lb_ip("198.51.100.2", IpMode::Proxy)
            .endpoint("10.244.1.5", 8080, true)
            .build(),
    );
    let ext = chain(&objs, "external-");
    assert_eq!(ext[0], "jump mark-for-masquerade");
    assert!(ext[1].starts_with("goto service-"));
    assert!(element(&objs, Container::ServiceIps, "198.51.100.1 . tcp . 80").is_some());
    assert!(
        element(&objs, Container::ServiceIps, "198.51.100.2 . tcp . 80").is_none(),
        "ipMode Proxy is left alone"
    );
}

#[test]
fn source_ranges_guard_lb_ips_only() {
    let objs = render4(
        &web()
            .lb_ip("198.51.100.1", IpMode::Vip)
            .external_ip("203.0.113.7")
            .source_range("203.0.113.0/24")
            .source_range("192.168.0.0/24")
            .endpoint("10.244.1.5", 8080, true)
            .build(),
    );
    let fw = element(&objs, Container::FirewallIps, "198.51.100.1 . tcp . 80")
        .unwrap()
        .unwrap();
    assert!(fw.starts_with("goto firewall-"));
    assert!(element(&objs, Container::FirewallIps, "203.0.113.7 . tcp . 80").is_none());
    // The node (192.168.0.2) is inside a range, so the VIP itself is allowed as a source.
    assert_eq!(
        chain(&objs, "firewall-"),
        ["ip saddr != { 203.0.113.0/24, 192.168.0.0/24, 198.51.100.1 } drop"]
    );
}

#[test]
fn affinity_remembers_clients_per_endpoint() {
    let objs = render4(
        &web()
            .affinity(600)
            .endpoint("10.244.1.5", 8080, true)
            .endpoint("10.244.2.6", 8080, false)
            .build(),
    );
    assert_eq!(objs.sets.len(), 2);
    assert!(objs
        .sets
        .iter()
        .all(|s| s.timeout == 600 && s.name.starts_with("affinity-")));
    let svc = chain(&objs, "service-");
    assert!(svc[0].starts_with("ip saddr @affinity-") && svc[0].contains(" goto endpoint-"));
    assert!(
        svc[2].starts_with("numgen random mod 16384 offset ")
            && svc[2].contains(" vmap @endpoints-affinity-"),
        "{}",
        svc[2]
    );
    let choices = slots(&objs, "endpoints-affinity-");
    assert_eq!(choices.len(), 2);
    assert!(
        choices.iter().all(|c| c.contains(" : goto endpoint-")),
        "{choices:?}"
    );
    let ep = chain(&objs, "endpoint-");
    assert!(ep[0].starts_with("update @affinity-") && ep[0].ends_with("{ ip saddr }"));
    assert_eq!(ep[1], "meta l4proto tcp dnat to 10.244.1.5:8080");
    // Timeout 0 means upstream's default.
    let objs = render4(&web().affinity(0).endpoint("10.244.1.5", 8080, true).build());
    assert_eq!(objs.sets[0].timeout, 10800);
}

#[test]
fn ipv6_uses_ip6_matches_and_bracketed_dnat() {
    let settings = sample::settings();
    let node = sample::node();
    let sp = PortBuilder::new(
        "default",
        "dns",
        "",
        Protocol::Udp,
        "10.96.0.53,fd00:96::53",
        53,
    )
    .endpoint("10.244.1.5", 5353, true)
    .endpoint("fd00:244:0:1::5", 5353, true)
    .build();
    let v6 = render(&ctx(IpFamily::V6, &settings, &node), &sp).unwrap();
    assert!(element(&v6, Container::ServiceIps, "fd00:96::53 . udp . 53").is_some());
    assert_eq!(
        slots(&v6, "endpoints-udp-"),
        ["0-16383 : fd00:244:0:1::5 . 5353"],
        "only the IPv6 endpoint"
    );
    assert_eq!(
        Container::Slots(crate::slots::SlotKind::Udp, 3)
            .spec(IpFamily::V6, "m")
            .body(),
        "typeof numgen random mod 16384 : ip6 daddr . udp dport ; flags interval ;"
    );
    assert!(chain(&v6, "service-")[0]
        .starts_with("meta l4proto udp dnat ip6 to numgen random mod 16384 offset "));
    assert!(services_rules(IpFamily::V6, &settings)[0]
        .starts_with("ip6 daddr @cluster-ips ip6 saddr != fd00:244::/56 jump"));
    // A single-stack IPv4 service is not in the IPv6 table.
    assert!(render(&ctx(IpFamily::V6, &settings, &node), &web().build()).is_none());
}

#[test]
fn full_plan_is_deterministic_and_has_every_piece() {
    let settings = sample::settings();
    let node = sample::node();
    let state = sample::many_services(50, 3);
    let ctxs = [ctx(IpFamily::V4, &settings, &node)];
    let a = plan::plan_full_script(
        &ctxs,
        &[(IpFamily::V6, "kproxy")],
        &state,
        &AffinitySnapshot::default(),
    );
    let b = plan::plan_full_script(
        &ctxs,
        &[(IpFamily::V6, "kproxy")],
        &state,
        &AffinitySnapshot::default(),
    );
    assert_eq!(a.script, b.script);
    let s = &a.script;
    assert!(s.starts_with("add table ip6 kproxy\ndelete table ip6 kproxy\n"));
    assert!(s.contains("add table ip kproxy\ndelete table ip kproxy\n"));
    assert!(
        s.contains("add chain ip kproxy nat-prerouting { type nat hook prerouting priority -100 ;")
    );
    assert!(s.contains(
        "add rule ip kproxy services ip daddr . meta l4proto . th dport vmap @service-ips"
    ));
    assert!(s.contains("add rule ip kproxy masquerading masquerade fully-random"));
    assert!(s.contains("add rule ip kproxy mark-for-masquerade mark set mark or 0x00004000"));
    assert!(s.contains("ip daddr { 10.96.0.0/16 } drop"));
    // TCP is rejected with a reset, everything else with ICMP.
    assert!(s.contains(
        "add rule ip kproxy reject-chain meta l4proto tcp reject with tcp reset\n\
         add rule ip kproxy reject-chain reject\n"
    ));
    assert_eq!(s.matches(" : goto service-").count(), 50);
    assert_eq!(a.programs[0].ports.len(), 50);
    for line in s.lines() {
        for word in line.split_whitespace() {
            assert!(word.len() < crate::names::NAME_MAX, "{word}");
        }
    }
}

/// Applies `changed` incrementally to a program made by a full plan of `from`, and checks the
/// result against a full plan of `to`.
fn assert_incremental_equals_full(from: &ProxyState, to: &ProxyState, changed: &[ServicePortKey]) {
    let settings = sample::settings();
    let node = sample::node();
    for family in [IpFamily::V4, IpFamily::V6] {
        let ctxs = [ctx(family, &settings, &node)];
        let snap = AffinitySnapshot::default();
        let mut program: FamilyProgram = plan::plan_full_script(&ctxs, &[], from, &snap)
            .programs
            .remove(0);
        let mut script = String::new();
        plan::plan_incremental(
            &ctxs[0],
            to,
            changed,
            &mut program,
            &mut Script::empty(&mut script),
        );
        let full = plan::plan_full_script(&ctxs, &[], to, &snap)
            .programs
            .remove(0);
        assert_eq!(
            program, full,
            "{family:?}: incremental script was:\n{script}"
        );
    }
}

#[test]
fn incremental_equals_full_through_typical_changes() {
    let a = web().endpoint("10.244.1.5", 8080, true).node_port(30080);
    let b = PortBuilder::new(
        "default",
        "dns",
        "dns",
        Protocol::Udp,
        "10.96.0.53,fd00:96::53",
        53,
    )
    .endpoint("10.244.1.7", 53, true)
    .endpoint("fd00:244:0:1::7", 53, true);
    let c = PortBuilder::new("other", "db", "", Protocol::Tcp, "10.96.0.20", 5432)
        .affinity(100)
        .endpoint("10.244.3.3", 5432, false);
    let s1 = sample::state(vec![
        a.clone().build(),
        b.clone().build(),
        c.clone().build(),
    ]);
    let keys: Vec<ServicePortKey> = s1.services.iter().map(|s| s.key.clone()).collect();

    // Scale up, change policy, remove a service, add affinity.
    let s2 = sample::state(vec![
        a.clone()
            .endpoint("10.244.2.9", 8080, false)
            .external_local(32001)
            .build(),
        c.clone().affinity(200).build(),
    ]);
    assert_incremental_equals_full(&s1, &s2, &keys);
    assert_incremental_equals_full(&s2, &s1, &keys);
    // Lose every endpoint, then come back.
    let s3 = sample::state(vec![
        web().node_port(30080).build(),
        b.clone().build(),
        c.clone().build(),
    ]);
    assert_incremental_equals_full(&s1, &s3, &keys);
    assert_incremental_equals_full(&s3, &s1, &keys);
    // Nothing changed: nothing written.
    let settings = sample::settings();
    let node = sample::node();
    let ctxs = [ctx(IpFamily::V4, &settings, &node)];
    let mut program = plan::plan_full_script(&ctxs, &[], &s1, &AffinitySnapshot::default())
        .programs
        .remove(0);
    let mut script = String::new();
    assert_eq!(
        plan::plan_incremental(
            &ctxs[0],
            &s1,
            &keys,
            &mut program,
            &mut Script::empty(&mut script)
        ),
        0
    );
    assert!(script.is_empty(), "{script}");
}

#[test]
fn shared_and_conflicting_elements_resolve_the_same_way_in_both_syncs() {
    // Two ports of one service share the cluster IP; another service claims the same external
    // IP and port as the first (a user error that must not break the whole table).
    let p1 = PortBuilder::new("a", "svc", "p1", Protocol::Tcp, "10.96.0.1", 80)
        .external_ip("203.0.113.1")
        .endpoint("10.244.1.1", 80, true)
        .build();
    let p2 = PortBuilder::new("a", "svc", "p2", Protocol::Tcp, "10.96.0.1", 81)
        .endpoint("10.244.1.1", 81, true)
        .build();
    let thief = PortBuilder::new("b", "svc", "", Protocol::Tcp, "10.96.0.2", 80)
        .external_ip("203.0.113.1")
        .endpoint("10.244.1.2", 80, true)
        .build();
    let both = sample::state(vec![p1.clone(), p2.clone(), thief.clone()]);
    let settings = sample::settings();
    let node = sample::node();
    let ctxs = [ctx(IpFamily::V4, &settings, &node)];
    let full = plan::plan_full_script(&ctxs, &[], &both, &AffinitySnapshot::default());
    assert_eq!(
        full.script.matches("\t203.0.113.1 . tcp . 80 : ").count(),
        1
    );
    assert_eq!(
        full.script.matches("\t10.96.0.1,").count() + full.script.matches("\t10.96.0.1\n").count(),
        1
    );
    let winner = full.programs[0]
        .index
        .effective(
            Container::ServiceIps,
            &ElemKey::AddrProtoPort(sample::ip("203.0.113.1"), Protocol::Tcp, 80),
        )
        .unwrap()
        .clone()
        .unwrap()
        .to_string();
    assert!(
        winner.contains("-a/svc/tcp/p1"),
        "the smallest key wins: {winner}"
    );

    // Remove port p1: the cluster IP stays (p2 still uses it), the thief gets the address.
    let after = sample::state(vec![p2, thief]);
    let mut program = full.programs[0].clone();
    let mut script = String::new();
    let changed = [ServicePortKey::new("a", "svc", "p1", Protocol::Tcp)];
    plan::plan_incremental(
        &ctxs[0],
        &after,
        &changed,
        &mut program,
        &mut Script::empty(&mut script),
    );
    assert!(
        !script.contains("delete element ip kproxy cluster-ips"),
        "{script}"
    );
    assert!(script.contains("-b/svc/tcp/"), "{script}");
    assert_incremental_equals_full(&both, &after, &changed);
}
