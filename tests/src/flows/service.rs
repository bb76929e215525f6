//! A case's service set-up, and how it becomes real Kubernetes objects (a Service and its
//! EndpointSlices) once the lab's pod addresses are known.
//!
//! Every case owns a *slot* (1–250) from which all its addresses are derived, so no two cases
//! share a cluster IP, node port, external IP or LB IP and one case's conntrack or affinity
//! state can never leak into another's.

use crate::lab::Plan;
use kproxy_plugin_api::{IpFamily, Protocol};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The Kubernetes namespace every case's objects live in.
pub const NAMESPACE: &str = "default";

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// `ClusterIP`.
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer` (has node ports too).
    LoadBalancer,
}

/// One service port and where its endpoints listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The port's name.
    pub name: &'static str,
    /// Its protocol.
    pub protocol: Protocol,
    /// The service port.
    pub port: u16,
    /// The port on the endpoints (in the EndpointSlices; one the lab's servers listen on).
    pub target_port: u16,
}

/// One endpoint: a lab pod and its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The lab pod.
    pub pod: String,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// `hints.forZones`, when set.
    pub zone_hint: Option<&'static str>,
}

impl EndpointSpec {
    /// A ready endpoint.
    pub fn ready(pod: &str) -> EndpointSpec {
        EndpointSpec {
            pod: pod.into(),
            ready: true,
            serving: true,
            terminating: false,
            zone_hint: None,
        }
    }
    /// A terminating endpoint, still serving or not.
    pub fn terminating(pod: &str, serving: bool) -> EndpointSpec {
        EndpointSpec {
            pod: pod.into(),
            ready: false,
            serving,
            terminating: true,
            zone_hint: None,
        }
    }
    /// An endpoint that is not ready (and not terminating).
    pub fn not_ready(pod: &str) -> EndpointSpec {
        EndpointSpec {
            pod: pod.into(),
            ready: false,
            serving: false,
            terminating: false,
            zone_hint: None,
        }
    }
    /// The same endpoint with a zone hint.
    pub fn hint(mut self, zone: &'static str) -> EndpointSpec {
        self.zone_hint = Some(zone);
        self
    }
}

/// A service set-up: everything a case varies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service's name.
    pub name: String,
    /// `spec.type`.
    pub kind: ServiceType,
    /// The families, in `spec.ipFamilies` order; two means `RequireDualStack`.
    pub families: Vec<IpFamily>,
    /// The ports.
    pub ports: Vec<PortSpec>,
    /// Whether the service has `spec.externalIPs` (one per family, from the slot).
    pub external_ips: bool,
    /// `status.loadBalancer.ingress[].ipMode: Proxy` instead of `VIP`.
    pub ip_mode_proxy: bool,
    /// `spec.loadBalancerSourceRanges` holding only the external client's address.
    pub source_range_client_only: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP` with this timeout.
    pub affinity_timeout: Option<u32>,
    /// The annotation `service.kubernetes.io/topology-mode: Auto` (use zone hints).
    pub topology_auto: bool,
    /// The endpoint slices, each rendered once per family.
    pub slices: Vec<Vec<EndpointSpec>>,
}

impl ServiceSpec {
    /// A service of `kind` in one family with the given ports and one slice of endpoints.
    pub fn new(
        name: &str,
        kind: ServiceType,
        family: IpFamily,
        ports: Vec<PortSpec>,
        endpoints: Vec<EndpointSpec>,
    ) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            kind,
            families: vec![family],
            ports,
            external_ips: false,
            ip_mode_proxy: false,
            source_range_client_only: false,
            external_local: false,
            internal_local: false,
            affinity_timeout: None,
            topology_auto: false,
            slices: vec![endpoints],
        }
    }

    /// Whether anything outside the cluster can reach it (so `externalTrafficPolicy` applies).
    pub fn externally_accessible(&self) -> bool {
        self.kind != ServiceType::ClusterIp || self.external_ips
    }

    /// Whether it has a health-check node port (a load balancer with `externalTrafficPolicy:
    /// Local`, as the API server allocates).
    pub fn has_health_check_node_port(&self) -> bool {
        self.kind == ServiceType::LoadBalancer && self.external_local
    }

    /// Every pod named as an endpoint.
    pub fn endpoint_pods(&self) -> Vec<&str> {
        self.slices
            .iter()
            .flatten()
            .map(|e| e.pod.as_str())
            .collect()
    }

    /// The Service and its EndpointSlices, with the addresses of `slot` and of the lab's pods.
    /// Panics when an endpoint names a pod the plan lacks (a mistake in the table).
    pub fn objects(&self, plan: &Plan, slot: u8) -> Vec<Value> {
        let a = Addresses::of(slot);
        let fam_name = |f: IpFamily| match f {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        };
        let cluster_ips: Vec<String> = self
            .families
            .iter()
            .map(|f| a.cluster_ip(*f).to_string())
            .collect();
        let ports: Vec<Value> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut port = json!({
                    "name": p.name,
                    "protocol": protocol_name(p.protocol),
                    "port": p.port,
                    "targetPort": p.target_port,
                });
                if self.kind != ServiceType::ClusterIp {
                    port["nodePort"] = json!(a.node_port(i));
                }
                port
            })
            .collect();
        let mut spec = json!({
            "type": match self.kind {
                ServiceType::ClusterIp => "ClusterIP",
                ServiceType::NodePort => "NodePort",
                ServiceType::LoadBalancer => "LoadBalancer",
            },
            "clusterIP": cluster_ips[0],
            "clusterIPs": cluster_ips,
            "ipFamilies": self.families.iter().map(|f| fam_name(*f)).collect::<Vec<_>>(),
            "ipFamilyPolicy": if self.families.len() > 1 { "RequireDualStack" } else { "SingleStack" },
            "ports": ports,
            "internalTrafficPolicy": if self.internal_local { "Local" } else { "Cluster" },
            "sessionAffinity": if self.affinity_timeout.is_some() { "ClientIP" } else { "None" },
        });
        if let Some(timeout) = self.affinity_timeout {
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
        }
        if self.externally_accessible() {
            spec["externalTrafficPolicy"] = json!(if self.external_local {
                "Local"
            } else {
                "Cluster"
            });
        }
        if self.external_ips {
            spec["externalIPs"] = json!(self
                .families
                .iter()
                .map(|f| a.external_ip(*f).to_string())
                .collect::<Vec<_>>());
        }
        if self.has_health_check_node_port() {
            spec["healthCheckNodePort"] = json!(a.health_check_node_port());
        }
        if self.source_range_client_only {
            spec["loadBalancerSourceRanges"] = json!(self
                .families
                .iter()
                .map(|f| match f {
                    IpFamily::V4 => format!("{}/32", plan.external_client.v4),
                    IpFamily::V6 => format!("{}/128", plan.external_client.v6),
                })
                .collect::<Vec<_>>());
        }
        let mut metadata = json!({"name": self.name, "namespace": NAMESPACE});
        if self.topology_auto {
            metadata["annotations"] = json!({"service.kubernetes.io/topology-mode": "Auto"});
        }
        let mut service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": spec,
        });
        if self.kind == ServiceType::LoadBalancer {
            let mode = if self.ip_mode_proxy { "Proxy" } else { "VIP" };
            service["status"] = json!({"loadBalancer": {"ingress": self
                .families
                .iter()
                .map(|f| json!({"ip": a.load_balancer_ip(*f).to_string(), "ipMode": mode}))
                .collect::<Vec<_>>()}});
        }
        let mut objects = vec![service];
        for (i, slice) in self.slices.iter().enumerate() {
            for family in &self.families {
                objects.push(self.slice(plan, *family, i, slice));
            }
        }
        objects
    }

    fn slice(
        &self,
        plan: &Plan,
        family: IpFamily,
        index: usize,
        endpoints: &[EndpointSpec],
    ) -> Value {
        let fam = match family {
            IpFamily::V4 => "v4",
            IpFamily::V6 => "v6",
        };
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|e| {
                let pod = plan
                    .pod(&e.pod)
                    .unwrap_or_else(|| panic!("the case names pod {}, which the lab lacks", e.pod));
                let mut ep = json!({
                    "addresses": [pod.ip.get(family).to_string()],
                    "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                    "nodeName": pod.node_name(),
                    "zone": pod.zone(),
                    "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": pod.name},
                });
                if let Some(zone) = e.zone_hint {
                    ep["hints"] = json!({"forZones": [{"name": zone}]});
                }
                ep
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-{fam}-{index}", self.name),
                "namespace": NAMESPACE,
                "labels": {
                    "kubernetes.io/service-name": self.name,
                    "endpointslice.kubernetes.io/managed-by": "lab.kproxy.invalid",
                },
            },
            "addressType": match family { IpFamily::V4 => "IPv4", IpFamily::V6 => "IPv6" },
            "endpoints": endpoints,
            "ports": self.ports.iter().map(|p| json!({
                "name": p.name,
                "protocol": protocol_name(p.protocol),
                "port": p.target_port,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The Kubernetes spelling of a protocol.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// The addresses and ports that belong to one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    slot: u8,
}

impl Addresses {
    /// The addresses of `slot`.
    pub fn of(slot: u8) -> Addresses {
        Addresses { slot }
    }
    /// The cluster IP: `10.96.1.<slot>` or `fd00:10:96::1<slot in hex>`, inside the service CIDR.
    pub fn cluster_ip(&self, family: IpFamily) -> IpAddr {
        match family {
            IpFamily::V4 => Ipv4Addr::new(10, 96, 1, self.slot).into(),
            IpFamily::V6 => {
                Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x100 | u16::from(self.slot)).into()
            }
        }
    }
    /// An address inside the service CIDR that no case ever allocates.
    pub fn unallocated(family: IpFamily) -> IpAddr {
        match family {
            IpFamily::V4 => Ipv4Addr::new(10, 96, 200, 1).into(),
            IpFamily::V6 => Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xc801).into(),
        }
    }
    /// The node port of the service's port number `index` (up to four per service).
    pub fn node_port(&self, index: usize) -> u16 {
        30000 + u16::from(self.slot) * 4 + index as u16
    }
    /// The health-check node port.
    pub fn health_check_node_port(&self) -> u16 {
        32000 + u16::from(self.slot)
    }
    /// The external IP: `198.51.100.<slot>` or `2001:db8:2::<slot>`.
    pub fn external_ip(&self, family: IpFamily) -> IpAddr {
        match family {
            IpFamily::V4 => Ipv4Addr::new(198, 51, 100, self.slot).into(),
            IpFamily::V6 => Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, self.slot.into()).into(),
        }
    }
    /// The load-balancer IP: `192.0.2.<slot>` or `2001:db8:1::<slot>`.
    pub fn load_balancer_ip(&self, family: IpFamily) -> IpAddr {
        match family {
            IpFamily::V4 => Ipv4Addr::new(192, 0, 2, self.slot).into(),
            IpFamily::V6 => Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, self.slot.into()).into(),
        }
    }
    /// A fixed client source port for cases that must reuse one conntrack entry.
    pub fn fixed_source_port(&self) -> u16 {
        40000 + u16::from(self.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan;
    use kproxy_plugin_api::Cidr;

    #[test]
    fn slot_addresses_sit_where_the_lab_expects() {
        let v4: Cidr = plan::SERVICE_CIDR_V4.parse().unwrap();
        let v6: Cidr = plan::SERVICE_CIDR_V6.parse().unwrap();
        for slot in [1u8, 77, 250] {
            let a = Addresses::of(slot);
            assert!(v4.contains(a.cluster_ip(IpFamily::V4).into()));
            assert!(v6.contains(a.cluster_ip(IpFamily::V6).into()));
            assert!((30000..=32767).contains(&a.node_port(3)));
            assert!((30000..=32767).contains(&a.health_check_node_port()));
            assert_ne!(
                a.cluster_ip(IpFamily::V4),
                Addresses::unallocated(IpFamily::V4)
            );
        }
        assert!(v4.contains(Addresses::unallocated(IpFamily::V4).into()));
        assert!(v6.contains(Addresses::unallocated(IpFamily::V6).into()));
        // Node ports of neighbouring slots never overlap.
        assert!(Addresses::of(1).node_port(3) < Addresses::of(2).node_port(0));
    }
}
