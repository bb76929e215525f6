//! The configuration's shape as serde reads it: plain strings, numbers and lists with every
//! default filled in. Nothing here is checked beyond types; [`super::validate`] turns a
//! [`RawConfig`] into a [`super::Config`] and says precisely what is wrong when it cannot.
//!
//! Keeping values as strings until validation lets every bad value get the same kind of message
//! (file, dotted key, what is allowed) instead of serde's generic ones. The defaults here are the
//! single source of truth: `configs/kproxy.toml` documents them and a test checks that it agrees.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole file. Every field has a default, so an empty file is a valid configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// The node name to use instead of the hostname; empty = the hostname.
    pub hostname_override: String,
    /// The address kproxy treats as its own (kube-proxy's `bindAddress`).
    pub bind_address: String,
    /// Where `/healthz` and `/livez` are served; empty = not served.
    pub healthz_bind_address: String,
    /// Where `/metrics` is served; empty = not served.
    pub metrics_bind_address: String,
    /// The cluster's pod CIDRs.
    pub cluster_cidrs: Vec<String>,
    /// How traffic from local pods is told apart.
    pub detect_local: RawDetectLocal,
    /// CIDRs (or the single word `primary`) whose addresses serve node ports; empty = all.
    pub node_port_addresses: Vec<String>,
    /// Masquerading.
    pub masquerade: RawMasquerade,
    /// The shortest time between two syncs.
    pub min_sync_period: String,
    /// The longest time between two full syncs.
    pub sync_period: String,
    /// Conntrack tuning applied at start-up.
    pub conntrack: RawConntrack,
    /// The IP families served: `ipv4`, `ipv6`.
    pub ip_families: Vec<String>,
    /// The service CIDRs.
    pub service_cidrs: Vec<String>,
    /// Whether IPv4 node ports are served on 127.0.0.1 too.
    pub localhost_node_ports: bool,
    /// Where services and endpoints come from.
    pub source: RawSource,
    /// The folder holding the dataplane plugins.
    pub plugin_dir: String,
    /// The dataplane plugin to load.
    pub dataplane: String,
    /// One free-form table per plugin, handed to that plugin as TOML text.
    pub dataplanes: BTreeMap<String, toml::Table>,
    /// Logging.
    pub logging: RawLogging,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            hostname_override: String::new(),
            bind_address: "0.0.0.0".into(),
            healthz_bind_address: "0.0.0.0:10256".into(),
            metrics_bind_address: "127.0.0.1:10249".into(),
            cluster_cidrs: Vec::new(),
            detect_local: RawDetectLocal::default(),
            node_port_addresses: Vec::new(),
            masquerade: RawMasquerade::default(),
            min_sync_period: "1s".into(),
            sync_period: "30s".into(),
            conntrack: RawConntrack::default(),
            ip_families: vec!["ipv4".into(), "ipv6".into()],
            service_cidrs: Vec::new(),
            localhost_node_ports: true,
            source: RawSource::default(),
            plugin_dir: "/usr/lib/kproxy".into(),
            dataplane: "nftables".into(),
            dataplanes: BTreeMap::new(),
            logging: RawLogging::default(),
        }
    }
}

/// `[detect_local]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDetectLocal {
    /// `ClusterCIDR`, `NodeCIDR`, `BridgeInterface` or `InterfaceNamePrefix`.
    pub mode: String,
    /// The bridge, for `BridgeInterface`.
    pub bridge_interface: String,
    /// The interface name prefix, for `InterfaceNamePrefix`.
    pub interface_name_prefix: String,
}

impl Default for RawDetectLocal {
    fn default() -> Self {
        RawDetectLocal {
            mode: "ClusterCIDR".into(),
            bridge_interface: String::new(),
            interface_name_prefix: String::new(),
        }
    }
}

/// `[masquerade]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMasquerade {
    /// Masquerade all traffic to service addresses.
    pub all: bool,
    /// The fwmark bit used to mark packets for masquerading.
    pub bit: i64,
}

impl Default for RawMasquerade {
    fn default() -> Self {
        RawMasquerade {
            all: false,
            bit: 14,
        }
    }
}

/// `[conntrack]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConntrack {
    /// Conntrack entries per CPU core; 0 = leave the kernel's limit.
    pub max_per_core: i64,
    /// The least conntrack entries, whatever the core count.
    pub min: i64,
    /// Idle timeout of established TCP connections; "0s" = leave the kernel's value.
    pub tcp_established_timeout: String,
    /// Timeout of TCP connections in CLOSE_WAIT; "0s" = leave the kernel's value.
    pub tcp_close_wait_timeout: String,
    /// Set `nf_conntrack_tcp_be_liberal`.
    pub tcp_be_liberal: bool,
    /// UDP timeout; "0s" = leave the kernel's value.
    pub udp_timeout: String,
    /// UDP stream timeout; "0s" = leave the kernel's value.
    pub udp_stream_timeout: String,
}

impl Default for RawConntrack {
    fn default() -> Self {
        RawConntrack {
            max_per_core: 32768,
            min: 131072,
            tcp_established_timeout: "24h".into(),
            tcp_close_wait_timeout: "1h".into(),
            tcp_be_liberal: false,
            udp_timeout: "0s".into(),
            udp_stream_timeout: "0s".into(),
        }
    }
}

/// `[source]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSource {
    /// `kubernetes` or `manifests`.
    pub kind: String,
    /// Kubeconfig path; empty = `KUBECONFIG` or in-cluster.
    pub kubeconfig: String,
    /// The manifest folder, for `manifests`.
    pub manifest_dir: String,
}

impl Default for RawSource {
    fn default() -> Self {
        RawSource {
            kind: "kubernetes".into(),
            kubeconfig: String::new(),
            manifest_dir: "/etc/kproxy/manifests".into(),
        }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLogging {
    /// `text` or `json`.
    pub format: String,
    /// A level or a `tracing` EnvFilter directive list.
    pub level: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// The defaults as a TOML tree: the schema that unknown keys are checked against.
pub fn schema() -> toml::Table {
    match toml::Value::try_from(RawConfig::default()) {
        Ok(toml::Value::Table(t)) => t,
        // RawConfig is a struct of strings, numbers, lists and tables: it always serialises to
        // a table. Reaching this is a bug in this file, caught by the unit tests.
        other => panic!("RawConfig::default() did not serialise to a table: {other:?}"),
    }
}
