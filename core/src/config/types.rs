//! The validated configuration: the one struct the rest of kproxy reads.

use super::load::LoadOptions;
use kproxy_plugin_api::{
    abi_stable::std_types::RVec, Cidr, IpFamily, LocalDetect, LocalDetectMode, NodeFacts,
    ProxySettings,
};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

/// kproxy's whole configuration, checked. Built by [`Config::load`](crate::config::Config::load)
/// before anything else happens; holding one means every value is usable.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (also when the file was absent and defaults apply).
    pub file: PathBuf,
    /// The node name to use instead of the hostname (trimmed, lower-cased).
    pub hostname_override: Option<String>,
    /// The address kproxy treats as its own (kube-proxy's `bindAddress`).
    pub bind_address: IpAddr,
    /// Where `/healthz` and `/livez` are served; `None` = not served.
    pub healthz_bind_address: Option<SocketAddr>,
    /// Where `/metrics` and `/proxyMode` are served; `None` = not served.
    pub metrics_bind_address: Option<SocketAddr>,
    /// The cluster's pod CIDRs, for local-traffic detection.
    pub cluster_cidrs: Vec<Cidr>,
    /// How traffic from local pods is told apart.
    pub detect_local: DetectLocal,
    /// Which node addresses serve node ports.
    pub node_port_addresses: NodePortAddresses,
    /// Masquerading.
    pub masquerade: Masquerade,
    /// The shortest time between two syncs (changes inside it are coalesced).
    pub min_sync_period: Duration,
    /// The longest time between two full syncs; never zero, never shorter than
    /// `min_sync_period`.
    pub sync_period: Duration,
    /// Conntrack tuning applied at start-up.
    pub conntrack: Conntrack,
    /// The IP families served; never empty, no duplicates.
    pub ip_families: Vec<IpFamily>,
    /// The service CIDRs: traffic to an unallocated address inside them is dropped.
    pub service_cidrs: Vec<Cidr>,
    /// Whether IPv4 node ports are served on 127.0.0.1 too.
    pub localhost_node_ports: bool,
    /// Where services and endpoints come from.
    pub source: Source,
    /// The folder holding the dataplane plugins.
    pub plugin_dir: PathBuf,
    /// The dataplane plugin to load, by name.
    pub dataplane: String,
    /// Every plugin's own section (`[dataplanes.<name>]`), unchecked: the plugin checks it.
    pub dataplanes: BTreeMap<String, toml::Table>,
    /// Logging.
    pub logging: Logging,
    /// How this config was loaded, so [`Config::reload`](crate::config::Config::reload) can
    /// read it again the same way; `None` when it was parsed from text.
    pub(crate) load_options: Option<LoadOptions>,
}

/// kube-proxy's `detectLocalMode` and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectLocal {
    /// The mode.
    pub mode: DetectLocalMode,
    /// The bridge name (used by [`DetectLocalMode::BridgeInterface`]).
    pub bridge_interface: String,
    /// The interface prefix (used by [`DetectLocalMode::InterfaceNamePrefix`]).
    pub interface_name_prefix: String,
}

/// How local traffic is detected; the names in the file are upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectLocalMode {
    /// `ClusterCIDR`: source inside `cluster_cidrs` (no detection when that is empty).
    ClusterCidr,
    /// `NodeCIDR`: source inside this node's pod CIDRs.
    NodeCidr,
    /// `BridgeInterface`: arrived on `bridge_interface`.
    BridgeInterface,
    /// `InterfaceNamePrefix`: arrived on an interface named `interface_name_prefix*`.
    InterfaceNamePrefix,
}

/// Which node addresses serve node ports (kube-proxy's `nodePortAddresses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every address of the node (the list is empty).
    All,
    /// The node's primary addresses (`["primary"]`), as listed on its Node object.
    Primary,
    /// Addresses inside these prefixes.
    Cidrs(Vec<Cidr>),
}

/// `[masquerade]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masquerade {
    /// Masquerade all traffic sent to service addresses.
    pub all: bool,
    /// The fwmark bit (0–31) that marks packets for masquerading.
    pub bit: u8,
}

/// `[conntrack]`: kernel conntrack tuning, as kube-proxy's. A zero leaves the kernel's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conntrack {
    /// Entries per CPU core (`nf_conntrack_max = max(max_per_core * cores, min)`).
    pub max_per_core: u32,
    /// The least `nf_conntrack_max`, whatever the core count.
    pub min: u32,
    /// `nf_conntrack_tcp_timeout_established`.
    pub tcp_established_timeout: Duration,
    /// `nf_conntrack_tcp_timeout_close_wait`.
    pub tcp_close_wait_timeout: Duration,
    /// `nf_conntrack_tcp_be_liberal`.
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout`.
    pub udp_timeout: Duration,
    /// `nf_conntrack_udp_timeout_stream`.
    pub udp_stream_timeout: Duration,
}

/// `[source]`: where services and endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The kind of source.
    pub kind: SourceKind,
    /// The kubeconfig for [`SourceKind::Kubernetes`]; `None` = `KUBECONFIG` or in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// The manifest folder for [`SourceKind::Manifests`].
    pub manifest_dir: PathBuf,
}

/// The kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Watch the Kubernetes API server.
    Kubernetes,
    /// Watch a folder of YAML manifests (no cluster needed).
    Manifests,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// A level or `tracing` EnvFilter directives; already checked to parse.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The node settings every dataplane honours. With `node_port_addresses = ["primary"]` the
    /// node's addresses are needed to resolve it: use [`Config::proxy_settings_for_node`]; this
    /// one resolves it against no addresses, i.e. every address.
    pub fn proxy_settings(&self) -> ProxySettings {
        self.proxy_settings_for_node(&NodeFacts::default())
    }

    /// [`Config::proxy_settings`] with `primary` node-port addresses resolved to `node`'s
    /// addresses (one host prefix each).
    pub fn proxy_settings_for_node(&self, node: &NodeFacts) -> ProxySettings {
        let local_detect = match self.detect_local.mode {
            DetectLocalMode::ClusterCidr if self.cluster_cidrs.is_empty() => LocalDetect {
                mode: LocalDetectMode::None,
                interface: "".into(),
            },
            DetectLocalMode::ClusterCidr => LocalDetect {
                mode: LocalDetectMode::ClusterCidr,
                interface: "".into(),
            },
            DetectLocalMode::NodeCidr => LocalDetect {
                mode: LocalDetectMode::NodeCidr,
                interface: "".into(),
            },
            DetectLocalMode::BridgeInterface => LocalDetect {
                mode: LocalDetectMode::BridgeInterface,
                interface: self.detect_local.bridge_interface.as_str().into(),
            },
            DetectLocalMode::InterfaceNamePrefix => LocalDetect {
                mode: LocalDetectMode::InterfaceNamePrefix,
                interface: self.detect_local.interface_name_prefix.as_str().into(),
            },
        };
        let node_port_addresses: RVec<Cidr> = match &self.node_port_addresses {
            NodePortAddresses::All => RVec::new(),
            NodePortAddresses::Primary => node
                .addresses
                .iter()
                .filter_map(|ip| Cidr::new(*ip, if ip.is_v4() { 32 } else { 128 }))
                .collect(),
            NodePortAddresses::Cidrs(c) => c.iter().copied().collect(),
        };
        ProxySettings {
            ipv4: self.ip_families.contains(&IpFamily::V4),
            ipv6: self.ip_families.contains(&IpFamily::V6),
            cluster_cidrs: self.cluster_cidrs.iter().copied().collect(),
            local_detect,
            masquerade_all: self.masquerade.all,
            masquerade_bit: self.masquerade.bit,
            node_port_addresses,
            localhost_node_ports: self.localhost_node_ports,
            service_cidrs: self.service_cidrs.iter().copied().collect(),
        }
    }

    /// The active dataplane's section (`[dataplanes.<dataplane>]`) as TOML text, as the plugin
    /// receives it; empty when the file has none.
    pub fn plugin_section_toml(&self) -> String {
        self.section_toml(&self.dataplane)
    }

    /// Any plugin's section as TOML text (for `kproxy cleanup --all`); empty when absent.
    pub fn section_toml(&self, plugin: &str) -> String {
        self.dataplanes
            .get(plugin)
            .map(|t| toml::to_string(t).unwrap_or_else(|_| t.to_string()))
            .unwrap_or_default()
    }

    /// This node's name: `hostname_override`, else the kernel's hostname, lower-cased (as
    /// upstream).
    pub fn node_name(&self) -> String {
        if let Some(name) = &self.hostname_override {
            return name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .unwrap_or_default()
    }
}
