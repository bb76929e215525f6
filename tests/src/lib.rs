//! kproxy's test support: everything the end-to-end suites and benchmarks share.
//!
//! - [`artifacts`]: finds the built `kproxy` binary and plugin `.so` files and installs them into
//!   a plugin folder the host will accept.
//! - [`daemon`]: runs the real `kproxy` binary and reads what the recorder fixture saw.
//! - [`driver`]: the packet-flow table's driver: the daemon in a lab node with a real plugin.
//! - [`flows`]: the packet-flow table, run against every dataplane.
//! - [`apiserver`]: the test API server — a test double of the Kubernetes API that speaks the
//!   real HTTP list/watch protocol, so kube-rs is exercised unchanged.
//! - [`lab`]: network namespaces that stand in for nodes, pods and clients, with tiny servers
//!   that answer with their own name, so tests send real packets through a real kernel.

pub mod apiserver;
pub mod artifacts;
pub mod daemon;
pub mod driver;
pub mod flows;
/// The namespace lab lives in its own crate (`kproxy-lab`) so `kproxy demo` can use it too.
pub use kproxy_lab as lab;
