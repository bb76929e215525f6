//! The Sync actor: decides when to sync ([`scheduler`]), and hands the work to the sync thread
//! ([`runner`]) that owns the dataplane and the desired state ([`store`]). After a successful
//! sync the runner summarises the applied state for the health checks and metrics
//! ([`summary`]); the actor records sync metrics and tells its subscribers.

pub mod runner;
pub mod scheduler;
pub mod store;
pub mod summary;

use crate::{
    metrics::{
        changes::{ChangeKind, PendingChanges},
        Metrics,
    },
    model::NamespacedName,
    topology::StateDelta,
};
use actix::prelude::*;
use runner::{Patch, PluginRunner, RunSync, SyncOutcome};
use scheduler::SyncScheduler;
use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

/// A resolved change from Topology, and the kind of object whose event caused it (for the
/// pending-changes metrics).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Delta(pub StateDelta, pub ChangeKind);

impl Delta {
    /// The services whose ports this delta changes.
    pub fn services(&self) -> BTreeSet<NamespacedName> {
        let d = &self.0;
        d.upserts
            .iter()
            .map(|p| &p.key)
            .chain(d.removed.iter())
            .map(|k| NamespacedName::new(k.namespace.as_str(), k.name.as_str()))
            .collect()
    }
}

/// Topology has seen the first complete listing of Services and EndpointSlices. Until then no
/// sync runs: a full sync of a half-known state would delete the rules a previous kproxy left
/// serving (upstream likewise waits for its informers to sync).
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct InitialStateComplete;

/// Sent to every subscriber after each sync (health, metrics, readiness).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct SyncFinished {
    /// What the sync did.
    pub outcome: SyncOutcome,
    /// Whether changes are still waiting (e.g. the sync failed), and since when.
    pub pending_since: Option<Instant>,
    /// Consecutive failures so far.
    pub failures: u32,
}

/// Sent to subscribers when a change is queued, so health can tell a stalled proxy.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct ChangeQueued {
    /// When the oldest unapplied change arrived.
    pub pending_since: Instant,
}

/// Rate-limits, coalesces and retries syncs; see [`scheduler`] for the rules.
pub struct SyncActor {
    runner: Addr<PluginRunner>,
    scheduler: SyncScheduler,
    timer: Option<SpawnHandle>,
    ready: bool,
    finished_subscribers: Vec<Recipient<SyncFinished>>,
    queued_subscribers: Vec<Recipient<ChangeQueued>>,
    metrics: Option<Arc<Metrics>>,
    pending: PendingChanges,
}

impl SyncActor {
    /// A Sync actor driving `runner` with kube-proxy's `minSyncPeriod` and `syncPeriod`.
    pub fn new(
        runner: Addr<PluginRunner>,
        min_sync_period: Duration,
        sync_period: Duration,
    ) -> Self {
        SyncActor {
            runner,
            scheduler: SyncScheduler::new(min_sync_period, sync_period),
            timer: None,
            ready: false,
            finished_subscribers: Vec::new(),
            queued_subscribers: Vec::new(),
            metrics: None,
            pending: PendingChanges::default(),
        }
    }

    /// Records syncs and pending changes in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn publish_pending(&self) {
        if let Some(m) = &self.metrics {
            let (services, endpoints) = self.pending.counts();
            m.set_pending(services, endpoints);
        }
    }

    /// Adds a subscriber told after every sync.
    pub fn on_finished(mut self, r: Recipient<SyncFinished>) -> Self {
        self.finished_subscribers.push(r);
        self
    }

    /// Adds a subscriber told whenever a change is queued.
    pub fn on_queued(mut self, r: Recipient<ChangeQueued>) -> Self {
        self.queued_subscribers.push(r);
        self
    }

    fn reschedule(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if !self.ready {
            return;
        }
        let Some(due) = self.scheduler.next() else {
            return;
        };
        let wait = due.at.saturating_duration_since(Instant::now());
        self.timer = Some(ctx.run_later(wait, move |act, ctx| {
            act.timer = None;
            act.start_sync(due.full, ctx);
        }));
    }

    fn start_sync(&mut self, full: bool, ctx: &mut Context<Self>) {
        let started = self.scheduler.on_start(Instant::now(), full);
        self.pending.start();
        self.runner
            .send(RunSync { full })
            .into_actor(self)
            .map(move |res, act, ctx| {
                let outcome = match res {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        // The sync thread is gone; nothing can be applied any more.
                        tracing::error!(error = %e, "sync thread unavailable; stopping");
                        System::current().stop_with_code(1);
                        return;
                    }
                };
                let ok = outcome.result.is_ok();
                act.scheduler.on_finish(Instant::now(), started, ok);
                act.pending.finish(ok);
                act.publish_pending();
                if let Some(m) = &act.metrics {
                    m.sync_finished(&outcome);
                }
                log_outcome(&outcome, act.scheduler.failures());
                let msg = SyncFinished {
                    outcome,
                    pending_since: act.scheduler.pending_since(),
                    failures: act.scheduler.failures(),
                };
                for s in &act.finished_subscribers {
                    s.do_send(msg.clone());
                }
                act.reschedule(ctx);
            })
            .spawn(ctx);
    }
}

fn log_outcome(o: &SyncOutcome, failures: u32) {
    let ms = o.duration.as_secs_f64() * 1000.0;
    match &o.result {
        Ok(report) => tracing::debug!(
            generation = o.generation,
            full = o.full,
            changed = o.changed,
            services = o.services,
            endpoints = o.endpoints,
            objects_written = report.objects_written,
            duration_ms = ms,
            "synced"
        ),
        Err(e) => tracing::warn!(
            generation = o.generation,
            full = o.full,
            failures,
            code = e.code.as_str(),
            error = %e.message,
            "sync failed; previous rules stay in place, retrying with backoff"
        ),
    }
}

impl Actor for SyncActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.reschedule(ctx);
    }
}

impl Handler<InitialStateComplete> for SyncActor {
    type Result = ();
    fn handle(&mut self, _: InitialStateComplete, ctx: &mut Context<Self>) {
        if !self.ready {
            tracing::info!("initial state known; starting to sync");
            self.ready = true;
            self.reschedule(ctx);
        }
    }
}

impl Handler<Delta> for SyncActor {
    type Result = ();
    fn handle(&mut self, msg: Delta, ctx: &mut Context<Self>) {
        self.pending.queue(msg.1, msg.services());
        self.publish_pending();
        if let Some(m) = &self.metrics {
            m.change_queued(SystemTime::now());
        }
        self.runner.do_send(Patch(msg.0));
        let now = Instant::now();
        self.scheduler.on_change(now);
        if let Some(pending_since) = self.scheduler.pending_since() {
            for s in &self.queued_subscribers {
                s.do_send(ChangeQueued { pending_since });
            }
        }
        self.reschedule(ctx);
    }
}
