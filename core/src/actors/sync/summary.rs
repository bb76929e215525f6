//! What the health checks and metrics need to know about a state the plugin has just applied,
//! computed on the sync thread (which owns the state) right after a successful sync, and
//! carried to subscribers in [`super::SyncFinished`].
//!
//! - the health-check node ports: one per service with `healthCheckNodePort` set, with the
//!   number of ready endpoints on this node (upstream's `LocalReadyEndpoints`: unique
//!   `ip:port` over the service's ports);
//! - per family, how many service ports have a Local traffic policy and no local endpoint
//!   while endpoints exist elsewhere (upstream's `no_local_endpoints_total`: traffic to them
//!   is dropped).

use crate::model::NamespacedName;
use kproxy_plugin_api::{IpAddr, IpFamily, ProxyState, TrafficPolicy};
use std::collections::{BTreeMap, BTreeSet};

/// One health-check node port to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckService {
    /// The service.
    pub service: NamespacedName,
    /// Its `healthCheckNodePort`.
    pub port: u16,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// Service ports with a Local policy and no usable local endpoint, by policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoLocalCounts {
    /// `internalTrafficPolicy: Local`.
    pub internal: usize,
    /// `externalTrafficPolicy: Local`.
    pub external: usize,
}

/// See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateSummary {
    /// Every health-check node port, sorted by service.
    pub health_checks: Vec<HealthCheckService>,
    no_local_v4: NoLocalCounts,
    no_local_v6: NoLocalCounts,
}

impl StateSummary {
    /// Summarises `state`. One pass over the service ports; only ports with a health-check
    /// port or a Local policy look at their endpoints.
    pub fn of(state: &ProxyState) -> StateSummary {
        let mut hc: BTreeMap<NamespacedName, (u16, BTreeSet<(IpAddr, u16)>)> = BTreeMap::new();
        let mut summary = StateSummary::default();
        for sp in state.services.iter() {
            if sp.health_check_node_port != 0 {
                let entry = hc
                    .entry(NamespacedName::new(
                        sp.key.namespace.as_str(),
                        sp.key.name.as_str(),
                    ))
                    .or_insert_with(|| (sp.health_check_node_port, BTreeSet::new()));
                entry.1.extend(
                    sp.endpoints
                        .iter()
                        .filter(|e| e.is_local && e.ready)
                        .map(|e| (e.ip, e.port)),
                );
            }
            let internal_local = sp.internal_traffic_policy == TrafficPolicy::Local;
            let external_local = sp.external_policy_local();
            if !internal_local && !external_local {
                continue;
            }
            for family in [IpFamily::V4, IpFamily::V6] {
                if !sp.cluster_ips.iter().any(|ip| ip.family == family) {
                    continue;
                }
                let of_family = |e: &&kproxy_plugin_api::Endpoint| e.ip.family == family;
                let has_endpoints = sp
                    .endpoints
                    .iter()
                    .filter(of_family)
                    .any(|e| e.for_cluster || e.for_local);
                if !has_endpoints {
                    continue;
                }
                let counts = match family {
                    IpFamily::V4 => &mut summary.no_local_v4,
                    IpFamily::V6 => &mut summary.no_local_v6,
                };
                if !sp.internal_endpoints().any(|e| e.ip.family == family) {
                    counts.internal += 1;
                }
                if !sp.external_endpoints().any(|e| e.ip.family == family) {
                    counts.external += 1;
                }
            }
        }
        summary.health_checks = hc
            .into_iter()
            .map(|(service, (port, eps))| HealthCheckService {
                service,
                port,
                local_endpoints: eps.len(),
            })
            .collect();
        summary
    }

    /// The no-local-endpoint counts of one family.
    pub fn no_local_endpoints(&self, family: IpFamily) -> NoLocalCounts {
        match family {
            IpFamily::V4 => self.no_local_v4,
            IpFamily::V6 => self.no_local_v6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_plugin_api::{
        abi_stable::std_types::RVec, Endpoint, Protocol, ServicePort, ServicePortKey,
    };
    use std::net::Ipv4Addr;

    fn ep(last: u8, port: u16, local: bool, ready: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 0, 0, last).into(),
            port,
            ready,
            serving: ready,
            terminating: false,
            node_name: if local { "me" } else { "other" }.into(),
            zone: "".into(),
            is_local: local,
            for_cluster: ready,
            for_local: local && ready,
        }
    }

    fn sp(
        name: &str,
        port_name: &str,
        hc: u16,
        etp: TrafficPolicy,
        eps: Vec<Endpoint>,
    ) -> ServicePort {
        ServicePort {
            key: ServicePortKey::new("default", name, port_name, Protocol::Tcp),
            cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 1).into()].into(),
            port: 80,
            node_port: 30000,
            external_ips: RVec::new(),
            load_balancer_ingress: RVec::new(),
            load_balancer_source_ranges: RVec::new(),
            session_affinity: Default::default(),
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: etp,
            health_check_node_port: hc,
            ipvs_scheduler: "".into(),
            endpoints: eps.into(),
        }
    }

    #[test]
    fn health_checks_count_unique_local_ready_endpoints_per_service() {
        let local = TrafficPolicy::Local;
        let state = ProxyState {
            services: vec![
                // Two ports of one service: the same pod twice on different ports counts twice
                // (upstream keys by ip:port), a not-ready local and a remote one not at all.
                sp(
                    "lb",
                    "a",
                    32000,
                    local,
                    vec![ep(1, 80, true, true), ep(2, 80, true, false)],
                ),
                sp(
                    "lb",
                    "b",
                    32000,
                    local,
                    vec![ep(1, 81, true, true), ep(3, 81, false, true)],
                ),
                sp("none", "", 32001, local, vec![ep(3, 80, false, true)]),
                sp(
                    "plain",
                    "",
                    0,
                    TrafficPolicy::Cluster,
                    vec![ep(1, 80, true, true)],
                ),
            ]
            .into(),
            ..Default::default()
        };
        let s = StateSummary::of(&state);
        assert_eq!(
            s.health_checks,
            vec![
                HealthCheckService {
                    service: NamespacedName::new("default", "lb"),
                    port: 32000,
                    local_endpoints: 2
                },
                HealthCheckService {
                    service: NamespacedName::new("default", "none"),
                    port: 32001,
                    local_endpoints: 0
                },
            ]
        );
        // `none` has endpoints elsewhere but none here: external traffic is dropped.
        assert_eq!(
            s.no_local_endpoints(IpFamily::V4),
            NoLocalCounts {
                internal: 0,
                external: 1
            }
        );
        assert_eq!(s.no_local_endpoints(IpFamily::V6), NoLocalCounts::default());
    }
}
