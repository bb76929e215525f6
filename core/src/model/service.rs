//! A `Service` validated into [`ServiceInfo`]: the fields a service proxy uses, parsed once.
//!
//! Follows upstream's `newBaseServiceInfo` (pkg/proxy/serviceport.go) and the helpers in
//! pkg/api/v1/service: defaults are applied here (type `ClusterIP`, protocol TCP, affinity
//! timeout 10800 s, traffic policies `Cluster`), and `externalTrafficPolicy: Local` is kept
//! only when the service is externally accessible by type, as upstream's `ExternalPolicyLocal`.
//!
//! kproxy's own annotation:
//!
//! - [`ANNOTATION_IPVS_SCHEDULER`] (`kproxy.io/ipvs-scheduler`): the IPVS scheduler for this
//!   service's ports (`rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`, …), overriding the IPVS plugin's
//!   default. Dataplanes other than IPVS ignore it. A malformed value (not 1–15 characters of
//!   lowercase letters and digits) makes the service invalid; a well-formed name the kernel
//!   does not know is for the IPVS plugin to refuse.

use super::{
    parse_cidr, parse_ip, parse_protocol, shorten, size, valid_port, Accepted, Ignored, Invalid,
    NamespacedName, ObjectKind,
};
use crate::source::LABEL_SERVICE_PROXY_NAME;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kproxy_plugin_api::model::{
    Cidr, IpAddr, IpMode, LoadBalancerIngress, Protocol, SessionAffinity, TrafficPolicy,
};
use std::collections::HashSet;

/// kproxy's annotation choosing the IPVS scheduler of a service (see the module docs).
pub const ANNOTATION_IPVS_SCHEDULER: &str = "kproxy.io/ipvs-scheduler";
/// The legacy annotation that limits load-balancer sources when
/// `spec.loadBalancerSourceRanges` is empty (comma-separated CIDRs), as upstream's
/// `GetLoadBalancerSourceRanges` reads it.
pub const ANNOTATION_LB_SOURCE_RANGES: &str =
    "service.beta.kubernetes.io/load-balancer-source-ranges";
/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// Upstream's largest allowed affinity timeout (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ServiceType {
    /// Reachable on its cluster IPs only (plus `externalIPs` when set).
    #[default]
    ClusterIp,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable through an external load balancer.
    LoadBalancer,
}

/// `spec.trafficDistribution`. Recorded for completeness: upstream kube-proxy does not read the
/// field itself — the EndpointSlice controller turns it into hints (`PreferClose` and
/// `PreferSameZone` into zone hints, `PreferSameNode` into node hints plus zone hints), and the
/// proxy follows the hints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TrafficDistribution {
    /// `PreferClose` (the older name of `PreferSameZone`).
    PreferClose,
    /// `PreferSameZone`.
    PreferSameZone,
    /// `PreferSameNode`.
    PreferSameNode,
    /// A value this version does not know (newer API); ignored, as the proxy ignores the field.
    Other(String),
}

/// `targetPort` of a service port: a number, or the name of a container port, which every
/// endpoint may map to a different number (resolved from the EndpointSlice's ports).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortInfo {
    /// The port's name (empty for a single unnamed port); EndpointSlice ports match it.
    pub name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The service port number.
    pub port: u16,
    /// The target port (defaults to `port`).
    pub target_port: TargetPort,
    /// The node port, 0 when none.
    pub node_port: u16,
}

/// A validated Service: what kproxy needs to program it, with upstream's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace and name.
    pub id: NamespacedName,
    /// `spec.type` (never ExternalName: those are ignored).
    pub service_type: ServiceType,
    /// The cluster IPs, at most one per family, in the object's order.
    pub cluster_ips: Vec<IpAddr>,
    /// The ports, in the object's order; `(port, protocol)` and names are unique.
    pub ports: Vec<PortInfo>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress` entries that carry an IP (hostname-only ones are skipped,
    /// as upstream does); `ipMode` unset means VIP, an unknown value is treated as not-VIP
    /// (upstream's `IsVIPMode`).
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
    /// `spec.loadBalancerSourceRanges`, or when empty the legacy annotation
    /// [`ANNOTATION_LB_SOURCE_RANGES`]; empty means no restriction.
    pub load_balancer_source_ranges: Vec<Cidr>,
    /// `spec.sessionAffinity` and its timeout (0 without affinity, as upstream).
    pub session_affinity: SessionAffinity,
    /// `spec.internalTrafficPolicy` (default Cluster).
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.externalTrafficPolicy` as in force: `Local` only when the service type makes it
    /// externally accessible (upstream's `ExternalPolicyLocal`).
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort` when upstream serves it (type LoadBalancer with
    /// `externalTrafficPolicy: Local`), else 0.
    pub health_check_node_port: u16,
    /// `spec.trafficDistribution`.
    pub traffic_distribution: Option<TrafficDistribution>,
    /// The IPVS scheduler from [`ANNOTATION_IPVS_SCHEDULER`].
    pub ipvs_scheduler: Option<String>,
}

impl ServiceInfo {
    /// Validates a Service. Headless, ExternalName, IP-less and other-proxy services are
    /// [`Accepted::Ignored`]; broken ones are [`Invalid`].
    pub fn from_service(svc: &Service) -> Result<Accepted<ServiceInfo>, Invalid> {
        let id = NamespacedName::of(&svc.metadata);
        let invalid = |reason: String| Invalid::new(ObjectKind::Service, &id, reason);
        if id.name.is_empty() {
            return Err(invalid("metadata.name is missing".into()));
        }
        size::check_meta(&svc.metadata, size::service_bytes(svc)).map_err(invalid)?;
        let labels = svc.metadata.labels.as_ref();
        if let Some(proxy) = labels.and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME)) {
            return Ok(Accepted::Ignored(Ignored::OtherProxy(proxy.clone())));
        }
        let Some(spec) = &svc.spec else {
            return Ok(Accepted::Ignored(Ignored::NoClusterIp));
        };

        let service_type = match spec.type_.as_deref() {
            None | Some("") | Some("ClusterIP") => ServiceType::ClusterIp,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => return Ok(Accepted::Ignored(Ignored::ExternalName)),
            Some(other) => return Err(invalid(format!("spec.type {} is unknown", shorten(other)))),
        };

        // Cluster IPs: `clusterIPs` when set, else the single `clusterIP` (version skew).
        let listed: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            (_, Some(ip)) => vec![ip.as_str()],
            _ => Vec::new(),
        };
        if listed.first().is_none_or(|ip| ip.is_empty()) {
            return Ok(Accepted::Ignored(Ignored::NoClusterIp));
        }
        if listed.first() == Some(&"None") {
            return Ok(Accepted::Ignored(Ignored::Headless));
        }
        if listed.len() > 2 {
            return Err(invalid(format!(
                "spec.clusterIPs has {} entries, at most 2 are allowed",
                listed.len()
            )));
        }
        let mut cluster_ips = Vec::with_capacity(listed.len());
        for text in &listed {
            let ip = parse_ip(text).ok_or_else(|| {
                invalid(format!(
                    "spec.clusterIPs: {} is not an IP address",
                    shorten(text)
                ))
            })?;
            if cluster_ips.iter().any(|c: &IpAddr| c.family == ip.family) {
                return Err(invalid(
                    "spec.clusterIPs holds two addresses of the same family".into(),
                ));
            }
            cluster_ips.push(ip);
        }

        let ports = parse_ports(spec.ports.as_deref().unwrap_or_default()).map_err(invalid)?;

        let external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .map(|text| {
                parse_ip(text).ok_or_else(|| {
                    invalid(format!(
                        "spec.externalIPs: {} is not an IP address",
                        shorten(text)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut load_balancer_ingress = Vec::new();
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for ing in ingress.into_iter().flatten() {
            let Some(text) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue;
            };
            let ip = parse_ip(text).ok_or_else(|| {
                invalid(format!(
                    "status.loadBalancer.ingress: {} is not an IP address",
                    shorten(text)
                ))
            })?;
            let ip_mode = match ing.ip_mode.as_deref() {
                None | Some("VIP") => IpMode::Vip,
                Some(_) => IpMode::Proxy,
            };
            load_balancer_ingress.push(LoadBalancerIngress { ip, ip_mode });
        }

        let load_balancer_source_ranges = source_ranges(svc).map_err(invalid)?;

        let session_affinity = match spec.session_affinity.as_deref() {
            None | Some("") | Some("None") => SessionAffinity::default(),
            Some("ClientIP") => {
                let timeout = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                let timeout_seconds = match timeout {
                    None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                    Some(t) => u32::try_from(t)
                        .ok()
                        .filter(|t| (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(t))
                        .ok_or_else(|| {
                            invalid(format!(
                                "sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside 1–{MAX_AFFINITY_TIMEOUT_SECONDS}"
                            ))
                        })?,
                };
                SessionAffinity {
                    client_ip: true,
                    timeout_seconds,
                }
            }
            Some(other) => {
                return Err(invalid(format!(
                    "spec.sessionAffinity {} is unknown",
                    shorten(other)
                )))
            }
        };

        let policy = |field: &str, value: Option<&str>| match value {
            None | Some("") | Some("Cluster") => Ok(TrafficPolicy::Cluster),
            Some("Local") => Ok(TrafficPolicy::Local),
            Some(other) => Err(invalid(format!(
                "spec.{field} {} is unknown",
                shorten(other)
            ))),
        };
        let internal_traffic_policy = policy(
            "internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        )?;
        let etp = policy(
            "externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?;
        // Upstream `ExternallyAccessible` (by type): LoadBalancer, NodePort, or ClusterIP with
        // external IPs.
        let externally_accessible = match service_type {
            ServiceType::LoadBalancer | ServiceType::NodePort => true,
            ServiceType::ClusterIp => !external_ips.is_empty(),
        };
        let external_traffic_policy = if externally_accessible {
            etp
        } else {
            TrafficPolicy::Cluster
        };

        let health_check_node_port = if service_type == ServiceType::LoadBalancer
            && external_traffic_policy == TrafficPolicy::Local
        {
            match spec.health_check_node_port {
                None | Some(0) => 0,
                Some(p) => valid_port(p).ok_or_else(|| {
                    invalid(format!("spec.healthCheckNodePort {p} is outside 1–65535"))
                })?,
            }
        } else {
            0
        };

        let traffic_distribution = spec.traffic_distribution.as_deref().map(|t| match t {
            "PreferClose" => TrafficDistribution::PreferClose,
            "PreferSameZone" => TrafficDistribution::PreferSameZone,
            "PreferSameNode" => TrafficDistribution::PreferSameNode,
            other => TrafficDistribution::Other(other.to_string()),
        });

        let ipvs_scheduler = match svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_IPVS_SCHEDULER))
        {
            None => None,
            Some(s)
                if (1..=15).contains(&s.len())
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
            {
                Some(s.clone())
            }
            Some(s) => {
                return Err(invalid(format!(
                    "annotation {ANNOTATION_IPVS_SCHEDULER} {} is not an IPVS scheduler name",
                    shorten(s)
                )))
            }
        };

        Ok(Accepted::Valid(ServiceInfo {
            id,
            service_type,
            cluster_ips,
            ports,
            external_ips,
            load_balancer_ingress,
            load_balancer_source_ranges,
            session_affinity,
            internal_traffic_policy,
            external_traffic_policy,
            health_check_node_port,
            traffic_distribution,
            ipvs_scheduler,
        }))
    }

    /// Whether `internalTrafficPolicy: Local` is set.
    pub fn internal_policy_local(&self) -> bool {
        self.internal_traffic_policy == TrafficPolicy::Local
    }

    /// Whether `externalTrafficPolicy: Local` is in force (upstream's `ExternalPolicyLocal`).
    pub fn external_policy_local(&self) -> bool {
        self.external_traffic_policy == TrafficPolicy::Local
    }
}

/// Validates `spec.ports`.
fn parse_ports(ports: &[k8s_openapi::api::core::v1::ServicePort]) -> Result<Vec<PortInfo>, String> {
    let mut out = Vec::with_capacity(ports.len());
    let mut seen_port = HashSet::new();
    let mut seen_name = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let name = p.name.clone().unwrap_or_default();
        let at = if name.is_empty() {
            format!("spec.ports[{i}]")
        } else {
            format!("spec.ports[{i}] ({})", shorten(&name))
        };
        let port = valid_port(p.port)
            .ok_or_else(|| format!("{at}: port {} is outside 1–65535", p.port))?;
        let protocol = parse_protocol(p.protocol.as_deref()).ok_or_else(|| {
            format!(
                "{at}: protocol {} is not TCP, UDP or SCTP",
                shorten(p.protocol.as_deref().unwrap_or_default())
            )
        })?;
        let node_port = match p.node_port {
            None | Some(0) => 0,
            Some(n) => {
                valid_port(n).ok_or_else(|| format!("{at}: nodePort {n} is outside 1–65535"))?
            }
        };
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(0)) => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(
                valid_port(*n).ok_or_else(|| format!("{at}: targetPort {n} is outside 1–65535"))?,
            ),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(
                    valid_port(n)
                        .ok_or_else(|| format!("{at}: targetPort {n} is outside 1–65535"))?,
                ),
                Err(_) if valid_port_name(s) => TargetPort::Name(s.clone()),
                Err(_) => {
                    return Err(format!(
                        "{at}: targetPort {} is neither a port number nor a port name",
                        shorten(s)
                    ))
                }
            },
        };
        if name.len() > 63 {
            return Err(format!("{at}: name is longer than 63 characters"));
        }
        if !seen_port.insert((port, protocol)) {
            return Err(format!(
                "{at}: port {port}/{} is listed twice",
                protocol.as_str()
            ));
        }
        if !seen_name.insert(name.clone()) {
            return Err(format!("{at}: port name is listed twice"));
        }
        out.push(PortInfo {
            name,
            protocol,
            port,
            target_port,
            node_port,
        });
    }
    Ok(out)
}

/// An IANA service name as upstream validates named ports: 1–15 characters of lowercase
/// letters, digits and `-`, with at least one letter.
fn valid_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
}

/// `spec.loadBalancerSourceRanges`, falling back to the legacy annotation.
fn source_ranges(svc: &Service) -> Result<Vec<Cidr>, String> {
    let spec_ranges = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.as_ref())
        .filter(|r| !r.is_empty());
    if let Some(ranges) = spec_ranges {
        return ranges
            .iter()
            .map(|r| {
                parse_cidr(r).ok_or_else(|| {
                    format!(
                        "spec.loadBalancerSourceRanges: {} is not a CIDR",
                        shorten(r)
                    )
                })
            })
            .collect();
    }
    let annotation = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LB_SOURCE_RANGES))
        .map(|v| v.trim())
        .filter(|v| !v.is_empty());
    match annotation {
        None => Ok(Vec::new()),
        Some(value) => value
            .split(',')
            .map(|r| {
                parse_cidr(r).ok_or_else(|| {
                    format!(
                        "annotation {ANNOTATION_LB_SOURCE_RANGES}: {} is not a CIDR",
                        shorten(r)
                    )
                })
            })
            .collect(),
    }
}
