//! kproxy's nftables dataplane: one table per family (`ip kproxy`, `ip6 kproxy`) with verdict
//! maps keyed by address, protocol and port, so the cost of a lookup does not grow with the
//! number of services; one chain per service port that picks an endpoint evenly at random and
//! DNATs; every sync applied as one nf_tables transaction (a netlink batch, or `nft -f`).
//!
//! Where to start:
//! - [`render`]: the pure translation of a service port into chains, sets and map elements
//!   (upstream kube-proxy's nftables layout and semantics);
//! - [`plan`]: full and incremental scripts, and the memory of what the table holds;
//! - [`netlink`]: the writer that sends a transaction to the kernel as one netlink batch;
//! - [`nft`]: the thin layer that runs `nft` (the text writer, affinity snapshots, cleanup);
//! - [`NftablesDataplane`]: the plugin that ties them together.
//!
//! The plugin's README describes the table and how to inspect it.

pub mod config;
pub mod index;
pub mod names;
pub mod netlink;
pub mod nft;
pub mod plan;
pub mod render;
pub mod rule;
pub mod sample;
pub mod script;
pub mod slots;

#[cfg(test)]
mod tests;

use config::{NftConfig, Writer};
use kproxy_dataplane_common::conntrack;
use kproxy_plugin_api::{
    export_plugin, Capabilities, ChangeSet, HostContext, IpFamily, NodeFacts, Plugin, PluginError,
    PluginStats, Protocol, ProxySettings, ProxyState, SyncReport,
};
use nft::Nft;
use plan::{AffinitySnapshot, FamilyProgram};
use render::FamilyCtx;
use script::Sink as _;

/// Counters reported through [`Plugin::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Successful syncs.
    pub syncs: u64,
    /// Successful full syncs.
    pub full_syncs: u64,
    /// Failed syncs.
    pub failed_syncs: u64,
    /// Incremental syncs that found nothing to change and did not call `nft`.
    pub noop_syncs: u64,
    /// Chains, rules, sets and elements written by successful syncs.
    pub objects_written: u64,
    /// Stale conntrack entries deleted.
    pub conntrack_deleted: u64,
    /// Conntrack cleanups that failed (logged; the sync itself still succeeded).
    pub conntrack_failures: u64,
}

/// The nftables dataplane.
pub struct NftablesDataplane {
    config: NftConfig,
    settings: ProxySettings,
    nft: Nft,
    /// What each enabled family's table holds, after the last successful sync; `None` before
    /// the first one and after a failure (the next sync is then full).
    programs: Option<Vec<FamilyProgram>>,
    /// The node facts the programs were rendered with (pod CIDRs and addresses appear in rules).
    node: Option<NodeFacts>,
    /// The nf_tables netlink socket (opened at the first netlink sync, in the namespace of the
    /// thread that syncs).
    socket: Option<netlink::NetlinkSocket>,
    /// Numbers the anonymous sets this process has written, so their names never repeat.
    anon_names: u64,
    counters: Counters,
}

impl NftablesDataplane {
    /// Builds the dataplane from its config section and the host's context; touches nothing.
    pub fn build(config: NftConfig, ctx: &HostContext) -> Self {
        NftablesDataplane {
            nft: Nft::new(&config.nft_path),
            config,
            settings: ctx.settings.clone(),
            programs: None,
            node: None,
            socket: None,
            anon_names: 0,
            counters: Counters::default(),
        }
    }

    /// The families this node handles.
    fn families(&self) -> (Vec<IpFamily>, Vec<IpFamily>) {
        let all = [
            (IpFamily::V4, self.settings.ipv4),
            (IpFamily::V6, self.settings.ipv6),
        ];
        (
            all.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect(),
            all.iter().filter(|(_, on)| !*on).map(|(f, _)| *f).collect(),
        )
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
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
                // The kernel still has the previous rules (the transaction was atomic), but the
                // memory of what it holds may be ahead of it: start over with a full sync.
                self.programs = None;
                tracing::warn!(error = %e, "nftables sync failed; the next sync will be full");
            }
        }
        result
    }

    fn sync_inner(
        &mut self,
        state: &ProxyState,
        changes: &ChangeSet,
    ) -> Result<SyncReport, PluginError> {
        let (enabled, disabled) = self.families();
        let table = self.config.table.as_str();
        let ctxs: Vec<FamilyCtx<'_>> = enabled
            .iter()
            .map(|&family| FamilyCtx {
                family,
                table,
                settings: &self.settings,
                node: &state.node,
            })
            .collect();
        let full =
            changes.full || self.programs.is_none() || self.node.as_ref() != Some(&state.node);

        let (script, objects) = if full {
            let has_affinity = state.services.iter().any(|s| s.session_affinity.client_ip);
            let snapshot = if has_affinity {
                self.nft
                    .affinity_snapshot(&enabled, table)
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "could not read ClientIP affinity entries; clients may switch endpoints once");
                        AffinitySnapshot::default()
                    })
            } else {
                AffinitySnapshot::default()
            };
            let disabled: Vec<(IpFamily, &str)> = disabled.iter().map(|f| (*f, table)).collect();
            match self.config.writer {
                Writer::Netlink => {
                    let socket = open_socket(&mut self.socket)?;
                    let mut batch = netlink::Batch::new(&mut self.anon_names, false);
                    let programs = plan::plan_full(&ctxs, &disabled, state, &snapshot, &mut batch);
                    let (bytes, objects) = (batch.len(), batch.objects());
                    socket.commit(batch)?;
                    self.programs = Some(programs);
                    (bytes, objects)
                }
                Writer::Nft => {
                    let plan = plan::plan_full_script(&ctxs, &disabled, state, &snapshot);
                    self.nft.apply(&plan.script)?;
                    self.programs = Some(plan.programs);
                    (plan.script.len(), plan.objects)
                }
            }
        } else {
            let programs = self.programs.as_mut().expect("checked above");
            let mut objects = 0;
            match self.config.writer {
                Writer::Netlink => {
                    let socket = open_socket(&mut self.socket)?;
                    let mut batch = netlink::Batch::new(&mut self.anon_names, true);
                    for (ctx, program) in ctxs.iter().zip(programs.iter_mut()) {
                        objects += plan::plan_incremental(
                            ctx,
                            state,
                            &changes.changed,
                            program,
                            &mut batch,
                        );
                    }
                    let bytes = batch.len();
                    if batch.is_empty() {
                        self.counters.noop_syncs += 1;
                    } else {
                        socket.commit(batch)?;
                    }
                    (bytes, objects)
                }
                Writer::Nft => {
                    let mut script = String::new();
                    let mut sink = script::Script::empty(&mut script);
                    for (ctx, program) in ctxs.iter().zip(programs.iter_mut()) {
                        objects += plan::plan_incremental(
                            ctx,
                            state,
                            &changes.changed,
                            program,
                            &mut sink,
                        );
                    }
                    if script.is_empty() {
                        self.counters.noop_syncs += 1;
                    } else {
                        self.nft.apply(&script)?;
                    }
                    (script.len(), objects)
                }
            }
        };
        self.node = Some(state.node.clone());
        tracing::debug!(full, bytes = script, objects, "nftables sync applied");

        if self.config.conntrack_cleanup {
            self.clean_conntrack(state, changes, full, &enabled);
        }

        let programs = self.programs.as_ref().expect("set on success");
        let services = programs.iter().map(|p| p.ports.len()).max().unwrap_or(0);
        Ok(SyncReport {
            full,
            services: services as u64,
            endpoints: state.endpoint_count() as u64,
            objects_written: objects,
        })
    }

    /// Deletes stale UDP/SCTP conntrack entries when a UDP or SCTP service port may have
    /// changed. A failure is logged and counted, never fails the sync: the rules are in place.
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

    /// Removes kproxy's tables in both families, and nothing else.
    pub fn cleanup_tables(&mut self) -> Result<(), PluginError> {
        self.nft.delete_tables(&self.config.table)?;
        self.programs = None;
        self.node = None;
        Ok(())
    }
}

/// The open netlink socket, opened on first use.
fn open_socket(
    slot: &mut Option<netlink::NetlinkSocket>,
) -> Result<&mut netlink::NetlinkSocket, PluginError> {
    if slot.is_none() {
        *slot = Some(netlink::NetlinkSocket::open()?);
    }
    Ok(slot.as_mut().expect("just opened"))
}

impl Plugin for NftablesDataplane {
    const NAME: &'static str = "nftables";
    const DESCRIPTION: &'static str =
        "nftables table per family with verdict-map dispatch, one nft transaction per sync";

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
        NftConfig::parse(plugin_config).map(|_| ())
    }

    fn new(ctx: &HostContext) -> Result<Self, PluginError> {
        let config = NftConfig::parse(ctx.plugin_config.as_str())?;
        if ctx.settings.masquerade_bit > 31 {
            return Err(PluginError::config(format!(
                "masquerade bit {} is outside 0–31",
                ctx.settings.masquerade_bit
            )));
        }
        Ok(NftablesDataplane::build(config, ctx))
    }

    fn sync(&mut self, state: &ProxyState, changes: &ChangeSet) -> Result<SyncReport, PluginError> {
        self.sync_state(state, changes)
    }

    fn cleanup(&mut self) -> Result<(), PluginError> {
        self.cleanup_tables()
    }

    fn stats(&self) -> PluginStats {
        let c = self.counters;
        let counters = [
            ("syncs", c.syncs),
            ("full_syncs", c.full_syncs),
            ("failed_syncs", c.failed_syncs),
            ("noop_syncs", c.noop_syncs),
            ("objects_written", c.objects_written),
            ("conntrack_entries_deleted", c.conntrack_deleted),
            ("conntrack_cleanup_failures", c.conntrack_failures),
        ];
        PluginStats::from_pairs(counters)
    }
}

export_plugin!(NftablesDataplane);
