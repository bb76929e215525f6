//! Size limits: objects bigger than the API server would accept are refused.
//!
//! The size is *estimated* by adding up the lengths of the strings and lists kproxy could
//! read, plus a small fixed cost per item — cheap (no serialisation, no allocation) and close
//! enough to catch a 1 MB object, which the API server itself would have refused (its request
//! limit is about 1.5 MB, etcd's default value limit 1.5 MiB).

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The largest estimated object kproxy accepts: 1 MiB.
pub const MAX_OBJECT_BYTES: usize = 1 << 20;
/// Upstream's limit on all annotations of one object together (`TotalAnnotationSizeLimitB`).
pub const MAX_ANNOTATION_BYTES: usize = 256 << 10;
/// Upstream's limit on endpoints per EndpointSlice.
pub const MAX_SLICE_ENDPOINTS: usize = 1000;
/// Upstream's limit on ports per EndpointSlice.
pub const MAX_SLICE_PORTS: usize = 20_000;
/// Upstream's limit on addresses per endpoint.
pub const MAX_ENDPOINT_ADDRESSES: usize = 100;
/// Upstream's limit on zone hints (and node hints) per endpoint.
pub const MAX_HINTS: usize = 8;

/// Fixed cost counted per list item or map entry (field names, punctuation).
const ITEM: usize = 16;

fn opt(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, |s| s.len() + ITEM)
}

fn strings(v: &Option<Vec<String>>) -> usize {
    v.as_ref()
        .map_or(0, |v| v.iter().map(|s| s.len() + ITEM).sum())
}

fn map(m: &Option<BTreeMap<String, String>>) -> usize {
    m.as_ref()
        .map_or(0, |m| m.iter().map(|(k, v)| k.len() + v.len() + ITEM).sum())
}

/// The total size of an object's annotations (keys and values), as upstream counts it.
pub fn annotation_bytes(meta: &ObjectMeta) -> usize {
    meta.annotations
        .as_ref()
        .map_or(0, |m| m.iter().map(|(k, v)| k.len() + v.len()).sum())
}

/// Estimated size of the metadata fields (managed fields are not counted: kproxy never reads
/// them and the API server bounds them).
pub fn meta_bytes(meta: &ObjectMeta) -> usize {
    opt(&meta.name)
        + opt(&meta.namespace)
        + opt(&meta.generate_name)
        + opt(&meta.uid)
        + opt(&meta.resource_version)
        + map(&meta.labels)
        + map(&meta.annotations)
        + strings(&meta.finalizers)
        + meta.owner_references.as_ref().map_or(0, |o| {
            o.iter()
                .map(|r| r.api_version.len() + r.kind.len() + r.name.len() + r.uid.len() + ITEM)
                .sum()
        })
}

/// Estimated size of a Service.
pub fn service_bytes(svc: &Service) -> usize {
    let mut n = meta_bytes(&svc.metadata);
    if let Some(spec) = &svc.spec {
        n += opt(&spec.cluster_ip)
            + strings(&spec.cluster_ips)
            + strings(&spec.external_ips)
            + opt(&spec.external_name)
            + strings(&spec.ip_families)
            + opt(&spec.load_balancer_ip)
            + strings(&spec.load_balancer_source_ranges)
            + map(&spec.selector)
            + opt(&spec.type_)
            + opt(&spec.traffic_distribution);
        n += spec.ports.as_ref().map_or(0, |ports| {
            ports
                .iter()
                .map(|p| opt(&p.name) + opt(&p.protocol) + opt(&p.app_protocol) + 4 * ITEM)
                .sum()
        });
    }
    if let Some(ingress) = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
    {
        n += ingress
            .iter()
            .map(|i| opt(&i.ip) + opt(&i.hostname) + opt(&i.ip_mode) + ITEM)
            .sum::<usize>();
    }
    n
}

/// Estimated size of an EndpointSlice.
pub fn slice_bytes(slice: &EndpointSlice) -> usize {
    let mut n = meta_bytes(&slice.metadata) + slice.address_type.len();
    n += slice.ports.as_ref().map_or(0, |ports| {
        ports
            .iter()
            .map(|p| opt(&p.name) + opt(&p.protocol) + opt(&p.app_protocol) + 2 * ITEM)
            .sum()
    });
    for ep in &slice.endpoints {
        n += ep.addresses.iter().map(|a| a.len() + ITEM).sum::<usize>()
            + opt(&ep.hostname)
            + opt(&ep.node_name)
            + opt(&ep.zone)
            + map(&ep.deprecated_topology)
            + 4 * ITEM;
        if let Some(hints) = &ep.hints {
            n += hints
                .for_zones
                .as_ref()
                .map_or(0, |z| z.iter().map(|z| z.name.len() + ITEM).sum::<usize>());
            n += hints
                .for_nodes
                .as_ref()
                .map_or(0, |z| z.iter().map(|z| z.name.len() + ITEM).sum::<usize>());
        }
        if let Some(t) = &ep.target_ref {
            n += opt(&t.name) + opt(&t.namespace) + opt(&t.uid) + opt(&t.kind) + ITEM;
        }
    }
    n
}

/// Estimated size of a Node (the parts that can grow: addresses, CIDRs, taints, images).
pub fn node_bytes(node: &Node) -> usize {
    let mut n = meta_bytes(&node.metadata);
    if let Some(spec) = &node.spec {
        n += opt(&spec.pod_cidr) + strings(&spec.pod_cidrs) + opt(&spec.provider_id);
        n += spec.taints.as_ref().map_or(0, |t| {
            t.iter()
                .map(|t| t.key.len() + t.effect.len() + opt(&t.value) + ITEM)
                .sum()
        });
    }
    if let Some(status) = &node.status {
        n += status.addresses.as_ref().map_or(0, |a| {
            a.iter()
                .map(|a| a.address.len() + a.type_.len() + ITEM)
                .sum()
        });
        n += status.images.as_ref().map_or(0, |images| {
            images
                .iter()
                .map(|i| strings(&i.names) + ITEM)
                .sum::<usize>()
        });
    }
    n
}

/// Checks the limits every object shares; `Err` carries the reason.
pub fn check_meta(meta: &ObjectMeta, estimated: usize) -> Result<(), String> {
    let annotations = annotation_bytes(meta);
    if annotations > MAX_ANNOTATION_BYTES {
        return Err(format!(
            "annotations total {annotations} bytes, over the API limit of {MAX_ANNOTATION_BYTES}"
        ));
    }
    if estimated > MAX_OBJECT_BYTES {
        return Err(format!(
            "object is about {estimated} bytes, over the limit of {MAX_OBJECT_BYTES}"
        ));
    }
    Ok(())
}
