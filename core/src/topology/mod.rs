//! Resolves services and endpoints for this node as upstream kube-proxy does, and tracks which
//! service ports changed.
//!
//! [`Topology`] is a plain state struct (the Topology actor is a thin shell around it):
//!
//! 1. [`Topology::apply`] takes one [`ModelEvent`] (objects already validated through
//!    [`crate::model`] by the source) or [`SourceEvent`] (validated here), updates its
//!    stores, and re-resolves only the services that event touched (a dirty set), so one
//!    endpoint change among 44,000 services costs one service's worth of work.
//! 2. [`Topology::take_delta`] returns the service ports whose resolved form differs from what
//!    the previous call returned, the keys that disappeared, the node's facts when they changed,
//!    and the slices' last-change-trigger-times for network-programming latency.
//! 3. [`Topology::snapshot`] resolves every service port afresh (for tests and tools: the
//!    sync thread keeps the desired state itself, patched by the deltas).
//!
//! Topology does not keep the resolved service ports: the sync thread's store holds the one
//! full copy of the desired state. Per service port it remembers only a 128-bit digest of the
//! form it last reported, which is all it needs to tell a real change from a re-resolution
//! that came out the same; a changed port is held only until the next `take_delta` moves it
//! out. (Two different forms with the same digest would hide a change; with 128 bits of
//! SipHash that is not a practical concern.)
//!
//! The resolved state is a pure function of the current objects: an object that is invalid or
//! ignored counts as absent (its earlier valid form is dropped too), so a relist
//! ([`ResourceEvent::Replaced`]) gives the same state as the same changes applied one by one.
//! Slices may arrive before their service and outlive it; they are kept and used whenever the
//! service exists.
//!
//! The resolution rules themselves (merging slices, ready/terminating fallback, traffic
//! policies, topology hints) live in `resolve.rs`, following upstream's endpointslicecache.go
//! and topology.go.

use crate::model::node::NodeInfo;
use crate::model::service::ServiceInfo;
use crate::model::slice::SliceInfo;
use crate::model::{Accepted, Invalid, NamespacedName};
#[cfg(doc)]
use crate::source::SourceEvent;
use crate::source::{Converted, ModelEvent, ResourceEvent};
use k8s_openapi::api::core::v1::Node;
use kproxy_plugin_api::model::{NodeFacts, Protocol, ServicePort, ServicePortKey};
use std::collections::{hash_map::Entry, BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

mod resolve;
#[cfg(test)]
mod tests;

/// An object [`Topology::apply`] skipped as invalid: which one and why. The caller logs it as a
/// warning and counts it.
pub type Skipped = Invalid;

/// How to build a [`Topology`].
#[derive(Debug, Clone, Default)]
pub struct TopologyConfig {
    /// This node's name: endpoints whose `nodeName` equals it are local, and only the Node
    /// object of this name is read. Empty: no endpoint is local (as upstream).
    pub node_name: String,
    /// Handle IPv4 services and endpoints.
    pub ipv4: bool,
    /// Handle IPv6 services and endpoints.
    pub ipv6: bool,
    /// Facts from the host itself (addresses of its interfaces), used while no Node object is
    /// known and for the parts a Node object leaves empty.
    pub host_facts: NodeFacts,
    /// Trigger times at or before this instant are not reported (upstream ignores those older
    /// than the tracker's start, so the initial list does not count as programming latency).
    pub ignore_trigger_times_before: Option<SystemTime>,
}

impl TopologyConfig {
    /// A config for node `node_name` with the given families and nothing else.
    pub fn new(node_name: &str, ipv4: bool, ipv6: bool) -> Self {
        TopologyConfig {
            node_name: node_name.to_string(),
            ipv4,
            ipv6,
            ..Default::default()
        }
    }
}

/// What changed since the previous [`Topology::take_delta`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDelta {
    /// Service ports added or whose resolved form changed, sorted by key.
    pub upserts: Vec<ServicePort>,
    /// Service ports that no longer exist, sorted.
    pub removed: Vec<ServicePortKey>,
    /// The node's facts, when they changed (always present in the first delta).
    pub node: Option<NodeFacts>,
    /// The `last-change-trigger-time`s of the slice changes behind this delta's service ports.
    pub trigger_times: Vec<SystemTime>,
}

impl StateDelta {
    /// Whether the delta carries no change.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed.is_empty() && self.node.is_none()
    }
}

/// What Topology remembers of a resolved service port (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest {
    /// Two SipHash values of the whole port, under different prefixes.
    hash: [u64; 2],
    /// Its endpoint count, for [`Topology::endpoint_count`].
    endpoints: usize,
}

impl Digest {
    fn of(port: &ServicePort) -> Digest {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let hash = [0u8, 1u8].map(|prefix| {
            let mut h = DefaultHasher::new();
            prefix.hash(&mut h);
            port.hash(&mut h);
            h.finish()
        });
        Digest {
            hash,
            endpoints: port.endpoints.len(),
        }
    }
}

/// A service port changed since the last take.
#[derive(Debug)]
struct Pending {
    /// Its digest as of the last take (`None`: it did not exist).
    before: Option<Digest>,
    /// Its current form (`None`: it no longer exists). Present exactly when
    /// the resolved digests hold the key. Boxed: the table stays small, and so does the copy
    /// of it made while it grows.
    now: Option<Box<ServicePort>>,
}

/// The cluster-wide picture resolved for this node. See the module docs.
#[derive(Debug)]
pub struct Topology {
    config: TopologyConfig,
    services: HashMap<NamespacedName, ServiceInfo>,
    slices: HashMap<NamespacedName, SliceInfo>,
    /// Slice names per service (same namespace), sorted so merging is deterministic.
    /// (A sorted `Vec`, not a `BTreeSet`: services have one slice or a few, and a set's node
    /// costs ten times a one-element vector — at 44,000 services that is megabytes.)
    slices_by_service: HashMap<NamespacedName, Vec<Arc<str>>>,
    node: Option<NodeInfo>,
    /// The digest of every resolved service port, sorted by key (a service's ports are
    /// contiguous).
    resolved: BTreeMap<ServicePortKey, Digest>,
    endpoint_total: usize,
    /// Services to re-resolve at the end of the current `apply`.
    dirty: HashSet<NamespacedName>,
    /// Keys changed since the last take: their digest as of that take and their current form.
    pending: HashMap<ServicePortKey, Pending>,
    /// Trigger times of slice changes since the last take, per service.
    trigger_times: HashMap<NamespacedName, Vec<SystemTime>>,
    /// The node facts the last take reported.
    taken_node: Option<NodeFacts>,
    /// How many times a service was resolved (lets tests prove work stays proportional to
    /// what changed).
    resolutions: u64,
}

impl Topology {
    /// An empty topology for this node.
    pub fn new(config: TopologyConfig) -> Self {
        Topology {
            config,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            node: None,
            resolved: BTreeMap::new(),
            endpoint_total: 0,
            dirty: HashSet::new(),
            pending: HashMap::new(),
            trigger_times: HashMap::new(),
            taken_node: None,
            resolutions: 0,
        }
    }

    /// Applies one source event (a [`ModelEvent`], or a [`SourceEvent`], converted here) and
    /// re-resolves the services it touched. Returns the objects skipped as invalid; every other
    /// object in the event is applied.
    pub fn apply(&mut self, event: impl Into<ModelEvent>) -> Vec<Skipped> {
        let mut skipped = Vec::new();
        match event.into() {
            ModelEvent::Service(ev) => match ev {
                ResourceEvent::Applied(svc) => self.apply_service(svc, &mut skipped),
                ResourceEvent::Deleted(svc) => self.remove_service(&svc.id),
                ResourceEvent::Replaced(list) => {
                    let keep: HashSet<&NamespacedName> = list.iter().map(|s| &s.id).collect();
                    let gone: Vec<NamespacedName> = self
                        .services
                        .keys()
                        .filter(|id| !keep.contains(id))
                        .cloned()
                        .collect();
                    drop(keep);
                    for id in gone {
                        self.remove_service(&id);
                    }
                    for svc in list {
                        self.apply_service(svc, &mut skipped);
                    }
                }
            },
            ModelEvent::Slice(ev) => match ev {
                ResourceEvent::Applied(slice) => self.apply_slice(slice, &mut skipped),
                ResourceEvent::Deleted(slice) => self.remove_slice(&slice.id),
                ResourceEvent::Replaced(list) => {
                    let keep: HashSet<&NamespacedName> = list.iter().map(|s| &s.id).collect();
                    let gone: Vec<NamespacedName> = self
                        .slices
                        .keys()
                        .filter(|id| !keep.contains(id))
                        .cloned()
                        .collect();
                    drop(keep);
                    for id in gone {
                        self.remove_slice(&id);
                    }
                    for slice in list {
                        self.apply_slice(slice, &mut skipped);
                    }
                }
            },
            ModelEvent::Node(ev) => match ev {
                ResourceEvent::Applied(node) => self.apply_node(&node, &mut skipped),
                ResourceEvent::Deleted(node) => {
                    if node.metadata.name.as_deref() == Some(self.config.node_name.as_str()) {
                        self.set_node(None);
                    }
                }
                ResourceEvent::Replaced(list) => {
                    let ours = list
                        .iter()
                        .rev()
                        .find(|n| n.metadata.name.as_deref() == Some(&self.config.node_name));
                    match ours {
                        Some(node) => self.apply_node(node, &mut skipped),
                        None => self.set_node(None),
                    }
                }
            },
        }
        self.resolve_dirty();
        skipped
    }

    /// The changes since the previous call (see [`StateDelta`]), or `None` when nothing a
    /// dataplane programs has changed. Only service ports whose resolved form differs from
    /// what was last reported are included.
    pub fn take_delta(&mut self) -> Option<StateDelta> {
        let facts = self.node_facts();
        let node = if self.taken_node.as_ref() != Some(&facts) {
            self.taken_node = Some(facts.clone());
            Some(facts)
        } else {
            None
        };

        let mut upserts = Vec::with_capacity(self.pending.len());
        let mut removed = Vec::new();
        let mut services_in_delta: HashSet<NamespacedName> = HashSet::new();
        // Only needed to filter trigger times; usually there are none to filter.
        let times_pending = !self.trigger_times.is_empty();
        for (key, pending) in self.pending.drain() {
            if self.resolved.get(&key) == pending.before.as_ref() {
                continue; // changed and changed back
            }
            if times_pending {
                services_in_delta.insert(NamespacedName::new(
                    key.namespace.as_str(),
                    key.name.as_str(),
                ));
            }
            match pending.now {
                Some(port) => upserts.push(*port),
                None => removed.push(key),
            }
        }
        upserts.sort_by(|a, b| a.key.cmp(&b.key));
        removed.sort();

        // Trigger times are reported for the services in this delta; the rest described
        // changes that did not alter what is programmed, so there is no latency to measure.
        let mut trigger_times: Vec<SystemTime> = self
            .trigger_times
            .drain()
            .filter(|(svc, _)| services_in_delta.contains(svc))
            .flat_map(|(_, times)| times)
            .collect();
        trigger_times.sort();

        let delta = StateDelta {
            upserts,
            removed,
            node,
            trigger_times,
        };
        (!delta.is_empty()).then_some(delta)
    }

    /// Every service port resolved afresh, sorted by key: the whole desired state. Costs a
    /// resolution of every service; the daemon never calls it.
    pub fn snapshot(&self) -> Vec<ServicePort> {
        let mut ports: Vec<ServicePort> = self
            .services
            .keys()
            .flat_map(|id| self.resolve_ports(id))
            .collect();
        ports.sort_by(|a, b| a.key.cmp(&b.key));
        ports
    }

    /// The resolved form of one service port, resolved afresh.
    pub fn get(&self, key: &ServicePortKey) -> Option<ServicePort> {
        let id = NamespacedName::new(key.namespace.as_str(), key.name.as_str());
        self.resolve_ports(&id).into_iter().find(|p| p.key == *key)
    }

    /// The node's facts as kproxy currently knows them: from the Node object, with the host's
    /// facts filling what it lacks.
    pub fn node_facts(&self) -> NodeFacts {
        let host = &self.config.host_facts;
        let mut facts = match &self.node {
            Some(node) => node.facts(),
            None => NodeFacts {
                name: self.config.node_name.as_str().into(),
                ..host.clone()
            },
        };
        if facts.addresses.is_empty() {
            facts.addresses = host.addresses.clone();
        }
        if facts.pod_cidrs.is_empty() {
            facts.pod_cidrs = host.pod_cidrs.clone();
        }
        facts
    }

    /// This node's Node object as last seen, if any (for the health checks: deletion
    /// timestamp and autoscaler taint).
    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    /// The number of valid services held (including ones without a cluster IP of an enabled
    /// family).
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The number of valid EndpointSlices held.
    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// The number of resolved service ports.
    pub fn service_port_count(&self) -> usize {
        self.resolved.len()
    }

    /// The number of endpoints over all resolved service ports.
    pub fn endpoint_count(&self) -> usize {
        self.endpoint_total
    }

    fn apply_service(&mut self, svc: Converted<ServiceInfo>, skipped: &mut Vec<Skipped>) {
        let id = svc.id;
        match svc.outcome {
            Ok(Accepted::Valid(info)) => {
                if self.services.get(&id) != Some(&info) {
                    self.services.insert(id.clone(), info);
                    self.dirty.insert(id);
                }
            }
            Ok(Accepted::Ignored(why)) => {
                tracing::debug!(service = %id, reason = %why, "service not proxied");
                self.remove_service(&id);
            }
            Err(invalid) => {
                self.remove_service(&id);
                skipped.push(invalid);
            }
        }
    }

    fn remove_service(&mut self, id: &NamespacedName) {
        if self.services.remove(id).is_some() {
            self.dirty.insert(id.clone());
        }
    }

    fn apply_slice(&mut self, slice: Converted<SliceInfo>, skipped: &mut Vec<Skipped>) {
        let id = slice.id;
        match slice.outcome {
            Ok(Accepted::Valid(info)) => {
                if self.slices.get(&id) == Some(&info) {
                    return;
                }
                if let Some(old) = self.slices.get(&id) {
                    if old.service != info.service {
                        let old_service = old.service.clone();
                        self.unindex(&old_service, &id.name);
                    }
                }
                let names = self
                    .slices_by_service
                    .entry(info.service.clone())
                    .or_default();
                if let Err(at) = names.binary_search(&id.name) {
                    names.reserve_exact(1); // most services have one slice
                    names.insert(at, id.name.clone());
                }
                self.dirty.insert(info.service.clone());
                if let Some(t) = info.trigger_time {
                    if self
                        .config
                        .ignore_trigger_times_before
                        .is_none_or(|start| t > start)
                    {
                        self.trigger_times
                            .entry(info.service.clone())
                            .or_default()
                            .push(t);
                    }
                }
                self.slices.insert(id, info);
            }
            Ok(Accepted::Ignored(why)) => {
                tracing::debug!(slice = %id, reason = %why, "endpoint slice not proxied");
                self.remove_slice(&id);
            }
            Err(invalid) => {
                self.remove_slice(&id);
                skipped.push(invalid);
            }
        }
    }

    fn remove_slice(&mut self, id: &NamespacedName) {
        if let Some(old) = self.slices.remove(id) {
            self.unindex(&old.service, &id.name);
            // As upstream: a deletion's trigger time is that of the last update, not of this
            // change, so the service's pending times are dropped rather than measured.
            self.trigger_times.remove(&old.service);
        }
    }

    /// Removes a slice from its service's index and marks the service dirty.
    fn unindex(&mut self, service: &NamespacedName, slice_name: &str) {
        if let Some(names) = self.slices_by_service.get_mut(service) {
            if let Ok(at) = names.binary_search_by(|n| (**n).cmp(slice_name)) {
                names.remove(at);
            }
            if names.is_empty() {
                self.slices_by_service.remove(service);
            }
        }
        self.dirty.insert(service.clone());
    }

    fn apply_node(&mut self, node: &Node, skipped: &mut Vec<Skipped>) {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if name != self.config.node_name {
            tracing::debug!(node = name, "ignoring another node's Node object");
            return;
        }
        match NodeInfo::from_node(node) {
            Ok(info) => self.set_node(Some(info)),
            Err(invalid) => {
                self.set_node(None);
                skipped.push(invalid);
            }
        }
    }

    /// Replaces the node; a zone change re-resolves every service whose slices carry hints.
    fn set_node(&mut self, node: Option<NodeInfo>) {
        let old_zone = self.node.as_ref().and_then(|n| n.zone.clone());
        self.node = node;
        let new_zone = self.node.as_ref().and_then(|n| n.zone.clone());
        if old_zone != new_zone {
            for (service, names) in &self.slices_by_service {
                let hinted = names.iter().any(|name| {
                    self.slices
                        .get(&slice_id(service, name))
                        .is_some_and(SliceInfo::has_hints)
                });
                if hinted {
                    self.dirty.insert(service.clone());
                }
            }
        }
    }

    /// Re-resolves every dirty service and records which keys changed.
    fn resolve_dirty(&mut self) {
        let dirty: Vec<NamespacedName> = self.dirty.drain().collect();
        for id in dirty {
            self.resolve_service(&id);
        }
    }

    /// The service ports of service `id` as they resolve now (none when it is unknown).
    fn resolve_ports(&self, id: &NamespacedName) -> Vec<ServicePort> {
        match self.services.get(id) {
            None => Vec::new(),
            Some(svc) => {
                let slices: Vec<&SliceInfo> = self
                    .slices_by_service
                    .get(id)
                    .into_iter()
                    .flatten()
                    .filter_map(|name| self.slices.get(&slice_id(id, name)))
                    .collect();
                let zone = self
                    .node
                    .as_ref()
                    .and_then(|n| n.zone.as_deref())
                    .unwrap_or_default();
                let view = resolve::NodeView {
                    name: &self.config.node_name,
                    zone,
                    ipv4: self.config.ipv4,
                    ipv6: self.config.ipv6,
                };
                resolve::resolve_service(svc, &slices, view)
            }
        }
    }

    fn resolve_service(&mut self, id: &NamespacedName) {
        self.resolutions += 1;
        let new_ports = self.resolve_ports(id);

        // The service's current ports: a contiguous range of the sorted map.
        let start = ServicePortKey::new(&id.namespace, &id.name, "", Protocol::Tcp);
        let old_keys: Vec<ServicePortKey> = self
            .resolved
            .range(start..)
            .take_while(|(k, _)| {
                k.namespace.as_str() == &*id.namespace && k.name.as_str() == &*id.name
            })
            .map(|(k, _)| k.clone())
            .collect();
        let new_keys: HashSet<&ServicePortKey> = new_ports.iter().map(|p| &p.key).collect();
        for key in old_keys {
            if !new_keys.contains(&key) {
                if let Some(old) = self.resolved.remove(&key) {
                    self.endpoint_total -= old.endpoints;
                    // The digest as of the last take is kept once however often it changes.
                    self.pending
                        .entry(key)
                        .or_insert(Pending {
                            before: Some(old),
                            now: None,
                        })
                        .now = None;
                }
            }
        }
        for port in new_ports {
            let digest = Digest::of(&port);
            let old = self.resolved.get(&port.key).copied();
            if old == Some(digest) {
                continue;
            }
            self.endpoint_total -= old.map_or(0, |o| o.endpoints);
            self.endpoint_total += digest.endpoints;
            self.resolved.insert(port.key.clone(), digest);
            match self.pending.entry(port.key.clone()) {
                Entry::Occupied(mut e) => e.get_mut().now = Some(Box::new(port)),
                Entry::Vacant(e) => {
                    e.insert(Pending {
                        before: old,
                        now: Some(Box::new(port)),
                    });
                }
            }
        }
    }
}

/// The identity of slice `name` of `service` (slices live in their service's namespace), built
/// from shared strings without allocating.
fn slice_id(service: &NamespacedName, name: &Arc<str>) -> NamespacedName {
    NamespacedName {
        namespace: service.namespace.clone(),
        name: name.clone(),
    }
}
