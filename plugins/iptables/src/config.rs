//! The plugin's own config section (`[dataplanes.iptables]`), validated before anything changes.

use kproxy_plugin_api::PluginError;
use serde::Deserialize;

/// Which iptables back end the plugin drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Detect it as upstream does: the back end that already holds kubelet's hint chains, else
    /// the one holding more rules (see [`crate::backend`]).
    #[default]
    Auto,
    /// `iptables-nft`: iptables rules translated into the kernel's nftables.
    Nft,
    /// `iptables-legacy`: the kernel's x_tables.
    Legacy,
}

/// How a packet finds its service among all service ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DispatchMode {
    /// A tree of chains split on destination address (and protocol and port) bits: the first
    /// packet of a connection walks O(log n) rules (see [`crate::dispatch`]).
    #[default]
    Tree,
    /// Upstream's layout: one rule per service address in one chain, walked in order. Kept for
    /// comparison (the dispatch benchmark) and for operators who want upstream's exact layout.
    Linear,
}

/// The `[dataplanes.iptables]` section. Unknown keys are refused so a typo never goes unnoticed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IptablesConfig {
    /// `auto` (default), `nft` or `legacy`.
    pub backend: BackendChoice,
    /// `tree` (default) or `linear`.
    pub dispatch: DispatchMode,
    /// Delete stale UDP/SCTP conntrack entries after endpoints change, as upstream does
    /// (default true).
    pub conntrack_cleanup: bool,
}

impl Default for IptablesConfig {
    fn default() -> Self {
        IptablesConfig {
            backend: BackendChoice::Auto,
            dispatch: DispatchMode::Tree,
            conntrack_cleanup: true,
        }
    }
}

impl IptablesConfig {
    /// Parses and checks the TOML text of the section (empty text means all defaults).
    pub fn parse(text: &str) -> Result<IptablesConfig, PluginError> {
        toml::from_str(text).map_err(|e| {
            PluginError::config(format!(
                "[dataplanes.iptables]: {} (keys: backend = \"auto\" | \"nft\" | \"legacy\", \
                 dispatch = \"tree\" | \"linear\", conntrack_cleanup = true | false)",
                e.message().trim_end()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_defaults() {
        assert_eq!(
            IptablesConfig::parse("").unwrap(),
            IptablesConfig::default()
        );
    }

    #[test]
    fn keys_are_read() {
        let c = IptablesConfig::parse(
            "backend = \"legacy\"\ndispatch = \"linear\"\nconntrack_cleanup = false\n",
        )
        .unwrap();
        assert_eq!(c.backend, BackendChoice::Legacy);
        assert_eq!(c.dispatch, DispatchMode::Linear);
        assert!(!c.conntrack_cleanup);
        assert_eq!(
            IptablesConfig::parse("backend = \"nft\"").unwrap().backend,
            BackendChoice::Nft
        );
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused_and_named() {
        let e = IptablesConfig::parse("backend = \"xtables\"").unwrap_err();
        assert_eq!(e.code, kproxy_plugin_api::ErrorCode::Config);
        assert!(e.message.contains("xtables"), "{}", e.message);
        assert!(e.message.contains("legacy"), "{}", e.message);
        let e = IptablesConfig::parse("backnd = \"nft\"").unwrap_err();
        assert!(e.message.contains("backnd"), "{}", e.message);
        assert!(IptablesConfig::parse("dispatch = 3").is_err());
    }
}
