//! Helpers shared by kproxy's Linux dataplanes. Not a plugin: an rlib that plugins link in, so
//! a behaviour every dataplane needs has one implementation, not one per plugin.
//!
//! - [`conntrack`]: deletes stale UDP/SCTP conntrack entries over netlink after endpoints change,
//!   as upstream kube-proxy does. Start with [`conntrack::clean_stale`].

pub mod conntrack;
