//! systemd readiness (`Type=notify`): `READY=1` once the first full sync has been applied,
//! `WATCHDOG=1` while the proxy is healthy, and a one-line `STATUS=`.
//!
//! [`Readiness`] decides what to say (plain, tested); [`send`] says it through `sd_notify`,
//! which does nothing when `NOTIFY_SOCKET` is unset (not started by systemd).

use sd_notify::NotifyState;
use std::time::{Duration, SystemTime};

/// What to tell systemd after a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Send `READY=1` now (the first time a full sync succeeded).
    pub ready: bool,
    /// The `STATUS=` line.
    pub status: String,
}

/// The readiness state machine. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    ready: bool,
    last_ok: Option<(SystemTime, usize, usize)>,
}

impl Readiness {
    /// Whether `READY=1` has been sent.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// A sync finished: `ok`, `full`, the state's service ports and endpoints, when, and the
    /// failures in a row so far (with the last error's code).
    pub fn sync_finished(
        &mut self,
        ok: bool,
        full: bool,
        services: usize,
        endpoints: usize,
        at: SystemTime,
        failure: Option<(u32, &str)>,
    ) -> Notice {
        let mut ready = false;
        if ok {
            self.last_ok = Some((at, services, endpoints));
            if full && !self.ready {
                self.ready = true;
                ready = true;
            }
        }
        let status = match (ok, failure, self.last_ok) {
            (true, _, _) => format!(
                "synced {services} service ports, {endpoints} endpoints at {}",
                super::state::rfc3339(Some(at))
            ),
            (false, Some((n, code)), Some((when, s, e))) => format!(
                "sync failing ({n} in a row, {code}); {s} service ports, {e} endpoints programmed at {}",
                super::state::rfc3339(Some(when))
            ),
            (false, Some((n, code)), None) => {
                format!("first sync failing ({n} in a row, {code}); nothing programmed yet")
            }
            (false, None, _) => "sync failed".to_string(),
        };
        Notice { ready, status }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when systemd set it for us.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Sends `notice` (and `READY=1` first when due); failures are logged, never fatal.
pub fn send(notice: &Notice) {
    let mut states = Vec::with_capacity(2);
    if notice.ready {
        states.push(NotifyState::Ready);
    }
    states.push(NotifyState::Status(&notice.status));
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    } else if notice.ready && std::env::var_os("NOTIFY_SOCKET").is_some() {
        tracing::info!(status = %notice.status, "told systemd kproxy is ready");
    }
}

/// Sends `WATCHDOG=1`.
pub fn watchdog() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
        tracing::warn!(error = %e, "cannot send the systemd watchdog keep-alive");
    }
}

/// Sends a `STATUS=` line on its own (before the first sync).
pub fn status(line: &str) {
    if let Err(e) = sd_notify::notify(&[NotifyState::Status(line)]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_after_the_first_successful_full_sync() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut r = Readiness::default();
        let n = r.sync_finished(false, true, 0, 0, t, Some((1, "kernel")));
        assert!(!n.ready);
        assert_eq!(
            n.status,
            "first sync failing (1 in a row, kernel); nothing programmed yet"
        );
        let n = r.sync_finished(true, false, 3, 7, t, None);
        assert!(!n.ready, "a partial sync does not make ready");
        let n = r.sync_finished(true, true, 3, 7, t, None);
        assert!(n.ready);
        assert_eq!(
            n.status,
            "synced 3 service ports, 7 endpoints at 2023-11-14T22:13:20Z"
        );
        assert!(
            !r.sync_finished(true, true, 3, 7, t, None).ready,
            "only once"
        );
        let n = r.sync_finished(false, true, 4, 8, t, Some((2, "panic")));
        assert_eq!(
            n.status,
            "sync failing (2 in a row, panic); 3 service ports, 7 endpoints programmed at 2023-11-14T22:13:20Z"
        );
        assert!(r.is_ready());
    }
}
