//! kproxy's metrics: one prometheus-client registry holding kube-proxy's metrics (same names,
//! types, labels and buckets wherever the meaning is the same, so existing dashboards and
//! alerts keep working) and kproxy's own, plus the server that exposes them.
//!
//! - [`Metrics`]: the registry and typed handles. Actors hold an `Arc<Metrics>` and update it
//!   directly: the registry is the one shared mutable thing in the daemon (see DESIGN.md).
//! - [`changes`]: which services have changes not yet synced (the `*_changes_pending` gauges).
//! - [`server`]: `/metrics`, `/proxyMode` and `/healthz` on the metrics address.
//! - [`http`]: the small HTTP/1.1 serving loop every kproxy endpoint (metrics, healthz,
//!   health-check node ports) shares.
//! - [`text`]: the Prometheus text format (0.0.4) written from the OpenMetrics encoder.
//!
//! Upstream labels `ip_family` on its per-proxier metrics. kproxy programs both families in one
//! sync, so each sync is recorded once per configured family — exactly what upstream's
//! dual-stack meta-proxier reports, where each family's proxier syncs once.

pub mod changes;
pub mod http;
pub mod server;
pub mod text;

use crate::actors::sync::runner::SyncOutcome;
use kproxy_plugin_api::{ErrorCode, IpFamily};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use std::{
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::SystemTime,
};

/// `ip_family` label, valued as upstream (`IPv4`, `IPv6`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

/// `ip_family` and `traffic_policy` (`internal` / `external`) labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
    /// `internal` or `external`.
    pub traffic_policy: String,
}

/// `code` label (an HTTP status or a plugin error code).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The code.
    pub code: String,
}

/// `kind` label (an object kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `Service`, `EndpointSlice` or `Node`.
    pub kind: String,
}

/// The upstream name of a family, as used in `ip_family` labels.
pub fn family_name(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// Every metric kproxy exports, registered in one registry. See the module docs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: Vec<IpFamily>,
    sync_duration: Family<FamilyLabel, Histogram>,
    sync_full_duration: Family<FamilyLabel, Histogram>,
    sync_partial_duration: Family<FamilyLabel, Histogram>,
    last_sync: Family<FamilyLabel, F64Gauge>,
    last_queued: Family<FamilyLabel, F64Gauge>,
    network_programming: Family<FamilyLabel, Histogram>,
    service_changes: Counter,
    service_changes_pending: Gauge,
    endpoint_changes: Counter,
    endpoint_changes_pending: Gauge,
    no_local_endpoints: Family<PolicyLabel, Gauge>,
    healthz: Family<CodeLabel, Counter>,
    livez: Family<CodeLabel, Counter>,
    syncs: Counter,
    sync_failures: Counter,
    plugin_errors: Family<CodeLabel, Counter>,
    objects_skipped: Family<KindLabel, Counter>,
    programmed_services: Gauge,
    programmed_endpoints: Gauge,
    plugin_stats: Arc<PluginStatsCollector>,
}

fn sync_buckets() -> Histogram {
    // Upstream: ExponentialBuckets(0.001, 2, 15).
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn network_programming_buckets() -> Histogram {
    // Upstream: merge(LinearBuckets(0.25, 0.25, 2), LinearBuckets(1, 1, 59),
    // LinearBuckets(60, 5, 12), LinearBuckets(120, 30, 7)); merge starts with a 0 bucket.
    let mut b = vec![0.0, 0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    Histogram::new(b)
}

fn seconds_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    /// A registry for a node serving `families` (the `ip_family` label values it reports).
    pub fn new(families: &[IpFamily], plugin: &str) -> Metrics {
        let mut registry = Registry::default();
        let sync_duration = Family::<FamilyLabel, Histogram>::new_with_constructor(
            sync_buckets as fn() -> Histogram,
        );
        let sync_full_duration = Family::<FamilyLabel, Histogram>::new_with_constructor(
            sync_buckets as fn() -> Histogram,
        );
        let sync_partial_duration = Family::<FamilyLabel, Histogram>::new_with_constructor(
            sync_buckets as fn() -> Histogram,
        );
        let network_programming = Family::<FamilyLabel, Histogram>::new_with_constructor(
            network_programming_buckets as fn() -> Histogram,
        );
        let m = Metrics {
            families: families.to_vec(),
            sync_duration,
            sync_full_duration,
            sync_partial_duration,
            last_sync: Family::default(),
            last_queued: Family::default(),
            network_programming,
            service_changes: Counter::default(),
            service_changes_pending: Gauge::default(),
            endpoint_changes: Counter::default(),
            endpoint_changes_pending: Gauge::default(),
            no_local_endpoints: Family::default(),
            healthz: Family::default(),
            livez: Family::default(),
            syncs: Counter::default(),
            sync_failures: Counter::default(),
            plugin_errors: Family::default(),
            objects_skipped: Family::default(),
            programmed_services: Gauge::default(),
            programmed_endpoints: Gauge::default(),
            plugin_stats: Arc::new(PluginStatsCollector {
                plugin: plugin.to_string(),
                values: Mutex::new(Vec::new()),
            }),
            registry: Registry::default(),
        };
        // kube-proxy's names (prometheus-client appends `_total` to counters).
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.service_changes_pending.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.endpoint_changes_pending.clone(),
        );
        // A gauge despite the name, as upstream.
        registry.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        registry.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.healthz.clone(),
        );
        registry.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.livez.clone(),
        );
        // kproxy's own.
        registry.register(
            "kproxy_syncs",
            "Syncs run by the dataplane plugin, successful or not",
            m.syncs.clone(),
        );
        registry.register(
            "kproxy_sync_failures",
            "Syncs the dataplane plugin failed (the previous rules stayed in place)",
            m.sync_failures.clone(),
        );
        registry.register(
            "kproxy_plugin_errors",
            "Errors returned by the dataplane plugin, by error code",
            m.plugin_errors.clone(),
        );
        registry.register(
            "kproxy_objects_skipped",
            "API objects skipped as invalid, by kind",
            m.objects_skipped.clone(),
        );
        registry.register(
            "kproxy_programmed_services",
            "Service ports the plugin reported programmed after the last successful sync",
            m.programmed_services.clone(),
        );
        registry.register(
            "kproxy_programmed_endpoints",
            "Endpoints the plugin reported programmed after the last successful sync",
            m.programmed_endpoints.clone(),
        );
        registry.register_collector(Box::new(m.plugin_stats.clone()));

        // Series that exist from the start, so dashboards and alerts see zeros, not gaps.
        for f in families {
            let l = m.family(*f);
            let _ = m.sync_duration.get_or_create(&l);
            let _ = m.sync_full_duration.get_or_create(&l);
            let _ = m.sync_partial_duration.get_or_create(&l);
            let _ = m.network_programming.get_or_create(&l);
            for policy in ["internal", "external"] {
                let _ = m.no_local_endpoints.get_or_create(&PolicyLabel {
                    ip_family: l.ip_family.clone(),
                    traffic_policy: policy.into(),
                });
            }
        }
        for code in ["200", "503"] {
            let _ = m.healthz.get_or_create(&code_label(code));
            let _ = m.livez.get_or_create(&code_label(code));
        }
        for code in [
            ErrorCode::Config,
            ErrorCode::Kernel,
            ErrorCode::Unsupported,
            ErrorCode::Panic,
            ErrorCode::Internal,
        ] {
            let _ = m.plugin_errors.get_or_create(&code_label(code.as_str()));
        }
        for kind in ["Service", "EndpointSlice", "Node"] {
            let _ = m
                .objects_skipped
                .get_or_create(&KindLabel { kind: kind.into() });
        }
        Metrics { registry, ..m }
    }

    fn family(&self, f: IpFamily) -> FamilyLabel {
        FamilyLabel {
            ip_family: family_name(f).into(),
        }
    }

    /// Records a finished sync: its duration (all, full or partial), and on success the last
    /// sync time, the network-programming latency of the slice changes it applied, what the
    /// plugin programmed, the services with a Local policy and no local endpoint, and the
    /// plugin's counters; on failure the failure and the plugin's error code.
    pub fn sync_finished(&self, o: &SyncOutcome) {
        self.syncs.inc();
        let secs = o.duration.as_secs_f64();
        for f in &self.families {
            let l = self.family(*f);
            self.sync_duration.get_or_create(&l).observe(secs);
            let by_kind = if o.full {
                &self.sync_full_duration
            } else {
                &self.sync_partial_duration
            };
            by_kind.get_or_create(&l).observe(secs);
        }
        match &o.result {
            Ok(report) => {
                let at = seconds_since_epoch(o.finished_at);
                for f in &self.families {
                    let l = self.family(*f);
                    self.last_sync.get_or_create(&l).set(at);
                    for t in &o.trigger_times {
                        if let Ok(latency) = o.finished_at.duration_since(*t) {
                            self.network_programming
                                .get_or_create(&l)
                                .observe(latency.as_secs_f64());
                        }
                    }
                }
                self.programmed_services
                    .set(i64::try_from(report.services).unwrap_or(i64::MAX));
                self.programmed_endpoints
                    .set(i64::try_from(report.endpoints).unwrap_or(i64::MAX));
                if let Some(summary) = &o.summary {
                    for f in &self.families {
                        let counts = summary.no_local_endpoints(*f);
                        for (policy, n) in
                            [("internal", counts.internal), ("external", counts.external)]
                        {
                            self.no_local_endpoints
                                .get_or_create(&PolicyLabel {
                                    ip_family: family_name(*f).into(),
                                    traffic_policy: policy.into(),
                                })
                                .set(i64::try_from(n).unwrap_or(i64::MAX));
                        }
                    }
                }
            }
            Err(e) => {
                self.sync_failures.inc();
                self.plugin_errors
                    .get_or_create(&code_label(e.code.as_str()))
                    .inc();
            }
        }
        if let Some(stats) = &o.plugin_stats {
            *self
                .plugin_stats
                .values
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = stats.clone();
        }
    }

    /// Records that a change was queued for the next sync at `at`.
    pub fn change_queued(&self, at: SystemTime) {
        let secs = seconds_since_epoch(at);
        for f in &self.families {
            self.last_queued.get_or_create(&self.family(*f)).set(secs);
        }
    }

    /// Counts Service and EndpointSlice changes seen (upstream counts every change event).
    pub fn changes_seen(&self, services: u64, endpoints: u64) {
        self.service_changes.inc_by(services);
        self.endpoint_changes.inc_by(endpoints);
    }

    /// Sets how many services have Service / EndpointSlice changes not yet synced.
    pub fn set_pending(&self, services: usize, endpoints: usize) {
        self.service_changes_pending
            .set(i64::try_from(services).unwrap_or(i64::MAX));
        self.endpoint_changes_pending
            .set(i64::try_from(endpoints).unwrap_or(i64::MAX));
    }

    /// Counts an object skipped as invalid.
    pub fn object_skipped(&self, kind: &str) {
        self.objects_skipped
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// Counts a `/healthz` answer by status code.
    pub fn healthz_answered(&self, code: u16) {
        self.healthz
            .get_or_create(&code_label(&code.to_string()))
            .inc();
    }

    /// Counts a `/livez` answer by status code.
    pub fn livez_answered(&self, code: u16) {
        self.livez
            .get_or_create(&code_label(&code.to_string()))
            .inc();
    }

    /// The metrics in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, and every metric here encodes.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The metrics in the Prometheus text exposition format, version 0.0.4.
    pub fn encode_prometheus(&self) -> String {
        text::openmetrics_to_prometheus(&self.encode_openmetrics())
    }
}

fn code_label(code: &str) -> CodeLabel {
    CodeLabel { code: code.into() }
}

/// The plugin's own counters, as reported after the last sync, exported as
/// `kproxy_plugin_stats_total{plugin, name}`. A collector rather than counters, because the
/// plugin owns the values (they restart from zero with a new dataplane).
#[derive(Debug)]
struct PluginStatsCollector {
    plugin: String,
    values: Mutex<Vec<(String, u64)>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatLabel {
    plugin: String,
    name: String,
}

impl Collector for PluginStatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let values = self
            .values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut metric = encoder.encode_descriptor(
            "kproxy_plugin_stats",
            "Counters reported by the dataplane plugin, by name",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (name, value) in values {
            let labels = StatLabel {
                plugin: self.plugin.clone(),
                name,
            };
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::sync::summary::StateSummary;
    use kproxy_plugin_api::{PluginError, SyncReport};
    use std::time::Duration;

    fn outcome(ok: bool, full: bool, ms: u64) -> SyncOutcome {
        let finished_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        SyncOutcome {
            result: if ok {
                Ok(SyncReport {
                    full,
                    services: 3,
                    endpoints: 7,
                    objects_written: 1,
                })
            } else {
                Err(PluginError::kernel("nope"))
            },
            full,
            generation: 1,
            services: 3,
            endpoints: 7,
            changed: 1,
            finished_at,
            duration: Duration::from_millis(ms),
            trigger_times: vec![finished_at - Duration::from_millis(1_500)],
            summary: ok.then(|| Arc::new(StateSummary::default())),
            plugin_stats: Some(vec![("rules_written".into(), 42)]),
        }
    }

    fn sample<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    }

    #[test]
    fn syncs_are_recorded_under_upstream_names_per_family() {
        let m = Metrics::new(&[IpFamily::V4, IpFamily::V6], "test");
        m.sync_finished(&outcome(true, true, 3));
        m.sync_finished(&outcome(true, false, 20));
        m.sync_finished(&outcome(false, true, 1));
        m.changes_seen(2, 5);
        m.set_pending(1, 4);
        m.object_skipped("Service");
        m.healthz_answered(503);
        let text = m.encode_prometheus();
        for f in ["IPv4", "IPv6"] {
            let l = format!("{{ip_family=\"{f}\"}}");
            assert_eq!(
                sample(
                    &text,
                    &format!("kubeproxy_sync_proxy_rules_duration_seconds_count{l}")
                ),
                "3"
            );
            assert_eq!(
                sample(
                    &text,
                    &format!("kubeproxy_sync_full_proxy_rules_duration_seconds_count{l}")
                ),
                "2"
            );
            assert_eq!(
                sample(
                    &text,
                    &format!("kubeproxy_sync_partial_proxy_rules_duration_seconds_count{l}")
                ),
                "1"
            );
            assert_eq!(
                sample(
                    &text,
                    &format!("kubeproxy_sync_proxy_rules_last_timestamp_seconds{l}")
                ),
                "1000.0"
            );
            // Two successful syncs applied one trigger time each, 1.5 s old.
            assert_eq!(
                sample(
                    &text,
                    &format!("kubeproxy_network_programming_duration_seconds_count{l}")
                ),
                "2"
            );
            assert_eq!(
                sample(&text, &format!("kubeproxy_network_programming_duration_seconds_bucket{{le=\"1.0\",ip_family=\"{f}\"}}")),
                "0"
            );
            assert_eq!(
                sample(&text, &format!("kubeproxy_network_programming_duration_seconds_bucket{{le=\"2.0\",ip_family=\"{f}\"}}")),
                "2"
            );
        }
        assert_eq!(
            sample(&text, "kubeproxy_sync_proxy_rules_service_changes_total"),
            "2"
        );
        assert_eq!(
            sample(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_total"),
            "5"
        );
        assert_eq!(
            sample(&text, "kubeproxy_sync_proxy_rules_service_changes_pending"),
            "1"
        );
        assert_eq!(
            sample(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_pending"),
            "4"
        );
        assert_eq!(
            sample(&text, "kubeproxy_proxy_healthz_total{code=\"503\"}"),
            "1"
        );
        assert_eq!(sample(&text, "kproxy_sync_failures_total"), "1");
        assert_eq!(
            sample(&text, "kproxy_plugin_errors_total{code=\"kernel\"}"),
            "1"
        );
        assert_eq!(
            sample(&text, "kproxy_plugin_errors_total{code=\"panic\"}"),
            "0"
        );
        assert_eq!(
            sample(&text, "kproxy_objects_skipped_total{kind=\"Service\"}"),
            "1"
        );
        assert_eq!(sample(&text, "kproxy_programmed_endpoints"), "7");
        assert_eq!(
            sample(
                &text,
                "kproxy_plugin_stats_total{plugin=\"test\",name=\"rules_written\"}"
            ),
            "42"
        );
        assert!(text.contains("# TYPE kubeproxy_sync_proxy_rules_service_changes_total counter\n"));
        assert!(!text.contains("# EOF"));
        assert!(m.encode_openmetrics().ends_with("# EOF\n"));
    }
}
