//! The Kubernetes objects the demo feeds the daemon: one Service with a ClusterIP and a
//! NodePort, its EndpointSlice, this node's Node, and a sync marker.
//!
//! Pure data, so the objects are checked against the real API types without root. They are
//! written as one multi-document YAML file, replaced atomically, so the daemon's manifest source
//! always sees a whole set.
//!
//! The *sync marker* is a Service without endpoints whose cluster IP changes with every write.
//! The dataplane rejects traffic to a service with no endpoints, so once a connection from the
//! node to the marker is refused, the sync that carried the whole file has reached the kernel
//! (the same proof the packet-flow suite uses; it needs no knowledge of how rules are stored).

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

/// The marker's cluster IP for write number `n`: cycles through 10.96.255.10–209, so the
/// previous write's marker is never the current one.
pub fn marker_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 255, 10 + (n % 200) as u8)
}

/// The sync marker for write number `n` (see the module docs).
pub fn marker(n: u32) -> Value {
    let ip = marker_ip(n).to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sync-marker", "namespace": "kproxy-demo"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [{"name": "marker", "port": 1, "protocol": "TCP", "targetPort": 1}],
        },
    })
}

/// `objects` as one multi-document YAML text.
pub fn to_yaml(objects: &[Value]) -> Result<String, yaml_serde::Error> {
    let mut text = String::from("# Written by `kproxy demo`; removed when the demo ends.\n");
    for obj in objects {
        text.push_str("---\n");
        text.push_str(&yaml_serde::to_string(obj)?);
    }
    Ok(text)
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

    #[test]
    fn markers_differ_from_one_write_to_the_next() {
        assert_ne!(marker_ip(1), marker_ip(2));
        assert_ne!(marker_ip(199), marker_ip(200));
        let m: Service = serde_json::from_value(marker(3)).unwrap();
        assert_eq!(m.spec.unwrap().cluster_ip, Some(marker_ip(3).to_string()));
    }

    #[test]
    fn the_yaml_text_round_trips() {
        let objs = vec![service(), endpoint_slice(&backends(), "n1"), marker(1)];
        let text = to_yaml(&objs).unwrap();
        let back: Vec<Value> = text
            .split("\n---\n")
            .skip(1)
            .map(|doc| yaml_serde::from_str(doc).unwrap())
            .collect();
        assert_eq!(back, objs);
    }
}
