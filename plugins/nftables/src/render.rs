//! The pure part: what kproxy's table must contain for one family, as plain values.
//!
//! [`render_globals`] writes the fixed skeleton (base chains, dispatch maps, masquerading,
//! reject/drop handling); [`render_port`] turns one service port into its chains, affinity sets
//! and map elements. Neither touches the kernel; [`crate::plan`] turns them into scripts.
//!
//! The layout and the rules follow upstream kube-proxy's nftables mode
//! (`pkg/proxy/nftables/proxier.go`); the README lists where kproxy differs.

use crate::{
    names::{self, Kind},
    script::Script,
};
use kproxy_plugin_api::{
    Cidr, Endpoint, IpAddr, IpFamily, IpMode, LocalDetectMode, NodeFacts, ProxySettings,
    ServicePort, TrafficPolicy,
};

/// Upstream's default ClientIP affinity timeout, used when a service gives none.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

// Fixed chain names (the same as upstream's).
const FILTER_PREROUTING: &str = "filter-prerouting";
const FILTER_INPUT: &str = "filter-input";
const FILTER_FORWARD: &str = "filter-forward";
const FILTER_OUTPUT: &str = "filter-output";
const FILTER_OUTPUT_POST_DNAT: &str = "filter-output-post-dnat";
const NAT_PREROUTING: &str = "nat-prerouting";
const NAT_OUTPUT: &str = "nat-output";
const NAT_POSTROUTING: &str = "nat-postrouting";
const SERVICES: &str = "services";
const MARK_MASQ: &str = "mark-for-masquerade";
const MASQUERADING: &str = "masquerading";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
const FIREWALL_CHECK: &str = "firewall-check";
/// The chain `no-endpoint-*` maps jump to for a service port without endpoints.
pub const REJECT_CHAIN: &str = "reject-chain";
const NODEPORT_IPS: &str = "nodeport-ips";

/// How a rejected packet is answered: TCP with a reset, everything else with the family's ICMP
/// port unreachable (nft's plain `reject`). Upstream writes only `reject`, which answers TCP
/// with an ICMP error too. A client sees `ECONNREFUSED` either way, but an ICMP error is
/// rate-limited per destination, and a TCP socket ignores one that arrives while `connect()`
/// still holds the socket, as the answer from the node itself or one veth hop away does: over
/// IPv6 the connection was then refused only when the SYN was retransmitted a second later
/// (kernel 6.18, `TcpExtLockDroppedIcmps`). A reset is a segment the socket always processes.
const REJECT_RULES: [&str; 2] = ["meta l4proto tcp reject with tcp reset", "reject"];

// Netfilter hook priorities: dstnat is -100, srcnat 100. Filter chains run just before and
// just after DNAT so they see the original (service) destination.
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;

/// The sets and maps whose elements service ports own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Container {
    /// Set of active cluster IPs (traffic to them on a port no service has is rejected).
    ClusterIps,
    /// `addr . proto . port : verdict` for cluster, external and LB IPs.
    ServiceIps,
    /// `proto . port : verdict` for node ports.
    ServiceNodePorts,
    /// `addr . proto . port : verdict` (reject or drop) for addresses without usable endpoints.
    NoEndpointServices,
    /// `proto . port : verdict` (reject or drop) for node ports without usable endpoints.
    NoEndpointNodePorts,
    /// `addr . proto . port : verdict` for LB IPs with `loadBalancerSourceRanges`.
    FirewallIps,
    /// Set of health-check node ports, accepted in the input hook.
    HealthCheckNodePorts,
}

impl Container {
    /// Every container, in the order a full sync writes them.
    pub const ALL: [Container; 7] = [
        Container::ClusterIps,
        Container::ServiceIps,
        Container::ServiceNodePorts,
        Container::NoEndpointServices,
        Container::NoEndpointNodePorts,
        Container::FirewallIps,
        Container::HealthCheckNodePorts,
    ];

    /// The set or map's name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Container::ClusterIps => "cluster-ips",
            Container::ServiceIps => "service-ips",
            Container::ServiceNodePorts => "service-nodeports",
            Container::NoEndpointServices => "no-endpoint-services",
            Container::NoEndpointNodePorts => "no-endpoint-nodeports",
            Container::FirewallIps => "firewall-ips",
            Container::HealthCheckNodePorts => "health-check-nodeports",
        }
    }

    /// Whether this is a verdict map (elements carry a value) rather than a plain set.
    pub fn is_map(self) -> bool {
        !matches!(
            self,
            Container::ClusterIps | Container::HealthCheckNodePorts
        )
    }

    fn declaration(self, addr_type: &str) -> (&'static str, String) {
        let (what, ty, comment) = match self {
            Container::ClusterIps => ("set", addr_type.to_string(), "Active ClusterIPs"),
            Container::ServiceIps => (
                "map",
                format!("{addr_type} . inet_proto . inet_service : verdict"),
                "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            ),
            Container::ServiceNodePorts => (
                "map",
                "inet_proto . inet_service : verdict".into(),
                "NodePort traffic",
            ),
            Container::NoEndpointServices => (
                "map",
                format!("{addr_type} . inet_proto . inet_service : verdict"),
                "vmap to drop or reject packets to services with no endpoints",
            ),
            Container::NoEndpointNodePorts => (
                "map",
                "inet_proto . inet_service : verdict".into(),
                "vmap to drop or reject packets to service nodeports with no endpoints",
            ),
            Container::FirewallIps => (
                "map",
                format!("{addr_type} . inet_proto . inet_service : verdict"),
                "destinations that are subject to LoadBalancerSourceRanges",
            ),
            Container::HealthCheckNodePorts => (
                "set",
                "inet_service".into(),
                "healthCheckNodePorts of externalTrafficPolicy Local services",
            ),
        };
        (what, format!("type {ty} ; comment \"{comment}\" ;"))
    }
}

/// One element a service port owns: its key and, for a verdict map, its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    /// The set or map it goes into.
    pub container: Container,
    /// The key as nft writes it (`10.96.0.1 . tcp . 80`).
    pub key: String,
    /// The verdict (`goto service-…`, `drop`), or `None` in a plain set.
    pub value: Option<String>,
}

impl Element {
    /// The element as written in `add element` (`key : value` or `key`).
    pub fn text(&self) -> String {
        match &self.value {
            Some(v) => format!("{} : {v}", self.key),
            None => self.key.clone(),
        }
    }
}

/// A regular chain and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    /// The chain's name (see [`names`]).
    pub name: String,
    /// The rules, as written after `add rule <table> <chain>`.
    pub rules: Vec<String>,
}

/// A per-endpoint dynamic set remembering which clients stick to that endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AffinitySet {
    /// The set's name (see [`names`]).
    pub name: String,
    /// How long a client sticks after its last new connection, in seconds.
    pub timeout: u32,
}

/// Everything one service port puts into one family's table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortObjects {
    /// Chains, in the order they are declared.
    pub chains: Vec<Chain>,
    /// ClientIP affinity sets.
    pub sets: Vec<AffinitySet>,
    /// Map and set elements.
    pub elements: Vec<Element>,
}

/// What rendering one family needs besides the service port itself.
#[derive(Debug, Clone, Copy)]
pub struct FamilyCtx<'a> {
    /// The family the table serves.
    pub family: IpFamily,
    /// The table's name.
    pub table: &'a str,
    /// Node-wide settings.
    pub settings: &'a ProxySettings,
    /// The node's current facts (pod CIDRs, addresses).
    pub node: &'a NodeFacts,
}

impl FamilyCtx<'_> {
    /// `ip` or `ip6`: the nft family, and the payload keyword for addresses.
    pub fn ip(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }

    fn addr_type(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "ipv4_addr",
            IpFamily::V6 => "ipv6_addr",
        }
    }

    fn no_localhost(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "ip daddr != 127.0.0.0/8",
            IpFamily::V6 => "ip6 daddr != ::1",
        }
    }

    fn mark(&self) -> String {
        format!(
            "{:#010x}",
            1u32 << u32::from(self.settings.masquerade_bit.min(31))
        )
    }

    fn cidrs<'c>(&self, cidrs: impl IntoIterator<Item = &'c Cidr>) -> Vec<String> {
        cidrs
            .into_iter()
            .filter(|c| c.family() == self.family)
            .map(|c| c.to_string())
            .collect()
    }

    /// The local-traffic detector as an nft match: `local` true matches traffic from local
    /// pods, false traffic from anywhere else. `None` when the detector cannot tell (mode
    /// `None`, or no CIDR of this family).
    fn local_match(&self, local: bool) -> Option<String> {
        let op = if local { "" } else { "!= " };
        let detect = &self.settings.local_detect;
        let by_source = |cidrs: Vec<String>| match cidrs.len() {
            0 => None,
            1 => Some(format!("{} saddr {op}{}", self.ip(), cidrs[0])),
            _ => Some(format!(
                "{} saddr {op}{{ {} }}",
                self.ip(),
                cidrs.join(", ")
            )),
        };
        match detect.mode {
            LocalDetectMode::ClusterCidr => {
                by_source(self.cidrs(self.settings.cluster_cidrs.iter()))
            }
            LocalDetectMode::NodeCidr => by_source(self.cidrs(self.node.pod_cidrs.iter())),
            LocalDetectMode::BridgeInterface if !detect.interface.is_empty() => {
                Some(format!("iifname {op}{:?}", detect.interface.as_str()))
            }
            LocalDetectMode::InterfaceNamePrefix if !detect.interface.is_empty() => {
                Some(format!("iifname {op}\"{}*\"", detect.interface))
            }
            _ => None,
        }
    }

    fn ip_text(&self, ip: IpAddr) -> String {
        ip.to_string()
    }

    fn endpoint_text(&self, ep: &Endpoint) -> String {
        match self.family {
            IpFamily::V4 => format!("{}:{}", ep.ip, ep.port),
            IpFamily::V6 => format!("[{}]:{}", ep.ip, ep.port),
        }
    }
}

/// Writes the table's skeleton for one family: the table itself (deleted and re-created, so a
/// hand-edited table is put right), base chains, dispatch chains and rules, and empty maps.
pub fn render_globals(ctx: &FamilyCtx<'_>, s: &mut Script<'_>) {
    let ip = ctx.ip();
    let family_table = format!("{ip} {}", ctx.table);
    s.line(format_args!("add table {family_table}"));
    s.line(format_args!("delete table {family_table}"));
    s.line(format_args!(
        "add table {family_table} {{ comment \"rules for kproxy\" ; }}"
    ));

    let base = [
        (FILTER_PREROUTING, "filter", "prerouting", PRIO_DSTNAT - 10),
        (FILTER_INPUT, "filter", "input", PRIO_DSTNAT - 10),
        (FILTER_FORWARD, "filter", "forward", PRIO_DSTNAT - 10),
        (FILTER_OUTPUT, "filter", "output", PRIO_DSTNAT - 10),
        (
            FILTER_OUTPUT_POST_DNAT,
            "filter",
            "output",
            PRIO_DSTNAT + 10,
        ),
        (NAT_PREROUTING, "nat", "prerouting", PRIO_DSTNAT),
        (NAT_OUTPUT, "nat", "output", PRIO_DSTNAT),
        (NAT_POSTROUTING, "nat", "postrouting", PRIO_SRCNAT),
    ];
    for (name, kind, hook, prio) in base {
        s.add_base_chain(name, kind, hook, prio);
    }
    for name in [
        SERVICES,
        MARK_MASQ,
        MASQUERADING,
        CLUSTER_IPS_CHECK,
        SERVICE_ENDPOINTS_CHECK,
        NODEPORT_ENDPOINTS_CHECK,
        FIREWALL_CHECK,
        REJECT_CHAIN,
    ] {
        s.add_chain(name);
    }

    // Sets and maps first: the rules below refer to them.
    for c in Container::ALL {
        let (what, body) = c.declaration(ctx.addr_type());
        s.add_container(what, c.name(), &body);
    }
    let node_port_cidrs = ctx.cidrs(ctx.settings.node_port_addresses.iter());
    let match_all_node_ips = ctx.settings.node_port_addresses.is_empty();
    if !match_all_node_ips {
        s.add_container(
            "set",
            NODEPORT_IPS,
            &format!(
                "type {} ; flags interval ; auto-merge ; comment \"nodePortAddresses\" ;",
                ctx.addr_type()
            ),
        );
        s.add_elements(NODEPORT_IPS, &node_port_cidrs);
    }
    let node_ips = if match_all_node_ips {
        String::new()
    } else {
        format!("{ip} daddr @{NODEPORT_IPS} ")
    };

    // Hooks into our dispatch chains (upstream's "jump chains").
    // Health-check node ports are answered by the daemon itself: accept them explicitly, as
    // upstream's iptables mode does.
    s.add_rule(
        FILTER_INPUT,
        &format!(
            "{node_ips}tcp dport @{} accept",
            Container::HealthCheckNodePorts.name()
        ),
    );
    let jumps = [
        (FILTER_INPUT, "ct state new ", NODEPORT_ENDPOINTS_CHECK),
        (FILTER_INPUT, "ct state new ", SERVICE_ENDPOINTS_CHECK),
        (FILTER_FORWARD, "ct state new ", SERVICE_ENDPOINTS_CHECK),
        (FILTER_OUTPUT, "ct state new ", SERVICE_ENDPOINTS_CHECK),
        (FILTER_PREROUTING, "ct state new ", FIREWALL_CHECK),
        (FILTER_OUTPUT, "ct state new ", FIREWALL_CHECK),
        (NAT_OUTPUT, "", SERVICES),
        (NAT_PREROUTING, "", SERVICES),
        (NAT_POSTROUTING, "", MASQUERADING),
        (FILTER_FORWARD, "ct state new ", CLUSTER_IPS_CHECK),
        (FILTER_OUTPUT_POST_DNAT, "ct state new ", CLUSTER_IPS_CHECK),
    ];
    for (from, cond, to) in jumps {
        s.add_rule(from, &format!("{cond}jump {to}"));
    }

    let mark = ctx.mark();
    s.add_rule(MARK_MASQ, &format!("mark set mark or {mark}"));
    s.add_rule(MASQUERADING, &format!("mark and {mark} == 0 return"));
    s.add_rule(MASQUERADING, &format!("mark set mark xor {mark}"));
    s.add_rule(MASQUERADING, "masquerade fully-random");

    for reject in REJECT_RULES {
        s.add_rule(
            CLUSTER_IPS_CHECK,
            &format!(
                "{ip} daddr @{} {reject} comment \"Reject traffic to invalid ports of ClusterIPs\"",
                Container::ClusterIps.name()
            ),
        );
    }
    let service_cidrs = ctx.cidrs(ctx.settings.service_cidrs.iter());
    if !service_cidrs.is_empty() {
        s.add_rule(
            CLUSTER_IPS_CHECK,
            &format!(
                "{ip} daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
                service_cidrs.join(", ")
            ),
        );
    }

    for reject in REJECT_RULES {
        s.add_rule(REJECT_CHAIN, reject);
    }
    s.add_rule(
        SERVICE_ENDPOINTS_CHECK,
        &format!(
            "{ip} daddr . meta l4proto . th dport vmap @{}",
            Container::NoEndpointServices.name()
        ),
    );
    s.add_rule(
        NODEPORT_ENDPOINTS_CHECK,
        &format!(
            "{} {node_ips}meta l4proto . th dport vmap @{}",
            ctx.no_localhost(),
            Container::NoEndpointNodePorts.name()
        ),
    );
    s.add_rule(
        FIREWALL_CHECK,
        &format!(
            "{ip} daddr . meta l4proto . th dport vmap @{}",
            Container::FirewallIps.name()
        ),
    );
    s.add_rule(
        SERVICES,
        &format!(
            "{ip} daddr . meta l4proto . th dport vmap @{}",
            Container::ServiceIps.name()
        ),
    );
    s.add_rule(
        SERVICES,
        &format!(
            "fib daddr type local {} {node_ips}meta l4proto . th dport vmap @{}",
            ctx.no_localhost(),
            Container::ServiceNodePorts.name()
        ),
    );
}

/// Renders one service port for one family, or `None` when it has no cluster IP of that
/// family (upstream's per-family proxier never sees such a port).
pub fn render_port(ctx: &FamilyCtx<'_>, sp: &ServicePort) -> Option<PortObjects> {
    let fam = ctx.family;
    let ip = ctx.ip();
    let key = &sp.key;
    let cluster_ip = *sp.cluster_ips.iter().find(|a| a.family == fam)?;
    let proto = key.protocol.as_str();
    let external_ips: Vec<IpAddr> = sp
        .external_ips
        .iter()
        .copied()
        .filter(|a| a.family == fam)
        .collect();
    // `ipMode: Proxy` ingress IPs are delivered by the load balancer to the node's own address,
    // so kproxy leaves them alone, as upstream does.
    let lb_ips: Vec<IpAddr> = sp
        .load_balancer_ingress
        .iter()
        .filter(|i| i.ip.family == fam && i.ip_mode == IpMode::Vip)
        .map(|i| i.ip)
        .collect();
    let source_ranges = ctx.cidrs(sp.load_balancer_source_ranges.iter());

    let externally_accessible = sp.node_port != 0 || !external_ips.is_empty() || !lb_ips.is_empty();
    let itp_local = sp.internal_traffic_policy == TrafficPolicy::Local;
    let etp_local = externally_accessible && sp.external_traffic_policy == TrafficPolicy::Local;
    // Even under `externalTrafficPolicy: Local` the cluster endpoints are needed: traffic from
    // pods and from the node itself short-circuits to them.
    let uses_cluster = !itp_local || externally_accessible;
    let uses_local = itp_local || etp_local;

    let in_family = |e: &&Endpoint| e.ip.family == fam;
    let cluster_eps: Vec<&Endpoint> = if uses_cluster {
        sp.cluster_endpoints().filter(in_family).collect()
    } else {
        Vec::new()
    };
    let local_eps: Vec<&Endpoint> = if uses_local {
        sp.local_endpoints().filter(in_family).collect()
    } else {
        Vec::new()
    };
    // Whether the service has usable endpoints anywhere (upstream's `hasAnyEndpoints`).
    let has_endpoints = !cluster_eps.is_empty()
        || (uses_local
            && sp
                .endpoints
                .iter()
                .filter(in_family)
                .any(|e| e.ready || (e.serving && e.terminating)));

    let cluster_chain =
        (!cluster_eps.is_empty()).then(|| names::service_object(Kind::ClusterPolicy, key));
    let local_chain =
        (!local_eps.is_empty()).then(|| names::service_object(Kind::LocalPolicy, key));
    let internal_chain = if itp_local {
        &local_chain
    } else {
        &cluster_chain
    };
    let external_policy_chain = if etp_local {
        &local_chain
    } else {
        &cluster_chain
    };
    let has_internal = has_endpoints && internal_chain.is_some();
    let has_external = has_endpoints && external_policy_chain.is_some();
    let external_chain = (has_endpoints && externally_accessible)
        .then(|| names::service_object(Kind::External, key));
    let firewall_chain = (!lb_ips.is_empty() && !source_ranges.is_empty())
        .then(|| names::service_object(Kind::Firewall, key));

    let reject = format!("goto {REJECT_CHAIN}");
    let (internal_verdict, external_verdict) = if !has_endpoints {
        (reject.clone(), reject)
    } else {
        ("drop".to_string(), "drop".to_string())
    };

    let mut out = PortObjects::default();
    let mut element = |container: Container, key: String, value: Option<String>| {
        out.elements.push(Element {
            container,
            key,
            value,
        })
    };
    let addr_key = |addr: IpAddr, port: u16| format!("{} . {proto} . {port}", ctx.ip_text(addr));

    // Elements: where each of the port's addresses goes.
    element(Container::ClusterIps, ctx.ip_text(cluster_ip), None);
    match (has_internal, internal_chain) {
        (true, Some(chain)) => element(
            Container::ServiceIps,
            addr_key(cluster_ip, sp.port),
            Some(format!("goto {chain}")),
        ),
        _ => element(
            Container::NoEndpointServices,
            addr_key(cluster_ip, sp.port),
            Some(internal_verdict),
        ),
    }
    for &ext in &external_ips {
        if let Some(chain) = &external_chain {
            element(
                Container::ServiceIps,
                addr_key(ext, sp.port),
                Some(format!("goto {chain}")),
            );
        }
        if !has_external {
            element(
                Container::NoEndpointServices,
                addr_key(ext, sp.port),
                Some(external_verdict.clone()),
            );
        }
    }
    for &lb in &lb_ips {
        if let Some(chain) = &external_chain {
            element(
                Container::ServiceIps,
                addr_key(lb, sp.port),
                Some(format!("goto {chain}")),
            );
        }
        if let Some(fw) = &firewall_chain {
            element(
                Container::FirewallIps,
                addr_key(lb, sp.port),
                Some(format!("goto {fw}")),
            );
        }
        if !has_external {
            element(
                Container::NoEndpointServices,
                addr_key(lb, sp.port),
                Some(external_verdict.clone()),
            );
        }
    }
    if sp.node_port != 0 {
        let np_key = format!("{proto} . {}", sp.node_port);
        if let Some(chain) = &external_chain {
            element(
                Container::ServiceNodePorts,
                np_key.clone(),
                Some(format!("goto {chain}")),
            );
        }
        if !has_external {
            element(
                Container::NoEndpointNodePorts,
                np_key,
                Some(external_verdict.clone()),
            );
        }
    }
    if sp.health_check_node_port != 0 && etp_local {
        element(
            Container::HealthCheckNodePorts,
            sp.health_check_node_port.to_string(),
            None,
        );
    }

    // Chains.
    let affinity = sp.session_affinity.client_ip;
    let timeout = match sp.session_affinity.timeout_seconds {
        0 => DEFAULT_AFFINITY_TIMEOUT,
        t => t,
    };
    let mut reachable: Vec<&Endpoint> = cluster_eps.iter().chain(&local_eps).copied().collect();
    reachable.sort_by_key(|e| (e.ip, e.port));
    reachable.dedup_by(|a, b| (a.ip, a.port) == (b.ip, b.port));
    let ep_chain = |e: &Endpoint| names::endpoint_object(Kind::Endpoint, key, e.ip, e.port);
    let ep_set = |e: &Endpoint| names::endpoint_object(Kind::Affinity, key, e.ip, e.port);

    let policy_rules = |eps: &[&Endpoint]| -> Vec<String> {
        let mut rules = Vec::new();
        if affinity {
            for e in eps {
                rules.push(format!("{ip} saddr @{} goto {}", ep_set(e), ep_chain(e)));
            }
        }
        if let [only] = eps {
            // One endpoint needs no random choice. An anonymous vmap per service would also
            // cost the kernel a scan of every set in the table to name it (O(n²) in a sync).
            rules.push(format!("goto {}", ep_chain(only)));
            return rules;
        }
        let arms: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{i} : goto {}", ep_chain(e)))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            eps.len(),
            arms.join(", ")
        ));
        rules
    };

    // Off-cluster traffic to the cluster IP is masqueraded (it may be routed to any node and
    // bounce off it); with masqueradeAll, all of it is.
    let internal_masq = has_internal.then(|| {
        let dst = format!(
            "{ip} daddr {} {proto} dport {}",
            ctx.ip_text(cluster_ip),
            sp.port
        );
        if ctx.settings.masquerade_all {
            Some(format!("{dst} jump {MARK_MASQ}"))
        } else {
            ctx.local_match(false)
                .map(|not_local| format!("{dst} {not_local} jump {MARK_MASQ}"))
        }
    });
    let internal_masq = internal_masq.flatten();

    for (chain, eps) in [(&cluster_chain, &cluster_eps), (&local_chain, &local_eps)] {
        if let Some(name) = chain {
            let mut rules = Vec::new();
            if Some(name) == internal_chain.as_ref() {
                rules.extend(internal_masq.clone());
            }
            rules.extend(policy_rules(eps));
            out.chains.push(Chain {
                name: name.clone(),
                rules,
            });
        }
    }

    if let Some(name) = &external_chain {
        let mut rules = Vec::new();
        if !etp_local {
            // Endpoints may be on another node: masquerade so replies come back through us.
            rules.push(format!("jump {MARK_MASQ}"));
        } else if let Some(cluster) = &cluster_chain {
            // Pods and the node itself reach every endpoint, as if they went out to the load
            // balancer and came back (upstream's short-circuit).
            if let Some(local) = ctx.local_match(true) {
                rules.push(format!(
                    "{local} goto {cluster} comment \"short-circuit pod traffic\""
                ));
            }
            rules.push(format!(
                "fib saddr type local jump {MARK_MASQ} comment \"masquerade local traffic\""
            ));
            rules.push(format!(
                "fib saddr type local goto {cluster} comment \"short-circuit local traffic\""
            ));
        }
        if has_external {
            if let Some(policy) = external_policy_chain {
                rules.push(format!("goto {policy}"));
            }
        }
        out.chains.push(Chain {
            name: name.clone(),
            rules,
        });
    }

    if let Some(name) = &firewall_chain {
        let mut sources = source_ranges.clone();
        // A VIP often exists as a local address too: a request from this node to it then
        // arrives with the VIP as source. Allow that when the node itself is allowed.
        let node_allowed = ctx.node.addresses.iter().any(|a| {
            a.family == fam
                && sp
                    .load_balancer_source_ranges
                    .iter()
                    .any(|c| c.contains(*a))
        });
        if node_allowed {
            sources.extend(lb_ips.iter().map(|a| ctx.ip_text(*a)));
        }
        out.chains.push(Chain {
            name: name.clone(),
            rules: vec![format!("{ip} saddr != {{ {} }} drop", sources.join(", "))],
        });
    }

    for e in &reachable {
        let set = ep_set(e);
        let mut rules = vec![format!("{ip} saddr {} jump {MARK_MASQ}", ctx.ip_text(e.ip))];
        if affinity {
            rules.push(format!("update @{set} {{ {ip} saddr }}"));
            out.sets.push(AffinitySet { name: set, timeout });
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}",
            ctx.endpoint_text(e)
        ));
        out.chains.push(Chain {
            name: ep_chain(e),
            rules,
        });
    }
    Some(out)
}

/// The `add set` body of an affinity set.
pub fn affinity_set_body(ctx: &FamilyCtx<'_>, timeout: u32) -> String {
    format!(
        "type {} ; flags dynamic,timeout ; timeout {timeout}s ;",
        ctx.addr_type()
    )
}
