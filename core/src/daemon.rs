//! `kproxy run`: builds the dataplane, starts the actors, and keeps them running until a signal.
//!
//! Order matters for "bad input loses nothing": the config and the plugin are checked before
//! this is called (see [`crate::cli`]), building the dataplane must not touch the kernel, and the
//! source is set up before any actor starts — so a failure here leaves the kernel as it was.
//! Stopping (SIGTERM, SIGINT) never flushes rules: traffic keeps flowing across a restart and
//! the next process reconciles what it finds with its first, full sync.

use crate::{
    actors::{
        health::{HealthCheckActor, HealthConfig, SystemClock},
        sync::{runner::PluginRunner, SyncActor},
        topology::TopologyActor,
        watcher::WatcherActor,
    },
    config::{Config, SourceKind},
    host,
    metrics::{self, Metrics},
    plugin_host::{Dataplane, LoadedPlugin},
    source::{kubernetes, manifest::ManifestSource, ModelEvent, SourceError},
    topology::{Topology, TopologyConfig},
};
use actix::prelude::*;
use anyhow::Context as _;
use futures::{stream::BoxStream, StreamExt};
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

/// Sets up the source, binds the healthz and metrics addresses, and starts the actors; runs
/// inside the actor system. A port that cannot be bound stops start-up before any sync.
async fn start(config: &Config, dataplane: Dataplane, host_facts: NodeFacts) -> anyhow::Result<()> {
    let node_name = host_facts.name.to_string();
    let source = open_source(config, &node_name).await?;

    let proxy_mode = dataplane.name().to_string();
    let metrics = Arc::new(Metrics::new(&config.ip_families, &proxy_mode));
    let bind = |key: &str, addr: Option<std::net::SocketAddr>| {
        addr.map(|a| metrics::http::bind(a).with_context(|| format!("cannot listen on {key} {a}")))
            .transpose()
    };
    let healthz = bind("healthz_bind_address", config.healthz_bind_address)?;
    if let Some(listener) = bind("metrics_bind_address", config.metrics_bind_address)? {
        // Serves for the life of the process.
        metrics::server::start(listener, metrics.clone(), proxy_mode)?;
    }
    let health = HealthCheckActor::new(
        HealthConfig {
            // Upstream's healthTimeout: twice the sync period.
            timeout: config.sync_period.saturating_mul(2),
            families: config.ip_families.clone(),
            healthz,
            node_port_addresses: config
                .proxy_settings_for_node(&host_facts)
                .node_port_addresses
                .to_vec(),
        },
        Arc::new(SystemClock),
        Some(metrics.clone()),
    )
    .start();

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
    let sync = SyncActor::new(runner, config.min_sync_period, config.sync_period)
        .with_metrics(metrics.clone())
        .on_finished(health.clone().recipient())
        .on_queued(health.clone().recipient())
        .start();
    let topology = TopologyActor::new(
        Topology::new(topology_config),
        sync.clone().recipient(),
        sync.recipient(),
    )
    .with_metrics(metrics)
    .on_node(health.recipient())
    .start();
    WatcherActor::new(source, topology.recipient()).start();

    actix::spawn(stop_on_signal());
    Ok(())
}

async fn open_source(
    config: &Config,
    node_name: &str,
) -> Result<BoxStream<'static, ModelEvent>, SourceError> {
    Ok(match config.source.kind {
        SourceKind::Kubernetes => {
            let client = kubernetes::client_from(config.source.kubeconfig.as_deref()).await?;
            kubernetes::KubeSource::new(client, node_name.to_string()).model_events()
        }
        SourceKind::Manifests => {
            ManifestSource::open(config.source.manifest_dir.clone(), node_name.to_string())?
                .events()
                .map(ModelEvent::from)
                .boxed()
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
