//! The Watcher actor: owns the source's event stream (Kubernetes API or manifest folder) and
//! hands each event to Topology, in order.
//!
//! Sources never end their stream on errors (they back off and retry, keeping the last known
//! state downstream), so a stream that ends means the source is gone for good: the daemon stops
//! with an error rather than serving a state that can no longer change.

use super::topology::Observed;
use crate::source::{ModelEvent, ResourceEvent};
use actix::prelude::*;
use futures::stream::BoxStream;

/// See the module docs.
pub struct WatcherActor {
    stream: Option<BoxStream<'static, ModelEvent>>,
    topology: Recipient<Observed>,
}

impl WatcherActor {
    /// A watcher that forwards `stream` to `topology` once started.
    pub fn new(stream: BoxStream<'static, ModelEvent>, topology: Recipient<Observed>) -> Self {
        WatcherActor {
            stream: Some(stream),
            topology,
        }
    }
}

impl Actor for WatcherActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(stream) = self.stream.take() {
            ctx.add_stream(stream);
        }
    }
}

impl StreamHandler<ModelEvent> for WatcherActor {
    fn handle(&mut self, event: ModelEvent, _: &mut Context<Self>) {
        let (kind, what, count) = describe(&event);
        tracing::trace!(kind, what, count, "source event");
        self.topology.do_send(Observed(event));
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        tracing::error!("the object source ended; kproxy cannot follow changes any more");
        System::current().stop_with_code(1);
    }
}

fn describe(event: &ModelEvent) -> (&'static str, &'static str, usize) {
    fn of<K>(e: &ResourceEvent<K>) -> (&'static str, usize) {
        match e {
            ResourceEvent::Applied(_) => ("applied", 1),
            ResourceEvent::Deleted(_) => ("deleted", 1),
            ResourceEvent::Replaced(v) => ("replaced", v.len()),
        }
    }
    match event {
        ModelEvent::Service(e) => ("Service", of(e).0, of(e).1),
        ModelEvent::Slice(e) => ("EndpointSlice", of(e).0, of(e).1),
        ModelEvent::Node(e) => ("Node", of(e).0, of(e).1),
    }
}
