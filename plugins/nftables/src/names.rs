//! Names of per-service chains and sets, built as upstream kube-proxy builds them so that an
//! operator who knows `nft list table ip kube-proxy` can read kproxy's table at once.
//!
//! A name is `<prefix>-<HASH>-<namespace>/<service>/<protocol>/<port name>` (plus
//! `__<endpoint ip>/<port>` for endpoint objects). HASH is the first 8 base32 characters of the
//! SHA-256 of the rest: it keeps the name unique if it ever has to be truncated and makes names
//! that differ in one digit easy to tell apart.

use kproxy_plugin_api::{IpAddr, ServicePortKey};
use sha2::{Digest, Sha256};

/// The kernel's limit on a chain or set name, in bytes (`NFT_NAME_MAXLEN`, including the NUL).
pub const NAME_MAX: usize = 256;

/// The longest prefix (with its trailing `-`) a per-service name uses.
const PREFIX_MAX: usize = 16;

/// The longest base (everything after the prefix) a name may have.
const BASE_MAX: usize = NAME_MAX - PREFIX_MAX;

/// The kinds of per-service-port objects, which set the name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The chain that picks among endpoints for `Cluster` policy.
    ClusterPolicy,
    /// The chain that picks among node-local endpoints for `Local` policy.
    LocalPolicy,
    /// The chain that external traffic (node ports, external and LB IPs) enters.
    External,
    /// The chain that enforces `loadBalancerSourceRanges`.
    Firewall,
    /// The per-endpoint chain that DNATs.
    Endpoint,
    /// The per-endpoint dynamic set remembering ClientIP affinity.
    Affinity,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::ClusterPolicy => "service-",
            Kind::LocalPolicy => "local-",
            Kind::External => "external-",
            Kind::Firewall => "firewall-",
            Kind::Endpoint => "endpoint-",
            Kind::Affinity => "affinity-",
        }
    }
}

/// The name of a service port's object of `kind` (not an endpoint kind).
pub fn service_object(kind: Kind, key: &ServicePortKey) -> String {
    let base = format!(
        "{}/{}/{}/{}",
        key.namespace,
        key.name,
        key.protocol.as_str(),
        key.port_name
    );
    format!("{}{}", kind.prefix(), hash_and_truncate(&base))
}

/// The name of an endpoint's object of `kind` ([`Kind::Endpoint`] or [`Kind::Affinity`]).
/// IPv6 colons become dots: a colon is not allowed in an nft name.
pub fn endpoint_object(kind: Kind, key: &ServicePortKey, ip: IpAddr, port: u16) -> String {
    let ip = ip.to_string().replace(':', ".");
    let base = format!(
        "{}/{}/{}/{}__{}/{}",
        key.namespace,
        key.name,
        key.protocol.as_str(),
        key.port_name,
        ip,
        port
    );
    format!("{}{}", kind.prefix(), hash_and_truncate(&base))
}

/// Prefixes `name` with a hash of itself and truncates it to fit the kernel's limit.
fn hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut out = base32_prefix(&digest[..5]);
    out.push('-');
    out.push_str(name);
    if out.len() > BASE_MAX - 1 {
        // Names are ASCII (Kubernetes names, protocols, addresses), so byte slicing is safe;
        // stay careful anyway and cut on a character boundary.
        let mut cut = BASE_MAX - 4;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// RFC 4648 base32 of exactly five bytes: eight characters, no padding.
fn base32_prefix(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    for b in bytes.iter().take(5) {
        bits = (bits << 8) | u64::from(*b);
    }
    (0..8)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 0x1f) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_plugin_api::Protocol;

    #[test]
    fn names_match_upstream_shape() {
        let key = ServicePortKey::new("ns1", "svc1", "p80", Protocol::Tcp);
        let name = service_object(Kind::ClusterPolicy, &key);
        // Upstream kube-proxy names this very chain "service-ULMVA6XW-ns1/svc1/tcp/p80".
        assert_eq!(name, "service-ULMVA6XW-ns1/svc1/tcp/p80");
        let ep = endpoint_object(
            Kind::Endpoint,
            &key,
            "10.180.0.1".parse::<std::net::IpAddr>().unwrap().into(),
            80,
        );
        assert_eq!(ep, "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80");
    }

    #[test]
    fn ipv6_endpoints_have_no_colons() {
        let key = ServicePortKey::new("ns", "svc", "", Protocol::Udp);
        let ep = endpoint_object(
            Kind::Affinity,
            &key,
            "fd00::1".parse::<std::net::IpAddr>().unwrap().into(),
            53,
        );
        assert!(!ep.contains(':'), "{ep}");
        assert!(ep.ends_with("__fd00..1/53"), "{ep}");
    }

    #[test]
    fn longest_names_fit_the_kernel_limit() {
        let long = "a".repeat(63);
        let key = ServicePortKey::new(&long, &long, &long, Protocol::Sctp);
        let ip: std::net::IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        for kind in [Kind::Endpoint, Kind::Affinity] {
            let name = endpoint_object(kind, &key, ip.into(), 65535);
            assert!(name.len() < NAME_MAX, "{} bytes", name.len());
            assert!(name.ends_with("..."));
        }
        let other = endpoint_object(Kind::Endpoint, &key, ip.into(), 65534);
        assert_ne!(
            other,
            endpoint_object(Kind::Endpoint, &key, ip.into(), 65535),
            "truncated names stay unique through the hash"
        );
        assert!(service_object(Kind::LocalPolicy, &key).len() < NAME_MAX);
    }
}
