//! The stable interface between the kproxy daemon and its dataplane plugins.
//!
//! This is the only crate a plugin depends on. It holds:
//!
//! - [`model`]: the resolved [`ProxyState`] that the daemon hands a plugin on each sync — every
//!   service port this node must serve, with its endpoints already chosen for cluster and
//!   node-local traffic. Plugins only translate it into kernel objects; they never decide topology.
//! - [`module`]: the root module a plugin exports ([`PluginMod`]), the [`Dataplane`] object it
//!   builds, and the facts and settings it is built with ([`HostContext`]).
//! - [`export`]: the [`Plugin`] trait a plugin implements and the [`export_plugin!`] macro that
//!   exports it safely — panics are caught inside the plugin and `tracing` events are forwarded
//!   to the daemon's subscriber ([`logging`]).
//!
//! Start with [`Plugin`] if you are writing a plugin, with [`PluginMod`] if you are loading one.
//!
//! # Versioning
//!
//! abi_stable checks the layout of every type reachable from the root module when a plugin is
//! loaded, so a plugin built against a changed model is refused before any of its code runs.
//! [`INTERFACE_VERSION`] is the human-readable contract on top of that: a plugin whose major
//! version differs from the host's is refused; new functions are only ever appended to the root
//! module (a prefix type), so a plugin built against an older minor version still loads.

pub mod error;
pub mod export;
pub mod logging;
pub mod model;
pub mod module;

pub use error::{ErrorCode, PluginError};
pub use export::Plugin;
pub use model::*;
pub use module::*;

/// Re-exported so that plugins and the host agree on one abi_stable version.
pub use abi_stable;

/// The interface version this crate defines, as `(major, minor)`.
///
/// Bump the minor version when appending a function to [`PluginMod`] (old plugins still load);
/// bump the major version for anything else that changes the contract.
pub const INTERFACE_VERSION: InterfaceVersion = InterfaceVersion { major: 1, minor: 0 };
