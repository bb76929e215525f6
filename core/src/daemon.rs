//! `kproxy run`: starts the actors and the chosen dataplane and keeps them running.

/// Runs the daemon with a validated configuration until it is told to stop.
///
/// Placeholder written by the command-line work so that `kproxy run` compiles: it refuses to run
/// rather than pretend to. The engineer who builds the daemon replaces this function.
pub fn run(config: crate::config::Config) -> anyhow::Result<()> {
    let _ = config;
    Err(anyhow::anyhow!("daemon not built yet"))
}
