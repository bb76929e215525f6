//! The validated internal form of the API objects kproxy consumes (Service, EndpointSlice, Node).
//!
//! Each API object goes through one conversion function that either accepts it
//! ([`Accepted::Valid`]), sets it aside on purpose ([`Accepted::Ignored`], e.g. a headless
//! service — upstream ignores these too, so this is not a warning), or refuses it with an
//! [`Invalid`] error that names the object and the reason. A refused object is skipped by the
//! caller (warning + counter); nothing here panics, whatever the input.
//!
//! The API server validates objects before kube-proxy ever sees them; kproxy also reads
//! manifest folders written by hand, so it checks what upstream's validation would have checked
//! for the fields a service proxy relies on (addresses, ports, protocols, policies, sizes).
//!
//! - [`service::ServiceInfo`] from a `Service`
//! - [`slice::SliceInfo`] from an `EndpointSlice`
//! - [`node::NodeInfo`] from a `Node`

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kproxy_plugin_api::model::{Cidr, IpAddr, Protocol};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

pub mod node;
pub mod service;
pub mod size;
pub mod slice;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
pub(crate) mod tests;

/// The namespace used when an object carries none (hand-written manifests often omit it); the
/// API server defaults it the same way.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A namespace and a name: identifies a Service, an EndpointSlice, or (namespace empty) a Node.
///
/// The parts are shared strings: Topology files every object under its name in several
/// indexes, and clones cost a reference count rather than an allocation (at 44,000 services
/// the copies were a sizeable part of the daemon's memory).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    /// The namespace (empty for cluster-scoped objects such as Nodes).
    pub namespace: Arc<str>,
    /// The name.
    pub name: Arc<str>,
}

impl Default for NamespacedName {
    fn default() -> Self {
        NamespacedName::new("", "")
    }
}

impl NamespacedName {
    /// Builds a name.
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        NamespacedName {
            namespace: namespace.as_ref().into(),
            name: name.as_ref().into(),
        }
    }

    /// The identity of a namespaced object from its metadata; a missing namespace becomes
    /// [`DEFAULT_NAMESPACE`], a missing name stays empty (conversion refuses that).
    pub fn of(meta: &ObjectMeta) -> Self {
        let namespace = meta
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        NamespacedName::new(namespace, meta.name.as_deref().unwrap_or_default())
    }

    /// [`NamespacedName::of`], taking the namespace's shared copy from `names` (a cluster has
    /// few namespaces and many objects in each).
    pub fn of_interned(meta: &ObjectMeta, names: &mut Interner) -> Self {
        let of = NamespacedName::of(meta);
        NamespacedName {
            namespace: names.get(&of.namespace),
            name: of.name,
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Shares the strings that repeat across endpoints — node names, zones, hint names — so each
/// distinct value is stored once however many endpoints carry it (at 250,000 endpoints on a
/// few thousand nodes, one `String` per endpoint would be most of the model's memory).
///
/// Values no longer held by anything but the interner are dropped whenever the set has doubled
/// since the last sweep, so a stream of ever-new names (typos, churned nodes) cannot grow it
/// without bound.
#[derive(Debug, Default)]
pub struct Interner {
    values: HashSet<Arc<str>>,
    /// The size of the set after the last sweep.
    swept: usize,
}

impl Interner {
    /// The shared copy of `text`.
    pub fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(v) = self.values.get(text) {
            return v.clone();
        }
        if self.values.len() >= 2 * self.swept.max(512) {
            self.values.retain(|v| Arc::strong_count(v) > 1);
            self.swept = self.values.len();
        }
        let v: Arc<str> = Arc::from(text);
        self.values.insert(v.clone());
        v
    }

    /// How many distinct values are held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The kinds of object kproxy reads, for naming them in errors and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A core/v1 Service.
    Service,
    /// A discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// A core/v1 Node.
    Node,
}

impl ObjectKind {
    /// The Kubernetes kind name (`Service`, `EndpointSlice`, `Node`), also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object that kproxy refuses: which one and why. The caller logs it as a warning, counts
/// it, and carries on with every other object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object} is invalid: {reason}")]
pub struct Invalid {
    /// The object's kind.
    pub kind: ObjectKind,
    /// The object's namespace and name (`<unnamed>` when it has none).
    pub object: NamespacedName,
    /// What is wrong, naming the field and the value.
    pub reason: String,
}

impl Invalid {
    /// Builds the error for `object`.
    pub fn new(kind: ObjectKind, object: &NamespacedName, reason: impl Into<String>) -> Self {
        let mut object = object.clone();
        if object.name.is_empty() {
            object.name = "<unnamed>".into();
        }
        Invalid {
            kind,
            object,
            reason: reason.into(),
        }
    }
}

/// Why an object is set aside without a warning: upstream kube-proxy ignores these too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// A headless service (`clusterIP: None`) or a slice labelled `service.kubernetes.io/headless`.
    Headless,
    /// A service of type `ExternalName`: DNS only, nothing to proxy.
    ExternalName,
    /// A service without any cluster IP (upstream's `ShouldSkipService`).
    NoClusterIp,
    /// An object labelled `service.kubernetes.io/service-proxy-name`: another proxy owns it.
    OtherProxy(String),
    /// An EndpointSlice of address type FQDN: not proxied by kube-proxy.
    FqdnSlice,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::Headless => f.write_str("headless"),
            Ignored::ExternalName => f.write_str("type ExternalName"),
            Ignored::NoClusterIp => f.write_str("no cluster IP"),
            Ignored::OtherProxy(p) => write!(f, "handled by service proxy `{p}`"),
            Ignored::FqdnSlice => f.write_str("address type FQDN"),
        }
    }
}

/// The outcome of converting an object that is not invalid.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted<T> {
    /// The object is proxied; here is its internal form.
    Valid(T),
    /// The object is deliberately not proxied (not a warning).
    Ignored(Ignored),
}

impl<T> Accepted<T> {
    /// The internal form, if the object is proxied.
    pub fn valid(self) -> Option<T> {
        match self {
            Accepted::Valid(v) => Some(v),
            Accepted::Ignored(_) => None,
        }
    }
}

/// Parses an IP address the way Kubernetes' `ParseIPSloppy` does: IPv4 octets may carry
/// leading zeros (read as decimal, as legacy objects may hold them), and an IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`) counts as IPv4, as Go's `net.ParseIP` treats it.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    match text.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => Some(match v6.to_ipv4_mapped() {
            Some(v4) if text.contains('.') => v4.into(),
            _ => v6.into(),
        }),
        Ok(ip) => Some(ip.into()),
        Err(_) => parse_ipv4_sloppy(text).map(IpAddr::from),
    }
}

/// IPv4 with leading zeros allowed in each decimal octet (`010.001.002.003`).
fn parse_ipv4_sloppy(text: &str) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse::<u8>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(std::net::Ipv4Addr::from(octets))
}

/// Parses a CIDR, trimming surrounding white space (upstream trims
/// `loadBalancerSourceRanges`, whose validation mistakenly allows padding); IPv4 octets may
/// carry leading zeros as in [`parse_ip`].
pub fn parse_cidr(text: &str) -> Option<Cidr> {
    let text = text.trim();
    let (addr, len) = text.split_once('/')?;
    let ip = parse_ip(addr)?;
    let max = if ip.is_v4() { 32 } else { 128 };
    let len = len.parse::<u8>().ok().filter(|l| *l <= max)?;
    Cidr::new(ip, len)
}

/// Parses a Kubernetes protocol name; a missing protocol means TCP (the API default).
pub fn parse_protocol(text: Option<&str>) -> Option<Protocol> {
    match text {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some("SCTP") => Some(Protocol::Sctp),
        Some(_) => None,
    }
}

/// A port number in 1–65535.
pub fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// Shortens a value for an error message so that a 1 MB garbage string does not end up in a
/// log line.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return format!("{text:?}");
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..end], text.len())
}
