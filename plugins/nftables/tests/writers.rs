//! The two writers program the same table: the netlink batch kproxy encodes itself and the
//! `nft -f` script of the same transaction, applied in two scratch namespaces, must read back
//! as the same `nft list table` text — for full syncs under every kind of setting, and for an
//! incremental sync. This is what proves the netlink encoding (expressions, registers, set
//! types, anonymous sets, userdata) is the one nft itself would write.

mod support;

use kproxy_plugin_api::{
    ChangeSet, Cidr, IpMode, LocalDetect, LocalDetectMode, Plugin, Protocol, ProxySettings,
    ProxyState,
};
use kproxy_plugin_nftables::sample::{self, PortBuilder};
use support::{changes, dataplane, Netns};

/// Every kind of service port the renderer knows, in both families.
fn rich_state(variant: u32) -> ProxyState {
    let v = variant;
    sample::state(vec![
        PortBuilder::new(
            "default",
            "web",
            "http",
            Protocol::Tcp,
            "10.96.0.10,fd00:96::10",
            80,
        )
        .node_port(30080)
        .endpoint("10.244.1.5", 8080, true)
        .endpoint(&format!("10.244.2.{}", 6 + v), 8080, false)
        .endpoint("10.244.2.20", 8080, false)
        .endpoint("fd00:244:0:1::5", 8080, true)
        .endpoint("fd00:244:0:2::6", 8080, false)
        .build(),
        PortBuilder::new("kube-system", "dns", "dns", Protocol::Udp, "10.96.0.53", 53)
            .affinity(300 + v)
            .endpoint("10.244.1.7", 53, true)
            .endpoint("10.244.2.7", 53, false)
            .build(),
        PortBuilder::new(
            "default",
            "lb",
            "",
            Protocol::Tcp,
            "10.96.0.30,fd00:96::30",
            443,
        )
        .lb_ip("198.51.100.1", IpMode::Vip)
        .lb_ip("198.51.100.2", IpMode::Proxy)
        .lb_ip("2001:db8::1", IpMode::Vip)
        .source_range("203.0.113.0/24")
        .source_range("192.168.0.0/20")
        .source_range("2001:db8:1::/48")
        .node_port(30081)
        .external_local(32000)
        .endpoint("10.244.1.9", 8443, true)
        .endpoint("10.244.2.9", 8443, false)
        .endpoint("fd00:244:0:1::9", 8443, true)
        .build(),
        PortBuilder::new("default", "empty", "", Protocol::Sctp, "10.96.0.40", 9000)
            .external_ip("203.0.113.40")
            .node_port(30082)
            .build(),
        PortBuilder::new("default", "itp", "", Protocol::Tcp, "10.96.0.50", 80)
            .internal_local()
            .endpoint("10.244.2.50", 80, false)
            .build(),
        PortBuilder::new("default", "etp-none", "", Protocol::Udp, "10.96.0.51", 81)
            .external_ip("203.0.113.51")
            .external_local(32001)
            .endpoint("10.244.2.51", 81, false)
            .build(),
    ])
}

/// The settings variants: local detection by cluster CIDR (two CIDRs), by node CIDR, by
/// bridge, by interface prefix, none; masquerade-all; node-port addresses.
fn settings_variants() -> Vec<(&'static str, ProxySettings)> {
    let base = sample::settings();
    let detect = |mode, interface: &str| LocalDetect {
        mode,
        interface: interface.into(),
    };
    let mut two_cidrs = base.clone();
    two_cidrs.cluster_cidrs = vec![
        sample::cidr("10.244.0.0/16"),
        sample::cidr("10.245.0.0/20"),
        sample::cidr("fd00:244::/56"),
    ]
    .into();
    let mut node_cidr = base.clone();
    node_cidr.local_detect = detect(LocalDetectMode::NodeCidr, "");
    let mut bridge = base.clone();
    bridge.local_detect = detect(LocalDetectMode::BridgeInterface, "cni0");
    let mut prefix = base.clone();
    prefix.local_detect = detect(LocalDetectMode::InterfaceNamePrefix, "veth");
    let mut none = base.clone();
    none.local_detect = detect(LocalDetectMode::None, "");
    let mut masq_all = base.clone();
    masq_all.masquerade_all = true;
    masq_all.masquerade_bit = 3;
    let mut node_ports = base.clone();
    node_ports.node_port_addresses = vec![
        sample::cidr("192.168.0.0/24"),
        sample::cidr("10.1.2.3/32"),
        Cidr::new("fd00:192::".parse::<std::net::IpAddr>().unwrap(), 64).unwrap(),
    ]
    .into();
    vec![
        ("cluster CIDR", base),
        ("two cluster CIDRs", two_cidrs),
        ("node CIDR", node_cidr),
        ("bridge", bridge),
        ("interface prefix", prefix),
        ("no local detection", none),
        ("masquerade all", masq_all),
        ("node-port addresses", node_ports),
    ]
}

fn listing(ns: &Netns) -> String {
    let mut out = String::new();
    for family in ["ip", "ip6"] {
        let (ok, text, _) = ns.try_exec(&["nft", "list", "table", family, "kproxy"]);
        assert!(ok, "no {family} table");
        out.push_str(&text);
    }
    out
}

fn full() -> ChangeSet {
    ChangeSet {
        full: true,
        changed: Default::default(),
    }
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n  netlink: {x}\n  nft:     {y}", i + 1);
        }
    }
    format!(
        "lengths differ: {} vs {} lines",
        a.lines().count(),
        b.lines().count()
    )
}

#[test]
fn netlink_and_nft_write_the_same_tables() {
    let Some(by_netlink) = Netns::create() else {
        return;
    };
    let Some(by_nft) = Netns::create() else {
        return;
    };
    for (name, settings) in settings_variants() {
        let a = rich_state(0);
        let b = rich_state(1);
        let [x, y] = [&by_netlink, &by_nft].map(|ns| {
            let writer = if std::ptr::eq(ns, &by_netlink) {
                "netlink"
            } else {
                "nft"
            };
            ns.run(|| {
                let mut dp = dataplane(settings.clone(), &format!("writer = \"{writer}\""));
                dp.sync(&a, &full()).unwrap();
                let after_full = listing(ns);
                let report = dp.sync(&b, &changes(false, &a, &b)).unwrap();
                assert!(!report.full, "{name}: the second sync is incremental");
                (after_full, listing(ns))
            })
        });
        assert!(
            x.0 == y.0,
            "{name}: full sync differs: {}\n--- netlink\n{}",
            first_difference(&x.0, &y.0),
            x.0
        );
        assert!(
            x.1 == y.1,
            "{name}: incremental sync differs: {}",
            first_difference(&x.1, &y.1)
        );
    }
}
