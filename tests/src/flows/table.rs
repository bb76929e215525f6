//! The cases. Expectations follow upstream kube-proxy's nftables mode; documented differences of
//! other dataplanes are exceptions on the probes.
//!
//! Pods of the lab ([`super::lab_config`]): `pod-a`, `pod-b`, `pod-c`, `pod-d` on the node,
//! `pod-r` on the remote node; `pod-d` is never an endpoint, it is the client where all three
//! others serve. Most cases are generated once per family.

use super::case::{Case, ConfigOverrides, Expect, NodeAddr, Probe, Sender, Source, Step, Target};
use super::service::{EndpointSpec as Ep, PortSpec, ServiceSpec, ServiceType};
use kproxy_plugin_api::{Capabilities, IpFamily, Protocol};

const A: &str = "pod-a";
const B: &str = "pod-b";
const C: &str = "pod-c";
const D: &str = "pod-d";
const R: &str = "pod-r";

/// iptables leaves traffic to a cluster IP on a port (or protocol) it does not serve untouched:
/// it is routed on like any packet (out of the node's default route, where the lab drops it).
const IPTABLES_WRONG_PORT: &str =
    "iptables mode leaves unknown ports of a cluster IP untouched (upstream behaviour)";

fn tcp() -> PortSpec {
    PortSpec {
        name: "http",
        protocol: Protocol::Tcp,
        port: 80,
        target_port: 8080,
    }
}

fn udp() -> PortSpec {
    PortSpec {
        name: "dns",
        protocol: Protocol::Udp,
        port: 53,
        target_port: 9090,
    }
}

fn fam_name(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    }
}

fn pod(p: &str) -> Sender {
    Sender::pod(p)
}

struct Table {
    cases: Vec<Case>,
}

impl Table {
    fn next_slot(&self) -> u8 {
        u8::try_from(self.cases.len() + 1).expect("at most 250 cases")
    }

    fn add(&mut self, name: String, steps: Vec<Step>) -> &mut Case {
        assert!(
            self.cases.iter().all(|c| c.name != name),
            "duplicate case {name}"
        );
        let slot = self.next_slot();
        self.cases.push(Case {
            name,
            slot,
            config: ConfigOverrides::default(),
            needs_health_server: false,
            extra_capabilities: Capabilities::default(),
            steps,
        });
        self.cases.last_mut().expect("just pushed")
    }
}

fn step(what: &'static str, service: ServiceSpec, probes: Vec<Probe>) -> Step {
    Step {
        what,
        service,
        probes,
    }
}

/// Every case of the packet-flow table.
pub fn table() -> Vec<Case> {
    let mut t = Table { cases: Vec::new() };
    for f in [IpFamily::V4, IpFamily::V6] {
        cluster_ip(&mut t, f);
        no_endpoints(&mut t, f);
        node_ports(&mut t, f);
        external_and_load_balancer(&mut t, f);
        traffic_policies(&mut t, f);
        endpoint_conditions(&mut t, f);
        affinity(&mut t, f);
        changes(&mut t, f);
        settings(&mut t, f);
        spreading(&mut t, f);
        sctp(&mut t, f);
    }
    dual_stack(&mut t);
    topology(&mut t);
    affinity_timeout(&mut t);
    t.cases
}

fn cluster_ip(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let svc = ServiceSpec::new(
        "web",
        ServiceType::ClusterIp,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A), Ep::ready(B), Ep::ready(R)],
    );
    let all = [A, B, R];
    let mut probes = Vec::new();
    for port in [0, 1] {
        probes.extend([
            // Pods are inside the cluster CIDR: not masqueraded; remote endpoints are reached.
            Probe::new(
                pod(C),
                Target::ClusterIp,
                f,
                Expect::all_of(&all, Source::Client),
            )
            .port(port),
            // The node is outside it: masqueraded.
            Probe::new(
                Sender::Node,
                Target::ClusterIp,
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
            // So is an external client whose router sends cluster-IP traffic to the node.
            Probe::new(
                Sender::External,
                Target::ClusterIp,
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
        ]);
    }
    t.add(
        format!("cluster-ip/tcp-and-udp/{n}"),
        vec![step(
            "two ports, local and remote endpoints",
            svc.clone(),
            probes,
        )],
    );

    t.add(
        format!("cluster-ip/wrong-port/{n}"),
        vec![step(
            "a port the service lacks",
            svc.clone(),
            vec![
                Probe::new(pod(C), Target::ClusterIpWrongPort, f, Expect::Refused).except(
                    "iptables",
                    Expect::Dropped,
                    IPTABLES_WRONG_PORT,
                ),
                Probe::new(Sender::Node, Target::ClusterIpWrongPort, f, Expect::Refused).except(
                    "iptables",
                    Expect::Dropped,
                    IPTABLES_WRONG_PORT,
                ),
            ],
        )],
    );

    let tcp_only = ServiceSpec::new(
        "web",
        ServiceType::ClusterIp,
        f,
        vec![tcp()],
        vec![Ep::ready(A), Ep::ready(B)],
    );
    t.add(
        format!("cluster-ip/wrong-protocol/{n}"),
        vec![step(
            "UDP to a TCP-only port",
            tcp_only.clone(),
            vec![
                Probe::new(pod(C), Target::ClusterIpWrongProtocol, f, Expect::Refused).except(
                    "iptables",
                    Expect::Dropped,
                    IPTABLES_WRONG_PORT,
                ),
                Probe::new(
                    pod(C),
                    Target::ClusterIp,
                    f,
                    Expect::all_of(&[A, B], Source::Client),
                ),
            ],
        )],
    );

    t.add(
        format!("service-cidr/unallocated/{n}"),
        vec![step(
            "an address of the service CIDR no service has",
            tcp_only.clone(),
            vec![
                Probe::new(pod(C), Target::UnallocatedServiceIp, f, Expect::Dropped),
                Probe::new(
                    Sender::Node,
                    Target::UnallocatedServiceIp,
                    f,
                    Expect::Dropped,
                ),
                Probe::new(
                    Sender::External,
                    Target::UnallocatedServiceIp,
                    f,
                    Expect::Dropped,
                ),
            ],
        )],
    );

    let hairpin = ServiceSpec::new(
        "self",
        ServiceType::ClusterIp,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A)],
    );
    t.add(
        format!("cluster-ip/hairpin/{n}"),
        vec![step(
            "the endpoint calls its own service",
            hairpin,
            vec![
                Probe::new(pod(A), Target::ClusterIp, f, Expect::only(A, Source::Node)),
                Probe::new(pod(A), Target::ClusterIp, f, Expect::only(A, Source::Node)).port(1),
                // Another pod is not masqueraded.
                Probe::new(
                    pod(B),
                    Target::ClusterIp,
                    f,
                    Expect::only(A, Source::Client),
                ),
            ],
        )],
    );
}

fn no_endpoints(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let mut svc = ServiceSpec::new(
        "empty",
        ServiceType::LoadBalancer,
        f,
        vec![tcp(), udp()],
        vec![],
    );
    svc.external_ips = true;
    let mut probes = Vec::new();
    for port in [0, 1] {
        probes.extend([
            Probe::new(pod(C), Target::ClusterIp, f, Expect::Refused).port(port),
            Probe::new(Sender::Node, Target::ClusterIp, f, Expect::Refused).port(port),
            Probe::new(
                Sender::External,
                Target::NodePort(NodeAddr::Underlay),
                f,
                Expect::Refused,
            )
            .port(port),
            Probe::new(Sender::External, Target::ExternalIp, f, Expect::Refused).port(port),
            Probe::new(Sender::External, Target::LoadBalancerIp, f, Expect::Refused).port(port),
        ]);
    }
    t.add(
        format!("no-endpoints/reject/{n}"),
        vec![step("a service without endpoints", svc, probes)],
    );
}

fn node_ports(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let svc = ServiceSpec::new(
        "np",
        ServiceType::NodePort,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A), Ep::ready(R)],
    );
    let all = [A, R];
    let mut probes = Vec::new();
    for port in [0, 1] {
        probes.extend([
            // externalTrafficPolicy: Cluster masquerades external traffic, on every node address.
            Probe::new(
                Sender::External,
                Target::NodePort(NodeAddr::Underlay),
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
            Probe::new(
                Sender::External,
                Target::NodePort(NodeAddr::ExternalSide),
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
            Probe::new(
                pod(C),
                Target::NodePort(NodeAddr::Underlay),
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
            Probe::new(
                Sender::Node,
                Target::NodePort(NodeAddr::Underlay),
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
        ]);
    }
    let localhost = Probe::new(
        Sender::NodeLocalhost,
        Target::NodePort(NodeAddr::Localhost),
        f,
        Expect::NotServed,
    );
    probes.push(match f {
        IpFamily::V4 => localhost.except(
            "iptables",
            Expect::all_of(&all, Source::Node),
            "iptables serves IPv4 node ports on 127.0.0.1 (localhostNodePorts), masqueraded",
        ),
        // Nobody serves node ports on ::1.
        IpFamily::V6 => localhost,
    });
    t.add(
        format!("node-port/cluster-policy/{n}"),
        vec![step("node port, local and remote endpoints", svc, probes)],
    );
}

fn external_and_load_balancer(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let all = [A, R];
    let mut ext = ServiceSpec::new(
        "ext",
        ServiceType::ClusterIp,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A), Ep::ready(R)],
    );
    ext.external_ips = true;
    let mut probes = Vec::new();
    for port in [0, 1] {
        probes.extend([
            Probe::new(
                Sender::External,
                Target::ExternalIp,
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
            Probe::new(
                pod(C),
                Target::ExternalIp,
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
            Probe::new(
                Sender::Node,
                Target::ExternalIp,
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
        ]);
    }
    t.add(
        format!("external-ip/cluster-policy/{n}"),
        vec![step("external IPs", ext, probes)],
    );

    let lb = ServiceSpec::new(
        "lb",
        ServiceType::LoadBalancer,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A), Ep::ready(R)],
    );
    let mut probes = Vec::new();
    for port in [0, 1] {
        probes.extend([
            Probe::new(
                Sender::External,
                Target::LoadBalancerIp,
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
            Probe::new(
                pod(C),
                Target::LoadBalancerIp,
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
            Probe::new(
                Sender::Node,
                Target::LoadBalancerIp,
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
            Probe::new(
                Sender::External,
                Target::NodePort(NodeAddr::Underlay),
                f,
                Expect::all_of(&all, Source::Node),
            )
            .port(port),
        ]);
    }
    t.add(
        format!("load-balancer/cluster-policy/{n}"),
        vec![step("LB IP (ipMode VIP)", lb.clone(), probes)],
    );

    let mut ranged = lb.clone();
    ranged.source_range_client_only = true;
    t.add(
        format!("load-balancer/source-ranges/{n}"),
        vec![step(
            "loadBalancerSourceRanges holds only the external client",
            ranged,
            vec![
                Probe::new(
                    Sender::External,
                    Target::LoadBalancerIp,
                    f,
                    Expect::all_of(&all, Source::Node),
                ),
                Probe::new(Sender::Blocked, Target::LoadBalancerIp, f, Expect::Dropped),
                Probe::new(Sender::Blocked, Target::LoadBalancerIp, f, Expect::Dropped).port(1),
                // Source ranges guard LB IPs only.
                Probe::new(
                    Sender::Blocked,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::all_of(&all, Source::Node),
                ),
                Probe::new(
                    Sender::Blocked,
                    Target::ClusterIp,
                    f,
                    Expect::all_of(&all, Source::Node),
                ),
            ],
        )],
    );

    let mut proxy = lb;
    proxy.ip_mode_proxy = true;
    t.add(
        format!("load-balancer/ip-mode-proxy/{n}"),
        vec![step(
            "ipMode Proxy: the LB IP is the load balancer's business",
            proxy,
            vec![
                Probe::new(
                    Sender::External,
                    Target::LoadBalancerIp,
                    f,
                    Expect::NotServed,
                ),
                Probe::new(pod(C), Target::LoadBalancerIp, f, Expect::NotServed),
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::all_of(&all, Source::Node),
                ),
            ],
        )],
    );
}

fn traffic_policies(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let mut local = ServiceSpec::new(
        "etp",
        ServiceType::LoadBalancer,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A), Ep::ready(R)],
    );
    local.external_local = true;
    local.external_ips = true;
    let mut probes = Vec::new();
    for port in [0, 1] {
        probes.extend([
            // External traffic: only the local endpoint, client source kept.
            Probe::new(
                Sender::External,
                Target::NodePort(NodeAddr::Underlay),
                f,
                Expect::only(A, Source::Client),
            )
            .port(port),
            Probe::new(
                Sender::External,
                Target::NodePort(NodeAddr::ExternalSide),
                f,
                Expect::only(A, Source::Client),
            )
            .port(port),
            Probe::new(
                Sender::External,
                Target::LoadBalancerIp,
                f,
                Expect::only(A, Source::Client),
            )
            .port(port),
            Probe::new(
                Sender::External,
                Target::ExternalIp,
                f,
                Expect::only(A, Source::Client),
            )
            .port(port),
            // Pods and the node still reach every endpoint.
            Probe::new(
                pod(C),
                Target::ClusterIp,
                f,
                Expect::all_of(&[A, R], Source::Client),
            )
            .port(port),
            Probe::new(
                pod(C),
                Target::NodePort(NodeAddr::Underlay),
                f,
                Expect::all_of(&[A, R], Source::Client),
            )
            .port(port),
            Probe::new(
                pod(C),
                Target::LoadBalancerIp,
                f,
                Expect::all_of(&[A, R], Source::Client),
            )
            .port(port),
            Probe::new(
                Sender::Node,
                Target::NodePort(NodeAddr::Underlay),
                f,
                Expect::all_of(&[A, R], Source::Node),
            )
            .port(port),
            Probe::new(
                Sender::Node,
                Target::LoadBalancerIp,
                f,
                Expect::all_of(&[A, R], Source::Node),
            )
            .port(port),
        ]);
    }
    t.add(
        format!("external-policy-local/{n}"),
        vec![step(
            "externalTrafficPolicy Local, one local endpoint",
            local.clone(),
            probes,
        )],
    );

    let mut none_local = local.clone();
    none_local.slices = vec![vec![Ep::ready(R)]];
    t.add(
        format!("external-policy-local/no-local-endpoint/{n}"),
        vec![step(
            "externalTrafficPolicy Local, only a remote endpoint",
            none_local,
            vec![
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::Dropped,
                ),
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::Dropped,
                )
                .port(1),
                Probe::new(Sender::External, Target::LoadBalancerIp, f, Expect::Dropped),
                Probe::new(Sender::External, Target::ExternalIp, f, Expect::Dropped),
                Probe::new(
                    pod(C),
                    Target::ClusterIp,
                    f,
                    Expect::only(R, Source::Client),
                ),
                Probe::new(
                    pod(C),
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::only(R, Source::Client),
                ),
                Probe::new(
                    Sender::Node,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::only(R, Source::Node),
                ),
            ],
        )],
    );

    let mut health = local.clone();
    health.external_ips = false;
    let mut health_gone = health.clone();
    health_gone.slices = vec![vec![Ep::ready(R)]];
    let hc = |code| {
        Probe::new(
            Sender::External,
            Target::HealthCheckNodePort(NodeAddr::Underlay),
            f,
            Expect::HttpStatus(code),
        )
    };
    t.add(
        format!("external-policy-local/health-check-node-port/{n}"),
        vec![
            step("a local endpoint", health, vec![hc(200)]),
            step("no local endpoint", health_gone, vec![hc(503)]),
        ],
    )
    .needs_health_server = true;

    let mut itp = ServiceSpec::new(
        "itp",
        ServiceType::ClusterIp,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A), Ep::ready(B), Ep::ready(R)],
    );
    itp.internal_local = true;
    let mut probes = Vec::new();
    for port in [0, 1] {
        probes.extend([
            Probe::new(
                pod(C),
                Target::ClusterIp,
                f,
                Expect::all_of(&[A, B], Source::Client),
            )
            .port(port),
            Probe::new(
                Sender::Node,
                Target::ClusterIp,
                f,
                Expect::all_of(&[A, B], Source::Node),
            )
            .port(port),
        ]);
    }
    t.add(
        format!("internal-policy-local/{n}"),
        vec![step("internalTrafficPolicy Local", itp.clone(), probes)],
    );

    let mut itp_none = itp;
    itp_none.slices = vec![vec![Ep::ready(R)]];
    t.add(
        format!("internal-policy-local/no-local-endpoint/{n}"),
        vec![step(
            "internalTrafficPolicy Local, only a remote endpoint",
            itp_none,
            vec![
                Probe::new(pod(C), Target::ClusterIp, f, Expect::Dropped),
                Probe::new(pod(C), Target::ClusterIp, f, Expect::Dropped).port(1),
                Probe::new(Sender::Node, Target::ClusterIp, f, Expect::Dropped),
            ],
        )],
    );
}

fn endpoint_conditions(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let svc = |eps| ServiceSpec::new("cond", ServiceType::NodePort, f, vec![tcp(), udp()], eps);
    t.add(
        format!("endpoints/ready-preferred-over-terminating/{n}"),
        vec![step(
            "one ready, one terminating and serving",
            svc(vec![Ep::ready(A), Ep::terminating(B, true)]),
            vec![
                Probe::new(
                    pod(C),
                    Target::ClusterIp,
                    f,
                    Expect::only(A, Source::Client),
                ),
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::only(A, Source::Node),
                ),
            ],
        )],
    );
    t.add(
        format!("endpoints/terminating-fallback/{n}"),
        vec![step(
            "no ready endpoint, two terminating and serving",
            svc(vec![Ep::terminating(A, true), Ep::terminating(B, true)]),
            vec![
                Probe::new(
                    pod(C),
                    Target::ClusterIp,
                    f,
                    Expect::all_of(&[A, B], Source::Client),
                ),
                Probe::new(
                    pod(C),
                    Target::ClusterIp,
                    f,
                    Expect::all_of(&[A, B], Source::Client),
                )
                .port(1),
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::all_of(&[A, B], Source::Node),
                ),
            ],
        )],
    );
    t.add(
        format!("endpoints/terminating-not-serving/{n}"),
        vec![step(
            "only a terminating endpoint that no longer serves",
            svc(vec![Ep::terminating(A, false)]),
            vec![
                Probe::new(pod(C), Target::ClusterIp, f, Expect::Refused),
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::Refused,
                ),
            ],
        )],
    );
    t.add(
        format!("endpoints/not-ready/{n}"),
        vec![step(
            "one ready, one not ready",
            svc(vec![Ep::ready(A), Ep::not_ready(B)]),
            vec![Probe::new(
                pod(C),
                Target::ClusterIp,
                f,
                Expect::only(A, Source::Client),
            )],
        )],
    );
}

fn affinity(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let mut svc = ServiceSpec::new(
        "sticky",
        ServiceType::NodePort,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A), Ep::ready(B), Ep::ready(C)],
    );
    svc.affinity_timeout = Some(10800);
    let abc = vec![A.to_string(), B.to_string(), C.to_string()];
    let sticky = || Expect::Sticky { pods: abc.clone() };
    t.add(
        format!("affinity/client-ip/{n}"),
        vec![step(
            "ClientIP affinity over three endpoints",
            svc,
            vec![
                Probe::new(pod(D), Target::ClusterIp, f, sticky()),
                Probe::new(pod(D), Target::ClusterIp, f, sticky()).port(1),
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    sticky(),
                ),
                Probe::new(Sender::Node, Target::ClusterIp, f, sticky()),
            ],
        )],
    );
}

fn affinity_timeout(t: &mut Table) {
    let f = IpFamily::V4;
    let mut svc = ServiceSpec::new(
        "sticky",
        ServiceType::ClusterIp,
        f,
        vec![tcp()],
        vec![Ep::ready(A), Ep::ready(B), Ep::ready(C)],
    );
    svc.affinity_timeout = Some(1);
    t.add(
        "affinity/timeout/ipv4".into(),
        vec![step(
            "ClientIP affinity with a one-second timeout",
            svc,
            vec![Probe::new(
                pod(D),
                Target::ClusterIp,
                f,
                Expect::AffinityExpires {
                    pods: vec![A.into(), B.into(), C.into()],
                    rounds: 8,
                    timeout_seconds: 1,
                },
            )],
        )],
    );
}

fn changes(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let mut two = ServiceSpec::new(
        "sliced",
        ServiceType::ClusterIp,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A), Ep::ready(B)],
    );
    two.slices.push(vec![Ep::ready(R)]);
    let mut one = two.clone();
    one.slices.truncate(1);
    t.add(
        format!("changes/slice-deleted/{n}"),
        vec![
            step(
                "two slices",
                two,
                vec![Probe::new(
                    pod(C),
                    Target::ClusterIp,
                    f,
                    Expect::all_of(&[A, B, R], Source::Client),
                )],
            ),
            step(
                "the second slice deleted",
                one,
                vec![
                    Probe::new(
                        pod(C),
                        Target::ClusterIp,
                        f,
                        Expect::all_of(&[A, B], Source::Client),
                    ),
                    Probe::new(
                        pod(C),
                        Target::ClusterIp,
                        f,
                        Expect::all_of(&[A, B], Source::Client),
                    )
                    .port(1),
                ],
            ),
        ],
    );

    let before = ServiceSpec::new(
        "moving",
        ServiceType::ClusterIp,
        f,
        vec![tcp()],
        vec![Ep::ready(A), Ep::ready(B)],
    );
    let mut after = before.clone();
    after.ports[0].port = 81;
    after.ports[0].target_port = 9090;
    t.add(
        format!("changes/port-changed-live/{n}"),
        vec![
            step(
                "port 80 to 8080",
                before,
                vec![Probe::new(
                    pod(C),
                    Target::ClusterIp,
                    f,
                    Expect::all_of(&[A, B], Source::Client),
                )],
            ),
            step(
                "port 81 to 9090",
                after,
                vec![
                    Probe::new(
                        pod(C),
                        Target::ClusterIp,
                        f,
                        Expect::all_of(&[A, B], Source::Client),
                    ),
                    Probe::new(pod(C), Target::ClusterIpPort(80), f, Expect::Refused).except(
                        "iptables",
                        Expect::Dropped,
                        IPTABLES_WRONG_PORT,
                    ),
                ],
            ),
        ],
    );

    // Stale UDP conntrack: the client keeps its source port, so without cleanup its flow would
    // stay pinned to the old (still running) endpoint.
    let only = |p: &str| {
        ServiceSpec::new(
            "dns",
            ServiceType::ClusterIp,
            f,
            vec![udp()],
            vec![Ep::ready(p)],
        )
    };
    let same_port = |p: &str| {
        Probe::new(
            pod(C),
            Target::ClusterIp,
            f,
            Expect::only(p, Source::Client),
        )
        .fixed_source_port()
    };
    t.add(
        format!("changes/udp-endpoint-replaced/{n}"),
        vec![
            step("UDP endpoint pod-a", only(A), vec![same_port(A)]),
            step("pod-a replaced by pod-b", only(B), vec![same_port(B)]),
        ],
    );
    let empty = ServiceSpec::new("dns", ServiceType::ClusterIp, f, vec![udp()], vec![]);
    t.add(
        format!("changes/udp-none-to-some/{n}"),
        vec![
            step(
                "UDP service without endpoints",
                empty,
                vec![Probe::new(pod(C), Target::ClusterIp, f, Expect::Refused).fixed_source_port()],
            ),
            step("an endpoint appears", only(A), vec![same_port(A)]),
        ],
    );
}

fn settings(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let svc = ServiceSpec::new(
        "masq",
        ServiceType::NodePort,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A)],
    );
    t.add(
        format!("settings/masquerade-all/{n}"),
        vec![step(
            "masqueradeAll",
            svc.clone(),
            vec![
                Probe::new(pod(C), Target::ClusterIp, f, Expect::only(A, Source::Node)),
                Probe::new(pod(C), Target::ClusterIp, f, Expect::only(A, Source::Node)).port(1),
            ],
        )],
    )
    .config
    .masquerade_all = true;

    let underlay = match f {
        IpFamily::V4 => "10.10.0.0/24",
        IpFamily::V6 => "fd00:10:10::/64",
    };
    t.add(
        format!("settings/node-port-addresses/{n}"),
        vec![step(
            "nodePortAddresses = the underlay only",
            svc,
            vec![
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::only(A, Source::Node),
                ),
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::ExternalSide),
                    f,
                    Expect::NotServed,
                ),
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::ExternalSide),
                    f,
                    Expect::NotServed,
                )
                .port(1),
            ],
        )],
    )
    .config
    .node_port_addresses = vec![underlay.parse().expect("constant CIDR")];
}

fn spreading(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let svc = ServiceSpec::new(
        "spread",
        ServiceType::ClusterIp,
        f,
        vec![tcp(), udp()],
        vec![Ep::ready(A), Ep::ready(B), Ep::ready(C)],
    );
    let even = || Expect::Spread {
        pods: vec![A.into(), B.into(), C.into()],
        min_percent: 25.0,
        max_percent: 42.0,
    };
    t.add(
        format!("spreading/1000-over-3/{n}"),
        vec![step(
            "three endpoints",
            svc,
            vec![
                Probe::new(pod(D), Target::ClusterIp, f, even()),
                Probe::new(pod(D), Target::ClusterIp, f, even()).port(1),
            ],
        )],
    );
}

fn sctp(t: &mut Table, f: IpFamily) {
    let n = fam_name(f);
    let port = PortSpec {
        name: "sctp",
        protocol: Protocol::Sctp,
        port: 80,
        target_port: 8080,
    };
    let svc = ServiceSpec::new(
        "sctp",
        ServiceType::NodePort,
        f,
        vec![port],
        vec![Ep::ready(A), Ep::ready(R)],
    );
    t.add(
        format!("sctp/cluster-ip-and-node-port/{n}"),
        vec![step(
            "SCTP service",
            svc,
            vec![
                Probe::new(
                    pod(C),
                    Target::ClusterIp,
                    f,
                    Expect::all_of(&[A, R], Source::Client),
                ),
                Probe::new(
                    Sender::External,
                    Target::NodePort(NodeAddr::Underlay),
                    f,
                    Expect::all_of(&[A, R], Source::Node),
                ),
            ],
        )],
    );
}

fn dual_stack(t: &mut Table) {
    let mut svc = ServiceSpec::new(
        "dual",
        ServiceType::NodePort,
        IpFamily::V4,
        vec![tcp(), udp()],
        vec![Ep::ready(A), Ep::ready(R)],
    );
    svc.families = vec![IpFamily::V4, IpFamily::V6];
    let mut probes = Vec::new();
    for f in [IpFamily::V4, IpFamily::V6] {
        probes.extend([
            Probe::new(
                pod(C),
                Target::ClusterIp,
                f,
                Expect::all_of(&[A, R], Source::Client),
            ),
            Probe::new(
                pod(C),
                Target::ClusterIp,
                f,
                Expect::all_of(&[A, R], Source::Client),
            )
            .port(1),
            Probe::new(
                Sender::External,
                Target::NodePort(NodeAddr::Underlay),
                f,
                Expect::all_of(&[A, R], Source::Node),
            ),
        ]);
    }
    t.add(
        "dual-stack/one-service-two-families".into(),
        vec![step("RequireDualStack", svc, probes)],
    );
}

fn topology(t: &mut Table) {
    let f = IpFamily::V4;
    let mut svc = ServiceSpec::new(
        "zoned",
        ServiceType::ClusterIp,
        f,
        vec![tcp()],
        vec![
            Ep::ready(A).hint("zone-a"),
            Ep::ready(B).hint("zone-a"),
            Ep::ready(R).hint("zone-b"),
        ],
    );
    svc.topology_auto = true;
    let mut unhinted = svc.clone();
    unhinted.slices = vec![vec![
        Ep::ready(A).hint("zone-a"),
        Ep::ready(B),
        Ep::ready(R).hint("zone-b"),
    ]];
    t.add(
        "topology/zone-hints/ipv4".into(),
        vec![
            step(
                "every endpoint hinted; this node is in zone-a",
                svc,
                vec![Probe::new(
                    pod(C),
                    Target::ClusterIp,
                    f,
                    Expect::all_of(&[A, B], Source::Client),
                )],
            ),
            step(
                "one endpoint without a hint: hints are ignored",
                unhinted,
                vec![Probe::new(
                    pod(C),
                    Target::ClusterIp,
                    f,
                    Expect::all_of(&[A, B, R], Source::Client),
                )],
            ),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::Plan;
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use std::collections::BTreeSet;

    fn plan() -> Plan {
        let c = super::super::lab_config();
        Plan::new(&c.local_pods, &c.remote_pods)
    }

    #[test]
    fn names_and_slots_are_unique() {
        let cases = table();
        let names: BTreeSet<_> = cases.iter().map(|c| c.name.clone()).collect();
        let slots: BTreeSet<_> = cases.iter().map(|c| c.slot).collect();
        assert_eq!(names.len(), cases.len());
        assert_eq!(slots.len(), cases.len());
        assert!(cases.iter().all(|c| c.slot >= 1));
    }

    #[test]
    fn every_object_is_a_valid_kubernetes_object() {
        let plan = plan();
        for case in table() {
            for step in &case.steps {
                for obj in step.service.objects(&plan, case.slot) {
                    match obj["kind"].as_str() {
                        Some("Service") => {
                            let svc: Service = serde_json::from_value(obj.clone())
                                .unwrap_or_else(|e| panic!("{}: {e}: {obj}", case.name));
                            let spec = svc.spec.unwrap();
                            assert_eq!(
                                spec.cluster_ips.unwrap().len(),
                                step.service.families.len()
                            );
                        }
                        Some("EndpointSlice") => {
                            let slice: EndpointSlice = serde_json::from_value(obj.clone())
                                .unwrap_or_else(|e| panic!("{}: {e}: {obj}", case.name));
                            assert_eq!(
                                slice.metadata.labels.unwrap()["kubernetes.io/service-name"],
                                step.service.name
                            );
                        }
                        other => panic!("{}: unexpected kind {other:?}", case.name),
                    }
                }
            }
        }
    }

    #[test]
    fn every_probe_names_a_pod_and_port_the_case_has() {
        let plan = plan();
        for case in table() {
            for step in &case.steps {
                for probe in &step.probes {
                    assert!(probe.port < step.service.ports.len(), "{}", case.name);
                    let (dst, _) = probe.destination(&plan, &step.service, case.slot);
                    assert_eq!(dst.is_ipv4(), probe.family == IpFamily::V4, "{}", case.name);
                    if let Sender::Pod(p) = &probe.sender {
                        assert!(plan.pod(p).is_some(), "{}: {p}", case.name);
                    }
                    if let Expect::Answer { pods, .. }
                    | Expect::Sticky { pods }
                    | Expect::Spread { pods, .. } = &probe.expect
                    {
                        for p in pods {
                            assert!(
                                step.service.endpoint_pods().contains(&p.as_str()),
                                "{}: {p}",
                                case.name
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_table_covers_the_issue() {
        let cases = table();
        let all_probes: Vec<(&Case, &Probe)> = cases
            .iter()
            .flat_map(|c| {
                c.steps
                    .iter()
                    .flat_map(move |s| s.probes.iter().map(move |p| (c, p)))
            })
            .collect();
        let has = |f: &dyn Fn(&Case, &Probe) -> bool| all_probes.iter().any(|(c, p)| f(c, p));
        for family in [IpFamily::V4, IpFamily::V6] {
            for target in [
                Target::ClusterIp,
                Target::ClusterIpWrongPort,
                Target::ClusterIpWrongProtocol,
                Target::UnallocatedServiceIp,
                Target::NodePort(NodeAddr::Underlay),
                Target::NodePort(NodeAddr::ExternalSide),
                Target::NodePort(NodeAddr::Localhost),
                Target::ExternalIp,
                Target::LoadBalancerIp,
            ] {
                assert!(
                    has(&|_, p| p.family == family && p.target == target),
                    "{family:?} {target}"
                );
            }
            for sender in [
                pod(A),
                Sender::Node,
                Sender::NodeLocalhost,
                Sender::External,
                Sender::Blocked,
            ] {
                assert!(
                    has(&|_, p| p.family == family && p.sender == sender),
                    "{family:?} {sender}"
                );
            }
            for expect in [Expect::Refused, Expect::Dropped, Expect::NotServed] {
                assert!(
                    has(&|_, p| p.family == family && p.expect == expect),
                    "{family:?} {expect}"
                );
            }
            assert!(has(&|_, p| p.family == family
                && matches!(&p.expect, Expect::Spread { pods, min_percent, max_percent }
                if pods.len() == 3 && *min_percent == 25.0 && *max_percent == 42.0 && p.tries == 1000)));
        }
        for cap in [
            Capabilities::EXTERNAL_TRAFFIC_LOCAL,
            Capabilities::INTERNAL_TRAFFIC_LOCAL,
            Capabilities::SESSION_AFFINITY,
            Capabilities::SOURCE_RANGES,
            Capabilities::SCTP,
            Capabilities::UDP,
        ] {
            assert!(cases.iter().any(|c| c.required().contains(cap)), "{cap:?}");
        }
        assert!(cases.iter().any(|c| c.config.masquerade_all));
        assert!(cases
            .iter()
            .any(|c| !c.config.node_port_addresses.is_empty()));
        assert!(cases
            .iter()
            .any(|c| c.steps.iter().any(|s| s.service.ip_mode_proxy)));
        assert!(cases.iter().any(|c| c.needs_health_server));
    }
}
