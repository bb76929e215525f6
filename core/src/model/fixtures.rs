//! Builders for API objects in unit tests (model and topology): short, readable cases.

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeSpec,
    NodeStatus, Service, ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig, Taint,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// A Service under construction.
#[derive(Clone)]
pub struct Svc(pub Service);

/// A ClusterIP service `ns/name` with the given cluster IPs and no ports.
pub fn svc(ns: &str, name: &str, cluster_ips: &[&str]) -> Svc {
    Svc(Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: cluster_ips.first().map(|s| s.to_string()),
            cluster_ips: Some(cluster_ips.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }),
        status: None,
    })
}

impl Svc {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.as_mut().unwrap()
    }
    /// Adds a port with a numeric target port equal to `port`.
    pub fn port(mut self, name: &str, proto: &str, port: i32) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: Some(name.into()),
                protocol: Some(proto.into()),
                port,
                ..Default::default()
            });
        self
    }
    /// Adds a port with a named target port.
    pub fn named_target(mut self, name: &str, port: i32, target: &str) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: Some(name.into()),
                protocol: Some("TCP".into()),
                port,
                target_port: Some(IntOrString::String(target.into())),
                ..Default::default()
            });
        self
    }
    /// Sets the node port of the last port.
    pub fn node_port(mut self, node_port: i32) -> Self {
        self.spec()
            .ports
            .as_mut()
            .unwrap()
            .last_mut()
            .unwrap()
            .node_port = Some(node_port);
        self
    }
    /// Sets `spec.type`.
    pub fn typ(mut self, t: &str) -> Self {
        self.spec().type_ = Some(t.into());
        self
    }
    /// Sets `internalTrafficPolicy`.
    pub fn itp(mut self, p: &str) -> Self {
        self.spec().internal_traffic_policy = Some(p.into());
        self
    }
    /// Sets `externalTrafficPolicy`.
    pub fn etp(mut self, p: &str) -> Self {
        self.spec().external_traffic_policy = Some(p.into());
        self
    }
    /// Sets `healthCheckNodePort`.
    pub fn hc_node_port(mut self, p: i32) -> Self {
        self.spec().health_check_node_port = Some(p);
        self
    }
    /// Sets `externalIPs`.
    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Sets `loadBalancerSourceRanges`.
    pub fn source_ranges(mut self, r: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges = Some(r.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Sets `trafficDistribution`.
    pub fn traffic_distribution(mut self, t: &str) -> Self {
        self.spec().traffic_distribution = Some(t.into());
        self
    }
    /// Sets ClientIP affinity with an optional timeout.
    pub fn affinity(mut self, timeout: Option<i32>) -> Self {
        self.spec().session_affinity = Some("ClientIP".into());
        self.spec().session_affinity_config = timeout.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        self
    }
    /// Adds a load-balancer ingress IP with an optional `ipMode`.
    pub fn lb_ingress(mut self, ip: &str, mode: Option<&str>) -> Self {
        let status = self.0.status.get_or_insert_with(ServiceStatus::default);
        let lb = status
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default);
        lb.ingress
            .get_or_insert_with(Vec::new)
            .push(LoadBalancerIngress {
                ip: Some(ip.into()),
                ip_mode: mode.map(str::to_string),
                ..Default::default()
            });
        self
    }
    /// Sets a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    /// Sets an annotation.
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    /// The finished object.
    pub fn build(self) -> Service {
        self.0
    }
}

/// An endpoint under construction.
#[derive(Clone)]
pub struct Ep(pub Endpoint);

/// A ready endpoint with one address and no node.
pub fn ep(addr: &str) -> Ep {
    Ep(Endpoint {
        addresses: vec![addr.into()],
        ..Default::default()
    })
}

impl Ep {
    /// Sets `nodeName`.
    pub fn node(mut self, n: &str) -> Self {
        self.0.node_name = Some(n.into());
        self
    }
    /// Sets `zone`.
    pub fn zone(mut self, z: &str) -> Self {
        self.0.zone = Some(z.into());
        self
    }
    /// Sets the three conditions explicitly.
    pub fn cond(mut self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.0.conditions = Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        });
        self
    }
    /// Not ready, not serving (e.g. starting up).
    pub fn not_ready(self) -> Self {
        self.cond(false, false, false)
    }
    /// Terminating but still serving.
    pub fn terminating_serving(self) -> Self {
        self.cond(false, true, true)
    }
    /// Sets zone hints.
    pub fn zone_hints(mut self, zones: &[&str]) -> Self {
        let h = self.0.hints.get_or_insert_with(EndpointHints::default);
        h.for_zones = Some(
            zones
                .iter()
                .map(|z| ForZone {
                    name: z.to_string(),
                })
                .collect(),
        );
        self
    }
    /// Sets node hints.
    pub fn node_hints(mut self, nodes: &[&str]) -> Self {
        let h = self.0.hints.get_or_insert_with(EndpointHints::default);
        h.for_nodes = Some(
            nodes
                .iter()
                .map(|n| ForNode {
                    name: n.to_string(),
                })
                .collect(),
        );
        self
    }
}

/// An EndpointSlice under construction.
#[derive(Clone)]
pub struct Slice(pub EndpointSlice);

/// A slice `ns/name` of `service` with the given address type.
pub fn slice(ns: &str, name: &str, service: &str, address_type: &str) -> Slice {
    let mut m = meta(ns, name);
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_string(),
        service.to_string(),
    )]));
    Slice(EndpointSlice {
        metadata: m,
        address_type: address_type.into(),
        endpoints: Vec::new(),
        ports: None,
    })
}

impl Slice {
    /// Adds a port.
    pub fn port(mut self, name: &str, proto: &str, port: i32) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: Some(name.into()),
                protocol: Some(proto.into()),
                port: Some(port),
                app_protocol: None,
            });
        self
    }
    /// Adds an endpoint.
    pub fn ep(mut self, e: Ep) -> Self {
        self.0.endpoints.push(e.0);
        self
    }
    /// Sets an annotation.
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    /// Sets a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    /// The finished object.
    pub fn build(self) -> EndpointSlice {
        self.0
    }
}

/// A Node with an optional zone label and InternalIP.
pub fn node(name: &str, zone: Option<&str>, internal_ip: Option<&str>) -> Node {
    let mut m = ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    if let Some(z) = zone {
        m.labels = Some(BTreeMap::from([(
            "topology.kubernetes.io/zone".to_string(),
            z.to_string(),
        )]));
    }
    Node {
        metadata: m,
        spec: Some(NodeSpec {
            pod_cidrs: Some(vec!["10.244.1.0/24".into()]),
            taints: None,
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: internal_ip.map(|ip| {
                vec![NodeAddress {
                    address: ip.into(),
                    type_: "InternalIP".into(),
                }]
            }),
            ..Default::default()
        }),
    }
}

/// A taint with the given key.
pub fn taint(key: &str) -> Taint {
    Taint {
        key: key.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    }
}
