//! The Topology actor: applies source events to the [`Topology`] state and sends what changed
//! for this node to Sync.
//!
//! All the logic lives in [`crate::topology`]; this shell only moves messages, logs the objects
//! that were skipped as invalid, and counts them.

use super::{
    health::NodeEligibility,
    sync::{Delta, InitialStateComplete},
};
use crate::{
    metrics::{changes::ChangeKind, Metrics},
    source::{ModelEvent, ResourceEvent},
    topology::Topology,
};
use actix::prelude::*;
use std::sync::Arc;

/// A source event for Topology.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observed(pub ModelEvent);

/// Asks Topology how many objects it has skipped as invalid so far.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct SkippedCount;

/// See the module docs.
pub struct TopologyActor {
    topology: Topology,
    sync: Recipient<Delta>,
    ready: Recipient<InitialStateComplete>,
    listed: InitialListing,
    skipped: u64,
    metrics: Option<Arc<Metrics>>,
    node_subscribers: Vec<Recipient<NodeEligibility>>,
    eligible: Option<bool>,
}

/// Which kinds have had their first complete listing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InitialListing {
    services: bool,
    slices: bool,
}

impl InitialListing {
    /// Records an event; returns true exactly once, when both kinds have been listed.
    pub fn observe(&mut self, event: &ModelEvent) -> bool {
        let before = self.complete();
        match event {
            ModelEvent::Service(ResourceEvent::Replaced(_)) => self.services = true,
            ModelEvent::Slice(ResourceEvent::Replaced(_)) => self.slices = true,
            _ => {}
        }
        !before && self.complete()
    }
    /// Whether both Services and EndpointSlices have been listed.
    pub fn complete(&self) -> bool {
        self.services && self.slices
    }
}

impl TopologyActor {
    /// An actor around `topology` that sends deltas to `sync`, and tells `ready` once the
    /// sources have listed everything once.
    pub fn new(
        topology: Topology,
        sync: Recipient<Delta>,
        ready: Recipient<InitialStateComplete>,
    ) -> Self {
        TopologyActor {
            topology,
            sync,
            ready,
            listed: InitialListing::default(),
            skipped: 0,
            metrics: None,
            node_subscribers: Vec::new(),
            eligible: None,
        }
    }

    /// Counts skipped objects and Service / EndpointSlice changes in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Adds a subscriber told whether the node may receive load-balancer traffic, at the
    /// first event and whenever that changes.
    pub fn on_node(mut self, r: Recipient<NodeEligibility>) -> Self {
        self.node_subscribers.push(r);
        self
    }

    fn tell_node_eligibility(&mut self) {
        // No Node object (manifest source without one): nothing says the node is leaving.
        let eligible = self
            .topology
            .node()
            .is_none_or(|n| !n.being_deleted && !n.to_be_deleted_taint);
        if self.eligible != Some(eligible) {
            self.eligible = Some(eligible);
            for s in &self.node_subscribers {
                s.do_send(NodeEligibility { eligible });
            }
        }
    }
}

/// The kind of object an event carries, and how many change events it counts as (upstream
/// counts one per add, update or delete; a relist counts the services it changed).
fn change_kind(event: &ModelEvent) -> (ChangeKind, Option<u64>) {
    fn single<K>(e: &ResourceEvent<K>) -> Option<u64> {
        match e {
            ResourceEvent::Replaced(_) => None,
            _ => Some(1),
        }
    }
    match event {
        ModelEvent::Service(e) => (ChangeKind::Service, single(e)),
        ModelEvent::Slice(e) => (ChangeKind::EndpointSlice, single(e)),
        ModelEvent::Node(_) => (ChangeKind::Node, Some(0)),
    }
}

impl Actor for TopologyActor {
    type Context = Context<Self>;
}

impl Handler<Observed> for TopologyActor {
    type Result = ();
    fn handle(&mut self, msg: Observed, _: &mut Context<Self>) {
        let now_complete = self.listed.observe(&msg.0);
        let (kind, events) = change_kind(&msg.0);
        for skipped in self.topology.apply(msg.0) {
            self.skipped += 1;
            if let Some(m) = &self.metrics {
                m.object_skipped(skipped.kind.as_str());
            }
            tracing::warn!(object = %skipped, "skipping invalid object");
        }
        let delta = self.topology.take_delta().map(|d| Delta(d, kind));
        if let Some(m) = &self.metrics {
            let n =
                events.unwrap_or_else(|| delta.as_ref().map_or(0, |d| d.services().len() as u64));
            match kind {
                ChangeKind::Service => m.changes_seen(n, 0),
                ChangeKind::EndpointSlice => m.changes_seen(0, n),
                ChangeKind::Node => {}
            }
        }
        if let Some(delta) = delta {
            self.sync.do_send(delta);
        }
        self.tell_node_eligibility();
        if now_complete {
            self.ready.do_send(InitialStateComplete);
        }
    }
}

impl Handler<SkippedCount> for TopologyActor {
    type Result = u64;
    fn handle(&mut self, _: SkippedCount, _: &mut Context<Self>) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceEvent;

    #[test]
    fn initial_listing_completes_once_both_kinds_are_listed() {
        let mut l = InitialListing::default();
        assert!(!l.observe(&ModelEvent::from(SourceEvent::Service(
            ResourceEvent::Deleted(Default::default())
        ))));
        assert!(!l.observe(&ModelEvent::Service(ResourceEvent::Replaced(vec![]))));
        assert!(!l.complete());
        assert!(l.observe(&ModelEvent::Slice(ResourceEvent::Replaced(vec![]))));
        assert!(
            !l.observe(&ModelEvent::Slice(ResourceEvent::Replaced(vec![]))),
            "only once"
        );
        assert!(l.complete());
    }
}
