//! The packet-flow table against the iptables dataplane, on both iptables back ends: the real
//! daemon runs in the lab's node namespace on a manifest folder, with the built iptables plugin
//! (`backend = "nft"` or `"legacy"`), and every case sends real packets through the kernel.
//!
//! The lab also holds ~185 padding services (every slot the table does not use: node ports,
//! LB IPs, external IPs, half of them without endpoints), so the cases' own rules sit inside a
//! dispatch tree several levels deep in the nat and filter tables — the table proves the tree's
//! behaviour, not a one-level layout. One group runs upstream's linear layout for comparison.
//!
//! Needs `cargo build --workspace` first and root.

use kproxy::plugin_host::PluginHost;
use kproxy_plugin_api::{IpFamily, Protocol};
use kproxy_tests::{
    artifacts::PluginDir,
    driver::DaemonDriver,
    flows::{self, EndpointSpec, PortSpec, ServiceSpec, ServiceType},
    lab::{sync_marker, Lab},
};

fn capabilities(name: &str) -> kproxy_plugin_api::Capabilities {
    let dir = PluginDir::with(&[name]);
    PluginHost::new(dir.path())
        .load(name)
        .expect("load the plugin")
        .info
        .capabilities
}

/// Services at every slot above the table's own: they never get a probe, they only fill the
/// dispatch chains around the cases' rules.
fn padding(lab: &Lab) -> Vec<serde_json::Value> {
    let first = flows::table()
        .iter()
        .map(|c| c.slot)
        .max()
        .expect("the table has cases")
        + 1;
    assert!(first < 200, "the table has grown: move the padding");
    let ports = vec![
        PortSpec {
            name: "http",
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
        },
        PortSpec {
            name: "dns",
            protocol: Protocol::Udp,
            port: 53,
            target_port: 9090,
        },
    ];
    let mut objects = Vec::new();
    for slot in first..=250u8 {
        let endpoints = if slot % 2 == 0 {
            vec![EndpointSpec::ready("pod-d")]
        } else {
            Vec::new()
        };
        let mut svc = ServiceSpec::new(
            &format!("padding-{slot}"),
            ServiceType::LoadBalancer,
            IpFamily::V4,
            ports.clone(),
            endpoints,
        );
        svc.families = vec![IpFamily::V4, IpFamily::V6];
        svc.external_ips = slot % 3 == 0;
        objects.extend(svc.objects(lab.plan(), slot));
    }
    objects
}

/// Runs the cases whose names start with one of `prefixes` (all when empty) in a lab of their
/// own, so groups run in parallel.
fn run(plugin_section: &str, prefixes: &[&str], exclude: &[&str]) {
    let Some(lab) = Lab::start_or_skip(flows::lab_config()) else {
        return;
    };
    let caps = capabilities("iptables");
    let cases: Vec<_> = flows::table()
        .into_iter()
        .filter(|c| prefixes.is_empty() || prefixes.iter().any(|p| c.name.starts_with(p)))
        .filter(|c| !exclude.iter().any(|p| c.name.starts_with(p)))
        .collect();
    assert!(!cases.is_empty(), "no case matches {prefixes:?}");
    let mut driver = DaemonDriver::new(&lab, "iptables", caps, plugin_section);
    sync_marker::write_manifest(
        &driver.manifest_dir(),
        "padding.yaml",
        "padding services around the cases (tests/tests/iptables_flows.rs)",
        &padding(&lab),
    )
    .expect("write the padding manifest");
    let report = flows::run_table(&lab, &cases, &mut driver);
    if !report.failed.is_empty() {
        eprintln!("----- kproxy log -----\n{}", driver.log());
    }
    report.assert_passed();
}

const NFT: &str = "backend = \"nft\"";
const LEGACY: &str = "backend = \"legacy\"";

// Four groups of about the same length per back end, each in its own lab, as the nftables
// suite runs them.

/// Cluster IPs, the service CIDR, services without endpoints, node ports, external IPs, and
/// live changes.
const ADDRESSES: &[&str] = &[
    "cluster-ip/",
    "service-cidr/",
    "no-endpoints/",
    "node-port/",
    "external-ip/",
    "changes/",
];
/// Load-balancer IPs (source ranges, `ipMode: Proxy`) and `internalTrafficPolicy: Local`.
const LOAD_BALANCERS: &[&str] = &["load-balancer/", "internal-policy-local/"];
/// `externalTrafficPolicy: Local`, endpoint conditions, daemon settings, even spreading.
const POLICIES: &[&str] = &[
    "external-policy-local/",
    "endpoints/",
    "settings/",
    "spreading/",
];

fn rest() -> Vec<&'static str> {
    [ADDRESSES, LOAD_BALANCERS, POLICIES].concat()
}

#[test]
fn packet_flow_table_on_iptables_nft_addresses() {
    run(NFT, ADDRESSES, &[]);
}

#[test]
fn packet_flow_table_on_iptables_nft_load_balancers() {
    run(NFT, LOAD_BALANCERS, &[]);
}

#[test]
fn packet_flow_table_on_iptables_nft_policies() {
    run(NFT, POLICIES, &[]);
}

/// Everything else — affinity, topology, dual-stack, SCTP — and any case added under a new
/// prefix, so no case is left out.
#[test]
fn packet_flow_table_on_iptables_nft_rest() {
    run(NFT, &[], &rest());
}

#[test]
fn packet_flow_table_on_iptables_legacy_addresses() {
    run(LEGACY, ADDRESSES, &[]);
}

#[test]
fn packet_flow_table_on_iptables_legacy_load_balancers() {
    run(LEGACY, LOAD_BALANCERS, &[]);
}

#[test]
fn packet_flow_table_on_iptables_legacy_policies() {
    run(LEGACY, POLICIES, &[]);
}

#[test]
fn packet_flow_table_on_iptables_legacy_rest() {
    run(LEGACY, &[], &rest());
}

/// Upstream's linear dispatch gives the same answers (the addresses group, where dispatch
/// matters most: cluster IPs, node ports, external IPs, services without endpoints).
#[test]
fn packet_flow_table_on_iptables_linear_dispatch() {
    run(
        &format!("{NFT}\ndispatch = \"linear\""),
        &["cluster-ip/", "no-endpoints/", "node-port/", "external-ip/"],
        &[],
    );
}
