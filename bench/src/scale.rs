//! Scenarios 1–3 at one size: the full sync (against the pre-rendered reference, into an empty
//! kernel and over the same rules), one change at scale, and the daemon's peak memory.
//!
//! 1. The test API server (inside the node namespace) holds the cluster; the daemon starts,
//!    lists it, and its first sync is full: its duration, as the daemon logs it, is the time
//!    from the resolved state being handed to the dataplane to the kernel having it.
//! 2. With the daemon running, one EndpointSlice is changed at a time through the API server:
//!    an endpoint added, that endpoint removed, an endpoint made not-ready, and ready again.
//!    Latency runs from just before the API server stores the change to the arrival of the
//!    nf_tables commit that carries it ([`crate::nfmon`]): watch event, kube-rs, Topology,
//!    Sync, the plugin and the kernel's commit are all inside it.
//! 3. The daemon's VmHWM after all that.
//!
//! Then the kernel's rules are saved and the daemon stops (rules stay); a second daemon starts
//! over the rules left in place, and its first full sync is the replacing figure; then the
//! reference tool loads the saved rules into an empty kernel and over themselves.

use crate::{
    cluster::{self, Ep, Shape},
    daemon::Daemon,
    dataplane::Dataplane,
    nfmon::{CommitMonitor, CHANGE_TIMEOUT},
};
use anyhow::Context as _;
use kproxy_lab::{Lab, Place};
use kproxy_tests::apiserver::{Options, TestApiServer};
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// The kinds of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    /// An endpoint added to a service.
    Added,
    /// That endpoint removed again.
    Removed,
    /// An endpoint's `ready` (and `serving`) set to false.
    NotReady,
    /// The same endpoint ready again.
    Ready,
}

impl ChangeKind {
    /// Every kind, in the order a round makes them.
    pub const ALL: [ChangeKind; 4] = [
        ChangeKind::Added,
        ChangeKind::Removed,
        ChangeKind::NotReady,
        ChangeKind::Ready,
    ];

    /// How tables and CSV name it.
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::NotReady => "not-ready",
            ChangeKind::Ready => "ready-again",
        }
    }
}

/// What one size measured.
#[derive(Debug, Clone)]
pub struct ScaleResult {
    /// The cluster.
    pub shape: Shape,
    /// kproxy's full sync into an empty kernel.
    pub kproxy_fresh: Duration,
    /// The reference tool loading the same rules into an empty kernel.
    pub reference_fresh: Duration,
    /// kproxy's full sync over the same rules (a restart).
    pub kproxy_replace: Duration,
    /// The reference tool replacing the same rules in one transaction.
    pub reference_replace: Duration,
    /// Size of the saved rules (bytes), for scale.
    pub dump_bytes: usize,
    /// One sample per change that reached the kernel.
    pub changes: Vec<(ChangeKind, Duration)>,
    /// Changes whose commit was not seen within the timeout.
    pub lost: usize,
    /// Commits seen that were not the change waited for.
    pub other_commits: usize,
    /// The kernel's own time for the smallest commit of the kind a change makes (for nftables
    /// one slot-map element, for iptables one chain with one jump), with the same rules in
    /// place: the floor under a change's latency.
    pub commit_floor: Vec<Duration>,
    /// The daemon's peak resident memory, KiB.
    pub vm_hwm_kib: u64,
    /// Its resident memory at the end, KiB.
    pub vm_rss_kib: u64,
}

/// How long one full sync may take: generous, since iptables-nft 1.8's `iptables-restore
/// --noflush` and `iptables-save` can be quadratic in chains (the plugin cuts its restores
/// into transactions so that they are not; a table written in one transaction still reads
/// slowly).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// Starts the test API server inside the node namespace (so the daemon reaches it on its own
/// loopback) and loads `objects` into it.
pub fn api_server_with(
    lab: &Lab,
    objects: impl Iterator<Item = serde_json::Value>,
) -> anyhow::Result<TestApiServer> {
    let api = lab.run_in(&Place::Node, || {
        TestApiServer::start_with(Options {
            bookmark_interval: None,
            history_limit: 1_000_000,
            ..Default::default()
        })
    })??;
    for obj in objects {
        api.create(&obj)?;
    }
    Ok(api)
}

/// Runs scenarios 1–3 for `dp` at `shape` with `rounds` change rounds (each round makes one
/// change of every [`ChangeKind`]).
pub fn run(
    lab: &Lab,
    dp: &dyn Dataplane,
    shape: Shape,
    rounds: usize,
    scratch: &Path,
) -> anyhow::Result<ScaleResult> {
    let load_started = Instant::now();
    let api = api_server_with(lab, cluster::objects(shape))?;
    let kubeconfig = scratch.join("kubeconfig");
    api.kubeconfig(&kubeconfig)?;
    eprintln!(
        "  {}: {} objects loaded into the test API server in {:.1} s",
        shape.label(),
        shape.services * 2,
        load_started.elapsed().as_secs_f64()
    );
    dp.clear(lab)?;

    let sync_timeout = SYNC_TIMEOUT;
    let mut daemon = Daemon::start(lab, dp.name(), &dp.plugin_section(), &kubeconfig)?;
    let kproxy_fresh = daemon.wait_full_sync(1, sync_timeout)?.duration;
    eprintln!(
        "  full sync into an empty kernel: {:.0} ms",
        kproxy_fresh.as_secs_f64() * 1e3
    );

    let monitor = CommitMonitor::open(lab, &Place::Node)?;
    let mut changes = Vec::new();
    let mut lost = 0;
    let mut other_commits = 0;
    let mut measure = |kind: ChangeKind, obj: serde_json::Value, ip| -> anyhow::Result<()> {
        monitor.drain();
        let t0 = Instant::now();
        api.apply(&obj)?;
        match monitor.wait_for(t0 + CHANGE_TIMEOUT, |g| dp.is_change_commit(g, ip)) {
            Some((g, others)) => {
                changes.push((kind, g.at.saturating_duration_since(t0)));
                other_commits += others;
            }
            None => lost += 1,
        }
        Ok(())
    };
    // Every round adds a new address (`added_ip(round)`), removed again in the same round.
    for round in 0..rounds {
        let i = (round * 7919 + 13) % shape.services;
        let name = cluster::service_name(i);
        let base = cluster::endpoints(shape, i);
        let new_ip = cluster::added_ip(round);
        let mut more = base.clone();
        more.push(Ep::remote(new_ip));
        measure(ChangeKind::Added, cluster::slice(&name, &more), new_ip)?;
        measure(ChangeKind::Removed, cluster::slice(&name, &base), new_ip)?;
        let mut unready = base.clone();
        unready[0].ready = false;
        measure(
            ChangeKind::NotReady,
            cluster::slice(&name, &unready),
            base[0].ip,
        )?;
        measure(ChangeKind::Ready, cluster::slice(&name, &base), base[0].ip)?;
    }
    drop(monitor);
    let (vm_hwm_kib, vm_rss_kib) = daemon.memory_kib()?;
    let commit_floor = dp.commit_floor(lab, 50)?.unwrap_or_default();

    let dump = dp.dump(lab)?;
    let dump_path = scratch.join(format!("{}-{}.rules", dp.name(), shape.slug()));
    std::fs::write(&dump_path, &dump)?;
    daemon.stop();
    drop(daemon);

    // The restart comes before the reference loads, over the rules kproxy itself left: that
    // is what a restarted kproxy finds (and iptables-nft-save reads a table that kproxy wrote
    // much faster than one the reference wrote in one transaction).
    let mut daemon = Daemon::start(lab, dp.name(), &dp.plugin_section(), &kubeconfig)?;
    let kproxy_replace = daemon.wait_full_sync(1, sync_timeout)?.duration;
    daemon.stop();
    drop(daemon);

    let reference_fresh = dp
        .apply_reference(lab, &dump_path, false)
        .context("reference load into an empty kernel")?;
    let reference_replace = dp
        .apply_reference(lab, &dump_path, true)
        .context("reference load over the same rules")?;
    dp.clear(lab)?;
    let _ = std::fs::remove_file(&dump_path);

    Ok(ScaleResult {
        shape,
        kproxy_fresh,
        reference_fresh,
        kproxy_replace,
        reference_replace,
        dump_bytes: dump.len(),
        changes,
        lost,
        other_commits,
        commit_floor,
        vm_hwm_kib,
        vm_rss_kib,
    })
}
