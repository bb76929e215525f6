//! Reading what the kernel holds and writing the `iptables-restore` input that changes it.
//!
//! - [`Saved`] is what `iptables-save` showed of one family, read as a stream: kproxy's chains
//!   as a [`digest`] of their rules (enough to tell whether a chain must be rewritten), every
//!   other chain with its rules (the built-in chains' jumps are checked rule by rule).
//! - [`TableWriter`] writes one table's part of a restore input as it is produced, cut into
//!   transactions ([`Commits`]); the sync never holds the whole input (117 MB at 5,000 services
//!   × 50 endpoints).
//! - [`fix_jumps`] and [`cleanup_restore`] fix or remove the jumps from the built-in chains.
//! - [`Ruleset`] and [`parse_chains`] read a restore input or an `iptables-save` output back
//!   into chains, for tests, benchmarks and anyone reading what kproxy writes.
//!
//! Every input is for `iptables-restore --noflush`: only the chains it names change. Within a
//! transaction each chain is declared (flushed or created) right before its rules, and chains
//! come children first, so a jump always names a chain that is complete.

use crate::{
    names,
    render::{Chain, Jump, Table},
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, Write};

/// A chain's rules reduced to 64 bits: what the sync remembers of a chain it wrote, and what it
/// compares with what the kernel holds. Order matters; equal rules give equal digests in every
/// process (SipHash with fixed keys).
pub fn digest<S: AsRef<str>>(rules: &[S]) -> u64 {
    let mut d = Digest::default();
    for rule in rules {
        d.push(rule.as_ref());
    }
    d.0
}

/// A [`digest`] built one rule at a time (how `iptables-save` output arrives).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Digest(u64);

impl Digest {
    fn push(&mut self, rule: &str) {
        let mut h = DefaultHasher::new();
        rule.hash(&mut h);
        self.0 = self
            .0
            .wrapping_mul(0x0000_0100_0000_01b3)
            .wrapping_add(h.finish());
    }
}

/// One line of `iptables-save` output or of a restore input, as far as kproxy reads it.
enum Line<'a> {
    /// `*table`.
    Table(&'a str),
    /// `:chain POLICY [counters]`.
    Chain(&'a str),
    /// `-A chain rule`.
    Rule(&'a str, &'a str),
    /// `-I chain N rule`.
    Insert(&'a str, &'a str),
    /// Anything else (`COMMIT`, comments, `-X`, `-D`).
    Other,
}

impl<'a> Line<'a> {
    fn read(line: &'a str) -> Line<'a> {
        if let Some(name) = line.strip_prefix('*') {
            Line::Table(name.trim())
        } else if let Some(rest) = line.strip_prefix(':') {
            rest.split_whitespace()
                .next()
                .map_or(Line::Other, Line::Chain)
        } else if let Some(rest) = line.strip_prefix("-A ") {
            rest.split_once(' ')
                .map_or(Line::Other, |(chain, rule)| Line::Rule(chain, rule))
        } else if let Some(rest) = line.strip_prefix("-I ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(chain), Some(_), Some(rule)) => Line::Insert(chain, rule),
                _ => Line::Other,
            }
        } else {
            Line::Other
        }
    }
}

/// Per table name: chain name → its rules (text after `-A <chain> `), for every chain of an
/// `iptables-save` output or a restore input. Holds every rule: for tests, back-end detection
/// (which reads small tables) and reading what kproxy wrote.
pub fn parse_chains(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut tables: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut table: Option<String> = None;
    for line in text.lines() {
        match Line::read(line) {
            Line::Table(name) => {
                tables.entry(name.to_string()).or_default();
                table = Some(name.to_string());
            }
            Line::Chain(chain) => {
                if let Some(t) = &table {
                    let chains = tables.entry(t.clone()).or_default();
                    chains.entry(chain.to_string()).or_default();
                }
            }
            Line::Rule(chain, rule) => {
                if let Some(t) = &table {
                    let chains = tables.entry(t.clone()).or_default();
                    chains
                        .entry(chain.to_string())
                        .or_default()
                        .push(rule.to_string());
                }
            }
            Line::Insert(..) | Line::Other => {}
        }
    }
    tables
}

/// Every kproxy chain of one family with its rules, and the jumps into them: a restore input
/// read back (see [`crate::desired_ruleset`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// Per table: chain name → rules (text after `-A <chain> `).
    pub tables: BTreeMap<Table, BTreeMap<String, Vec<String>>>,
    /// Jumps from built-in chains, in order per built-in chain.
    pub jumps: Vec<Jump>,
}

impl Ruleset {
    /// Reads the chains a restore input writes and the built-in jumps it inserts (into empty
    /// tables, an input inserts every jump in order).
    pub fn parse(text: &str) -> Ruleset {
        let mut rs = Ruleset::default();
        let mut table = None;
        for line in text.lines() {
            match Line::read(line) {
                Line::Table(name) => table = Table::ALL.into_iter().find(|t| t.name() == name),
                Line::Chain(chain) => {
                    if let Some(t) = table {
                        let chains = rs.tables.entry(t).or_default();
                        chains.insert(chain.to_string(), Vec::new());
                    }
                }
                Line::Rule(chain, rule) => {
                    if let Some(t) = table {
                        let chains = rs.tables.entry(t).or_default();
                        chains
                            .entry(chain.to_string())
                            .or_default()
                            .push(rule.to_string());
                    }
                }
                Line::Insert(from, rule) => {
                    let builtin = BUILTINS.iter().find(|b| **b == from);
                    if let (Some(t), Some(from)) = (table, builtin) {
                        rs.jumps.push(Jump {
                            table: t,
                            from,
                            rule: rule.to_string(),
                        });
                    }
                }
                Line::Other => {}
            }
        }
        rs
    }

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

/// The built-in chains kproxy jumps from.
const BUILTINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// What one table of the kernel holds, as a sync needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SavedTable {
    /// kproxy's chains: name → [`digest`] of the rules. A sync takes out every chain it
    /// wants; what is left is stale.
    pub ours: HashMap<String, u64>,
    /// Every other chain with its rules (built-in chains and other programs' chains).
    pub others: BTreeMap<String, Vec<String>>,
}

/// What the kernel holds of one family: from `iptables-save`, or from what the last sync
/// wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Saved {
    /// Per table name.
    pub tables: BTreeMap<String, SavedTable>,
}

impl Saved {
    /// Reads `iptables-save` output as it streams: kproxy chains are kept as digests only,
    /// so reading a table of 260,000 chains holds a few tens of megabytes, not its text.
    pub fn read(input: impl BufRead) -> std::io::Result<Saved> {
        let mut saved = Saved::default();
        let mut digests: HashMap<String, Digest> = HashMap::new();
        let mut table: Option<String> = None;
        let finish = |saved: &mut Saved, table: &Option<String>, digests: &mut HashMap<_, _>| {
            if let Some(t) = table {
                let ours = &mut saved.tables.entry(t.clone()).or_default().ours;
                ours.extend(digests.drain().map(|(c, d): (String, Digest)| (c, d.0)));
            }
        };
        for line in input.lines() {
            let line = line?;
            match Line::read(&line) {
                Line::Table(name) => {
                    finish(&mut saved, &table, &mut digests);
                    saved.tables.entry(name.to_string()).or_default();
                    table = Some(name.to_string());
                }
                Line::Chain(chain) if table.is_some() => {
                    if is_ours(chain) {
                        digests.entry(chain.to_string()).or_default();
                    } else {
                        let t = saved.tables.entry(table.clone().unwrap()).or_default();
                        t.others.entry(chain.to_string()).or_default();
                    }
                }
                Line::Rule(chain, rule) if table.is_some() => {
                    if is_ours(chain) {
                        match digests.get_mut(chain) {
                            Some(d) => d.push(rule),
                            None => {
                                let mut d = Digest::default();
                                d.push(rule);
                                digests.insert(chain.to_string(), d);
                            }
                        }
                    } else {
                        let t = saved.tables.entry(table.clone().unwrap()).or_default();
                        let rules = t.others.entry(chain.to_string()).or_default();
                        rules.push(rule.to_string());
                    }
                }
                _ => {}
            }
        }
        finish(&mut saved, &table, &mut digests);
        Ok(saved)
    }

    /// [`Saved::read`] of a text.
    pub fn parse(text: &str) -> Saved {
        Saved::read(text.as_bytes()).expect("reading from memory cannot fail")
    }

    /// What the kernel holds of `table` (empty when the table is absent).
    pub fn table(&self, table: Table) -> Option<&SavedTable> {
        self.tables.get(table.name())
    }

    /// Whether anything of kproxy's is present: a chain or a jump.
    pub fn has_kproxy(&self) -> bool {
        self.tables
            .values()
            .any(|t| !t.ours.is_empty() || t.others.values().flatten().any(|r| jumps_to_ours(r)))
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

/// A restore input held in memory and how many chains and rules it writes: for cleanup (small)
/// and for tests.
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

/// Writes one table's part of a restore input as chains arrive.
///
/// Chains must arrive children first (a chain after every chain it jumps to that this part
/// writes), so each transaction leaves every service either as it was or as it will be. Under
/// [`Commits::Chains`] a transaction is closed once it holds its share of chains; the last one
/// also carries the built-in jumps and the stale chains' deletion ([`TableWriter::finish`]).
///
/// Chains are held in segments of at most [`SEGMENT_CHAINS`] and written declarations first,
/// then rules, as `iptables-save` writes a table: iptables-nft-restore takes a quarter less
/// time over that than over each declaration next to its rules (41.8 s against 54.9 s for
/// 5,000 services × 50 endpoints), and a segment is small (about 0.5 MB).
///
/// Write errors are the sink's to report: [`crate::restore::RestoreRun`] keeps the first one
/// and reports it, with the tool's own message, when the run ends.
pub struct TableWriter<'w, W: Write + ?Sized> {
    out: &'w mut W,
    table: Table,
    limit: usize,
    /// Chains declared in the open transaction (`None` when none is open).
    open: Option<usize>,
    /// The held segment: its declarations, its rules, how many chains.
    declarations: String,
    rules: String,
    held: usize,
    objects: u64,
}

/// The most chains a [`TableWriter`] holds before writing them out.
pub const SEGMENT_CHAINS: usize = 1_000;

impl<'w, W: Write + ?Sized> TableWriter<'w, W> {
    /// Starts `table`'s part; nothing is written until a chain, a jump or a deletion is.
    pub fn new(out: &'w mut W, table: Table, commits: Commits) -> Self {
        let limit = match commits {
            Commits::PerTable => usize::MAX,
            Commits::Chains(n) => n.max(1),
        };
        TableWriter {
            out,
            table,
            limit,
            open: None,
            declarations: String::new(),
            rules: String::new(),
            held: 0,
            objects: 0,
        }
    }

    fn begin(&mut self) -> usize {
        if self.open.is_none() {
            let _ = writeln!(self.out, "*{}", self.table.name());
            self.open = Some(0);
        }
        self.open.unwrap_or(0)
    }

    /// Writes out the held segment into the open transaction.
    fn write_segment(&mut self) {
        if self.held > 0 {
            let _ = self.out.write_all(self.declarations.as_bytes());
            let _ = self.out.write_all(self.rules.as_bytes());
            self.declarations.clear();
            self.rules.clear();
            self.held = 0;
        }
    }

    fn commit(&mut self) {
        self.write_segment();
        if self.open.take().is_some() {
            let _ = self.out.write_all(b"COMMIT\n");
        }
    }

    /// Declares `name` (flushing it when it exists) and writes its rules.
    pub fn chain<S: AsRef<str>>(&mut self, name: &str, rules: &[S]) {
        use std::fmt::Write as _;
        if self.open.is_some_and(|n| n >= self.limit) {
            self.commit();
        } else if self.held >= SEGMENT_CHAINS {
            self.write_segment();
        }
        let declared = self.begin() + 1;
        self.open = Some(declared);
        self.held += 1;
        let _ = writeln!(self.declarations, ":{name} - [0:0]");
        for rule in rules {
            let _ = writeln!(self.rules, "-A {name} {}", rule.as_ref());
        }
        self.objects += 1 + rules.len() as u64;
    }

    /// Ends the part: the built-in jump fixes (`-D`/`-I` lines), then the stale chains flushed
    /// and deleted. Many stale chains are first all flushed, then deleted, in transactions of
    /// their own, since they may jump to one another. Returns the chains declared, rules
    /// written and jumps inserted.
    pub fn finish(mut self, jumps: &[String], delete: &[String]) -> u64 {
        let in_last = self.open.unwrap_or(0);
        let few_deletes = in_last + delete.len() <= self.limit;
        if !jumps.is_empty() || (few_deletes && !delete.is_empty()) {
            self.begin();
        }
        self.write_segment();
        for line in jumps {
            let _ = writeln!(self.out, "{line}");
        }
        if few_deletes {
            self.delete_block(delete);
        }
        self.commit();
        if !few_deletes {
            for chunk in delete.chunks(self.limit) {
                self.begin();
                for chain in chunk {
                    let _ = writeln!(self.out, ":{chain} - [0:0]");
                }
                self.commit();
            }
            for chunk in delete.chunks(self.limit) {
                self.begin();
                for chain in chunk {
                    let _ = writeln!(self.out, "-X {chain}");
                }
                self.commit();
            }
        }
        self.objects += delete.len() as u64;
        self.objects + jumps.iter().filter(|l| l.starts_with("-I")).count() as u64
    }

    /// Flushes, then deletes, `delete` in the open transaction.
    fn delete_block(&mut self, delete: &[String]) {
        for chain in delete {
            let _ = writeln!(self.out, ":{chain} - [0:0]");
        }
        for chain in delete {
            let _ = writeln!(self.out, "-X {chain}");
        }
    }
}

/// `chains` ordered so that each comes after every chain of `chains` it jumps to (a
/// depth-first post-order from the chains nothing in `chains` jumps to), which also keeps a
/// service's chains together.
pub fn children_first(chains: &[Chain]) -> Vec<&Chain> {
    let index: BTreeMap<&str, usize> = chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let targets: Vec<Vec<usize>> = chains
        .iter()
        .map(|c| {
            c.rules
                .iter()
                .filter_map(|r| jump_target(r))
                .filter_map(|t| index.get(t).copied())
                .collect()
        })
        .collect();
    let mut referenced = vec![false; chains.len()];
    for &t in targets.iter().flatten() {
        referenced[t] = true;
    }
    let mut seen = vec![false; chains.len()];
    let mut order = Vec::with_capacity(chains.len());
    let starts = (0..chains.len())
        .filter(|&i| !referenced[i])
        .chain(0..chains.len());
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
                order.push(&chains[*node]);
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

/// `-D`/`-I` lines that make kproxy's jumps in each built-in chain of `table` exactly
/// `jumps` (in order), leaving them alone when they already are. Other rules are not touched.
pub fn fix_jumps(
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

/// Removes every kproxy chain and every jump into one that `saved` shows.
pub fn cleanup_restore(saved: &Saved, commits: Commits) -> Restore {
    let mut text = Vec::new();
    let mut objects = 0;
    for table in Table::ALL {
        let Some(existing) = saved.table(table) else {
            continue;
        };
        let jumps = fix_jumps(table, &[], &existing.others);
        let mut stale: Vec<String> = existing.ours.keys().cloned().collect();
        stale.sort();
        objects += TableWriter::new(&mut text, table, commits).finish(&jumps, &stale);
    }
    Restore {
        text: String::from_utf8(text).expect("restore inputs are UTF-8"),
        objects,
    }
}
