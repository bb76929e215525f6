//! Watches Services, EndpointSlices and this node through the Kubernetes API (kube-rs).
//!
//! Three `kube::runtime::watcher`s — Services and EndpointSlices (discovery.k8s.io/v1) in all
//! namespaces, filtered by [`PROXY_LABEL_SELECTOR`], and this node's Node — are merged into one
//! [`SourceEvent`] stream. The watcher does the hard parts (resume from the last
//! resourceVersion after a dropped connection, relist after `410 Gone`); this module only
//! translates its events and keeps errors from ever ending the stream:
//!
//! - `Init` / `InitApply` / `InitDone` are buffered into one [`ResourceEvent::Replaced`], so a
//!   (re)list is applied downstream atomically, never as a trickle that first looks empty.
//! - `Apply` / `Delete` become [`ResourceEvent::Applied`] / [`ResourceEvent::Deleted`].
//! - An error is logged and nothing is emitted: downstream keeps its last known state (rules stay
//!   in place) while the watcher backs off (`default_backoff`, 0.8 s doubling to 30 s) and retries.
//!
//! [`KubeSource::model_events`], which the daemon uses, converts every Service and
//! EndpointSlice into its model form as it arrives — also within a listing — so the API
//! objects are dropped at once: only the watcher's current page (500 objects) ever exists as
//! API objects. [`KubeSource::events`] yields the API objects themselves.

use std::fmt::Debug;
use std::path::Path;

use futures::future::ready;
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{
    excluded_by_proxy_selector, Converted, ModelEvent, ResourceEvent, SourceError, SourceEvent,
    PROXY_LABEL_SELECTOR,
};
use crate::model::Interner;

/// Builds a Kubernetes client from an explicit kubeconfig file, or — when none is named — the
/// way every Kubernetes tool does (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service
/// account). Plain `http://` servers are accepted, which the test API server relies on.
pub async fn client_from(kubeconfig: Option<&Path>) -> Result<kube::Client, SourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_err = |source| SourceError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig_err)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_err)?
        }
        None => kube::Config::infer().await.map_err(SourceError::Infer)?,
    };
    kube::Client::try_from(config).map_err(SourceError::Client)
}

/// The Kubernetes API as a source of Services, EndpointSlices and this node's Node.
pub struct KubeSource {
    client: kube::Client,
    node_name: String,
}

impl KubeSource {
    /// A source that will watch through `client`, taking only the Node called `node_name`
    /// (its zone label, addresses and podCIDRs are all kproxy needs from Nodes).
    pub fn new(client: kube::Client, node_name: String) -> Self {
        Self { client, node_name }
    }

    /// Starts the three watches and merges them, yielding the API objects. The stream never
    /// ends and never yields an error: the API server being away only means no events until it
    /// is back.
    pub fn events(self) -> BoxStream<'static, SourceEvent> {
        self.watch(
            |svc| svc,
            |slice| slice,
            SourceEvent::Service,
            SourceEvent::Slice,
            SourceEvent::Node,
        )
    }

    /// [`KubeSource::events`] with every Service and EndpointSlice converted into its model
    /// form the moment it arrives (see the module docs). Namespace, node, zone and hint names
    /// are shared through an [`Interner`] per kind.
    pub fn model_events(self) -> BoxStream<'static, ModelEvent> {
        let mut service_names = Interner::default();
        let mut names = Interner::default();
        self.watch(
            move |svc| Converted::service(&svc, &mut service_names),
            move |slice| Converted::slice(&slice, &mut names),
            ModelEvent::Service,
            ModelEvent::Slice,
            ModelEvent::Node,
        )
    }

    /// The three watches, each object passed through its `convert_*`, merged into one stream
    /// of `E`.
    fn watch<S, L, E>(
        self,
        convert_service: impl FnMut(Service) -> S + Send + 'static,
        convert_slice: impl FnMut(EndpointSlice) -> L + Send + 'static,
        service_event: fn(ResourceEvent<S>) -> E,
        slice_event: fn(ResourceEvent<L>) -> E,
        node_event: fn(ResourceEvent<Node>) -> E,
    ) -> BoxStream<'static, E>
    where
        S: Send + 'static,
        L: Send + 'static,
        E: Send + 'static,
    {
        let selected = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
        let services = watch_kind(
            Api::<Service>::all(self.client.clone()),
            selected.clone(),
            "Service",
            convert_service,
        )
        .map(service_event);
        let slices = watch_kind(
            Api::<EndpointSlice>::all(self.client.clone()),
            selected,
            "EndpointSlice",
            convert_slice,
        )
        .map(slice_event);
        let node_config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.node_name));
        let node = watch_kind(Api::<Node>::all(self.client), node_config, "Node", |node| {
            node
        })
        .map(node_event);
        futures::stream::select_all([services.boxed(), slices.boxed(), node.boxed()]).boxed()
    }
}

/// One watcher, with backoff, translated to [`ResourceEvent`]s of converted objects; errors
/// are logged and dropped.
fn watch_kind<K, T>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    convert: impl FnMut(K) -> T + Send + 'static,
) -> impl futures::Stream<Item = ResourceEvent<T>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    T: Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .scan(Translator::new(convert), move |translator, item| {
            let out = match item {
                Ok(event) => translator.translate(event),
                Err(error) => {
                    log_watch_error(resource, &error);
                    None
                }
            };
            ready(Some(out))
        })
        .filter_map(ready)
}

/// Logs a watcher error. `410 Gone` is routine (the resourceVersion was compacted away and the
/// watcher relists at once), so it is logged at info; anything else means the API server is
/// unreachable or refusing, and is a warning.
fn log_watch_error(resource: &'static str, error: &watcher::Error) {
    if matches!(error, watcher::Error::WatchError(status) if status.code == 410) {
        tracing::info!(resource, error = %error, "resourceVersion expired; relisting");
    } else {
        tracing::warn!(
            resource,
            error = %error,
            "watch failed; keeping the last known state and retrying with backoff"
        );
    }
}

/// Turns the watcher's event sequence into [`ResourceEvent`]s, converting each object as it
/// arrives: the state is the (converted) listing being collected between `Init` and
/// `InitDone`. Kept apart from the stream so it is testable without an API server.
struct Translator<T, C> {
    listing: Option<Vec<T>>,
    convert: C,
}

impl<T, C> Translator<T, C> {
    fn new(convert: C) -> Self {
        Self {
            listing: None,
            convert,
        }
    }

    /// The event to emit for one watcher event, if any.
    fn translate<K>(&mut self, event: watcher::Event<K>) -> Option<ResourceEvent<T>>
    where
        K: Resource,
        C: FnMut(K) -> T,
    {
        match event {
            watcher::Event::Init => {
                self.listing = Some(Vec::new());
                None
            }
            watcher::Event::InitApply(object) => {
                if !excluded_by_proxy_selector(object.meta()) {
                    let converted = (self.convert)(object);
                    self.listing.get_or_insert_with(Vec::new).push(converted);
                }
                None
            }
            watcher::Event::InitDone => Some(ResourceEvent::Replaced(
                self.listing.take().unwrap_or_default(),
            )),
            // The API server applies the label selector; this re-check only matters for a
            // server that does not. An object that gained an excluded label is, for kproxy,
            // gone — exactly what a selector-aware server reports with a DELETED event.
            watcher::Event::Apply(object) if excluded_by_proxy_selector(object.meta()) => {
                tracing::debug!(name = %object.name_any(), "object excluded by label; treating as deleted");
                Some(ResourceEvent::Deleted((self.convert)(object)))
            }
            watcher::Event::Apply(object) => Some(ResourceEvent::Applied((self.convert)(object))),
            watcher::Event::Delete(object) => Some(ResourceEvent::Deleted((self.convert)(object))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn service(name: &str, labels: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    #[test]
    fn a_listing_becomes_one_replaced() {
        let mut t = Translator::new(|s: Service| s);
        assert_eq!(t.translate(watcher::Event::Init), None);
        assert_eq!(
            t.translate(watcher::Event::InitApply(service("a", &[]))),
            None
        );
        assert_eq!(
            t.translate(watcher::Event::InitApply(service("b", &[]))),
            None
        );
        assert_eq!(
            t.translate(watcher::Event::InitDone),
            Some(ResourceEvent::Replaced(vec![
                service("a", &[]),
                service("b", &[])
            ]))
        );
        // A relist starts from scratch: nothing of the previous listing leaks into it.
        assert_eq!(t.translate(watcher::Event::Init), None);
        assert_eq!(
            t.translate(watcher::Event::InitDone),
            Some(ResourceEvent::Replaced(vec![]))
        );
    }

    #[test]
    fn applies_and_deletes_pass_through() {
        let mut t = Translator::new(|s: Service| s);
        assert_eq!(
            t.translate(watcher::Event::Apply(service("a", &[]))),
            Some(ResourceEvent::Applied(service("a", &[])))
        );
        assert_eq!(
            t.translate(watcher::Event::Delete(service("a", &[]))),
            Some(ResourceEvent::Deleted(service("a", &[])))
        );
    }

    #[test]
    fn excluded_labels_are_dropped_from_listings_and_turn_applies_into_deletes() {
        let other = service("x", &[(super::super::LABEL_SERVICE_PROXY_NAME, "other")]);
        let mut t = Translator::new(|s: Service| s);
        t.translate(watcher::Event::Init);
        t.translate(watcher::Event::InitApply(other.clone()));
        assert_eq!(
            t.translate(watcher::Event::InitDone),
            Some(ResourceEvent::Replaced(vec![]))
        );
        assert_eq!(
            t.translate(watcher::Event::Apply(other.clone())),
            Some(ResourceEvent::Deleted(other))
        );
    }

    #[test]
    fn a_converting_translator_keeps_only_the_model_form_of_a_listing() {
        let mut converted = 0;
        let mut t = Translator::new(|s: Service| {
            converted += 1;
            Converted::service(&s, &mut Interner::default())
        });
        t.translate(watcher::Event::Init);
        let mut headless = service("h", &[]);
        headless.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            cluster_ip: Some("None".into()),
            ..Default::default()
        });
        t.translate(watcher::Event::InitApply(headless));
        t.translate(watcher::Event::InitApply(service("a", &[])));
        let Some(ResourceEvent::Replaced(list)) = t.translate(watcher::Event::InitDone) else {
            panic!("a listing ends in one Replaced");
        };
        let ids: Vec<String> = list.iter().map(|c| c.id.to_string()).collect();
        assert_eq!(ids, ["default/h", "default/a"]);
        assert_eq!(
            list[0].outcome,
            Ok(crate::model::Accepted::Ignored(
                crate::model::Ignored::Headless
            ))
        );
        drop(t);
        assert_eq!(converted, 2, "each object is converted once, as it arrives");
    }
}
