//! This node's `Node` validated into [`NodeInfo`]: its zone (for topology hints), its
//! addresses and pod CIDRs (for node ports and local-traffic detection), and the two signs
//! upstream's `/healthz` checks to report a node that is going away.

use super::{parse_cidr, parse_ip, shorten, size, Invalid, NamespacedName, ObjectKind};
use k8s_openapi::api::core::v1::Node;
use kproxy_plugin_api::model::{Cidr, IpAddr, NodeFacts};

/// The label holding a node's zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The taint the cluster autoscaler puts on a node it is about to delete; upstream's
/// `/healthz` reports such a node as not eligible for load-balancer traffic.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// A validated Node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// [`LABEL_ZONE`], when set and non-empty.
    pub zone: Option<String>,
    /// `status.addresses` of type `InternalIP`, in the object's order.
    pub internal_ips: Vec<IpAddr>,
    /// `status.addresses` of type `ExternalIP`, in the object's order.
    pub external_ips: Vec<IpAddr>,
    /// `spec.podCIDRs` (or the single `spec.podCIDR`).
    pub pod_cidrs: Vec<Cidr>,
    /// `metadata.deletionTimestamp` is set: the node is being deleted.
    pub being_deleted: bool,
    /// The node carries the [`TAINT_TO_BE_DELETED`] taint.
    pub to_be_deleted_taint: bool,
}

impl NodeInfo {
    /// Validates a Node. Addresses of other types (Hostname, InternalDNS, …) are not read.
    pub fn from_node(node: &Node) -> Result<NodeInfo, Invalid> {
        let id = NamespacedName::new("", node.metadata.name.clone().unwrap_or_default());
        let invalid = |reason: String| Invalid::new(ObjectKind::Node, &id, reason);
        if id.name.is_empty() {
            return Err(invalid("metadata.name is missing".into()));
        }
        size::check_meta(&node.metadata, size::node_bytes(node)).map_err(invalid)?;
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_ZONE))
            .filter(|z| !z.is_empty())
            .cloned();

        let mut internal_ips = Vec::new();
        let mut external_ips = Vec::new();
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for a in addresses.into_iter().flatten() {
            let list = match a.type_.as_str() {
                "InternalIP" => &mut internal_ips,
                "ExternalIP" => &mut external_ips,
                _ => continue,
            };
            let ip = parse_ip(&a.address).ok_or_else(|| {
                invalid(format!(
                    "status.addresses: {} {} is not an IP address",
                    a.type_,
                    shorten(&a.address)
                ))
            })?;
            if !list.contains(&ip) {
                list.push(ip);
            }
        }

        let spec = node.spec.as_ref();
        let cidrs: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
            Some(list) if !list.is_empty() => list.iter().collect(),
            _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
        };
        let pod_cidrs = cidrs
            .into_iter()
            .filter(|c| !c.is_empty())
            .map(|c| {
                parse_cidr(c)
                    .ok_or_else(|| invalid(format!("spec.podCIDRs: {} is not a CIDR", shorten(c))))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let to_be_deleted_taint = spec
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED));

        Ok(NodeInfo {
            name: id.name.to_string(),
            zone,
            internal_ips,
            external_ips,
            pod_cidrs,
            being_deleted: node.metadata.deletion_timestamp.is_some(),
            to_be_deleted_taint,
        })
    }

    /// The facts handed to plugins: name, zone, addresses (internal first, then external,
    /// without repeats) and pod CIDRs.
    pub fn facts(&self) -> NodeFacts {
        let mut addresses: Vec<IpAddr> = self.internal_ips.clone();
        for ip in &self.external_ips {
            if !addresses.contains(ip) {
                addresses.push(*ip);
            }
        }
        NodeFacts {
            name: self.name.as_str().into(),
            zone: self.zone.clone().unwrap_or_default().into(),
            addresses: addresses.into(),
            pod_cidrs: self.pod_cidrs.clone().into(),
        }
    }
}
