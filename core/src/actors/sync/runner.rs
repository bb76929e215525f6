//! The sync thread: owns the dataplane and the desired state, and runs blocking plugin calls.
//!
//! It is an actix `SyncArbiter` actor on its own OS thread, so a plugin that talks to the kernel
//! (or stalls) never blocks the async runtime that serves health checks and watches the API.
//! Messages are handled in order, so a state patch never interleaves with a running sync.

use super::{store::StateStore, summary::StateSummary};
use crate::{plugin_host::Dataplane, topology::StateDelta};
use actix::prelude::*;
use kproxy_plugin_api::{PluginError, SyncReport};
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

/// Patches the desired state; applied at the next sync.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Patch(pub StateDelta);

/// Runs one sync now.
#[derive(Message)]
#[rtype(result = "SyncOutcome")]
pub struct RunSync {
    /// Ask the plugin for a full sync even if only some keys changed.
    pub full: bool,
}

/// What one sync did.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    /// The plugin's report, or its error.
    pub result: Result<SyncReport, PluginError>,
    /// Whether the plugin was asked for a full sync.
    pub full: bool,
    /// The state generation the sync applied.
    pub generation: u64,
    /// How many service ports and endpoints the desired state holds.
    pub services: usize,
    /// See `services`.
    pub endpoints: usize,
    /// How many changed keys the sync carried.
    pub changed: usize,
    /// Wall-clock time the sync ended, for `..._last_timestamp_seconds`.
    pub finished_at: SystemTime,
    /// How long the plugin call took.
    pub duration: Duration,
    /// The `last-change-trigger-time`s of the slice changes this sync applied (empty when it
    /// failed: they wait for the sync that does apply them).
    pub trigger_times: Vec<SystemTime>,
    /// Health-check ports and local-endpoint facts of the applied state; `None` when the
    /// sync failed (the previous rules, and so the previous answers, still stand).
    pub summary: Option<Arc<StateSummary>>,
    /// The plugin's counters after the sync, as `(name, value)`.
    pub plugin_stats: Option<Vec<(String, u64)>>,
}

/// The actor that owns the dataplane; see the module docs.
pub struct PluginRunner {
    // Boxed because actors must be `Unpin` and abi_stable's trait objects are not.
    dataplane: Box<Dataplane>,
    store: StateStore,
    /// Whether the first sync has run (and memory has been handed back; see [`release_free_memory`]).
    first_sync_done: bool,
}

impl PluginRunner {
    /// Wraps a built dataplane with an empty desired state.
    pub fn new(dataplane: Dataplane) -> Self {
        PluginRunner {
            dataplane: Box::new(dataplane),
            store: StateStore::new(),
            first_sync_done: false,
        }
    }

    /// Runs one sync; the plain logic behind the [`RunSync`] handler.
    pub fn run(&mut self, full: bool) -> SyncOutcome {
        let changes = self.store.change_set(full);
        let trigger_times = self.store.take_trigger_times();
        let state = self.store.state();
        let started = Instant::now();
        let result = self.dataplane.sync(state, &changes);
        let duration = started.elapsed();
        let ok = result.is_ok();
        let mut outcome = SyncOutcome {
            full: changes.full,
            generation: state.generation,
            services: state.services.len(),
            endpoints: state.endpoint_count(),
            changed: changes.changed.len(),
            finished_at: SystemTime::now(),
            duration,
            result,
            trigger_times: Vec::new(),
            // Computed here, where the state lives, so subscribers need no copy of it.
            summary: ok.then(|| Arc::new(StateSummary::of(state))),
            plugin_stats: Some(
                self.dataplane
                    .stats()
                    .counters
                    .iter()
                    .map(|t| (t.0.to_string(), t.1))
                    .collect(),
            ),
        };
        if ok {
            outcome.trigger_times = trigger_times;
        } else {
            // Not applied: their latency is measured by the sync that does apply them.
            self.store.return_trigger_times(trigger_times);
        }
        self.store.finish(&changes, ok);
        if !self.first_sync_done {
            self.first_sync_done = true;
            release_free_memory();
        }
        outcome
    }
}

impl Actor for PluginRunner {
    type Context = SyncContext<Self>;
}

impl Handler<Patch> for PluginRunner {
    type Result = ();
    fn handle(&mut self, msg: Patch, _: &mut SyncContext<Self>) {
        self.store.apply(msg.0);
    }
}

impl Handler<RunSync> for PluginRunner {
    type Result = MessageResult<RunSync>;
    fn handle(&mut self, msg: RunSync, _: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(self.run(msg.full))
    }
}

/// Hands the heap's free pages back to the kernel (glibc's `malloc_trim`). Run once, after the
/// first sync: by then the initial listing and the first full state build are over, and glibc
/// would otherwise keep the memory they freed resident for the rest of the daemon's life. It
/// does not lower the peak (`VmHWM`), only what stays resident after it.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released = released != 0,
            "returned free heap memory after the first sync"
        );
    }
}
