//! `kproxy run`: builds the dataplane, starts the actors, and keeps them running until a signal.
//!
//! Order matters for "bad input loses nothing": the config and the plugin are checked before
//! this is called (see [`crate::cli`]), building the dataplane must not touch the kernel, and the
//! source is set up before any actor starts — so a failure here leaves the kernel as it was.
//! Stopping (SIGTERM, SIGINT) never flushes rules: traffic keeps flowing across a restart and
//! the next process reconciles what it finds with its first, full sync.

use crate::{
    actors::{
        sync::{runner::PluginRunner, SyncActor},
        topology::TopologyActor,
        watcher::WatcherActor,
    },
    config::{Config, SourceKind},
    host,
    plugin_host::{Dataplane, LoadedPlugin},
    source::{kubernetes, manifest::ManifestSource, SourceError, SourceEvent},
    topology::{Topology, TopologyConfig},
};
use actix::prelude::*;
use anyhow::Context as _;
use futures::stream::BoxStream;
use kproxy_plugin_api::{HostContext, NodeFacts};
use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

/// Runs the daemon with a validated configuration and a loaded, config-checked plugin until it
/// is told to stop. Errors from setting up the object source are [`SourceError`]s, which the
/// command line treats as configuration errors (exit code 2).
pub fn run(config: Config, plugin: LoadedPlugin) -> anyhow::Result<()> {
    let node_name = config.node_name();
    let host_facts = NodeFacts {
        name: node_name.as_str().into(),
        addresses: host::local_addresses().into(),
        ..Default::default()
    };
    let ctx = HostContext {
        plugin_config: config.plugin_section_toml().into(),
        settings: config.proxy_settings_for_node(&host_facts),
        node: host_facts.clone(),
    };
    let dataplane = plugin
        .build(&ctx)
        .map_err(|e| anyhow::anyhow!("cannot start dataplane `{}`: {e}", plugin.name()))?;
    tracing::info!(
        node = %node_name,
        dataplane = plugin.name(),
        plugin = %plugin.path.display(),
        version = %plugin.info.version,
        "starting kproxy"
    );

    let system = System::new();
    system.block_on(start(&config, dataplane, host_facts))?;
    let code = system.run_with_code().context("the actor system failed")?;
    if code != 0 {
        anyhow::bail!("kproxy stopped after a fatal error (exit code {code})");
    }
    tracing::info!("stopped; rules stay in place for the next start");
    Ok(())
}

/// Sets up the source and starts the actors; runs inside the actor system.
async fn start(config: &Config, dataplane: Dataplane, host_facts: NodeFacts) -> anyhow::Result<()> {
    let node_name = host_facts.name.to_string();
    let source = open_source(config, &node_name).await?;

    let mut topology_config = TopologyConfig::new(
        &node_name,
        config.proxy_settings().ipv4,
        config.proxy_settings().ipv6,
    );
    topology_config.host_facts = host_facts;
    topology_config.ignore_trigger_times_before = Some(SystemTime::now());

    // The dataplane moves onto the sync thread; the factory runs once, on that thread.
    let dataplane = Arc::new(Mutex::new(Some(dataplane)));
    let runner = SyncArbiter::start(1, move || {
        let dp = dataplane.lock().unwrap_or_else(|p| p.into_inner()).take();
        PluginRunner::new(dp.expect("the sync thread is started once"))
    });
    let sync = SyncActor::new(runner, config.min_sync_period, config.sync_period).start();
    let topology = TopologyActor::new(
        Topology::new(topology_config),
        sync.clone().recipient(),
        sync.recipient(),
    )
    .start();
    WatcherActor::new(source, topology.recipient()).start();

    actix::spawn(stop_on_signal());
    Ok(())
}

async fn open_source(
    config: &Config,
    node_name: &str,
) -> Result<BoxStream<'static, SourceEvent>, SourceError> {
    Ok(match config.source.kind {
        SourceKind::Kubernetes => {
            let client = kubernetes::client_from(config.source.kubeconfig.as_deref()).await?;
            kubernetes::KubeSource::new(client, node_name.to_string()).events()
        }
        SourceKind::Manifests => {
            ManifestSource::open(config.source.manifest_dir.clone(), node_name.to_string())?
                .events()
        }
    })
}

/// Stops the actor system on SIGTERM or SIGINT; rules are left in place.
async fn stop_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
    }
    System::current().stop();
}
