//! The packet-flow table: one list of cases — who sends, to which address, under which service
//! set-up, and what must happen — that runs with real packets in the [lab](crate::lab) against
//! every dataplane that claims the features a case needs.
//!
//! - [`table()`] builds the cases; [`case::Case`] is one of them.
//! - [`service`] turns a case's set-up into real Kubernetes objects (Service + EndpointSlices).
//! - [`runner`] applies each step through a [`ServiceDriver`] (the thing that gets the objects
//!   into the dataplane, e.g. the daemon reading a manifest folder) and checks every probe.
//!
//! The table is dataplane-agnostic: expectations follow upstream kube-proxy (nftables mode);
//! where another dataplane documentedly differs, the probe carries an [`case::Exception`] for it.
//!
//! ```no_run
//! use kproxy_tests::{flows, lab::Lab};
//! # fn driver() -> Box<dyn flows::ServiceDriver> { unimplemented!() }
//! let lab = Lab::start_or_skip(flows::lab_config()).unwrap();
//! let mut driver = driver();
//! let report = flows::run_table(&lab, &flows::table(), driver.as_mut());
//! report.assert_passed();
//! ```

pub mod case;
pub mod runner;
pub mod service;
mod table;

pub use case::{
    Case, ConfigOverrides, Exception, Expect, NodeAddr, Probe, Sender, Source, Step, Target,
};
pub use runner::{run_case, run_table, CaseFailure, Ran, ServiceDriver, TableReport};
pub use service::{Addresses, EndpointSpec, PortSpec, ServiceSpec, ServiceType};
pub use table::table;

use crate::lab::LabConfig;

/// The lab the table needs: local pods `pod-a`, `pod-b`, `pod-c` (endpoints) and `pod-d` (a
/// client), remote pod `pod-r`, servers on 8080 and 9090.
pub fn lab_config() -> LabConfig {
    LabConfig {
        local_pods: ["pod-a", "pod-b", "pod-c", "pod-d"]
            .map(String::from)
            .to_vec(),
        ..LabConfig::default()
    }
}
