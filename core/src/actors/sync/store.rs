//! The desired state as the sync thread holds it, patched in place by deltas from Topology,
//! and the bookkeeping of which keys the plugin has not yet applied.
//!
//! The store keeps one `ProxyState` and patches it (binary search into the sorted service list)
//! rather than rebuilding it per sync: at 250,000 endpoints a rebuild would cost more than the
//! kernel update it feeds.

use crate::topology::StateDelta;
use abi_stable::std_types::RVec;
use kproxy_plugin_api::{ChangeSet, ProxyState, ServicePort, ServicePortKey};
use std::{collections::BTreeSet, time::SystemTime};

/// The desired state plus the changes the plugin has not yet applied.
#[derive(Debug, Default)]
pub struct StateStore {
    state: ProxyState,
    unapplied: BTreeSet<ServicePortKey>,
    needs_full: bool,
    /// `last-change-trigger-time`s of the slice changes not yet applied, for
    /// network-programming latency.
    trigger_times: Vec<SystemTime>,
}

impl StateStore {
    /// An empty store; the first sync is always full.
    pub fn new() -> Self {
        StateStore {
            needs_full: true,
            ..Default::default()
        }
    }

    /// The current desired state.
    pub fn state(&self) -> &ProxyState {
        &self.state
    }

    /// Applies a delta: upserts replace or insert service ports, removals drop them, node facts
    /// replace the old ones (and force a full sync, since every rule may depend on them).
    pub fn apply(&mut self, delta: StateDelta) {
        self.state.generation += 1;
        if let Some(node) = delta.node {
            if node != self.state.node {
                self.state.node = node;
                self.needs_full = true;
            }
        }
        for key in delta.removed {
            if let Ok(i) = self.state.services.binary_search_by(|s| s.key.cmp(&key)) {
                self.state.services.remove(i);
            }
            self.unapplied.insert(key);
        }
        for port in &delta.upserts {
            self.unapplied.insert(port.key.clone());
        }
        let sorted = delta.upserts.windows(2).all(|w| w[0].key < w[1].key);
        if self.state.services.is_empty() && sorted {
            // The first delta holds every service port, sorted (as Topology sends them): take
            // its buffer as it is rather than growing a second one beside it.
            self.state.services = RVec::from(delta.upserts);
        } else {
            for port in delta.upserts {
                upsert(&mut self.state.services, port);
            }
        }
        self.trigger_times.extend(delta.trigger_times);
    }

    /// Takes the trigger times of every change applied so far, for a sync about to run; give
    /// them back with [`StateStore::return_trigger_times`] if that sync fails.
    pub fn take_trigger_times(&mut self) -> Vec<SystemTime> {
        std::mem::take(&mut self.trigger_times)
    }

    /// Puts back trigger times a failed sync did not apply.
    pub fn return_trigger_times(&mut self, mut times: Vec<SystemTime>) {
        times.append(&mut self.trigger_times);
        self.trigger_times = times;
    }

    /// Marks that the next sync must be full (periodic resync, or after a failure).
    pub fn require_full(&mut self) {
        self.needs_full = true;
    }

    /// The change set for the next sync; `force_full` asks for a full one regardless.
    pub fn change_set(&self, force_full: bool) -> ChangeSet {
        ChangeSet {
            full: force_full || self.needs_full,
            changed: self.unapplied.iter().cloned().collect::<RVec<_>>(),
        }
    }

    /// Records the outcome of a sync run with `changes`: on success those keys are applied; on
    /// failure everything stays pending and the next sync is full.
    pub fn finish(&mut self, changes: &ChangeSet, ok: bool) {
        if ok {
            for key in changes.changed.iter() {
                self.unapplied.remove(key);
            }
            if changes.full {
                self.needs_full = false;
            }
        } else {
            self.needs_full = true;
        }
    }

    /// Whether there is anything the plugin has not applied.
    pub fn has_unapplied(&self) -> bool {
        self.needs_full || !self.unapplied.is_empty()
    }
}

fn upsert(services: &mut RVec<ServicePort>, port: ServicePort) {
    match services.binary_search_by(|s| s.key.cmp(&port.key)) {
        Ok(i) => services[i] = port,
        Err(i) => services.insert(i, port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_plugin_api::{NodeFacts, Protocol};

    fn port(name: &str, p: u16) -> ServicePort {
        ServicePort {
            key: ServicePortKey::new("default", name, "", Protocol::Tcp),
            cluster_ips: RVec::new(),
            port: p,
            node_port: 0,
            external_ips: RVec::new(),
            load_balancer_ingress: RVec::new(),
            load_balancer_source_ranges: RVec::new(),
            session_affinity: Default::default(),
            internal_traffic_policy: Default::default(),
            external_traffic_policy: Default::default(),
            health_check_node_port: 0,
            ipvs_scheduler: Default::default(),
            endpoints: RVec::new(),
        }
    }

    fn delta(upserts: Vec<ServicePort>, removed: Vec<ServicePortKey>) -> StateDelta {
        StateDelta {
            upserts,
            removed,
            ..Default::default()
        }
    }

    #[test]
    fn deltas_keep_services_sorted_and_unique() {
        let mut store = StateStore::new();
        store.apply(delta(
            vec![port("c", 1), port("a", 1), port("b", 1)],
            vec![],
        ));
        store.apply(delta(vec![port("a", 2)], vec![port("c", 0).key]));
        let names: Vec<_> = store
            .state()
            .services
            .iter()
            .map(|s| (s.key.name.to_string(), s.port))
            .collect();
        assert_eq!(names, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
        assert_eq!(store.state().generation, 2);
    }

    #[test]
    fn a_sorted_first_delta_gives_the_same_state_as_one_port_at_a_time() {
        let ports = vec![port("a", 1), port("b", 1), port("c", 1)];
        let mut whole = StateStore::new();
        whole.apply(delta(ports.clone(), vec![]));
        let mut one_by_one = StateStore::new();
        for p in ports {
            one_by_one.apply(delta(vec![p], vec![]));
        }
        assert_eq!(whole.state().services, one_by_one.state().services);
        assert_eq!(whole.change_set(false).changed.len(), 3);
        whole.apply(delta(vec![port("b", 2), port("d", 1)], vec![]));
        let names: Vec<_> = whole
            .state()
            .services
            .iter()
            .map(|s| (s.key.name.to_string(), s.port))
            .collect();
        assert_eq!(
            names,
            [("a", 1), ("b", 2), ("c", 1), ("d", 1)].map(|(n, p)| (n.to_string(), p))
        );
    }

    #[test]
    fn changed_keys_clear_only_after_a_successful_sync() {
        let mut store = StateStore::new();
        store.apply(delta(vec![port("a", 1)], vec![]));
        let first = store.change_set(false);
        assert!(first.full, "the first sync is full");
        store.finish(&first, true);
        assert!(!store.has_unapplied());

        store.apply(delta(vec![port("b", 1)], vec![port("a", 1).key]));
        let cs = store.change_set(false);
        assert!(!cs.full);
        assert_eq!(cs.changed.len(), 2);
        store.finish(&cs, false);
        // A failure keeps the keys and makes the next sync full.
        let retry = store.change_set(false);
        assert!(retry.full);
        assert_eq!(retry.changed, cs.changed);
        // A change that arrives while a sync runs survives that sync's success.
        store.apply(delta(vec![port("c", 1)], vec![]));
        store.finish(&retry, true);
        let next = store.change_set(false);
        assert!(!next.full);
        assert_eq!(next.changed.len(), 1);
        assert_eq!(next.changed[0].name.as_str(), "c");
    }

    #[test]
    fn trigger_times_survive_a_failed_sync() {
        let t = |s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let mut store = StateStore::new();
        store.apply(StateDelta {
            upserts: vec![port("a", 1)],
            trigger_times: vec![t(1)],
            ..Default::default()
        });
        let taken = store.take_trigger_times();
        assert_eq!(taken, vec![t(1)]);
        store.apply(StateDelta {
            upserts: vec![port("b", 1)],
            trigger_times: vec![t(2)],
            ..Default::default()
        });
        store.return_trigger_times(taken);
        assert_eq!(store.take_trigger_times(), vec![t(1), t(2)]);
        assert!(store.take_trigger_times().is_empty());
    }

    #[test]
    fn a_node_change_forces_a_full_sync() {
        let mut store = StateStore::new();
        let cs = store.change_set(false);
        store.finish(&cs, true);
        let node = NodeFacts {
            name: "n1".into(),
            ..Default::default()
        };
        store.apply(StateDelta {
            node: Some(node.clone()),
            ..Default::default()
        });
        assert!(store.change_set(false).full);
        assert_eq!(store.state().node, node);
    }
}
