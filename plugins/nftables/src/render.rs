//! The pure part: what kproxy's table must contain for one family, as plain values.
//!
//! [`render_globals`] writes the fixed skeleton (base chains, dispatch maps, masquerading,
//! reject/drop handling); [`render_port`] turns one service port into its chains, affinity sets
//! and map elements, as typed values ([`crate::rule`]). Neither touches the kernel;
//! [`crate::plan`] turns them into transactions.
//!
//! The layout and the rules follow upstream kube-proxy's nftables mode
//! (`pkg/proxy/nftables/proxier.go`); the README lists where kproxy differs.

use crate::{
    names::{self, Kind},
    rule::{
        Action, AddrItem, AddrValue, Dir, ElemKey, ElemValue, Match, PortValue, Reject, Rule,
        Verdict, VmapKey,
    },
    script::{ElemRef, KeyType, SetKey, SetSpec, SetValue, Sink},
    slots::{block_start, shard_of, slots_of, SlotIds, SlotKind, SHARDS},
};
use kproxy_plugin_api::{
    Cidr, Endpoint, FamilyView, IpAddr, IpFamily, LocalDetectMode, NodeFacts, Protocol,
    ProxySettings, ServicePort,
};
use std::borrow::Cow;

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
/// The chain the `no-endpoint-*-reject` sets send to: a service port without endpoints.
pub const REJECT_CHAIN: &str = "reject-chain";
const NODEPORT_IPS: &str = "nodeport-ips";

/// How a rejected packet is answered: TCP with a reset, everything else with the family's ICMP
/// port unreachable (nft's plain `reject`). Upstream writes only `reject`, which answers TCP
/// with an ICMP error too. A client sees `ECONNREFUSED` either way, but an ICMP error is
/// rate-limited per destination, and a TCP socket ignores one that arrives while `connect()`
/// still holds the socket, as the answer from the node itself or one veth hop away does: over
/// IPv6 the connection was then refused only when the SYN was retransmitted a second later
/// (kernel 6.18, `TcpExtLockDroppedIcmps`). A reset is a segment the socket always processes.
fn reject_rules(matches: Vec<Match>, comment: Option<&str>) -> [Rule; 2] {
    let mut tcp = matches.clone();
    tcp.push(Match::L4Proto(Protocol::Tcp));
    let with = |r: Rule| match comment {
        Some(c) => r.comment(c),
        None => r,
    };
    [
        with(Rule::when(tcp, Action::Reject(Reject::TcpReset))),
        with(Rule::when(matches, Action::Reject(Reject::PortUnreachable))),
    ]
}

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
    /// Set of `addr . proto . port` without usable endpoints, rejected or dropped in the filter
    /// hooks. Upstream writes one verdict map (`goto reject-chain` or `drop`); two plain sets
    /// with a fixed rule each keep a service's last endpoint going (and coming back) a change
    /// of data only: a `goto` element makes the kernel re-validate the whole table, which at
    /// 44,000 services takes about 100 ms.
    NoEndpointServices(NoEndpoint),
    /// Set of node ports (`proto . port`) without usable endpoints (as
    /// [`Container::NoEndpointServices`]).
    NoEndpointNodePorts(NoEndpoint),
    /// `addr . proto . port : verdict` for LB IPs with `loadBalancerSourceRanges`.
    FirewallIps,
    /// Set of health-check node ports, accepted in the input hook.
    HealthCheckNodePorts,
    /// Set of `endpoint . endpoint` pairs: a connection an endpoint makes to itself through a
    /// service (hairpin) is masqueraded in postrouting, so the reply comes back through the
    /// node. Upstream does this with a rule in each endpoint's chain; here endpoints have no
    /// chain of their own (see [`crate::slots`]).
    HairpinEndpoints,
    /// Slot map `shard` of a kind: policy chains' slot blocks → endpoints (or, with ClientIP
    /// affinity, endpoint chains).
    Slots(SlotKind, u8),
}

impl Container {
    /// Every container, in the order a full sync writes them.
    pub fn all() -> impl Iterator<Item = Container> {
        [
            Container::ClusterIps,
            Container::ServiceIps,
            Container::ServiceNodePorts,
            Container::NoEndpointServices(NoEndpoint::Reject),
            Container::NoEndpointServices(NoEndpoint::Drop),
            Container::NoEndpointNodePorts(NoEndpoint::Reject),
            Container::NoEndpointNodePorts(NoEndpoint::Drop),
            Container::FirewallIps,
            Container::HealthCheckNodePorts,
            Container::HairpinEndpoints,
        ]
        .into_iter()
        .chain(
            SlotKind::ALL
                .into_iter()
                .flat_map(|kind| (0..SHARDS as u8).map(move |shard| Container::Slots(kind, shard))),
        )
    }

    /// The set or map's name in the table.
    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Container::ClusterIps => "cluster-ips",
            Container::ServiceIps => "service-ips",
            Container::ServiceNodePorts => "service-nodeports",
            Container::NoEndpointServices(NoEndpoint::Reject) => "no-endpoint-services-reject",
            Container::NoEndpointServices(NoEndpoint::Drop) => "no-endpoint-services-drop",
            Container::NoEndpointNodePorts(NoEndpoint::Reject) => "no-endpoint-nodeports-reject",
            Container::NoEndpointNodePorts(NoEndpoint::Drop) => "no-endpoint-nodeports-drop",
            Container::FirewallIps => "firewall-ips",
            Container::HealthCheckNodePorts => "health-check-nodeports",
            Container::HairpinEndpoints => "hairpin-endpoints",
            Container::Slots(kind, shard) => {
                let kind = match kind {
                    SlotKind::Tcp => "tcp",
                    SlotKind::Udp => "udp",
                    SlotKind::Sctp => "sctp",
                    SlotKind::Affinity => "affinity",
                };
                return Cow::Owned(format!("endpoints-{kind}-{shard:02}"));
            }
        })
    }

    /// Whether this is a map (elements carry a value) rather than a plain set.
    pub fn is_map(self) -> bool {
        matches!(
            self,
            Container::ServiceIps
                | Container::ServiceNodePorts
                | Container::FirewallIps
                | Container::Slots(..)
        )
    }

    /// The declaration of this set or map in `family`'s table, named `name` (its
    /// [`Container::name`]).
    pub fn spec(self, family: IpFamily, name: &str) -> SetSpec<'_> {
        if let Container::Slots(kind, _) = self {
            let value = match kind {
                SlotKind::Tcp => SetValue::Endpoint(family, Protocol::Tcp),
                SlotKind::Udp => SetValue::Endpoint(family, Protocol::Udp),
                SlotKind::Sctp => SetValue::Endpoint(family, Protocol::Sctp),
                SlotKind::Affinity => SetValue::Verdict,
            };
            return SetSpec {
                name,
                key: KeyType::Slots,
                value,
                interval: true,
                timeout: None,
                comment: None,
            };
        }
        let (key, comment) = match self {
            Container::ClusterIps => (KeyType::Addr(family), "Active ClusterIPs"),
            Container::ServiceIps => (
                KeyType::AddrProtoPort(family),
                "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            ),
            Container::ServiceNodePorts => (KeyType::ProtoPort, "NodePort traffic"),
            Container::NoEndpointServices(NoEndpoint::Reject) => (
                KeyType::AddrProtoPort(family),
                "services with no endpoints: reject",
            ),
            Container::NoEndpointServices(NoEndpoint::Drop) => (
                KeyType::AddrProtoPort(family),
                "services with no endpoints for this traffic policy: drop",
            ),
            Container::NoEndpointNodePorts(NoEndpoint::Reject) => (
                KeyType::ProtoPort,
                "service nodeports with no endpoints: reject",
            ),
            Container::NoEndpointNodePorts(NoEndpoint::Drop) => (
                KeyType::ProtoPort,
                "service nodeports with no endpoints for this traffic policy: drop",
            ),
            Container::FirewallIps => (
                KeyType::AddrProtoPort(family),
                "destinations that are subject to LoadBalancerSourceRanges",
            ),
            Container::HealthCheckNodePorts => (
                KeyType::Port,
                "healthCheckNodePorts of externalTrafficPolicy Local services",
            ),
            Container::HairpinEndpoints => (
                KeyType::AddrPair(family),
                "endpoints connecting to themselves through a service",
            ),
            Container::Slots(..) => unreachable!("returned above"),
        };
        SetSpec {
            name,
            key,
            value: if self.is_map() {
                SetValue::Verdict
            } else {
                SetValue::None
            },
            interval: false,
            timeout: None,
            comment: Some(comment),
        }
    }
}

/// What becomes of traffic to a service port without usable endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoEndpoint {
    /// The service has no endpoint at all: the client is refused (`goto reject-chain`).
    Reject,
    /// A `Local` traffic policy has no endpoint on this node: the packet is dropped.
    Drop,
}

impl NoEndpoint {
    /// The fixed verdict of the rule that matches this set.
    fn verdict(self) -> Verdict {
        match self {
            NoEndpoint::Reject => Verdict::Goto(REJECT_CHAIN.into()),
            NoEndpoint::Drop => Verdict::Drop,
        }
    }
}

/// One element a service port owns: its key and, for a verdict map, its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    /// The set or map it goes into.
    pub container: Container,
    /// The key (`10.96.0.1 . tcp . 80`).
    pub key: ElemKey,
    /// The verdict (`goto service-…`, `drop`), or `None` in a plain set.
    pub value: Option<ElemValue>,
}

impl Element {
    /// The element as written in `add element` (`key : value` or `key`).
    pub fn text(&self) -> String {
        ElemRef::new(&self.key, self.value.as_ref()).to_string()
    }
}

/// A regular chain and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    /// The chain's name (see [`names`]).
    pub name: String,
    /// The rules, in order.
    pub rules: Vec<Rule>,
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
    /// Map and set elements that several ports may share (claimed in [`crate::plan`]).
    pub elements: Vec<Element>,
    /// The port's slot-map elements: its own blocks, shared with no one, so they are written
    /// straight from the rendering rather than remembered element by element.
    pub slots: Vec<Element>,
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
        crate::rule::ip_word(self.family)
    }

    /// A match on the packet's source or destination address.
    fn addr(&self, dir: Dir, neg: bool, value: AddrValue) -> Match {
        Match::Addr {
            family: self.family,
            dir,
            neg,
            value,
        }
    }

    /// `ip daddr != 127.0.0.0/8` / `ip6 daddr != ::1`: node ports are not served on loopback.
    fn no_localhost(&self) -> Match {
        let item = match self.family {
            IpFamily::V4 => AddrItem::Prefix("127.0.0.0/8".parse().expect("a valid prefix")),
            IpFamily::V6 => AddrItem::Host(std::net::Ipv6Addr::LOCALHOST.into()),
        };
        self.addr(Dir::Dst, true, AddrValue::One(item))
    }

    fn mark(&self) -> u32 {
        1u32 << u32::from(self.settings.masquerade_bit.min(31))
    }

    fn cidrs<'c>(&self, cidrs: impl IntoIterator<Item = &'c Cidr>) -> Vec<Cidr> {
        cidrs
            .into_iter()
            .filter(|c| c.family() == self.family)
            .copied()
            .collect()
    }

    /// The local-traffic detector as an nft match: `local` true matches traffic from local
    /// pods, false traffic from anywhere else. `None` when the detector cannot tell (mode
    /// `None`, or no CIDR of this family).
    fn local_match(&self, local: bool) -> Option<Match> {
        let detect = &self.settings.local_detect;
        let by_source = |cidrs: Vec<Cidr>| match cidrs.len() {
            0 => None,
            1 => Some(self.addr(Dir::Src, !local, AddrValue::One(AddrItem::Prefix(cidrs[0])))),
            _ => Some(self.addr(
                Dir::Src,
                !local,
                AddrValue::Set(cidrs.into_iter().map(AddrItem::Prefix).collect()),
            )),
        };
        match detect.mode {
            LocalDetectMode::ClusterCidr => {
                by_source(self.cidrs(self.settings.cluster_cidrs.iter()))
            }
            LocalDetectMode::NodeCidr => by_source(self.cidrs(self.node.pod_cidrs.iter())),
            LocalDetectMode::BridgeInterface if !detect.interface.is_empty() => {
                Some(Match::IifName {
                    neg: !local,
                    name: detect.interface.to_string(),
                    wildcard: false,
                })
            }
            LocalDetectMode::InterfaceNamePrefix if !detect.interface.is_empty() => {
                Some(Match::IifName {
                    neg: !local,
                    name: detect.interface.to_string(),
                    wildcard: true,
                })
            }
            _ => None,
        }
    }
}

/// Writes the table's skeleton for one family: base chains, dispatch chains and rules, and
/// empty sets and maps (the caller re-creates the table first).
pub fn render_globals(ctx: &FamilyCtx<'_>, s: &mut impl Sink) {
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
    for c in Container::all() {
        s.add_set(&c.spec(ctx.family, &c.name()));
    }
    let node_port_cidrs = ctx.cidrs(ctx.settings.node_port_addresses.iter());
    let match_all_node_ips = ctx.settings.node_port_addresses.is_empty();
    if !match_all_node_ips {
        s.add_set(&SetSpec {
            name: NODEPORT_IPS,
            key: KeyType::Addr(ctx.family),
            value: SetValue::None,
            interval: true,
            timeout: None,
            comment: Some("nodePortAddresses"),
        });
        s.add_elements(
            NODEPORT_IPS,
            node_port_cidrs.iter().map(|c| ElemRef {
                key: SetKey::Cidr(c),
                value: None,
                timeout: None,
            }),
        );
    }
    let node_ips: Vec<Match> = if match_all_node_ips {
        Vec::new()
    } else {
        vec![ctx.addr(Dir::Dst, false, AddrValue::Named(NODEPORT_IPS.into()))]
    };
    let with = |mut first: Vec<Match>, then: &[Match]| {
        first.extend_from_slice(then);
        first
    };

    // Hooks into our dispatch chains (upstream's "jump chains").
    // Health-check node ports are answered by the daemon itself: accept them explicitly, as
    // upstream's iptables mode does.
    s.add_rule(
        FILTER_INPUT,
        &Rule::when(
            with(
                node_ips.clone(),
                &[Match::Dport {
                    proto: Protocol::Tcp,
                    value: PortValue::Named(Container::HealthCheckNodePorts.name().into()),
                }],
            ),
            Action::Verdict(Verdict::Accept),
        ),
    );
    let jumps = [
        (FILTER_INPUT, true, NODEPORT_ENDPOINTS_CHECK),
        (FILTER_INPUT, true, SERVICE_ENDPOINTS_CHECK),
        (FILTER_FORWARD, true, SERVICE_ENDPOINTS_CHECK),
        (FILTER_OUTPUT, true, SERVICE_ENDPOINTS_CHECK),
        (FILTER_PREROUTING, true, FIREWALL_CHECK),
        (FILTER_OUTPUT, true, FIREWALL_CHECK),
        (NAT_OUTPUT, false, SERVICES),
        (NAT_PREROUTING, false, SERVICES),
        (NAT_POSTROUTING, false, MASQUERADING),
        (FILTER_FORWARD, true, CLUSTER_IPS_CHECK),
        (FILTER_OUTPUT_POST_DNAT, true, CLUSTER_IPS_CHECK),
    ];
    for (from, new_only, to) in jumps {
        let cond = if new_only {
            vec![Match::CtStateNew]
        } else {
            Vec::new()
        };
        s.add_rule(
            from,
            &Rule::when(cond, Action::Verdict(Verdict::Jump(to.into()))),
        );
    }

    let mark = ctx.mark();
    s.add_rule(MARK_MASQ, &Rule::new(Action::MarkOr(mark)));
    s.add_rule(
        MASQUERADING,
        &Rule::when(
            vec![Match::AddrPairIn {
                family: ctx.family,
                set: Container::HairpinEndpoints.name().into(),
            }],
            Action::Verdict(Verdict::Jump(MARK_MASQ.into())),
        )
        .comment("hairpin: an endpoint reached itself through a service"),
    );
    s.add_rule(
        MASQUERADING,
        &Rule::when(
            vec![Match::MarkClear(mark)],
            Action::Verdict(Verdict::Return),
        ),
    );
    s.add_rule(MASQUERADING, &Rule::new(Action::MarkXor(mark)));
    s.add_rule(MASQUERADING, &Rule::new(Action::Masquerade));

    for rule in reject_rules(
        vec![ctx.addr(
            Dir::Dst,
            false,
            AddrValue::Named(Container::ClusterIps.name().into()),
        )],
        Some("Reject traffic to invalid ports of ClusterIPs"),
    ) {
        s.add_rule(CLUSTER_IPS_CHECK, &rule);
    }
    let service_cidrs = ctx.cidrs(ctx.settings.service_cidrs.iter());
    if !service_cidrs.is_empty() {
        s.add_rule(
            CLUSTER_IPS_CHECK,
            &Rule::when(
                vec![ctx.addr(
                    Dir::Dst,
                    false,
                    AddrValue::Set(service_cidrs.into_iter().map(AddrItem::Prefix).collect()),
                )],
                Action::Verdict(Verdict::Drop),
            )
            .comment("Drop traffic to unallocated ClusterIPs"),
        );
    }

    for rule in reject_rules(Vec::new(), None) {
        s.add_rule(REJECT_CHAIN, &rule);
    }
    let daddr_vmap = |map: Container| {
        Rule::new(Action::Vmap {
            key: VmapKey::DaddrProtoPort(ctx.family),
            map: map.name().into(),
        })
    };
    let port_vmap = |matches: Vec<Match>, map: Container| {
        Rule::when(
            matches,
            Action::Vmap {
                key: VmapKey::ProtoPort,
                map: map.name().into(),
            },
        )
    };
    for what in [NoEndpoint::Reject, NoEndpoint::Drop] {
        s.add_rule(
            SERVICE_ENDPOINTS_CHECK,
            &Rule::when(
                vec![Match::KeyIn {
                    key: VmapKey::DaddrProtoPort(ctx.family),
                    set: Container::NoEndpointServices(what).name().into(),
                }],
                Action::Verdict(what.verdict()),
            ),
        );
        let mut node_port = vec![ctx.no_localhost()];
        node_port.extend(node_ips.iter().cloned());
        node_port.push(Match::KeyIn {
            key: VmapKey::ProtoPort,
            set: Container::NoEndpointNodePorts(what).name().into(),
        });
        s.add_rule(
            NODEPORT_ENDPOINTS_CHECK,
            &Rule::when(node_port, Action::Verdict(what.verdict())),
        );
    }
    s.add_rule(FIREWALL_CHECK, &daddr_vmap(Container::FirewallIps));
    // Off-cluster traffic to a cluster IP is masqueraded (it may be routed to any node and
    // bounce off it); with masqueradeAll, all of it is. Upstream writes this rule into each
    // service's policy chain, matching its cluster IP and port; one rule over `cluster-ips`
    // does the same for every service, and a 44,000-service table holds 44,000 rules fewer
    // (a third of the kernel's work in a full sync). A packet to a cluster IP on a port no
    // service has gets the mark too, and is then rejected in the filter hooks
    // (`cluster-ips-check`) before masquerading could matter.
    let to_cluster_ip = ctx.addr(
        Dir::Dst,
        false,
        AddrValue::Named(Container::ClusterIps.name().into()),
    );
    let masquerade_when = if ctx.settings.masquerade_all {
        Some(vec![to_cluster_ip])
    } else {
        ctx.local_match(false)
            .map(|not_local| vec![to_cluster_ip, not_local])
    };
    if let Some(matches) = masquerade_when {
        s.add_rule(
            SERVICES,
            &Rule::when(matches, Action::Verdict(Verdict::Jump(MARK_MASQ.into()))),
        );
    }
    s.add_rule(SERVICES, &daddr_vmap(Container::ServiceIps));
    s.add_rule(
        SERVICES,
        &port_vmap(
            with(
                vec![Match::FibLocal(Dir::Dst), ctx.no_localhost()],
                &node_ips,
            ),
            Container::ServiceNodePorts,
        ),
    );
}

/// Renders one service port for one family, or `None` when it has no cluster IP of that
/// family (upstream's per-family proxier never sees such a port).
///
/// `ids` holds the slot block of each policy chain ([`crate::plan`] assigns them first, for
/// both policy chains of every port: [`policy_chains`]).
pub fn render_port(ctx: &FamilyCtx<'_>, ids: &SlotIds, sp: &ServicePort) -> Option<PortObjects> {
    let fam = ctx.family;
    let key = &sp.key;
    let cluster_ip = *sp.cluster_ips.iter().find(|a| a.family == fam)?;
    let proto = key.protocol;
    let FamilyView {
        external_ips,
        lb_ips,
        externally_accessible,
        internal_local: itp_local,
        external_local: etp_local,
        cluster_endpoints: cluster_eps,
        local_endpoints: local_eps,
        has_endpoints,
    } = sp.family_view(fam);
    let source_ranges = ctx.cidrs(sp.load_balancer_source_ranges.iter());

    // The chains, the rules and the verdict elements depend on the service alone, never on
    // how many endpoints it has: a policy chain without endpoints finds no slot and sends the
    // packet on untranslated, and the filter hooks refuse it through the no-endpoint sets. An
    // endpoint change, even to none or back, is then a change of data only, which the kernel
    // applies without re-validating the table (see `NoEndpoint`).
    let cluster_used = !itp_local || externally_accessible;
    let local_used = itp_local || (externally_accessible && etp_local);
    let cluster_chain = cluster_used.then(|| names::service_object(Kind::ClusterPolicy, key));
    let local_chain = local_used.then(|| names::service_object(Kind::LocalPolicy, key));
    let policy = |local: bool| {
        if local {
            (&local_chain, &local_eps)
        } else {
            (&cluster_chain, &cluster_eps)
        }
    };
    let (internal_chain, internal_eps) = policy(itp_local);
    let (external_policy_chain, external_eps) = policy(etp_local);
    let has_internal = has_endpoints && !internal_eps.is_empty();
    let has_external = has_endpoints && !external_eps.is_empty();
    let external_chain = externally_accessible.then(|| names::service_object(Kind::External, key));
    let firewall_chain = (!lb_ips.is_empty() && !source_ranges.is_empty())
        .then(|| names::service_object(Kind::Firewall, key));

    // Upstream: no endpoint at all is refused, a `Local` policy without local endpoints drops.
    let refused = if has_endpoints {
        NoEndpoint::Drop
    } else {
        NoEndpoint::Reject
    };

    let mut out = PortObjects::default();
    let mut element = |container: Container, key: ElemKey, value: Option<Verdict>| {
        out.elements.push(Element {
            container,
            key,
            value: value.map(ElemValue::Verdict),
        })
    };
    let addr_key = |addr: IpAddr, port: u16| ElemKey::AddrProtoPort(addr, proto, port);
    let goto = |chain: &String| Some(Verdict::Goto(chain.clone()));

    // Elements: where each of the port's addresses goes.
    element(Container::ClusterIps, ElemKey::Addr(cluster_ip), None);
    if let Some(chain) = internal_chain {
        element(
            Container::ServiceIps,
            addr_key(cluster_ip, sp.port),
            goto(chain),
        );
    }
    if !has_internal {
        element(
            Container::NoEndpointServices(refused),
            addr_key(cluster_ip, sp.port),
            None,
        );
    }
    for &ext in &external_ips {
        if let Some(chain) = &external_chain {
            element(Container::ServiceIps, addr_key(ext, sp.port), goto(chain));
        }
        if !has_external {
            element(
                Container::NoEndpointServices(refused),
                addr_key(ext, sp.port),
                None,
            );
        }
    }
    for &lb in &lb_ips {
        if let Some(chain) = &external_chain {
            element(Container::ServiceIps, addr_key(lb, sp.port), goto(chain));
        }
        if let Some(fw) = &firewall_chain {
            element(Container::FirewallIps, addr_key(lb, sp.port), goto(fw));
        }
        if !has_external {
            element(
                Container::NoEndpointServices(refused),
                addr_key(lb, sp.port),
                None,
            );
        }
    }
    if sp.node_port != 0 {
        let np_key = ElemKey::ProtoPort(proto, sp.node_port);
        if let Some(chain) = &external_chain {
            element(Container::ServiceNodePorts, np_key.clone(), goto(chain));
        }
        if !has_external {
            element(Container::NoEndpointNodePorts(refused), np_key, None);
        }
    }
    if sp.health_check_node_port != 0 && etp_local {
        element(
            Container::HealthCheckNodePorts,
            ElemKey::Port(sp.health_check_node_port),
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
    let jump_masq = || Action::Verdict(Verdict::Jump(MARK_MASQ.into()));

    let mut slot_elements = Vec::new();
    let mut policy_rules = |chain: &str, eps: &[&Endpoint]| -> Vec<Rule> {
        let mut rules = Vec::new();
        let Some(id) = ids.get(chain) else {
            // Only when every block of the table is taken (over 130,000 policy chains): the
            // chain sends nowhere, as if it had no endpoints.
            tracing::warn!(
                chain,
                "no slot block left for this service port's endpoints"
            );
            return rules;
        };
        let start = block_start(id);
        let shard = shard_of(id);
        let mut slot = |container: Container, i: usize, value: ElemValue| {
            let (first, last) = slots_of(i, eps.len());
            slot_elements.push(Element {
                container,
                key: ElemKey::Slots(start + first, start + last),
                value: Some(value),
            });
        };
        if affinity {
            // A remembered client goes to its endpoint's chain; a new one is sent to a random
            // endpoint's chain, which remembers it.
            for e in eps {
                rules.push(Rule::when(
                    vec![ctx.addr(Dir::Src, false, AddrValue::Named(ep_set(e)))],
                    Action::Verdict(Verdict::Goto(ep_chain(e))),
                ));
            }
            let container = Container::Slots(SlotKind::Affinity, shard);
            for (i, e) in eps.iter().enumerate() {
                slot(container, i, Verdict::Goto(ep_chain(e)).into());
            }
            rules.push(Rule::new(Action::SlotVmap {
                start,
                map: container.name().into_owned(),
            }));
        } else {
            let kind = match proto {
                Protocol::Tcp => SlotKind::Tcp,
                Protocol::Udp => SlotKind::Udp,
                Protocol::Sctp => SlotKind::Sctp,
            };
            let container = Container::Slots(kind, shard);
            for (i, e) in eps.iter().enumerate() {
                slot(container, i, ElemValue::Endpoint(e.ip, e.port));
            }
            rules.push(Rule::when(
                vec![Match::L4Proto(proto)],
                Action::DnatSlots {
                    family: fam,
                    start,
                    map: container.name().into_owned(),
                },
            ));
        }
        rules
    };

    // Off-cluster traffic to the cluster IP is masqueraded by one rule in `services` for every
    // cluster IP (see `render_globals`), not by a rule in each policy chain as upstream does.
    for (chain, eps) in [policy(false), policy(true)] {
        if let Some(name) = chain {
            out.chains.push(Chain {
                name: name.clone(),
                rules: policy_rules(name, eps),
            });
        }
    }

    out.slots = slot_elements;

    if let Some(name) = &external_chain {
        let mut rules = Vec::new();
        if !etp_local {
            // Endpoints may be on another node: masquerade so replies come back through us.
            rules.push(Rule::new(jump_masq()));
        } else if let Some(cluster) = &cluster_chain {
            // Pods and the node itself reach every endpoint, as if they went out to the load
            // balancer and came back (upstream's short-circuit).
            if let Some(local) = ctx.local_match(true) {
                rules.push(
                    Rule::when(vec![local], Action::Verdict(Verdict::Goto(cluster.clone())))
                        .comment("short-circuit pod traffic"),
                );
            }
            rules.push(
                Rule::when(vec![Match::FibLocal(Dir::Src)], jump_masq())
                    .comment("masquerade local traffic"),
            );
            rules.push(
                Rule::when(
                    vec![Match::FibLocal(Dir::Src)],
                    Action::Verdict(Verdict::Goto(cluster.clone())),
                )
                .comment("short-circuit local traffic"),
            );
        }
        if let Some(policy) = external_policy_chain {
            rules.push(Rule::goto(policy));
        }
        out.chains.push(Chain {
            name: name.clone(),
            rules,
        });
    }

    if let Some(name) = &firewall_chain {
        let mut sources: Vec<AddrItem> = source_ranges
            .iter()
            .copied()
            .map(AddrItem::Prefix)
            .collect();
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
            sources.extend(lb_ips.iter().copied().map(AddrItem::Host));
        }
        out.chains.push(Chain {
            name: name.clone(),
            rules: vec![Rule::when(
                vec![ctx.addr(Dir::Src, true, AddrValue::Set(sources))],
                Action::Verdict(Verdict::Drop),
            )],
        });
    }

    for e in &reachable {
        out.elements.push(Element {
            container: Container::HairpinEndpoints,
            key: ElemKey::AddrPair(e.ip),
            value: None,
        });
    }
    if affinity {
        // Only affinity needs a chain per endpoint: it records the client, then translates.
        for e in &reachable {
            let set = ep_set(e);
            out.chains.push(Chain {
                name: ep_chain(e),
                rules: vec![
                    Rule::new(Action::UpdateSaddr {
                        family: fam,
                        set: set.clone(),
                    }),
                    Rule::when(
                        vec![Match::L4Proto(proto)],
                        Action::Dnat {
                            addr: e.ip,
                            port: e.port,
                        },
                    ),
                ],
            });
            out.sets.push(AffinitySet { name: set, timeout });
        }
    }
    Some(out)
}

/// The names of a service port's two possible policy chains (cluster and local), which own
/// slot blocks.
pub fn policy_chains(key: &kproxy_plugin_api::ServicePortKey) -> [String; 2] {
    [
        names::service_object(Kind::ClusterPolicy, key),
        names::service_object(Kind::LocalPolicy, key),
    ]
}

/// The declaration of an affinity set of `family` with `timeout` seconds.
pub fn affinity_set_spec(name: &str, family: IpFamily, timeout: u32) -> SetSpec<'_> {
    SetSpec {
        name,
        key: KeyType::Addr(family),
        value: SetValue::None,
        interval: false,
        timeout: Some(timeout),
        comment: None,
    }
}
