//! kproxy's iptables dataplane: kube-proxy's iptables mode in `KPROXY-*` chains, written with
//! `iptables-restore --noflush -w` (per family: nat streamed as it is rendered, filter after the
//! conntrack cleanup), with a service dispatch that grows logarithmically with the number of
//! service ports.
//!
//! Where to start:
//! - [`render`]: the pure translation of a service port into chains and dispatch entries
//!   (upstream's rules with kproxy's prefix);
//! - [`dispatch`]: upstream's linear dispatch list, or kproxy's tree of chains;
//! - [`program`]: what a family's chains hold after a sync (a digest per chain), and the full
//!   and partial sync that stream the restore input;
//! - [`ruleset`]: reading `iptables-save`, writing a restore input cut into transactions, and
//!   reading one back;
//! - [`restore`] and [`backend`]: the thin layer that runs `iptables-restore`/`-save` of the
//!   back end the node uses;
//! - [`IptablesDataplane`]: the plugin that ties them together.
//!
//! The plugin's README describes the chain layout and how to read it in `iptables-save`.

pub mod backend;
pub mod config;
pub mod dispatch;
pub mod names;
pub mod program;
pub mod render;
pub mod restore;
pub mod ruleset;

#[cfg(test)]
mod tests;

use backend::Backend;
use config::{BackendChoice, DispatchMode, IptablesConfig};
use kproxy_dataplane_common::conntrack;
use kproxy_plugin_api::{
    export_plugin, Capabilities, ChangeSet, HostContext, IpFamily, NodeFacts, Plugin, PluginError,
    PluginStats, Protocol, ProxySettings, ProxyState, SyncReport,
};
use program::{FamilyProgram, Outputs};
use render::FamilyCtx;
use restore::Tool;
use ruleset::{Commits, Ruleset, Saved};

/// Counters reported through [`Plugin::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Successful syncs.
    pub syncs: u64,
    /// Successful full syncs.
    pub full_syncs: u64,
    /// Failed syncs.
    pub failed_syncs: u64,
    /// Partial syncs that found nothing to change and ran no restore.
    pub noop_syncs: u64,
    /// `iptables-restore` runs.
    pub restores: u64,
    /// Chains declared and rules written by successful syncs.
    pub objects_written: u64,
    /// Stale conntrack entries deleted.
    pub conntrack_deleted: u64,
    /// Conntrack cleanups that failed (logged; the sync itself still succeeded).
    pub conntrack_failures: u64,
}

/// The iptables dataplane.
pub struct IptablesDataplane {
    config: IptablesConfig,
    settings: ProxySettings,
    /// The back end, chosen at the first sync (detection only reads).
    backend: Option<Backend>,
    /// Whether `nf_conntrack_tcp_be_liberal` is set; read at the first sync.
    conntrack_liberal: Option<bool>,
    /// One per enabled family after the last successful sync; `None` before the first one
    /// and after a failure (the next sync is then full).
    programs: Option<Vec<FamilyProgram>>,
    /// The node facts the programs were rendered with.
    node: Option<NodeFacts>,
    /// See [`LARGE_NFT_TABLE`].
    large_nft_table: usize,
    /// Chains per transaction on iptables-nft ([`ruleset::NFT_CHAINS_PER_COMMIT`]).
    nft_chains_per_commit: usize,
    counters: Counters,
}

impl IptablesDataplane {
    /// Builds the dataplane from its config section and the host's context; touches nothing.
    pub fn build(config: IptablesConfig, ctx: &HostContext) -> Self {
        IptablesDataplane {
            backend: match config.backend {
                BackendChoice::Auto => None,
                BackendChoice::Nft => Some(Backend::Nft),
                BackendChoice::Legacy => Some(Backend::Legacy),
            },
            config,
            settings: ctx.settings.clone(),
            conntrack_liberal: None,
            programs: None,
            node: None,
            large_nft_table: LARGE_NFT_TABLE,
            nft_chains_per_commit: ruleset::NFT_CHAINS_PER_COMMIT,
            counters: Counters::default(),
        }
    }

    /// Sets the number of chains above which a full sync on iptables-nft trusts its memory
    /// rather than `iptables-save` ([`LARGE_NFT_TABLE`] by default); for tests and benchmarks.
    pub fn set_large_nft_table(&mut self, chains: usize) {
        self.large_nft_table = chains;
    }

    /// Sets how many chains one transaction declares at most on iptables-nft
    /// ([`ruleset::NFT_CHAINS_PER_COMMIT`] by default); for tests and benchmarks.
    pub fn set_nft_chains_per_commit(&mut self, chains: usize) {
        self.nft_chains_per_commit = chains;
    }

    /// How this plugin's restores on `backend` are cut into transactions.
    fn commits(&self, backend: Backend) -> Commits {
        match backend {
            Backend::Nft => Commits::Chains(self.nft_chains_per_commit),
            Backend::Legacy => Commits::PerTable,
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The back end in use, once chosen.
    pub fn backend(&self) -> Option<Backend> {
        self.backend
    }

    /// What each family's chains hold after the last successful sync.
    pub fn programs(&self) -> Option<&[FamilyProgram]> {
        self.programs.as_deref()
    }

    /// The enabled and the disabled families, in the order syncs apply them: IPv6 first, IPv4
    /// last. Each family is its own restore; applying them in a fixed order means an IPv4 change
    /// that is visible (a health probe, the test lab's IPv4 sync marker) implies the IPv6 half
    /// of the same sync is in place too.
    fn families(&self) -> (Vec<IpFamily>, Vec<IpFamily>) {
        let all = [
            (IpFamily::V6, self.settings.ipv6),
            (IpFamily::V4, self.settings.ipv4),
        ];
        (
            all.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect(),
            all.iter().filter(|(_, on)| !*on).map(|(f, _)| *f).collect(),
        )
    }

    /// The back end's tools, detecting the back end on first use.
    fn tool(&mut self) -> Tool {
        let backend = *self.backend.get_or_insert_with(|| {
            let (choice, nft, legacy) = backend::detect();
            tracing::info!(
                backend = choice.as_str(),
                nft_rules = nft.rules,
                nft_kubelet_hint = nft.kubelet_hint,
                nft_kproxy = nft.kproxy,
                legacy_rules = legacy.rules,
                legacy_kubelet_hint = legacy.kubelet_hint,
                legacy_kproxy = legacy.kproxy,
                "iptables back end detected"
            );
            choice
        });
        Tool::new(backend)
    }

    /// One-time node set-up before the first sync: `route_localnet` for IPv4 localhost node
    /// ports (as upstream), and whether conntrack is liberal.
    fn prepare(&mut self, node: &NodeFacts) -> Result<bool, PluginError> {
        if let Some(liberal) = self.conntrack_liberal {
            return Ok(liberal);
        }
        let ctx = FamilyCtx {
            family: IpFamily::V4,
            settings: &self.settings,
            node,
            conntrack_liberal: false,
        };
        if self.settings.ipv4 && ctx.localhost_node_ports() {
            let path = "/proc/sys/net/ipv4/conf/all/route_localnet";
            std::fs::write(path, "1").map_err(|e| {
                PluginError::kernel(format!(
                    "cannot set {path} = 1 for localhost node ports ({e}); turn \
                     localhost_node_ports off or leave loopback out of node_port_addresses"
                ))
            })?;
        }
        let liberal =
            std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
                .is_ok_and(|v| v.trim() != "0");
        if liberal {
            tracing::info!("nf_conntrack_tcp_be_liberal is set: no DROP rule for invalid packets");
        }
        self.conntrack_liberal = Some(liberal);
        Ok(liberal)
    }

    /// Makes the kernel match `state`; see [`Plugin::sync`].
    pub fn sync_state(
        &mut self,
        state: &ProxyState,
        changes: &ChangeSet,
    ) -> Result<SyncReport, PluginError> {
        let result = self.sync_inner(state, changes);
        match &result {
            Ok(report) => {
                self.counters.syncs += 1;
                self.counters.full_syncs += u64::from(report.full);
                self.counters.objects_written += report.objects_written;
            }
            Err(e) => {
                self.counters.failed_syncs += 1;
                // Each transaction of a restore is atomic, so the kernel holds either the old or
                // the new rules of each; which, the memory cannot tell: start over in full.
                self.programs = None;
                tracing::warn!(error = %e, "iptables sync failed; the next sync will be full");
            }
        }
        result
    }

    fn sync_inner(
        &mut self,
        state: &ProxyState,
        changes: &ChangeSet,
    ) -> Result<SyncReport, PluginError> {
        let tool = self.tool();
        let commits = self.commits(tool.backend());
        let liberal = self.prepare(&state.node)?;
        let (enabled, disabled) = self.families();
        let tree = self.config.dispatch == DispatchMode::Tree;
        let full =
            changes.full || self.programs.is_none() || self.node.as_ref() != Some(&state.node);
        let mut objects = 0;
        let mut restores = 0;

        let previous = self.programs.take();
        let mut programs = Vec::new();
        // Each family's filter part, applied last (see below).
        let mut filters: Vec<(IpFamily, Vec<u8>)> = Vec::new();
        if full {
            for &family in &enabled {
                let ctx = FamilyCtx {
                    family,
                    settings: &self.settings,
                    node: &state.node,
                    conntrack_liberal: liberal,
                };
                let previous = previous
                    .as_ref()
                    .and_then(|p| p.iter().find(|p| p.family == family));
                let held = match previous {
                    Some(prev)
                        if tool.backend() == Backend::Nft
                            && prev.chain_count() > self.large_nft_table =>
                    {
                        large_nft_view(&tool, family, prev)?
                    }
                    _ => tool.save_parsed(family)?,
                };
                let applied = apply_nat(&tool, family, |out| {
                    program::full_sync(&ctx, tree, state, held, commits, out)
                })?;
                restores += applied.restores;
                objects += applied.written.objects;
                filters.push((family, applied.filter));
                programs.push(applied.written.program);
            }
            for &family in &disabled {
                // A family turned off keeps nothing of kproxy's.
                if tool.available(family) {
                    let saved = tool.save_parsed(family)?;
                    if saved.has_kproxy() {
                        tool.restore(family, &ruleset::cleanup_restore(&saved, commits).text)?;
                        restores += 1;
                    }
                }
            }
        } else {
            let changed: Vec<_> = changes.changed.iter().cloned().collect();
            for prev in previous.into_iter().flatten() {
                let family = prev.family;
                let ctx = FamilyCtx {
                    family,
                    settings: &self.settings,
                    node: &state.node,
                    conntrack_liberal: liberal,
                };
                let applied = apply_nat(&tool, family, |out| {
                    program::partial_sync(&ctx, tree, state, &changed, prev, commits, out)
                })?;
                restores += applied.restores;
                objects += applied.written.objects;
                filters.push((family, applied.filter));
                programs.push(applied.written.program);
            }
        }
        // Stale flows go once the nat rules that make them stale are in, and before the filter
        // parts: so a filter change that is visible (a REJECT for a service without endpoints,
        // the test lab's sync marker) means the sync's DNAT and conntrack cleanup are done.
        if self.config.conntrack_cleanup {
            self.clean_conntrack(state, changes, full, &enabled);
        }
        for (family, filter) in filters {
            if !filter.is_empty() {
                let text = String::from_utf8(filter).expect("restore inputs are UTF-8");
                tool.restore(family, &text)?;
                restores += 1;
            }
        }
        if !full && restores == 0 {
            self.counters.noop_syncs += 1;
        }
        self.programs = Some(programs);
        self.counters.restores += restores;
        self.node = Some(state.node.clone());
        tracing::debug!(
            full,
            backend = tool.backend().as_str(),
            restores,
            objects,
            "iptables sync applied"
        );

        let programs = self.programs.as_ref().expect("set on success");
        let services = programs.iter().map(|p| p.ports.len()).max().unwrap_or(0);
        Ok(SyncReport {
            full,
            services: services as u64,
            endpoints: state.endpoint_count() as u64,
            objects_written: objects,
        })
    }

    /// Deletes stale UDP/SCTP conntrack entries after a sync that may have changed a UDP or
    /// SCTP service port, with the implementation the nftables plugin shares. A failure is
    /// logged and counted; it never fails the sync (the rules are in place).
    fn clean_conntrack(
        &mut self,
        state: &ProxyState,
        changes: &ChangeSet,
        full: bool,
        families: &[IpFamily],
    ) {
        let datagram = |p: Protocol| matches!(p, Protocol::Udp | Protocol::Sctp);
        if !full && !changes.changed.iter().any(|k| datagram(k.protocol)) {
            return;
        }
        match conntrack::clean_stale(state, families, &[Protocol::Udp, Protocol::Sctp]) {
            Ok(report) => {
                self.counters.conntrack_deleted += report.deleted;
                if report.deleted > 0 {
                    tracing::info!(
                        deleted = report.deleted,
                        scanned = report.scanned,
                        "deleted stale conntrack entries"
                    );
                }
            }
            Err(e) => {
                self.counters.conntrack_failures += 1;
                tracing::warn!(error = %e, "stale conntrack cleanup failed");
            }
        }
    }

    /// Removes every kproxy chain and every jump into one, in both families and both back
    /// ends (kproxy may have used either), and nothing else.
    pub fn cleanup_chains(&mut self) -> Result<(), PluginError> {
        let mut errors = Vec::new();
        for backend in Backend::ALL {
            let tool = Tool::new(backend);
            for family in [IpFamily::V4, IpFamily::V6] {
                if !tool.available(family) {
                    continue;
                }
                let result = tool.save(family).and_then(|text| {
                    let saved = Saved::parse(&text);
                    if saved.has_kproxy() {
                        tool.restore(
                            family,
                            &ruleset::cleanup_restore(&saved, self.commits(backend)).text,
                        )?;
                    }
                    Ok(())
                });
                if let Err(e) = result {
                    errors.push(e.to_string());
                }
            }
        }
        self.programs = None;
        self.node = None;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PluginError::kernel(errors.join("; ")))
        }
    }
}

/// Above this many kproxy chains, a full sync on iptables-nft does not read the whole table.
///
/// iptables-nft 1.8's `iptables-save` looks chains up by name linearly for every rule, so
/// reading a table of n chains costs O(n²): 9 s for 33,000 chains (10,000 services with node
/// ports), more than ten minutes for 99,000 (30,000 services) on the machine the README's
/// figures come from, where iptables-legacy-save takes 0.2 s. Past this size a full sync takes
/// the last ruleset it wrote as what the kernel holds (see [`large_nft_view`]).
pub const LARGE_NFT_TABLE: usize = 10_000;

/// One family's sync with its nat part applied: the program, the restores run (0 or 1) and
/// the filter part, held for later.
struct NatApplied {
    written: program::Written,
    restores: u64,
    filter: Vec<u8>,
}

/// Runs `sync` for `family`, streaming its nat part into `iptables-restore` and holding its
/// filter part: the sync applies filter parts after the conntrack cleanup, so a visible filter
/// change means the DNAT and the cleanup of the same sync are done.
fn apply_nat(
    tool: &Tool,
    family: IpFamily,
    sync: impl FnOnce(Outputs<'_>) -> program::Written,
) -> Result<NatApplied, PluginError> {
    let mut nat = tool.restore_run(family);
    let mut filter = Vec::new();
    let written = sync(Outputs {
        nat: &mut nat,
        filter: &mut filter,
    });
    let restores = u64::from(nat.finish()?);
    Ok(NatApplied {
        written,
        restores,
        filter,
    })
}

/// What a full sync on a large iptables-nft table takes the kernel to hold: the kproxy chains
/// as last written, and the built-in chains as they really are (read one chain at a time, which
/// is cheap), so jumps are still checked and repaired. A hand edit inside a kproxy chain is then
/// put right when that chain next changes, or by a full sync after a restart or a failure
/// (which read the table).
fn large_nft_view(
    tool: &Tool,
    family: IpFamily,
    written: &FamilyProgram,
) -> Result<Saved, PluginError> {
    let mut saved = written.as_saved();
    for (table, builtins) in [
        (render::Table::Filter, &["INPUT", "FORWARD", "OUTPUT"][..]),
        (
            render::Table::Nat,
            &["PREROUTING", "OUTPUT", "POSTROUTING"][..],
        ),
    ] {
        let held = saved.tables.entry(table.name().to_string()).or_default();
        for builtin in builtins {
            held.others.insert(
                builtin.to_string(),
                tool.list_chain(family, table.name(), builtin)?,
            );
        }
    }
    Ok(saved)
}

/// The whole ruleset of one family for `state`, as a full sync into empty tables writes it
/// (the restore input, read back): for tests, benchmarks and anyone who wants to read what
/// kproxy would program without a kernel.
pub fn desired_ruleset(
    settings: &ProxySettings,
    state: &ProxyState,
    family: IpFamily,
    dispatch: DispatchMode,
    conntrack_liberal: bool,
) -> Ruleset {
    let text = full_restore_input(
        settings,
        state,
        family,
        dispatch,
        conntrack_liberal,
        Saved::default(),
        Commits::PerTable,
    );
    Ruleset::parse(&text.text)
}

/// The restore input a full sync of one family for `state` writes when the kernel holds
/// `held`, in memory: for tests and benchmarks (the plugin streams it).
pub fn full_restore_input(
    settings: &ProxySettings,
    state: &ProxyState,
    family: IpFamily,
    dispatch: DispatchMode,
    conntrack_liberal: bool,
    held: Saved,
    commits: Commits,
) -> ruleset::Restore {
    let ctx = FamilyCtx {
        family,
        settings,
        node: &state.node,
        conntrack_liberal,
    };
    let tree = dispatch == DispatchMode::Tree;
    program::in_memory(|out| program::full_sync(&ctx, tree, state, held, commits, out)).0
}

impl Plugin for IptablesDataplane {
    const NAME: &'static str = "iptables";
    const DESCRIPTION: &'static str =
        "kube-proxy's iptables mode in KPROXY-* chains, streamed iptables-restore per table and family, tree dispatch";

    fn capabilities() -> Capabilities {
        Capabilities::CLUSTER_IP
            | Capabilities::NODE_PORT
            | Capabilities::EXTERNAL_IP
            | Capabilities::LOAD_BALANCER
            | Capabilities::SOURCE_RANGES
            | Capabilities::SESSION_AFFINITY
            | Capabilities::INTERNAL_TRAFFIC_LOCAL
            | Capabilities::EXTERNAL_TRAFFIC_LOCAL
            | Capabilities::TCP
            | Capabilities::UDP
            | Capabilities::SCTP
            | Capabilities::IPV4
            | Capabilities::IPV6
            | Capabilities::INCREMENTAL
    }

    fn validate_config(plugin_config: &str) -> Result<(), PluginError> {
        IptablesConfig::parse(plugin_config).map(|_| ())
    }

    fn new(ctx: &HostContext) -> Result<Self, PluginError> {
        let config = IptablesConfig::parse(ctx.plugin_config.as_str())?;
        if ctx.settings.masquerade_bit > 31 {
            return Err(PluginError::config(format!(
                "masquerade bit {} is outside 0–31",
                ctx.settings.masquerade_bit
            )));
        }
        Ok(IptablesDataplane::build(config, ctx))
    }

    fn sync(&mut self, state: &ProxyState, changes: &ChangeSet) -> Result<SyncReport, PluginError> {
        self.sync_state(state, changes)
    }

    fn cleanup(&mut self) -> Result<(), PluginError> {
        self.cleanup_chains()
    }

    fn stats(&self) -> PluginStats {
        let c = self.counters;
        let counters = [
            ("syncs", c.syncs),
            ("full_syncs", c.full_syncs),
            ("failed_syncs", c.failed_syncs),
            ("noop_syncs", c.noop_syncs),
            ("restores", c.restores),
            ("objects_written", c.objects_written),
            ("conntrack_entries_deleted", c.conntrack_deleted),
            ("conntrack_cleanup_failures", c.conntrack_failures),
        ];
        PluginStats::from_pairs(counters)
    }
}

export_plugin!(IptablesDataplane);
