//! Helpers shared by kproxy's Linux dataplanes. Not a plugin: an rlib that plugins link in, so
//! a behaviour every dataplane needs has one implementation, not one per plugin.
//!
//! - [`conntrack`]: deletes stale UDP/SCTP conntrack entries over netlink after endpoints change,
//!   as upstream kube-proxy does. Start with [`conntrack::clean_stale`].
//! - [`sample`]: hand-built proxy states (a service-port builder, dual-stack settings, a node)
//!   for the dataplanes' tests and benchmarks, so every plugin tests against the same shapes.

pub mod conntrack;
pub mod sample;
