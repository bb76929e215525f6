//! Installs the daemon's `tracing` subscriber (text or JSON), once, at start-up.
