//! Where the cluster's objects come from: the Kubernetes API ([`kubernetes`]) or a folder of
//! YAML manifests ([`manifest`]). Both yield the same [`SourceEvent`] stream, so everything
//! downstream is indifferent to which one runs.
//!
//! The daemon consumes [`ModelEvent`]s: the same events with Services and EndpointSlices
//! already converted into kproxy's model ([`Converted`]). The Kubernetes source converts each
//! object the moment it arrives ([`kubernetes::KubeSource::model_events`]), so a listing of
//! 250,000 endpoints never exists as API objects all at once — those are several times the
//! size of their model form. Any [`SourceEvent`] stream converts with [`ModelEvent::from`].

use std::path::PathBuf;

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{
    service::ServiceInfo, slice::SliceInfo, Accepted, Interner, Invalid, NamespacedName,
};

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
// Allowed: a Node is much larger than a Service, but events are moved a few times per change,
// not stored in bulk, so boxing would only add an allocation and noise for every consumer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// A Service changed.
    Service(ResourceEvent<Service>),
    /// An EndpointSlice changed.
    Slice(ResourceEvent<EndpointSlice>),
    /// This node's Node object changed (only this node's).
    Node(ResourceEvent<Node>),
}

/// One Service or EndpointSlice in model form: its identity and the outcome of its
/// conversion (valid, deliberately ignored, or invalid and why).
#[derive(Debug, Clone, PartialEq)]
pub struct Converted<T> {
    /// The object's namespace and name, as [`NamespacedName::of`] reads them.
    pub id: NamespacedName,
    /// What conversion made of it.
    pub outcome: Result<Accepted<T>, Invalid>,
}

impl Converted<ServiceInfo> {
    /// Converts a Service ([`ServiceInfo::from_service`]), sharing its namespace's name
    /// through `names`.
    pub fn service(svc: &Service, names: &mut Interner) -> Self {
        let mut outcome = ServiceInfo::from_service(svc);
        let id = match &mut outcome {
            Ok(Accepted::Valid(info)) => {
                info.id.namespace = names.get(&info.id.namespace);
                info.id.clone()
            }
            _ => NamespacedName::of_interned(&svc.metadata, names),
        };
        Converted { id, outcome }
    }
}

impl Converted<SliceInfo> {
    /// Converts an EndpointSlice ([`SliceInfo::from_slice_with`]), sharing namespace, node
    /// and zone names through `names`.
    pub fn slice(slice: &EndpointSlice, names: &mut Interner) -> Self {
        let outcome = SliceInfo::from_slice_with(slice, names);
        let id = match &outcome {
            Ok(Accepted::Valid(info)) => info.id.clone(),
            _ => NamespacedName::of_interned(&slice.metadata, names),
        };
        Converted { id, outcome }
    }
}

/// A [`SourceEvent`] with Services and EndpointSlices in model form: what Topology consumes.
/// The Node stays an API object (there is one, and it is converted where it is used).
// Allowed as for `SourceEvent`: events are moved, not stored in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    /// A Service changed.
    Service(ResourceEvent<Converted<ServiceInfo>>),
    /// An EndpointSlice changed.
    Slice(ResourceEvent<Converted<SliceInfo>>),
    /// This node's Node object changed (only this node's).
    Node(ResourceEvent<Node>),
}

impl<K> ResourceEvent<K> {
    /// The same event with every object passed through `convert`.
    pub fn map<T>(self, mut convert: impl FnMut(K) -> T) -> ResourceEvent<T> {
        match self {
            ResourceEvent::Applied(o) => ResourceEvent::Applied(convert(o)),
            ResourceEvent::Deleted(o) => ResourceEvent::Deleted(convert(o)),
            ResourceEvent::Replaced(list) => {
                ResourceEvent::Replaced(list.into_iter().map(convert).collect())
            }
        }
    }
}

impl From<SourceEvent> for ModelEvent {
    /// Converts every object of the event (names are shared within the event).
    fn from(event: SourceEvent) -> Self {
        match event {
            SourceEvent::Service(e) => {
                let mut names = Interner::default();
                ModelEvent::Service(e.map(|s| Converted::service(&s, &mut names)))
            }
            SourceEvent::Slice(e) => {
                let mut names = Interner::default();
                ModelEvent::Slice(e.map(|s| Converted::slice(&s, &mut names)))
            }
            SourceEvent::Node(e) => ModelEvent::Node(e),
        }
    }
}

/// Returns true when an object's labels exclude it from [`PROXY_LABEL_SELECTOR`], i.e. it carries
/// [`LABEL_SERVICE_PROXY_NAME`] or [`LABEL_HEADLESS`]. The manifest source has no API server to
/// apply the selector for it, and the Kubernetes source re-checks as a second line of defence.
pub fn excluded_by_proxy_selector(meta: &ObjectMeta) -> bool {
    meta.labels.as_ref().is_some_and(|labels| {
        labels.contains_key(LABEL_SERVICE_PROXY_NAME) || labels.contains_key(LABEL_HEADLESS)
    })
}

/// Why a source could not be set up. Once running, a source never fails: it logs, retries and
/// keeps its last known state, so these errors only come from start-up.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The kubeconfig file named in the config could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file that was named.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was named and neither `KUBECONFIG`/`~/.kube/config` nor the in-cluster
    /// service account gave a usable configuration.
    #[error(
        "no Kubernetes client configuration found (KUBECONFIG, ~/.kube/config, in-cluster): {0}"
    )]
    Infer(#[source] kube::config::InferConfigError),
    /// The configuration was read but a client could not be built from it (e.g. a bad CA).
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The manifest folder is missing or is not a readable folder.
    #[error("manifest folder {path}: {reason}")]
    ManifestDir {
        /// The folder that was named.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}
