//! Chain names. Fixed chains are upstream's with `KPROXY-` for `KUBE-`; per-service and
//! per-endpoint chains are built exactly as upstream builds them (prefix + the first 16 base32
//! characters of a SHA-256), so `KPROXY-SVC-XPGD46QRK7WJZT7O` is the chain upstream calls
//! `KUBE-SVC-XPGD46QRK7WJZT7O`, and an operator can match the two side by side.
//!
//! Every name starts with [`PREFIX`]: that is how a full sync finds stale chains and how
//! `kproxy cleanup` finds everything kproxy made, without touching a kube-proxy's `KUBE-*`
//! chains. Every name fits iptables' limit of [`CHAIN_MAX`] characters.

use kproxy_plugin_api::{IpAddr, ServicePortKey};
use sha2::{Digest, Sha256};

/// The prefix of every chain kproxy makes.
pub const PREFIX: &str = "KPROXY-";

/// iptables' longest chain name (`XT_EXTENSION_MAXNAMELEN` - 1).
pub const CHAIN_MAX: usize = 28;

/// The comment every jump from a built-in chain carries starts with this, so cleanup can tell
/// kproxy's jumps from anyone else's.
pub const JUMP_COMMENT_PREFIX: &str = "kproxy ";

/// Dispatch for cluster, external and load-balancer IPs (nat), and the reject/drop rules for
/// service IPs without endpoints (filter).
pub const SERVICES: &str = "KPROXY-SERVICES";
/// Filter rules for external destinations without usable endpoints.
pub const EXTERNAL_SERVICES: &str = "KPROXY-EXTERNAL-SERVICES";
/// Filter rules for node ports without usable endpoints (kproxy's split of upstream's
/// `KUBE-EXTERNAL-SERVICES`, so node ports can be dispatched by port).
pub const EXTERNAL_NODEPORTS: &str = "KPROXY-EXTERNAL-NODEPORTS";
/// Node-port dispatch (nat) and health-check node ports (filter).
pub const NODEPORTS: &str = "KPROXY-NODEPORTS";
/// Masquerades marked packets.
pub const POSTROUTING: &str = "KPROXY-POSTROUTING";
/// Sets the masquerade mark.
pub const MARK_MASQ: &str = "KPROXY-MARK-MASQ";
/// Accepts forwarded service traffic, drops conntrack-invalid packets.
pub const FORWARD: &str = "KPROXY-FORWARD";
/// Drops traffic to load-balancer IPs from sources outside `loadBalancerSourceRanges`.
pub const PROXY_FIREWALL: &str = "KPROXY-PROXY-FIREWALL";
/// The anti-martian rule for localhost node ports (upstream's copy of kubelet's
/// `KUBE-FIREWALL`).
pub const FIREWALL: &str = "KPROXY-FIREWALL";

/// Prefixes of the per-service-port chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Picks among the endpoints for `Cluster` policy (`KUBE-SVC-`).
    ClusterPolicy,
    /// Picks among node-local endpoints for `Local` policy (`KUBE-SVL-`).
    LocalPolicy,
    /// External traffic: masquerade or short-circuit, then a policy chain (`KUBE-EXT-`).
    External,
    /// `loadBalancerSourceRanges` (`KUBE-FW-`).
    Firewall,
    /// One endpoint: hairpin masquerade, affinity, DNAT (`KUBE-SEP-`).
    Endpoint,
    /// A node of a dispatch tree (kproxy's own).
    Dispatch,
}

impl Kind {
    /// The chain name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::ClusterPolicy => "KPROXY-SVC-",
            Kind::LocalPolicy => "KPROXY-SVL-",
            Kind::External => "KPROXY-EXT-",
            Kind::Firewall => "KPROXY-FW-",
            Kind::Endpoint => "KPROXY-SEP-",
            Kind::Dispatch => "KPROXY-DSP-",
        }
    }
}

/// Upstream's `ServicePortName.String()`: `namespace/name:port` (no `:` for an unnamed port).
pub fn service_port_name(key: &ServicePortKey) -> String {
    if key.port_name.is_empty() {
        format!("{}/{}", key.namespace, key.name)
    } else {
        format!("{}/{}:{}", key.namespace, key.name, key.port_name)
    }
}

/// `ip:port`, with brackets around an IPv6 address (Go's `net.JoinHostPort`).
pub fn endpoint_string(ip: IpAddr, port: u16) -> String {
    if ip.is_v4() {
        format!("{ip}:{port}")
    } else {
        format!("[{ip}]:{port}")
    }
}

/// The chain of `kind` for a service port.
pub fn service_chain(kind: Kind, key: &ServicePortKey) -> String {
    let input = format!("{}{}", service_port_name(key), key.protocol.as_str());
    format!("{}{}", kind.prefix(), hash16(&input))
}

/// The `KPROXY-SEP-` chain of one endpoint of a service port.
pub fn endpoint_chain(key: &ServicePortKey, ip: IpAddr, port: u16) -> String {
    let input = format!(
        "{}{}{}",
        service_port_name(key),
        key.protocol.as_str(),
        endpoint_string(ip, port)
    );
    format!("{}{}", Kind::Endpoint.prefix(), hash16(&input))
}

/// The chain of a dispatch tree node, from a text that identifies it (its root and prefix).
pub fn dispatch_chain(identity: &str) -> String {
    format!("{}{}", Kind::Dispatch.prefix(), hash16(identity))
}

/// The first 16 characters of the base32 (RFC 4648) encoding of SHA-256(`input`).
fn hash16(input: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input.as_bytes());
    // 16 characters of 5 bits = 80 bits = the first 10 bytes.
    let mut bits: u128 = 0;
    for b in &digest[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    (0..16)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 0x1f) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_plugin_api::Protocol;

    fn ip(s: &str) -> IpAddr {
        s.parse::<std::net::IpAddr>().unwrap().into()
    }

    #[test]
    fn names_are_upstreams_with_our_prefix() {
        // Upstream's proxier tests name these very chains KUBE-SVC-XPGD46QRK7WJZT7O and
        // KUBE-SEP-SXIVWICOYRO3J4NJ.
        let key = ServicePortKey::new("ns1", "svc1", "p80", Protocol::Tcp);
        assert_eq!(
            service_chain(Kind::ClusterPolicy, &key),
            "KPROXY-SVC-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            endpoint_chain(&key, ip("10.180.0.1"), 80),
            "KPROXY-SEP-SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn port_names_and_ipv6_endpoints_are_spelled_as_upstream() {
        let unnamed = ServicePortKey::new("ns", "svc", "", Protocol::Udp);
        assert_eq!(service_port_name(&unnamed), "ns/svc");
        assert_eq!(endpoint_string(ip("fd00::1"), 53), "[fd00::1]:53");
        assert_eq!(endpoint_string(ip("10.0.0.1"), 53), "10.0.0.1:53");
    }

    #[test]
    fn every_name_fits_and_starts_with_the_prefix() {
        let long = "a".repeat(63);
        let key = ServicePortKey::new(&long, &long, &long, Protocol::Sctp);
        let mut names: Vec<String> = [
            Kind::ClusterPolicy,
            Kind::LocalPolicy,
            Kind::External,
            Kind::Firewall,
        ]
        .iter()
        .map(|k| service_chain(*k, &key))
        .collect();
        names.push(endpoint_chain(
            &key,
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            65535,
        ));
        names.push(dispatch_chain("nat/KPROXY-SERVICES/0a600000/20"));
        names.extend(
            [
                SERVICES,
                EXTERNAL_SERVICES,
                EXTERNAL_NODEPORTS,
                NODEPORTS,
                POSTROUTING,
                MARK_MASQ,
                FORWARD,
                PROXY_FIREWALL,
                FIREWALL,
            ]
            .map(String::from),
        );
        for n in &names {
            assert!(n.len() <= CHAIN_MAX, "{n}: {} characters", n.len());
            assert!(n.starts_with(PREFIX), "{n}");
        }
        assert_ne!(
            endpoint_chain(&key, ip("10.0.0.1"), 1),
            endpoint_chain(&key, ip("10.0.0.1"), 2)
        );
    }
}
