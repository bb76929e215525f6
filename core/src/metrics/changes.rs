//! Which services have changes that no sync has applied yet, for kube-proxy's
//! `kubeproxy_sync_proxy_rules_{service,endpoint}_changes_pending` gauges.
//!
//! Upstream counts the services in its change trackers, which a sync empties when it starts.
//! kproxy keeps a change pending until a sync that carried it has succeeded, so a failing
//! dataplane shows as changes piling up rather than as zero.

use crate::model::NamespacedName;
use std::collections::BTreeSet;

/// What kind of source object a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A Service was added, changed or deleted.
    Service,
    /// An EndpointSlice was added, changed or deleted.
    EndpointSlice,
    /// The Node changed (counted in neither gauge, as upstream).
    Node,
}

/// The pending-change bookkeeping; a plain struct driven by the Sync actor.
#[derive(Debug, Default, Clone)]
pub struct PendingChanges {
    services: BTreeSet<NamespacedName>,
    endpoints: BTreeSet<NamespacedName>,
    in_flight_services: BTreeSet<NamespacedName>,
    in_flight_endpoints: BTreeSet<NamespacedName>,
}

impl PendingChanges {
    /// Records that `touched` services changed because of an object of `kind`.
    pub fn queue(&mut self, kind: ChangeKind, touched: impl IntoIterator<Item = NamespacedName>) {
        let set = match kind {
            ChangeKind::Service => &mut self.services,
            ChangeKind::EndpointSlice => &mut self.endpoints,
            ChangeKind::Node => return,
        };
        set.extend(touched);
    }

    /// A sync starts: everything queued so far rides on it.
    pub fn start(&mut self) {
        self.in_flight_services.append(&mut self.services);
        self.in_flight_endpoints.append(&mut self.endpoints);
    }

    /// The sync that started last finished; on failure its changes are pending again.
    pub fn finish(&mut self, ok: bool) {
        if ok {
            self.in_flight_services.clear();
            self.in_flight_endpoints.clear();
        } else {
            self.services.append(&mut self.in_flight_services);
            self.endpoints.append(&mut self.in_flight_endpoints);
        }
    }

    /// How many services have unapplied Service changes and EndpointSlice changes.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.services.union(&self.in_flight_services).count(),
            self.endpoints.union(&self.in_flight_endpoints).count(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nn(n: &str) -> NamespacedName {
        NamespacedName::new("default", n)
    }

    #[test]
    fn changes_stay_pending_until_a_sync_carrying_them_succeeds() {
        let mut p = PendingChanges::default();
        p.queue(ChangeKind::Service, [nn("a"), nn("b")]);
        p.queue(ChangeKind::EndpointSlice, [nn("a")]);
        p.queue(ChangeKind::Node, [nn("x")]);
        assert_eq!(p.counts(), (2, 1));
        p.start();
        // A change arriving during the sync is not carried by it.
        p.queue(ChangeKind::Service, [nn("a"), nn("c")]);
        assert_eq!(p.counts(), (3, 1));
        p.finish(false);
        assert_eq!(p.counts(), (3, 1), "a failed sync applied nothing");
        p.start();
        p.finish(true);
        assert_eq!(p.counts(), (0, 0));
    }
}
