//! Hand-built states for tests and benchmarks: a builder for service ports and a few ready-made
//! settings, so a test reads as the service it describes rather than as struct literals.
//!
//! Shared by the dataplane plugins (the nftables plugin re-exports it as its `sample`).

use kproxy_plugin_api::{
    abi_stable::std_types::{RString, RVec},
    Cidr, Endpoint, IpAddr, IpMode, LoadBalancerIngress, LocalDetect, LocalDetectMode, NodeFacts,
    Protocol, ProxySettings, ProxyState, ServicePort, ServicePortKey, SessionAffinity,
    TrafficPolicy,
};

/// Parses an address; panics on a typo (test input).
pub fn ip(s: &str) -> IpAddr {
    s.parse::<std::net::IpAddr>()
        .unwrap_or_else(|_| panic!("bad address {s}"))
        .into()
}

/// Parses a CIDR; panics on a typo (test input).
pub fn cidr(s: &str) -> Cidr {
    s.parse().unwrap_or_else(|e| panic!("bad CIDR {s}: {e}"))
}

/// Dual-stack settings: pods in 10.244.0.0/16 and fd00:244::/56, services in 10.96.0.0/16 and
/// fd00:96::/112, masquerade bit 14, local traffic detected by cluster CIDR.
pub fn settings() -> ProxySettings {
    ProxySettings {
        ipv4: true,
        ipv6: true,
        cluster_cidrs: vec![cidr("10.244.0.0/16"), cidr("fd00:244::/56")].into(),
        local_detect: LocalDetect {
            mode: LocalDetectMode::ClusterCidr,
            interface: RString::new(),
        },
        masquerade_all: false,
        masquerade_bit: 14,
        node_port_addresses: RVec::new(),
        localhost_node_ports: false,
        service_cidrs: vec![cidr("10.96.0.0/16"), cidr("fd00:96::/112")].into(),
    }
}

/// A node called `node-a` with addresses 192.168.0.2 and fd00:192::2.
pub fn node() -> NodeFacts {
    NodeFacts {
        name: "node-a".into(),
        zone: "".into(),
        addresses: vec![ip("192.168.0.2"), ip("fd00:192::2")].into(),
        pod_cidrs: vec![cidr("10.244.1.0/24"), cidr("fd00:244:0:1::/64")].into(),
    }
}

/// A state holding `ports` (sorted by key, as the daemon hands it) on [`node`].
pub fn state(mut ports: Vec<ServicePort>) -> ProxyState {
    ports.sort_by(|a, b| a.key.cmp(&b.key));
    ProxyState {
        generation: 1,
        node: node(),
        services: ports.into(),
    }
}

/// `n` TCP services `ns-<i / 100>/svc-<i>` on port 80 with cluster IPs from 10.96.0.0/16, each
/// with `endpoints` ready endpoints from 10.244.0.0/16 (every third one local) and a node port.
pub fn many_services(n: usize, endpoints: usize) -> ProxyState {
    let mut ports = Vec::with_capacity(n);
    let mut ep_counter: u32 = 0;
    for i in 0..n {
        let ci = 10 + i as u32;
        let cluster = std::net::Ipv4Addr::from(0x0a60_0000 | ci);
        let mut b = PortBuilder::new(
            &format!("ns-{}", i / 100),
            &format!("svc-{i}"),
            "http",
            Protocol::Tcp,
            &cluster.to_string(),
            80,
        )
        .node_port(30000 + (i % 2700) as u16 + 2700 * (i / 2700 % 10) as u16);
        for _ in 0..endpoints {
            ep_counter += 1;
            let addr = std::net::Ipv4Addr::from(0x0af4_0000 | (ep_counter % 65_000 + 2));
            b = b.endpoint(&addr.to_string(), 8080, ep_counter.is_multiple_of(3));
        }
        ports.push(b.build());
    }
    state(ports)
}

/// Builds one service port.
#[derive(Debug, Clone)]
pub struct PortBuilder(ServicePort);

impl PortBuilder {
    /// A service port `ns/name:port_name/protocol` on `cluster_ip:port` (an empty `cluster_ip`
    /// gives none; a comma separates a second one) with no endpoints.
    pub fn new(
        ns: &str,
        name: &str,
        port_name: &str,
        protocol: Protocol,
        cluster_ip: &str,
        port: u16,
    ) -> Self {
        PortBuilder(ServicePort {
            key: ServicePortKey::new(ns, name, port_name, protocol),
            cluster_ips: cluster_ip
                .split(',')
                .filter(|s| !s.is_empty())
                .map(ip)
                .collect(),
            port,
            node_port: 0,
            external_ips: RVec::new(),
            load_balancer_ingress: RVec::new(),
            load_balancer_source_ranges: RVec::new(),
            session_affinity: SessionAffinity::default(),
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: 0,
            ipvs_scheduler: RString::new(),
            endpoints: RVec::new(),
        })
    }

    /// Adds a ready endpoint, chosen for cluster traffic and, when `local`, for local traffic.
    pub fn endpoint(self, addr: &str, port: u16, local: bool) -> Self {
        self.endpoint_with(addr, port, local, |_| {})
    }

    /// Adds an endpoint and lets `edit` change its conditions.
    pub fn endpoint_with(
        mut self,
        addr: &str,
        port: u16,
        local: bool,
        edit: impl FnOnce(&mut Endpoint),
    ) -> Self {
        let mut e = Endpoint {
            ip: ip(addr),
            port,
            ready: true,
            serving: true,
            terminating: false,
            node_name: if local { "node-a" } else { "node-b" }.into(),
            zone: "".into(),
            is_local: local,
            for_cluster: true,
            for_local: local,
        };
        edit(&mut e);
        self.0.endpoints.push(e);
        let mut eps: Vec<Endpoint> = self.0.endpoints.to_vec();
        eps.sort_by_key(|e| (e.ip, e.port));
        self.0.endpoints = eps.into();
        self
    }

    /// Sets the node port.
    pub fn node_port(mut self, port: u16) -> Self {
        self.0.node_port = port;
        self
    }

    /// Adds an external IP.
    pub fn external_ip(mut self, addr: &str) -> Self {
        self.0.external_ips.push(ip(addr));
        self
    }

    /// Adds a load-balancer ingress IP.
    pub fn lb_ip(mut self, addr: &str, mode: IpMode) -> Self {
        self.0.load_balancer_ingress.push(LoadBalancerIngress {
            ip: ip(addr),
            ip_mode: mode,
        });
        self
    }

    /// Adds a `loadBalancerSourceRanges` entry.
    pub fn source_range(mut self, range: &str) -> Self {
        self.0.load_balancer_source_ranges.push(cidr(range));
        self
    }

    /// Turns on ClientIP affinity with `timeout` seconds.
    pub fn affinity(mut self, timeout: u32) -> Self {
        self.0.session_affinity = SessionAffinity {
            client_ip: true,
            timeout_seconds: timeout,
        };
        self
    }

    /// Sets `internalTrafficPolicy: Local`.
    pub fn internal_local(mut self) -> Self {
        self.0.internal_traffic_policy = TrafficPolicy::Local;
        self
    }

    /// Sets `externalTrafficPolicy: Local` with a health-check node port.
    pub fn external_local(mut self, health_check_node_port: u16) -> Self {
        self.0.external_traffic_policy = TrafficPolicy::Local;
        self.0.health_check_node_port = health_check_node_port;
        self
    }

    /// The service port.
    pub fn build(self) -> ServicePort {
        self.0
    }
}
