//! The synthetic cluster a benchmark loads into the test API server: `services` ClusterIP
//! services with `endpoints` ready endpoints each (one EndpointSlice per service), plus, for the
//! data path, one service whose endpoint is a real lab pod.
//!
//! Addresses: cluster IPs from 10.96.1.0 upwards (inside the lab's service CIDR, clear of the
//! sync markers in 10.96.255.0/24), endpoints from 10.128.0.0/10 (nothing answers there; no
//! packet is ever sent to them), endpoints added by the change scenario from 10.192.0.0/16.
//! Endpoints live on the remote node, so every service uses its cluster policy chain.

use kproxy_lab::plan::REMOTE_NODE_NAME;
use serde_json::{json, Value};
use std::net::Ipv4Addr;

/// The namespace every benchmark object lives in.
pub const NAMESPACE: &str = "bench";
/// The service port every benchmark service exposes.
pub const SERVICE_PORT: u16 = 80;
/// The port its endpoints listen on (a lab pod serves it).
pub const TARGET_PORT: u16 = 8080;

/// How many services with how many endpoints each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Service count.
    pub services: usize,
    /// Ready endpoints per service.
    pub endpoints: usize,
}

impl Shape {
    /// `1,000 × 10`, as printed in tables and file names use [`Shape::slug`].
    pub fn label(&self) -> String {
        format!("{} × {}", thousands(self.services), self.endpoints)
    }

    /// `1000x10`, for CSV and file names.
    pub fn slug(&self) -> String {
        format!("{}x{}", self.services, self.endpoints)
    }

    /// Endpoints over all services.
    pub fn total_endpoints(&self) -> usize {
        self.services * self.endpoints
    }
}

/// `44000` → `44,000`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The name of service `i`.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// The cluster IP of service `i`.
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i as u32)
}

/// The `j`-th endpoint of service `i` in a cluster of `shape`.
pub fn endpoint_ip(shape: Shape, i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * shape.endpoints + j) as u32)
}

/// The `n`-th address the change scenario adds.
pub fn added_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 192, 0, 0)) + (n % 60_000) as u32 + 1)
}

/// Service `i` (ClusterIP, one TCP port) with cluster IP `ip`.
pub fn service(name: &str, ip: Ipv4Addr) -> Value {
    let ip = ip.to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP",
                       "targetPort": TARGET_PORT}],
        },
    })
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ep {
    /// Its address.
    pub ip: Ipv4Addr,
    /// `conditions.ready` (and `serving`).
    pub ready: bool,
    /// The node it runs on.
    pub node: String,
}

impl Ep {
    /// A ready endpoint on the remote node.
    pub fn remote(ip: Ipv4Addr) -> Ep {
        Ep {
            ip,
            ready: true,
            node: REMOTE_NODE_NAME.into(),
        }
    }
}

/// The EndpointSlice of service `name` holding `endpoints`.
pub fn slice(name: &str, endpoints: &[Ep]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-1"),
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|e| json!({
            "addresses": [e.ip.to_string()],
            "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false},
            "nodeName": e.node,
        })).collect::<Vec<_>>(),
    })
}

/// The endpoints of service `i` in a cluster of `shape`.
pub fn endpoints(shape: Shape, i: usize) -> Vec<Ep> {
    (0..shape.endpoints)
        .map(|j| Ep::remote(endpoint_ip(shape, i, j)))
        .collect()
}

/// Every object of a cluster of `shape`: services and their slices.
pub fn objects(shape: Shape) -> impl Iterator<Item = Value> {
    (0..shape.services).flat_map(move |i| {
        let name = service_name(i);
        [
            service(&name, cluster_ip(i)),
            slice(&name, &endpoints(shape, i)),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_apart_at_the_largest_sizes() {
        let big = Shape {
            services: 44_000,
            endpoints: 1,
        };
        assert!(cluster_ip(43_999) < Ipv4Addr::new(10, 96, 255, 0));
        let wide = Shape {
            services: 5_000,
            endpoints: 50,
        };
        assert!(endpoint_ip(wide, 4_999, 49) < Ipv4Addr::new(10, 192, 0, 0));
        assert_ne!(endpoint_ip(big, 1, 0), endpoint_ip(big, 0, 0));
        assert_eq!(thousands(250_000), "250,000");
        assert_eq!(thousands(10), "10");
    }

    #[test]
    fn a_slice_names_its_service_and_endpoints() {
        let s = slice("svc-00001", &[Ep::remote(Ipv4Addr::new(10, 128, 0, 1))]);
        assert_eq!(
            s["metadata"]["labels"]["kubernetes.io/service-name"],
            "svc-00001"
        );
        assert_eq!(s["endpoints"][0]["addresses"][0], "10.128.0.1");
        assert_eq!(s["endpoints"][0]["conditions"]["ready"], true);
    }
}
