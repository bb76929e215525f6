//! Slot blocks: how a policy chain picks an endpoint through data instead of jumps.
//!
//! Each policy chain (`service-…`, `local-…`) owns a block of [`SLOTS`] numbers in one of the
//! table's shared slot maps: `numgen random mod 16384 offset <block start>` draws a number in
//! its block, and the map's interval elements split the block evenly among the endpoints
//! (`<start>-<end> : 10.244.1.5 . 8080`). An endpoint change is then a change of map elements
//! only: the kernel re-validates a table's whole jump graph on every commit that adds a jump,
//! a goto or a NAT rule (about 170 ms with 44,000 services), but not for data elements.
//!
//! The maps are shared because the kernel finds a named set by walking the table's list of
//! sets: one map per service made a 44,000-service full sync take minutes. They are split into
//! [`SHARDS`] maps per kind, because the kernel's interval sets walk all their elements (garbage
//! collection) on the first commit that touches them each second.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

/// The slots of one block: endpoint `i` of `n` gets [`slots_of`]`(i, n)` of them,
/// so the choice is even to within 1/16384 whatever `n` is.
pub const SLOTS: u32 = 16384;

/// Slot maps per kind. A block's map is its id modulo this.
pub const SHARDS: u32 = 64;

/// Block ids are below this (`id * SLOTS` and the slot after the block's last must fit 32
/// bits), so at most this many policy chains per family: about 130,000 service ports.
const MAX_IDS: u32 = (1 << 18) - 1;

/// What a slot map's elements lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotKind {
    /// An endpoint of a TCP service port (`addr . port`, for `dnat … map`).
    Tcp,
    /// An endpoint of a UDP service port.
    Udp,
    /// An endpoint of an SCTP service port.
    Sctp,
    /// An endpoint's chain (`goto endpoint-…`): ClientIP affinity records the client there.
    Affinity,
}

impl SlotKind {
    /// Every kind.
    pub const ALL: [SlotKind; 4] = [
        SlotKind::Tcp,
        SlotKind::Udp,
        SlotKind::Sctp,
        SlotKind::Affinity,
    ];
}

/// Which block each policy chain of a family's table owns. Blocks are assigned by a hash of
/// the chain's name (probing past taken ones), kept while the chain's service port exists, and
/// released when it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotIds {
    by_chain: HashMap<u64, u32>,
    used: HashSet<u32>,
}

/// A chain name's key in [`SlotIds`] (names are long; a 64-bit hash of one is unique enough).
fn chain_key(chain: &str) -> u64 {
    let mut h = DefaultHasher::new();
    chain.hash(&mut h);
    h.finish()
}

impl SlotIds {
    /// The block of `chain`, assigning one if it has none. `None` when every block is taken.
    pub fn ensure(&mut self, chain: &str) -> Option<u32> {
        let key = chain_key(chain);
        if let Some(id) = self.by_chain.get(&key) {
            return Some(*id);
        }
        if self.used.len() as u32 >= MAX_IDS - 1 {
            return None;
        }
        let mut id = (key % u64::from(MAX_IDS - 1)) as u32 + 1;
        while self.used.contains(&id) {
            id = id % (MAX_IDS - 1) + 1;
        }
        self.used.insert(id);
        self.by_chain.insert(key, id);
        Some(id)
    }

    /// The block of `chain`, if it has one.
    pub fn get(&self, chain: &str) -> Option<u32> {
        self.by_chain.get(&chain_key(chain)).copied()
    }

    /// Frees the block of `chain`.
    pub fn release(&mut self, chain: &str) {
        if let Some(id) = self.by_chain.remove(&chain_key(chain)) {
            self.used.remove(&id);
        }
    }

    /// The number of blocks assigned.
    pub fn len(&self) -> usize {
        self.by_chain.len()
    }

    /// Whether no block is assigned.
    pub fn is_empty(&self) -> bool {
        self.by_chain.is_empty()
    }
}

/// The slots (first, last) of endpoint `i` of `n` within a block of [`SLOTS`].
pub fn slots_of(i: usize, n: usize) -> (u32, u32) {
    let (i, n) = (i as u64, n.max(1) as u64);
    let first = i * u64::from(SLOTS) / n;
    let next = (i + 1) * u64::from(SLOTS) / n;
    (first as u32, (next - 1) as u32)
}

/// The first number of block `id`.
pub fn block_start(id: u32) -> u32 {
    id * SLOTS
}

/// The shard (which of a kind's maps) of block `id`.
pub fn shard_of(id: u32) -> u8 {
    (id % SHARDS) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_stable_distinct_and_freed() {
        let mut ids = SlotIds::default();
        let a = ids.ensure("service-A").unwrap();
        let b = ids.ensure("service-B").unwrap();
        assert_ne!(a, b);
        assert_eq!(ids.ensure("service-A"), Some(a));
        assert_eq!(ids.get("service-B"), Some(b));
        ids.release("service-A");
        assert_eq!(ids.get("service-A"), None);
        assert_eq!(ids.len(), 1);
        // The same name hashes to the same block again.
        assert_eq!(ids.ensure("service-A"), Some(a));
        // Blocks stay inside 32 bits, slot after the last included.
        let mut many = SlotIds::default();
        for i in 0..50_000 {
            let id = many.ensure(&format!("service-{i}")).unwrap();
            assert!((1..MAX_IDS).contains(&id));
            assert!(u64::from(block_start(id)) + u64::from(SLOTS) <= u64::from(u32::MAX));
        }
        assert_eq!(many.len(), 50_000);
    }

    #[test]
    fn slots_cover_every_slot_once_and_evenly() {
        for n in 1..=70usize {
            let mut next = 0u32;
            let mut sizes = Vec::new();
            for i in 0..n {
                let (first, last) = slots_of(i, n);
                assert_eq!(first, next, "endpoint {i} of {n} starts where {} ended", i);
                assert!(last >= first);
                sizes.push(last - first + 1);
                next = last + 1;
            }
            assert_eq!(next, SLOTS, "{n} endpoints cover every slot");
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "{n} endpoints: slots {min}..{max}");
        }
    }
}
