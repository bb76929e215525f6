//! When to sync: kube-proxy's `minSyncPeriod` / `syncPeriod` rules as a plain state machine.
//!
//! - A change after a quiet period is applied at once.
//! - Changes arriving within `min_sync_period` of the last sync wait until that period has
//!   passed, so a burst of a thousand changes becomes a handful of syncs.
//! - Every `sync_period` a full resync runs even without changes, putting right anything that
//!   edited the kernel behind kproxy's back.
//! - A failed sync is retried with exponential backoff, starting at `min_sync_period` (at least
//!   one second) and capped at `sync_period`; the retry is a full sync.
//!
//! Time is passed in, never read, so tests drive it.

use std::time::{Duration, Instant};

/// What the scheduler decides the next sync must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// When it is due.
    pub at: Instant,
    /// Whether it must be a full sync.
    pub full: bool,
}

/// The sync timing state machine.
#[derive(Debug, Clone)]
pub struct SyncScheduler {
    min_period: Duration,
    sync_period: Duration,
    last_start: Option<Instant>,
    last_full: Option<Instant>,
    pending_since: Option<Instant>,
    retry_at: Option<Instant>,
    failures: u32,
    running: bool,
}

impl SyncScheduler {
    /// A scheduler for the given periods. `sync_period` must be non-zero (config validation
    /// guarantees it).
    pub fn new(min_period: Duration, sync_period: Duration) -> Self {
        SyncScheduler {
            min_period,
            sync_period: sync_period.max(Duration::from_millis(1)),
            last_start: None,
            last_full: None,
            pending_since: None,
            retry_at: None,
            failures: 0,
            running: false,
        }
    }

    /// Records that state changed at `now`; the change waits for the next sync.
    pub fn on_change(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// Whether a change is waiting to be applied.
    pub fn has_pending(&self) -> bool {
        self.pending_since.is_some()
    }

    /// When the oldest unapplied change arrived, if any (for health: a change queued too long
    /// without a successful sync means the proxy is unhealthy).
    pub fn pending_since(&self) -> Option<Instant> {
        self.pending_since
    }

    /// Consecutive failed syncs.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The next sync that must happen, or `None` while one is running. Never in the past
    /// relative to what was decided; callers compare with their clock.
    pub fn next(&self) -> Option<Due> {
        if self.running {
            return None;
        }
        let Some(last_start) = self.last_start else {
            // Nothing synced yet: the first sync is full and immediate.
            return Some(Due {
                at: self.pending_since.unwrap_or_else(Instant::now),
                full: true,
            });
        };
        let periodic = Due {
            at: self.last_full.unwrap_or(last_start) + self.sync_period,
            full: true,
        };
        let mut due = periodic;
        if let Some(retry) = self.retry_at {
            if retry <= due.at {
                due = Due {
                    at: retry,
                    full: true,
                };
            }
        }
        if let Some(since) = self.pending_since {
            let at = since.max(last_start + self.min_period);
            if at < due.at {
                // A pending change after a failure still waits for the retry backoff.
                let full = self.failures > 0;
                let at = self.retry_at.map_or(at, |r| at.max(r));
                if at < due.at {
                    due = Due { at, full };
                }
            }
        }
        Some(due)
    }

    /// Records that a sync started at `now`. Changes recorded from now on wait for the next one.
    pub fn on_start(&mut self, now: Instant, full: bool) -> StartedSync {
        self.running = true;
        self.last_start = Some(now);
        if full {
            self.last_full = Some(now);
        }
        StartedSync {
            pending_since: self.pending_since.take(),
        }
    }

    /// Records the end of the sync started with `started`.
    pub fn on_finish(&mut self, now: Instant, started: StartedSync, ok: bool) {
        self.running = false;
        if ok {
            self.failures = 0;
            self.retry_at = None;
        } else {
            self.failures = self.failures.saturating_add(1);
            let base = self.min_period.max(Duration::from_secs(1));
            let backoff = base
                .saturating_mul(1u32 << (self.failures - 1).min(16))
                .min(self.sync_period);
            self.retry_at = Some(now + backoff);
            // The changes were not applied: they are pending again, since their first arrival.
            if let Some(since) = started.pending_since {
                self.pending_since = Some(self.pending_since.map_or(since, |p| p.min(since)));
            }
        }
    }
}

/// Returned by [`SyncScheduler::on_start`]; hand it back to [`SyncScheduler::on_finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct StartedSync {
    pending_since: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const SYNC: Duration = Duration::from_secs(30);

    /// Drives the scheduler through a stream of change times, running every sync that comes
    /// due (each taking no time), and returns the sync start offsets in milliseconds.
    fn simulate(
        changes_ms: &[u64],
        until_ms: u64,
        fail: impl Fn(usize) -> bool,
    ) -> Vec<(u64, bool)> {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = SyncScheduler::new(MIN, SYNC);
        let mut syncs = Vec::new();
        let mut changes = changes_ms.iter().copied().peekable();
        let mut now_ms = 0;
        loop {
            let due = s.next().unwrap();
            let due_ms = due.at.saturating_duration_since(t0).as_millis() as u64;
            let next_change = changes.peek().copied();
            match next_change {
                Some(c) if c < due_ms.max(now_ms) || (c <= now_ms) => {
                    s.on_change(at(c));
                    now_ms = now_ms.max(c);
                    changes.next();
                }
                _ => {
                    let start = due_ms.max(now_ms);
                    if start > until_ms {
                        return syncs;
                    }
                    let started = s.on_start(at(start), due.full);
                    let ok = !fail(syncs.len());
                    syncs.push((start, due.full));
                    s.on_finish(at(start), started, ok);
                    now_ms = start;
                }
            }
        }
    }

    #[test]
    fn first_sync_is_full_and_immediate() {
        let syncs = simulate(&[], 0, |_| false);
        assert_eq!(syncs, vec![(0, true)]);
    }

    #[test]
    fn a_burst_of_1000_changes_becomes_a_handful_of_syncs() {
        // 1,000 changes spread over 2.5 s after a quiet 15 s (clear of the periodic resyncs).
        let changes: Vec<u64> = (0..1000).map(|i| 45_000 + i * 5 / 2).collect();
        let syncs = simulate(&changes, 49_000, |_| false);
        let in_burst: Vec<_> = syncs.iter().filter(|(t, _)| *t >= 45_000).collect();
        assert!(
            (2..=5).contains(&in_burst.len()),
            "expected a handful of syncs for the burst, got {in_burst:?}"
        );
        // The first change after the quiet period is applied at once.
        assert_eq!(in_burst[0].0, 45_000);
        assert!(!in_burst[0].1, "a change-driven sync is partial");
        // Syncs are at least min_sync_period apart.
        for w in in_burst.windows(2) {
            assert!(w[1].0 - w[0].0 >= 1_000, "{w:?}");
        }
    }

    #[test]
    fn a_full_resync_runs_every_sync_period_without_changes() {
        let syncs = simulate(&[], 95_000, |_| false);
        assert_eq!(
            syncs,
            vec![(0, true), (30_000, true), (60_000, true), (90_000, true)]
        );
    }

    #[test]
    fn failures_back_off_exponentially_and_retry_full() {
        // The first four syncs fail.
        let syncs = simulate(&[10_000], 40_000, |n| (1..=4).contains(&n));
        let times: Vec<u64> = syncs.iter().map(|s| s.0).collect();
        assert_eq!(times[..6], [0, 10_000, 11_000, 13_000, 17_000, 25_000]);
        assert!(
            syncs[2..].iter().all(|(_, full)| *full),
            "retries are full: {syncs:?}"
        );
    }

    #[test]
    fn a_failed_sync_keeps_its_changes_pending_since_their_arrival() {
        let t0 = Instant::now();
        let mut s = SyncScheduler::new(MIN, SYNC);
        s.on_change(t0);
        let started = s.on_start(t0, true);
        assert!(!s.has_pending());
        s.on_finish(t0 + Duration::from_millis(5), started, false);
        assert_eq!(s.pending_since(), Some(t0));
        assert_eq!(s.failures(), 1);
        let started = s.on_start(t0 + MIN, true);
        s.on_finish(t0 + MIN, started, true);
        assert_eq!(s.pending_since(), None);
        assert_eq!(s.failures(), 0);
    }

    #[test]
    fn nothing_is_due_while_a_sync_runs() {
        let mut s = SyncScheduler::new(MIN, SYNC);
        let _started = s.on_start(Instant::now(), true);
        assert_eq!(s.next(), None);
    }
}
