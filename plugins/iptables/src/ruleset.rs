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
//! Every input is for `iptables-restore --noflush`: only the chains it names change. Each
//! table's part is one transaction, or several on iptables-nft when it is large ([`Commits`]).

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

/// How many transactions a restore input is cut into.
///
/// iptables-restore commits each `*table … COMMIT` block as one transaction. On
/// iptables-nft 1.8 a block costs O(commands × chains named in the block): before fetching its
/// cache, `--noflush` keeps the names every command mentions in a sorted linked list, walked
/// for every command. One block of 139,000 chains and 359,000 rules (44,000 services) takes
/// ten minutes there; cut into blocks of [`NFT_CHAINS_PER_COMMIT`] chains it takes seconds.
/// Each commit that adds a jump also makes the kernel re-validate the whole table (about
/// 0.3 s at that size), which is what keeps blocks from being tiny. iptables-legacy rewrites
/// the whole table at every commit: one block per table there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commits {
    /// One transaction per table.
    PerTable,
    /// Transactions of at most this many declared chains (each table's last transaction also
    /// carries the built-in jumps and the stale chains' deletion).
    Chains(usize),
}

/// The chains per transaction on iptables-nft: measured on 44,000 services × 1 endpoint and
/// 5,000 × 50 (see the plugin's README, "How a sync works" and "Figures").
pub const NFT_CHAINS_PER_COMMIT: usize = 1_000;

/// What one table's part of a restore does.
#[derive(Default)]
struct TablePart {
    /// Chains declared (flushed or created) and written, with their rules.
    write: Vec<(String, Vec<String>)>,
    /// `-D`/`-I` lines for the built-in chains.
    jumps: Vec<String>,
    /// Chains declared (flushed) and deleted.
    delete: Vec<String>,
}

impl TablePart {
    fn is_empty(&self) -> bool {
        self.write.is_empty() && self.jumps.is_empty() && self.delete.is_empty()
    }

    /// Appends this part to `out`: one transaction, or several under [`Commits::Chains`] when
    /// it declares more chains than one may hold.
    ///
    /// Cut into several, chains are written children first (a chain's jump targets are
    /// complete before any transaction jumps to them, so each transaction leaves every
    /// service either as it was or as it will be) and the built-in jumps and deletions come
    /// last, once nothing written still jumps to a stale chain. Many stale chains are first
    /// all flushed, then deleted, since they may jump to one another.
    fn write(self, table: Table, commits: Commits, out: &mut Restore) {
        if self.is_empty() {
            return;
        }
        let declared = self.write.len() + self.delete.len();
        out.objects += declared as u64;
        out.objects += self.jumps.iter().filter(|l| l.starts_with("-I")).count() as u64;
        out.objects += self.write.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
        let (limit, ordered) = match commits {
            Commits::Chains(n) if declared > n => (n.max(1), children_first(&self.write)),
            // One transaction: every chain in the last (and only) block, in the given order.
            _ => (usize::MAX, self.write.iter().collect()),
        };
        let mut chunks: Vec<&[&(String, Vec<String>)]> = ordered.chunks(limit).collect();
        let last = chunks.pop().unwrap_or(&[]);
        for chunk in chunks {
            let declare: Vec<&str> = chunk.iter().map(|(c, _)| c.as_str()).collect();
            write_block(&mut out.text, table, &declare, &[], chunk, &[]);
        }
        let few_deletes = self.delete.len() + last.len() <= limit;
        let mut declare: Vec<&str> = last.iter().map(|(c, _)| c.as_str()).collect();
        let mut deletes: Vec<&str> = Vec::new();
        if few_deletes {
            declare.extend(self.delete.iter().map(String::as_str));
            deletes = self.delete.iter().map(String::as_str).collect();
        }
        write_block(&mut out.text, table, &declare, &self.jumps, last, &deletes);
        if !few_deletes {
            for chunk in self.delete.chunks(limit) {
                let flush: Vec<&str> = chunk.iter().map(String::as_str).collect();
                write_block(&mut out.text, table, &flush, &[], &[], &[]);
            }
            for chunk in self.delete.chunks(limit) {
                let delete: Vec<&str> = chunk.iter().map(String::as_str).collect();
                write_block(&mut out.text, table, &[], &[], &[], &delete);
            }
        }
    }
}

/// One `*table … COMMIT` block: declarations, built-in jump fixes, rules, deletions.
fn write_block(
    t: &mut String,
    table: Table,
    declare: &[&str],
    jumps: &[String],
    rules: &[&(String, Vec<String>)],
    delete: &[&str],
) {
    let _ = writeln!(t, "*{}", table.name());
    for chain in declare {
        let _ = writeln!(t, ":{chain} - [0:0]");
    }
    for line in jumps {
        let _ = writeln!(t, "{line}");
    }
    for (chain, chain_rules) in rules {
        for rule in chain_rules {
            let _ = writeln!(t, "-A {chain} {rule}");
        }
    }
    for chain in delete {
        let _ = writeln!(t, "-X {chain}");
    }
    t.push_str("COMMIT\n");
}

/// The chains of `write` ordered so that each comes after every chain of `write` it jumps to
/// (a depth-first post-order from the chains nothing in `write` jumps to), which also keeps a
/// service's chains together.
fn children_first(write: &[(String, Vec<String>)]) -> Vec<&(String, Vec<String>)> {
    let index: BTreeMap<&str, usize> = write
        .iter()
        .enumerate()
        .map(|(i, (c, _))| (c.as_str(), i))
        .collect();
    let targets: Vec<Vec<usize>> = write
        .iter()
        .map(|(_, rules)| {
            rules
                .iter()
                .filter_map(|r| jump_target(r))
                .filter_map(|t| index.get(t).copied())
                .collect()
        })
        .collect();
    let mut referenced = vec![false; write.len()];
    for &t in targets.iter().flatten() {
        referenced[t] = true;
    }
    let mut seen = vec![false; write.len()];
    let mut order = Vec::with_capacity(write.len());
    let starts = (0..write.len())
        .filter(|&i| !referenced[i])
        .chain(0..write.len());
    for start in starts {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![(start, 0usize)];
        while let Some((node, next)) = stack.last_mut() {
            if let Some(&child) = targets[*node].get(*next) {
                *next += 1;
                if !seen[child] {
                    seen[child] = true;
                    stack.push((child, 0));
                }
            } else {
                order.push(&write[*node]);
                stack.pop();
            }
        }
    }
    order
}

/// The chain a rule jumps or goes to (`-j X`, `-g X`), if any.
fn jump_target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// Makes the kernel (as `saved` shows it) hold `desired`: every kproxy chain whose rules differ
/// from the desired ones is rewritten, every kproxy chain the ruleset lacks is deleted, the
/// jumps are fixed. Chains the kernel already holds exactly are left alone: rules are rendered
/// as `iptables-save` prints them, so an unchanged chain compares equal, and a periodic full
/// sync of an unchanged node writes nothing (iptables-nft-restore is slow with many declared
/// chains; see the README).
pub fn full_restore(desired: &Ruleset, saved: &Saved, commits: Commits) -> Restore {
    let mut out = Restore::default();
    for table in Table::ALL {
        let empty = BTreeMap::new();
        let existing = saved.table(table).unwrap_or(&empty);
        let mut part = TablePart::default();
        for (chain, rules) in desired.chains(table) {
            if existing.get(chain) == Some(rules) {
                continue;
            }
            part.write.push((chain.clone(), rules.clone()));
        }
        let wanted: BTreeSet<&String> = desired.chains(table).map(|(c, _)| c).collect();
        for chain in existing
            .keys()
            .filter(|c| is_ours(c) && !wanted.contains(c))
        {
            part.delete.push(chain.clone());
        }
        part.jumps = fix_jumps(table, &desired.jumps, existing);
        part.write(table, commits, &mut out);
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
pub fn partial_restore(written: &Ruleset, desired: &Ruleset, commits: Commits) -> Restore {
    let mut out = Restore::default();
    for table in Table::ALL {
        let empty = BTreeMap::new();
        let old = written.tables.get(&table).unwrap_or(&empty);
        let new = desired.tables.get(&table).unwrap_or(&empty);
        let mut part = TablePart::default();
        for (chain, rules) in new {
            if old.get(chain) != Some(rules) {
                part.write.push((chain.clone(), rules.clone()));
            }
        }
        for chain in old.keys().filter(|c| !new.contains_key(*c)) {
            part.delete.push(chain.clone());
        }
        part.write(table, commits, &mut out);
    }
    out
}

/// Removes every kproxy chain and every jump into one that `saved` shows.
pub fn cleanup_restore(saved: &Saved, commits: Commits) -> Restore {
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
            part.delete.push(chain.clone());
        }
        part.write(table, commits, &mut out);
    }
    out
}
