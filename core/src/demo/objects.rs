//! The Kubernetes objects the demo feeds the daemon: one Service with a ClusterIP and a
//! NodePort, its EndpointSlice and this node's Node.
//!
//! Pure data, so the objects are checked against the real API types without root. They are
//! written, with a sync marker, by `kproxy_lab::sync_marker` (the same proof of programming
//! the packet-flow suite uses).

use serde_json::{json, Value};
use std::net::Ipv4Addr;

/// The Service's namespace and name.
pub const NAMESPACE: &str = "demo";
/// The Service's name.
pub const SERVICE: &str = "web";
/// The Service's cluster IP.
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
/// The Service's port.
pub const PORT: u16 = 80;
/// The port the pods serve on (the Service's `targetPort`).
pub const TARGET_PORT: u16 = 8080;
/// The Service's node port.
pub const NODE_PORT: u16 = 30080;

/// One backend of the Service: a pod on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The pod's name.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// The Service `demo/web`: a NodePort service (which also has a cluster IP) with
/// `externalTrafficPolicy: Cluster`, as most clusters run it.
pub fn service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {
            "type": "NodePort",
            "clusterIP": CLUSTER_IP.to_string(),
            "clusterIPs": [CLUSTER_IP.to_string()],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "externalTrafficPolicy": "Cluster",
            "selector": {"app": SERVICE},
            "ports": [{
                "name": "http",
                "protocol": "TCP",
                "port": PORT,
                "targetPort": TARGET_PORT,
                "nodePort": NODE_PORT,
            }],
        },
    })
}

/// The Service's EndpointSlice listing `backends` as ready pods on `node`.
pub fn endpoint_slice(backends: &[Backend], node: &str) -> Value {
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|b| {
            json!({
                "addresses": [b.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": b.name},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{SERVICE}-demo"),
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": SERVICE,
                "endpointslice.kubernetes.io/managed-by": "kproxy-demo",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": TARGET_PORT}],
        "endpoints": endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

    fn backends() -> Vec<Backend> {
        ["web-a", "web-b"]
            .iter()
            .enumerate()
            .map(|(i, n)| Backend {
                name: n.to_string(),
                ip: Ipv4Addr::new(10, 244, 1, 10 + i as u8),
            })
            .collect()
    }

    #[test]
    fn the_service_is_a_real_nodeport_service() {
        let svc: Service = serde_json::from_value(service()).unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.80"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!((port.port, port.node_port), (80, Some(30080)));
    }

    #[test]
    fn the_slice_lists_exactly_the_backends_and_names_its_service() {
        let slice: EndpointSlice =
            serde_json::from_value(endpoint_slice(&backends(), "n1")).unwrap();
        let labels = slice.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/service-name"], SERVICE);
        let addrs: Vec<String> = slice
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.clone())
            .collect();
        assert_eq!(addrs, ["10.244.1.10", "10.244.1.11"]);
        assert!(slice
            .endpoints
            .iter()
            .all(|e| e.node_name.as_deref() == Some("n1")));
        let empty: EndpointSlice = serde_json::from_value(endpoint_slice(&[], "n1")).unwrap();
        assert!(empty.endpoints.is_empty());
    }
}
