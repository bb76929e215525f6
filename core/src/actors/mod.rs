//! The daemon's actors. Each is a thin actix shell around a plain state struct whose logic is
//! unit-tested without a runtime; they talk only by messages.
//!
//! Data flows [`watcher`] → [`topology`] → [`sync`] → plugin; the [`health`] actor listens to
//! Sync (syncs finished and changes queued) and Topology (the node's eligibility).

pub mod health;
pub mod sync;
pub mod topology;
pub mod watcher;
