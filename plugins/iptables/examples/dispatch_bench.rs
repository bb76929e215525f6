//! Connection set-up latency through a cluster IP with 10, 1,000, 10,000 and 30,000 services
//! present, with kproxy's tree dispatch and with upstream's linear dispatch, on each iptables
//! back end. Not a test: it prints a table (needs root; runs in the namespace lab).
//!
//! ```text
//! cargo run --release -p kproxy-plugin-iptables --example dispatch_bench -- \
//!     [--sizes 10,1000,10000,30000] [--samples 2000] [--backends nft,legacy]
//! ```
//!
//! Each sample is one TCP connection from a pod (`pod-d`) to the cluster IP of a service
//! picked at random among all of them, through the node's nat rules to `pod-a`, which answers
//! with one line: the time from `connect()` to the answer. Only the first packet of a
//! connection walks the dispatch chains, so this is where dispatch shows. "direct" is the same
//! exchange sent to `pod-a`'s own address: no DNAT, but its first packet still walks the nat
//! `PREROUTING` chains looking for a service (all of upstream's list, since nothing matches).

use kproxy_lab::{
    client::{self, Outcome, RequestOptions},
    plan::{CLUSTER_CIDR_V4, NODE_NAME, SERVICE_CIDR_V4},
    Lab, LabConfig, Place,
};
use kproxy_plugin_api::{
    abi_stable::std_types::RString, ChangeSet, Endpoint, HostContext, IpAddr, LocalDetect,
    LocalDetectMode, NodeFacts, Plugin, Protocol, ProxySettings, ProxyState, ServicePort,
    ServicePortKey, SessionAffinity, TrafficPolicy,
};
use kproxy_plugin_iptables::{config::DispatchMode, desired_ruleset, IptablesDataplane};
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

struct Args {
    sizes: Vec<usize>,
    samples: usize,
    backends: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        sizes: vec![10, 1_000, 10_000, 30_000],
        samples: 2000,
        backends: vec!["nft".into(), "legacy".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                a.sizes = value
                    .split(',')
                    .map(|s| s.trim().parse().expect("a number of services"))
                    .collect()
            }
            "--samples" => a.samples = value.parse().expect("a number of samples"),
            "--backends" => a.backends = value.split(',').map(String::from).collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    // 10.96.0.10 upwards: 30,000 services fit in the lab's 10.96.0.0/16.
    Ipv4Addr::from(0x0a60_000a + i as u32)
}

/// `n` services with one port each, all served by `pod-a`.
fn state(lab: &Lab, n: usize) -> ProxyState {
    let plan = lab.plan();
    let pod_a = plan.pod("pod-a").expect("pod-a").ip.v4;
    let endpoint = Endpoint {
        ip: std::net::IpAddr::V4(pod_a).into(),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        node_name: NODE_NAME.into(),
        zone: RString::new(),
        is_local: true,
        for_cluster: true,
        for_local: true,
    };
    let mut services: Vec<ServicePort> = (0..n)
        .map(|i| ServicePort {
            key: ServicePortKey::new("bench", &format!("svc-{i:05}"), "http", Protocol::Tcp),
            cluster_ips: vec![IpAddr::from(std::net::IpAddr::V4(cluster_ip(i)))].into(),
            port: 80,
            node_port: 0,
            external_ips: Default::default(),
            load_balancer_ingress: Default::default(),
            load_balancer_source_ranges: Default::default(),
            session_affinity: SessionAffinity::default(),
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: 0,
            ipvs_scheduler: RString::new(),
            endpoints: vec![endpoint.clone()].into(),
        })
        .collect();
    services.sort_by(|a, b| a.key.cmp(&b.key));
    ProxyState {
        generation: 1,
        node: node(lab),
        services: services.into(),
    }
}

fn node(lab: &Lab) -> NodeFacts {
    let plan = lab.plan();
    NodeFacts {
        name: NODE_NAME.into(),
        zone: RString::new(),
        addresses: vec![IpAddr::from(std::net::IpAddr::V4(plan.node_underlay.v4))].into(),
        pod_cidrs: vec![plan.node_pod_cidr.0].into(),
    }
}

fn settings() -> ProxySettings {
    ProxySettings {
        ipv4: true,
        ipv6: false,
        cluster_cidrs: vec![CLUSTER_CIDR_V4.parse().expect("constant")].into(),
        local_detect: LocalDetect {
            mode: LocalDetectMode::ClusterCidr,
            interface: RString::new(),
        },
        masquerade_all: false,
        masquerade_bit: 14,
        node_port_addresses: Default::default(),
        localhost_node_ports: false,
        service_cidrs: vec![SERVICE_CIDR_V4.parse().expect("constant")].into(),
    }
}

/// A tiny deterministic generator (xorshift64*), so runs pick the same services.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

/// Latencies of `samples` exchanges from `pod-d`, to `pick()`'s destinations, sorted.
fn measure(lab: &Lab, samples: usize, mut pick: impl FnMut() -> SocketAddr + Send) -> Vec<f64> {
    let opts = RequestOptions {
        src: None,
        src_port: None,
        timeout: Duration::from_secs(2),
    };
    let mut out = lab
        .run_in(&Place::Pod("pod-d".into()), move || {
            let mut times = Vec::with_capacity(samples);
            let mut failures = 0;
            // Warm-up: caches, ARP/ND, the first conntrack allocation.
            for _ in 0..50 {
                let _ = client::request(pick(), Protocol::Tcp, &opts);
            }
            while times.len() < samples {
                let dst = pick();
                let t = Instant::now();
                let outcome = client::request(dst, Protocol::Tcp, &opts);
                let took = t.elapsed();
                match outcome {
                    Outcome::Answered { .. } => times.push(took.as_secs_f64() * 1e6),
                    other => {
                        failures += 1;
                        assert!(
                            failures < 20,
                            "too many failed requests, last to {dst}: {other}"
                        );
                    }
                }
            }
            times
        })
        .expect("run in pod-d");
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Row {
    services: usize,
    sync_ms: f64,
    p50: f64,
    p99: f64,
    direct_p50: f64,
    dispatch_rules: usize,
}

fn run(lab: &Lab, backend: &str, dispatch: &str, sizes: &[usize], samples: usize) -> Vec<Row> {
    let ctx = HostContext {
        plugin_config: format!(
            "backend = \"{backend}\"\ndispatch = \"{dispatch}\"\nconntrack_cleanup = false"
        )
        .into(),
        settings: settings(),
        node: node(lab),
    };
    let pod_a = SocketAddr::new(
        std::net::IpAddr::V4(lab.plan().pod("pod-a").expect("pod-a").ip.v4),
        8080,
    );
    let mut rows = Vec::new();
    let mut dp = IptablesDataplane::new(&ctx).expect("build the dataplane");
    for &n in sizes {
        let st = state(lab, n);
        let full = ChangeSet {
            full: true,
            changed: Default::default(),
        };
        let t = Instant::now();
        lab.run_in(&Place::Node, || dp.sync(&st, &full))
            .expect("run in the node")
            .unwrap_or_else(|e| panic!("sync of {n} services: {e}"));
        let sync_ms = t.elapsed().as_secs_f64() * 1e3;
        let dispatch_rules = desired_ruleset(
            &settings(),
            &st,
            kproxy_plugin_api::IpFamily::V4,
            DispatchMode::Tree,
            false,
        )
        .tables
        .values()
        .flat_map(|t| t.iter())
        .filter(|(c, _)| c.starts_with("KPROXY-DSP-") || c.as_str() == "KPROXY-SERVICES")
        .map(|(_, r)| r.len())
        .sum();
        let _ = lab.exec(&Place::Node, &["conntrack", "-F"]);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
        let through = measure(lab, samples, move || {
            SocketAddr::new(std::net::IpAddr::V4(cluster_ip(rng.below(n))), 80)
        });
        let direct = measure(lab, samples / 4, move || pod_a);
        let _ = lab.exec(&Place::Node, &["conntrack", "-F"]);
        let row = Row {
            services: n,
            sync_ms,
            p50: pct(&through, 0.5),
            p99: pct(&through, 0.99),
            direct_p50: pct(&direct, 0.5),
            dispatch_rules,
        };
        eprintln!(
            "  {backend}/{dispatch} {n:>6} services: p50 {:.0} µs, p99 {:.0} µs (sync {:.0} ms)",
            row.p50, row.p99, row.sync_ms
        );
        rows.push(row);
    }
    lab.run_in(&Place::Node, || dp.cleanup())
        .expect("run in the node")
        .expect("cleanup");
    rows
}

fn main() {
    let args = args();
    let config = LabConfig {
        local_pods: vec!["pod-a".into(), "pod-d".into()],
        remote_pods: vec![],
        ports: vec![8080],
        timeout: Duration::from_secs(2),
    };
    let lab = match Lab::new(config) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("dispatch_bench needs the namespace lab (root): {e}");
            std::process::exit(2);
        }
    };
    println!(
        "connection set-up latency through a cluster IP: TCP connect + one answer, {} samples \
         per row, to a service picked at random among all; µs",
        args.samples
    );
    for backend in &args.backends {
        eprintln!("iptables-{backend}:");
        let tree = run(&lab, backend, "tree", &args.sizes, args.samples);
        let linear = run(&lab, backend, "linear", &args.sizes, args.samples);
        println!();
        println!("iptables-{backend}");
        println!(
            "| services | tree p50 | tree p99 | linear p50 | linear p99 | direct p50 tree / linear | dispatch rules tree / linear | full sync ms tree / linear |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (t, l) in tree.iter().zip(&linear) {
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {} / {} | {:.0} / {:.0} |",
                t.services,
                t.p50,
                t.p99,
                l.p50,
                l.p99,
                t.direct_p50,
                l.direct_p50,
                t.dispatch_rules,
                l.dispatch_rules,
                t.sync_ms,
                l.sync_ms
            );
        }
        if let (Some(first), Some(last)) = (tree.first(), tree.last()) {
            println!(
                "tree: p50 at {} services = {:.2} × p50 at {}; linear: {:.2} ×",
                last.services,
                last.p50 / first.p50,
                first.services,
                linear.last().map_or(0.0, |l| l.p50) / linear.first().map_or(1.0, |l| l.p50)
            );
        }
    }
}
