//! What one family's chains hold after a sync, and the sync that writes them.
//!
//! A sync streams: it renders one service port at a time, writes the chains the kernel does
//! not already hold into the restore input (a pipe to `iptables-restore`), and keeps only a
//! [`digest`] per chain plus each port's dispatch entries ([`FamilyProgram`]). At 5,000
//! services × 50 endpoints that is about 25 MB, where the rules' text is about 140 MB and the
//! restore input 117 MB.
//!
//! - [`full_sync`] renders every service port and compares with what `iptables-save` showed
//!   (or, on a large iptables-nft table, with what the last sync wrote); it also fixes the
//!   jumps from the built-in chains and deletes every kproxy chain not wanted.
//! - [`partial_sync`] re-renders only the changed service ports and compares with the last
//!   program (upstream's minimized restore: a chain that did not change is not even declared,
//!   since declaring a chain under `--noflush` flushes it).
//!
//! Both go through one routine, in one order per table: the fixed chains, then the service
//! ports' own chains (nat), then the dispatch chains with their roots, each group children
//! first, so every transaction leaves each service either as it was or as it will be.

use crate::{
    dispatch,
    render::{self, Chain, FamilyCtx, Root, Table},
    ruleset::{
        children_first, digest, fix_jumps, Commits, Restore, Saved, SavedTable, TableWriter,
    },
};
use kproxy_plugin_api::{IpFamily, ProxyState, ServicePortKey};
use std::collections::BTreeMap;
use std::io::Write;

/// What one service port put into one family's chains.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortProgram {
    /// Its own nat chains, with the [`digest`] of their rules.
    pub chains: Vec<(String, u64)>,
    /// Its entries in the dispatch chains (kept: the dispatch is laid out from every port's
    /// entries at each sync).
    pub entries: Vec<(Root, dispatch::Entry)>,
}

/// What one family's chains hold after the last successful sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyProgram {
    /// The family.
    pub family: IpFamily,
    /// Every programmed service port, so a partial sync re-renders only the changed ones.
    pub ports: BTreeMap<ServicePortKey, PortProgram>,
    /// The fixed and dispatch chains: per table, chain name → [`digest`] of its rules.
    pub shared: BTreeMap<Table, BTreeMap<String, u64>>,
}

impl FamilyProgram {
    /// The number of kproxy chains.
    pub fn chain_count(&self) -> usize {
        let own: usize = self.ports.values().map(|p| p.chains.len()).sum();
        own + self.shared.values().map(BTreeMap::len).sum::<usize>()
    }

    /// What the kernel holds when it holds exactly this program (no other chains).
    pub fn as_saved(&self) -> Saved {
        let mut saved = self.shared_as_saved();
        let nat = saved
            .tables
            .entry(Table::Nat.name().to_string())
            .or_default();
        for port in self.ports.values() {
            nat.ours.extend(port.chains.iter().cloned());
        }
        saved
    }

    /// What the kernel holds of the fixed and dispatch chains alone: a partial sync starts
    /// from it and adds the old chains of the ports it re-renders.
    fn shared_as_saved(&self) -> Saved {
        let mut saved = Saved::default();
        for (table, chains) in &self.shared {
            let t = saved.tables.entry(table.name().to_string()).or_default();
            t.ours.extend(chains.iter().map(|(c, d)| (c.clone(), *d)));
        }
        saved
    }
}

/// A sync's outcome: the new program and how many chains, rules and jumps it wrote.
#[derive(Debug)]
pub struct Written {
    /// What the family's chains hold once the restore is applied.
    pub program: FamilyProgram,
    /// Chains declared plus rules written plus jumps inserted.
    pub objects: u64,
}

/// Where a sync writes each table's part of the restore input: the plugin streams nat into
/// `iptables-restore` and keeps filter (small: no per-endpoint chains) for a restore after
/// the stale conntrack entries are gone; tests keep both.
pub struct Outputs<'a> {
    /// The nat table's part.
    pub nat: &'a mut dyn Write,
    /// The filter table's part.
    pub filter: &'a mut dyn Write,
}

/// Runs `sync` into memory: its whole restore input (nat, then filter) and its program. For
/// tests, benchmarks and reading what a sync would write; the plugin streams instead.
pub fn in_memory(sync: impl FnOnce(Outputs<'_>) -> Written) -> (Restore, FamilyProgram) {
    let (mut text, mut filter) = (Vec::new(), Vec::new());
    let written = sync(Outputs {
        nat: &mut text,
        filter: &mut filter,
    });
    text.extend(filter);
    let restore = Restore {
        text: String::from_utf8(text).expect("restore inputs are UTF-8"),
        objects: written.objects,
    };
    (restore, written.program)
}

/// Writes the restore input that takes the kernel from `held` to every service port of
/// `state`, and fixes the built-in jumps.
pub fn full_sync(
    ctx: &FamilyCtx<'_>,
    tree: bool,
    state: &ProxyState,
    held: Saved,
    commits: Commits,
    out: Outputs<'_>,
) -> Written {
    let ports = Ports::All(state);
    write_family(ctx, tree, ports, held, true, commits, out)
}

/// Writes the restore input that takes the kernel from `previous` to `state`, re-rendering
/// only the service ports in `changed` (the others are as `previous` wrote them).
pub fn partial_sync(
    ctx: &FamilyCtx<'_>,
    tree: bool,
    state: &ProxyState,
    changed: &[ServicePortKey],
    previous: FamilyProgram,
    commits: Commits,
    out: Outputs<'_>,
) -> Written {
    let held = previous.shared_as_saved();
    let ports = Ports::Changed {
        state,
        changed,
        previous: previous.ports,
    };
    write_family(ctx, tree, ports, held, false, commits, out)
}

/// Which service ports a sync renders.
enum Ports<'a> {
    /// Every one of the state (a full sync).
    All(&'a ProxyState),
    /// Only the changed ones; the rest keep what `previous` recorded.
    Changed {
        state: &'a ProxyState,
        changed: &'a [ServicePortKey],
        previous: BTreeMap<ServicePortKey, PortProgram>,
    },
}

/// The one routine behind [`full_sync`] and [`partial_sync`]: per table, the fixed chains, the
/// service ports' chains, the dispatch, each written when `held` lacks it as it is now; then
/// the jumps (when `fix_builtin_jumps`) and the deletion of every chain `held` still has.
fn write_family(
    ctx: &FamilyCtx<'_>,
    tree: bool,
    ports: Ports<'_>,
    mut held: Saved,
    fix_builtin_jumps: bool,
    commits: Commits,
    out: Outputs<'_>,
) -> Written {
    let globals = render::render_globals(ctx);
    let mut program = FamilyProgram {
        family: ctx.family,
        ports: BTreeMap::new(),
        shared: BTreeMap::new(),
    };
    let mut objects = 0;
    // The service ports' chains are all in nat, the first table written.
    let mut ports = Some(ports);
    for table in Table::ALL {
        let held_table = held.tables.remove(table.name()).unwrap_or_default();
        let sink: &mut dyn Write = match table {
            Table::Nat => &mut *out.nat,
            Table::Filter => &mut *out.filter,
        };
        let mut part = Part {
            writer: TableWriter::new(sink, table, commits),
            held: held_table,
        };
        let roots: Vec<&str> = Root::ALL
            .iter()
            .filter(|r| r.table() == table)
            .map(|r| r.chain())
            .collect();
        let fixed: Vec<Chain> = globals
            .chains
            .iter()
            .filter(|(t, c)| *t == table && !roots.contains(&c.name.as_str()))
            .map(|(_, c)| c.clone())
            .collect();
        let shared = program.shared.entry(table).or_default();
        for chain in children_first(&fixed) {
            shared.insert(chain.name.clone(), part.chain(chain));
        }
        match ports.take_if(|_| table == Table::Nat) {
            None => {}
            Some(Ports::All(state)) => {
                for sp in state.services.iter() {
                    if let Some(rules) = render::render_port(ctx, sp) {
                        let port = part.port(rules);
                        program.ports.insert(sp.key.clone(), port);
                    }
                }
            }
            Some(Ports::Changed {
                state,
                changed,
                previous,
            }) => {
                program.ports = previous;
                for key in changed.iter() {
                    if let Some(old) = program.ports.remove(key) {
                        part.held.ours.extend(old.chains);
                    }
                    let rendered = state.find(key).and_then(|sp| render::render_port(ctx, sp));
                    if let Some(rules) = rendered {
                        let port = part.port(rules);
                        program.ports.insert(key.clone(), port);
                    }
                }
            }
        }
        let dispatch = dispatch_chains(table, &globals, &program.ports, tree);
        let shared = program.shared.entry(table).or_default();
        for chain in children_first(&dispatch) {
            shared.insert(chain.name.clone(), part.chain(chain));
        }
        let jumps = if fix_builtin_jumps {
            fix_jumps(table, &globals.jumps, &part.held.others)
        } else {
            Vec::new()
        };
        let mut stale: Vec<String> = part.held.ours.into_keys().collect();
        stale.sort();
        objects += part.writer.finish(&jumps, &stale);
    }
    Written { program, objects }
}

/// One table's part of a sync: what the kernel holds of it, and the writer.
struct Part<'w> {
    writer: TableWriter<'w, dyn Write + 'w>,
    held: SavedTable,
}

impl Part<'_> {
    /// Writes `chain` unless the kernel holds it as it is; returns its digest.
    fn chain(&mut self, chain: &Chain) -> u64 {
        let d = digest(&chain.rules);
        if self.held.ours.remove(&chain.name) != Some(d) {
            self.writer.chain(&chain.name, &chain.rules);
        }
        d
    }

    /// Writes a service port's own chains; returns what is kept of it.
    fn port(&mut self, rules: render::PortRules) -> PortProgram {
        let chains = children_first(&rules.chains)
            .into_iter()
            .map(|c| (c.name.clone(), self.chain(c)))
            .collect();
        PortProgram {
            chains,
            entries: rules.entries,
        }
    }
}

/// The dispatch chains of `table`: each root laid out from every port's entries (in key
/// order), with its fixed tail rules, and its tree chains.
fn dispatch_chains(
    table: Table,
    globals: &render::Globals,
    ports: &BTreeMap<ServicePortKey, PortProgram>,
    tree: bool,
) -> Vec<Chain> {
    let mut entries: BTreeMap<Root, Vec<dispatch::Entry>> = BTreeMap::new();
    for port in ports.values() {
        for (root, entry) in port.entries.iter().filter(|(r, _)| r.table() == table) {
            entries.entry(*root).or_default().push(entry.clone());
        }
    }
    let mut chains = Vec::new();
    for root in Root::ALL.into_iter().filter(|r| r.table() == table) {
        let identity = format!("{}/{}", table.name(), root.chain());
        let list = entries.remove(&root).unwrap_or_default();
        let mut laid_out = dispatch::layout(root.chain(), &identity, list, tree).into_iter();
        let (_, mut rules) = laid_out.next().expect("layout returns the root first");
        if let Some((_, tail)) = globals.tails.iter().find(|(r, _)| *r == root) {
            rules.extend(tail.iter().cloned());
        }
        chains.push(Chain {
            name: root.chain().to_string(),
            rules,
        });
        chains.extend(laid_out.map(|(name, rules)| Chain { name, rules }));
    }
    chains
}
