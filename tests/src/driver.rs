//! The packet-flow table's driver for the real daemon: `kproxy run` inside the lab's node
//! namespace, reading a manifest folder, with a real dataplane plugin.
//!
//! [`DaemonDriver::apply`] writes the case's objects as one manifest file together with a sync
//! marker and waits until the marker is rejected ([`sync_marker`]), so it works for every
//! dataplane without knowing how it stores rules.

use crate::{
    daemon::{Daemon, DaemonSpec},
    flows::{ConfigOverrides, ServiceDriver},
    lab::{
        plan::{CLUSTER_CIDR_V4, CLUSTER_CIDR_V6, NODE_NAME, SERVICE_CIDR_V4, SERVICE_CIDR_V6},
        sync_marker, Lab, Place,
    },
};
use anyhow::Context as _;
use kproxy_plugin_api::Capabilities;
use serde_json::Value;
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};
use tempfile::TempDir;

/// How long a sync may take before `apply` gives up.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the daemon in a lab's node namespace and feeds it manifests; see the module docs.
pub struct DaemonDriver<'lab> {
    lab: &'lab Lab,
    dataplane: String,
    capabilities: Capabilities,
    plugin_section: String,
    manifests: TempDir,
    overrides: ConfigOverrides,
    daemon: Option<Daemon>,
    applies: u32,
}

impl<'lab> DaemonDriver<'lab> {
    /// A driver for `dataplane` (its plugin is installed from the build), with the plugin's own
    /// config section (TOML body, may be empty). The daemon starts on the first `configure` or
    /// `apply`.
    pub fn new(
        lab: &'lab Lab,
        dataplane: &str,
        capabilities: Capabilities,
        plugin_section: &str,
    ) -> Self {
        DaemonDriver {
            lab,
            dataplane: dataplane.to_string(),
            capabilities,
            plugin_section: plugin_section.to_string(),
            manifests: tempfile::Builder::new()
                .prefix("kproxy-manifests-")
                .tempdir()
                .unwrap(),
            overrides: ConfigOverrides::default(),
            daemon: None,
            applies: 0,
        }
    }

    /// The running daemon's log so far (empty before it starts).
    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// The manifest folder the daemon reads.
    pub fn manifest_dir(&self) -> PathBuf {
        self.manifests.path().to_path_buf()
    }

    fn config(&self) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let npa: Vec<String> = self
            .overrides
            .node_port_addresses
            .iter()
            .map(|c| c.to_string())
            .collect();
        format!(
            r#"hostname_override = "{NODE_NAME}"
cluster_cidrs = [{}]
service_cidrs = [{}]
ip_families = ["ipv4", "ipv6"]
node_port_addresses = [{}]
min_sync_period = "0s"
sync_period = "60s"
healthz_bind_address = "0.0.0.0:10256"
metrics_bind_address = "127.0.0.1:10249"
dataplane = "{}"
[masquerade]
all = {}
[source]
kind = "manifests"
manifest_dir = "{}"
[dataplanes.{}]
{}
"#,
            list(&[CLUSTER_CIDR_V4.into(), CLUSTER_CIDR_V6.into()]),
            list(&[SERVICE_CIDR_V4.into(), SERVICE_CIDR_V6.into()]),
            list(&npa),
            self.dataplane,
            self.overrides.masquerade_all,
            self.manifests.path().display(),
            self.dataplane,
            self.plugin_section,
        )
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(d) = &mut self.daemon {
            anyhow::ensure!(d.is_running(), "kproxy exited; its log:\n{}", d.log());
            return Ok(());
        }
        let netns = self.lab.ns(&Place::Node)?.to_string();
        self.daemon = Some(Daemon::start(DaemonSpec {
            plugins: &[self.dataplane.as_str()],
            config: self.config(),
            env: vec![("KPROXY_LOGGING__LEVEL".into(), "info,kproxy=debug".into())],
            netns: Some(netns),
        }));
        Ok(())
    }

    fn wait_for_marker(&mut self, n: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        while !sync_marker::is_programmed(self.lab, n) {
            if let Some(d) = &mut self.daemon {
                anyhow::ensure!(d.is_running(), "kproxy exited; its log:\n{}", d.log());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the daemon did not program apply #{n} within {SYNC_TIMEOUT:?} (marker {} not \
                 rejected); log:\n{}",
                sync_marker::marker_ip(n),
                self.log()
            );
        }
        Ok(())
    }
}

impl ServiceDriver for DaemonDriver<'_> {
    fn dataplane(&self) -> &str {
        &self.dataplane
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn serves_health_checks(&self) -> bool {
        true
    }

    fn configure(&mut self, config: &ConfigOverrides) -> anyhow::Result<()> {
        if *config != self.overrides || self.daemon.is_none() {
            // Settings are read at start-up (as kube-proxy's): restart with the new ones. The
            // rules stay in place across the restart and the new process reconciles them.
            if let Some(mut d) = self.daemon.take() {
                d.stop();
            }
            self.overrides = config.clone();
        }
        self.ensure_running()
    }

    fn apply(&mut self, objects: &[Value]) -> anyhow::Result<()> {
        self.ensure_running()?;
        self.applies += 1;
        let n = self.applies;
        let mut objects = objects.to_vec();
        objects.push(sync_marker::marker_service("kproxy-test", n));
        sync_marker::write_manifest(
            self.manifests.path(),
            "objects.yaml",
            "written by the packet-flow driver",
            &objects,
        )
        .context("write manifest")?;
        self.wait_for_marker(n)
    }
}
