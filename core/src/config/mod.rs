//! kproxy's configuration: one TOML file, `KPROXY_*` environment variables and flags, read into
//! typed structs and validated before anything else happens.
//!
//! Precedence, lowest first: built-in defaults ([`raw`]), the file (`--config`, default
//! [`DEFAULT_FILE`]), environment variables, flags. An environment variable names a key by its
//! dotted path in upper case, with `__` between nesting levels and `,` between list elements:
//!
//! ```text
//! KPROXY_DATAPLANE=iptables               dataplane = "iptables"
//! KPROXY_LOGGING__LEVEL=debug             [logging] level = "debug"
//! KPROXY_MASQUERADE__BIT=15               [masquerade] bit = 15
//! KPROXY_CLUSTER_CIDRS=10.244.0.0/16,fd00::/56
//! KPROXY_DATAPLANES__NFTABLES__FOO=bar    [dataplanes.nftables] foo = "bar"
//! ```
//!
//! Every `KPROXY_*` variable must name a known key: a stray one is an unknown-key error, as a typo
//! in the file is.
//!
//! Loading goes: [`load`] (read, syntax check, merge, unknown keys, types) → [`validate`] (values)
//! → [`Config`]. Any failure is a [`ConfigError`] naming the file (or variable, or flag), the key
//! and what is allowed; the command line exits with code 2 on it.

mod error;
mod load;
pub mod raw;
mod types;
mod validate;

pub use error::{ConfigError, Origin};
pub use load::{LoadOptions, Overrides, ENV_LIST_SEPARATOR, ENV_PREFIX, ENV_SEPARATOR};
pub use types::{
    Config, Conntrack, DetectLocal, DetectLocalMode, LogFormat, Logging, Masquerade,
    NodePortAddresses, Source, SourceKind,
};

use std::path::Path;

/// Where the config file is looked for when `--config` is not given.
pub const DEFAULT_FILE: &str = "/etc/kproxy/kproxy.toml";

impl Config {
    /// Reads and validates the configuration as `options` say.
    pub fn load(options: &LoadOptions) -> Result<Config, ConfigError> {
        let text = load::read_file(&options.file, options.file_required)?;
        let (raw, prov) = load::merge(
            &options.file,
            text.as_deref(),
            &options.env,
            &options.overrides,
        )?;
        let mut config = validate::validate(raw, &options.file, &prov)?;
        config.load_options = Some(options.clone());
        Ok(config)
    }

    /// Reads and validates TOML text alone (no environment, no flags); `name` is used in
    /// messages as the file's name. For checking a config held elsewhere, such as a ConfigMap.
    pub fn parse(text: &str, name: &Path) -> Result<Config, ConfigError> {
        let (raw, prov) = load::merge(name, Some(text), &[], &Overrides::default())?;
        validate::validate(raw, name, &prov)
    }

    /// Reads the configuration again from the same file, environment and flags (for `SIGHUP`).
    /// A config made by [`Config::parse`] is parsed from its file path instead.
    pub fn reload(&self) -> Result<Config, ConfigError> {
        match &self.load_options {
            Some(options) => Config::load(options),
            None => Config::load(&LoadOptions {
                file: self.file.clone(),
                file_required: true,
                env: Vec::new(),
                overrides: Overrides::default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
