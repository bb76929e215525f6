//! The plugin's own config section (`[dataplanes.nftables]`), validated before anything changes.

use kproxy_plugin_api::PluginError;
use serde::Deserialize;

/// The `[dataplanes.nftables]` section. Unknown keys are refused so a typo never goes unnoticed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NftConfig {
    /// The name of kproxy's table in the `ip` and `ip6` families (default `kproxy`). Everything
    /// the plugin programs lives in it, and `kproxy cleanup` deletes only it.
    pub table: String,
    /// Delete stale UDP/SCTP conntrack entries after endpoints change, as upstream does
    /// (default true). Turning it off leaves clients of a removed endpoint stuck until their
    /// conntrack entry times out.
    pub conntrack_cleanup: bool,
    /// The `nft` binary to run (default `nft`, looked up in `PATH`): for reading ClientIP
    /// affinity entries, for `cleanup`, and for every sync when `writer = "nft"`.
    pub nft_path: String,
    /// How syncs reach the kernel (default `netlink`).
    pub writer: Writer,
}

/// How a sync's transaction reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Writer {
    /// One nf_tables netlink batch written by kproxy itself: no `nft` process, no cache of the
    /// table loaded first (a one-endpoint change costs milliseconds, not a reload of the table).
    #[default]
    Netlink,
    /// `nft -f -` of the same transaction as text (slower; for comparison and debugging).
    Nft,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            table: "kproxy".into(),
            conntrack_cleanup: true,
            nft_path: "nft".into(),
            writer: Writer::Netlink,
        }
    }
}

/// The longest table name accepted; nftables allows 256 bytes but a short name keeps
/// `nft list` readable and leaves no doubt about the limit.
const TABLE_NAME_MAX: usize = 64;

impl NftConfig {
    /// Parses and checks the TOML text of the section (empty text means all defaults).
    pub fn parse(text: &str) -> Result<NftConfig, PluginError> {
        let config: NftConfig = toml::from_str(text).map_err(|e| {
            PluginError::config(format!("[dataplanes.nftables]: {}", e.message().trim_end()))
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), PluginError> {
        if !is_nft_identifier(&self.table) || self.table.len() > TABLE_NAME_MAX {
            return Err(PluginError::config(format!(
                "[dataplanes.nftables] table = {:?}: must be 1–{TABLE_NAME_MAX} characters of \
                 letters, digits, `_`, `-` or `.`, starting with a letter or `_`",
                self.table
            )));
        }
        if self.nft_path.trim().is_empty() {
            return Err(PluginError::config(
                "[dataplanes.nftables] nft_path: must name the nft binary (default \"nft\")",
            ));
        }
        Ok(())
    }
}

/// Whether `s` can be written unquoted as an nft table name.
fn is_nft_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_defaults() {
        assert_eq!(NftConfig::parse("").unwrap(), NftConfig::default());
    }

    #[test]
    fn keys_are_read() {
        let c = NftConfig::parse("table = \"kp-test\"\nconntrack_cleanup = false\n").unwrap();
        assert_eq!(c.table, "kp-test");
        assert!(!c.conntrack_cleanup);
        assert_eq!(c.writer, Writer::Netlink);
        let nft = NftConfig::parse("writer = \"nft\"").unwrap();
        assert_eq!(nft.writer, Writer::Nft);
        assert!(NftConfig::parse("writer = \"iptables\"").is_err());
    }

    #[test]
    fn unknown_key_is_refused_and_named() {
        let e = NftConfig::parse("tabel = \"x\"").unwrap_err();
        assert_eq!(e.code, kproxy_plugin_api::ErrorCode::Config);
        assert!(e.message.contains("tabel"), "{}", e.message);
    }

    #[test]
    fn bad_table_names_are_refused() {
        for bad in ["", "1abc", "a b", "a;b", &"x".repeat(65)] {
            let text = format!("table = {bad:?}");
            assert!(NftConfig::parse(&text).is_err(), "{bad:?} accepted");
        }
        assert!(NftConfig::parse("table = 42").is_err());
    }
}
