//! Turns rendered objects into one transaction per sync (written to a [`Sink`]: an `nft -f`
//! script or a netlink batch), and remembers what was written so the next incremental sync
//! touches only what changed.
//!
//! A full sync re-creates each family's table from scratch in one transaction (so a hand-edited
//! table is put right) and carries ClientIP affinity entries across from a snapshot. An
//! incremental sync re-renders only the changed service ports and writes the difference against
//! [`FamilyProgram`]; it ends with exactly what a full sync of the same state would write.

use crate::{
    render::{self, affinity_set_spec, policy_chains, Container, Element, FamilyCtx, PortObjects},
    rule::{ElemKey, ElemValue},
    script::{ElemRef, Script, SetKey, Sink},
    slots::SlotIds,
};
use kproxy_plugin_api::{IpAddr, IpFamily, ProxyState, ServicePort, ServicePortKey};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use crate::index::ElementIndex;

/// What one family's table holds after the last successful sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyProgram {
    /// Every programmed service port as it was rendered. The rendered objects are not kept:
    /// an incremental sync renders the old form again (rendering is a pure function of the
    /// port, the settings and the node, none of which changed), which at 250,000 endpoints
    /// saves a few hundred megabytes of chain names and rules.
    pub ports: BTreeMap<ServicePortKey, ServicePort>,
    /// Every map and set element, with its owners.
    pub index: ElementIndex,
    /// The slot block of each policy chain.
    pub ids: SlotIds,
}

impl FamilyProgram {
    /// Assigns slot blocks to both policy chains of the service port `key`.
    fn assign_ids(&mut self, key: &ServicePortKey) {
        for chain in policy_chains(key) {
            self.ids.ensure(&chain);
        }
    }

    /// Frees the slot blocks of the service port `key`.
    fn release_ids(&mut self, key: &ServicePortKey) {
        for chain in policy_chains(key) {
            self.ids.release(&chain);
        }
    }
}

/// ClientIP affinity entries read from the kernel before a full sync, so re-creating the table
/// does not make clients lose their endpoint: set name → (set timeout, entries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AffinitySnapshot {
    /// `(family, set name)` → the set's timeout in seconds and its entries.
    pub sets: HashMap<(IpFamily, String), (u32, Vec<AffinityEntry>)>,
}

/// One remembered client of an affinity set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityEntry {
    /// The client address.
    pub client: IpAddr,
    /// Seconds until it expires.
    pub expires: u64,
}

/// A full sync's script and the memory of what it writes.
#[derive(Debug)]
pub struct FullPlan {
    /// The `nft -f` script.
    pub script: String,
    /// One program per enabled family, in the order of the contexts given.
    pub programs: Vec<FamilyProgram>,
    /// Chains, rules, sets and elements written.
    pub objects: u64,
}

/// [`plan_full`] written as an `nft -f` script.
pub fn plan_full_script(
    enabled: &[FamilyCtx<'_>],
    disabled: &[(IpFamily, &str)],
    state: &ProxyState,
    snapshot: &AffinitySnapshot,
) -> FullPlan {
    let mut script = String::with_capacity(256 + state.services.len() * 512);
    let mut s = Script::empty(&mut script);
    let programs = plan_full(enabled, disabled, state, snapshot, &mut s);
    let objects = s.objects;
    FullPlan {
        script,
        programs,
        objects,
    }
}

/// Plans a full sync into `s`: every enabled family's table re-created, every disabled
/// family's table removed, in one transaction. Returns one program per enabled family, in the
/// order of the contexts given.
pub fn plan_full(
    enabled: &[FamilyCtx<'_>],
    disabled: &[(IpFamily, &str)],
    state: &ProxyState,
    snapshot: &AffinitySnapshot,
    s: &mut impl Sink,
) -> Vec<FamilyProgram> {
    let mut programs = Vec::new();
    for &(family, table) in disabled {
        s.begin(family, table);
        s.remove_table();
    }
    for ctx in enabled {
        s.begin(ctx.family, ctx.table);
        // Deleted and re-created, so a hand-edited table is put right.
        s.reset_table("rules for kproxy");
        let mut program = FamilyProgram::default();
        // The chains of ClientIP-affinity ports come before the slot maps whose elements
        // `goto` them: `nft -f` adds a map's elements where the map is declared when both are
        // in one transaction, and a chain declared after that is not there yet.
        for sp in state
            .services
            .iter()
            .filter(|sp| sp.session_affinity.client_ip)
        {
            program.assign_ids(&sp.key);
            if let Some(objs) = render::render_port(ctx, &program.ids, sp) {
                for chain in &objs.chains {
                    s.add_chain(&chain.name);
                }
            }
        }
        render::render_globals(ctx, s);
        // Slot elements go in after every rule: a rule that looks a map up makes the kernel
        // walk the map's elements when it binds to it, so rules written between elements cost
        // a walk each (quadratic: 3 s of a 44,000-service sync on kernel 6.18).
        let mut slots = Vec::new();
        for sp in state.services.iter() {
            program.assign_ids(&sp.key);
            let Some(objs) = render::render_port(ctx, &program.ids, sp) else {
                program.release_ids(&sp.key);
                continue;
            };
            for set in &objs.sets {
                s.add_set(&affinity_set_spec(&set.name, ctx.family, set.timeout));
                if let Some((timeout, entries)) = snapshot.sets.get(&(ctx.family, set.name.clone()))
                {
                    // A changed timeout means the user changed affinity: start afresh.
                    if *timeout == set.timeout {
                        s.add_elements(
                            &set.name,
                            entries
                                .iter()
                                .filter(|e| e.expires > 0 && e.client.family == ctx.family)
                                .map(|e| ElemRef {
                                    key: SetKey::Client(e.client),
                                    value: None,
                                    timeout: Some((set.timeout, e.expires)),
                                }),
                        );
                    }
                }
            }
            if !sp.session_affinity.client_ip {
                for chain in &objs.chains {
                    s.add_chain(&chain.name);
                }
            }
            for chain in &objs.chains {
                for rule in &chain.rules {
                    s.add_rule(&chain.name, rule);
                }
            }
            slots.extend(objs.slots);
            for e in &objs.elements {
                program.index.claim(&sp.key, e);
            }
            program.ports.insert(sp.key.clone(), sp.clone());
        }
        // The index is sorted by container: one pass, one `add element` per container.
        {
            let mut elements = program.index.elements().peekable();
            while let Some(&(container, _, _)) = elements.peek() {
                s.add_elements(
                    &container.name(),
                    std::iter::from_fn(|| elements.next_if(|(c, _, _)| *c == container))
                        .map(|(_, k, v)| ElemRef::new(k, v.as_ref())),
                );
            }
        }
        write_slots(s, &slots, true);
        programs.push(program);
    }
    programs
}

/// Plans an incremental sync of one family: re-renders the `changed` service ports (absent from
/// `state` means removed) and writes to `s` only the difference against `program`, which is
/// updated to match. Returns the number of objects written. If applying the transaction fails,
/// `program` no longer matches the kernel: the caller must fall back to a full sync.
pub fn plan_incremental(
    ctx: &FamilyCtx<'_>,
    state: &ProxyState,
    changed: &[ServicePortKey],
    program: &mut FamilyProgram,
    s: &mut impl Sink,
) -> u64 {
    struct Update {
        key: ServicePortKey,
        old: Option<PortObjects>,
        new: Option<PortObjects>,
    }
    for key in changed {
        if state.find(key).is_some() {
            program.assign_ids(key);
        }
    }
    let updates: Vec<Update> = changed
        .iter()
        .map(|key| Update {
            key: key.clone(),
            old: program
                .ports
                .get(key)
                .and_then(|sp| render::render_port(ctx, &program.ids, sp)),
            new: state
                .find(key)
                .and_then(|sp| render::render_port(ctx, &program.ids, sp)),
        })
        .collect();
    // Ports gone (or no longer in this family) give their slot blocks back.
    for u in &updates {
        if u.new.is_none() {
            program.release_ids(&u.key);
        }
    }
    let updates: Vec<Update> = updates.into_iter().filter(|u| u.old != u.new).collect();
    if updates.is_empty() {
        return 0;
    }

    // Elements: re-claim, then compare what the kernel has before and after.
    let mut touched = BTreeSet::new();
    for u in &updates {
        for e in u.old.iter().chain(u.new.iter()).flat_map(|o| &o.elements) {
            touched.insert((e.container, e.key.clone()));
        }
    }
    let before: Vec<Option<Option<ElemValue>>> = touched
        .iter()
        .map(|(c, k)| program.index.effective(*c, k).cloned())
        .collect();
    for u in &updates {
        for e in u.old.iter().flat_map(|o| &o.elements) {
            program.index.release(&u.key, e);
        }
        for e in u.new.iter().flat_map(|o| &o.elements) {
            program.index.claim(&u.key, e);
        }
    }
    // Slot elements belong to one port each: compare its old and new ones directly.
    let mut gone_slots: Vec<Element> = Vec::new();
    let mut new_slots: Vec<Element> = Vec::new();
    for u in &updates {
        let old: &[Element] = u.old.as_ref().map_or(&[], |o| &o.slots);
        let new: &[Element] = u.new.as_ref().map_or(&[], |o| &o.slots);
        let old_set: BTreeSet<(&Container, &ElemKey, &Option<ElemValue>)> = old
            .iter()
            .map(|e| (&e.container, &e.key, &e.value))
            .collect();
        let new_set: BTreeSet<(&Container, &ElemKey, &Option<ElemValue>)> = new
            .iter()
            .map(|e| (&e.container, &e.key, &e.value))
            .collect();
        gone_slots.extend(
            old.iter()
                .filter(|e| !new_set.contains(&(&e.container, &e.key, &e.value)))
                .cloned(),
        );
        new_slots.extend(
            new.iter()
                .filter(|e| !old_set.contains(&(&e.container, &e.key, &e.value)))
                .cloned(),
        );
    }
    let mut delete_elements: BTreeMap<Container, Vec<&ElemKey>> = BTreeMap::new();
    let mut add_elements: BTreeMap<Container, Vec<(&ElemKey, Option<ElemValue>)>> = BTreeMap::new();
    for ((c, k), before) in touched.iter().zip(before) {
        let after = program.index.effective(*c, k);
        if before.as_ref() == after {
            continue;
        }
        if before.is_some() {
            delete_elements.entry(*c).or_default().push(k);
        }
        if let Some(v) = after {
            add_elements.entry(*c).or_default().push((k, v.clone()));
        }
    }

    // Chains and affinity sets.
    let mut flush = Vec::new();
    let mut delete_chains = Vec::new();
    let mut delete_sets = Vec::new();
    let mut add_sets = Vec::new();
    let mut add_chains = Vec::new();
    let mut rules: Vec<(String, Vec<crate::rule::Rule>)> = Vec::new();
    let empty = PortObjects::default();
    for u in &updates {
        let old = u.old.as_ref().unwrap_or(&empty);
        let new = u.new.as_ref().unwrap_or(&empty);
        let old_sets: HashMap<&str, u32> = old
            .sets
            .iter()
            .map(|s| (s.name.as_str(), s.timeout))
            .collect();
        let new_sets: HashMap<&str, u32> = new
            .sets
            .iter()
            .map(|s| (s.name.as_str(), s.timeout))
            .collect();
        // A set whose timeout changes is re-created, so every rule using it must go first.
        let sets_recreated = new.sets.iter().any(|s| {
            old_sets
                .get(s.name.as_str())
                .is_some_and(|t| *t != s.timeout)
        });
        let old_chains: HashMap<&str, &Vec<crate::rule::Rule>> = old
            .chains
            .iter()
            .map(|c| (c.name.as_str(), &c.rules))
            .collect();
        let new_names: BTreeSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
        for chain in &new.chains {
            match old_chains.get(chain.name.as_str()) {
                None => {
                    add_chains.push(chain.name.clone());
                    rules.push((chain.name.clone(), chain.rules.clone()));
                }
                Some(old_rules) if **old_rules != chain.rules || sets_recreated => {
                    flush.push(chain.name.clone());
                    rules.push((chain.name.clone(), chain.rules.clone()));
                }
                Some(_) => {}
            }
        }
        for chain in &old.chains {
            if !new_names.contains(chain.name.as_str()) {
                flush.push(chain.name.clone());
                delete_chains.push(chain.name.clone());
            }
        }
        for set in &old.sets {
            if new_sets.get(set.name.as_str()) != Some(&set.timeout) {
                delete_sets.push(set.name.clone());
            }
        }
        for set in &new.sets {
            if old_sets.get(set.name.as_str()) != Some(&set.timeout) {
                add_sets.push((set.name.clone(), set.timeout));
            }
        }
        match (&u.new, state.find(&u.key)) {
            (Some(_), Some(sp)) => {
                program.ports.insert(u.key.clone(), sp.clone());
            }
            _ => {
                program.ports.remove(&u.key);
            }
        }
    }

    // Order matters inside the transaction: nothing may be deleted while still referenced, and
    // nothing may be referenced before it exists.
    let objects_before = s.objects();
    s.begin(ctx.family, ctx.table);
    for (c, keys) in &delete_elements {
        s.delete_elements(&c.name(), keys.iter().map(|k| ElemRef::new(k, None)));
    }
    write_slots(s, &gone_slots, false);
    for name in &flush {
        s.flush_chain(name);
    }
    // Sets before chains.
    for name in &delete_sets {
        s.delete_set(name);
    }
    for name in &delete_chains {
        s.delete_chain(name);
    }
    for (name, timeout) in &add_sets {
        s.add_set(&affinity_set_spec(name, ctx.family, *timeout));
    }
    for name in &add_chains {
        s.add_chain(name);
    }
    for (chain, chain_rules) in &rules {
        for rule in chain_rules {
            s.add_rule(chain, rule);
        }
    }
    for (c, elements) in &add_elements {
        s.add_elements(
            &c.name(),
            elements.iter().map(|(k, v)| ElemRef::new(k, v.as_ref())),
        );
    }
    write_slots(s, &new_slots, true);
    s.objects() - objects_before
}

/// Adds (or deletes) slot elements, one `add element` per slot map they are in.
fn write_slots(s: &mut impl Sink, slots: &[Element], add: bool) {
    let mut by_map: BTreeMap<Container, Vec<&Element>> = BTreeMap::new();
    for e in slots {
        by_map.entry(e.container).or_default().push(e);
    }
    for (c, elements) in by_map {
        let name = c.name();
        if add {
            s.add_elements(
                &name,
                elements
                    .iter()
                    .map(|e| ElemRef::new(&e.key, e.value.as_ref())),
            );
        } else {
            s.delete_elements(&name, elements.iter().map(|e| ElemRef::new(&e.key, None)));
        }
    }
}
