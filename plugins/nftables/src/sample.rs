//! Hand-built states for tests and benchmarks; the one implementation lives in
//! `kproxy-dataplane-common` so every dataplane's tests describe services the same way.

pub use kproxy_dataplane_common::sample::*;
