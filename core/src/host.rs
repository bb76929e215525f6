//! Facts about the machine the daemon runs on, for when no Node object says otherwise: its name
//! and its own IP addresses.

use kproxy_plugin_api::{IpAddr, NodeFacts};
use std::net::SocketAddr;

/// The node's name: the override if set, else the kernel's hostname (lowercased, as the kubelet
/// registers it).
pub fn node_name(hostname_override: &str) -> String {
    if !hostname_override.trim().is_empty() {
        return hostname_override.trim().to_lowercase();
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
        .to_lowercase()
}

/// Every address on this network namespace's interfaces, loopback and link-local included,
/// sorted and unique (a `node_port_addresses` of `127.0.0.0/8` is legitimate, as upstream).
pub fn interface_addresses() -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address)
                .filter_map(|sa| {
                    if let Some(v4) = sa.as_sockaddr_in() {
                        Some(SocketAddr::V4((*v4).into()).ip())
                    } else {
                        sa.as_sockaddr_in6()
                            .map(|v6| SocketAddr::V6((*v6).into()).ip())
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// The node's own addresses as a Node object would list them: every global address on this
/// network namespace's interfaces (no loopback, no link-local), sorted and unique.
pub fn local_addresses() -> Vec<IpAddr> {
    interface_addresses()
        .into_iter()
        .filter(|ip| match ip {
            std::net::IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            std::net::IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .map(IpAddr::from)
        .collect()
}

/// Node facts from the machine alone; the Node object, when a source has one, refines them.
pub fn node_facts(hostname_override: &str) -> NodeFacts {
    NodeFacts {
        name: node_name(hostname_override).into(),
        addresses: local_addresses().into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_wins_and_is_lowercased() {
        assert_eq!(node_name("  Worker-1 "), "worker-1");
        assert!(!node_name("").is_empty());
    }

    #[test]
    fn addresses_exclude_loopback() {
        for ip in local_addresses() {
            assert!(!ip.to_std().is_loopback(), "{ip}");
        }
    }
}
