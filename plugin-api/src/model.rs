//! The resolved state a dataplane programs: every service port this node serves, with its
//! endpoints already chosen for cluster and node-local traffic.
//!
//! Everything here is `#[repr(C)]` and `StableAbi`, so the daemon hands the whole state to a
//! plugin by reference, without copying or serialising it — at 250,000 endpoints that matters.
//! Topology decisions (traffic policies, hints, terminating endpoints) are made once in the
//! daemon; a plugin only reads [`Endpoint::for_cluster`] and [`Endpoint::for_local`].

use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

/// An IP address family.
#[repr(u8)]
#[derive(
    StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum IpFamily {
    /// IPv4.
    V4 = 4,
    /// IPv6.
    V6 = 6,
}

/// An IPv4 or IPv6 address in an ABI-stable form. IPv4 addresses use the first four octets.
///
/// Convert with `From<std::net::IpAddr>` and [`IpAddr::to_std`].
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpAddr {
    /// The family, which says how many octets are meaningful.
    pub family: IpFamily,
    /// The address octets in network order; unused octets are zero.
    pub octets: [u8; 16],
}

impl IpAddr {
    /// The standard library form.
    pub fn to_std(self) -> std::net::IpAddr {
        match self.family {
            IpFamily::V4 => {
                let o = self.octets;
                std::net::IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
            }
            IpFamily::V6 => std::net::IpAddr::V6(Ipv6Addr::from(self.octets)),
        }
    }
    /// Whether this is an IPv4 address.
    pub fn is_v4(self) -> bool {
        self.family == IpFamily::V4
    }
}

impl From<std::net::IpAddr> for IpAddr {
    fn from(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(v4) => v4.into(),
            std::net::IpAddr::V6(v6) => v6.into(),
        }
    }
}

impl From<Ipv4Addr> for IpAddr {
    fn from(ip: Ipv4Addr) -> Self {
        let mut octets = [0u8; 16];
        octets[..4].copy_from_slice(&ip.octets());
        IpAddr {
            family: IpFamily::V4,
            octets,
        }
    }
}

impl From<Ipv6Addr> for IpAddr {
    fn from(ip: Ipv6Addr) -> Self {
        IpAddr {
            family: IpFamily::V6,
            octets: ip.octets(),
        }
    }
}

impl fmt::Display for IpAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_std().fmt(f)
    }
}

impl fmt::Debug for IpAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_std().fmt(f)
    }
}

impl Serialize for IpAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<std::net::IpAddr>()
            .map(IpAddr::from)
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not an IP address")))
    }
}

/// An address prefix such as `10.96.0.0/12`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address (host bits are zero).
    pub addr: IpAddr,
    /// The prefix length: 0–32 for IPv4, 0–128 for IPv6.
    pub prefix_len: u8,
}

impl Cidr {
    /// Builds a prefix, zeroing the host bits; `None` when the length is too long for the family.
    pub fn new(addr: impl Into<IpAddr>, prefix_len: u8) -> Option<Cidr> {
        let mut addr = addr.into();
        let max = if addr.is_v4() { 32 } else { 128 };
        if prefix_len > max {
            return None;
        }
        for (i, octet) in addr.octets.iter_mut().enumerate() {
            let bits_before = (i as u32) * 8;
            let keep = (prefix_len as u32).saturating_sub(bits_before).min(8);
            *octet &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        }
        Some(Cidr { addr, prefix_len })
    }

    /// Whether `ip` lies inside this prefix (always false across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Cidr::new(ip, self.prefix_len).is_some_and(|c| c.addr == self.addr)
    }

    /// The family of the prefix.
    pub fn family(&self) -> IpFamily {
        self.addr.family
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    /// Parses `addr/len`, or a bare address as a host prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}` has a prefix length outside 0–{max}"))?,
            None => max,
        };
        Ok(Cidr::new(ip, len).expect("length checked above"))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A transport protocol a service port can use.
#[repr(u8)]
#[derive(
    StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum Protocol {
    /// TCP.
    Tcp = 6,
    /// UDP.
    Udp = 17,
    /// SCTP.
    Sctp = 132,
}

impl Protocol {
    /// The lowercase name used by iptables, nft and in keys (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        self as u8
    }
}

/// Identifies one port of one service: the unit a dataplane programs and the unit of change.
/// Orders by namespace, name, port name, then protocol.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortKey {
    /// The service's namespace.
    pub namespace: RString,
    /// The service's name.
    pub name: RString,
    /// The port's name (empty for a single unnamed port).
    pub port_name: RString,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl ServicePortKey {
    /// Builds a key.
    pub fn new(namespace: &str, name: &str, port_name: &str, protocol: Protocol) -> Self {
        ServicePortKey {
            namespace: namespace.into(),
            name: name.into(),
            port_name: port_name.into(),
            protocol,
        }
    }
}

impl fmt::Display for ServicePortKey {
    /// `namespace/name:port_name/protocol`, like kube-proxy's `ServicePortName` plus protocol.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace,
            self.name,
            self.port_name,
            self.protocol.as_str()
        )
    }
}

/// `Cluster` or `Local`, for `internalTrafficPolicy` and `externalTrafficPolicy`.
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TrafficPolicy {
    /// Traffic may go to any endpoint in the cluster.
    #[default]
    Cluster = 0,
    /// Traffic goes only to endpoints on the node that received it.
    Local = 1,
}

/// How a load balancer delivers traffic for an ingress IP (`status.loadBalancer.ingress[].ipMode`).
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IpMode {
    /// Packets arrive with the ingress IP as destination: the node must handle the IP.
    #[default]
    Vip = 0,
    /// The load balancer proxies to the node: kproxy leaves the IP alone.
    Proxy = 1,
}

/// One load-balancer ingress IP of a service.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoadBalancerIngress {
    /// The ingress IP.
    pub ip: IpAddr,
    /// How the load balancer delivers traffic to it.
    pub ip_mode: IpMode,
}

/// `sessionAffinity` with its timeout.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SessionAffinity {
    /// `ClientIP` affinity: connections from one client IP stick to one endpoint.
    pub client_ip: bool,
    /// How long a client sticks after its last connection (default 10800 upstream).
    pub timeout_seconds: u32,
}

/// One backend of a service port, with its state and where the daemon decided it may serve.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The endpoint's address.
    pub ip: IpAddr,
    /// The port on the endpoint (the service's `targetPort`, named ports already resolved).
    pub port: u16,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// The node the endpoint runs on (empty when unknown).
    pub node_name: RString,
    /// The zone the endpoint runs in (empty when unknown).
    pub zone: RString,
    /// Whether the endpoint runs on this node.
    pub is_local: bool,
    /// Chosen by the daemon to serve cluster-wide traffic (policy `Cluster`).
    pub for_cluster: bool,
    /// Chosen by the daemon to serve node-local traffic (policy `Local`).
    pub for_local: bool,
}

/// One port of one service, with everything a dataplane needs to program it.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Which service port this is; [`ProxyState::services`] is sorted by it.
    pub key: ServicePortKey,
    /// Cluster IPs, IPv4 and/or IPv6 (empty for a service without a cluster IP).
    pub cluster_ips: RVec<IpAddr>,
    /// The service port number.
    pub port: u16,
    /// The node port, or 0 when the service has none.
    pub node_port: u16,
    /// `spec.externalIPs`.
    pub external_ips: RVec<IpAddr>,
    /// `status.loadBalancer.ingress` IPs.
    pub load_balancer_ingress: RVec<LoadBalancerIngress>,
    /// `spec.loadBalancerSourceRanges`: when non-empty, only these sources may reach LB IPs.
    pub load_balancer_source_ranges: RVec<Cidr>,
    /// `spec.sessionAffinity` and its timeout.
    pub session_affinity: SessionAffinity,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.externalTrafficPolicy` (only meaningful when the service is externally reachable).
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`, or 0.
    pub health_check_node_port: u16,
    /// The IPVS scheduler for this port (empty: the plugin's default).
    pub ipvs_scheduler: RString,
    /// All known endpoints of both families, sorted by address then port.
    pub endpoints: RVec<Endpoint>,
}

impl ServicePort {
    /// Endpoints that serve traffic under policy `Cluster`.
    pub fn cluster_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.for_cluster)
    }
    /// Endpoints that serve traffic under policy `Local`.
    pub fn local_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.for_local)
    }
    /// The endpoints that serve traffic from inside the cluster to a cluster IP, following
    /// `internalTrafficPolicy`.
    pub fn internal_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        let local = self.internal_traffic_policy == TrafficPolicy::Local;
        self.endpoints
            .iter()
            .filter(move |e| if local { e.for_local } else { e.for_cluster })
    }
    /// The endpoints that serve traffic from outside to node ports, external and LB IPs,
    /// following `externalTrafficPolicy`.
    pub fn external_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        let local = self.external_policy_local();
        self.endpoints
            .iter()
            .filter(move |e| if local { e.for_local } else { e.for_cluster })
    }
    /// Whether the service can be reached from outside the cluster (node port, external IPs or
    /// LB IPs the node handles — `ipMode: Proxy` ones do not count, as upstream); only then does
    /// `externalTrafficPolicy` apply.
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0
            || !self.external_ips.is_empty()
            || self
                .load_balancer_ingress
                .iter()
                .any(|lb| lb.ip_mode == IpMode::Vip)
    }
    /// Whether `externalTrafficPolicy: Local` is in force.
    pub fn external_policy_local(&self) -> bool {
        self.externally_accessible() && self.external_traffic_policy == TrafficPolicy::Local
    }
}

/// One IP family's view of a service port, decided as upstream's per-family proxier decides it:
/// which addresses of that family the node serves, which traffic policies are in force, and
/// which endpoints serve cluster-wide and node-local traffic. Every dataplane renders from this,
/// so the decision is written once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyView<'a> {
    /// `spec.externalIPs` of this family.
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of this family that the node handles (`ipMode: VIP`; `Proxy`
    /// ones are the load balancer's business, as upstream).
    pub lb_ips: Vec<IpAddr>,
    /// Reachable from outside through this family: a node port, an external IP or an LB IP.
    pub externally_accessible: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`, for an externally accessible port.
    pub external_local: bool,
    /// Endpoints of this family for policy `Cluster` — empty when no traffic uses them
    /// (upstream's `UsesClusterEndpoints`; still used under `externalTrafficPolicy: Local`
    /// for the short-circuit of pod and node traffic).
    pub cluster_endpoints: Vec<&'a Endpoint>,
    /// Endpoints of this family for policy `Local` — empty unless a `Local` policy is in force
    /// (upstream's `UsesLocalEndpoints`).
    pub local_endpoints: Vec<&'a Endpoint>,
    /// Whether the port has usable endpoints anywhere (upstream's `hasAnyEndpoints`): decides
    /// between REJECT (none at all) and DROP (none local under a `Local` policy).
    pub has_endpoints: bool,
}

impl ServicePort {
    /// This port as `family` sees it; see [`FamilyView`].
    pub fn family_view(&self, family: IpFamily) -> FamilyView<'_> {
        let external_ips: Vec<IpAddr> = self
            .external_ips
            .iter()
            .copied()
            .filter(|a| a.family == family)
            .collect();
        let lb_ips: Vec<IpAddr> = self
            .load_balancer_ingress
            .iter()
            .filter(|i| i.ip.family == family && i.ip_mode == IpMode::Vip)
            .map(|i| i.ip)
            .collect();
        let externally_accessible =
            self.node_port != 0 || !external_ips.is_empty() || !lb_ips.is_empty();
        let internal_local = self.internal_traffic_policy == TrafficPolicy::Local;
        let external_local =
            externally_accessible && self.external_traffic_policy == TrafficPolicy::Local;
        let uses_cluster = !internal_local || externally_accessible;
        let uses_local = internal_local || external_local;
        let in_family = |e: &&Endpoint| e.ip.family == family;
        let cluster_endpoints: Vec<&Endpoint> = if uses_cluster {
            self.cluster_endpoints().filter(in_family).collect()
        } else {
            Vec::new()
        };
        let local_endpoints: Vec<&Endpoint> = if uses_local {
            self.local_endpoints().filter(in_family).collect()
        } else {
            Vec::new()
        };
        let has_endpoints = !cluster_endpoints.is_empty()
            || (uses_local
                && self
                    .endpoints
                    .iter()
                    .filter(in_family)
                    .any(|e| e.ready || (e.serving && e.terminating)));
        FamilyView {
            external_ips,
            lb_ips,
            externally_accessible,
            internal_local,
            external_local,
            cluster_endpoints,
            local_endpoints,
            has_endpoints,
        }
    }
}

/// What the daemon knows about the node it runs on.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NodeFacts {
    /// The node's name (the hostname or `hostnameOverride`).
    pub name: RString,
    /// The node's zone (`topology.kubernetes.io/zone`), empty when unknown.
    pub zone: RString,
    /// The node's own IP addresses (from the Node object or, failing that, its interfaces).
    pub addresses: RVec<IpAddr>,
    /// The node's pod CIDRs (`spec.podCIDRs`).
    pub pod_cidrs: RVec<Cidr>,
}

/// How the daemon tells traffic from local pods apart from other traffic (kube-proxy's
/// `detectLocalMode`).
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LocalDetectMode {
    /// Source inside [`ProxySettings::cluster_cidrs`].
    #[default]
    ClusterCidr = 0,
    /// Source inside this node's pod CIDRs ([`NodeFacts::pod_cidrs`]).
    NodeCidr = 1,
    /// Arrived on the bridge named [`LocalDetect::interface`].
    BridgeInterface = 2,
    /// Arrived on an interface whose name starts with [`LocalDetect::interface`].
    InterfaceNamePrefix = 3,
    /// Local traffic cannot be detected: no short-circuits, masquerade per `masquerade_all`.
    None = 4,
}

/// The local-traffic detector and its argument.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LocalDetect {
    /// The mode.
    pub mode: LocalDetectMode,
    /// The bridge name or interface prefix, for the interface modes.
    pub interface: RString,
}

/// Node-wide settings from the daemon's config that every dataplane honours (kube-proxy's
/// `KubeProxyConfiguration` fields that are not specific to one mode).
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ProxySettings {
    /// Whether IPv4 services are handled.
    pub ipv4: bool,
    /// Whether IPv6 services are handled.
    pub ipv6: bool,
    /// The cluster's pod CIDRs (`clusterCIDR`), for local-traffic detection.
    pub cluster_cidrs: RVec<Cidr>,
    /// How local traffic is detected.
    pub local_detect: LocalDetect,
    /// Masquerade all traffic sent to service addresses (`masqueradeAll`).
    pub masquerade_all: bool,
    /// The fwmark bit that marks packets for masquerading (`iptables.masqueradeBit`, default 14).
    pub masquerade_bit: u8,
    /// Addresses on which node ports are served (`nodePortAddresses`); empty means every
    /// address of the node.
    pub node_port_addresses: RVec<Cidr>,
    /// Serve IPv4 node ports on 127.0.0.1 too (`iptables.localhostNodePorts`).
    pub localhost_node_ports: bool,
    /// The service CIDRs: traffic to an unallocated address inside them is dropped.
    pub service_cidrs: RVec<Cidr>,
}

/// The whole desired state for this node, handed to the plugin on every sync.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ProxyState {
    /// Increases by one with every state the daemon resolves.
    pub generation: u64,
    /// The node's facts as of this state.
    pub node: NodeFacts,
    /// Every service port this node serves, sorted by key, keys unique.
    pub services: RVec<ServicePort>,
}

impl ProxyState {
    /// Finds a service port by key (binary search: the list is sorted).
    pub fn find(&self, key: &ServicePortKey) -> Option<&ServicePort> {
        self.services
            .binary_search_by(|s| s.key.cmp(key))
            .ok()
            .map(|i| &self.services[i])
    }
    /// The number of endpoints across all service ports.
    pub fn endpoint_count(&self) -> usize {
        self.services.iter().map(|s| s.endpoints.len()).sum()
    }
}

/// What changed since the plugin's last successful sync.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ChangeSet {
    /// The plugin must reconcile everything (first sync, periodic resync, after a failure, or a
    /// node-wide change); `changed` is then informative only.
    pub full: bool,
    /// Service ports added, changed or removed (absent from the state) since the last successful
    /// sync, sorted and unique.
    pub changed: RVec<ServicePortKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_zeroes_host_bits_and_contains() {
        let c: Cidr = "10.96.3.7/12".parse().unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/12");
        assert!(c.contains("10.111.255.1".parse::<std::net::IpAddr>().unwrap().into()));
        assert!(!c.contains("10.112.0.1".parse::<std::net::IpAddr>().unwrap().into()));
        assert!(!c.contains("fd00::1".parse::<std::net::IpAddr>().unwrap().into()));
        let v6: Cidr = "fd00:10:96::/112".parse().unwrap();
        assert!(v6.contains(
            "fd00:10:96::ffff"
                .parse::<std::net::IpAddr>()
                .unwrap()
                .into()
        ));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("banana/8".parse::<Cidr>().is_err());
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().prefix_len, 32);
    }

    #[test]
    fn addresses_serialise_as_strings() {
        let c: Cidr = "fd00::/64".parse().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, "\"fd00::/64\"");
        assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), c);
        assert!(serde_json::from_str::<IpAddr>("\"300.1.1.1\"").is_err());
    }

    #[test]
    fn ip_round_trips_through_std() {
        for s in ["192.0.2.1", "2001:db8::1"] {
            let std: std::net::IpAddr = s.parse().unwrap();
            assert_eq!(IpAddr::from(std).to_std(), std);
            assert_eq!(IpAddr::from(std).to_string(), s);
        }
    }

    fn port(ns: &str, itp: TrafficPolicy, etp: TrafficPolicy, node_port: u16) -> ServicePort {
        let ep = |last: u8, c: bool, l: bool| Endpoint {
            ip: std::net::Ipv4Addr::new(10, 0, 0, last).into(),
            port: 80,
            ready: true,
            serving: true,
            terminating: false,
            node_name: "n".into(),
            zone: "".into(),
            is_local: l,
            for_cluster: c,
            for_local: l,
        };
        ServicePort {
            key: ServicePortKey::new(ns, "svc", "", Protocol::Tcp),
            cluster_ips: RVec::new(),
            port: 80,
            node_port,
            external_ips: RVec::new(),
            load_balancer_ingress: RVec::new(),
            load_balancer_source_ranges: RVec::new(),
            session_affinity: SessionAffinity::default(),
            internal_traffic_policy: itp,
            external_traffic_policy: etp,
            health_check_node_port: 0,
            ipvs_scheduler: RString::new(),
            endpoints: vec![ep(1, true, false), ep(2, true, true)].into(),
        }
    }

    #[test]
    fn policies_pick_endpoint_lists() {
        use TrafficPolicy::*;
        let p = port("a", Local, Cluster, 30000);
        assert_eq!(p.internal_endpoints().count(), 1);
        assert_eq!(p.external_endpoints().count(), 2);
        let p = port("a", Cluster, Local, 30000);
        assert_eq!(p.internal_endpoints().count(), 2);
        assert_eq!(p.external_endpoints().count(), 1);
        // externalTrafficPolicy means nothing for a service nobody outside can reach.
        let p = port("a", Cluster, Local, 0);
        assert!(!p.external_policy_local());
    }

    #[test]
    fn family_view_follows_upstreams_per_family_decisions() {
        use TrafficPolicy::*;
        // internalTrafficPolicy Local, not reachable from outside: only local endpoints, and a
        // port whose only endpoint is remote still "has endpoints" (DROP, not REJECT).
        let mut p = port("a", Local, Cluster, 0);
        let v = p.family_view(IpFamily::V4);
        assert!(v.cluster_endpoints.is_empty() && v.local_endpoints.len() == 1);
        assert!(v.internal_local && !v.externally_accessible && v.has_endpoints);
        p.endpoints.retain(|e| !e.is_local);
        assert!(p.family_view(IpFamily::V4).local_endpoints.is_empty());
        assert!(p.family_view(IpFamily::V4).has_endpoints);
        // externalTrafficPolicy Local keeps the cluster endpoints for the short-circuit.
        let etp = port("a", Cluster, Local, 30000);
        let v = etp.family_view(IpFamily::V4);
        assert!(v.external_local && v.cluster_endpoints.len() == 2 && v.local_endpoints.len() == 1);
        // Another family sees none of these endpoints, and an ipMode Proxy LB IP is not served.
        let mut p = port("a", Cluster, Cluster, 0);
        p.load_balancer_ingress.push(LoadBalancerIngress {
            ip: std::net::Ipv4Addr::new(192, 0, 2, 1).into(),
            ip_mode: IpMode::Proxy,
        });
        let v = p.family_view(IpFamily::V4);
        assert!(v.lb_ips.is_empty() && !v.externally_accessible);
        let v6 = p.family_view(IpFamily::V6);
        assert!(v6.cluster_endpoints.is_empty() && !v6.has_endpoints);
    }

    #[test]
    fn find_uses_key_order() {
        let mut state = ProxyState::default();
        for ns in ["a", "b", "c"] {
            state
                .services
                .push(port(ns, TrafficPolicy::Cluster, TrafficPolicy::Cluster, 0));
        }
        let key = ServicePortKey::new("b", "svc", "", Protocol::Tcp);
        assert_eq!(state.find(&key).unwrap().key, key);
        assert!(state
            .find(&ServicePortKey::new("b", "svc", "", Protocol::Udp))
            .is_none());
        assert_eq!(state.endpoint_count(), 6);
    }
}
