//! What can be wrong with a configuration, said so that an operator can fix it from the message
//! alone: every error names where the value came from, the key as a dotted path, and what is
//! allowed.

use std::{fmt, path::PathBuf};

/// Where a configuration value came from, so an error points at the place to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file (or a default that applies because the file does not set the key).
    File(PathBuf),
    /// An environment variable, by name (`KPROXY_MASQUERADE__BIT`).
    Env(String),
    /// A command-line flag, by name (`--log-level`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A configuration that cannot be used. kproxy stops with exit code 2 on any of these, before it
/// has touched the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The config file does not exist.
    #[error(
        "{}: the config file does not exist (write one, e.g. from configs/kproxy.toml, or name \
         another with --config PATH)",
        path.display()
    )]
    MissingFile {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The config file exists but cannot be read (permissions, not UTF-8, a folder, …).
    #[error("{}: cannot read the config file: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's (or decoder's) reason.
        reason: String,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}:{column}: TOML syntax error: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The parser's description.
        message: String,
    },
    /// A key that kproxy does not know — usually a typo.
    #[error("{origin}: unknown key `{key}` (allowed keys in {table}: {allowed})")]
    UnknownKey {
        /// Where the key was set.
        origin: Origin,
        /// The dotted path of the unknown key.
        key: String,
        /// The table it was found in, as `[masquerade]`, or `the top level`.
        table: String,
        /// The keys that table allows, comma-separated.
        allowed: String,
    },
    /// A value of the wrong type (a string where a number belongs, …).
    #[error("{origin}: {key} has the wrong type: {message}")]
    WrongType {
        /// Where the value was set.
        origin: Origin,
        /// The dotted path of the key.
        key: String,
        /// What was found and what was expected.
        message: String,
    },
    /// A value of the right type that is not allowed (out of range, not a CIDR, …).
    #[error("{origin}: {key} = {value} {problem} (allowed: {allowed})")]
    Invalid {
        /// Where the value was set.
        origin: Origin,
        /// The dotted path of the key (with `[i]` for a list element).
        key: String,
        /// The offending value, written as TOML.
        value: String,
        /// What is wrong with it, as the middle of a sentence: `is out of range`.
        /// (`Box<str>` rather than `String` keeps the error small enough to return by value.)
        problem: Box<str>,
        /// What would be accepted.
        allowed: Box<str>,
    },
}

impl ConfigError {
    /// The dotted key the error is about, when it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::WrongType { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}
