//! kproxy: a Kubernetes service proxy whose dataplanes are plugins loaded at run time.
//!
//! Where to start reading:
//!
//! - [`config`]: the TOML file, environment and flags, parsed and validated into one struct
//!   before anything else happens.
//! - [`source`]: where Services, EndpointSlices and the Node come from — the Kubernetes API or a
//!   folder of manifests — as a stream of [`source::SourceEvent`]s.
//! - [`model`]: API objects validated into the small internal structs the rest uses; a broken
//!   object is refused here, with a reason.
//! - [`topology`]: the pure logic that resolves services and endpoints for this node, exactly as
//!   upstream kube-proxy does, and reports which service ports changed.
//! - [`actors`]: the Watcher, Topology, Sync and HealthCheck actors that move all of the above.
//! - [`plugin_host`]: finds, checks and loads dataplane plugins (`*.so`).
//! - [`metrics`]: the Prometheus registry with kube-proxy's metric names, and the HTTP serving
//!   that `/metrics`, `/healthz` and the health-check node ports share.
//! - [`daemon`]: wires it all together for `kproxy run`; [`cli`] is the command line.
//! - [`demo`]: `kproxy demo`, the daemon balancing real traffic in a sandbox of namespaces.

pub mod actors;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod host;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod plugin_host;
pub mod source;
pub mod topology;
