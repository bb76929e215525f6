//! The Topology actor: applies source events to the [`Topology`] state and sends what changed
//! for this node to Sync.
//!
//! All the logic lives in [`crate::topology`]; this shell only moves messages, logs the objects
//! that were skipped as invalid, and counts them.

use super::sync::{Delta, InitialStateComplete};
use crate::{
    source::{ResourceEvent, SourceEvent},
    topology::Topology,
};
use actix::prelude::*;

/// A source event for Topology.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observed(pub SourceEvent);

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
}

/// Which kinds have had their first complete listing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InitialListing {
    services: bool,
    slices: bool,
}

impl InitialListing {
    /// Records an event; returns true exactly once, when both kinds have been listed.
    pub fn observe(&mut self, event: &SourceEvent) -> bool {
        let before = self.complete();
        match event {
            SourceEvent::Service(ResourceEvent::Replaced(_)) => self.services = true,
            SourceEvent::Slice(ResourceEvent::Replaced(_)) => self.slices = true,
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
        }
    }
}

impl Actor for TopologyActor {
    type Context = Context<Self>;
}

impl Handler<Observed> for TopologyActor {
    type Result = ();
    fn handle(&mut self, msg: Observed, _: &mut Context<Self>) {
        let now_complete = self.listed.observe(&msg.0);
        for skipped in self.topology.apply(msg.0) {
            self.skipped += 1;
            tracing::warn!(object = %skipped, "skipping invalid object");
        }
        if let Some(delta) = self.topology.take_delta() {
            self.sync.do_send(Delta(delta));
        }
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

    #[test]
    fn initial_listing_completes_once_both_kinds_are_listed() {
        let mut l = InitialListing::default();
        assert!(!l.observe(&SourceEvent::Service(ResourceEvent::Deleted(
            Default::default()
        ))));
        assert!(!l.observe(&SourceEvent::Service(ResourceEvent::Replaced(vec![]))));
        assert!(!l.complete());
        assert!(l.observe(&SourceEvent::Slice(ResourceEvent::Replaced(vec![]))));
        assert!(
            !l.observe(&SourceEvent::Slice(ResourceEvent::Replaced(vec![]))),
            "only once"
        );
        assert!(l.complete());
    }
}
