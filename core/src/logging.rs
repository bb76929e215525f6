//! Installs the daemon's `tracing` subscriber (text or JSON lines on stderr), once, at start-up.
//!
//! Plugins' events arrive here too: the plugin host re-emits them through `tracing` (see
//! `kproxy_plugin_api::logging`), so one filter and one format cover the daemon and its plugin.
//! stdout stays free for commands' own output (`kproxy plugins`, `kproxy version`).

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// The subscriber could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The level is not a valid EnvFilter (the config loader checks this first, so this only
    /// happens when `init` is called with an unchecked string).
    #[error("logging level {level:?} is not valid: {reason}")]
    BadLevel {
        /// The level or directives given.
        level: String,
        /// The parser's reason.
        reason: String,
    },
    /// A global subscriber is already installed (e.g. `init` was called twice).
    #[error("a logging subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs a global subscriber writing `format` lines to stderr, filtered by `level` (a level such
/// as `info`, or EnvFilter directives such as `info,kproxy::actors=debug`).
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| LoggingError::BadLevel {
            level: level.to_string(),
            reason: e.to_string(),
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|_| LoggingError::AlreadyInstalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_bad_filter_and_a_second_install() {
        assert!(matches!(
            init(LogFormat::Text, "kproxy=loud"),
            Err(LoggingError::BadLevel { .. })
        ));
        // The first successful install wins; another one in the same process is refused.
        // Both calls run in this one test so the order is fixed.
        let first = init(LogFormat::Json, "warn");
        let second = init(LogFormat::Text, "info");
        assert!(first.is_ok() || matches!(first, Err(LoggingError::AlreadyInstalled)));
        assert!(matches!(second, Err(LoggingError::AlreadyInstalled)));
    }
}
