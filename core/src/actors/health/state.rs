//! The proxy's own health, as upstream's `ProxyHealthServer` decides it, as a plain state
//! struct: time is always passed in, so tests drive it.
//!
//! - Healthy while starting up, until a change is queued.
//! - A queued change makes the proxy unhealthy once it has waited `timeout` (upstream: twice
//!   `syncPeriod`) without a successful sync applying it.
//! - A failed sync counts as a queued change from the moment it failed (if none was queued
//!   already): the kernel may not match the desired state, so a dataplane that keeps failing
//!   turns unhealthy once it has failed for `timeout`, even when nothing else changes. Upstream
//!   has no equivalent; its proxiers retry silently.
//! - `/healthz` is also unhealthy while the Node is being deleted or carries the cluster
//!   autoscaler's `ToBeDeletedByClusterAutoscaler` taint, so load balancers drain the node.
//!   `/livez` ignores the node. A node without a Node object (manifest source) is eligible.
//!
//! The JSON bodies follow upstream's `ProxyHealth` encoding: RFC 3339 times in UTC, the
//! top-level `lastUpdated` set to the current time while healthy (upstream keeps that for
//! compatibility), and a `status` entry per IP family once it has synced.

use kproxy_plugin_api::IpFamily;
use serde::Serialize;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ProxyHealth {
    timeout: Duration,
    families: Vec<IpFamily>,
    oldest_pending: Option<Instant>,
    last_updated: Option<SystemTime>,
    node_eligible: bool,
}

/// Which endpoint is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz`: the proxy and the node.
    Healthz,
    /// `/livez`: the proxy only.
    Livez,
}

/// One answer of `/healthz` or `/livez`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthAnswer {
    /// 200 or 503.
    pub status: u16,
    /// The JSON body.
    pub body: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, FamilyStatus>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FamilyStatus {
    last_updated: String,
    healthy: bool,
}

impl ProxyHealth {
    /// A healthy, starting proxy serving `families`, unhealthy once a change waits `timeout`.
    pub fn new(timeout: Duration, families: &[IpFamily]) -> Self {
        ProxyHealth {
            timeout,
            families: families.to_vec(),
            oldest_pending: None,
            last_updated: None,
            node_eligible: true,
        }
    }

    /// A change arrived at `since` and waits for a sync (upstream's `QueuedUpdate`); only the
    /// oldest waiting change counts.
    pub fn queued(&mut self, since: Instant) {
        self.oldest_pending.get_or_insert(since);
    }

    /// A sync finished at `now` / `wall`. `pending_since` is the oldest change still waiting
    /// afterwards (changes that arrived while it ran, or, after a failure, those it carried).
    pub fn sync_finished(
        &mut self,
        ok: bool,
        pending_since: Option<Instant>,
        now: Instant,
        wall: SystemTime,
    ) {
        if ok {
            self.last_updated = Some(wall);
            self.oldest_pending = pending_since;
        } else {
            let since = pending_since
                .into_iter()
                .chain(self.oldest_pending)
                .min()
                .unwrap_or(now);
            self.oldest_pending = Some(since);
        }
    }

    /// Records whether the Node may receive load-balancer traffic.
    pub fn set_node_eligible(&mut self, eligible: bool) {
        self.node_eligible = eligible;
    }

    /// Whether the Node may receive load-balancer traffic.
    pub fn node_eligible(&self) -> bool {
        self.node_eligible
    }

    /// Whether the proxy itself is healthy at `now` (what `/livez` and the health-check node
    /// ports' `serviceProxyHealthy` report).
    pub fn is_healthy(&self, now: Instant) -> bool {
        self.oldest_pending
            .is_none_or(|since| now.saturating_duration_since(since) < self.timeout)
    }

    /// The wall-clock time of the last successful sync.
    pub fn last_updated(&self) -> Option<SystemTime> {
        self.last_updated
    }

    /// The answer to `probe` at `now` / `wall`.
    pub fn answer(&self, probe: Probe, now: Instant, wall: SystemTime) -> HealthAnswer {
        let proxy_healthy = self.is_healthy(now);
        let healthy = match probe {
            Probe::Healthz => proxy_healthy && self.node_eligible,
            Probe::Livez => proxy_healthy,
        };
        let status = match self.last_updated {
            Some(at) => self
                .families
                .iter()
                .map(|f| {
                    (
                        crate::metrics::family_name(*f),
                        FamilyStatus {
                            last_updated: rfc3339(Some(at)),
                            healthy: proxy_healthy,
                        },
                    )
                })
                .collect(),
            None => BTreeMap::new(),
        };
        let body = Body {
            // As upstream: "recent" while healthy, for clients of older releases.
            last_updated: rfc3339(if healthy {
                Some(wall)
            } else {
                self.last_updated
            }),
            current_time: rfc3339(Some(wall)),
            node_eligible: (probe == Probe::Healthz).then_some(self.node_eligible),
            healthy: proxy_healthy,
            status,
        };
        HealthAnswer {
            status: if healthy { 200 } else { 503 },
            body: serde_json::to_string(&body).unwrap_or_default(),
        }
    }
}

/// A time as Go's JSON encoding writes it (RFC 3339, nanoseconds without trailing zeros, UTC);
/// `None` as Go's zero time.
pub fn rfc3339(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return "0001-01-01T00:00:00Z".into();
    };
    // humantime writes `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
    let full = humantime::format_rfc3339_nanos(t).to_string();
    match full.split_once('.') {
        Some((secs, frac)) => {
            let digits = frac.trim_end_matches('Z').trim_end_matches('0');
            if digits.is_empty() {
                format!("{secs}Z")
            } else {
                format!("{secs}.{digits}Z")
            }
        }
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    struct Clock {
        t0: Instant,
        w0: SystemTime,
    }
    impl Clock {
        fn new() -> Self {
            Clock {
                t0: Instant::now(),
                w0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            }
        }
        fn at(&self, secs: u64) -> (Instant, SystemTime) {
            let d = Duration::from_secs(secs);
            (self.t0 + d, self.w0 + d)
        }
    }

    fn status(h: &ProxyHealth, probe: Probe, (now, wall): (Instant, SystemTime)) -> u16 {
        h.answer(probe, now, wall).status
    }

    #[test]
    fn healthy_while_starting_until_a_change_waits_too_long() {
        let c = Clock::new();
        let mut h = ProxyHealth::new(TIMEOUT, &[IpFamily::V4]);
        assert_eq!(status(&h, Probe::Healthz, c.at(1_000)), 200);
        h.queued(c.at(10).0);
        assert_eq!(status(&h, Probe::Healthz, c.at(69)), 200);
        assert_eq!(status(&h, Probe::Healthz, c.at(70)), 503);
        assert_eq!(status(&h, Probe::Livez, c.at(70)), 503);
        // A later change does not reset the clock of the oldest one.
        h.queued(c.at(69).0);
        assert_eq!(status(&h, Probe::Livez, c.at(71)), 503);
        // A successful sync that applied everything makes it healthy again.
        let (now, wall) = c.at(72);
        h.sync_finished(true, None, now, wall);
        assert_eq!(status(&h, Probe::Healthz, c.at(500)), 200);
    }

    #[test]
    fn changes_that_arrive_during_a_sync_keep_waiting() {
        let c = Clock::new();
        let mut h = ProxyHealth::new(TIMEOUT, &[IpFamily::V4]);
        h.queued(c.at(0).0);
        let (now, wall) = c.at(5);
        h.sync_finished(true, Some(c.at(3).0), now, wall);
        assert_eq!(status(&h, Probe::Livez, c.at(62)), 200);
        assert_eq!(status(&h, Probe::Livez, c.at(63)), 503);
    }

    #[test]
    fn a_failing_dataplane_turns_unhealthy_even_without_changes() {
        let c = Clock::new();
        let mut h = ProxyHealth::new(TIMEOUT, &[IpFamily::V4]);
        let (now, wall) = c.at(0);
        h.sync_finished(true, None, now, wall);
        let (now, wall) = c.at(30);
        h.sync_finished(false, None, now, wall);
        assert_eq!(status(&h, Probe::Livez, c.at(89)), 200);
        let (now, wall) = c.at(60);
        h.sync_finished(false, None, now, wall);
        assert_eq!(
            status(&h, Probe::Livez, c.at(90)),
            503,
            "failing since 30 s"
        );
        let (now, wall) = c.at(95);
        h.sync_finished(true, None, now, wall);
        assert_eq!(status(&h, Probe::Livez, c.at(96)), 200);
    }

    #[test]
    fn healthz_reports_node_eligibility_livez_ignores_it() {
        let c = Clock::new();
        let mut h = ProxyHealth::new(TIMEOUT, &[IpFamily::V4, IpFamily::V6]);
        h.set_node_eligible(false);
        let (now, wall) = c.at(1);
        let healthz = h.answer(Probe::Healthz, now, wall);
        assert_eq!(healthz.status, 503);
        let v: serde_json::Value = serde_json::from_str(&healthz.body).unwrap();
        assert_eq!(v["nodeEligible"], false);
        assert_eq!(v["healthy"], true, "the proxy itself is fine");
        assert_eq!(v["lastUpdated"], "0001-01-01T00:00:00Z", "never synced");
        let livez = h.answer(Probe::Livez, now, wall);
        assert_eq!(livez.status, 200);
        let v: serde_json::Value = serde_json::from_str(&livez.body).unwrap();
        assert!(v.get("nodeEligible").is_none(), "{v}");
        assert!(v.get("status").is_none(), "no family has synced: {v}");
    }

    #[test]
    fn body_follows_upstream_json() {
        let c = Clock::new();
        let mut h = ProxyHealth::new(TIMEOUT, &[IpFamily::V4, IpFamily::V6]);
        let (now, wall) = c.at(0);
        h.sync_finished(true, None, now, wall + Duration::from_millis(250));
        let (now, wall) = c.at(10);
        let a = h.answer(Probe::Healthz, now, wall);
        assert_eq!(
            a.body,
            "{\"lastUpdated\":\"2023-11-14T22:13:30Z\",\"currentTime\":\"2023-11-14T22:13:30Z\",\
             \"nodeEligible\":true,\"healthy\":true,\"status\":{\
             \"IPv4\":{\"lastUpdated\":\"2023-11-14T22:13:20.25Z\",\"healthy\":true},\
             \"IPv6\":{\"lastUpdated\":\"2023-11-14T22:13:20.25Z\",\"healthy\":true}}}"
        );
        // Unhealthy: lastUpdated is the real last sync.
        h.queued(c.at(20).0);
        let (now, wall) = c.at(100);
        let a = h.answer(Probe::Livez, now, wall);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(a.status, 503);
        assert_eq!(v["lastUpdated"], "2023-11-14T22:13:20.25Z");
        assert_eq!(v["status"]["IPv4"]["healthy"], false);
    }
}
