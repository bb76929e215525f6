//! An `EndpointSlice` validated into [`SliceInfo`], following upstream's
//! pkg/proxy/endpointslicecache.go: the service comes from the `kubernetes.io/service-name`
//! label; each endpoint is represented by `addresses[0]`; a nil `ready` or `serving` condition
//! means true and a nil `terminating` means false (upstream's code and the API's documented
//! defaults); ports without a name or without a (non-zero) number are skipped, as upstream
//! skips them; endpoints without an address are skipped.

use super::{
    parse_ip, parse_protocol, shorten, size, Accepted, Ignored, Interner, Invalid, NamespacedName,
    ObjectKind,
};
use crate::source::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_plugin_api::model::{IpAddr, IpFamily, Protocol};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

/// The label naming the service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The annotation the endpoint controllers set to the time of the change that caused this
/// version of the slice (RFC 3339); the start of network-programming latency.
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";

/// One usable port of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlicePort {
    /// The name; matches the service port of the same name.
    pub name: String,
    /// The port number on the endpoints (a named `targetPort` resolved for this slice).
    pub port: u16,
    /// The protocol; must equal the service port's.
    pub protocol: Protocol,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SliceEndpoint {
    /// `addresses[0]`, of the slice's family.
    pub ip: IpAddr,
    /// `conditions.ready` (nil = true).
    pub ready: bool,
    /// `conditions.serving` (nil = true, as upstream's endpointslicecache.go).
    pub serving: bool,
    /// `conditions.terminating` (nil = false).
    pub terminating: bool,
    /// `nodeName`, empty when unset (shared: many endpoints run on one node).
    pub node_name: Arc<str>,
    /// `zone`, empty when unset (shared).
    pub zone: Arc<str>,
    /// `hints.forZones` names, sorted and unique (empty: no zone hints).
    pub zone_hints: Box<[Arc<str>]>,
    /// `hints.forNodes` names, sorted and unique (empty: no node hints).
    pub node_hints: Box<[Arc<str>]>,
}

/// A validated EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// The slice's own namespace and name.
    pub id: NamespacedName,
    /// The service it belongs to (same namespace, name from [`LABEL_SERVICE_NAME`]).
    pub service: NamespacedName,
    /// The address family (`addressType` IPv4 or IPv6).
    pub family: IpFamily,
    /// The usable ports.
    pub ports: Vec<SlicePort>,
    /// The endpoints that have an address, in the object's order.
    pub endpoints: Vec<SliceEndpoint>,
    /// [`ANNOTATION_LAST_CHANGE_TRIGGER_TIME`], when present and well-formed.
    pub trigger_time: Option<SystemTime>,
}

impl SliceInfo {
    /// Validates an EndpointSlice. FQDN slices and slices of headless or other-proxy services
    /// are [`Accepted::Ignored`]; broken ones are [`Invalid`].
    pub fn from_slice(slice: &EndpointSlice) -> Result<Accepted<SliceInfo>, Invalid> {
        Self::from_slice_with(slice, &mut Interner::default())
    }

    /// [`SliceInfo::from_slice`], taking node, zone and hint names from `names`, so that
    /// endpoints on the same node share one copy of its name across every slice converted
    /// with the same interner.
    pub fn from_slice_with(
        slice: &EndpointSlice,
        names: &mut Interner,
    ) -> Result<Accepted<SliceInfo>, Invalid> {
        let id = NamespacedName::of_interned(&slice.metadata, names);
        let invalid = |reason: String| Invalid::new(ObjectKind::EndpointSlice, &id, reason);
        if id.name.is_empty() {
            return Err(invalid("metadata.name is missing".into()));
        }
        size::check_meta(&slice.metadata, size::slice_bytes(slice)).map_err(invalid)?;
        if slice.endpoints.len() > size::MAX_SLICE_ENDPOINTS {
            return Err(invalid(format!(
                "{} endpoints, over the API limit of {}",
                slice.endpoints.len(),
                size::MAX_SLICE_ENDPOINTS
            )));
        }
        let port_count = slice.ports.as_ref().map_or(0, Vec::len);
        if port_count > size::MAX_SLICE_PORTS {
            return Err(invalid(format!(
                "{port_count} ports, over the API limit of {}",
                size::MAX_SLICE_PORTS
            )));
        }

        let labels = slice.metadata.labels.as_ref();
        if let Some(proxy) = labels.and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME)) {
            return Ok(Accepted::Ignored(Ignored::OtherProxy(proxy.clone())));
        }
        if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
            return Ok(Accepted::Ignored(Ignored::Headless));
        }
        let family = match slice.address_type.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            "FQDN" => return Ok(Accepted::Ignored(Ignored::FqdnSlice)),
            other => {
                return Err(invalid(format!(
                    "addressType {} is not IPv4, IPv6 or FQDN",
                    shorten(other)
                )))
            }
        };
        let service_name = labels
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(format!("label {LABEL_SERVICE_NAME} is missing")))?;
        let service = NamespacedName {
            namespace: id.namespace.clone(),
            name: service_name.as_str().into(),
        };

        let mut ports = Vec::with_capacity(port_count);
        let mut seen = HashSet::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            let protocol = parse_protocol(p.protocol.as_deref()).ok_or_else(|| {
                invalid(format!(
                    "ports[{i}]: protocol {} is not TCP, UDP or SCTP",
                    shorten(p.protocol.as_deref().unwrap_or_default())
                ))
            })?;
            // Upstream skips ports without a name or a number (nil name, nil or 0 port).
            let (Some(name), Some(number)) = (&p.name, p.port) else {
                continue;
            };
            if number == 0 {
                continue;
            }
            let port = u16::try_from(number)
                .ok()
                .ok_or_else(|| invalid(format!("ports[{i}]: port {number} is outside 1–65535")))?;
            if !seen.insert(name.as_str()) {
                return Err(invalid(format!(
                    "ports[{i}]: port name {} is listed twice",
                    shorten(name)
                )));
            }
            ports.push(SlicePort {
                name: name.clone(),
                port,
                protocol,
            });
        }

        let mut endpoints = Vec::with_capacity(slice.endpoints.len());
        for (i, ep) in slice.endpoints.iter().enumerate() {
            if ep.addresses.len() > size::MAX_ENDPOINT_ADDRESSES {
                return Err(invalid(format!(
                    "endpoints[{i}]: {} addresses, over the API limit of {}",
                    ep.addresses.len(),
                    size::MAX_ENDPOINT_ADDRESSES
                )));
            }
            // Every address must be well-formed and of the slice's family, though only the
            // first one is used (as upstream).
            for text in &ep.addresses {
                let ip = parse_ip(text).ok_or_else(|| {
                    invalid(format!(
                        "endpoints[{i}]: address {} is not an IP address",
                        shorten(text)
                    ))
                })?;
                if ip.family != family {
                    return Err(invalid(format!(
                        "endpoints[{i}]: address {} is not {}",
                        shorten(text),
                        slice.address_type
                    )));
                }
            }
            let Some(ip) = ep.addresses.first().and_then(|a| parse_ip(a)) else {
                continue; // no address: upstream skips the endpoint
            };
            let conditions = ep.conditions.clone().unwrap_or_default();
            let (zone_hints, node_hints) = match &ep.hints {
                None => (Box::default(), Box::default()),
                Some(h) => {
                    let zones: Vec<&str> = h
                        .for_zones
                        .iter()
                        .flatten()
                        .map(|z| z.name.as_str())
                        .collect();
                    let nodes: Vec<&str> = h
                        .for_nodes
                        .iter()
                        .flatten()
                        .map(|n| n.name.as_str())
                        .collect();
                    if zones.len() > size::MAX_HINTS || nodes.len() > size::MAX_HINTS {
                        return Err(invalid(format!(
                            "endpoints[{i}]: more than {} zone or node hints",
                            size::MAX_HINTS
                        )));
                    }
                    (sorted_unique(zones, names), sorted_unique(nodes, names))
                }
            };
            endpoints.push(SliceEndpoint {
                ip,
                ready: conditions.ready.unwrap_or(true),
                serving: conditions.serving.unwrap_or(true),
                terminating: conditions.terminating.unwrap_or(false),
                node_name: names.get(ep.node_name.as_deref().unwrap_or_default()),
                zone: names.get(ep.zone.as_deref().unwrap_or_default()),
                zone_hints,
                node_hints,
            });
        }

        let trigger_time = slice
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME))
            .and_then(|t| parse_rfc3339(t));

        Ok(Accepted::Valid(SliceInfo {
            id,
            service,
            family,
            ports,
            endpoints,
            trigger_time,
        }))
    }

    /// Whether any endpoint carries a zone or node hint (such services are re-resolved when
    /// the node's zone changes).
    pub fn has_hints(&self) -> bool {
        self.endpoints
            .iter()
            .any(|e| !e.zone_hints.is_empty() || !e.node_hints.is_empty())
    }
}

fn sorted_unique(mut items: Vec<&str>, names: &mut Interner) -> Box<[Arc<str>]> {
    items.sort_unstable();
    items.dedup();
    items.into_iter().map(|n| names.get(n)).collect()
}

/// Parses an RFC 3339 time; `None` when malformed (upstream logs and ignores a bad trigger
/// time rather than refusing the slice).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    text.trim()
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(SystemTime::from)
}
