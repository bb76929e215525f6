//! What one case is made of: steps (a service set-up and the probes sent under it), the probes'
//! senders, targets and expectations, and what a dataplane must offer for the case to apply.

use super::service::{Addresses, ServiceSpec, ServiceType};
use crate::lab::{Place, Plan};
use kproxy_plugin_api::{Capabilities, Cidr, IpFamily, Protocol};
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// Who sends a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// A lab pod (local or remote). When the pod is the service's own endpoint, this is hairpin
    /// traffic.
    Pod(String),
    /// The node kproxy runs on, from its own address.
    Node,
    /// The node, from its loopback address (to a localhost node port).
    NodeLocalhost,
    /// The external client, outside the cluster.
    External,
    /// The external client's second address, which source ranges leave out.
    Blocked,
}

impl Sender {
    /// A pod sender.
    pub fn pod(name: &str) -> Sender {
        Sender::Pod(name.into())
    }

    /// The lab namespace the probe is sent from.
    pub fn place(&self) -> Place {
        match self {
            Sender::Pod(p) => Place::Pod(p.clone()),
            Sender::Node | Sender::NodeLocalhost => Place::Node,
            Sender::External | Sender::Blocked => Place::External,
        }
    }

    /// The source address to bind, when the kernel's choice is not the one meant.
    pub fn bind(&self, plan: &Plan, family: IpFamily) -> Option<IpAddr> {
        match self {
            Sender::Blocked => Some(plan.blocked_client.get(family)),
            Sender::NodeLocalhost => Some(loopback(family)),
            _ => None,
        }
    }

    /// The addresses that count as "the client's own" when a server reports its source (for the
    /// node, any of its addresses, since the kernel picks by route).
    pub fn own_addresses(&self, plan: &Plan, family: IpFamily) -> Vec<IpAddr> {
        match self {
            Sender::Pod(p) => plan
                .pod(p)
                .map(|p| vec![p.ip.get(family)])
                .unwrap_or_default(),
            Sender::Node => plan.node_addresses(),
            Sender::NodeLocalhost => {
                let mut all = plan.node_addresses();
                all.push(loopback(family));
                all
            }
            Sender::External => vec![plan.external_client.get(family)],
            Sender::Blocked => vec![plan.blocked_client.get(family)],
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sender::Pod(p) => write!(f, "pod {p}"),
            Sender::Node => write!(f, "node"),
            Sender::NodeLocalhost => write!(f, "node localhost"),
            Sender::External => write!(f, "external client"),
            Sender::Blocked => write!(f, "blocked external client"),
        }
    }
}

fn loopback(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => Ipv4Addr::LOCALHOST.into(),
        IpFamily::V6 => Ipv6Addr::LOCALHOST.into(),
    }
}

/// Which address of the node a node-port probe goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAddr {
    /// The node's underlay address (InternalIP).
    Underlay,
    /// The node's address on the external clients' link (ExternalIP).
    ExternalSide,
    /// `127.0.0.1` / `::1` (from the node itself).
    Localhost,
}

/// Where a probe goes, relative to the case's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The cluster IP on the service port.
    ClusterIp,
    /// The cluster IP on a port the service does not have.
    ClusterIpWrongPort,
    /// The cluster IP on the service port, with the other protocol (UDP for TCP and back).
    ClusterIpWrongProtocol,
    /// The cluster IP on an explicit port (e.g. a port the service had before a change).
    ClusterIpPort(u16),
    /// An address inside the service CIDR that no service has.
    UnallocatedServiceIp,
    /// The node port on one of the node's addresses.
    NodePort(NodeAddr),
    /// The external IP on the service port.
    ExternalIp,
    /// The load-balancer IP on the service port.
    LoadBalancerIp,
    /// The health-check node port (HTTP) on one of the node's addresses.
    HealthCheckNodePort(NodeAddr),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::ClusterIp => write!(f, "cluster IP"),
            Target::ClusterIpWrongPort => write!(f, "cluster IP, wrong port"),
            Target::ClusterIpWrongProtocol => write!(f, "cluster IP, wrong protocol"),
            Target::ClusterIpPort(p) => write!(f, "cluster IP port {p}"),
            Target::UnallocatedServiceIp => write!(f, "unallocated service-CIDR address"),
            Target::NodePort(a) => write!(f, "node port on {a:?}"),
            Target::ExternalIp => write!(f, "external IP"),
            Target::LoadBalancerIp => write!(f, "load-balancer IP"),
            Target::HealthCheckNodePort(a) => write!(f, "health-check node port on {a:?}"),
        }
    }
}

/// Which source address the answering server must have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's own address: not masqueraded.
    Client,
    /// One of the node's addresses: masqueraded.
    Node,
    /// Not checked.
    Any,
}

/// What must happen to a probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Every request is answered, only by `pods`; with `all`, each of them answers at least
    /// once. The server's port must be the service port's target port.
    Answer {
        /// The endpoints that may answer.
        pods: Vec<String>,
        /// Whether every one of them must be seen.
        all: bool,
        /// The source the servers must see.
        source: Source,
    },
    /// Every request is answered by the same pod, one of `pods` (ClientIP affinity).
    Sticky {
        /// The endpoints that may answer.
        pods: Vec<String>,
    },
    /// Affinity sticks within a round and is forgotten after the timeout: `rounds` rounds of
    /// three requests, each round one pod, waiting timeout + 1 s between rounds; more than one
    /// pod over all rounds.
    AffinityExpires {
        /// The endpoints that may answer.
        pods: Vec<String>,
        /// How many rounds.
        rounds: usize,
        /// The service's affinity timeout in seconds.
        timeout_seconds: u32,
    },
    /// Even spreading: every pod gets between `min_percent` and `max_percent` of all requests,
    /// every request is answered.
    Spread {
        /// The endpoints.
        pods: Vec<String>,
        /// The lowest share a pod may get.
        min_percent: f64,
        /// The highest share a pod may get.
        max_percent: f64,
    },
    /// Rejected: `ECONNREFUSED` (TCP reset or ICMP port unreachable).
    Refused,
    /// Dropped: no answer within the timeout (or dropped on the sender's own way out).
    Dropped,
    /// Not handled by the dataplane: no lab server answers (refused, dropped or unreachable —
    /// whatever the lab's routing does with an address nobody programs).
    NotServed,
    /// An HTTP server answers with this status (health-check node ports).
    HttpStatus(u16),
}

impl Expect {
    /// An answer from any of `pods`, each seen at least once, with the given source.
    pub fn all_of(pods: &[&str], source: Source) -> Expect {
        Expect::Answer {
            pods: pods.iter().map(|p| p.to_string()).collect(),
            all: true,
            source,
        }
    }
    /// An answer from exactly one pod.
    pub fn only(pod: &str, source: Source) -> Expect {
        Expect::all_of(&[pod], source)
    }
    /// How many requests a probe sends by default for this expectation: enough that a pod
    /// that should answer but never does is noticed (a missed pod out of three after 36 tries
    /// has a chance of about 10⁻⁶), few for the slow outcomes.
    pub fn default_tries(&self) -> usize {
        match self {
            Expect::Answer { pods, .. } => (12 * pods.len()).max(10),
            Expect::Sticky { .. } => 20,
            Expect::Spread { .. } => 1000,
            Expect::AffinityExpires { rounds, .. } => rounds * 3,
            Expect::Refused => 2,
            Expect::Dropped | Expect::NotServed | Expect::HttpStatus(_) => 1,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Answer { pods, all, source } => write!(
                f,
                "answers {} {}, source {}",
                if *all { "from each of" } else { "only from" },
                pods.join(" "),
                match source {
                    Source::Client => "= client (not masqueraded)",
                    Source::Node => "= a node address (masqueraded)",
                    Source::Any => "not checked",
                }
            ),
            Expect::Sticky { pods } => write!(f, "every answer from one pod of {}", pods.join(" ")),
            Expect::AffinityExpires { pods, rounds, timeout_seconds } => write!(
                f,
                "sticky per round, another pod of {} after the {timeout_seconds} s timeout within {rounds} rounds",
                pods.join(" ")
            ),
            Expect::Spread { pods, min_percent, max_percent } => write!(
                f,
                "every request answered, each of {} gets {min_percent}–{max_percent} %",
                pods.join(" ")
            ),
            Expect::Refused => write!(f, "refused (REJECT)"),
            Expect::Dropped => write!(f, "dropped (DROP)"),
            Expect::NotServed => write!(f, "not served by any endpoint"),
            Expect::HttpStatus(s) => write!(f, "HTTP {s}"),
        }
    }
}

/// A dataplane's documented difference from the table's (upstream nftables) expectation.
#[derive(Debug, Clone, PartialEq)]
pub struct Exception {
    /// The dataplane's name (`ServiceDriver::dataplane`).
    pub dataplane: &'static str,
    /// What it does instead.
    pub expect: Expect,
    /// Why, in one line (shown in reports).
    pub why: &'static str,
}

/// One probe: requests from a sender to a target, and what must happen.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Who sends.
    pub sender: Sender,
    /// Where to.
    pub target: Target,
    /// The address family.
    pub family: IpFamily,
    /// Which of the service's ports (index into [`ServiceSpec::ports`]).
    pub port: usize,
    /// How many requests.
    pub tries: usize,
    /// A fixed source port (the slot's), so every request reuses one conntrack entry.
    pub fixed_source_port: bool,
    /// What must happen.
    pub expect: Expect,
    /// Documented differences per dataplane.
    pub exceptions: Vec<Exception>,
}

impl Probe {
    /// A probe on the service's first port with the expectation's default number of tries.
    pub fn new(sender: Sender, target: Target, family: IpFamily, expect: Expect) -> Probe {
        Probe {
            sender,
            target,
            family,
            port: 0,
            tries: expect.default_tries(),
            fixed_source_port: false,
            expect,
            exceptions: Vec::new(),
        }
    }
    /// On the service's port number `index`.
    pub fn port(mut self, index: usize) -> Probe {
        self.port = index;
        self
    }
    /// With a fixed source port.
    pub fn fixed_source_port(mut self) -> Probe {
        self.fixed_source_port = true;
        self
    }
    /// With a documented exception for `dataplane`.
    pub fn except(mut self, dataplane: &'static str, expect: Expect, why: &'static str) -> Probe {
        self.exceptions.push(Exception {
            dataplane,
            expect,
            why,
        });
        self
    }
    /// The expectation for `dataplane` (its exception, or the table's).
    pub fn expectation_for(&self, dataplane: &str) -> (&Expect, Option<&'static str>) {
        self.exceptions
            .iter()
            .find(|e| e.dataplane == dataplane)
            .map_or((&self.expect, None), |e| (&e.expect, Some(e.why)))
    }

    /// The destination and protocol, for a service set-up in a slot.
    pub fn destination(
        &self,
        plan: &Plan,
        service: &ServiceSpec,
        slot: u8,
    ) -> (SocketAddr, Protocol) {
        let a = Addresses::of(slot);
        let port = &service.ports[self.port];
        let node = |n: NodeAddr| match n {
            NodeAddr::Underlay => plan.node_underlay.get(self.family),
            NodeAddr::ExternalSide => plan.node_external.get(self.family),
            NodeAddr::Localhost => loopback(self.family),
        };
        let (ip, p, proto) = match self.target {
            Target::ClusterIp => (a.cluster_ip(self.family), port.port, port.protocol),
            Target::ClusterIpWrongPort => {
                let unused = (1..u16::MAX)
                    .map(|d| port.port.wrapping_add(d))
                    .find(|p| *p != 0 && service.ports.iter().all(|s| s.port != *p))
                    .expect("a free port exists");
                (a.cluster_ip(self.family), unused, port.protocol)
            }
            Target::ClusterIpWrongProtocol => {
                let other = match port.protocol {
                    Protocol::Tcp => Protocol::Udp,
                    Protocol::Udp | Protocol::Sctp => Protocol::Tcp,
                };
                (a.cluster_ip(self.family), port.port, other)
            }
            Target::ClusterIpPort(p) => (a.cluster_ip(self.family), p, port.protocol),
            Target::UnallocatedServiceIp => (
                Addresses::unallocated(self.family),
                port.port,
                port.protocol,
            ),
            Target::NodePort(n) => (node(n), a.node_port(self.port), port.protocol),
            Target::ExternalIp => (a.external_ip(self.family), port.port, port.protocol),
            Target::LoadBalancerIp => (a.load_balancer_ip(self.family), port.port, port.protocol),
            Target::HealthCheckNodePort(n) => (node(n), a.health_check_node_port(), Protocol::Tcp),
        };
        (SocketAddr::new(ip, p), proto)
    }
}

/// One service set-up and the probes sent under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// What this step changes, for reports.
    pub what: &'static str,
    /// The service as it is in this step (the driver is given exactly its objects).
    pub service: ServiceSpec,
    /// The probes.
    pub probes: Vec<Probe>,
}

/// Daemon settings a case needs other than the lab's defaults
/// ([`Plan::proxy_settings`](crate::lab::Plan::proxy_settings)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigOverrides {
    /// `masqueradeAll`.
    pub masquerade_all: bool,
    /// `nodePortAddresses` (empty: every node address).
    pub node_port_addresses: Vec<Cidr>,
}

impl ConfigOverrides {
    /// Whether these are the lab's defaults.
    pub fn is_default(&self) -> bool {
        *self == ConfigOverrides::default()
    }
}

/// One case of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// A unique name, `area/what/family`.
    pub name: String,
    /// The slot its addresses come from (unique per case).
    pub slot: u8,
    /// Daemon settings other than the defaults.
    pub config: ConfigOverrides,
    /// Needs the daemon's health-check servers (not only a plugin).
    pub needs_health_server: bool,
    /// Capabilities needed beyond those the steps imply (see [`Case::required`]).
    pub extra_capabilities: Capabilities,
    /// The steps, applied in order.
    pub steps: Vec<Step>,
}

impl Case {
    /// Every capability a dataplane must claim for the case to apply: the families and
    /// protocols of its probes, the kinds of address they target, and the service features its
    /// set-ups use.
    pub fn required(&self) -> Capabilities {
        let mut caps = self.extra_capabilities;
        for step in &self.steps {
            let s = &step.service;
            for f in &s.families {
                caps = caps | family_cap(*f);
            }
            for p in &s.ports {
                caps = caps | protocol_cap(p.protocol);
            }
            caps = caps | Capabilities::CLUSTER_IP;
            if s.kind != ServiceType::ClusterIp {
                caps = caps | Capabilities::NODE_PORT;
            }
            if s.kind == ServiceType::LoadBalancer {
                caps = caps | Capabilities::LOAD_BALANCER;
            }
            if s.external_ips {
                caps = caps | Capabilities::EXTERNAL_IP;
            }
            if s.source_range_client_only {
                caps = caps | Capabilities::SOURCE_RANGES;
            }
            if s.external_local && s.externally_accessible() {
                caps = caps | Capabilities::EXTERNAL_TRAFFIC_LOCAL;
            }
            if s.internal_local {
                caps = caps | Capabilities::INTERNAL_TRAFFIC_LOCAL;
            }
            if s.affinity_timeout.is_some() {
                caps = caps | Capabilities::SESSION_AFFINITY;
            }
            for p in &step.probes {
                caps = caps | family_cap(p.family);
            }
        }
        caps
    }

    /// Whether a probe sends SCTP (needs a kernel with SCTP sockets: the qemu guest here).
    pub fn needs_sctp(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.service.ports.iter().any(|p| p.protocol == Protocol::Sctp))
    }
}

fn family_cap(f: IpFamily) -> Capabilities {
    match f {
        IpFamily::V4 => Capabilities::IPV4,
        IpFamily::V6 => Capabilities::IPV6,
    }
}

fn protocol_cap(p: Protocol) -> Capabilities {
    match p {
        Protocol::Tcp => Capabilities::TCP,
        Protocol::Udp => Capabilities::UDP,
        Protocol::Sctp => Capabilities::SCTP,
    }
}
