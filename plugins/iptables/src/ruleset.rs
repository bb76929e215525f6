//! One family's complete rules as a value, and the `iptables-restore` input that gets the kernel
//! from what it holds to them.
//!
//! - [`assemble`] puts the fixed chains, every service port's chains and the dispatch layout
//!   together into a [`Ruleset`].
//! - [`full_restore`] rewrites every kproxy chain whose rules differ from what `iptables-save`
//!   showed ([`Saved`]), deletes kproxy chains the kernel holds but the ruleset lacks, and fixes
//!   the jumps from the built-in chains. A hand-edited chain is put right.
//! - [`partial_restore`] writes only the chains whose rules differ from the last written
//!   ruleset, and deletes the chains that are gone (upstream's minimized restore: a chain that
//!   did not change is not even declared, since declaring a chain under `--noflush` flushes it).
//! - [`cleanup_restore`] removes every kproxy chain and jump the kernel holds.
//!
//! Every input is for `iptables-restore --noflush`: only the chains it names change.

use crate::{
    dispatch, names,
    render::{Globals, Jump, PortRules, Root, Table},
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Every kproxy chain of one family with its rules, and the jumps into them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// Per table: chain name → rules (text after `-A <chain> `).
    pub tables: BTreeMap<Table, BTreeMap<String, Vec<String>>>,
    /// Jumps from built-in chains, in order per built-in chain.
    pub jumps: Vec<Jump>,
}

impl Ruleset {
    /// The chains of `table` (empty when none).
    pub fn chains(&self, table: Table) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.tables.get(&table).into_iter().flat_map(|c| c.iter())
    }

    /// The number of kproxy chains.
    pub fn chain_count(&self) -> usize {
        self.tables.values().map(BTreeMap::len).sum()
    }

    /// The number of rules in every kproxy chain.
    pub fn rule_count(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| t.values())
            .map(Vec::len)
            .sum()
    }
}

/// Builds a family's ruleset from its fixed part and its service ports (in key order), laying
/// out each dispatch chain as a tree or as upstream's list.
pub fn assemble<'a>(
    globals: &Globals,
    ports: impl IntoIterator<Item = &'a PortRules>,
    tree: bool,
) -> Ruleset {
    let mut tables: BTreeMap<Table, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (table, chain) in &globals.chains {
        tables
            .entry(*table)
            .or_default()
            .insert(chain.name.clone(), chain.rules.clone());
    }
    let mut entries: BTreeMap<Root, Vec<dispatch::Entry>> = BTreeMap::new();
    for port in ports {
        let nat = tables.entry(Table::Nat).or_default();
        for chain in &port.chains {
            nat.insert(chain.name.clone(), chain.rules.clone());
        }
        for (root, entry) in &port.entries {
            entries.entry(*root).or_default().push(entry.clone());
        }
    }
    for root in Root::ALL {
        let table = tables.entry(root.table()).or_default();
        let identity = format!("{}/{}", root.table().name(), root.chain());
        let list = entries.remove(&root).unwrap_or_default();
        let mut laid_out = dispatch::layout(root.chain(), &identity, list, tree).into_iter();
        let (_, mut rules) = laid_out.next().expect("layout returns the root first");
        if let Some((_, tail)) = globals.tails.iter().find(|(r, _)| *r == root) {
            rules.extend(tail.iter().cloned());
        }
        table.insert(root.chain().to_string(), rules);
        for (name, rules) in laid_out {
            table.insert(name, rules);
        }
    }
    Ruleset {
        tables,
        jumps: globals.jumps.clone(),
    }
}

/// What `iptables-save` showed of one family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Saved {
    /// Per table name: chain name → its rules (text after `-A <chain> `), for every chain.
    pub tables: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl Saved {
    /// Parses `iptables-save` output.
    pub fn parse(text: &str) -> Saved {
        let mut saved = Saved::default();
        let mut table: Option<String> = None;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = Some(name.trim().to_string());
                saved.tables.entry(name.trim().to_string()).or_default();
            } else if let Some(rest) = line.strip_prefix(':') {
                if let (Some(t), Some(chain)) = (&table, rest.split_whitespace().next()) {
                    saved
                        .tables
                        .entry(t.clone())
                        .or_default()
                        .entry(chain.to_string())
                        .or_default();
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                if let (Some(t), Some((chain, rule))) = (&table, rest.split_once(' ')) {
                    saved
                        .tables
                        .entry(t.clone())
                        .or_default()
                        .entry(chain.to_string())
                        .or_default()
                        .push(rule.to_string());
                }
            }
        }
        saved
    }

    fn table(&self, table: Table) -> Option<&BTreeMap<String, Vec<String>>> {
        self.tables.get(table.name())
    }

    /// Whether anything of kproxy's is present: a chain or a jump.
    pub fn has_kproxy(&self) -> bool {
        self.tables.values().any(|chains| {
            chains
                .iter()
                .any(|(name, rules)| is_ours(name) || rules.iter().any(|r| jumps_to_ours(r)))
        })
    }

    /// The number of rules in every table and chain (for back-end detection).
    pub fn rule_count(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| t.values())
            .map(Vec::len)
            .sum()
    }
}

fn is_ours(chain: &str) -> bool {
    chain.starts_with(names::PREFIX)
}

/// Whether a rule of a built-in chain is one of kproxy's jumps: its target is a kproxy chain.
fn jumps_to_ours(rule: &str) -> bool {
    rule.split(" -j ")
        .nth(1)
        .or_else(|| rule.strip_prefix("-j "))
        .is_some_and(|t| t.starts_with(names::PREFIX))
}

/// A restore input and how many chains and rules it writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Restore {
    /// The text for `iptables-restore --noflush`; empty when nothing must change.
    pub text: String,
    /// Chains declared plus rules written.
    pub objects: u64,
}

impl Restore {
    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// What one table's part of a restore does.
#[derive(Default)]
struct TablePart {
    declare: Vec<String>,
    jumps: Vec<String>,
    rules: Vec<(String, Vec<String>)>,
    delete: Vec<String>,
}

impl TablePart {
    fn is_empty(&self) -> bool {
        self.declare.is_empty() && self.jumps.is_empty() && self.delete.is_empty()
    }

    fn write(self, table: Table, out: &mut Restore) {
        if self.is_empty() {
            return;
        }
        let t = &mut out.text;
        let _ = writeln!(t, "*{}", table.name());
        for chain in &self.declare {
            let _ = writeln!(t, ":{chain} - [0:0]");
        }
        out.objects += self.declare.len() as u64;
        for line in &self.jumps {
            let _ = writeln!(t, "{line}");
        }
        out.objects += self.jumps.iter().filter(|l| l.starts_with("-I")).count() as u64;
        for (chain, rules) in &self.rules {
            for rule in rules {
                let _ = writeln!(t, "-A {chain} {rule}");
            }
            out.objects += rules.len() as u64;
        }
        for chain in &self.delete {
            let _ = writeln!(t, "-X {chain}");
        }
        t.push_str("COMMIT\n");
    }
}

/// Makes the kernel (as `saved` shows it) hold `desired`: every kproxy chain whose rules differ
/// from the desired ones is rewritten, every kproxy chain the ruleset lacks is deleted, the
/// jumps are fixed. Chains the kernel already holds exactly are left alone: rules are rendered
/// as `iptables-save` prints them, so an unchanged chain compares equal, and a periodic full
/// sync of an unchanged node writes nothing (iptables-nft-restore is slow with many declared
/// chains; see the README).
pub fn full_restore(desired: &Ruleset, saved: &Saved) -> Restore {
    let mut out = Restore::default();
    for table in Table::ALL {
        let empty = BTreeMap::new();
        let existing = saved.table(table).unwrap_or(&empty);
        let mut part = TablePart::default();
        for (chain, rules) in desired.chains(table) {
            if existing.get(chain) == Some(rules) {
                continue;
            }
            part.declare.push(chain.clone());
            part.rules.push((chain.clone(), rules.clone()));
        }
        let wanted: BTreeSet<&String> = desired.chains(table).map(|(c, _)| c).collect();
        for chain in existing
            .keys()
            .filter(|c| is_ours(c) && !wanted.contains(c))
        {
            part.declare.push(chain.clone());
            part.delete.push(chain.clone());
        }
        part.jumps = fix_jumps(table, &desired.jumps, existing);
        part.write(table, &mut out);
    }
    out
}

/// `-D`/`-I` lines that make kproxy's jumps in each built-in chain of `table` exactly
/// `jumps` (in order), leaving them alone when they already are. Other rules are not touched.
fn fix_jumps(
    table: Table,
    jumps: &[Jump],
    existing: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for j in jumps.iter().filter(|j| j.table == table) {
        wanted.entry(j.from).or_default().push(j.rule.as_str());
    }
    let mut builtins: BTreeSet<&str> = wanted.keys().copied().collect();
    for (chain, rules) in existing {
        if !is_ours(chain) && rules.iter().any(|r| jumps_to_ours(r)) {
            builtins.insert(chain.as_str());
        }
    }
    let mut lines = Vec::new();
    for chain in builtins {
        let have: Vec<&str> = existing
            .get(chain)
            .map(|rules| {
                rules
                    .iter()
                    .filter(|r| jumps_to_ours(r))
                    .map(String::as_str)
                    .collect()
            })
            .unwrap_or_default();
        let want = wanted.get(chain).cloned().unwrap_or_default();
        if have == want {
            continue;
        }
        for rule in &have {
            lines.push(format!("-D {chain} {rule}"));
        }
        for (i, rule) in want.iter().enumerate() {
            lines.push(format!("-I {chain} {} {rule}", i + 1));
        }
    }
    lines
}

/// The chains of `desired` that differ from `written` (the last ruleset applied), and the
/// chains `written` has that `desired` lacks.
pub fn partial_restore(written: &Ruleset, desired: &Ruleset) -> Restore {
    let mut out = Restore::default();
    for table in Table::ALL {
        let empty = BTreeMap::new();
        let old = written.tables.get(&table).unwrap_or(&empty);
        let new = desired.tables.get(&table).unwrap_or(&empty);
        let mut part = TablePart::default();
        for (chain, rules) in new {
            if old.get(chain) != Some(rules) {
                part.declare.push(chain.clone());
                part.rules.push((chain.clone(), rules.clone()));
            }
        }
        for chain in old.keys().filter(|c| !new.contains_key(*c)) {
            part.declare.push(chain.clone());
            part.delete.push(chain.clone());
        }
        part.write(table, &mut out);
    }
    out
}

/// Removes every kproxy chain and every jump into one that `saved` shows.
pub fn cleanup_restore(saved: &Saved) -> Restore {
    let mut out = Restore::default();
    for table in Table::ALL {
        let Some(existing) = saved.table(table) else {
            continue;
        };
        let mut part = TablePart {
            jumps: fix_jumps(table, &[], existing),
            ..TablePart::default()
        };
        for chain in existing.keys().filter(|c| is_ours(c)) {
            part.declare.push(chain.clone());
            part.delete.push(chain.clone());
        }
        part.write(table, &mut out);
    }
    out
}
