//! The daemon's actors. Each is a thin actix shell around a plain state struct whose logic is
//! unit-tested without a runtime; they talk only by messages.
//!
//! Data flows [`watcher`] → [`topology`] → [`sync`] → plugin; the HealthCheck side listens to
//! Sync.

pub mod sync;
pub mod topology;
pub mod watcher;
