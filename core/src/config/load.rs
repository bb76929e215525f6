//! Reads the file, the `KPROXY_*` environment and the flags, merges them with the `config` crate
//! (flags beat environment beat file beat defaults) and deserialises the result into a
//! [`RawConfig`].
//!
//! Before serde sees anything, every key is checked against the defaults' shape
//! ([`raw::schema`]) so an unknown key is reported with where it was set and which keys its table
//! allows. [`Provenance`] remembers which environment variable or flag set each key, so that
//! errors found later, in validation, can point there too.

use super::{
    error::{ConfigError, Origin},
    raw::{self, RawConfig},
};
use std::path::{Path, PathBuf};

/// The prefix of environment variables that override the file.
pub const ENV_PREFIX: &str = "KPROXY_";

/// Separates nesting levels in an environment variable's name: `KPROXY_LOGGING__LEVEL` sets
/// `logging.level`. Two underscores, because keys themselves contain single ones.
pub const ENV_SEPARATOR: &str = "__";

/// Separates list elements in an environment variable's value:
/// `KPROXY_CLUSTER_CIDRS=10.244.0.0/16,fd00:10:244::/56`.
pub const ENV_LIST_SEPARATOR: &str = ",";

/// Settings given as command-line flags; each wins over the file and the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--dataplane`: `dataplane`.
    pub dataplane: Option<String>,
    /// `--plugin-dir`: `plugin_dir`.
    pub plugin_dir: Option<PathBuf>,
    /// `--hostname-override`: `hostname_override`.
    pub hostname_override: Option<String>,
    /// `--log-level`: `logging.level`.
    pub log_level: Option<String>,
    /// `--log-format`: `logging.format`.
    pub log_format: Option<String>,
    /// `--manifest-dir`: `source.manifest_dir`, and `source.kind = "manifests"`.
    pub manifest_dir: Option<PathBuf>,
    /// `--kubeconfig`: `source.kubeconfig`, and `source.kind = "kubernetes"`.
    pub kubeconfig: Option<PathBuf>,
}

impl Overrides {
    /// `(dotted key, flag, value)` for every flag given.
    fn entries(&self) -> Vec<(&'static str, &'static str, String)> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let mut out = Vec::new();
        if let Some(v) = &self.dataplane {
            out.push(("dataplane", "--dataplane", v.clone()));
        }
        if let Some(v) = &self.plugin_dir {
            out.push(("plugin_dir", "--plugin-dir", path(v)));
        }
        if let Some(v) = &self.hostname_override {
            out.push(("hostname_override", "--hostname-override", v.clone()));
        }
        if let Some(v) = &self.log_level {
            out.push(("logging.level", "--log-level", v.clone()));
        }
        if let Some(v) = &self.log_format {
            out.push(("logging.format", "--log-format", v.clone()));
        }
        if let Some(v) = &self.manifest_dir {
            out.push(("source.manifest_dir", "--manifest-dir", path(v)));
            out.push(("source.kind", "--manifest-dir", "manifests".into()));
        }
        if let Some(v) = &self.kubeconfig {
            out.push(("source.kubeconfig", "--kubeconfig", path(v)));
            out.push(("source.kind", "--kubeconfig", "kubernetes".into()));
        }
        out
    }
}

/// Everything [`super::Config::load`] reads, gathered up front so that loading is a pure
/// function of it (tests pass their own environment; `SIGHUP` reloads with the same inputs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// The config file.
    pub file: PathBuf,
    /// When false, a missing file means "all defaults" instead of an error (for commands such as
    /// `kproxy plugins` that can work without one).
    pub file_required: bool,
    /// The environment; only `KPROXY_*` variables are used.
    pub env: Vec<(String, String)>,
    /// The flags.
    pub overrides: Overrides,
}

impl LoadOptions {
    /// Options for `file` with this process's environment and no flags.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        LoadOptions {
            file: file.into(),
            file_required: true,
            env: std::env::vars().collect(),
            overrides: Overrides::default(),
        }
    }
}

/// Which environment variable or flag set each key, for error messages.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    file: PathBuf,
    /// `(dotted key, variable name)`.
    env: Vec<(String, String)>,
    /// `(dotted key, flag name)`.
    flags: Vec<(String, String)>,
}

impl Provenance {
    /// Provenance for values that can only have come from `file` (or its defaults).
    pub fn file_only(file: &Path) -> Self {
        Provenance {
            file: file.to_path_buf(),
            ..Provenance::default()
        }
    }

    /// Where the value of `key` (a dotted path, optionally with `[i]` list indexes) came from:
    /// the flag or environment variable that set it or anything below it, else the file.
    pub fn origin(&self, key: &str) -> Origin {
        let key = key.split('[').next().unwrap_or(key);
        let covers = |k: &str| {
            k == key
                || k.strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with('.'))
                || key
                    .strip_prefix(k)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        if let Some((_, flag)) = self.flags.iter().find(|(k, _)| covers(k)) {
            return Origin::Flag(flag.clone());
        }
        if let Some((_, var)) = self.env.iter().find(|(k, _)| covers(k)) {
            return Origin::Env(var.clone());
        }
        Origin::File(self.file.clone())
    }
}

/// The dotted key an environment variable sets, or `None` when it is not one of ours.
pub fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if rest.is_empty() {
        return None;
    }
    Some(rest.to_lowercase().replace(ENV_SEPARATOR, "."))
}

/// Reads the file's text; a missing file is an error only when `required`.
pub fn read_file(path: &Path, required: bool) -> Result<Option<String>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| ConfigError::Unreadable {
                path: path.to_path_buf(),
                reason: "the file is not UTF-8 text".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if required {
                Err(ConfigError::MissingFile {
                    path: path.to_path_buf(),
                })
            } else {
                Ok(None)
            }
        }
        Err(e) => Err(ConfigError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Checks TOML syntax, turning the parser's error into one with a line and column.
fn check_syntax(path: &Path, text: &str) -> Result<(), ConfigError> {
    match text.parse::<toml::Table>() {
        Ok(_) => Ok(()),
        Err(e) => {
            let offset = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
            let before = &text[..floor_char_boundary(text, offset)];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            })
        }
    }
}

/// The largest char boundary at or before `i` (`str::floor_char_boundary` is not stable).
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Merges file text, environment and flags and reads the result into a [`RawConfig`].
/// `text` is `None` when there is no file (defaults only).
pub fn merge(
    path: &Path,
    text: Option<&str>,
    env: &[(String, String)],
    overrides: &Overrides,
) -> Result<(RawConfig, Provenance), ConfigError> {
    if let Some(text) = text {
        check_syntax(path, text)?;
    }
    let schema = raw::schema();
    let list_keys: Vec<String> = schema
        .iter()
        .filter(|(_, v)| v.is_array())
        .map(|(k, _)| k.clone())
        .collect();

    let mut prov = Provenance::file_only(path);
    let mut env_vars = config::Map::new();
    for (var, value) in env {
        if let Some(key) = env_key(var) {
            prov.env.push((key, var.clone()));
            env_vars.insert(var.clone(), value.clone());
        }
    }

    let mut environment = config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
        .prefix_separator("_")
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .list_separator(ENV_LIST_SEPARATOR)
        .source(Some(env_vars));
    for key in &list_keys {
        environment = environment.with_list_parse_key(key);
    }

    let mut builder = config::Config::builder();
    if let Some(text) = text {
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    builder = builder.add_source(environment);
    for (key, flag, value) in overrides.entries() {
        prov.flags.push((key.to_string(), flag.to_string()));
        builder = builder
            .set_override(key, value)
            .map_err(|e| foreign(&prov, key, e))?;
    }
    let merged = builder.build().map_err(|e| foreign(&prov, "", e))?;

    let tree: toml::Table = merged
        .clone()
        .try_deserialize()
        .map_err(|e| convert(&prov, e))?;
    check_keys(&tree, &schema, "", &prov)?;

    let raw: RawConfig = merged.try_deserialize().map_err(|e| convert(&prov, e))?;
    Ok((raw, prov))
}

/// Reports the first key in `tree` that `schema` does not have. `[dataplanes]` is free-form
/// below its first level: each plugin checks its own section.
fn check_keys(
    tree: &toml::Table,
    schema: &toml::Table,
    prefix: &str,
    prov: &Provenance,
) -> Result<(), ConfigError> {
    for (key, value) in tree {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let Some(expected) = schema.get(key) else {
            let mut allowed: Vec<&str> = schema.keys().map(String::as_str).collect();
            allowed.sort_unstable();
            return Err(ConfigError::UnknownKey {
                origin: prov.origin(&path),
                key: path,
                table: if prefix.is_empty() {
                    "the top level".into()
                } else {
                    format!("[{prefix}]")
                },
                allowed: allowed.join(", "),
            });
        };
        if path == "dataplanes" {
            continue;
        }
        if let (toml::Value::Table(sub), toml::Value::Table(sub_schema)) = (value, expected) {
            check_keys(sub, sub_schema, &path, prov)?;
        }
    }
    Ok(())
}

/// Turns the `config` crate's error into ours, keeping the key it names.
fn convert(prov: &Provenance, e: config::ConfigError) -> ConfigError {
    match e {
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => {
            let key = key.unwrap_or_default();
            ConfigError::WrongType {
                origin: prov.origin(&key),
                message: format!("found {unexpected}, expected {expected}"),
                key,
            }
        }
        config::ConfigError::At { error, key, .. } => {
            let key = key.unwrap_or_default();
            let message = match *error {
                config::ConfigError::Type {
                    unexpected,
                    expected,
                    ..
                } => format!("found {unexpected}, expected {expected}"),
                other => tidy(&other.to_string()),
            };
            ConfigError::WrongType {
                origin: prov.origin(&key),
                message,
                key,
            }
        }
        other => foreign(prov, "", other),
    }
}

/// Rewrites serde's `invalid type: X, expected struct RawFoo` as `found X, expected a table`:
/// the operator never sees our internal type names.
fn tidy(message: &str) -> String {
    let message = message
        .strip_prefix("invalid type: ")
        .map(|rest| format!("found {rest}"))
        .unwrap_or_else(|| message.to_string());
    match message.split_once("expected struct Raw") {
        Some((head, _)) => format!("{head}expected a table"),
        None => message,
    }
}

/// Any other error from the `config` crate, attributed to the file.
fn foreign(prov: &Provenance, key: &str, e: config::ConfigError) -> ConfigError {
    ConfigError::WrongType {
        origin: prov.origin(key),
        key: if key.is_empty() {
            "(configuration)".into()
        } else {
            key.into()
        },
        message: e.to_string(),
    }
}
