//! Which service port claims each shared map and set element, kept small.
//!
//! Several ports may want the same element (the cluster IP of a service with two ports, an
//! external IP two services list); the element stays while anyone claims it, and conflicting
//! values resolve to the smallest claiming service port key. Almost every element has exactly
//! one claimant, so a claim is a number naming the port (not a copy of its key) and a single
//! claim needs no allocation of its own: at 44,000 services the index holds about 130,000
//! elements in ~12 MB, where a map of maps keyed by port took 280 MB.

use crate::{
    render::{Container, Element},
    rule::{ElemKey, ElemValue},
};
use kproxy_plugin_api::ServicePortKey;
use std::collections::{BTreeMap, HashMap};

/// A claimant, numbered by [`Owners`].
type OwnerId = u32;

/// The claims on one element.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claims {
    /// The usual case: one port wants the element, with this value.
    One(OwnerId, Option<ElemValue>),
    /// Several ports, smallest service port key first.
    Many(Vec<(OwnerId, Option<ElemValue>)>),
}

impl Claims {
    /// The value the kernel has: the smallest claimant's.
    fn effective(&self) -> &Option<ElemValue> {
        match self {
            Claims::One(_, v) => v,
            Claims::Many(all) => &all[0].1,
        }
    }
}

/// Numbers for the service ports that claim elements, handed back when a port's last claim
/// goes.
#[derive(Debug, Clone, Default)]
struct Owners {
    ids: HashMap<ServicePortKey, OwnerId>,
    /// Each number's key and how many claims it holds; `None` when free.
    keys: Vec<Option<(ServicePortKey, usize)>>,
    free: Vec<OwnerId>,
}

impl Owners {
    /// The number of `key`, counting one more claim.
    fn acquire(&mut self, key: &ServicePortKey) -> OwnerId {
        if let Some(&id) = self.ids.get(key) {
            if let Some((_, n)) = &mut self.keys[id as usize] {
                *n += 1;
            }
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id as usize] = Some((key.clone(), 1));
                id
            }
            None => {
                self.keys.push(Some((key.clone(), 1)));
                (self.keys.len() - 1) as OwnerId
            }
        };
        self.ids.insert(key.clone(), id);
        id
    }

    /// Counts one claim of `id` less; frees the number with the last.
    fn release(&mut self, id: OwnerId) {
        let slot = &mut self.keys[id as usize];
        if let Some((key, n)) = slot {
            *n -= 1;
            if *n == 0 {
                self.ids.remove(key);
                *slot = None;
                self.free.push(id);
            }
        }
    }

    fn key(&self, id: OwnerId) -> &ServicePortKey {
        &self.keys[id as usize].as_ref().expect("a claimed owner").0
    }
}

/// Which service port claims each element, and so what the kernel holds. Conflicting claims
/// (two services listing the same external IP and port) resolve to the smallest service port
/// key, in full and incremental syncs alike, instead of failing the whole transaction.
///
/// Two indexes are equal when the same ports claim the same elements with the same values,
/// however their numbers were handed out.
#[derive(Debug, Clone, Default)]
pub struct ElementIndex {
    claims: BTreeMap<(Container, ElemKey), Claims>,
    owners: Owners,
}

impl PartialEq for ElementIndex {
    fn eq(&self, other: &Self) -> bool {
        let claimants =
            |index: &ElementIndex, claims: &Claims| -> Vec<(ServicePortKey, Option<ElemValue>)> {
                let all = match claims {
                    Claims::One(o, v) => vec![(*o, v.clone())],
                    Claims::Many(all) => all.clone(),
                };
                all.into_iter()
                    .map(|(o, v)| (index.owners.key(o).clone(), v))
                    .collect()
            };
        self.claims.len() == other.claims.len()
            && self
                .claims
                .iter()
                .zip(&other.claims)
                .all(|((k1, c1), (k2, c2))| k1 == k2 && claimants(self, c1) == claimants(other, c2))
    }
}

impl Eq for ElementIndex {}

impl ElementIndex {
    /// The element as it is in the kernel: `None` when absent, else its value.
    pub fn effective(&self, container: Container, key: &ElemKey) -> Option<&Option<ElemValue>> {
        self.claims
            .get(&(container, key.clone()))
            .map(Claims::effective)
    }

    /// Records that `owner` wants `e` (replacing the value it wanted before, if any).
    pub fn claim(&mut self, owner: &ServicePortKey, e: &Element) {
        let id = self.owners.acquire(owner);
        let value = e.value.clone();
        let Some(claims) = self.claims.get_mut(&(e.container, e.key.clone())) else {
            self.claims
                .insert((e.container, e.key.clone()), Claims::One(id, value));
            return;
        };
        let mut all = match std::mem::replace(claims, Claims::Many(Vec::new())) {
            Claims::One(other, v) => vec![(other, v)],
            Claims::Many(all) => all,
        };
        if let Some(mine) = all.iter_mut().find(|(o, _)| *o == id) {
            // Already a claimant: the new value replaces the old, and the claim is not counted
            // twice.
            mine.1 = value;
            self.owners.release(id);
        } else {
            let key = self.owners.key(id);
            let at = all.partition_point(|(o, _)| self.owners.key(*o) < key);
            all.insert(at, (id, value));
        }
        *claims = if all.len() == 1 {
            let (o, v) = all.pop().expect("one");
            Claims::One(o, v)
        } else {
            Claims::Many(all)
        };
    }

    /// Withdraws `owner`'s claim on `e`; the element goes when nobody claims it any more.
    pub fn release(&mut self, owner: &ServicePortKey, e: &Element) {
        let Some(&id) = self.owners.ids.get(owner) else {
            return;
        };
        let slot = (e.container, e.key.clone());
        let Some(claims) = self.claims.get_mut(&slot) else {
            return;
        };
        match claims {
            Claims::One(o, _) if *o == id => {
                self.claims.remove(&slot);
            }
            Claims::One(..) => return,
            Claims::Many(all) => {
                let Some(at) = all.iter().position(|(o, _)| *o == id) else {
                    return;
                };
                all.remove(at);
                if all.len() == 1 {
                    let (o, v) = all.pop().expect("one left");
                    *claims = Claims::One(o, v);
                }
            }
        }
        self.owners.release(id);
    }

    /// Every element as it is in the kernel, sorted by container and key.
    pub fn elements(&self) -> impl Iterator<Item = (Container, &ElemKey, &Option<ElemValue>)> {
        self.claims
            .iter()
            .map(|((c, k), claims)| (*c, k, claims.effective()))
    }

    /// The number of distinct elements.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render::Container, rule::Verdict, sample::ip};
    use kproxy_plugin_api::Protocol;

    fn port(name: &str) -> ServicePortKey {
        ServicePortKey::new("ns", name, "", Protocol::Tcp)
    }

    fn elem(verdict: &str) -> Element {
        Element {
            container: Container::ServiceIps,
            key: ElemKey::AddrProtoPort(ip("203.0.113.1"), Protocol::Tcp, 80),
            value: Some(Verdict::Goto(verdict.into()).into()),
        }
    }

    fn effective(index: &ElementIndex) -> Option<String> {
        let e = elem("");
        index
            .effective(e.container, &e.key)
            .map(|v| v.as_ref().unwrap().to_string())
    }

    #[test]
    fn the_smallest_claimant_wins_and_the_element_stays_until_the_last_goes() {
        let mut index = ElementIndex::default();
        index.claim(&port("b"), &elem("chain-b"));
        assert_eq!(effective(&index).as_deref(), Some("goto chain-b"));
        index.claim(&port("a"), &elem("chain-a"));
        index.claim(&port("c"), &elem("chain-c"));
        assert_eq!(effective(&index).as_deref(), Some("goto chain-a"));
        // Claiming again replaces the value without counting twice.
        index.claim(&port("a"), &elem("chain-a2"));
        assert_eq!(effective(&index).as_deref(), Some("goto chain-a2"));
        index.release(&port("a"), &elem(""));
        assert_eq!(effective(&index).as_deref(), Some("goto chain-b"));
        index.release(&port("nobody"), &elem(""));
        index.release(&port("b"), &elem(""));
        index.release(&port("c"), &elem(""));
        assert_eq!(effective(&index), None);
        assert!(index.is_empty());
        // Every number was handed back.
        assert!(index.owners.ids.is_empty());
        assert_eq!(index.owners.free.len(), index.owners.keys.len());
    }
}
