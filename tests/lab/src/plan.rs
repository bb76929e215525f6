//! The lab's address plan: which namespace holds which addresses and routes.
//!
//! Pure data, no syscalls, so the packet-flow table can render Kubernetes objects (and be unit
//! tested) without root. Every lab uses the same plan; labs are isolated from each other by their
//! namespaces, so only namespace names must be unique, never addresses.
//!
//! ```text
//!   pod-a ─┐ routed veths                  underlay 10.10.0.0/24
//!   pod-b ─┼── node (10.10.0.1) ───────────────────── remote (10.10.0.2) ── remote pods
//!   pod-c ─┘        │ 172.30.0.1/24                     10.244.2.0/24
//!                   └──────── external (172.30.0.10 client, 172.30.0.20 "blocked")
//! ```

use kproxy_plugin_api::{Cidr, IpFamily, LocalDetect, LocalDetectMode, NodeFacts, ProxySettings};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The node kproxy runs on, as Kubernetes knows it.
pub const NODE_NAME: &str = "lab-node";
/// The other node, hosting the remote pods.
pub const REMOTE_NODE_NAME: &str = "lab-remote";
/// The zone of [`NODE_NAME`].
pub const NODE_ZONE: &str = "zone-a";
/// The zone of [`REMOTE_NODE_NAME`].
pub const REMOTE_ZONE: &str = "zone-b";

/// The link-local gateway every pod routes through; each node-side pod veth carries it (Calico's
/// trick), so pods need no per-pod gateway and the node needs no bridge.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 link-local gateway of every pod.
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The IPv4 service CIDR the lab's cluster uses.
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/16";
/// The IPv6 service CIDR the lab's cluster uses.
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";
/// The IPv4 cluster (pod) CIDR: both nodes' pod ranges lie inside it.
pub const CLUSTER_CIDR_V4: &str = "10.244.0.0/16";
/// The IPv6 cluster (pod) CIDR.
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/56";

/// One address per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DualStack {
    /// The IPv4 address.
    pub v4: Ipv4Addr,
    /// The IPv6 address.
    pub v6: Ipv6Addr,
}

impl DualStack {
    /// The address of `family`.
    pub fn get(&self, family: IpFamily) -> IpAddr {
        match family {
            IpFamily::V4 => IpAddr::V4(self.v4),
            IpFamily::V6 => IpAddr::V6(self.v6),
        }
    }
    /// Both addresses, IPv4 first.
    pub fn both(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.v4), IpAddr::V6(self.v6)]
    }
}

/// Which node a pod runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PodHost {
    /// The node kproxy runs on.
    Local,
    /// The remote node.
    Remote,
}

/// One pod of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// The pod's name; its servers answer with it.
    pub name: String,
    /// Where it runs.
    pub host: PodHost,
    /// Its addresses (a /32 and a /128).
    pub ip: DualStack,
    /// Its position among the pods of its node (names the node-side veth `vp<index>`).
    pub index: usize,
}

impl PodPlan {
    /// The Kubernetes node name of the pod's host.
    pub fn node_name(&self) -> &'static str {
        match self.host {
            PodHost::Local => NODE_NAME,
            PodHost::Remote => REMOTE_NODE_NAME,
        }
    }
    /// The zone of the pod's host.
    pub fn zone(&self) -> &'static str {
        match self.host {
            PodHost::Local => NODE_ZONE,
            PodHost::Remote => REMOTE_ZONE,
        }
    }
}

/// The whole address plan of a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The node's address on the underlay link to the remote node (its InternalIP).
    pub node_underlay: DualStack,
    /// The node's address on the link to the external clients (its ExternalIP).
    pub node_external: DualStack,
    /// The remote node's underlay address.
    pub remote_underlay: DualStack,
    /// The external client's address (the first address of the external namespace).
    pub external_client: DualStack,
    /// The second external address, used as the client a source range leaves out.
    pub blocked_client: DualStack,
    /// The node's pod range.
    pub node_pod_cidr: (Cidr, Cidr),
    /// The remote node's pod range.
    pub remote_pod_cidr: (Cidr, Cidr),
    /// Every pod, local ones first.
    pub pods: Vec<PodPlan>,
}

fn cidr(s: &str) -> Cidr {
    s.parse().expect("the lab's constant prefixes parse")
}

impl Plan {
    /// Builds the plan for the given local and remote pod names.
    pub fn new(local_pods: &[String], remote_pods: &[String]) -> Plan {
        let pod = |host: PodHost, index: usize, name: &String| {
            let third = if host == PodHost::Local { 1 } else { 2 };
            let last = 10 + index as u8;
            PodPlan {
                name: name.clone(),
                host,
                index,
                ip: DualStack {
                    v4: Ipv4Addr::new(10, 244, third, last),
                    v6: Ipv6Addr::new(0xfd00, 0x10, 0x244, third as u16, 0, 0, 0, last as u16),
                },
            }
        };
        let mut pods: Vec<PodPlan> = local_pods
            .iter()
            .enumerate()
            .map(|(i, n)| pod(PodHost::Local, i, n))
            .collect();
        pods.extend(
            remote_pods
                .iter()
                .enumerate()
                .map(|(i, n)| pod(PodHost::Remote, i, n)),
        );
        Plan {
            node_underlay: DualStack {
                v4: Ipv4Addr::new(10, 10, 0, 1),
                v6: "fd00:10:10::1".parse().expect("constant"),
            },
            node_external: DualStack {
                v4: Ipv4Addr::new(172, 30, 0, 1),
                v6: "fd00:172:30::1".parse().expect("constant"),
            },
            remote_underlay: DualStack {
                v4: Ipv4Addr::new(10, 10, 0, 2),
                v6: "fd00:10:10::2".parse().expect("constant"),
            },
            external_client: DualStack {
                v4: Ipv4Addr::new(172, 30, 0, 10),
                v6: "fd00:172:30::10".parse().expect("constant"),
            },
            blocked_client: DualStack {
                v4: Ipv4Addr::new(172, 30, 0, 20),
                v6: "fd00:172:30::20".parse().expect("constant"),
            },
            node_pod_cidr: (cidr("10.244.1.0/24"), cidr("fd00:10:244:1::/64")),
            remote_pod_cidr: (cidr("10.244.2.0/24"), cidr("fd00:10:244:2::/64")),
            pods,
        }
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<&PodPlan> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Pods on the node kproxy runs on.
    pub fn local_pods(&self) -> impl Iterator<Item = &PodPlan> {
        self.pods.iter().filter(|p| p.host == PodHost::Local)
    }

    /// Pods on the remote node.
    pub fn remote_pods(&self) -> impl Iterator<Item = &PodPlan> {
        self.pods.iter().filter(|p| p.host == PodHost::Remote)
    }

    /// Every address of the node kproxy runs on: what a masqueraded packet can carry as source.
    pub fn node_addresses(&self) -> Vec<IpAddr> {
        let mut all = self.node_underlay.both().to_vec();
        all.extend(self.node_external.both());
        all
    }

    /// The node's facts as the daemon would hand them to a plugin, for tests that build a
    /// dataplane in-process.
    pub fn node_facts(&self) -> NodeFacts {
        NodeFacts {
            name: NODE_NAME.into(),
            zone: NODE_ZONE.into(),
            addresses: self
                .node_addresses()
                .into_iter()
                .map(kproxy_plugin_api::IpAddr::from)
                .collect(),
            pod_cidrs: vec![self.node_pod_cidr.0, self.node_pod_cidr.1].into(),
        }
    }

    /// The node-wide settings a dataplane in this lab runs with (upstream defaults, the lab's
    /// cluster and service CIDRs).
    pub fn proxy_settings(&self) -> ProxySettings {
        ProxySettings {
            ipv4: true,
            ipv6: true,
            cluster_cidrs: vec![cidr(CLUSTER_CIDR_V4), cidr(CLUSTER_CIDR_V6)].into(),
            local_detect: LocalDetect {
                mode: LocalDetectMode::ClusterCidr,
                interface: "".into(),
            },
            masquerade_all: false,
            masquerade_bit: 14,
            node_port_addresses: Default::default(),
            localhost_node_ports: true,
            service_cidrs: vec![cidr(SERVICE_CIDR_V4), cidr(SERVICE_CIDR_V6)].into(),
        }
    }

    /// The two Node objects (this node and the remote one) as the API would serve them: zone
    /// label, pod CIDRs and addresses.
    pub fn node_objects(&self) -> Vec<Value> {
        let node = |name: &str,
                    zone: &str,
                    pod: &(Cidr, Cidr),
                    internal: DualStack,
                    ext: Option<DualStack>| {
            let mut addresses = vec![
                json!({"type": "InternalIP", "address": internal.v4.to_string()}),
                json!({"type": "InternalIP", "address": internal.v6.to_string()}),
            ];
            if let Some(ext) = ext {
                addresses.push(json!({"type": "ExternalIP", "address": ext.v4.to_string()}));
                addresses.push(json!({"type": "ExternalIP", "address": ext.v6.to_string()}));
            }
            addresses.push(json!({"type": "Hostname", "address": name}));
            json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "topology.kubernetes.io/zone": zone,
                    },
                },
                "spec": {
                    "podCIDR": pod.0.to_string(),
                    "podCIDRs": [pod.0.to_string(), pod.1.to_string()],
                },
                "status": {"addresses": addresses},
            })
        };
        vec![
            node(
                NODE_NAME,
                NODE_ZONE,
                &self.node_pod_cidr,
                self.node_underlay,
                Some(self.node_external),
            ),
            node(
                REMOTE_NODE_NAME,
                REMOTE_ZONE,
                &self.remote_pod_cidr,
                self.remote_underlay,
                None,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_addresses_in_their_node_range() {
        let plan = Plan::new(&["a".into(), "b".into()], &["r".into()]);
        for pod in &plan.pods {
            let (v4, v6) = match pod.host {
                PodHost::Local => plan.node_pod_cidr,
                PodHost::Remote => plan.remote_pod_cidr,
            };
            assert!(v4.contains(IpAddr::V4(pod.ip.v4).into()), "{pod:?}");
            assert!(v6.contains(IpAddr::V6(pod.ip.v6).into()), "{pod:?}");
            let cluster: (Cidr, Cidr) = (cidr(CLUSTER_CIDR_V4), cidr(CLUSTER_CIDR_V6));
            assert!(cluster.0.contains(IpAddr::V4(pod.ip.v4).into()));
            assert!(cluster.1.contains(IpAddr::V6(pod.ip.v6).into()));
        }
        assert_ne!(plan.pod("a").unwrap().ip, plan.pod("b").unwrap().ip);
        assert_eq!(plan.pod("r").unwrap().host, PodHost::Remote);
    }

    #[test]
    fn node_objects_are_real_nodes() {
        let plan = Plan::new(&["a".into()], &[]);
        for obj in plan.node_objects() {
            let node: k8s_openapi::api::core::v1::Node =
                serde_json::from_value(obj).expect("a valid Node");
            assert!(node.spec.unwrap().pod_cidrs.unwrap().len() == 2);
        }
    }
}
