//! What a plugin exports and what the host calls: the root module, the dataplane object, and the
//! context a dataplane is built with.

// abi_stable's `#[sabi_trait]` generates impls inside a const block; that is its design, and the
// lint cannot be silenced on the trait alone.
#![allow(non_local_definitions)]

use crate::{
    error::PluginError,
    logging::HostLogger,
    model::{ChangeSet, NodeFacts, ProxySettings, ProxyState},
};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RStr, RString, RVec, Tuple2},
    StableAbi,
};
use std::fmt;

/// A `(major, minor)` interface version; see [`crate::INTERFACE_VERSION`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct InterfaceVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Compatible additions (functions appended to the root module).
    pub minor: u16,
}

impl InterfaceVersion {
    /// Whether a host of version `self` can load a plugin built against `plugin`: the same major
    /// version and a minor version no newer than the host's.
    pub fn can_load(self, plugin: InterfaceVersion) -> bool {
        self.major == plugin.major && plugin.minor <= self.minor
    }
}

impl fmt::Display for InterfaceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A set of service features a plugin implements, so the host can warn when a service uses one
/// the active dataplane lacks and `kproxy plugins` can list them.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// Cluster IPs.
    pub const CLUSTER_IP: Capabilities = Capabilities(1 << 0);
    /// Node ports.
    pub const NODE_PORT: Capabilities = Capabilities(1 << 1);
    /// `spec.externalIPs`.
    pub const EXTERNAL_IP: Capabilities = Capabilities(1 << 2);
    /// Load-balancer ingress IPs.
    pub const LOAD_BALANCER: Capabilities = Capabilities(1 << 3);
    /// `loadBalancerSourceRanges`.
    pub const SOURCE_RANGES: Capabilities = Capabilities(1 << 4);
    /// ClientIP session affinity.
    pub const SESSION_AFFINITY: Capabilities = Capabilities(1 << 5);
    /// `internalTrafficPolicy: Local`.
    pub const INTERNAL_TRAFFIC_LOCAL: Capabilities = Capabilities(1 << 6);
    /// `externalTrafficPolicy: Local`.
    pub const EXTERNAL_TRAFFIC_LOCAL: Capabilities = Capabilities(1 << 7);
    /// TCP services.
    pub const TCP: Capabilities = Capabilities(1 << 8);
    /// UDP services.
    pub const UDP: Capabilities = Capabilities(1 << 9);
    /// SCTP services.
    pub const SCTP: Capabilities = Capabilities(1 << 10);
    /// IPv4.
    pub const IPV4: Capabilities = Capabilities(1 << 11);
    /// IPv6.
    pub const IPV6: Capabilities = Capabilities(1 << 12);
    /// Applies only the changed service ports on a partial sync.
    pub const INCREMENTAL: Capabilities = Capabilities(1 << 13);

    const NAMES: [(Capabilities, &'static str); 14] = [
        (Self::CLUSTER_IP, "cluster-ip"),
        (Self::NODE_PORT, "node-port"),
        (Self::EXTERNAL_IP, "external-ip"),
        (Self::LOAD_BALANCER, "load-balancer"),
        (Self::SOURCE_RANGES, "source-ranges"),
        (Self::SESSION_AFFINITY, "session-affinity"),
        (Self::INTERNAL_TRAFFIC_LOCAL, "internal-traffic-local"),
        (Self::EXTERNAL_TRAFFIC_LOCAL, "external-traffic-local"),
        (Self::TCP, "tcp"),
        (Self::UDP, "udp"),
        (Self::SCTP, "sctp"),
        (Self::IPV4, "ipv4"),
        (Self::IPV6, "ipv6"),
        (Self::INCREMENTAL, "incremental"),
    ];

    /// Whether every capability in `other` is in `self`.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }
    /// The names of the capabilities in the set, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(c, _)| self.contains(*c))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 | rhs.0)
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.names().join(","))
    }
}

/// What a plugin says about itself before it is built.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The dataplane's name, as used in the config (`dataplane = "nftables"`).
    pub name: RString,
    /// The plugin's own version.
    pub version: RString,
    /// The interface version the plugin was built against.
    pub interface: InterfaceVersion,
    /// The features it implements.
    pub capabilities: Capabilities,
    /// One line on what it programs.
    pub description: RString,
}

/// Everything a dataplane is built with.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct HostContext {
    /// The plugin's own config section (`[dataplanes.<name>]`), as TOML text; empty when absent.
    pub plugin_config: RString,
    /// Node-wide settings every dataplane honours.
    pub settings: ProxySettings,
    /// The node's facts at start-up (later changes arrive in [`ProxyState::node`]).
    pub node: NodeFacts,
}

/// What one successful sync did, for logs and metrics.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// Whether the plugin applied the whole state (rather than only the changed keys).
    pub full: bool,
    /// Service ports now programmed.
    pub services: u64,
    /// Endpoints now programmed.
    pub endpoints: u64,
    /// Kernel objects (rules, map elements, chains, …) written by this sync.
    pub objects_written: u64,
}

/// Counters a plugin exposes; the host publishes them as metrics.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Default)]
pub struct PluginStats {
    /// `(name, value)` pairs; names are snake_case and stable.
    pub counters: RVec<Tuple2<RString, u64>>,
}

impl PluginStats {
    /// Builds the counters from `(name, value)` pairs, the form plugins keep them in.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        PluginStats {
            counters: pairs
                .into_iter()
                .map(|(name, value)| Tuple2(name.into(), value))
                .collect(),
        }
    }
}

/// A built dataplane: the object the host syncs. Calls block (they talk to the kernel), so the
/// host calls them from its sync thread, never from the async runtime.
#[sabi_trait]
pub trait Dataplane: Send {
    /// Makes the kernel match `state`. `changes` says what changed since the last successful
    /// sync; the plugin may apply only that or everything, but the result must equal a full
    /// apply. On error the previous rules must still be in place.
    fn sync(&mut self, state: &ProxyState, changes: &ChangeSet)
        -> RResult<SyncReport, PluginError>;

    /// Removes every kernel object this plugin made, and nothing else.
    fn cleanup(&mut self) -> RResult<(), PluginError>;

    /// Current counters.
    #[sabi(last_prefix_field)]
    fn stats(&self) -> PluginStats;
}

/// A boxed dataplane object as it crosses the ABI.
pub type DataplaneBox = Dataplane_TO<'static, RBox<()>>;

/// The root module every plugin exports. A prefix type: functions are only ever appended, so the
/// host can load a plugin built against an older minor interface version.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// Describes the plugin; must not fail.
    pub info: extern "C" fn() -> PluginInfo,
    /// Installs the host's logger; called once, before anything else but `info`.
    pub set_logger: extern "C" fn(logger: HostLogger),
    /// Checks the plugin's config section (TOML text) without touching the kernel, so
    /// `kproxy check-config` and start-up can refuse a bad section before anything changes.
    pub validate_config: extern "C" fn(plugin_config: RStr<'_>) -> RResult<(), PluginError>,
    /// Builds a dataplane. Must not change the kernel: the first `sync` does that.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(ctx: &HostContext) -> RResult<DataplaneBox, PluginError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "kproxy_plugin";
    const NAME: &'static str = "kproxy_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
