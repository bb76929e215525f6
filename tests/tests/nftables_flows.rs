//! The packet-flow table against the nftables dataplane: the real daemon runs in the lab's node
//! namespace on a manifest folder, with the built nftables plugin, and every case sends real
//! packets through the kernel.
//!
//! Needs `cargo build --workspace` first and root.

use kproxy::plugin_host::PluginHost;
use kproxy_tests::{artifacts::PluginDir, driver::DaemonDriver, flows, lab::Lab};

fn capabilities(name: &str) -> kproxy_plugin_api::Capabilities {
    let dir = PluginDir::with(&[name]);
    PluginHost::new(dir.path())
        .load(name)
        .expect("load the plugin")
        .info
        .capabilities
}

/// Runs the cases whose names start with one of `prefixes` (all when empty) in a lab of their
/// own, so groups run in parallel.
fn run(prefixes: &[&str], exclude: &[&str]) {
    let Some(lab) = Lab::start_or_skip(flows::lab_config()) else {
        return;
    };
    let caps = capabilities("nftables");
    let cases: Vec<_> = flows::table()
        .into_iter()
        .filter(|c| prefixes.is_empty() || prefixes.iter().any(|p| c.name.starts_with(p)))
        .filter(|c| !exclude.iter().any(|p| c.name.starts_with(p)))
        .collect();
    assert!(!cases.is_empty(), "no case matches {prefixes:?}");
    let mut driver = DaemonDriver::new(&lab, "nftables", caps, "");
    let report = flows::run_table(&lab, &cases, &mut driver);
    if !report.failed.is_empty() {
        eprintln!("----- kproxy log -----\n{}", driver.log());
    }
    report.assert_passed();
}

// The table runs as four groups of about the same length (15–18 s here), each in its own lab,
// so they run in parallel: two at a time on two cores (most of a case's time is waiting for
// timeouts), all at once on more.

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

#[test]
fn packet_flow_table_on_nftables_addresses() {
    run(ADDRESSES, &[]);
}

#[test]
fn packet_flow_table_on_nftables_load_balancers() {
    run(LOAD_BALANCERS, &[]);
}

#[test]
fn packet_flow_table_on_nftables_policies() {
    run(POLICIES, &[]);
}

/// Everything else — affinity (its timeout case alone takes 16 s), topology, dual-stack, SCTP —
/// and any case added under a new prefix, so no case is left out.
#[test]
fn packet_flow_table_on_nftables_rest() {
    run(&[], &[ADDRESSES, LOAD_BALANCERS, POLICIES].concat());
}
