//! Resolution of one service into its service ports for this node — upstream's
//! endpointslicecache.go (merging slices) and topology.go (`CategorizeEndpoints`) as pure
//! functions.
//!
//! kproxy hands both IP families to the plugin in one [`ServicePort`], while upstream runs one
//! proxier per family. To give exactly upstream's answer, every decision upstream makes per
//! proxier is made here per family: which endpoints exist (slices of that address type, only
//! when the service has a cluster IP of that family), whether the service is externally
//! accessible (node port, or external / VIP load-balancer IPs of that family), the topology
//! mode, and the fallback to terminating endpoints.

use crate::model::service::ServiceInfo;
use crate::model::slice::{SliceEndpoint, SliceInfo};
use kproxy_plugin_api::model::{
    Endpoint, IpAddr, IpFamily, IpMode, ServicePort, ServicePortKey, TrafficPolicy,
};
use std::collections::BTreeMap;

/// What resolution needs to know about this node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeView<'a> {
    /// This node's name (empty: no endpoint is local, as upstream's `isLocal`).
    pub name: &'a str,
    /// This node's zone (empty when unknown).
    pub zone: &'a str,
    /// Whether IPv4 is handled.
    pub ipv4: bool,
    /// Whether IPv6 is handled.
    pub ipv6: bool,
}

impl NodeView<'_> {
    fn enabled(&self, family: IpFamily) -> bool {
        match family {
            IpFamily::V4 => self.ipv4,
            IpFamily::V6 => self.ipv6,
        }
    }
}

/// Upstream's topology modes (topology.go `topologyModeFromHints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    /// No topology: every ready endpoint.
    None,
    /// Only endpoints hinted for this zone.
    SameZone,
    /// Only endpoints hinted for this node.
    SameNode,
}

/// One deduplicated endpoint of one family for one service port.
struct Candidate<'a> {
    ep: &'a SliceEndpoint,
    port: u16,
    local: bool,
}

/// Resolves every port of `svc` for this node. `slices` are the service's slices, in slice-name
/// order (which makes duplicate handling deterministic).
pub(crate) fn resolve_service(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    node: NodeView<'_>,
) -> Vec<ServicePort> {
    let families: Vec<IpFamily> = svc
        .cluster_ips
        .iter()
        .map(|ip| ip.family)
        .filter(|f| node.enabled(*f))
        .collect();
    if families.is_empty() {
        return Vec::new(); // like a proxier for which GetClusterIPByFamily is ""
    }
    let in_families = |ip: &IpAddr| families.contains(&ip.family);
    let cluster_ips: Vec<IpAddr> = svc
        .cluster_ips
        .iter()
        .copied()
        .filter(in_families)
        .collect();
    let external_ips: Vec<IpAddr> = svc
        .external_ips
        .iter()
        .copied()
        .filter(in_families)
        .collect();
    let ingress: Vec<_> = svc
        .load_balancer_ingress
        .iter()
        .copied()
        .filter(|i| in_families(&i.ip))
        .collect();
    let ranges: Vec<_> = svc
        .load_balancer_source_ranges
        .iter()
        .copied()
        .filter(|c| families.contains(&c.family()))
        .collect();
    let itp_local = svc.internal_policy_local();
    let etp_local = svc.external_policy_local();

    let mut out = Vec::with_capacity(svc.ports.len());
    for port in &svc.ports {
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for &family in &families {
            // Upstream `ExternallyAccessible`, per family.
            let accessible = port.node_port != 0
                || external_ips.iter().any(|ip| ip.family == family)
                || ingress
                    .iter()
                    .any(|i| i.ip.family == family && i.ip_mode == IpMode::Vip);
            let uses_cluster = !itp_local || accessible;
            let uses_local = itp_local || (etp_local && accessible);

            let candidates = merge_slices(slices, family, &port.name, port.protocol, node.name);
            let (for_cluster, for_local) =
                categorize(&candidates, uses_cluster, uses_local, node.name, node.zone);
            // Exact: the list lives as long as the port, in the sync thread's state.
            endpoints.reserve_exact(candidates.len());
            for (i, c) in candidates.iter().enumerate() {
                endpoints.push(Endpoint {
                    ip: c.ep.ip,
                    port: c.port,
                    ready: c.ep.ready,
                    serving: c.ep.serving,
                    terminating: c.ep.terminating,
                    node_name: (*c.ep.node_name).into(),
                    zone: (*c.ep.zone).into(),
                    is_local: c.local,
                    for_cluster: for_cluster[i],
                    for_local: for_local[i],
                });
            }
        }
        endpoints.sort_by_key(|e| (e.ip, e.port));

        out.push(ServicePort {
            key: ServicePortKey::new(&svc.id.namespace, &svc.id.name, &port.name, port.protocol),
            cluster_ips: cluster_ips.clone().into(),
            port: port.port,
            node_port: port.node_port,
            external_ips: external_ips.clone().into(),
            load_balancer_ingress: ingress.clone().into(),
            load_balancer_source_ranges: ranges.clone().into(),
            session_affinity: svc.session_affinity,
            internal_traffic_policy: svc.internal_traffic_policy,
            external_traffic_policy: if etp_local {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            },
            health_check_node_port: svc.health_check_node_port,
            ipvs_scheduler: svc.ipvs_scheduler.clone().unwrap_or_default().into(),
            endpoints: endpoints.into(),
        });
    }
    out
}

/// All endpoints of `family` for the service port `(name, protocol)`, merged over the slices
/// and deduplicated by address and port as upstream's `addEndpoints`: an endpoint seen again
/// replaces the earlier one unless it is terminating (so a running pod wins over a
/// terminating one that had the same IP). A slice port matches by name and protocol; its
/// number is the endpoint port, which resolves a named `targetPort` per slice.
fn merge_slices<'a>(
    slices: &[&'a SliceInfo],
    family: IpFamily,
    name: &str,
    protocol: kproxy_plugin_api::model::Protocol,
    node_name: &str,
) -> Vec<Candidate<'a>> {
    let mut set: BTreeMap<(IpAddr, u16), Candidate<'a>> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.family == family) {
        for sp in slice
            .ports
            .iter()
            .filter(|p| p.name == name && p.protocol == protocol)
        {
            for ep in &slice.endpoints {
                let key = (ep.ip, sp.port);
                if !set.contains_key(&key) || !ep.terminating {
                    let local = !node_name.is_empty() && *ep.node_name == *node_name;
                    set.insert(
                        key,
                        Candidate {
                            ep,
                            port: sp.port,
                            local,
                        },
                    );
                }
            }
        }
    }
    set.into_values().collect()
}

/// Upstream's `CategorizeEndpoints`: which endpoints serve cluster traffic and which serve
/// node-local traffic. Returns one flag per candidate for each list; a list the service never
/// uses (`UsesClusterEndpoints` / `UsesLocalEndpoints` false) is all false.
fn categorize(
    eps: &[Candidate<'_>],
    uses_cluster: bool,
    uses_local: bool,
    node_name: &str,
    zone: &str,
) -> (Vec<bool>, Vec<bool>) {
    let mut cluster = vec![false; eps.len()];
    let mut local = vec![false; eps.len()];
    if eps.is_empty() {
        return (cluster, local);
    }

    if uses_cluster {
        let mode = topology_mode(eps, node_name, zone);
        let mut any = false;
        for (i, c) in eps.iter().enumerate() {
            cluster[i] = c.ep.ready && available_for_topology(c.ep, mode, node_name, zone);
            any |= cluster[i];
        }
        // No ready endpoint (the topology mode already fell back when none matched):
        // use serving-and-terminating ones.
        if !any {
            for (i, c) in eps.iter().enumerate() {
                cluster[i] = c.ep.serving && c.ep.terminating;
            }
        }
    }

    if uses_local {
        let mut has_local_ready = false;
        let mut has_local_serving_terminating = false;
        for c in eps.iter().filter(|c| c.local) {
            if c.ep.ready {
                has_local_ready = true;
            } else if c.ep.serving && c.ep.terminating {
                has_local_serving_terminating = true;
            }
        }
        for (i, c) in eps.iter().enumerate() {
            local[i] = c.local
                && if has_local_ready {
                    c.ep.ready
                } else if has_local_serving_terminating {
                    c.ep.serving && c.ep.terminating
                } else {
                    false
                };
        }
    }
    (cluster, local)
}

/// Upstream's `topologyModeFromHints` with the `PreferSameTrafficDistribution` gate on (its
/// default since Kubernetes 1.34): node hints win when every ready endpoint has one and one is
/// for this node; else zone hints when every ready endpoint has one and one is for this
/// node's zone; else no topology.
fn topology_mode(eps: &[Candidate<'_>], node_name: &str, zone: &str) -> TopologyMode {
    let mut has_ready = false;
    let mut all_node_hints = true;
    let mut for_node = false;
    let mut all_zone_hints = true;
    let mut for_zone = false;
    for c in eps.iter().filter(|c| c.ep.ready) {
        has_ready = true;
        if c.ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if has(&c.ep.node_hints, node_name) {
            for_node = true;
        }
        if c.ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if has(&c.ep.zone_hints, zone) {
            for_zone = true;
        }
    }
    if !has_ready {
        TopologyMode::None
    } else if all_node_hints && for_node {
        TopologyMode::SameNode
    } else if all_zone_hints && for_zone {
        TopologyMode::SameZone
    } else {
        TopologyMode::None
    }
}

fn available_for_topology(ep: &SliceEndpoint, mode: TopologyMode, node: &str, zone: &str) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => has(&ep.node_hints, node),
        TopologyMode::SameZone => has(&ep.zone_hints, zone),
    }
}

/// Membership in a sorted, deduplicated hint list.
fn has(sorted: &[std::sync::Arc<str>], item: &str) -> bool {
    sorted.binary_search_by(|probe| (**probe).cmp(item)).is_ok()
}
