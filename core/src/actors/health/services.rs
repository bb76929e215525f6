//! Health-check node ports (upstream's `ServiceHealthServer`) as plain logic: which ports to
//! open and close when the set of `externalTrafficPolicy: Local` services changes, which
//! addresses to bind, and what each port answers.
//!
//! A load balancer probes every node on the service's `healthCheckNodePort`; a node answers
//! 200 while it has a ready endpoint of the service (and the proxy is healthy), 503 otherwise,
//! so only nodes that can serve the traffic locally receive it.

use crate::{actors::sync::summary::HealthCheckService, model::NamespacedName};
use kproxy_plugin_api::Cidr;
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

/// What to change so the open ports match the wanted ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Services whose port must close (gone, or their port changed).
    pub close: Vec<NamespacedName>,
    /// Services whose port must open, with the port.
    pub open: Vec<(NamespacedName, u16)>,
}

/// Compares the ports open now with the services that want one. A service whose port changed
/// is closed and opened again; one that failed to open earlier (absent from `open_now`) is
/// tried again.
pub fn plan(open_now: &BTreeMap<NamespacedName, u16>, wanted: &[HealthCheckService]) -> Plan {
    let wanted_ports: BTreeMap<&NamespacedName, u16> =
        wanted.iter().map(|s| (&s.service, s.port)).collect();
    let mut p = Plan::default();
    for (svc, port) in open_now {
        if wanted_ports.get(svc) != Some(port) {
            p.close.push(svc.clone());
        }
    }
    for (svc, port) in wanted_ports {
        if open_now.get(svc) != Some(&port) {
            p.open.push((svc.clone(), port));
        }
    }
    p
}

/// The addresses a health-check port is bound on: every address (`[::]`, which also accepts
/// IPv4 on Linux) when `node_port_addresses` is empty, otherwise each of `interface_addresses`
/// inside one of the prefixes (upstream's `GetNodeIPs`).
pub fn bind_addresses(node_port_addresses: &[Cidr], interface_addresses: &[IpAddr]) -> Vec<IpAddr> {
    if node_port_addresses.is_empty() {
        return vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)];
    }
    let mut out: Vec<IpAddr> = interface_addresses
        .iter()
        .copied()
        .filter(|ip| node_port_addresses.iter().any(|c| c.contains((*ip).into())))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What one health-check port answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAnswer {
    /// 200 when the node has a ready local endpoint and the proxy is healthy, else 503.
    pub status: u16,
    /// Upstream's body, byte for byte.
    pub body: String,
    /// The `X-Load-Balancing-Endpoint-Weight` header's value: the local endpoint count.
    pub weight: usize,
}

/// The answer for `service` with `local_endpoints` ready here, the proxy being
/// `proxy_healthy`.
pub fn answer(
    service: &NamespacedName,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> ServiceAnswer {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""));
    // Upstream writes this indented JSON with tabs (a dedented Go template).
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        quote(&service.namespace),
        quote(&service.name),
        local_endpoints,
        proxy_healthy
    );
    ServiceAnswer {
        status: if local_endpoints != 0 && proxy_healthy {
            200
        } else {
            503
        },
        body,
        weight: local_endpoints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nn(n: &str) -> NamespacedName {
        NamespacedName::new("default", n)
    }
    fn hc(n: &str, port: u16) -> HealthCheckService {
        HealthCheckService {
            service: nn(n),
            port,
            local_endpoints: 1,
        }
    }

    #[test]
    fn plan_opens_new_closes_gone_and_reopens_moved_ports() {
        let open: BTreeMap<_, _> = [
            (nn("keep"), 30001),
            (nn("gone"), 30002),
            (nn("moved"), 30003),
        ]
        .into_iter()
        .collect();
        let p = plan(
            &open,
            &[hc("keep", 30001), hc("moved", 30004), hc("new", 30005)],
        );
        assert_eq!(p.close, vec![nn("gone"), nn("moved")]);
        assert_eq!(p.open, vec![(nn("moved"), 30004), (nn("new"), 30005)]);
        assert_eq!(
            plan(
                &open,
                &[hc("keep", 30001), hc("gone", 30002), hc("moved", 30003)]
            ),
            Plan::default()
        );
    }

    #[test]
    fn binds_on_node_port_addresses_only() {
        let ifs: Vec<IpAddr> = ["127.0.0.1", "10.0.0.5", "192.168.1.2", "fd00::5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            bind_addresses(&[], &ifs),
            vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
        );
        let cidrs: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/64".parse().unwrap()];
        assert_eq!(
            bind_addresses(&cidrs, &ifs),
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn answers_as_upstream() {
        let a = answer(&NamespacedName::new("ns", "lb"), 2, true);
        assert_eq!(a.status, 200);
        assert_eq!(a.weight, 2);
        assert_eq!(
            a.body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["service"]["name"], "lb");
        assert_eq!(answer(&nn("x"), 0, true).status, 503);
        assert_eq!(answer(&nn("x"), 3, false).status, 503);
    }
}
