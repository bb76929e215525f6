//! Where the cluster's objects come from: the Kubernetes API ([`kubernetes`]) or a folder of
//! YAML manifests ([`manifest`]). Both yield the same [`SourceEvent`] stream, so everything
//! downstream is indifferent to which one runs.

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};

pub mod kubernetes;
pub mod manifest;

/// The label that hands a service to another proxy; kproxy ignores services (and their slices)
/// that carry it, as upstream does.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// The label the endpoint controller puts on slices of headless services; ignored as upstream.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The label selector every source applies to Services and EndpointSlices (upstream's).
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// A change to one kind of object.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceEvent<K> {
    /// The object was created or changed.
    Applied(K),
    /// The object was deleted (its last known form).
    Deleted(K),
    /// A complete, consistent listing (initial list, relist after `410 Gone`, manifest rescan):
    /// every object of this kind not in the list is gone.
    Replaced(Vec<K>),
}

/// One change from a source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// A Service changed.
    Service(ResourceEvent<Service>),
    /// An EndpointSlice changed.
    Slice(ResourceEvent<EndpointSlice>),
    /// This node's Node object changed (only this node's).
    Node(ResourceEvent<Node>),
}
